"""`memlong eval ruler`: RULER (Hsieh et al. 2024) as RULER defines it, by length.

RULER's 13 tasks (:mod:`memlong.data.ruler`: niah_single_1/2/3, niah_multikey_1/2/3,
niah_multivalue, niah_multiquery, vt, cwe, fwe, qa_1, qa_2) with its templates, answer prefixes,
placements and generation lengths, ``--samples`` prompts per task and length (deterministic for
``--seed``). The essay haystack is the text of the ``--data`` documents' ``--split`` (RULER: Paul
Graham's essays); qa_1 and qa_2 run when ``--qa-squad`` (SQuAD v2.0 dev json) and
``--qa-hotpotqa`` (HotpotQA dev json) are given, else they are reported as not run. An instruct
model's prompts are wrapped in its chat template, as RULER does (``--no-chat-template``: plain).

Each prompt is answered greedily by memlong and memlong_no_memory (retrieving again with the
question and answer prefix, ``generate(requery=N)``; what a task's samples share, the haystack up
to their first needle, is read once: :func:`memlong.evaluation.shared_reading`), rag (the base
model on the context's top-k chunks for the question, as text, :mod:`memlong.rag`), base_full
(up to ``--max-base-length``) and base_truncated (the base on the prompt's last tokens that fit
its window); the whole generation (RULER's token budget, no stop words) is scored with RULER's
metric (string_match_all; qa: string_match_part).
A cell's score is the mean over its samples with a 95% interval (Wilson's for accuracies);
RULER's mean at a length is the mean over RULER's tasks that ran, with the tasks named. Our extra
variants (``--tasks`` names ending in ``_noise``) are reported apart, never in that mean.

All prompts are built, and every length checked against every task, before a model is loaded.
Output: a table; ``--json``: a record per task, length and method (score, interval, each sample's
prompt tail, expected strings and output, seconds, tokens read per second, bytes kept per token;
rag and memlong: whether the chunks they retrieved held the answered statements), RULER's means and the config (rewritten after
every cell: ``--resume`` continues a run cut short); ``--plot``: a heatmap per method above RULER's
mean against length.

    memlong eval ruler --data runs/corpus --lengths 4096,16384 --samples 10 --json ruler.json --plot ruler.png
    memlong eval ruler --tasks niah_single_1,vt --lengths 4096     # noise haystacks only: no --data
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time

from memlong.data.ruler import ALL_TASKS, EXTRA, RULER_TASKS
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


def _task_names(text: str) -> str:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if names == ["ruler"]:
        return ",".join(RULER_TASKS)
    if names == ["all"]:
        return ",".join(ALL_TASKS)
    bad = [x for x in names if x not in ALL_TASKS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown task {', '.join(bad) or repr(text)}; give ruler (RULER's 13), all "
            f"(with our variants), or names among {', '.join(ALL_TASKS)}"
        )
    return ",".join(names)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default=None,
        help="documents for the essay haystack (a corpus folder and its --split, a .jsonl file, a text "
        "file, a folder of .txt files, or a datasets name); needed by the tasks that read it",
    )
    p.add_argument(
        "--tasks",
        default=",".join(RULER_TASKS),
        type=_task_names,
        help="ruler (RULER's 13, the default), all (with our variants), or comma-separated among: "
        + ", ".join(ALL_TASKS),
    )
    p.add_argument("--samples", type=int, default=10, help="prompts per task and length (RULER: 500)")
    p.add_argument(
        "--qa-squad",
        default=None,
        metavar="JSON",
        help="SQuAD v2.0 (dev) json for qa_1; without it qa_1 is reported as not run",
    )
    p.add_argument(
        "--qa-hotpotqa",
        default=None,
        metavar="JSON",
        help="HotpotQA (dev, distractor) json for qa_2; without it qa_2 is reported as not run",
    )
    p.add_argument(
        "--no-chat-template",
        dest="chat_template",
        action="store_false",
        help="plain prompts; by default a tokenizer's chat template wraps each task, as RULER wraps instruct models",
    )
    p.epilog = f"--lengths default: {DEFAULT_LENGTHS}; --methods default: " + ",".join(METHODS)


def build_prompts(args, tok, lengths: list[int]) -> tuple[dict, dict]:
    """(``{(task, length): [RulerSample]}``, ``{task: why it does not run}``) for the run, or a
    MemLongConfigError naming the flag to change (a length too short for a task, no text for the
    essay, an unreadable qa file). Sets ``args.essay``, the report's record of the essay haystack
    (:func:`essay_record`; None when no task reads it)."""
    from memlong.config import MemLongConfigError
    from memlong.data import ruler

    if args.samples < 1:
        raise MemLongConfigError(f"--samples must be >= 1; got {args.samples}")
    tasks = args.tasks.split(",")
    chat = bool(args.chat_template and getattr(tok, "chat_template", None))  # RULER wraps instruct models
    essay = _essay(args, max(lengths)) if any(ALL_TASKS[t].needs_essay for t in tasks) else None
    args.essay = essay_record(essay)
    qa, not_run = {}, {}
    for task in tasks:
        spec = ALL_TASKS[task]
        if spec.kind == "qa":
            path = getattr(args, f"qa_{spec.dataset}")
            if path is None:
                not_run[task] = f"not run: give --qa-{spec.dataset} FILE ({spec.dataset} json)"
                continue
            try:
                qa[task] = ruler.read_qa(path, spec.dataset)
            except ValueError as e:
                raise MemLongConfigError(f"--qa-{spec.dataset}: {e}") from None
    prompts, short = {}, []
    for task in tasks:
        if task in not_run:
            continue
        for L in lengths:
            try:
                gen = ruler.Generator(
                    task, tok, L, chat=chat, essay=essay, qa=qa.get(task), probe_seed=f"{args.seed}/{task}/{L}/probe"
                )
                prompts[(task, L)] = [
                    gen.sample(random.Random(f"{args.seed}/{task}/{L}/{i}"), i) for i in range(args.samples)
                ]
            except ruler.PromptTooShort as e:
                short.append((e.minimum, task, L))
    if short:
        least = max(n for n, _, _ in short)
        raise MemLongConfigError(
            f"--lengths {min(L for _, _, L in short)} is too short for "
            f"{', '.join(sorted({f'{t} (needs about {n})' for n, t, _ in short}))}: a prompt holds the task's "
            f"instructions, example, question and answer; use --lengths >= {least} or leave these tasks out (--tasks)"
        )
    return prompts, not_run


def essay_record(words: list[str] | None) -> dict | None:
    """What a report keeps of the essay haystack: its words and their sha256 (the first 16 hex
    digits), so that a resumed run reads the same text."""
    if words is None:
        return None
    return {"words": len(words), "sha256": hashlib.sha256(" ".join(words).encode()).hexdigest()[:16]}


def _same_essay(args, done: dict | None) -> None:
    """With ``--resume``: a MemLongConfigError when the report's essay tasks read another essay
    haystack than this run's (another --data or --split, or a report from before the essay was made
    of prose alone, :func:`memlong.data.ruler.is_prose`); a run without essay tasks keeps the
    report's record."""
    from memlong.config import MemLongConfigError

    if done is None:
        return
    config = done["config"]
    if args.essay is None:
        args.essay = config.get("essay")
        return
    if "essay" not in config or (config["essay"] is not None and config["essay"] != args.essay):
        raise MemLongConfigError(
            f"--resume: {args.json} was measured on another essay haystack ({config.get('essay', 'not recorded')}; "
            f"this run's: {args.essay}); use a new --json"
        )


