"""Triton kernels (imported only when a CUDA scan is dispatched; `triton` itself is imported lazily here).

`SCAN_FUNCTION_NAME` is the class name a jit trace records for the scan, `prim::PythonOp.SelectiveScanFn`; it and
`SCAN_FUNCTION_NAMES` can be read without importing triton.
"""

from __future__ import annotations

SCAN_FUNCTION_NAME = "SelectiveScanFn"
SCAN_FUNCTION_NAMES = (SCAN_FUNCTION_NAME,)

__all__ = ["SCAN_FUNCTION_NAME", "SCAN_FUNCTION_NAMES", "SelectiveScanFn", "selective_scan_triton"]


def __getattr__(name):
    if name in ("selective_scan_triton", "SelectiveScanFn"):
        from . import selective_scan_fn

        return getattr(selective_scan_fn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
