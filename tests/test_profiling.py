"""Phase timings and the machine description the benchmarks and training runs record."""

import time

from memlong import profiling


def test_phases_are_timed_only_while_recording():
    with profiling.phase("retriever"):  # not recording: nothing kept, nothing raised
        pass
    with profiling.record() as t:
        for _ in range(2):
            with profiling.phase("search"):
                time.sleep(0.01)
    assert t.calls["search"] == 2 and t.seconds["search"] >= 0.02 and "retriever" not in t.seconds


def test_machine_says_what_a_timing_depends_on():
    m = profiling.machine()
    assert m["cpu_count"] >= 1 and m["torch"] and isinstance(m["cuda"], bool)
    assert len(m["load_avg_1_5_15"]) == 3
    assert profiling.cpu_name()


def test_slow_bfloat16_names_the_cpu_capability(monkeypatch):
    """bfloat16 autocast warns on x86 CPUs without AVX-512 (torch's reference gemm), not elsewhere."""
    import torch

    monkeypatch.setattr(profiling.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert "AVX2" in profiling.slow_bfloat16("cpu") and "float32" in profiling.slow_bfloat16("cpu")
    assert profiling.slow_bfloat16("cuda") is None
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert profiling.slow_bfloat16("cpu") is None
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    monkeypatch.setattr(profiling.platform, "machine", lambda: "aarch64")  # Arm: not judged here
    assert profiling.slow_bfloat16("cpu") is None
