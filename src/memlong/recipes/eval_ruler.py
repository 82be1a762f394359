"""`memlong eval ruler`: RULER's synthetic long-context tasks (Hsieh et al. 2024), generated locally.

Every task (:mod:`memlong.data.ruler`: niah_single, niah_multikey, niah_multivalue,
niah_multiquery, vt, cwe, fwe) is generated for each length (prompt + answer <= length) with
``--samples`` prompts, deterministic for ``--seed``; the needle tasks once per haystack
(``--haystacks``: ``noise``, repeated sentences; ``text``, sentences of the ``--data``
documents' ``--split``). Each prompt is answered greedily, the question last, by the methods of
``eval ppl`` (memlong, memlong_no_memory, base_full up to ``--max-base-length``, base_truncated),
retrieval focused on the question (``generate(requery=N)``, as eval passkey). The answer ends at
a blank line or a new ``Question:`` (as ``memlong ask``); its score is the fraction of the
expected strings it contains (RULER's), averaged over the samples. cwe and fwe aggregate over
the whole context: a memory that retrieves a few chunks is expected to fail them.

All prompts are built, and every length checked against every task's minimum, before a model is
loaded. Output: a table; ``--json``: a record per task, haystack, length and method (score, each
sample's prompt tail, expected strings and output, seconds) and the config; ``--plot``: a
heatmap per method (task by length) above the average score against length.

    memlong eval ruler --data runs/corpus --lengths 4096,16384 --samples 3 --json ruler.json --plot ruler.png
    memlong eval ruler --tasks niah_single,vt --haystacks noise --lengths 2048,8192   # noise only: no --data
"""

from __future__ import annotations

import argparse
import random
import time

from memlong.data.ruler import HAYSTACKS, TASKS
from memlong.recipes.eval_common import (
    METHODS,
    Skip,
    generate_answer,
    load_models,
    measured,
    parse_lengths,
    resumed_report,
    resumed_results,
    write_report,
)

DEFAULT_LENGTHS = "4096,8192,16384,32768,65536,131072"


def _names(choices, flag: str):
    def parse(text: str) -> str:
        names = [x.strip() for x in text.split(",") if x.strip()]
        if names == ["all"]:
            return ",".join(choices)
        bad = [x for x in names if x not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {flag} {', '.join(bad) or repr(text)}; choose among "
                                             f"{', '.join(choices)}")
        return ",".join(names)

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="documents for the text haystack (a corpus folder and its --split, a .jsonl file, a text "
                        "file, a folder of .txt files, or a datasets name); needed only for --haystacks text")
    p.add_argument("--tasks", default=",".join(TASKS), type=_names(tuple(TASKS), "task"),
                   help="all (the default), or comma-separated, among: "
                        + "; ".join(f"{t.name} ({t.about})" for t in TASKS.values()))
    p.add_argument("--haystacks", default=",".join(HAYSTACKS), type=_names(HAYSTACKS, "haystack"),
                   help="the needle tasks' haystacks: noise (repeated sentences) and/or text (--data); vt always "
                        "reads noise, cwe and fwe none")
    p.add_argument("--samples", type=int, default=3, help="prompts per task, haystack and length")
    p.epilog = (f"--lengths default: {DEFAULT_LENGTHS}; "
                "--methods default: memlong,memlong_no_memory,base_full,base_truncated")


def label(task: str, haystack: str | None) -> str:
    return f"{task}/{haystack}" if task.startswith("niah") else task


def build_prompts(args, tok, lengths: list[int]) -> dict:
    """``{(task, haystack, length): [RulerSample]}`` for the run, or a MemLongConfigError naming the
    flag to change (a length below a task's minimum, a haystack with too little text)."""
    from memlong.config import MemLongConfigError
    from memlong.data import ruler

    if args.samples < 1:
        raise MemLongConfigError(f"--samples must be >= 1; got {args.samples}")
    variants = []
    for task in args.tasks.split(","):
        kind = TASKS[task].kind
        hays = args.haystacks.split(",") if kind == "niah" else ["noise"] if kind == "vt" else [None]
        variants.extend((task, h) for h in hays)
    haystacks = {"noise": ruler.noise_haystack(tok)}
    if any(h == "text" for _, h in variants):
        if args.data is None:
            raise MemLongConfigError("--haystacks text needs --data (documents to make the haystack of); "
                                     "give --data or --haystacks noise")
        haystacks["text"] = _text_haystack(args, tok, max(lengths))
    short = []
    for task, h in variants:
        least = ruler.minimum_length(task, tok, haystacks.get(h))
        if min(lengths) < least:
            short.append((least, label(task, h)))
    if short:
        least = max(n for n, _ in short)
        raise MemLongConfigError(
            f"--lengths {min(lengths)} is too short for {', '.join(f'{t} (needs {n})' for n, t in short)}: a prompt "
            f"holds the task's instructions, planted statements or lists, question and answer; use --lengths >= "
            f"{least} or leave these tasks out (--tasks)")
    prompts = {}
    for task, h in variants:
        for L in lengths:
            try:
                prompts[(task, h, L)] = [
                    ruler.make_sample(task, tok, L, random.Random(f"{args.seed}/{task}/{h}/{L}/{i}"), haystacks.get(h))
                    for i in range(args.samples)]
            except ruler.PromptTooShort as e:  # a draw longer than minimum_length's margin allowed for
                raise MemLongConfigError(f"--lengths {L} is too short for {label(task, h)} with --seed {args.seed}: "
                                         f"use --lengths >= {e.minimum}") from None
    return prompts


