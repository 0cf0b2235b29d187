"""Files that are either fully written or absent: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dept import failpoints
from dept.errors import DeptError


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, fsync, and rename onto `path`; on any error nothing is left behind."""
    path = Path(path)
    if path.is_dir():  # the rename would fail after the work
        raise DeptError(f"{path}: a folder is where this file goes (move it away)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        failpoints.reached("write", path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class AtomicFile:
    """A file written piece by piece under a temporary name in `folder` (`.NAME.*.tmp`, a leftover if the writer
    stops), renamed onto its target by `commit` once whole, as `write_atomic` does in one call."""

    def __init__(self, folder: Path, name: str):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        self.path = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def write(self, data) -> None:
        self._file.write(data)

    def commit(self, path: Path) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            failpoints.reached("write", path)
            os.replace(self.path, path)
        except BaseException:
            self.discard()
            raise
        fsync_dir(path.parent)

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable: without it a power cut can undo a rename whose file was already synced.
    (Where folders cannot be opened, e.g. on Windows, the rename is as durable as the OS makes it.)"""
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


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda p: p.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def finite_json(obj: Any) -> Any:
    """`obj` with every NaN or ±inf float as None: JSON has no such numbers (Python writes bare `NaN`, which
    other readers refuse)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_text(obj: Any, **kwargs) -> str:
    """Standard JSON (non-finite floats as null)."""
    return json.dumps(finite_json(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json_text(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place (replacing an older one of the same name)."""
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        failpoints.reached("publish")  # a stop here leaves only `old`: `remove_leftovers` puts it back
        os.replace(tmp_dir, final_dir)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:  # a file stood where the folder goes
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)


def is_leftover(path: Path) -> bool:
    """What a stopped write leaves: a temporary file or folder (`.NAME.*.tmp`, `.NAME.tmp`, `NAME.tmp`) or the
    `.old` folder of an interrupted `publish_dir`."""
    name = path.name
    return (name.endswith(".tmp") and (name.startswith(".") or path.is_dir())) or \
        (path.is_dir() and name.endswith(".old"))


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete what stopped writes left under `folder` (`is_leftover`); an `.old` folder whose replacement never
    arrived is put back in place instead. Call it only while holding the folder's lock (no other writer can be
    mid-write). Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for old in sorted(folder.rglob("*.old")):  # a stop between publish_dir's two renames: the old one is whole
        final = old.with_name(old.name[:-4])
        if old.is_dir() and not final.exists():
            os.replace(old, final)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if not path.exists() or not is_leftover(path):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
