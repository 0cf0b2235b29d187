"""Named points where the kill campaign stops a process abruptly, to show that a stop anywhere loses nothing.

Off unless the environment variable `DEPT_KILL_AT` is set: `DEPT_KILL_AT=write:3` sends SIGKILL to this process
the third time it passes a point named `write`. The points (`reached(NAME)` calls) sit where a stop is the most
harmful: inside an atomic write after its bytes are on disk and before the rename (`write`), between the two
renames that replace a folder (`publish`), after each local step (`step`), after each source's evaluation
(`eval`), in the middle of a metrics line (`metrics`), and once the run folder is locked (`startup`).
`campaigns/kill.py` and `tests/test_kill.py` use them; a user never needs to.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("DEPT_KILL_AT")
    if not spec or ":" not in spec:
        return None
    name, _, count = spec.partition(":")
    return (name, int(count)) if count.isdigit() else None


_TARGET = _target()


def reached(name: str) -> None:
    if _TARGET is None or name != _TARGET[0]:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
