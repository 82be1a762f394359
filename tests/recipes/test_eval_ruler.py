"""`memlong eval ruler` end to end on a tiny random MemLong model at small lengths: a record per
task, haystack, length and method, the plot, and bad input stopped before any model loads."""

import argparse
import json
import shutil

import pytest

from memlong.cli import main
from memlong.data import ruler
from memlong.recipes.eval import eval_command


@pytest.fixture(scope="module")
def setup(eval_setup):
    return eval_setup


def ruler_cli(setup, *extra):
    return main(["eval", "ruler", "--model", str(setup / "model"), "--retriever", "hashing", "--threads", "1", *extra])


def test_end_to_end_json_plot_and_skipped_base(setup, tmp_path, capsys):
    out = tmp_path / "ruler.json"
    assert ruler_cli(setup, "--data", str(setup / "corpus"), "--lengths", "900,1300", "--samples", "2",
                     "--tasks", "niah_single,vt", "--max-base-length", "1000",
                     "--json", str(out), "--plot", str(tmp_path / "ruler.png")) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    variants = [("niah_single", "noise"), ("niah_single", "text"), ("vt", "noise")]
    methods = ["memlong", "memlong_no_memory", "base_full", "base_truncated"]
    assert [(r["task"], r["haystack"], r["length"], r["method"]) for r in rows] == [
        (t, h, L, m) for L in (900, 1300) for m in methods for t, h in variants]  # a length, a method at a time
    for r in rows:
        assert r["samples"] == 2 and r["seconds"] >= 0 and r["prompt_tokens"] + r["max_new_tokens"] <= r["length"]
        if r["method"] == "base_full" and r["length"] == 1300:  # above --max-base-length: skipped, not made up
            assert r["score"] is None and r["note"].startswith("skipped")
            continue
        assert 0 <= r["score"] <= 1 and len(r["examples"]) == 2
        for e in r["examples"]:
            assert {"prompt_tail", "expected", "output", "score", "depths"} <= set(e)
            assert "Question:" in e["prompt_tail"] and e["score"] == ruler.score(e["output"], e["expected"])
        assert r["score"] == pytest.approx(sum(e["score"] for e in r["examples"]) / 2)
    # the same prompts for every method
    by = {}
    for r in rows:
        if r.get("examples"):
            by.setdefault((r["task"], r["haystack"], r["length"]), set()).add(
                json.dumps([(e["prompt_tail"], e["expected"]) for e in r["examples"]]))
    assert all(len(v) == 1 for v in by.values())
    config = report["config"]
    assert config["task"] == "ruler" and config["tasks"] == "niah_single,vt" and config["samples"] == 2
    assert config["retriever_info"]["class"] == "HashingRetriever" and config["memlong"]["local_window"] == 64
    command = eval_command(config, "ruler.json")
    assert command.startswith(f"memlong eval ruler --model {setup / 'model'} --data {setup / 'corpus'} ")
    assert "--tasks niah_single,vt" in command and "--samples 2" in command
    assert (tmp_path / "ruler.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "niah_single/text" in printed and "average score over the tasks" in printed


def test_aggregation_tasks_noise_only_without_data(setup, tmp_path):
    out = tmp_path / "agg.json"
    assert ruler_cli(setup, "--lengths", "1600", "--samples", "1", "--tasks", "cwe,fwe,niah_multiquery",
                     "--haystacks", "noise", "--methods", "memlong,base_truncated", "--json", str(out)) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["task"], r["haystack"], r["method"]) for r in rows] == [
        ("cwe", None, "memlong"), ("fwe", None, "memlong"), ("niah_multiquery", "noise", "memlong"),
        ("cwe", None, "base_truncated"), ("fwe", None, "base_truncated"),
        ("niah_multiquery", "noise", "base_truncated")]
    assert all(0 <= r["score"] <= 1 for r in rows)
    assert len(rows[0]["examples"][0]["expected"]) == 10 and len(rows[1]["examples"][0]["expected"]) == 3


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
    with pytest.raises(KeyboardInterrupt):
        ruler_cli(setup, "--lengths", "1600", "--samples", "1", "--tasks", "cwe,fwe,vt", "--methods", "memlong",
                  "--json", str(out))
    rows = json.loads(out.read_text())["results"]
    assert [r["task"] for r in rows] == ["cwe", "fwe"] and all(0 <= r["score"] <= 1 for r in rows)

    # --resume measures only what is missing and keeps the rest as it was
    monkeypatch.setattr(eval_ruler, "_measure", measure)
    assert ruler_cli(setup, "--lengths", "1600", "--samples", "1", "--tasks", "cwe,fwe,vt", "--methods", "memlong",
                     "--json", str(out), "--resume") == 0
    resumed = json.loads(out.read_text())["results"]
    assert resumed[:2] == rows and [r["task"] for r in resumed] == ["cwe", "fwe", "vt"]
    # ... and refuses a report measured with other prompts
    for extra, says in ((["--json", str(out), "--seed", "3"], "--seed"), ([], "--resume needs --json")):
        with pytest.raises(SystemExit) as e:
            ruler_cli(setup, "--lengths", "1600", "--samples", "1", "--tasks", "cwe,fwe,vt", "--methods", "memlong",
                      "--resume", *extra)
        assert e.value.code != 0 and says in str(e.value.code) + capsys.readouterr().err
    assert json.loads(out.read_text())["results"] == resumed  # a refused resume leaves the report as it was


