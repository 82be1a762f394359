"""The README's Python example runs as written."""

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _render_readme():
    """scripts/render_readme.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_readme", README.parent / "scripts" / "render_readme.py")
    render_readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_readme)
    return render_readme


def test_readme_example_runs(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # it writes a bank directory
    try:
        exec(compile(blocks[0], "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "chunks in memory" in out and "MemLongCache" in out
    assert (tmp_path / "argparse-bank" / "bank.json").exists()
    assert (tmp_path / "argparse-memory" / "memory.json").exists()


def test_generated_sections_in_sync():
    """README.md and docs/*.md (the project history) match the JSON records they render."""
    render_readme = _render_readme()
    files = render_readme.rendered_files()
    assert README in files and README.parent / "docs" / "HISTORY.md" in files
    for f in files:
        text = f.read_text()
        assert render_readme.render(text, f) == text, f"{f.name} is out of date: run python scripts/render_readme.py"
    for f, text in render_readme.markdown_files().items():  # each report's table beside its JSON
        assert f.exists() and f.read_text() == text, f"{f.name} is out of date: run python scripts/render_readme.py"


def test_a_report_measured_before_a_change_is_noted_under_its_command():
    """A note of scripts/render_readme.py's NOTES sits under its report's command, in the page and its .md."""
    render_readme = _render_readme()
    history = (README.parent / "docs" / "HISTORY.md").read_text()
    md = (README.parent / "docs" / "results" / "reference_passkey.md").read_text()
    assert md.split("\n")[2] == render_readme.OLDER_SEARCH and md.split("\n")[0] in history
    assert md.strip() in history.replace("](results/", "](")


def test_runs_with_earlier_settings_are_named_with_the_fields_that_differ():
    """The headline names a report whose memlong rows ran with another layout or other question
    settings than the default model's today; rag and base rows, which the memory's settings never
    reach, and a run with today's settings are not named."""
    render_readme = _render_readme()
    today = render_readme._shipped()
    every_head = {**today, "bank_heads": None, "question_score_ratio": 0.0}
    old = {k: v for k, v in every_head.items() if k != "question_score_ratio"}  # before the field existed

    def run(cfg, method="memlong", task="passkey"):
        return {"config": {"task": task, "memlong": cfg}, "results": [{"method": method}]}

    said = render_readme.earlier_settings(
        [(run(today), "now.json"), (run(old), "old.json"), (run(every_head, "rag"), "rag.json")]
        + [(run(every_head, task="ppl"), "ppl.json")]
    )
    assert said == [
        "`old.json` (bank_heads: every head, question_score_ratio=0.0)",
        "`ppl.json` (bank_heads: every head)",  # ppl asks no question: only the layout counts
    ]
    # a demo records its whole config in model.memlong (older demos: the fields flat in model)
    halved = {**today, "question_score_ratio": 0.5}
    demos = [({"facts": [], "model": {"memlong": halved}}, "demo.json"), ({"facts": [], "model": old}, "older.json")]
    assert render_readme.earlier_settings(demos) == [
        "`demo.json` (question_score_ratio=0.5)",
        "`older.json` (bank_heads: every head, question_score_ratio=0.0)",
    ]


def test_the_headline_gives_every_head_runs_a_row_of_their_own():
    """memlong rows that banked every head (the earlier default) are labelled so in the headline;
    the same model without memory, and runs with today's layout, keep their method."""
    render_readme = _render_readme()
    today = render_readme._shipped()
    assert today["bank_heads"] is not None  # the default keeps some heads
    rows = [{"method": "memlong"}, {"method": "memlong_no_memory"}]
    old = render_readme._by_layout({"config": {"memlong": {**today, "bank_heads": None}}, "results": rows})
    assert [r["method"] for r in old["results"]] == [render_readme.EVERY_HEAD_ROW, "memlong_no_memory"]
    now = render_readme._by_layout({"config": {"memlong": today}, "results": rows})
    assert [r["method"] for r in now["results"]] == ["memlong", "memlong_no_memory"]


def test_a_training_runs_learning_curve_and_command(tmp_path):
    """An adaptation run renders as its command (the flags it changed, parsing back to its
    arguments) and its validation rows: loss with and without memory, and memory's change."""
    import argparse
    import shlex

    from memlong.recipes import train

    render_readme = _render_readme()
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    args = vars(p.parse_args(["--data", "runs/corpus", "--output", "runs/a", "--lora-r", "16", "--memory-layer", "19"]))
    args |= {"retrieval_layers": "20,21", "loss_sample": 0.25, "model": "/cache/models/SmolLM2-135M-Instruct-Q4_1-x"}
    command = render_readme.train_command(args)
    again = vars(p.parse_args(shlex.split(command)[2:]))
    assert {k: v for k, v in again.items() if k != "model"} == {k: v for k, v in args.items() if k != "model"}
    assert "--model" not in command  # the default base
    (tmp_path / "run.csv").write_text(
        "step,loss,lr,tokens,seconds,tokens_per_second,forward_ratio,val_loss_memory,val_ppl_memory,"
        "val_loss_no_memory,val_ppl_no_memory\n5,2.0,0.1,5120,30,140,0.6,,,,\n"
        "100,2.1,0.1,102400,900,120,0.5,2.0,7.39,2.5,12.18\n"
    )
    summary = {"args": args, "hardware": "cpu", "threads_per_process": 1, "mixed_precision": "no"}
    summary |= {"validation": {"windows": 4, "length": 4096, "scored": 1024}, "steps": 100, "tokens": 102400}
    text = render_readme.learning_curve([(summary | {"train_seconds": 900.0}, str(tmp_path / "run.json"))])
    assert command in text and "| 100 | 102,400 | 2.0000 | 2.5000 | -20.00% | 120 (0.50x) |" in text
    assert "| 5 |" not in text  # rows without validation are not shown


def test_a_default_report_measured_before_a_change_says_how_to_repeat_it():
    render_readme = _render_readme()
    today = render_readme._shipped()
    run = {"config": {"task": "passkey", "memlong": today}, "results": [{"method": "memlong"}]}
    assert render_readme._changed_since(run) is None
    run["config"]["memlong"] = {**today, "bank_heads": None, "question_tail": 0}
    note = render_readme._changed_since(run)
    assert "bank_heads: every head" in note and "`--set bank_heads=null --set question_tail=0` repeats it" in note
