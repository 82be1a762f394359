"""`memlong bench` sub-commands: each benchmark's --help lists its own flags, the shared ones are
spelled the same everywhere, and every documented command (and every command a result JSON
records) still parses."""

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from memlong.cli import main
from memlong.recipes import bench

ROOT = Path(__file__).resolve().parents[2]
SHARED = {"--threads", "--json", "--chunk-size", "--top-k"}
OWN = {
    "ingest": {
        "--tokens",
        "--methods",
        "--model",
        "--retriever",
        "--layers",
        "--hidden",
        "--heads",
        "--kv-heads",
        "--window",
        "--capacity",
        "--set",
        "--base-timeout",
        "--max-rss-gb",
        "--malloc-mmap-threshold",
        "--generate",
        "--plot",
        "--worker",
        "--text",
    },
    "search": {"--sizes", "--dim", "--queries", "--vectors", "--embeddings-cache", "--indexes", "--text"},
    "retriever": {
        "--corpus",
        "--sample-corpus",
        "--sample-tokens",
        "--chunks",
        "--max-doc-chunks",
        "--batch",
        "--retrievers",
    },
}


def parser():
    p = argparse.ArgumentParser(prog="memlong bench")
    bench.add_arguments(p)
    return p


def subparsers(p):
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def flags(sub) -> set[str]:
    return {o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def test_each_benchmark_has_its_own_flags_and_the_shared_ones():
    subs = subparsers(parser())
    assert set(subs) == set(OWN)
    for name, sub in subs.items():
        assert flags(sub) == SHARED | OWN[name], name
    shared = {
        name: {o: (a.dest, a.default) for a in sub._actions for o in a.option_strings if o in SHARED}
        for name, sub in subs.items()
    }
    assert all(v == shared["ingest"] for v in shared.values())  # same destination and default in every benchmark


@pytest.mark.parametrize("name", list(OWN))
def test_help_lists_only_the_benchmark_flags(name, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: memlong bench {name} ") and f"`memlong bench {name}`" in text
    listed = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", text.split("options:")[1]))
    assert SHARED | OWN[name] - {"--worker"} <= listed
    others = set().union(*OWN.values()) - OWN[name]
    assert not listed & others, listed & others


def documented_commands():
    """Every ``memlong bench NAME ...`` command in the README, docs, Makefile, scripts, the bench
    recipes, and the commands the result JSONs record."""
    sources = [
        ROOT / "README.md",
        ROOT / "Makefile",
        *ROOT.glob("docs/**/*.md"),
        *ROOT.glob("scripts/*"),
        *ROOT.glob("src/memlong/recipes/bench*.py"),
    ]
    found = []
    for path in filter(Path.is_file, sources):
        text = path.read_text().replace("\\\\\n", " ").replace("\\\n", " ")  # shell continuations (\\ in docstrings)
        for m in re.finditer(r"memlong bench (?:ingest|search|retriever) --[^`\n#\"]*", text):  # (not prose mentions)
            found.append(m.group(0).strip())
    for path in sorted((ROOT / "docs" / "results").glob("*.json")):
        report = json.loads(path.read_text())
        command = report.get("command") if isinstance(report, dict) else None
        if isinstance(command, str) and command.startswith("memlong bench "):
            found.append(command)
    return found


def test_documented_commands_parse():
    commands = documented_commands()
    assert {c.split()[2] for c in commands} == set(OWN) and len(commands) >= 15
    p = parser()
    for command in commands:
        args = p.parse_args(shlex.split(command)[2:])
        assert args.what == command.split()[2]


def test_ingest_worker_command_parses_to_the_same_flags():
    """`bench ingest` runs each (method, N) in a worker, `memlong bench ingest --worker METHOD N` with
    every flag that shapes a measurement passed through: that command parses back to the same values."""
    p = parser()
    args = p.parse_args(
        [
            "ingest",
            "--model",
            "shipped",
            "--tokens",
            "1024,2048",
            "--capacity",
            "4096",
            "--text",
            "t.txt",
            "--json",
            "out.json",
            "--plot",
            "out.png",
            "--set",
            "bank_heads=[[7, 0], [8, 2]]",
            "--set",
            "bank_dtype=int8",
        ]
    )
    cmd = bench.worker_command(args, "memlong", 2048)
    assert cmd[1:5] == ["-m", "memlong", "bench", "ingest"]
    again = vars(p.parse_args(cmd[4:]))
    assert again.pop("worker") == ["memlong", "2048"] and again["json"] is None and again["plot"] is None
    assert again["overrides"] == ["bank_heads=[[7, 0], [8, 2]]", "bank_dtype=int8"]
    assert {k: v for k, v in again.items() if k not in ("tokens", "methods", "json", "plot")} == {
        k: v for k, v in vars(args).items() if k not in ("tokens", "methods", "json", "plot", "worker")
    }
