"""`memlong eval ruler` end to end on a tiny random MemLong model at small lengths: a record per
task, length and method with its interval, RULER's mean over the tasks that ran (qa without its
file reported as not run), the plot, resuming, and bad input stopped before any model loads."""

import argparse
import json
import shutil

import pytest

from memlong.cli import main
from memlong.data import ruler
from memlong.report import eval_command

from conftest import assert_markdown_beside, stdlib_prose


@pytest.fixture(scope="module")
def setup(eval_setup):
    return eval_setup


@pytest.fixture(scope="module")
def prose(tmp_path_factory):
    """A corpus whose test split is prose, for the essay haystack (the eval corpus is source code)."""
    root = tmp_path_factory.mktemp("prose")
    with open(root / "test.jsonl", "w") as f:
        for i, text in enumerate(stdlib_prose()):
            f.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
    return root


def ruler_cli(setup, *extra):
    return main(["eval", "ruler", "--model", str(setup / "model"), "--retriever", "hashing", "--threads", "1", *extra])


def test_end_to_end_json_plot_means_and_skipped_base(setup, prose, tmp_path, capsys):
    out = tmp_path / "ruler.json"
    assert (
        ruler_cli(
            setup,
            "--data",
            str(prose),
            "--lengths",
            "1500,1700",
            "--samples",
            "2",
            "--tasks",
            "niah_single_1,niah_single_2,qa_1,niah_multikey_1_noise",
            "--max-base-length",
            "1600",
            "--methods",
            "memlong,base_full,rag",
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "ruler.png"),
        )
        == 0
    )
    report = json.loads(out.read_text())
    rows = report["results"]
    md = assert_markdown_beside(out)
    assert "RULER's mean" in md and md.endswith("![ruler](ruler.png)\n")  # the plot, linked from beside the JSON
    tasks = ["niah_single_1", "niah_single_2", "qa_1", "niah_multikey_1_noise"]
    methods = ["memlong", "base_full", "rag"]
    assert [(r["task"], r["length"], r["method"]) for r in rows] == [
        (t, L, m) for L in (1500, 1700) for m in methods for t in tasks
    ]  # a length, a method at a time
    for r in rows:
        if r["task"] == "qa_1":  # no --qa-squad: reported as not run, never a number
            assert r["score"] is None and "not run" in r["note"] and "--qa-squad" in r["note"]
            continue
        assert r["samples"] == 2 and r["seconds"] >= 0 and r["prompt_tokens"] + r["max_new_tokens"] <= r["length"]
        assert r["max_new_tokens"] == 128  # RULER's budget for the needle tasks
        if r["method"] == "base_full" and r["length"] == 1700:  # above --max-base-length: skipped, not made up
            assert r["score"] is None and r["note"].startswith("skipped")
            continue
        assert 0 <= r["interval"][0] <= r["score"] <= r["interval"][1] <= 1 and len(r["examples"]) == 2
        for e in r["examples"]:
            assert {"prompt_tail", "expected", "output", "score", "positions"} <= set(e)
            assert "mentioned in the provided text" in e["prompt_tail"]
            assert e["score"] == ruler.score(e["output"], e["expected"])
        assert r["score"] == pytest.approx(sum(e["score"] for e in r["examples"]) / 2)
        assert r["tokens_per_second"] > 0 and r["bytes_per_token"] > 0
        if r["method"] == "memlong":  # what the question's search found, and whether it held the needle
            for e in r["examples"]:
                assert len(e["memory_hits"]) == len(e["memory_hit_scores"]) <= 4
                assert all(b - a == 16 for a, b in e["memory_hits"])
                assert e["memory_hit_scores"] == sorted(e["memory_hit_scores"], reverse=True)  # best first
                assert len(e["statements_retrieved"]) == len(e["statements_in_window"]) == len(e["positions"])
                assert e["statements_retrieved"] == [
                    any(a <= p < b for a, b in e["memory_hits"]) for p in e["positions"]
                ]
        if r["method"] == "rag":  # the chunks it read, and whether they held the needle
            assert all(
                len(e["rag_chunks"]) <= 4 and len(e["statements_retrieved"]) == len(e["positions"])
                for e in r["examples"]
            )
    # the same prompts for every method
    by = {}
    for r in rows:
        if r.get("examples"):
            by.setdefault((r["task"], r["length"]), set()).add(
                json.dumps([(e["prompt_tail"], e["expected"]) for e in r["examples"]])
            )
    assert all(len(v) == 1 for v in by.values())
    # RULER's mean: over its tasks that ran (not qa_1, not our noise variant), saying so
    means = {(m["method"], m["length"]): m for m in report["ruler_means"]}
    m = means[("memlong", 1500)]
    assert m["tasks"] == ["niah_single_1", "niah_single_2"] and m["not_run"] == ["qa_1"]
    cells = [r["score"] for r in rows if r["method"] == "memlong" and r["length"] == 1500 and r["task"] in m["tasks"]]
    assert m["mean"] == pytest.approx(sum(cells) / 2, abs=1e-4) and m["interval"][0] <= m["mean"] <= m["interval"][1]
    assert means[("base_full", 1700)]["tasks"] == []
    config = report["config"]
    assert config["task"] == "ruler" and config["samples"] == 2 and config["chat_template"] is False
    assert config["retriever_info"]["class"] == "HashingRetriever" and config["memlong"]["local_window"] == 64
    command = eval_command(config, "ruler.json")
    assert command.startswith(f"memlong eval ruler --model {setup / 'model'} --data {prose} ")
    assert config["essay"]["words"] > 1000 and len(config["essay"]["sha256"]) == 16  # which essay was read
    assert f"--tasks {','.join(tasks)}" in command and "--samples 2" in command
    assert (tmp_path / "ruler.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "RULER's mean" in printed and "over 2 of 13 tasks; not run: qa_1" in printed
    assert "our variants (not in RULER's mean)" in printed


def test_memory_hits_are_the_hits_the_question_reads(setup, prose, tmp_path):
    """``memory_hits`` lists what the question reads again: with ``question_score_ratio`` only the
    hits scoring at least that share of the best (the search's top_k would list them all)."""
    out = tmp_path / "ratio.json"
    args = ["--data", str(prose), "--lengths", "1500", "--samples", "2", "--tasks", "niah_multikey_1"]
    assert (
        ruler_cli(setup, *args, "--methods", "memlong", "--set", "question_score_ratio=0.99", "--json", str(out)) == 0
    )
    examples = [e for r in json.loads(out.read_text())["results"] for e in r["examples"]]
    assert examples and all(e["memory_hit_scores"] for e in examples)
    for e in examples:
        best = e["memory_hit_scores"][0]
        assert all(score >= 0.99 * best - 1e-4 for score in e["memory_hit_scores"]), e["memory_hit_scores"]
        assert e["statements_retrieved"] == [any(a <= p < b for a, b in e["memory_hits"]) for p in e["positions"]]


def test_question_answering_with_a_squad_file(setup, tmp_path):
    squad = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": f"Paragraph {i} says the river {i} is called Name{i}.",
                        "qas": [
                            {
                                "question": f"What is river {i} called?",
                                "answers": [{"text": f"Name{i}"}],
                                "is_impossible": False,
                            }
                        ],
                    }
                    for i in range(30)
                ]
            }
        ]
    }
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    out = tmp_path / "qa.json"
    assert (
        ruler_cli(
            setup,
            "--lengths",
            "1200",
            "--samples",
            "2",
            "--tasks",
            "qa_1",
            "--methods",
            "base_truncated",
            "--qa-squad",
            str(tmp_path / "squad.json"),
            "--json",
            str(out),
        )
        == 0
    )
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["max_new_tokens"] == 32 and [e["expected"] for e in row["examples"]] == [["Name0"], ["Name1"]]
    assert report["ruler_means"][0]["tasks"] == ["qa_1"]
    assert f"--qa-squad {tmp_path / 'squad.json'}" in eval_command(report["config"], "qa.json")


