"""Checksums of prepared data: every file `dept prepare` writes is listed with its SHA-256 (the global tokenizer
and each source's `meta.json` in `manifest.json`, a source's shards, tokenizer and TRIM vocabulary in its
`meta.json`), and verified before it is first used in a process."""

from __future__ import annotations

import os
from pathlib import Path

from dept.atomic_io import sha256_file
from dept.errors import DataError

_verified: set[tuple[str, int, int, str]] = set()  # (path, size, mtime, digest): hashed once per process


def checksums(root: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(Path(root) / name) for name in names}


def damaged(root: Path, expected: dict[str, str]) -> list[str]:
    """The files of `expected` (relative to `root`) that are missing or whose content changed."""
    return [name for name, digest in expected.items() if not _matches(Path(root) / name, digest)]


def verify(path: Path, digest: str | None) -> Path:
    """`path`, after checking it against its recorded digest (None: prepared before checksums were recorded)."""
    if digest is not None and not _matches(path, digest):
        what = "is missing" if not path.is_file() else "does not match its checksum (damaged)"
        raise DataError(f"{path}: {what}: run `dept prepare` again, it rewrites damaged sources")
    return path


def _matches(path: Path, digest: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (str(path), st.st_size, st.st_mtime_ns, digest)
    if key in _verified:
        return True
    if sha256_file(path) != digest:
        return False
    _verified.add(key)
    return True
