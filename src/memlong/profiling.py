"""Where the time goes: an opt-in accumulator of wall time per phase.

    with memlong.profiling.record() as t:
        model.ingest(ids)
    print(t.seconds)   # {"retriever": ..., "search": ..., "bank_write": ..., "attention": ..., ...}

Off by default (one boolean check per phase). On a GPU, phases are timed without
synchronising, so device work may be attributed to the next phase that waits for it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager


class Timings:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)


_active: Timings | None = None


@contextmanager
def phase(name: str):
    """Adds the block's wall time to ``name`` while :func:`record` is active."""
    if _active is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _active.seconds[name] += time.perf_counter() - t0
        _active.calls[name] += 1


@contextmanager
def record():
    """Collects phase timings for the duration of the block (not re-entrant)."""
    global _active
    prev, _active = _active, Timings()
    try:
        yield _active
    finally:
        _active = prev
