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
