"""memlong.report: the Markdown of each report kind, as the verbs write it beside their JSON."""

import json
from pathlib import Path

import pytest

from memlong import report

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def test_an_eval_report_names_its_command():
    """The command is rebuilt from the JSON's config, then its table."""
    path = "docs/results/adaptation_cpu_copy_probe.json"
    text = report.markdown(report.load(RESULTS / "adaptation_cpu_copy_probe.json"), path)
    first = text.split("\n")[0]
    assert first.startswith("`memlong eval ppl --model ") and first.endswith(f"--json {path}`")
    assert "--retriever minilm" in first and "--repeat 1024" in first
    assert "| 4,096 | memlong |" in text


def test_passkey_table_shows_the_share_of_keys_retrieved():
    answers = [{"key": "1", "answer": "1", "key_retrieved": True}, {"key": "2", "answer": "x", "key_retrieved": False}]
    rows = [
        {"method": "memlong", "length": 4096, "depth": d, "trials": 2, "accuracy": 0.5, "answers": answers}
        for d in (0.1, 0.9)
    ]
    rows.append(
        {
            "method": "memlong_no_memory",
            "length": 4096,
            "depth": 0.1,
            "trials": 2,
            "accuracy": 0.0,
            "answers": [{"key": "1", "answer": "x"}],
        }
    )
    table = report.passkey_table(rows)
    assert (
        "key retrieved" in table[0]
        and table[2].endswith("| 0.50 [0.15, 0.85] | 0.50 | 2 |")
        and "| - | 2 |" in table[3]
    )
    assert "key retrieved" not in report.passkey_table(rows[2:])[0]


def test_a_note_sits_under_the_command_and_the_plot_is_linked_from_the_json(tmp_path):
    row = {"method": "memlong", "length": 4096, "depth": 0.5, "trials": 1, "accuracy": 1.0}
    config = {"task": "passkey", "methods": "memlong", "lengths": "4096", "data": "d", "depths": "0.5", "trials": 1}
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "pk.png").write_bytes(b"png")
    data = {"config": {**config, "plot": "plots/pk.png"}, "results": [row]}
    lines = report.markdown(data, "out/pk.json", note="Measured before X.", root=tmp_path).split("\n")
    assert lines[0].endswith("--json out/pk.json`") and lines[1:4] == ["", "Measured before X.", ""]
    assert lines[4].startswith("| length | method | depth 0.5 |") and lines[-1] == "![passkey](../plots/pk.png)"
    assert "![" not in report.markdown(data, "out/pk.json")  # no plot where it should be: no link


def test_write_markdown_writes_beside_the_json(tmp_path):
    data = json.loads((RESULTS / "bench_retriever.json").read_text())
    md = report.write_markdown(data, tmp_path / "r.json")
    assert md == tmp_path / "r.md" and md.read_text() == report.markdown(data, tmp_path / "r.json") + "\n"
    assert f"JSON: `{tmp_path / 'r.json'}`" in md.read_text()
    with pytest.raises(ValueError, match="not a report"):
        report.markdown({"results": []}, "x.json")


def test_a_soak_report_shows_each_call_its_memory_while_reading_and_its_answer():
    def call(name, reused, answer):
        anon = {"at_quarters": {"0.25": 2**30, "0.5": 2**30, "0.75": 1.1 * 2**30, "1.0": 2**30}}
        return {
            "name": name,
            "question": "What is the code?",
            "answer": answer,
            "correct": answer == "73914",
            "seconds": 12.3,
            "tokens_per_s": None if reused else 228.4,
            "reused": reused,
            "peak_rss_anon_bytes": 1.5 * 2**30,
            "peak_rss_bytes": 8 * 2**30,
            "rss_anon_while_reading": None if reused else anon,
            "evicted_chunks": 0,
        }

    r = {
        "command": "python scripts/soak_ask.py --tokens 1000 --reuse --json out.json",
        "input": {"tokens": 1000, "depth": 0.02},
        "calls": [call("read and ask", False, "73914"), call("reuse and ask", True, "macd")],
        "bank": "bank_device mmap, memory_capacity 1,024 tokens",
        "memory_bytes": 3 * 2**30,
    }
    md = report.markdown(r, "out.json", note="A note.")
    assert "`python scripts/soak_ask.py --tokens 1000 --reuse --json out.json`" in md and "\nA note.\n" in md
    assert (
        "| read and ask | What is the code? | 12 | 228 | 1,536 | 1,024, 1,024, 1,126, 1,024 | 8,192 | '73914' | True |"
        in md
    )
    assert "| reuse and ask | What is the code? | 12 | - | 1,536 | (loaded, not read) | 8,192 | 'macd' | False |" in md
    assert "saved memory on disk: 3.0 GiB; evicted chunks: 0" in md


