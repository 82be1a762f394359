"""A long-input soak of `memlong ask`: a million tokens of held-out text read into a saved memory,
the process's memory sampled while it reads, a fact planted near the start asked at the end.

    .venv/bin/python scripts/soak_ask.py --data runs/corpus --tokens 1000000 --work runs/soak \
        --threads 2 --json docs/results/soak_ask_1m.json

Builds ``WORK/input.txt`` from the corpus's test split (documents in order until ``--tokens`` tokens
of the default tokenizer), plants ``FACT`` at ``--depth`` of it, then runs ``memlong ask input.txt
--memory WORK/memory -q QUESTION`` as a user would, sampling ``/proc/PID/status`` every
``--every`` seconds: ``VmRSS`` and its parts, ``RssAnon`` (the process's own memory: the model, the
window, the bank's index and records) and ``RssFile`` (pages of memory-mapped files the process
touched: where the bank lives when it is larger than RAM, see `memlong ask --help`; the kernel
writes them back and reclaims them as it needs). With ``--reuse``, asks the question again on the
saved memory (loaded, not read). Writes the JSON and its Markdown beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from memlong import report

FACT = "The access code of the north gate of the observatory is 73914."
QUESTION = "What is the access code of the north gate of the observatory?"
ANSWER = "73914"


def build_input(data: Path, tokens: int, depth: float, out: Path) -> dict:
    """Test-split documents, in order, until ``tokens`` tokens; the fact inserted between two lines at ``depth``."""
    from memlong.pretrained import load_tokenizer

    tok = load_tokenizer(None)
    parts, have = [], 0
    with open(data / "test.jsonl") as f:
        for line in f:
            text = json.loads(line)["text"]
            parts.append(text)
            have += len(tok(text, add_special_tokens=False)["input_ids"])
            if have >= tokens:
                break
    text = "\n\n".join(parts)
    ids = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(ids["input_ids"]) < tokens:
        raise SystemExit(
            f"the test split of {data} has {len(ids['input_ids']):,} tokens, fewer than --tokens {tokens:,}"
        )
    text = text[: ids["offset_mapping"][tokens - 1][1]]
    cut = text.rfind("\n", 0, int(len(text) * depth)) + 1
    text = text[:cut] + FACT + "\n" + text[cut:]
    out.write_text(text)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    return {"path": str(out), "characters": len(text), "tokens": n, "fact_at_character": cut, "depth": depth}


def _status(pid: int) -> dict | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    kib = {
        k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem") if k in fields
    }
    return kib or None


_PROGRESS = re.compile(r"([\d.]+)([kMG]?)/([\d.]+)([kMG]?)")
_SCALE = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}


def run_ask(argv: list[str], every: float, log: Path) -> dict:
    """Runs ``memlong ask argv``, sampling its memory; returns the samples, its output and its time."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "memlong", "ask", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    progress = {"tokens": 0}
    out_lines: list[str] = []

    def read_stderr():
        buf = ""
        with open(log, "a") as lf:
            while True:
                c = proc.stderr.read(256)
                if not c:
                    break
                lf.write(c)
                buf = (buf + c)[-512:]
                for m in _PROGRESS.finditer(buf):
                    progress["tokens"] = int(float(m.group(1)) * _SCALE[m.group(2)])

    def read_stdout():
        for line in proc.stdout:
            out_lines.append(line)
            print(line, end="", flush=True)

    threads = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=read_stdout, daemon=True)]
    for t in threads:
        t.start()
    samples = []
    while proc.poll() is None:
        s = _status(proc.pid)
        if s:
            samples.append({"t": round(time.perf_counter() - t0, 1), "tokens": progress["tokens"], **s})
        time.sleep(every)
    for t in threads:
        t.join()
    return {
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "samples": samples,
        "stdout": "".join(out_lines),
    }


def flatness(samples: list[dict], key: str, tokens: int) -> dict:
    """``key`` (bytes) while reading: at each quarter of the input and its growth from a quarter to the end."""
    reading = [s for s in samples if s["tokens"] > 0]
    at = {}
    for q in (0.25, 0.5, 0.75, 1.0):
        past = [s for s in reading if s["tokens"] >= q * tokens * 0.99]
        at[str(q)] = past[0][key] if past else (reading[-1][key] if reading else None)
    grew = None if at["0.25"] is None or at["1.0"] is None else at["1.0"] - at["0.25"]
    return {"at_quarters": at, "growth_after_first_quarter": grew}


def directory_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="runs/corpus")
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--depth", type=float, default=0.02, help="where the fact goes, as a fraction of the input")
    p.add_argument(
        "--work", default="runs/soak", help="folder for the input and the saved memory (needs disk: about 2x the bank)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--every", type=float, default=5.0, help="seconds between memory samples")
    p.add_argument("--reuse", action="store_true", help="ask again on the saved memory")
    p.add_argument(
        "--set", action="append", default=[], dest="overrides", metavar="FIELD=VALUE", help="passed to memlong ask"
    )
    p.add_argument("--json", required=True)
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    memory = work / "memory"
    if memory.exists():
        raise SystemExit(f"{memory} exists: remove it (or pass another --work) so that the soak reads from scratch")
    t0 = time.perf_counter()
    r: dict = {
        "command": "python " + " ".join(sys.argv),
        "input": build_input(Path(args.data), args.tokens, args.depth, work / "input.txt"),
    }
    r["input"]["build_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"input: {r['input']}", flush=True)
    r["calls"] = []
    questions = [("read and ask", QUESTION)] + ([("reuse and ask", QUESTION)] if args.reuse else [])
    for name, question in questions:
        out = work / f"{name.split()[0]}.json"
        argv = [
            r["input"]["path"],
            "--memory",
            str(memory),
            "-q",
            question,
            "--threads",
            str(args.threads),
            "--json",
            str(out),
        ]
        for o in args.overrides:
            argv += ["--set", o]
        ran = run_ask(argv, args.every, work / "ask.log")
        if ran["returncode"] != 0:
            raise SystemExit(f"memlong ask failed ({ran['returncode']}); see {work / 'ask.log'}")
        rep = json.loads(out.read_text())
        answer = rep["questions"][0]["answer"]
        tokens = r["input"]["tokens"]
        r["calls"].append(
            {
                "name": name,
                "question": question,
                "answer": answer,
                "correct": ANSWER in answer,
                "seconds": ran["seconds"],
                "reading_seconds": rep.get("seconds"),
                "tokens_per_s": rep.get("tokens_per_s"),
                "tokens_in_memory": rep.get("tokens_in_memory"),
                "reused": rep["memory"]["reused"],
                "capacity": rep.get("capacity"),
                "evicted_chunks": (rep.get("evicted") or {}).get("chunks"),
                "peak_rss_bytes": max((s["VmRSS"] for s in ran["samples"]), default=0),
                "peak_rss_anon_bytes": max((s.get("RssAnon", 0) for s in ran["samples"]), default=0),
                # a reused memory is loaded, not read: nothing to follow
                "rss_anon_while_reading": None
                if rep["memory"]["reused"]
                else flatness(ran["samples"], "RssAnon", tokens),
                "rss_while_reading": None if rep["memory"]["reused"] else flatness(ran["samples"], "VmRSS", tokens),
                "samples": ran["samples"],
                "stdout": ran["stdout"],
            }
        )
        r["memory_bytes"] = directory_bytes(memory)
        r["bank"] = (
            f"bank_device {rep['memlong_config']['bank_device']}, memory_capacity {rep['memlong_config']['memory_capacity']:,} tokens"
        )
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
        report.write_markdown(r, args.json)
    print(report.markdown(r, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
