"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

Write to a temporary name in the destination's folder (same file system, so `os.replace` is atomic), then
rename over the destination; on any error (Ctrl-C included) the temporary file is removed and the destination is
untouched. Output folders work the same way (`atomic_dir`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator, List, Union

from ssmprune_cli.errors import BadInputError, Interrupted

PathLike = Union[str, "os.PathLike[str]"]


def _default_mode() -> int:
    # mkstemp creates 0600 files; give the result the mode a plain open() would (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_not_input(path: PathLike, protect: Iterable[PathLike] = ()) -> None:
    """Refuse to write over a file the run reads from (e.g. `-o` pointing at the checkpoint)."""
    target = Path(path)
    for src in protect:
        if _same_file(target, Path(src)):
            raise BadInputError(f"refusing to overwrite the input file {src}; choose another output path")


@contextlib.contextmanager
def atomic_path(path: PathLike, protect: Iterable[PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    target = Path(path)
    check_not_input(target, protect)
    if target.is_dir():
        raise BadInputError(f"cannot write {target}: it is a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # After the write: some writers (safetensors) replace the file they are given.
        os.chmod(tmp, _default_mode())
        os.replace(tmp, target)
    finally:
        # After a successful replace the temporary name no longer exists.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: PathLike, text: str, protect: Iterable[PathLike] = ()) -> Path:
    with atomic_path(path, protect) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; once the block succeeds it replaces `path` (and whatever folder
    was there), on error it is removed and `path` is untouched. Ctrl-C during the swap is held until the swap is
    done, then reported as Interrupted naming the complete output: halfway, the old output would be gone and the
    new one not in place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        with _sigint_held() as caught:
            _swap(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap
    if caught:
        raise Interrupted(f"interrupted after the output was complete: {target} holds it")


def _swap(tmp: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        old.rmdir()
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _sigint_held() -> Iterator[List[int]]:
    """SIGINTs that arrive inside the block are recorded in the yielded list instead of raising."""
    caught: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught  # only the main thread may set handlers; there Ctrl-C is not delivered anyway
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
