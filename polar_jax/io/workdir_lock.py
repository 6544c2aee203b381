"""One run per workdir: `WorkdirLock` holds `DIR/.polar_jax.lock`, a file created exclusively
that names its holder (command, host, PID, start time).

A second run on the same directory is refused with who holds it. A lock whose holder is gone
(this host, PID no longer alive; or an empty file left by a kill between creating and writing
it) is stale: it is taken over with a warning. A holder on another host cannot be checked
from here, so its lock is refused with how to remove it if that run is gone. In a
multi-process run only process 0 takes the lock (the others share its workdir). In a bucket
workdir the lock is an object created with GCS's create-only precondition (`storage`).

    with WorkdirLock(workdir, "train"):
        ...
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import time

from polar_jax.errors import UserError
from polar_jax.io import storage

log = logging.getLogger(__name__)

LOCK_FILE = ".polar_jax.lock"


class WorkdirBusy(UserError):
    """Another run holds the workdir's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class WorkdirLock:
    """The exclusive lock of `workdir` for one `command` (see the module docstring)."""

    def __init__(self, workdir: str | pathlib.Path, command: str, enabled: bool = True):
        self.path = storage.path(workdir) / LOCK_FILE
        self.command, self.enabled, self.held = command, enabled, False
        self.holder = {
            "command": command,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def acquire(self) -> WorkdirLock:
        """Take the lock, or raise WorkdirBusy naming its holder; a stale lock is taken over."""
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock removed, then created again by a racing run: try once more
            try:
                storage.create_exclusive(self.path, json.dumps(self.holder).encode())
            except FileExistsError:
                self._take_over_if_stale()
                continue
            self.held = True
            return self
        raise WorkdirBusy(f"{self.path.parent}: could not take its lock {self.path} (another run keeps taking it)")

    def _take_over_if_stale(self) -> None:
        """Remove the existing lock if its holder is gone; else raise WorkdirBusy."""
        try:
            other = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            other = {}
        if not other:
            log.warning("%s: empty or unreadable lock file (a run killed while taking it); taking it over", self.path)
        elif other.get("host") == self.holder["host"] and not _alive(int(other.get("pid", -1))):
            log.warning(
                "%s: the %s run (PID %s, started %s) that held this workdir is gone; taking its lock over",
                self.path,
                other.get("command"),
                other.get("pid"),
                other.get("started"),
            )
        else:
            where = "this host" if other.get("host") == self.holder["host"] else f"host {other.get('host')}"
            raise WorkdirBusy(
                f"{self.path.parent} is in use by a {other.get('command')} run (PID {other.get('pid')} on {where}, "
                f"started {other.get('started')}): wait for it to finish or use another --workdir"
                + ("" if where == "this host" else f"; if that run is gone, delete {self.path}")
            )
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Give the lock back (only if this process still holds it)."""
        if not self.held:
            return
        self.held = False
        try:
            other = json.loads(self.path.read_text())
            if (other.get("host"), other.get("pid")) == (self.holder["host"], self.holder["pid"]):
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
