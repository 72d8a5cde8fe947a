"""Numerical ops the models call: the selective scan (dispatch + PyTorch reference) and the aligned scan."""

from .aligned_scan import aligned_scan, aligned_scan_ref
from .selective_scan import (
    scan_backend,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

__all__ = [
    "aligned_scan",
    "aligned_scan_ref",
    "scan_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]
