"""One process at a time in a saved memory's folder: :func:`folder_lock`.

A save is atomic against a crash (:meth:`MemLongCache.save`), but two processes reading and
saving into one folder at once could each decide from the folder's state before the other's
save. The lock is an advisory ``flock`` on a file in the folder (``.memlong.lock``), held while
a process decides, reads and saves; the kernel releases it when the process ends, however it
ends, so a killed process never leaves the folder locked. The file says who holds it (pid,
command, since when), for the message of a process that gives up waiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

try:
    import fcntl
except ImportError:  # not on POSIX: no lock (documented in memlong ask --help)
    fcntl = None

LOCK_NAME = ".memlong.lock"


class FolderBusy(RuntimeError):
    """Another process held the folder's lock for the whole wait; ``holder`` says who (may be {})."""

    def __init__(self, directory, holder: dict, waited: float):
        self.directory, self.holder, self.waited = str(directory), holder, waited
        super().__init__(f"{directory} is in use by another process ({describe_holder(holder)}); waited {waited:.1f} s")


def describe_holder(holder: dict) -> str:
    if not holder:
        return "unknown: it has not written its name yet"
    since = holder.get("since")
    age = f", for {time.time() - since:.0f} s" if isinstance(since, (int, float)) else ""
    return f"pid {holder.get('pid')}: {holder.get('command', '?')}{age}"


def read_holder(directory) -> dict:
    """Who holds (or last held) the lock of ``directory``, as it wrote itself; {} when unknown."""
    try:
        with open(os.path.join(directory, LOCK_NAME)) as f:
            holder = json.loads(f.read() or "{}")
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def folder_lock(directory, timeout: float, on_wait=None, poll: float = 0.1):
    """Holds ``directory``'s lock (creating the folder) inside the ``with``; waits up to ``timeout``
    seconds for a process holding it, calling ``on_wait(holder)`` once when it starts waiting, then
    raises :class:`FolderBusy`."""
    os.makedirs(directory, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= timeout:
                    raise FolderBusy(directory, read_holder(directory), waited) from None
                if on_wait is not None:
                    on_wait(read_holder(directory))
                    on_wait = None
                time.sleep(min(poll, max(0.0, timeout - waited)))
        me = json.dumps(
            {
                "pid": os.getpid(),
                "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                "since": time.time(),
            }
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
