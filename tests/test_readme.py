"""The README's Python example runs as written."""

import json
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


def test_results_tables_name_their_commands():
    """The results renderer rebuilds each eval command from its JSON."""
    render_readme = _render_readme()
    results = README.parent / "docs" / "results"
    text = render_readme.results_section([results / "adaptation_cpu_copy_probe.json"])
    assert "memlong eval ppl --model " in text and "--retriever minilm" in text and "--repeat 1024" in text
    assert "| 4,096 | memlong |" in text


def test_passkey_table_shows_the_share_of_keys_retrieved():
    render_readme = _render_readme()
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
    table = render_readme._passkey_table(rows)
    assert "key retrieved" in table[0] and table[2].endswith("| 0.50 | 0.50 | 2 |") and "| - | 2 |" in table[3]
    assert "key retrieved" not in render_readme._passkey_table(rows[2:])[0]


def test_results_measured_before_the_window_index_say_so(tmp_path):
    """A question-asking evaluation whose config predates ``rerank_index`` (or ``lexical_weight``) is marked, in its
    RESULTS.md table and in the headline's column, since its command now retrieves otherwise."""
    render_readme = _render_readme()
    row = {"method": "memlong", "length": 4096, "depth": 0.5, "trials": 1, "accuracy": 1.0}
    config = {
        "task": "passkey",
        "methods": "memlong",
        "lengths": "4096",
        "data": "d",
        "depths": "0.5",
        "trials": 1,
        "memlong": {"top_k": 4},
    }
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"config": config, "results": [row]}))
    new.write_text(
        json.dumps(
            {
                "config": {
                    **config,
                    "memlong": {"top_k": 4, "rerank_index": True, "lexical_weight": 0.5, "question_reread": True},
                },
                "results": [row],
            }
        )
    )
    assert "before the bank's window index" in render_readme.results_section([old])
    assert "window index" not in render_readme.results_section([new])
    # a run with the window index but before the lexical term is marked too
    mid = tmp_path / "mid.json"
    mid.write_text(json.dumps({"config": {**config, "memlong": {"top_k": 4, "rerank_index": True}}, "results": [row]}))
    assert "Measured before questions weighed their words" in render_readme.results_section([mid])
    ppl = {"task": "ppl", "methods": "memlong", "memlong": {"top_k": 4}}
    assert not render_readme._older_search(ppl)  # reading is not affected
    render_readme.ROOT = tmp_path  # the headline names its sources relative to the repository
    assert "| passkey 4k * |" in render_readme.headline_section([old])
    assert "| passkey 4k |" in render_readme.headline_section([old, new]) and "*" not in render_readme.headline_section(
        [new]
    )


def test_default_model_results_measured_before_question_reread_say_so(tmp_path):
    """The default model rereads a question's hits since its config turned ``question_reread`` on: a
    question-asking evaluation of it whose config lacks the field is marked with the flag that
    repeats it; one that set the field, another model's, or one without questions is not."""
    render_readme = _render_readme()
    row = {"method": "memlong", "length": 4096, "depth": 0.5, "trials": 1, "accuracy": 1.0}
    search = {"top_k": 4, "rerank_index": True, "lexical_weight": 0.5}
    config = {
        "task": "passkey",
        "model": None,
        "methods": "memlong",
        "lengths": "4096",
        "data": "d",
        "depths": "0.5",
        "trials": 1,
        "memlong": search,
    }
    before = tmp_path / "before.json"
    before.write_text(json.dumps({"config": config, "results": [row]}))
    assert render_readme._before_reread(config)
    assert "`--set question_reread=false` repeats that" in render_readme.results_section([before])
    assert not render_readme._before_reread({**config, "memlong": {**search, "question_reread": False}})
    assert not render_readme._before_reread({**config, "model": "src/memlong/pretrained/memlong"})
    assert not render_readme._before_reread({**config, "requery": False})  # no question focus, nothing reread
    assert not render_readme._before_reread({**config, "task": "ppl"})
    render_readme.ROOT = tmp_path
    assert "| passkey 4k * |" in render_readme.headline_section([before])
