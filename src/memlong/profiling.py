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


def slow_bfloat16(device_type: str = "cpu") -> str | None:
    """Why bfloat16 autocast would be slow here, or None. On an x86 CPU without AVX-512
    (``torch.backends.cpu.get_cpu_capability()`` below ``"AVX512"``), oneDNN has no bfloat16
    kernels, so bfloat16 matmuls fall to torch's reference gemm: on an AVX2 CPU a linear layer of
    the default model took 11x longer forward and 20x longer backward than in float32
    (``scripts/experiments/bench_bfloat16.py``, docs/results/bench_bfloat16.json), and a training step 18x
    longer. AVX-512 CPUs (with or without the BF16 extension) and GPUs have bfloat16 kernels."""
    if device_type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return None
    return (
        f"this CPU's vector capability is {capability} (no AVX-512): torch runs bfloat16 matmuls in its "
        "reference kernel, measured 10-20x slower than float32 on an AVX2 CPU; train in float32 "
        "(--mixed-precision no / without --bf16)"
    )


def machine() -> dict:
    """Cores, platform, torch version, CUDA and the load average: what a timing depends on."""
    import torch

    # The load average says how much other work shared the CPU (timings are lower bounds then).
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