def _text_haystack(args, tok, longest: int):
    from memlong.config import MemLongConfigError
    from memlong.data import ruler
    from memlong.training import document_texts

    try:
        hay = ruler.text_haystack(tok, document_texts(args.data, args.split)(), min_tokens=2 * longest)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise MemLongConfigError(f"--data {args.data} (split {args.split}): no text for the haystack ({e})") from None
    if hay.tokens < longest:
        raise MemLongConfigError(
            f"--data {args.data} (split {args.split}) holds {hay.tokens} tokens of text, fewer than the longest "
            f"--lengths {longest}: the text haystack needs at least {longest} tokens; give more text, shorter "
            f"--lengths, or --haystacks noise")
    return hay


def run(args, methods: list[str]) -> int:
    from memlong.pretrained import load_tokenizer

    lengths = parse_lengths(args.lengths or DEFAULT_LENGTHS)
    done = resumed_report(args, SAME_PROMPTS)
    t0 = time.perf_counter()
    prompts = build_prompts(args, load_tokenizer(args.model), lengths)
    print(f"{sum(map(len, prompts.values()))} prompts built in {time.perf_counter() - t0:.1f} s", flush=True)
    tok, model, base, base_window, base_path = load_models(args, methods)
    results, have = resumed_results(args, done, model, base_path, _cell)
    # shortest length first, one method at a time; the JSON is rewritten after every cell, so a run cut
    # short (hours at 32k on a CPU) keeps what it measured (and --resume goes on from there)
    for L in lengths:
        for method in methods:
            for (task, h, length), samples in prompts.items():
                if length == L and (task, h, L, method) not in have:
                    results.append(_measure(args, task, h, L, samples, method, tok, model, base, base_window))
                    write_report(args, results, model, base_path, base_window, quiet=True)
    write_report(args, results, model, base_path, base_window, plot)
    print(_averages(results))
    return 0


#: the flags that decide the prompts and how they are read: a resumed run must share them
SAME_PROMPTS = ("seed", "samples", "data", "split", "model", "overrides", "retriever", "requery")


def _cell(row: dict) -> tuple:
    return row["task"], row["haystack"], row["length"], row["method"]


def _measure(args, task, haystack, L, samples, method, tok, model, base, base_window) -> dict:
    import torch

    from memlong.data.ruler import score
    from memlong.recipes.ask import answer_end, plain_answer

    row = {"task": task, "haystack": haystack, "length": L, "method": method, "samples": len(samples),
           "prompt_tokens": max(len(s.ids) for s in samples), "max_new_tokens": samples[0].max_new_tokens}
    with measured(row, "score"):
        if method == "base_full" and L > args.max_base_length:
            raise Skip(f"not attempted above --max-base-length={args.max_base_length}")
        examples = []
        for s in samples:
            ids = torch.tensor([s.ids])
            raw = generate_answer(method, model, base, tok, ids, s.max_new_tokens,
                                  s.question_tokens if args.requery else False, base_window, stop=answer_end)
            text = plain_answer(raw)[0]
            examples.append({"prompt_tail": tok.decode(s.ids[-(s.question_tokens + 24):]), "expected": s.answers,
                             "output": text.strip(), "score": score(text, s.answers), "depths": s.depths})
        row.update(score=sum(e["score"] for e in examples) / len(examples), examples=examples)
    value = f"{row['score']:.2f}" if row.get("score") is not None else "-"
    print(f"{method:>18} {label(task, haystack):>22} L={L:>7}  score {value}  ({len(samples)} samples, "
          f"{row['seconds']:.1f} s) {row.get('note', '')}", flush=True)
    return row


def averages(results: list[dict]) -> dict[str, dict[int, float]]:
    """method -> length -> the mean score over the tasks measured there."""
    out: dict[str, dict[int, list[float]]] = {}
    for r in results:
        if r.get("score") is not None:
            out.setdefault(r["method"], {}).setdefault(r["length"], []).append(r["score"])
    return {m: {L: sum(v) / len(v) for L, v in sorted(by.items())} for m, by in out.items()}


def _averages(results: list[dict]) -> str:
    lines = ["average score over the tasks:"]
    for method, by in averages(results).items():
        lines.append(f"{method:>18}  " + "  ".join(f"L={L}: {v:.3f}" for L, v in by.items()))
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """One PNG: a heatmap per method (task by length; '-' where skipped or failed) above the
    average score against length."""
    from memlong.plotting import finish, pyplot, save, score_grid

    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    rows = list(dict.fromkeys(label(r["task"], r["haystack"]) for r in results))
    lengths = sorted({r["length"] for r in results})
    ticks = [f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n) for n in lengths]
    fig = pyplot().figure(figsize=(max(7.0, 3.4 * len(methods)), 0.32 * len(rows) + 6))
    grid = fig.add_gridspec(2, len(methods), height_ratios=[0.32 * len(rows) + 1, 3])
    for j, method in enumerate(methods):
        ax = fig.add_subplot(grid[0, j])
        cells = [[float("nan")] * len(lengths) for _ in rows]
        for r in results:
            if r["method"] == method and r.get("score") is not None:
                cells[rows.index(label(r["task"], r["haystack"]))][lengths.index(r["length"])] = r["score"]
        score_grid(ax, cells, ticks, rows if j == 0 else [""] * len(rows), method, fontsize=6)
        ax.set_xlabel("length", fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    for method, by in averages(results).items():
        ax.plot(list(by), list(by.values()), "o-", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, ticks)
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    finish(ax, "input length (tokens)", "average score over the tasks", legend_size=8)
    save(fig, path)