def test_a_run_cut_short_keeps_what_it_measured_and_resumes(setup, tmp_path, monkeypatch, capsys):
    from memlong.recipes import eval_ruler

    measure, calls = eval_ruler._measure, []

    def measure_then_die(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # a session's end, hours into a long run
        calls.append(1)
        return measure(*args, **kwargs)

    monkeypatch.setattr(eval_ruler, "_measure", measure_then_die)
    out = tmp_path / "cut.json"
    flags = ["--lengths", "1600", "--samples", "1", "--tasks", "cwe,fwe,vt", "--methods", "memlong"]
    with pytest.raises(KeyboardInterrupt):
        ruler_cli(setup, *flags, "--json", str(out))
    rows = json.loads(out.read_text())["results"]
    assert [r["task"] for r in rows] == ["cwe", "fwe"] and all(0 <= r["score"] <= 1 for r in rows)

    # --resume measures only what is missing and keeps the rest as it was
    monkeypatch.setattr(eval_ruler, "_measure", measure)
    assert ruler_cli(setup, *flags, "--json", str(out), "--resume") == 0
    resumed = json.loads(out.read_text())["results"]
    assert resumed[:2] == rows and [r["task"] for r in resumed] == ["cwe", "fwe", "vt"]
    # a resumed run given some of the tasks records every task the report holds: its command rebuilds them all
    subset = ["--lengths", "1600", "--samples", "1", "--tasks", "fwe", "--methods", "memlong"]
    assert ruler_cli(setup, *subset, "--json", str(out), "--resume") == 0
    report = json.loads(out.read_text())
    assert report["results"] == resumed and report["config"]["tasks"] == "vt,cwe,fwe"
    assert "--tasks vt,cwe,fwe " in eval_command(report["config"], "cut.json")
    # ... and refuses a report measured with other prompts
    for extra, says in ((["--json", str(out), "--seed", "3"], "--seed"), ([], "--resume needs --json")):
        with pytest.raises(SystemExit) as e:
            ruler_cli(setup, *flags, "--resume", *extra)
        assert e.value.code != 0 and says in str(e.value.code) + capsys.readouterr().err
    assert json.loads(out.read_text())["results"] == resumed  # a refused resume leaves the report as it was


def test_resume_reads_the_same_essay_haystack_or_refuses(setup, prose, tmp_path, capsys):
    out = tmp_path / "essay.json"
    flags = ["--lengths", "1500", "--samples", "1", "--methods", "memlong", "--json", str(out)]
    assert ruler_cli(setup, "--data", str(prose), "--tasks", "niah_single_2", *flags) == 0
    essay = json.loads(out.read_text())["config"]["essay"]
    # a run without essay tasks keeps the report's record of it
    assert ruler_cli(setup, "--data", str(prose), "--tasks", "vt", *flags, "--resume") == 0
    report = json.loads(out.read_text())
    assert report["config"]["essay"] == essay and [r["task"] for r in report["results"]] == ["niah_single_2", "vt"]
    # another essay, or a report from before the essay was recorded (made of source code), is refused
    for recorded in ({"words": 5, "sha256": "0" * 16}, "missing"):
        old = json.loads(out.read_text())
        if recorded == "missing":
            del old["config"]["essay"]
        else:
            old["config"]["essay"] = recorded
        out.write_text(json.dumps(old))
        with pytest.raises(SystemExit) as e:
            ruler_cli(setup, "--data", str(prose), "--tasks", "niah_single_2,niah_single_3", *flags, "--resume")
        assert "another essay haystack" in str(e.value.code) + capsys.readouterr().err
        assert json.loads(out.read_text()) == old  # left as it was


@pytest.fixture(scope="module")
def tokenizer_only(setup, tmp_path_factory):
    """A model directory with the tokenizer and no weights: loading a model from it fails, so a
    clean usage error proves the check ran before any model was loaded."""
    d = tmp_path_factory.mktemp("tokenizer_only")
    for f in (setup / "model").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, d / f.name)
    return d


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--tasks", "niah_single_1,needle"], ["--tasks", "needle", "niah_single_1"]),
        (["--lengths", "300", "--tasks", "niah_single_1,vt"], ["--lengths", "300", "vt (needs about"]),
        (
            ["--lengths", "2000", "--tasks", "niah_single_2", "--data", "/nonexistent/corpus"],
            ["--data", "/nonexistent/corpus"],
        ),
        (
            ["--lengths", "2000", "--tasks", "niah_single_2,niah_multivalue", "--data", None],
            ["niah_single_2, niah_multivalue", "give --data"],
        ),
        (["--lengths", "2000", "--tasks", "niah_single_2"], ["words of prose", "source code is not prose"]),
        (["--lengths", "2000", "--samples", "0"], ["--samples"]),
        (
            ["--lengths", "2000", "--tasks", "qa_2", "--qa-hotpotqa", "/nonexistent.json"],
            ["--qa-hotpotqa", "/nonexistent.json"],
        ),
        (["--methods", "memlong,in_context"], ["--methods"]),
    ],
)
def test_bad_input_is_a_usage_error_before_loading(setup, tokenizer_only, capsys, extra, says):
    data = ["--data", str(setup / "corpus")]
    if "--data" in extra:
        i = extra.index("--data")
        data, extra = ([] if extra[i + 1] is None else extra[i : i + 2]), extra[:i] + extra[i + 2 :]
    with pytest.raises(SystemExit) as e:
        main(["eval", "ruler", "--model", str(tokenizer_only), *data, *extra])
    message = str(e.value.code) + capsys.readouterr().err
    assert e.value.code != 0 and all(s in message for s in says), message


def test_ruler_names_its_13_tasks_and_all_adds_our_variants():
    from memlong.recipes.eval import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert (
        p.parse_args(["ruler"]).tasks
        == ",".join(ruler.RULER_TASKS)
        == p.parse_args(["ruler", "--tasks", "ruler"]).tasks
    )
    assert len(ruler.RULER_TASKS) == 13
    assert p.parse_args(["ruler", "--tasks", "all"]).tasks == ",".join(ruler.ALL_TASKS)
    with pytest.raises(SystemExit):
        p.parse_args(["ruler", "--tasks", "all,vt"])  # "all" alone or names