def _essay(args, longest: int) -> list[str]:
    from memlong.config import MemLongConfigError
    from memlong.data import ruler
    from memlong.training import document_texts

    if args.data is None:
        needing = [t for t in args.tasks.split(",") if ALL_TASKS[t].needs_essay]
        raise MemLongConfigError(
            f"{', '.join(needing)} read an essay haystack: give --data (documents to make it "
            "of), or leave these tasks out (--tasks)"
        )
    try:
        words = ruler.essay_words(document_texts(args.data, args.split)(), min_words=2 * longest)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise MemLongConfigError(
            f"--data {args.data} (split {args.split}): no text for the essay haystack ({e})"
        ) from None
    if len(words) < 100:
        raise MemLongConfigError(
            f"--data {args.data} (split {args.split}) holds {len(words)} words of prose: too few for an "
            "essay haystack (it is repeated to the length, as RULER does, but needs real text; source "
            "code is not prose: memlong.data.ruler.is_prose)"
        )
    return words


def run(args, methods: list[str]) -> int:
    from memlong.pretrained import load_tokenizer

    lengths = parse_lengths(args.lengths or DEFAULT_LENGTHS)
    t0 = time.perf_counter()
    tok = load_tokenizer(args.model)
    args.chat_template = bool(args.chat_template and getattr(tok, "chat_template", None))  # as the report says
    prompts, not_run = build_prompts(args, tok, lengths)
    done = resumed_report(args, SAME_PROMPTS)
    _same_essay(args, done)
    print(
        f"{sum(map(len, prompts.values()))} prompts built in {time.perf_counter() - t0:.1f} s "
        f"({'chat template' if args.chat_template else 'plain prompts'})",
        flush=True,
    )
    tok, model, base, base_window, base_path = load_models(args, methods)
    results, have = resumed_results(args, done, model, base_path, _cell)
    tasks = args.tasks.split(",")

    def report(final: bool = False):
        extra = {"ruler_means": ruler_means(results)}
        recorded = argparse.Namespace(**{**vars(args), "tasks": tasks_reported(args.tasks, results)})
        write_report(
            recorded, results, model, base_path, base_window, plot if final else None, quiet=not final, extra=extra
        )

    # shortest length first, one method at a time; the JSON is rewritten after every cell, so a run cut
    # short (hours at 32k on a CPU) keeps what it measured (and --resume goes on from there)
    for L in lengths:
        for method in methods:
            for task in tasks:
                if (task, L, method) in have:
                    continue
                if task in not_run:
                    results.append({"task": task, "length": L, "method": method, "score": None, "note": not_run[task]})
                else:
                    results.append(_measure(args, task, L, prompts[(task, L)], method, tok, model, base, base_window))
                report()
    report(final=True)
    print(table(results))
    return 0


