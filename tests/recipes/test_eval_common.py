"""What the `memlong eval` tasks measured by length share (:mod:`memlong.recipes.eval_common`):
a run cut short keeps what it measured in its JSON, and ``--resume`` measures only the cells
still missing, refusing a report measured with other inputs. Ruler's own cells:
tests/recipes/test_eval_ruler.py."""

import json

import pytest

from memlong.cli import main
from memlong.recipes import eval_common

TASKS = {  # task -> (flags, the cells a run measures, in order)
    "passkey": (
        ["--lengths", "700,900", "--depths", "0.2,0.8", "--trials", "1", "--methods", "memlong,memlong_no_memory"],
        [(m, L, d) for L in (700, 900) for m in ("memlong", "memlong_no_memory") for d in (0.2, 0.8)],
    ),
    "ppl": (
        [
            "--lengths",
            "300,600",
            "--score",
            "100",
            "--max-documents",
            "1",
            "--methods",
            "memlong,memlong_no_memory,base_truncated",
        ],
        [(m, L) for L in (300, 600) for m in ("memlong", "memlong_no_memory", "base_truncated")],
    ),
}


def cell(task, row):
    return (row["method"], row["length"], row["depth"]) if task == "passkey" else (row["method"], row["length"])


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_second")} for r in rows]


def eval_cli(eval_setup, task, *extra):
    return main(
        [
            "eval",
            task,
            "--model",
            str(eval_setup / "model"),
            "--retriever",
            "hashing",
            "--threads",
            "1",
            "--data",
            str(eval_setup / "corpus"),
            *TASKS[task][0],
            *extra,
        ]
    )


@pytest.mark.parametrize("task", list(TASKS))
def test_a_run_cut_short_resumes_where_it_stopped(eval_setup, task, tmp_path, monkeypatch, capsys):
    out = tmp_path / f"{task}.json"
    assert eval_cli(eval_setup, task, "--json", str(out)) == 0
    whole = json.loads(out.read_text())["results"]
    assert [cell(task, r) for r in whole] == TASKS[task][1]

    # the same run, cut after its third cell (a session's end, hours into a long run)
    write = eval_common.write_report

    def write_then_die(args, results, *a, **kw):
        report = write(args, results, *a, **kw)
        if len(results) == 3:
            raise KeyboardInterrupt
        return report

    monkeypatch.setattr(eval_common, "write_report", write_then_die)
    cut = tmp_path / "cut.json"
    with pytest.raises(KeyboardInterrupt):
        eval_cli(eval_setup, task, "--json", str(cut))
    kept = json.loads(cut.read_text())["results"]
    assert untimed(kept) == untimed(whole[:3])
    monkeypatch.setattr(eval_common, "write_report", write)

    # --resume measures only the missing cells: the report equals the uncut run's, timings aside
    assert eval_cli(eval_setup, task, "--json", str(cut), "--resume") == 0
    assert "--resume: 3 cells already in" in capsys.readouterr().out
    resumed = json.loads(cut.read_text())["results"]
    assert resumed[:3] == kept and untimed(resumed) == untimed(whole)
    # resumed with fewer --methods, the report still names every method it has rows of, so that
    # its command rebuilds them all
    every = TASKS[task][0][TASKS[task][0].index("--methods") + 1]
    assert eval_cli(eval_setup, task, "--json", str(cut), "--resume", "--methods", "memlong") == 0
    assert json.loads(cut.read_text())["config"]["methods"] == every
    assert json.loads(cut.read_text())["results"] == resumed

    # other inputs, another MemLong config or another task's report: refused, the report left as it was
    other = "--trials" if task == "passkey" else "--score"
    refused = (
        ([other, "2"], f"measured with {other} "),
        (["--set", "top_k=3"], "measured with --set []"),
        (["--dtype", "bfloat16"], "measured with --dtype 'float32', this run has 'bfloat16'"),
    )
    for extra, says in refused:
        with pytest.raises(SystemExit) as e:
            eval_cli(eval_setup, task, "--json", str(cut), "--resume", *extra)
        assert e.value.code != 0 and says in str(e.value.code) + capsys.readouterr().err
    report = json.loads(cut.read_text())
    report["config"]["memlong"]["top_k"] += 1  # a report from a model that reads otherwise
    (tmp_path / "other.json").write_text(json.dumps(report))
    with pytest.raises(SystemExit) as e:
        eval_cli(eval_setup, task, "--json", str(tmp_path / "other.json"), "--resume")
    assert "measured with another MemLong config (differs in ['top_k'])" in str(e.value.code) + capsys.readouterr().err
    # a report written before a config field existed resumes (the field compares as its default)
    report["config"]["memlong"]["top_k"] -= 1
    del report["config"]["memlong"]["lexical_weight"]
    del report["config"]["dtype"]  # (and before --dtype: float32)
    (tmp_path / "older.json").write_text(json.dumps(report))
    assert eval_cli(eval_setup, task, "--json", str(tmp_path / "older.json"), "--resume") == 0
    assert json.loads((tmp_path / "older.json").read_text())["results"] == resumed
    if task == "passkey":  # (no base method here: the base model is named, not loaded)
        with pytest.raises(SystemExit) as e:
            eval_cli(eval_setup, task, "--json", str(cut), "--resume", "--base-model", "another-base")
        assert "measured with the base model" in str(e.value.code) + capsys.readouterr().err
    wrong = "ppl" if task == "passkey" else "passkey"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "eval",
                wrong,
                "--model",
                str(eval_setup / "model"),
                "--retriever",
                "hashing",
                "--data",
                str(eval_setup / "corpus"),
                "--json",
                str(cut),
                "--resume",
            ]
        )
    assert f"an eval {task} report, not eval {wrong}" in str(e.value.code) + capsys.readouterr().err
    assert json.loads(cut.read_text())["results"] == resumed


