"""One writer per folder: a lock file naming its holder, so a second `dept train` or `dept prepare` on the same run
or data folder is refused in one line instead of interleaving writes with the first.

The lock is `FOLDER/.dept.lock`, created with O_EXCL (atomic on local filesystems and NFSv3+), holding the holder's
pid, host, start time and command line. A lock whose process is gone (same host, no such pid) is stale: it is taken
over with a note. A lock from another host cannot be checked and is respected; the message says how to clear it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from dept.errors import DeptError

LOCK_NAME = ".dept.lock"


class FolderInUse(DeptError):
    """Another live process holds the folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


class FolderLock:
    def __init__(self, folder: Path, what: str, log=print):
        self.folder, self.what, self.log = Path(folder), what, log
        self.path = self.folder / LOCK_NAME
        self.held = False

    def acquire(self) -> FolderLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join(sys.argv)[:300], "what": self.what}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except (FileNotFoundError, NotADirectoryError):  # e.g. `--resume RUN run.dir=elsewhere`
                raise DeptError(f"{self.folder}: no such folder") from None
            except FileExistsError:
                holder = self._holder()
                if holder is not None and self._live(holder):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
                    raise FolderInUse(
                        f"{self.folder} is in use by {holder.get('what', 'dept')} (pid {holder['pid']} on "
                        f"{holder.get('host', '?')}, since {since}): wait for it to end, or delete {self.path} "
                        "if no such process runs") from None
                self.log(f"{self.folder}: taking over the lock of a process that is gone "
                         f"(pid {holder.get('pid') if holder else '?'})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise FolderInUse(f"{self.folder}: could not take {self.path} (another process keeps creating it)")

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
        except (OSError, ValueError):
            # being written this instant, or garbage: garbage older than a few seconds is stale
            try:
                young = time.time() - self.path.stat().st_mtime < 5
            except OSError:
                return None
            return {"pid": os.getpid(), "host": socket.gethostname(), "what": "a process starting"} if young \
                else None

    @staticmethod
    def _live(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # cannot be checked from here
        if holder["pid"] == os.getpid():
            return True  # this process holds it already (e.g. prepare inside compare): a second writer here
        return _alive(holder["pid"])

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            holder = json.loads(self.path.read_text())
            if holder.get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