#: the flags that decide the prompts and how they are read: a resumed run must share them
SAME_PROMPTS = (
    "seed",
    "samples",
    "data",
    "split",
    "model",
    "overrides",
    "retriever",
    "requery",
    "chat_template",
    "qa_squad",
    "qa_hotpotqa",
)


def tasks_reported(given: str, results: list[dict]) -> str:
    """``--tasks`` as a report records it: every task it has rows of (a resumed report keeps what an
    earlier run measured of other tasks) and those given, in RULER's order and then our variants',
    so that its command rebuilds every row (RULER's 13 are the default: no flag)."""
    have = {r["task"] for r in results} | set(given.split(","))
    return ",".join(t for t in ALL_TASKS if t in have)


def _cell(row: dict) -> tuple:
    return row["task"], row["length"], row["method"]


def _measure(args, task, L, samples, method, tok, model, base, base_window) -> dict:
    import torch

    from memlong.cost import bytes_per_token, tokens_per_second
    from memlong.data.ruler import score
    from memlong.evaluation import mean_interval

    spec = ALL_TASKS[task]
    row = {
        "task": task,
        "length": L,
        "method": method,
        "samples": len(samples),
        "prompt_tokens": max(len(s.ids) for s in samples),
        "max_new_tokens": spec.tokens_to_generate,
    }
    with measured(row, "score"):
        if method == "base_full" and L > args.max_base_length:
            raise Skip(f"not attempted above --max-base-length={args.max_base_length}")
        examples, rag_kept = [None] * len(samples), (0, 0)  # rag: embeddings kept, context tokens they cover
        for i, memory, read in _readings(args, method, model, samples):
            s, rag = samples[i], []
            found = _memory_hits(model, memory, s, read) if method == "memlong" and memory is not None else None
            if found is not None:
                read = len(s.ids) - s.question_tokens
            text = generate_answer(
                method,
                model,
                base,
                tok,
                torch.tensor([s.ids]),
                s.max_new_tokens,
                s.question_tokens if args.requery else False,
                base_window,
                memory=memory,
                read=read,
                context=s.span,
                retrieved=rag,
            )
            examples[i] = {
                "prompt_tail": tok.decode(s.ids[-s.question_tokens :]),
                "expected": s.answers,
                "output": text,
                "score": score(text, s.answers, spec.metric),
                "positions": s.positions,
                "prompt_tokens": len(s.ids),
            }
            if found is not None:  # which answered statements the question's search found, or its window holds
                examples[i].update(found)
            if rag:  # which answered statements the chunks rag read hold
                chosen = [rag[0].spans[c] for c in rag[0].chosen]
                examples[i]["statements_retrieved"] = _held(chosen, s.positions)
                examples[i].update(rag[0].record())
                rag_kept = (rag_kept[0] + len(rag[0].spans), rag_kept[1] + rag[0].context_tokens)
        mean, lo, hi = mean_interval([e["score"] for e in examples])
        row.update(score=mean, interval=[round(lo, 4), round(hi, 4)], examples=examples)
    if row.get("score") is not None:
        row["tokens_per_second"] = tokens_per_second(sum(len(s.ids) for s in samples), row["seconds"])
        row["bytes_per_token"] = (
            bytes_per_token(method, model, base, rag_kept) if method != "rag" or rag_kept[1] else None
        )
    value = (
        f"{row['score']:.2f} [{row['interval'][0]:.2f}, {row['interval'][1]:.2f}]"
        if row.get("score") is not None
        else "-"
    )
    print(
        f"{method:>18} {task:>22} L={L:>7}  score {value}  ({len(samples)} samples, {row['seconds']:.1f} s) "
        f"{row.get('note', '')}",
        flush=True,
    )
    return row


