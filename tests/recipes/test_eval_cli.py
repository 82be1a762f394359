"""`memlong eval` sub-commands: each task's --help lists its own flags, the shared ones are spelled
the same everywhere, and every documented command (and every command rebuilt from a result JSON)
still parses."""

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from memlong.cli import main
from memlong.recipes import eval as eval_recipe
from memlong.recipes import eval_ruler
from memlong.report import eval_command

ROOT = Path(__file__).resolve().parents[2]
SHARED = {
    "--model",
    "--base-model",
    "--split",
    "--seed",
    "--methods",
    "--retriever",
    "--set",
    "--threads",
    "--dtype",
    "--json",
    "--plot",
    "--data",
}
OWN = {
    "ppl": {"--score", "--repeat", "--same-text", "--max-documents", "--lengths", "--max-base-length", "--resume"},
    "passkey": {"--depths", "--trials", "--no-requery", "--lengths", "--max-base-length", "--resume"},
    "icl": {
        "--shots-context",
        "--shots-memory",
        "--trials",
        "--max-examples",
        "--labels",
        "--demo-split",
        "--no-requery",
    },
    "ruler": {
        "--tasks",
        "--samples",
        "--qa-squad",
        "--qa-hotpotqa",
        "--no-chat-template",
        "--no-requery",
        "--lengths",
        "--max-base-length",
        "--resume",
    },
}


def parser():
    p = argparse.ArgumentParser(prog="memlong eval")
    eval_recipe.add_arguments(p)
    return p


def subparsers(p):
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def flags(sub) -> set[str]:
    return {o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def test_each_task_has_its_own_flags_and_the_shared_ones():
    subs = subparsers(parser())
    assert set(subs) == set(OWN)
    for task, sub in subs.items():
        assert flags(sub) == SHARED | OWN[task], task
    shared = {
        task: {o: (a.dest, a.default) for a in sub._actions for o in a.option_strings if o in SHARED - {"--data"}}
        for task, sub in subs.items()
    }
    assert all(v == shared["ppl"] for v in shared.values())  # same destination and default in every task


@pytest.mark.parametrize("task", list(OWN))
def test_help_lists_only_the_task_flags(task, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", task, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: memlong eval {task} ")
    listed = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text.split("options:")[1]))
    assert SHARED | OWN[task] <= listed
    others = set().union(*OWN.values()) - OWN[task]
    assert not listed & others, listed & others


def documented_commands():
    """Every ``memlong eval TASK ...`` command in the README, docs, model cards, Makefile, scripts and
    the eval recipes."""
    sources = [
        ROOT / "README.md",
        ROOT / "Makefile",
        *ROOT.glob("docs/**/*.md"),
        *ROOT.glob("src/memlong/**/*.md"),
        *ROOT.glob("scripts/*"),
        *ROOT.glob("src/memlong/recipes/eval*.py"),
    ]
    found = []
    for path in filter(Path.is_file, sources):
        text = path.read_text().replace("\\\n", " ")  # shell continuations
        for m in re.finditer(r"memlong eval (?:ppl|passkey|icl|ruler) --[^`\n#]*", text):  # (not prose mentions)
            found.append(m.group(0).strip())
    return found


def test_documented_commands_parse():
    commands = documented_commands()
    assert len(commands) >= 12 and any(c.startswith("memlong eval ruler") for c in commands)
    p = parser()
    for command in commands:
        if "--haystacks" in command:  # eval ruler before it followed RULER's definitions: rendered with that note
            continue
        args = p.parse_args(shlex.split(command)[2:])
        assert args.task == command.split()[2]


def test_commands_rebuilt_from_results_parse_back_to_the_same_flags():
    p = parser()
    configs = []
    for path in sorted((ROOT / "docs" / "results").glob("*.json")):
        report = json.loads(path.read_text())
        config = report.get("config") if isinstance(report, dict) else None
        if isinstance(config, dict) and config.get("task") in OWN and "haystacks" not in config:
            configs.append(config)
    for argv in (
        ["ppl", "--data", "d", "--lengths", "512", "--repeat", "64", "--set", "top_k=2"],
        ["ppl", "--data", "d", "--lengths", "256,512", "--same-text"],
        ["passkey", "--model", "m", "--data", "d", "--depths", "0.5", "--no-requery"],
        ["passkey", "--data", "d", "--dtype", "bfloat16"],
        ["icl", "--data", "sst2", "--shots-memory", "3"],
        ["icl", "--data", "d", "--split", "validation", "--demo-split", "train", "--labels", "a,b"],
        ["ruler", "--tasks", "vt,cwe", "--samples", "2", "--seed", "7", "--no-requery", "--no-chat-template"],
        ["ruler", "--tasks", "qa_1", "--qa-squad", "s.json"],
    ):
        configs.append(vars(p.parse_args(argv)))
    assert {c["task"] for c in configs} == set(OWN)
    for config in configs:
        again = vars(p.parse_args(shlex.split(eval_command(config, "out.json"))[2:]))
        for key, value in again.items():
            if key not in ("json", "plot", "threads", "base_model", "max_base_length", "resume"):
                # an icl report from before --no-requery was measured without requery, a ppl report from
                # before --same-text scored the first L tokens
                absent = (config["task"], key) in (("icl", "requery"), ("ppl", "same_text"))
                expected = config.get(key, False if absent else "float32" if key == "dtype" else None)
                assert value == expected or str(value) == str(expected), (config["task"], key, value, expected)


def test_ruler_doc_is_its_help():
    p = parser()
    assert subparsers(p)["ruler"].description == eval_ruler.__doc__
    assert "`memlong eval passkey`" in subparsers(p)["passkey"].description


def test_task_modules_do_not_import_the_dispatcher():
    """eval.py imports the task modules; they and eval_common import only eval_common (no circle)."""
    import ast

    for path in ROOT.glob("src/memlong/recipes/eval_*.py"):
        imported = {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
        }
        imported |= {
            f"{node.module}.{a.name}"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
            for a in node.names
        }
        assert "memlong.recipes.eval" not in imported, path.name
