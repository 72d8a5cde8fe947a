"""The one way ops reach the Triton kernels: `kernel_module(name)` imports `ssmprune_cli.kernels.<name>` (and with
it `triton`) on first use, so `import ssmprune_cli` and every CPU path run without Triton installed.

Triton is the `gpu` extra (`pip install 'ssmprune[gpu]'`); when a CUDA tensor needs a kernel and Triton is
missing, the error says so in one line instead of a ModuleNotFoundError from deep inside a forward.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from ssmprune_cli.errors import MissingDependencyError

INSTALL_HINT = ("the CUDA kernels need Triton, which is not installed: pip install 'ssmprune[gpu]' "
                "(or run on the CPU with --device cpu)")


def kernel_module(name: str) -> ModuleType:
    """`ssmprune_cli.kernels.<name>`; later calls skip the import machinery (a dict look-up)."""
    full = f"ssmprune_cli.kernels.{name}"
    module = sys.modules.get(full)
    if module is not None:
        return module
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "triton":
            raise
        raise MissingDependencyError(INSTALL_HINT) from None
