"""Writing files: every file ditkit writes goes through atomic_write, to a temporary file in
the target's folder that is renamed into place (os.replace is atomic on POSIX), so a crash or
a kill never leaves a partial file under the target's name."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable across power loss (the directory entry is data too)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


READABLE = 0o644  # mkstemp creates 0600 files; a saved model, image or report is meant to be shared


def atomic_write(path: str | Path, write: Callable[[str], None], durable: bool = False,
                 suffix: str | None = None) -> None:
    """Write a file by calling write(tmp_path) next to the target, then renaming it into place,
    so a failure never leaves a partial file. durable: fsync the file and its folder (for
    checkpoints). The temporary name keeps the target's suffix (or `suffix`), so writers
    that pick the format from the extension (PIL, matplotlib) see the right one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=path.suffix if suffix is None else suffix)
    os.close(fd)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, READABLE)
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), durable=True, suffix=".tmp")


