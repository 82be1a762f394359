"""Where the time goes: an opt-in accumulator of wall time per phase, and the machine it ran on.

    with memlong.profiling.record() as t:
        model.ingest(ids)
    print(t.seconds)   # {"retriever": ..., "search": ..., "bank_write": ..., "attention": ..., ...}

Off by default (one boolean check per phase). On a GPU, phases are timed without
synchronising, so device work may be attributed to the next phase that waits for it.

:func:`machine` and :func:`cpu_name` describe the hardware a measurement ran on, for the records
the benchmarks and training runs write beside their numbers.
"""

from __future__ import annotations

import os
import platform
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


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict:
    """Cores, platform, torch version, CUDA and the load average: what a timing depends on."""
    import torch

    # The load average says how much other work shared the CPU (timings are lower bounds then).
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available(), "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