def test_ruler_bars_say_which_bar_a_task_misses_and_by_how_much():
    def row(task, length, method, score):
        return {"task": task, "length": length, "method": method, "score": score, "interval": [0.0, 1.0]}

    reports = [
        {"results": [row("vt", 4096, "base_full", 0.5), row("fwe", 4096, "base_full", 1.0)]},
        {
            "results": [
                row("vt", 16384, "rag", 0.2),
                row("vt", 16384, "memlong", 0.45),
                row("fwe", 16384, "rag", 0.8),
                row("fwe", 16384, "memlong", 0.6),
                row("cwe", 16384, "memlong", 0.1),  # no rag or ceiling measured yet
                row("qa_1", 16384, "memlong", None),  # not run
            ]
        },
    ]
    lines = report.ruler_bars_table(reports).splitlines()
    assert lines[0] == "| task | base_full 4k (ceiling) | rag 16k | memlong 16k | memlong 16k against the bars |"
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    assert rows["vt"].endswith("| meets both |")  # 0.45 >= 0.2 and >= 0.9 x 0.5
    assert rows["fwe"].endswith("| below rag by 0.20; below 0.9x the ceiling by 0.30 |")
    assert rows["cwe"].endswith("| - | - | 0.10 [0.00, 1.00] | - |") and "qa_1" not in rows
    assert report.ruler_bars_table([reports[0]]) == ""  # no longer length measured: nothing to compare
    # two longer lengths: each length's verdict column is text (left), its scores numbers (right)
    reports.append({"results": [row("vt", 32768, "rag", 0.1), row("vt", 32768, "memlong", 0.5)]})
    lines = report.ruler_bars_table(reports).splitlines()
    assert lines[0].endswith("| rag 32k | memlong 32k | memlong 32k against the bars |")
    assert lines[1] == "|---|---:|---:|---:|---|---:|---:|---|"


def test_headline_takes_each_methods_cost_from_runs_with_a_length():
    """An icl row (no length) may carry a cost: the headline shows its accuracy and takes the
    method's cost from its runs by length."""
    from memlong.report import headline_table

    passkey = {
        "config": {"task": "passkey"},
        "results": [
            {"method": "rag", "length": 4096, "depth": 0.5, "trials": 2, "accuracy": 1.0}
            | {"bytes_per_token": 12.0, "tokens_per_second": 900.0}
        ],
    }
    icl = {
        "config": {"task": "icl"},
        "results": [
            {"method": "rag", "task": "corpus-source", "shots_memory": 300, "accuracy": 0.64}
            | {"bytes_per_token": 3.0, "tokens_per_second": 50.0}
        ],
    }
    table = headline_table([passkey, icl])
    row = next(line for line in table.splitlines() if line.startswith("| rag |"))
    assert "0.64" in row and "| 12 |" in row and "900 at 4k" in row


def test_headline_shows_the_facts_each_demo_method_answered():
    """A `memlong demo` report is a column of its own: the facts each method answered, by our
    methods' names (an older report without the baselines leaves them "not run")."""
    from memlong.report import headline_table

    facts = [{"question": "q"}] * 3
    demo = {"facts": facts, "answered": {"memory": 3, "no_memory": 0, "rag": 2, "base_truncated": 1}}
    table = headline_table([demo])
    assert table.splitlines()[0] == "| method | demo facts |"
    rows = dict(line.strip("| ").split(" | ") for line in table.splitlines()[2:])
    assert rows == {"memlong": "3 of 3", "memlong_no_memory": "0 of 3", "rag": "2 of 3", "base_truncated": "1 of 3"}
    older = {"facts": facts, "answered": {"memory": 2, "no_memory": 1}}
    passkey = {"config": {"task": "passkey"}, "results": [{"method": "rag", "length": 4096, "accuracy": 1.0}]}
    rows = {line.split(" | ")[0][2:]: line for line in headline_table([older, passkey]).splitlines()[2:]}
    assert rows["rag"] == "| rag | not run | 1.00 |" and rows["memlong"] == "| memlong | 2 of 3 | not run |"


def test_demo_markdown_shows_the_baselines_answers_where_they_ran():
    """The demo's table: a column per method it asked (rag and base_truncated where recorded)."""
    from memlong.report import demo_markdown

    def answers(*keys):
        return {k: {"answer": f"{k} says 7", "correct": k == "rag"} for k in keys}

    def report(*keys):
        fact = {"question": "Which?", "depth": 0.1, "expected": "7", "memory": {"retrieved": []}}
        fact |= answers(*keys)
        fact["memory"] |= {"retrieved": [{"has_fact": True}]}
        reading = {"tokens_per_s": 10.0, "peak_rss_bytes_after_read": 2**20}
        return {
            "document": {"tokens": 100, "parts": [{"doc_id": "a.py", "tokens": 100}]},
            "torch_threads": 1,
            "load_average_at_start": 0.5,
            "facts": [fact],
            "ppl": {"tokens_scored": 10, "with_memory": 2.0, "without_memory": 3.0},
            "reading": {"memory": reading, "no_memory": reading},
            "bank": {"chunks": 1, "bytes": 2**20, "kv_bytes_per_token": 8},
        }

    both = demo_markdown(report("memory", "no_memory", "rag", "base_truncated"), "d.json")
    assert "| with memory | without memory | rag | base_truncated |" in both
    assert (
        "| Which? (10%) | 7 | yes | wrong: 'memory says 7' | wrong: 'no_memory says 7' | right: 'rag says 7' |" in both
    )
    older = demo_markdown(report("memory", "no_memory"), "d.json")
    assert "| with memory | without memory |\n|---|---|---|---|---|" in older


def test_headline_puts_a_variants_row_after_its_method():
    """A label the reports use beside our methods ("memlong, every head ...") is a row of its own,
    right after the method it names; a later report's cell replaces an earlier one's."""
    from memlong.report import headline_table

    def passkey(method, accuracy):
        return {
            "config": {"task": "passkey"},
            "results": [{"method": method, "length": 4096, "depth": 0.5, "trials": 2, "accuracy": accuracy}],
        }

    table = headline_table(
        [passkey("memlong, every head", 1.0), passkey("rag", 0.5), passkey("memlong", 0.5), passkey("memlong", 0.9)]
    )
    rows = [line.split(" | ")[0][2:] for line in table.splitlines()[2:]]
    assert rows == ["memlong", "memlong, every head", "rag"]
    assert "| memlong | 0.90 |" in table and "| memlong, every head | 1.00 |" in table
