"""Test setup shared by the whole suite.

TRITON_INTERPRET must be set before any Triton kernel module is imported (the flag is read when @triton.jit
decorates), so it is set here, at collection time, on machines without CUDA.
"""

import os

# Under pytest-xdist (-n 2, pyproject.toml) each worker process gets one core: PyTorch's pool of a thread per core
# in every worker (and in the subprocesses tests start) oversubscribed CI's 2 cores; the suite took as long as
# on one process.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# ---------------------------------------------------------------------------------------------- real data
import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402

CIFAR_TAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _extract_cifar(dest: Path, split: str, per_class: int) -> Path:
    """Extract the first `per_class` images of each class of one split (the tarball stays outside the repo).
    Reading stops once all ten classes have theirs: the test split comes first in the archive, and decompressing the
    50,000 training images behind it took seconds."""
    if not CIFAR_TAR.exists():
        pytest.fail(f"CIFAR-10 test data not found at {CIFAR_TAR} (CI lays ../shared beside the checkout)")
    counts = {}
    with tarfile.open(CIFAR_TAR, "r:gz") as tar:
        for m in tar:
            if len(counts) == 10 and all(n >= per_class for n in counts.values()):
                break
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 4 or parts[1] != split:
                continue
            if counts.get(parts[2], 0) >= per_class:
                continue
            counts[parts[2]] = counts.get(parts[2], 0) + 1
            target = dest / parts[2] / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(m).read())
    return dest


@pytest.fixture(scope="session")
def cifar_test_dir(tmp_path_factory) -> Path:
    """A small ImageFolder of real CIFAR-10 test images: 10 classes x 12 images."""
    return _extract_cifar(tmp_path_factory.mktemp("cifar_test"), "test", 12)


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.fixture
def ssmprune():
    """`ssmprune ARGS...` run in-process; the result keeps stdout and stderr apart (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from ssmprune_cli import cli

    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # click ≥ 8.2 keeps them apart by default
        runner = CliRunner()
    return lambda *args: runner.invoke(cli.app, [str(a) for a in args])
