"""Files that other processes and interruptions cannot corrupt: atomic writes, folder locks.

- `atomic_write(path)`: write to a temporary file of this process in the same folder, rename it
  over `path` on success, remove it on any failure (a full disk, Ctrl-C, a bad value), so that
  `path` is either the old file or the new one and no temporary is left behind.
- `folder_lock(folder, what)`: one process at a time per study or run folder. It is an
  `fcntl.flock` on `folder/.lock`: the operating system releases it when the holder exits, killed
  or not, so a crash never leaves a stale lock; a second process gets one line naming the
  holder's process id. (Hand-written: `filelock` and `portalocker` do the same flock but do not
  report who holds the lock, which is what a user needs to decide whether to wait or kill.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from congener.errors import CongenerError

try:  # POSIX; elsewhere folders are not locked (documented in folder_lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class FolderBusy(CongenerError):
    """A study or run folder that another live process is using."""


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on failure it is
    removed. The name carries the process id: two writers never share a temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any, indent: int | None = 2, *, strict: bool = True
               ) -> Path:
    """Write JSON atomically. `strict`: valid JSON for any reader, NaN and infinities become
    null (JSON has neither); otherwise they are kept as Python's json writes and reads them
    (congener's own caches, whose readers expect floats)."""
    data = finite_json(data) if strict else data
    return write_text(path, json.dumps(data, indent=indent, allow_nan=not strict) + "\n")


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, containers walked recursively."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def output_folder(path: str | Path, option: str = "-o") -> Path:
    """Create the output folder `path` (with parents); a one-line error if it names a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CongenerError(f"{option}: {path} is an existing file, not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_file(path: str | Path, option: str = "-o") -> Path:
    """Check that `path` can be written as a file: not a folder; its folder is created."""
    path = Path(path)
    if path.is_dir():
        raise CongenerError(f"{option + ': ' if option else ''}{path} is a folder, not a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _holder(lock_path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(lock_path.read_text().split()[0])
        return f"process {pid}"
    return "another process"


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold the lock of `folder` (created if needed) for the duration; `FolderBusy` naming the
    holder if another process has it. `what` names the folder in the message ("study X").
    Re-entrant within one process is not supported: nest locks on different folders only."""
    folder = output_folder(folder, what)
    lock_path = folder / LOCK_NAME
    if fcntl is None:  # pragma: no cover
        yield folder
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise FolderBusy(f"{what} is being run by {_holder(lock_path)}; wait for it to "
                             "finish or stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        os.close(fd)  # closing releases the flock
