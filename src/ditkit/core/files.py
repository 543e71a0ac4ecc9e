"""Writing files: every file ditkit writes goes through atomic_write, to a temporary file in
the target's folder that is renamed into place (os.replace is atomic on POSIX), so a crash or
a kill never leaves a partial file under the target's name.

A kill between creating the temporary file and renaming it leaves the temporary file behind.
Its name carries a fixed marker (`.{name}.ditkit-XXXXXXXX.tmp{suffix}`), so remove_orphan_temps
can clear ours from a run or output folder on start without touching anything a user made."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

READABLE = 0o644  # mkstemp creates 0600 files; a saved model, image or report is meant to be shared
TEMP_MARKER = ".ditkit-"
# `.` + target name + `.ditkit-` + mkstemp's 8 random characters ([a-z0-9_]) + `.tmp` + the
# writer's suffix (an extension such as `.png`, or nothing). Anchored, so `.notes.tmp` or
# `.model.safetensors.bak` never match.
_TEMP_NAME = re.compile(r"^\..+\.ditkit-[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


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


def is_orphan_temp(name: str) -> bool:
    """True for a file name atomic_write gives its temporary files."""
    return bool(_TEMP_NAME.match(name))


def atomic_write(path: str | Path, write: Callable[[str], None], durable: bool = False,
                 suffix: str | None = None) -> None:
    """Write a file by calling write(tmp_path) next to the target, then renaming it into place,
    so a failure never leaves a partial file. durable: fsync the file and its folder (for
    checkpoints). The temporary name ends with the target's suffix (or `suffix`), so writers
    that pick the format from the extension (PIL, matplotlib) see the right one."""
    path = Path(path)
    if not path.parent.is_dir():  # else mkstemp's error would name the temporary file, not the target
        raise FileNotFoundError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    ext = path.suffix if suffix is None else suffix
    if ext == ".tmp":  # the name already ends in .tmp; no need to say it twice
        ext = ""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARKER}", suffix=f".tmp{ext}")
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


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), durable=durable, suffix="")


def atomic_write_text(path: str | Path, text: str, durable: bool = False) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), durable=durable, suffix="")


def atomic_write_json(path: str | Path, data: Any, durable: bool = False) -> None:
    """JSON with two-space indent and a final newline (every JSON file ditkit writes)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n", durable=durable)


def atomic_save_image(path: str | Path, image, **save_kwargs) -> None:
    """Save a PIL image; the temporary name keeps the target's extension, so PIL picks the
    format from it as it would for the target."""
    atomic_write(path, lambda tmp: image.save(tmp, **save_kwargs))


def check_new_folder(out: str | Path) -> Path:
    """`out` as a Path if it can be made as a new folder (atomic_folder's target): a ValueError if
    it already exists or its parent folder does not."""
    out = Path(out)
    if out.exists():
        raise ValueError(f"output {str(out)!r} already exists; choose a new folder")
    if not out.parent.is_dir():
        raise ValueError(f"parent folder of {str(out)!r} does not exist")
    return out


@contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Build a whole folder (a converted or pruned model) under a temporary sibling name,
    `.{name}.ditkit-partial`, yielded (not yet created) to the block, and rename it to `out` when the block
    succeeds; on any failure it is removed, so `out` is either complete or absent. A partial
    folder a killed earlier run left for the same `out` is removed first. `out` must not exist."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}{TEMP_MARKER}partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class LineLog:
    """An append-only text log (log.jsonl) that holds only whole lines: text is buffered until its
    newline and each complete line goes to the file in one os.write on an O_APPEND descriptor.
    A log grows line by line for the whole run, so it cannot be renamed into place like the
    other files; a kill leaves the lines written so far. fresh: start an empty log (else append,
    as a resumed run does). Has write / flush / close, so it stands in for an open file."""

    def __init__(self, path: str | Path, fresh: bool = True):
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if fresh else 0)
        self._fd: int | None = os.open(path, flags, READABLE)
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            whole, _, self._pending = self._pending.rpartition("\n")
            os.write(self._fd, (whole + "\n").encode("utf-8"))
        return len(text)

    def flush(self) -> None:
        """Lines are written as they complete; a line still without its newline stays buffered."""

    def close(self) -> None:
        if self._fd is not None:
            if self._pending:  # the last line lacked its newline: keep it whole anyway
                os.write(self._fd, (self._pending + "\n").encode("utf-8"))
                self._pending = ""
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "LineLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_orphan_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files atomic_write left in `folder` (not recursive) when a process
    was killed mid-write; returns what was removed. Only our own names (see is_orphan_temp)
    are touched. A missing folder is fine (nothing to remove). Call it on start, before any
    writer of this run creates its own temp file in that folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if is_orphan_temp(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except FileNotFoundError:  # another process cleaned it first
                continue
            removed.append(entry)
    return removed
