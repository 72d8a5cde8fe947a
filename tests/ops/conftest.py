"""Shared by the op tests: which op modules import Triton when imported, in one fresh interpreter for all of them."""

import json
import subprocess
import sys

import pytest

# Imported in this order, each checked right after its import: the package first, then every op module whose
# test file asks. Triton is installed here (the test extra) and must still stay unimported: the ops load their
# kernels only when a CUDA tensor (or backend="triton") reaches them. Once one module has imported Triton, the
# ones after it read as importing it too, so a failure names the first module that did, among others.
LIGHT_IMPORTS = ("ssmprune_cli", "ssmprune_cli.ops", "ssmprune_cli.kernels", "ssmprune_cli.ops.fused_norm",
                 "ssmprune_cli.ops.gather_conv", "ssmprune_cli.pruning.importance")


@pytest.fixture(scope="session")
def triton_after_import():
    """{module: whether `triton` was in sys.modules right after importing it}, plus the kernels package's
    SCAN_FUNCTION_NAME read in that interpreter. One subprocess instead of one per test file: each one spent its
    seconds importing torch."""
    code = ("import importlib, json, sys\n"
            "seen = {}\n"
            f"for name in {LIGHT_IMPORTS!r}:\n"
            "    importlib.import_module(name)\n"
            "    seen[name] = 'triton' in sys.modules\n"
            "seen['SCAN_FUNCTION_NAME'] = sys.modules['ssmprune_cli.kernels'].SCAN_FUNCTION_NAME\n"
            "print(json.dumps(seen))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])
