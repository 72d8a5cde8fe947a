"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

Write to a temporary name in the destination's folder (same file system, so `os.replace` is atomic), then
rename over the destination; on any error the temporary file is removed and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Union

from ssmprune_cli.errors import BadInputError

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