@pytest.mark.parametrize("method", ["memlong", "memlong_no_memory", "base_truncated"])
def test_an_answer_stops_where_its_criterion_says(eval_setup, method):
    # with requery the criterion runs on the question's generate call: it must still see the answer
    import torch
    from transformers import StoppingCriteria

    from memlong.pretrained import load_memlong_model

    model, tok = load_memlong_model(str(eval_setup / "model"), retriever="hashing")
    base = model if method == "base_truncated" else None
    ids = torch.tensor([tok("word " * 150, add_special_tokens=False)["input_ids"][:300]])

    class AfterTwo(StoppingCriteria):
        def __init__(self):
            self.calls = 0

        def __call__(self, input_ids, scores, **kwargs):
            self.calls += 1
            return torch.full((input_ids.shape[0],), self.calls >= 2, dtype=torch.bool)

    def answer(new_tokens, stop=None):
        return eval_common.generate_answer(method, model, base, tok, ids, new_tokens, 20, 128, stop=stop)

    assert answer(8, stop=lambda tok: AfterTwo()) == answer(2) != answer(8)


def test_dtype_loads_both_models_in_it_and_the_report_says_so(eval_setup, tmp_path, monkeypatch):
    """``--dtype bfloat16``: the MemLong model and the base run in bfloat16, the report records it
    and the command rebuilt from it carries the flag."""
    from memlong.report import eval_command

    out = tmp_path / "bf16.json"
    flags = ["--methods", "memlong,base_truncated", "--dtype", "bfloat16", "--json", str(out)]
    assert eval_cli(eval_setup, "passkey", *flags) == 0
    report = json.loads(out.read_text())
    assert report["config"]["dtype"] == "bfloat16" and len(report["results"]) == 8
    assert " --dtype bfloat16 " in eval_command(report["config"], "x.json")
    seen = []
    load = eval_common.load_models

    def spy(args, methods):
        loaded = load(args, methods)
        seen.extend(p.dtype for m in (loaded[1], loaded[2]) for p in list(m.parameters())[:1])
        return loaded

    monkeypatch.setattr(eval_common, "load_models", spy)
    assert eval_cli(eval_setup, "passkey", *flags[:-1], str(tmp_path / "again.json")) == 0
    import torch

    assert seen == [torch.bfloat16, torch.bfloat16]
