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