def _memory_hits(model, memory, s, read: int) -> dict:
    """Reads the sample's context up to its question into ``memory`` (which has read ``read`` of its
    tokens; the answer it then gives is the same, call boundaries do not change it) and says what
    the question reads (:meth:`~memlong.cache.MemLongCache.question_reads`, counters untouched: the
    bank's hits and, with ``question_window``, the local window's, less those under
    ``question_score_ratio`` of the best): ``memory_hits``, the hits' token spans, best first, and
    their scores (``memory_hit_scores``);
    ``statements_retrieved``, whether a hit holds each answered statement's first token;
    ``statements_in_window``, whether it lies in the local window the question reads beside them."""
    import torch

    head, cfg = len(s.ids) - s.question_tokens, model.memlong_config
    if read < head:
        model.ingest(torch.tensor([s.ids[read:head]], device=model.device), memory)
    reads = memory.question_reads(model.memlong_retriever, s.ids[head:][-cfg.chunk_size :])
    tau = cfg.chunk_size
    spans = [[c * tau, (c + 1) * tau] for c, _, _ in reads]  # a chunk's stream span, banked or in the window
    return {
        "memory_hits": spans,
        "memory_hit_scores": [round(float(score), 4) for _, score, _ in reads],
        "statements_retrieved": _held(spans, s.positions),
        "statements_in_window": [p >= head - cfg.local_window for p in s.positions],
    }


def _held(spans, positions: list[int]) -> list[bool]:
    """For each token position, whether one of the ``[start, end)`` spans holds it."""
    return [any(a <= p < b for a, b in spans) for p in positions]