@pytest.fixture(scope="module")
def tokenizer_only(setup, tmp_path_factory):
    """A model directory with the tokenizer and no weights: loading a model from it fails, so a
    clean usage error proves the check ran before any model was loaded."""
    d = tmp_path_factory.mktemp("tokenizer_only")
    for f in (setup / "model").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, d / f.name)
    return d


@pytest.mark.parametrize("extra, says", [
    (["--tasks", "niah_single,needle"], ["--tasks", "needle", "niah_single"]),
    (["--haystacks", "essay"], ["--haystacks", "essay", "noise"]),
    (["--lengths", "150", "--tasks", "niah_single,vt", "--haystacks", "noise"], ["--lengths", "150", "vt (needs"]),
    (["--lengths", "40000"], ["--data", "fewer than the longest --lengths 40000", "at least 40000"]),
    (["--lengths", "2000", "--tasks", "niah_single", "--haystacks", "text", "--data", "/nonexistent/corpus"], ["--data", "/nonexistent/corpus"]),
    (["--lengths", "2000", "--tasks", "niah_single", "--haystacks", "text", "--data", None], ["needs --data"]),
    (["--lengths", "2000", "--samples", "0"], ["--samples"]),
    (["--methods", "memlong,in_context"], ["--methods"]),
])
def test_bad_input_is_a_usage_error_before_loading(setup, tokenizer_only, capsys, extra, says):
    data = ["--data", str(setup / "corpus")]
    if "--data" in extra:
        i = extra.index("--data")
        data, extra = ([] if extra[i + 1] is None else extra[i : i + 2]), extra[:i] + extra[i + 2 :]
    with pytest.raises(SystemExit) as e:
        main(["eval", "ruler", "--model", str(tokenizer_only), *data, *extra])
    message = str(e.value.code) + capsys.readouterr().err
    assert e.value.code != 0 and all(s in message for s in says), message


def test_all_names_every_task_and_haystack():
    from memlong.recipes.eval import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["ruler", "--tasks", "all", "--haystacks", "all"])
    assert args.tasks == ",".join(ruler.TASKS) and args.haystacks == ",".join(ruler.HAYSTACKS)
    with pytest.raises(SystemExit):
        p.parse_args(["ruler", "--tasks", "all,vt"])  # "all" alone or names
