"""A memory folder's lock (`folder_lock`) between two processes: the second waits for the first up
to its timeout, then gives up naming the holder; a holder killed with SIGKILL frees the folder."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from memlong.memory.lock import LOCK_NAME, FolderBusy, folder_lock, read_holder

LOCK_PY = Path(__file__).resolve().parents[2] / "src" / "memlong" / "memory" / "lock.py"

# Holds the lock of argv[1] until its stdin closes: lock.py alone, no torch (starts in a blink).
HOLDER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("lock", sys.argv[2])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
with lock.folder_lock(sys.argv[1], timeout=30):
    print("locked", flush=True)
    sys.stdin.read()
"""


def holder(directory):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), str(LOCK_PY)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_process_waits_then_gives_up_naming_the_holder(tmp_path):
    directory = tmp_path / "mem"
    p = holder(directory)
    try:
        waits = []
        t0 = time.monotonic()
        with pytest.raises(FolderBusy) as e:
            with folder_lock(directory, timeout=0.5, on_wait=waits.append):
                pytest.fail("entered a folder another process holds")
        assert time.monotonic() - t0 >= 0.5
        assert len(waits) == 1 and waits[0]["pid"] == p.pid  # told once who it waits for
        assert (
            e.value.holder["pid"] == p.pid
            and f"pid {p.pid}" in str(e.value)
            and re.search(r"; waited \d+\.\d s$", str(e.value))
        )
    finally:
        p.stdin.close()
        p.wait(timeout=10)
    with folder_lock(directory, timeout=0):  # free again once the holder ended
        assert read_holder(directory)["pid"] == os.getpid()


def test_a_wait_ends_when_the_holder_finishes(tmp_path):
    p = holder(tmp_path)
    threading.Timer(0.5, p.stdin.close).start()  # the holder finishes after half a second
    t0 = time.monotonic()
    with folder_lock(tmp_path, timeout=20):
        assert 0.4 < time.monotonic() - t0 < 15
    p.wait(timeout=10)


def test_a_holder_killed_with_sigkill_frees_the_folder(tmp_path):
    p = holder(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    with folder_lock(tmp_path, timeout=5):
        assert (tmp_path / LOCK_NAME).is_file()