def _readings(args, method: str, model, samples):
    """(sample index, memory or None, tokens it has read) for each sample: the MemLong methods read
    the beginnings the samples share once (:func:`memlong.evaluation.shared_reading`: RULER's samples
    over one haystack are alike up to their first needle), answering exactly as from a fresh memory;
    the base methods read each prompt whole."""
    from memlong.evaluation import shared_reading

    if method in ("memlong", "memlong_no_memory") and args.requery:
        yield from shared_reading(
            model, [s.ids for s in samples], [s.question_tokens for s in samples], retrieval=method == "memlong"
        )
    else:
        yield from ((i, None, 0) for i in range(len(samples)))


def ruler_means(results: list[dict]) -> list[dict]:
    """RULER's mean per method and length: the mean of its tasks' scores that ran there, with a 95%
    interval (:func:`memlong.evaluation.mean_of_means`) and the tasks it is over; our variants are
    left out."""
    from memlong.evaluation import mean_of_means

    cells: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        if r["task"] in RULER_TASKS:
            cells.setdefault((r["method"], r["length"]), []).append(r)
    out = []
    for (method, L), rows in cells.items():
        ran = [r for r in rows if r.get("score") is not None]
        entry = {
            "method": method,
            "length": L,
            "tasks": [r["task"] for r in ran],
            "not_run": [r["task"] for r in rows if r.get("score") is None],
        }
        if ran:
            mean, lo, hi = mean_of_means([(r["score"], *r["interval"]) for r in ran])
            entry.update(mean=round(mean, 4), interval=[round(lo, 4), round(hi, 4)])
        out.append(entry)
    return out


def table(results: list[dict]) -> str:
    """RULER's mean per method and length (over the tasks named), then our variants apart."""
    lines = ["RULER's mean (95% interval) over its tasks that ran:"]
    for m in ruler_means(results):
        if "mean" in m:
            missing = f"; not run: {', '.join(m['not_run'])}" if m["not_run"] else ""
            lines.append(
                f"{m['method']:>18}  L={m['length']:>7}: {m['mean']:.3f} [{m['interval'][0]:.3f}, "
                f"{m['interval'][1]:.3f}] over {len(m['tasks'])} of {len(RULER_TASKS)} tasks{missing}"
            )
    extra = [r for r in results if r["task"] in EXTRA and r.get("score") is not None]
    if extra:
        lines.append("our variants (not in RULER's mean):")
        lines += [f"{r['method']:>18}  L={r['length']:>7}: {r['task']} {r['score']:.3f}" for r in extra]
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """One PNG: a heatmap per method (task by length; '-' where skipped, failed or not run) above
    RULER's mean against length."""
    from memlong.plotting import finish, pyplot, save, score_grid

    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    rows = list(dict.fromkeys(r["task"] for r in results))
    lengths = sorted({r["length"] for r in results})
    ticks = [f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n) for n in lengths]
    fig = pyplot().figure(figsize=(max(7.0, 3.4 * len(methods)), 0.32 * len(rows) + 6))
    grid = fig.add_gridspec(2, len(methods), height_ratios=[0.32 * len(rows) + 1, 3])
    for j, method in enumerate(methods):
        ax = fig.add_subplot(grid[0, j])
        cells = [[float("nan")] * len(lengths) for _ in rows]
        for r in results:
            if r["method"] == method and r.get("score") is not None:
                cells[rows.index(r["task"])][lengths.index(r["length"])] = r["score"]
        score_grid(ax, cells, ticks, rows if j == 0 else [""] * len(rows), method, fontsize=6)
        ax.set_xlabel("length", fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    for method in methods:
        means = sorted((m["length"], m) for m in ruler_means(results) if m["method"] == method and "mean" in m)
        if means:
            xs = [L for L, _ in means]
            ax.errorbar(
                xs,
                [m["mean"] for _, m in means],
                fmt="o-",
                label=method,
                capsize=3,
                yerr=[
                    [m["mean"] - m["interval"][0] for _, m in means],
                    [m["interval"][1] - m["mean"] for _, m in means],
                ],
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, ticks)
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    finish(ax, "input length (tokens)", "RULER's mean over its tasks", legend_size=8)
    save(fig, path)
