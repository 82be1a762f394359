"""Rewrites the generated sections of the README and docs/*.md from the JSON the commands wrote.

    python scripts/render_readme.py            # after: make bench (docs/results/bench_ingest_default.json)
    python scripts/render_readme.py --check    # exit 1 if a file is out of date (tests/test_readme.py)
    python scripts/render_readme.py docs/HISTORY.md   # only the files named

Figures are never typed by hand: every number between a section's markers
(``<!-- name:start -->`` ... ``<!-- name:end -->``) comes from the JSON :data:`SECTIONS` names
for it; a section whose JSON is missing is left as it is. README.md: ``demo`` (the default
model's `memlong demo`), ``default_headline`` (scripts/eval_default.sh), ``bench_default`` (`make
bench`). docs/RESULTS.md: ``default_results``. The default model's card: ``base_ppl``. docs/HISTORY.md, the earlier 7.5M
model: ``results`` (its evaluations), ``bench`` (docs/results/bench_ingest.json, plot
bench_ingest.png), ``million`` (docs/results/bench_million.json beside the other
bench_million_*.json), ``search`` (bench_search_minilm.json beside bench_search.json) and
``retriever`` (bench_retriever.json). docs/DEVELOPMENT.md: ``question_options``
(question_options_validation_*.json, `scripts/experiments/compare_question_options.py`), ``question_reread``
(question_reread_validation_*.json, question_reread_icl_validation.json,
question_reread_score_icl_validation.json).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from memlong.recipes.eval import eval_command

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
METHODS = ("memlong", "base_full", "base_sliding", "base_windows")
MIB = 2**20


def _machine(data: dict, path: Path) -> str:
    m = data["machine"]
    return (
        f"measured by `{data['command']}` on {m['cpu_count']} CPU cores ({m['platform']}, torch {m['torch']}); "
        f"JSON: `{path.relative_to(ROOT)}`"
    )


def _model_line(r: dict) -> str:
    c = r["config"]
    return (
        f"Model: {r.get('model', 'random-weight Llama')}, {r['params'] / 1e6:.1f}M parameters, "
        f"{r['threads']} torch thread(s); MemLong: chunk {c['chunk_size']}, window {c['local_window']}, "
        f"top-k {c['top_k']}, capacity {c['memory_capacity']:,} tokens, memory layer {c['memory_layer']}, "
        f"retrieval layers {c['retrieval_layers']}, search {c['search_backend']}; "
        f"retriever {r['retriever']['class']}."
    )


def bench_section(path: Path) -> str:
    data = json.loads(path.read_text())
    rows = {(r["method"], r["tokens"]): r for r in data["results"]}
    sizes = sorted({r["tokens"] for r in data["results"]})
    out = [
        (
            f"Ingestion of real text (Python stdlib sources), {_machine(data, path)}. "
            "`base_full`: the same base model with full causal attention, reading the text in chunked prefill "
            "into a KV cache; `base_sliding`: the same weights with a sliding-window mask of the window's length "
            "and a rolling KV cache (no memory); `base_windows`: plain forwards over consecutive disjoint windows "
            "(the cost floor). State: MemLong's bank, or the baseline's KV cache at the end. "
            "A baseline that runs out of time or memory is reported as such."
        ),
    ]
    gen = any("generate_tokens_per_s" in r for r in data["results"])
    if gen:
        out[0] += (
            " Generate: greedy decoding with `generate()` after the read (`--generate`); `base_windows` "
            "decodes after a prompt of one window (its prefill not timed): the base at its own context."
        )
    out += [
        "",
        "| tokens | method | tokens/s | "
        + ("generate tokens/s | " if gen else "")
        + "peak RSS (MiB) | state (MiB) | bank chunks | MemLong time split (s) |",
        "|---:|---|---:|" + ("---:|" if gen else "") + "---:|---:|---:|---|",
    ]
    ratios = []
    for n in sizes:
        for method in METHODS:
            r = rows.get((method, n))
            if r is None:
                continue
            if "error" in r:
                out.append(f"| {n:,} | {method} | {r['error']} | | | | |" + (" |" if gen else ""))
                continue
            split = ", ".join(f"{k} {v:.1f}" for k, v in r.get("time_split_s", {}).items())
            state = r["bank_bytes"] if method == "memlong" else r.get("kv_cache_bytes", 0)
            decode = f"{r['generate_tokens_per_s']:,.1f} | " if "generate_tokens_per_s" in r else ("| " if gen else "")
            out.append(
                f"| {n:,} | {method} | {r['tokens_per_s']:,.0f} | {decode}{r['peak_rss_bytes'] / MIB:,.0f} | "
                f"{state / MIB:,.1f} | {r.get('bank_chunks', '')} | {split} |"
            )
        m, w = rows.get(("memlong", n), {}), rows.get(("base_windows", n), {})
        if "tokens_per_s" in m and "tokens_per_s" in w:
            line = f"{n:,} tokens: MemLong reads at {m['tokens_per_s'] / w['tokens_per_s']:.2f}x base_windows' tokens/s"
            if "generate_tokens_per_s" in m and "generate_tokens_per_s" in w:
                line += (
                    f", and generates at {m['generate_tokens_per_s'] / w['generate_tokens_per_s']:.2f}x its decoding"
                )
            ratios.append(line + ".")
    if ratios:
        out += [""] + [f"- {line}" for line in ratios]
    example = next((r for r in data["results"] if r.get("method") == "memlong" and "params" in r), None)
    if example:
        out += ["", _model_line(example)]
    plot = path.with_suffix(".png")
    if plot.exists():
        out += ["", f"![tokens/s and peak RSS against tokens]({plot.relative_to(ROOT)})"]
    return "\n".join(out)


def _allocator(r: dict) -> str:
    t = r.get("malloc_mmap_threshold", 0)
    return f"`MALLOC_MMAP_THRESHOLD_={t}`" if t else "glibc default"


def million_section(path: Path, runs: list[Path] | None = None, capacity_note: str | None = None) -> str:
    """A long read (this JSON) and the runs beside it (default: the other ``bench_million_*.json``:
    the same run with a fixed glibc mmap threshold; short runs on an idle machine for speed).
    ``capacity_note``: what the table says of the bank's capacity (default: it holds every chunk)."""
    runs = runs or [path] + sorted(p for p in RESULTS.glob("bench_million_*.json") if p != path)
    datas = [json.loads(p.read_text()) for p in runs]
    longest = max(r["tokens"] for d in datas for r in d["results"])
    out = [
        f"MemLong reading up to {longest:,} tokens of the stdlib's sources (the model: below the table):",
        "",
        *[f"- {_machine(d, p)}" for d, p in zip(datas, runs)],
        "",
        (
            "Other jobs (tests, other benchmarks, a training experiment) often "
            "shared the 2 cores, so tokens/s are lower bounds that vary with the load (load: the 1-minute load "
            "average when the run ended; 1 is this run alone); memory figures are unaffected. "
            + (
                capacity_note
                or "The capacity holds every chunk of the longest input, so the bank grows with the text "
                "by design; everything else should not: compare peak RSS minus the bank."
            )
        ),
        "",
        (
            "| allocator | load | tokens | tokens/s | peak RSS (MiB) | RSS before ingest (MiB) | bank (MiB) | peak RSS − bank (MiB) "
            "| bank chunks | bank bytes/token | banked K/V bytes/token |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ok = []
    for data in datas:
        load = data["machine"]["load_avg_1_5_15"][0]  # at the end of the run: what else shared the CPU
        rows = sorted(
            (r for r in data["results"] if r["method"] == "memlong" and "error" not in r), key=lambda r: r["tokens"]
        )
        ok += rows
        for r in rows:
            out.append(
                f"| {_allocator(r)} | {load:.1f} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | {r['peak_rss_bytes'] / MIB:,.0f} | "
                f"{r['rss_before_bytes'] / MIB:,.0f} | {r['bank_bytes'] / MIB:,.1f} | "
                f"{(r['peak_rss_bytes'] - r['bank_bytes']) / MIB:,.0f} | {r['bank_chunks']:,} | "
                f"{r['bank_bytes_per_token']:,.1f} | {r['kv_bytes_per_token']} |"
            )
        for r in data["results"]:
            if "error" in r:
                out.append(f"| {_allocator(r)} | {load:.1f} | {r['tokens']:,} | {r['error']} | | | | | | | |")
    if ok:
        r = ok[-1]
        extra = r["bank_bytes_per_token"] - r["kv_bytes_per_token"]
        out += [
            "",
            f"Bank overhead beyond the banked layers' keys and values: {extra:.1f} bytes per token "
            f"({100 * extra / r['kv_bytes_per_token']:.1f}%: retrieval embedding, token ids, spans, counters). "
            + _model_line(r),
        ]
    return "\n".join(out)


def question_options_section(paths: list[Path]) -> str:
    """`scripts/experiments/compare_question_options.py` runs (validation split): each one's command, then the
    mean score per task and length under each question variant, with the number of prompts."""
    out = []
    for path in paths:
        data = json.loads(path.read_text())
        c = data["config"]
        flags = (
            f"--data {c['data']} --lengths {c['lengths']} --ruler-tasks {c['ruler_tasks']} "
            f"--ruler-samples {c['ruler_samples']} --passkey-depths {c['passkey_depths']} "
            f"--passkey-trials {c['passkey_trials']} --seed {c['seed']}"
        )
        variants = list(c["variants"])
        if variants != ["stream", "best_last", "stream_next", "best_last_next"]:  # the script's default set
            flags += f" --variants {','.join(variants)}"
        out += [
            f"`python scripts/experiments/compare_question_options.py {flags} --json {path.relative_to(ROOT)}`",
            "",
            "| task | length | prompts | " + " | ".join(variants) + " |",
            "|---|---:|---:|" + "---:|" * len(variants),
        ]
        for task, by_length in data["summary"].items():
            for length, cells in by_length.items():
                n = cells[variants[0]]["prompts"]
                out.append(
                    f"| {task} | {int(length):,} | {n} | "
                    + " | ".join(f"{cells[v]['score']:.2f}" for v in variants)
                    + " |"
                )
        out.append("")
    return "\n".join(out).rstrip()


def search_section(path: Path) -> str:
    """Exact against approximate search: real MiniLM embeddings (this JSON) beside random unit
    vectors (bench_search.json, when present)."""
    runs = [path] + [p for p in (RESULTS / "bench_search.json",) if p.exists()]
    out = []
    for p in runs:
        data = json.loads(p.read_text())
        out.append(f"- `{data['command']}` ({p.relative_to(ROOT)})")
    out += ["", "| vectors | chunks | index | query (ms) | recall@k | build (s) |", "|---|---:|---|---:|---:|---:|"]
    for p in runs:
        for r in json.loads(p.read_text())["results"]:
            out.append(
                f"| {r.get('vectors', 'random')} | {r['chunks']:,} | {r['index']} | {r['query_ms']:.3f} | "
                f"{r['recall_at_k']:.3f} | {r['build_s']:.2f} |"
            )
    return "\n".join(out)


def retriever_section(path: Path) -> str:
    data = json.loads(path.read_text())
    m = data["machine"]
    out = [
        f"Retriever cost and quality, measured by `{data['command']}` on {m['cpu_count']} CPU cores; JSON: "
        f"`{path.relative_to(ROOT)}`. Recall@k: share of MiniLM's top-k among the retriever's top-k (each chunk "
        "queries the earlier chunks of its document); next-chunk hit@k: how often the top-k holds the earlier "
        "chunk sharing the most 8-grams with the query's next chunk (retriever-independent).",
        "",
        "| retriever | chunks/s | ms per chunk | recall@k vs MiniLM | next-chunk hit@k |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        cost = f"{r['chunks_per_s']:,.0f} | {r['ms_per_chunk']:.3f}" if r.get("chunks_per_s") is not None else "- | -"
        out.append(f"| {r['retriever']} | {cost} | {r['recall_at_k']:.3f} | {r['next_hit_at_k']:.3f} |")
    return "\n".join(out)


def _eval_command(c: dict, path: Path) -> str:
    shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    return eval_command(c, shown)


OLDER_QUESTIONS = (
    "measured before a later change in how questions search or read the memory (the bank's window "
    "index `rerank_index`, the question's words `lexical_weight` or rereading its hits `question_reread`, "
    "all on by default since)"
)
REREAD_NOTE = (
    "Measured before the default model's questions reread their hits (`question_reread`, on by default "
    "since): each question read its hits as memory only"
)


def _older_search_note(c: dict, repeat: bool = True) -> str:
    """How a question searched in a run made before the window index or the lexical term, and how
    to repeat it."""
    m = c.get("memlong") or {}
    if "rerank_index" not in m:
        n, w = m.get("rerank_candidates"), m.get("rerank_window")
        how = (
            f"re-ranked the top {n} chunks by whole-chunk similarity by their best {w}-token window"
            if n
            else "searched by whole-chunk similarity"
        )
        flag = "`--set rerank_index=false --set lexical_weight=0`" if n else "`--set rerank_candidates=0`"
        return (
            f"Measured before the bank's window index (`rerank_index`) and the question's words "
            f"(`lexical_weight`), both on by default since: the question {how}"
            + (f"; {flag} repeats that." if repeat else ".")
        )
    return (
        "Measured before questions weighed their words (`lexical_weight`, 0.5 by default since): chunks were "
        "scored by embeddings alone (every chunk by its best window)"
        + ("; `--set lexical_weight=0` repeats that." if repeat else ".")
    )


def _asks(c: dict) -> bool:
    """Whether an evaluation's MemLong methods ask questions (passkey, RULER, in-context learning)."""
    return c["task"] in ("passkey", "ruler", "icl") and "memlong" in str(c.get("methods", "memlong"))


def _older_search(c: dict) -> bool:
    """Whether a question-asking evaluation ran before the window index or the lexical term existed
    (its config lacks ``rerank_index`` or ``lexical_weight``): the same command now retrieves
    differently for its questions."""
    m = c.get("memlong") or {"rerank_index": None, "lexical_weight": None}
    return _asks(c) and not ("rerank_index" in m and "lexical_weight" in m)


def _before_reread(c: dict) -> bool:
    """Whether a default-model evaluation that asks questions ran before the default model turned
    ``question_reread`` on (its config lacks the field): the same command now reads each
    question's hits again as text before the question."""
    m = c.get("memlong") or {}
    return _asks(c) and c.get("model") is None and c.get("requery", True) and "question_reread" not in m


def _cell(r: dict, key: str, fmt: str = "{:.2f}") -> str:
    """A measured value, or what happened instead (skipped, out of memory, ...)."""
    return fmt.format(r[key]) if r.get(key) is not None else r.get("note", "-")


def _passkey_table(results: list[dict]) -> list[str]:
    """Accuracy by length and method, a column per depth and their mean; where the run recorded it,
    the share of trials whose question retrieved the key's chunk."""
    depths = sorted({r["depth"] for r in results})
    found = any("key_retrieved" in a for r in results for a in r.get("answers", []))
    out = [
        "| length | method | "
        + " | ".join(f"depth {d}" for d in depths)
        + " | mean [95% interval] | "
        + ("key retrieved | " if found else "")
        + "trials per depth |",
        "|---:|---|" + "---:|" * (len(depths) + 2 + found),
    ]
    for key in dict.fromkeys((r["length"], r["method"]) for r in results):
        rows = {r["depth"]: r for r in results if (r["length"], r["method"]) == key}
        mean = _passkey_mean(list(rows.values()))
        cells = " | ".join(_cell(rows[d], "accuracy") if d in rows else "" for d in depths)
        trials = max(r.get("trials", 0) for r in rows.values())
        hits = [a["key_retrieved"] for r in rows.values() for a in r.get("answers", []) if "key_retrieved" in a]
        share = (f"{sum(hits) / len(hits):.2f} | " if hits else "- | ") if found else ""
        out.append(f"| {key[0]:,} | {key[1]} | {cells} | {mean} | {share}{trials} |")
    return out


def _passkey_mean(rows: list[dict]) -> str:
    """Accuracy over every trial of a length and method, with its 95% Wilson interval."""
    from memlong.evaluation import wilson

    done = [r for r in rows if r.get("accuracy") is not None]
    n = sum(r["trials"] for r in done)
    if not n:
        return "-"
    hits = round(sum(r["accuracy"] * r["trials"] for r in done))
    lo, hi = wilson(hits, n)
    return f"{hits / n:.2f} [{lo:.2f}, {hi:.2f}]"


def _ruler_label(r: dict) -> str:
    return f"{r['task']}/{r['haystack']}" if r.get("haystack") else r["task"]


def _old_ruler(c: dict) -> bool:
    """A report of `memlong eval ruler` as it was before it followed RULER's definitions."""
    return c["task"] == "ruler" and "haystacks" in c


OLD_RULER_NOTE = (
    "Measured with `memlong eval ruler` as it was before it followed RULER's definitions (its own task "
    "variants and word lists, labelled prompts, answers cut early, one sample per cell): not comparable "
    "with RULER's tables or the RULER results here; `git checkout a49c312` repeats it."
)


def _interval_cell(r: dict, key: str = "score") -> str:
    if r.get(key) is None:
        return r.get("note", "-").split(":")[0]
    lo, hi = r["interval"]
    return f"{r[key]:.2f} [{lo:.2f}, {hi:.2f}]"


def _ruler_table(results: list[dict], means: list[dict] | None = None) -> list[str]:
    """Score by task (and haystack), a column per length and method; with ``means`` (a report of RULER
    as RULER defines it), each cell's 95% interval and RULER's mean over its tasks that ran."""
    cols = list(dict.fromkeys((r["length"], r["method"]) for r in results))
    out = ["| task | " + " | ".join(f"{L:,} {m}" for L, m in cols) + " |", "|---|" + "---:|" * len(cols)]
    cell = _interval_cell if means is not None else (lambda r: _cell(r, "score"))
    for label in dict.fromkeys(_ruler_label(r) for r in results):
        rows = {(r["length"], r["method"]): r for r in results if _ruler_label(r) == label}
        out.append(f"| {label} | " + " | ".join(cell(rows[c]) if c in rows else "" for c in cols) + " |")
    samples = max(r.get("samples", 0) for r in results)
    if means is None:
        out.append(
            f"| mean ({samples} sample(s) per cell) | " + " | ".join(_mean_score(results, *c) for c in cols) + " |"
        )
        return out
    by = {(m["length"], m["method"]): m for m in means}
    out.append(
        f"| RULER's mean ({samples} samples per task) | " + " | ".join(_ruler_mean(by.get(c)) for c in cols) + " |"
    )
    return out


def _ruler_mean(m: dict | None) -> str:
    if not m or "mean" not in m:
        return "-"
    from memlong.data.ruler import RULER_TASKS

    return f"{m['mean']:.2f} [{m['interval'][0]:.2f}, {m['interval'][1]:.2f}] ({len(m['tasks'])} of {len(RULER_TASKS)} tasks)"


def _mean_score(results: list[dict], length: int, method: str, key: str = "score") -> str:
    vals = [r[key] for r in results if (r["length"], r["method"]) == (length, method) and r.get(key) is not None]
    return f"{sum(vals) / len(vals):.2f}" if vals else "-"


def base_ppl_section(paths: list[Path]) -> str:
    """The default base model with full attention, perplexity by length, from every run listed
    (their ``base_full`` rows), each run's command named."""
    rows, commands = [], []
    for path in paths:
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        commands.append(f"`{_eval_command(data['config'], path)}`")
        rows += [r for r in data["results"] if r["method"] == "base_full"]
    out = [
        "| length | ppl of the last tokens (base, full attention) | tokens scored | documents |",
        "|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["length"]):
        out.append(f"| {r['length']:,} | {_cell(r, 'ppl', '{:.3f}')} | {r['tokens_scored']:,} | {r['documents']} |")
    return "\n".join(out + ["", "From " + "; ".join(commands) + "."])


def headline_section(paths: list[Path]) -> str:
    """One row per method, one column per measurement, from the default model's evaluation JSONs:
    ppl (of the last ``--score`` tokens) by length, passkey accuracy (mean over depths) by length,
    RULER mean score by length, ICL accuracy by task, and where the runs recorded it, each method's cost
    (bytes kept per context token, prompt tokens per second of reading and answering) at its longest
    length. A later JSON's cell replaces an earlier one's in the same column."""
    cols: dict[str, dict[str, str]] = {}  # column -> method -> cell
    cost: dict[str, list[tuple[int, float, float]]] = {}  # method -> (length, bytes/token, tokens/s)
    sources, old = [], set()
    for path in paths:
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        task, res = data["config"]["task"], data["results"]
        sources.append(f"`{path.relative_to(ROOT)}`")
        before = _older_search(data["config"]) or _before_reread(data["config"])
        for r in res:
            if task == "ppl":  # the note's first word where not measured: "skipped", "failed"
                col, cell = f"ppl {r['length'] // 1024}k", _cell(r, "ppl", "{:.3f}").split(":")[0]
            elif task == "ruler" and "ruler_means" in data:  # RULER's mean over its tasks, with its interval
                col = f"RULER {r['length'] // 1024}k"
                cell = _ruler_mean(
                    next(
                        (m for m in data["ruler_means"] if (m["length"], m["method"]) == (r["length"], r["method"])),
                        None,
                    )
                )
            elif task in ("passkey", "ruler"):
                key = "accuracy" if task == "passkey" else "score"
                name = "ruler (old) " if _old_ruler(data["config"]) else f"{task} "
                col, cell = f"{name}{r['length'] // 1024}k", _mean_score(res, r["length"], r["method"], key)
            else:  # icl
                col, cell = f"icl {r['task']} ({r['shots_memory']} in memory)", _cell(r, "accuracy")
            cols.setdefault(col, {})[r["method"]] = cell
            (old.add if before else old.discard)(col)
            if r.get("bytes_per_token") is not None and r.get("tokens_per_second") is not None:
                cost.setdefault(r["method"], []).append((r["length"], r["bytes_per_token"], r["tokens_per_second"]))
    if cost:  # each method's cost, from its longest measured length
        for m, rows in cost.items():
            L, bpt, tps = max(rows, key=lambda x: (x[0], x[2]))
            cols.setdefault("bytes kept per token", {})[m] = f"{bpt:,.0f}"
            cols.setdefault("prompt tokens/s (read + answer)", {})[m] = f"{tps:,.0f} at {L // 1024}k"
    if not cols:
        return "Not measured yet: run the commands in docs/RESULTS.md."
    methods = [
        m
        for m in ("memlong", "memlong_no_memory", "rag", "base_full", "base_truncated")
        if any(m in c for c in cols.values())
    ]
    out = ["| method | " + " | ".join(c + " *" * (c in old) for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in methods:
        out.append(f"| {m} | " + " | ".join(c.get(m, "not run") for c in cols.values()) + " |")
    out += [
        "",
        "From " + ", ".join(sources) + " (commands and per-depth/per-task tables: [docs/RESULTS.md](docs/RESULTS.md)).",
    ]
    if old:
        out[-1] += f" \\* {OLDER_QUESTIONS[0].upper()}{OLDER_QUESTIONS[1:]}: see its table there."
    return "\n".join(out)


def results_section(paths: list[Path]) -> str:
    """Tables of evaluation JSONs (eval ppl / passkey / icl / ruler), each under the command that
    wrote it, and its plot when the command wrote one."""
    out = []
    for path in paths:
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        c = data["config"]
        out += [f"`{_eval_command(c, path)}`", ""]
        if _older_search(c):
            out += [_older_search_note(c), ""]
        if _before_reread(c):
            out += [REREAD_NOTE + "; `--set question_reread=false` repeats that.", ""]
        if _old_ruler(c):
            out += [OLD_RULER_NOTE, ""]
        if c["task"] == "ppl":
            out += [
                "| length | method | ppl of the last tokens | tokens scored | documents |",
                "|---:|---|---:|---:|---:|",
            ]
            for r in data["results"]:
                ppl = f"{r['ppl']:.3f}" if r.get("ppl") is not None else r.get("note", "-")
                out.append(f"| {r['length']:,} | {r['method']} | {ppl} | {r['tokens_scored']:,} | {r['documents']} |")
        elif c["task"] == "passkey":
            out += _passkey_table(data["results"])
        elif c["task"] == "ruler":
            out += _ruler_table(data["results"], data.get("ruler_means"))
        else:
            out += [
                "| task | method | K in context | M in memory | accuracy | examples |",
                "|---|---|---:|---:|---:|---:|",
            ]
            for r in data["results"]:
                acc = f"{r['accuracy']:.3f}" if r.get("accuracy") is not None else r.get("note", "-")
                out.append(
                    f"| {r['task']} | {r['method']} | {r['shots_context']} | {r['shots_memory']} | {acc} | "
                    f"{r.get('examples', '')} |"
                )
        if c.get("plot") and (ROOT / c["plot"]).exists():
            out += ["", f"![{c['task']}]({c['plot']})"]
        out.append("")
    return "\n".join(out).rstrip()


# The earlier 7.5M reference model's evaluations (docs/HISTORY.md).
REFERENCE_RESULTS = [
    RESULTS / f"reference_{name}.json"
    for name in ("ppl_validation", "ppl_test", "copy_probe", "ppl_test_int8", "ppl_test_fp8", "passkey", "icl")
]


def demo_section(path: Path) -> str:
    """The default model's `memlong demo` run: facts asked with and without memory, ppl, speed."""
    d = json.loads(path.read_text())
    doc = d["document"]
    parts = " + ".join(f"{p['doc_id']} ({p['tokens']:,})" for p in doc["parts"])
    out = [
        f"`memlong demo --json {path.relative_to(ROOT)}` on {doc['tokens']:,} tokens of held-out text ({parts}), "
        f"{d['torch_threads']} thread(s), load average {d['load_average_at_start']} at the start:",
        "",
        "| fact (depth) | expected | fact's chunk retrieved | with memory | without memory |",
        "|---|---|---|---|---|",
    ]
    if "lexical_weight" not in d["model"]:  # its questions searched as before the window index / lexical term
        model = d["model"] if "rerank_index" in d["model"] else {"rerank_candidates": 32, "rerank_window": 32}
        out[1:1] = ["", _older_search_note({"memlong": model}, repeat=False)]
    if d["model"]["model"] == "default" and "question_reread" not in d["model"]:
        out[1:1] = ["", REREAD_NOTE + "."]
    for f in d["facts"]:
        hit = "yes" if any(r.get("has_fact") for r in f["memory"]["retrieved"]) else "no"
        ans = {
            k: ("right" if f[k]["correct"] else "wrong") + f": {f[k]['answer'][:40]!r}" for k in ("memory", "no_memory")
        }
        out.append(
            f"| {f['question']} ({f['depth']:.0%}) | {f['expected']} | {hit} | {ans['memory']} | {ans['no_memory']} |"
        )
    ppl, rd, bank = d["ppl"], d["reading"], d["bank"]
    out += [
        "",
        "| measure | with memory | without memory |",
        "|---|---:|---:|",
        f"| ppl of the last {ppl['tokens_scored']:,} tokens | {ppl['with_memory']:.3f} | {ppl['without_memory']:.3f} |",
        f"| reading speed (tokens/s) | {rd['memory']['tokens_per_s']:.0f} | {rd['no_memory']['tokens_per_s']:.0f} |",
        f"| peak RSS after reading (MiB) | {rd['memory']['peak_rss_bytes_after_read'] / 2**20:,.0f} | "
        f"{rd['no_memory']['peak_rss_bytes_after_read'] / 2**20:,.0f} |",
        f"| bank | {bank['chunks']} chunks, {bank['bytes'] / 2**20:,.0f} MiB, {bank['kv_bytes_per_token']:,} bytes/token of K/V | - |",
    ]
    return "\n".join(out)


# The default model (SmolLM2-135M, training_free): README's headline table and docs/RESULTS.md.
DEFAULT_RESULTS = [
    RESULTS / f"default_{name}.json"
    for name in (
        "ppl_test",
        "ppl_same_text",
        "ppl_to_64k",
        "ppl_by_length",
        "passkey",
        "passkey_32k",
        "passkey_64k",
        "passkey_64k_rerank_all",
        "passkey_128k",
        "passkey_no_sink",
        "passkey_upper_layers",
        "ruler_4k",
        "ruler_16k",
        "ruler_32k",
        "ruler",
        "ruler_long",
        "icl",
        "icl_no_requery",
    )
]
DEFAULT_HEADLINE = [
    RESULTS / f"default_{name}.json"
    for name in (
        "ppl_same_text",
        "passkey",
        "passkey_32k",
        "passkey_64k",
        "passkey_128k",
        "ruler_4k",
        "ruler_16k",
        "ruler_32k",
        "icl",
    )
]

LONG_CAPACITY = (
    "The bank's capacity is the default model's (131,072 tokens): once it is full, eviction keeps it "
    "at that size, so the cost per token and the memory should stay flat however long the input."
)

SECTIONS = {
    "demo": (RESULTS / "demo.json", demo_section),
    "default_headline": (RESULTS / "default_passkey.json", lambda _: headline_section(DEFAULT_HEADLINE)),
    "default_results": (RESULTS / "default_passkey.json", lambda _: results_section(DEFAULT_RESULTS)),
    "base_ppl": (
        RESULTS / "default_ppl_by_length.json",
        lambda _: base_ppl_section([RESULTS / "default_base_ppl_short.json", RESULTS / "default_ppl_by_length.json"]),
    ),
    "bench_default": (RESULTS / "bench_ingest_default.json", bench_section),
    "bench": (RESULTS / "bench_ingest.json", bench_section),
    "retriever": (RESULTS / "bench_retriever.json", retriever_section),
    "results": (RESULTS / "reference_ppl_test.json", lambda _: results_section(REFERENCE_RESULTS)),
    "million": (RESULTS / "bench_million.json", million_section),
    "long_default": (RESULTS / "bench_long_default.json", lambda p: million_section(p, [p], LONG_CAPACITY)),
    "search": (RESULTS / "bench_search_minilm.json", search_section),
    "question_options": (
        RESULTS / "question_options_validation_16k.json",
        lambda _: "\n\n".join(
            (
                question_options_section(sorted(RESULTS.glob("question_options_validation_*.json"), key=_length_order)),
                results_section(
                    [
                        RESULTS / "question_options_icl_validation.json",
                        RESULTS / "question_options_icl_validation_options.json",
                    ]
                ),
            )
        ),
    ),
    "question_reread": (
        RESULTS / "question_reread_validation_16k.json",
        lambda _: "\n\n".join(
            filter(
                None,
                (
                    question_options_section(
                        sorted(RESULTS.glob("question_reread_validation_*.json"), key=_length_order)
                    ),
                    results_section(
                        [
                            RESULTS / "question_reread_icl_validation.json",
                            RESULTS / "question_reread_score_icl_validation.json",
                        ]
                    ),
                ),
            )
        ),
    ),
}


def _length_order(path: Path) -> tuple[int, str]:
    """question_options_validation_16k.json -> (16, its name): files in order of length, then of
    name (the same order on every file system)."""
    return int(re.sub(r"\D", "", path.stem.rsplit("_", 1)[-1]) or 0), path.name


def render(text: str, page: Path = ROOT / "README.md") -> str:
    """``text`` (the contents of ``page``) with every section between its markers rebuilt."""
    for name, (path, section) in SECTIONS.items():
        marker = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", flags=re.DOTALL)
        if marker.search(text) and path.exists():
            body = _relative_links(section(path), page)
            text = marker.sub(lambda mt, body=body: mt.group(1) + body + "\n" + mt.group(2), text)
    return text


def _relative_links(body: str, page: Path) -> str:
    """Markdown link targets under docs/ (sections write them from the repository root) made
    relative to the folder of ``page``, where the reader's viewer resolves them."""
    return re.sub(
        r"\]\((docs/[^)\s]+)\)", lambda m: "](" + os.path.relpath(ROOT / m.group(1), page.resolve().parent) + ")", body
    )


DEFAULT_CARD = ROOT / "src" / "memlong" / "pretrained" / "default" / "README.md"


def rendered_files() -> list[Path]:
    """The files whose sections are rendered: README.md, every docs/*.md and the default model's card."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), DEFAULT_CARD]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    files = [Path(a).resolve() for a in argv if a != "--check"] or rendered_files()
    for name, (path, _) in SECTIONS.items():
        if not path.exists():
            print(f"{path} not found: section {name!r} left as it is (the commands above write it)", file=sys.stderr)
    stale = []
    for f in files:
        text = f.read_text()
        new = render(text, f)
        if new == text:
            continue
        if check:
            stale.append(f)
        else:
            f.write_text(new)
            print(f"updated {f}")
    if stale:
        print(
            f"out of date: {', '.join(str(f.relative_to(ROOT)) for f in stale)}: run python scripts/render_readme.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
