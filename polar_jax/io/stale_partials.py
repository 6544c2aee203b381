"""Leftovers of killed writers: the hidden `.NAME.TAG-PID` siblings `atomic.directory` and
`atomic.write_text` fill before their rename. One whose process is gone from this host is removed;
one whose process still runs (another writer of the same output, or a reused PID) is left alone.
Both are logged. The PID is only meaningful on the host that wrote it: on storage other hosts
share, a directory another host's live writer fills would look dead here, so run one writer per
output at a time (the workdir lock does that for runs)."""

from __future__ import annotations

import glob
import logging
import os
import pathlib
import re
import shutil

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(path: str | os.PathLike, tag: str = "partial") -> list[pathlib.Path]:
    """Remove `path`'s siblings `.NAME.TAG-PID` whose PID is not alive on this host (this process's
    own is left to its writer); returns those removed. Each removal, and each one left, is logged."""
    path = pathlib.Path(os.path.abspath(path))
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(tag)}-(\d+)")
    removed = []
    for sibling in sorted(path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(tag)}-*")):
        match = pattern.fullmatch(sibling.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        pid = int(match.group(1))
        if pid_alive(pid):
            log.warning("left %s in place: process %d (its writer?) is running on this host", sibling, pid)
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling)
        else:
            sibling.unlink()
        log.info("removed %s, left by process %d (no longer running on this host): an interrupted run", sibling, pid)
        removed.append(sibling)
    return removed
