"""Named points where the kill campaign stops a process abruptly, or makes a write fail, to show that a stop or a
failing disk anywhere loses nothing.

Off unless the environment says otherwise. `DEPT_KILL_AT=write:3` sends SIGKILL to this process the third time it
passes a point named `write`; `DEPT_FAIL_AT=write:3:ENOSPC` makes that pass raise the OSError a full disk raises
(any errno name: EROFS for a read-only file system, EIO...). The points (`reached(NAME)` calls) sit where a stop
is the most harmful: inside an atomic write after its bytes are on disk and before the rename (`write`), between
the two renames that replace a folder (`publish`), after each local step (`step`), after each source's evaluation
(`eval`), in the middle of a metrics line (`metrics`), and once the run folder is locked (`startup`).
`campaigns/kill.py` and the reliability tests use them; a user never needs to.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

_counts: dict[str, int] = {}


def _parse(spec: str | None) -> tuple[str, int, str] | None:
    parts = (spec or "").split(":")
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""


_KILL = _parse(os.environ.get("DEPT_KILL_AT"))
_FAIL = _parse(os.environ.get("DEPT_FAIL_AT"))


def arm(kill: str | None = None, fail: str | None = None) -> None:
    """Set the points in this process (tests); None disarms. Counting starts again."""
    global _KILL, _FAIL
    _KILL, _FAIL = _parse(kill), _parse(fail)
    _counts.clear()


def reached(name: str, path: Path | str | None = None) -> None:
    if _KILL is None and _FAIL is None:
        return
    _counts[name] = n = _counts.get(name, 0) + 1
    if _KILL is not None and (name, n) == _KILL[:2]:
        os.kill(os.getpid(), signal.SIGKILL)
    if _FAIL is not None and (name, n) == _FAIL[:2]:
        code = getattr(errno, _FAIL[2] or "EIO", errno.EIO)
        raise OSError(code, os.strerror(code), str(path) if path is not None else None)
