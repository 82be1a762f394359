"""Rewrites the generated sections of the README and docs/*.md from the reports in docs/results/.

    python scripts/render_readme.py            # after a run wrote docs/results/NAME.json
    python scripts/render_readme.py --check    # exit 1 if a page or a .md is out of date (tests/test_readme.py)
    python scripts/render_readme.py docs/HISTORY.md   # only the pages named

Every `memlong eval`, `memlong bench` and `memlong demo` run writes its Markdown beside its JSON
(``X.json`` -> ``X.md``, :func:`memlong.report.markdown`). This script regenerates each .md of
docs/results/ from its JSON (so an older report needs no rerun) and copies them between a page's
markers (``<!-- name:start -->`` ... ``<!-- name:end -->``), as :data:`SECTIONS` lists them; a few
sections combine several reports into one table (README's headline, the model card's base ppl,
HISTORY's long reads and search). A section none of whose reports exists is left as it is.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from memlong import report
from memlong.config import MemLongConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"

OLDER_SEARCH = (
    "Measured before the bank's window index (`rerank_index`) and the question's words (`lexical_weight`), both "
    "on by default since: the question searched by whole-chunk similarity; `--set rerank_candidates=0` repeats that."
)
BEFORE_REREAD = (
    "Measured before the default model's questions reread their hits (`question_reread`, on by default since): "
    "each question read its hits as memory only; `--set question_reread=false` repeats that."
)
OLD_RULER = (
    "Measured with `memlong eval ruler` as it was before it followed RULER's definitions (its own task variants "
    "and word lists, labelled prompts, answers cut early, one sample per cell): not comparable with RULER's tables "
    "or the RULER results here; `git checkout a49c312` repeats it."
)
SOAK_PARAPHRASE = (
    "Measured when `--reuse` asked a paraphrase of the question (`scripts/soak_ask.py` before c84bef1; it now asks "
    "the same question again): the loaded memory answered the paraphrase wrongly."
)
BEFORE_WINDOW = (
    "Measured before the default model's questions took their hits from the local window too and read each "
    "with the start of the next chunk (`question_window`, `question_tail=32`, on by default since): "
    "`--set question_window=false --set question_tail=0` repeats it."
)
VALIDATED_WINDOW = (
    "Measured when the default model read a question's hits in text order, without tails or window hits "
    '(`question_order="stream"`, `question_tail=0`, `question_window=false`): with today\'s default, `--set` '
    "each of these as well to repeat it."
)
DEMO_SCORE_ORDER = (
    'Measured when the default model\'s config had `"question_order": "score"` beside the window and the tails '
    "(`src/memlong/pretrained/default/memlong_config.json`): `memlong demo --set question_order=score` repeats it."
)
#: report -> the paragraph under its command: what changed since it was measured.
NOTES = {
    "soak_ask_256k": SOAK_PARAPHRASE,
    "reference_passkey": OLDER_SEARCH,
    "question_options_icl_validation": BEFORE_REREAD,
    "question_options_icl_validation_options": BEFORE_REREAD,
    "default_ruler_16k_before_question_window": BEFORE_WINDOW,
    "demo_question_order_score": DEMO_SCORE_ORDER,
    **{f"question_window_validation_4k_{n}": VALIDATED_WINDOW for n in ("off", "on", "on_tail32", "on_tail32_score")},
    "default_ruler": OLD_RULER,
    "default_ruler_long": OLD_RULER,
}

LONG_CAPACITY = (
    "The bank's capacity was the default model's then (131,072 tokens): once it is full, eviction keeps it "
    "at that size, so the cost per token and the memory should stay flat however long the input."
)


def question_options_markdown(data: dict, path: str) -> str:
    """A `scripts/experiments/compare_question_options.py` report (validation split): its command, then the
    mean score per task and length under each question variant, with the number of prompts."""
    c = data["config"]
    flags = (
        f"--data {c['data']} --lengths {c['lengths']} --ruler-tasks {c['ruler_tasks']} "
        f"--ruler-samples {c['ruler_samples']} --passkey-depths {c['passkey_depths']} "
        f"--passkey-trials {c['passkey_trials']} --seed {c['seed']}"
    )
    variants = list(c["variants"])
    if variants != ["stream", "best_last", "stream_next", "best_last_next"]:  # the script's default set
        flags += f" --variants {','.join(variants)}"
    out = [
        f"`python scripts/experiments/compare_question_options.py {flags} --json {path}`",
        "",
        "| task | length | prompts | " + " | ".join(variants) + " |",
        "|---|---:|---:|" + "---:|" * len(variants),
    ]
    for task, by_length in data["summary"].items():
        for length, cells in by_length.items():
            scores = " | ".join(f"{cells[v]['score']:.2f}" for v in variants)
            out.append(f"| {task} | {int(length):,} | {cells[variants[0]]['prompts']} | {scores} |")
    return "\n".join(out)


def question_bar_markdown(data: dict, path: str) -> str:
    """A `scripts/experiments/question_bar.py` report (validation split): its command, then per task
    the share of the answered statements' chunks each rule reads again, how often it reads one at
    least, and the other needles' chunks it reads per question."""
    c = data["config"]
    flags = (
        f"--data {c['data']} --split {c['split']} --lengths {c['lengths']} --tasks {c['tasks']} "
        f"--samples {c['samples']} --seed {c['seed']} --ratio {c['ratio']} --min-run {c['min_run']}"
    )
    rules = list(data["results"][0]["rules"]) if data["results"] else []
    out = [
        f"`python scripts/experiments/question_bar.py {flags} --json {path}` (top_k={c['top_k']}):",
        "",
        "| task | length | samples | " + " | ".join(rules) + " |",
        "|---|---:|---:|" + "---|" * len(rules),
    ]
    for r in data["results"]:
        cells = " | ".join(
            f"{v['answer_share']:.2f} ({v['any_answer']:.0%} any; {v['other_needles']:.1f} other)"
            if any(e["answer_chunks"] for e in r["examples"])
            else "- (no chunk holds the answer)"
            for v in r["rules"].values()
        )
        out.append(f"| {r['task']} | {r['length']:,} | {r['samples']} | {cells} |")
    out += [
        "",
        "Each cell: the mean share of the answered statements' chunks read again (how often one at least; "
        "the other needles' chunks read per question).",
    ]
    return "\n".join(out)


def kv_predictability_markdown(data: dict, path: str) -> str:
    """A `scripts/experiments/kv_predictability.py` report: its command, then for each memory layer the R^2 of
    a linear map from its keys/values to those of the layers above it, a few layers up and at the top."""
    rows = data["results"]
    top = max(r["layer"] for r in rows)
    steps = (1, 2, 4, 8)
    out = [
        f"`{data['command'].replace(data['config']['json'], path)}`",
        "",
        "| memory layer | " + " | ".join(f"layer m+{d}" for d in steps) + f" | layer {top} |",
        "|---:|" + "---:|" * (len(steps) + 1),
    ]
    for m in dict.fromkeys(r["memory_layer"] for r in rows):
        by = {r["layer"]: r for r in rows if r["memory_layer"] == m}
        cells = [by.get(m + d) for d in steps] + [by[top]]
        out.append(
            f"| {m} | " + " | ".join(f"{c['keys_r2']:.2f} / {c['values_r2']:.2f}" if c else "-" for c in cells) + " |"
        )
    return "\n".join(out + ["", "Each cell: R^2 of the keys / of the values (held-out tokens)."])


DEFAULT_CONFIG = ROOT / "src" / "memlong" / "pretrained" / "default" / "memlong_config.json"


def earlier_settings(runs: list[tuple[dict, str]], fields: tuple[str, ...] | None = None) -> list[str]:
    """The runs whose memlong rows ran with other settings than the default model's today
    (:func:`_changed_keys`), each with the fields that differ; ``fields`` narrows the comparison."""
    out = []
    for data, path in runs:
        keys = _changed_keys(data, fields)
        if keys:
            theirs = _setting_fields(data)
            out.append(f"`{path}` ({', '.join(_setting(k, theirs[k]) for k in keys)})")
    return out


def _changed_keys(data: dict, fields: tuple[str, ...] | None = None) -> list[str]:
    """The fields (of ``fields``, else all of :func:`_setting_fields`) in which a report's memlong
    rows ran otherwise than the default model today: the layout, and for a run that asks questions
    the question fields; none for a report without memlong rows (rag and base rows: the memory's
    settings never reach them)."""
    memlong_rows = any(str(r.get("method", "")).startswith("memlong") for r in data.get("results", []))
    if not (data.get("config", {}).get("memlong") or data.get("model")) or not (memlong_rows or "facts" in data):
        return []
    today, theirs = _setting_fields({"config": {"memlong": _shipped()}}), _setting_fields(data)
    asks = data.get("config", {}).get("task") in ("passkey", "ruler", "icl") or "facts" in data
    return [k for k in fields or today if (asks or k in LAYOUT_FIELDS) and theirs[k] != today[k]]


def _shipped() -> dict:
    """The default model's MemLong config today, as a dict."""
    return MemLongConfig.from_dict(json.loads(DEFAULT_CONFIG.read_text())).to_dict()


def _setting(key: str, value) -> str:
    """``key=value`` as the notes say it (``bank_heads``: every head, or how many)."""
    if key == "bank_heads":
        return "bank_heads: every head" if value is None else f"bank_heads: {len(value)} heads"
    return f"{key}={value}"


def headline(runs: list[tuple[dict, str]]) -> str:
    """README's headline: one row per method, one column per measurement of the runs, and their
    sources. memlong rows measured with another layout than the default's today are a row of their
    own (:func:`_by_layout`); reports whose questions were asked with other settings are named."""
    sources = ", ".join(f"`{path}`" for _, path in runs)
    earlier = earlier_settings(runs, QUESTION_FIELDS)
    said = (
        "\n\nmemlong's questions in these were asked with the default model's earlier settings (today's: "
        f"`src/memlong/pretrained/default/memlong_config.json`, docs/CONFIG.md): {'; '.join(earlier)}."
        if earlier
        else ""
    )
    return (
        report.headline_table([_by_layout(data) for data, _ in runs])
        + f"\n\nFrom {sources} (commands and per-depth/per-task tables: [docs/RESULTS.md](../RESULTS.md))."
        + said
    )


#: the headline's row for memlong rows that banked every head, before the default kept 11
EVERY_HEAD_ROW = "memlong, every head (earlier default)"


def _by_layout(data: dict) -> dict:
    """``data`` with its memlong rows labelled :data:`EVERY_HEAD_ROW` when they banked every head
    and the default model today does not (the same model without memory is the same either way)."""
    if _setting_fields(data)["bank_heads"] is not None or _shipped().get("bank_heads") is None:
        return data
    rows = [{**r, "method": EVERY_HEAD_ROW} if r.get("method") == "memlong" else r for r in data["results"]]
    means = [
        {**m, "method": EVERY_HEAD_ROW} if m.get("method") == "memlong" else m for m in data.get("ruler_means", [])
    ]
    return {**data, "results": rows, **({"ruler_means": means} if "ruler_means" in data else {})}


def ruler_bars(runs: list[tuple[dict, str]]) -> str:
    """RULER per task: memlong at each longer length against the base model's 4k ceiling and rag."""
    sources = ", ".join(f"`{path}`" for _, path in runs)
    return report.ruler_bars_table([data for data, _ in runs]) + f"\n\nFrom {sources} (their commands: below)."


#: README's layout comparison: (measure, the every-head layout's report, the retrieval heads' report); a
#: measure's later pair wins where both have a row (the default's runs after the bank_heads_* ones)
LAYOUT_PAIRS = [
    ("RULER needles, validation 4k", "question_window_validation_4k_on_tail32", "bank_heads_validation_4k"),
    ("RULER 16k", "every_head_ruler_16k", "bank_heads_ruler_16k"),
    ("RULER 16k", "every_head_ruler_16k", "default_ruler_16k"),
    ("passkey", "every_head_passkey", "bank_heads_passkey"),
    ("passkey", "every_head_passkey", "default_passkey"),
    ("passkey", "default_passkey_32k", "bank_heads_passkey_long"),
    ("passkey", "default_passkey_64k", "bank_heads_passkey_long"),
    ("passkey", "every_head_passkey_128k", "default_passkey_128k"),
    ("ppl, same text", "default_ppl_same_text", "bank_heads_ppl_same_text"),
    ("icl corpus-source (300 in memory)", "every_head_icl", "bank_heads_icl"),
    ("icl corpus-source (300 in memory)", "every_head_icl", "default_icl"),
    ("demo", "every_head_demo", "demo_bank_heads"),
    ("demo", "every_head_demo", "demo"),
    ("reading 16k against base_windows", "bench_ingest_every_head_16k", "bench_ingest_bank_heads_16k"),
]


def _layout_cells(measure: str, data: dict | None, method: str = "memlong") -> dict[str, str]:
    """{row label: cell} of one report's ``method`` rows for :func:`layouts` (``memlong_no_memory``:
    the same model without memory, where the report has it)."""
    if data is None:
        return {}
    rows = data.get("results", [])
    mine = [r for r in rows if r.get("method") == method]
    if method != "memlong" and measure == "demo":
        return {
            "demo: facts answered": f"{sum(f['no_memory']['correct'] for f in data['facts'])} of {len(data['facts'])}",
            "demo: ppl of the last 2,048 tokens": f"{data['ppl']['without_memory']:.3f}",
        }
    if measure.startswith("RULER"):
        return {
            f"{measure}: {r['task']}": f"{r['score']:.2f} [{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]"
            for r in mine
            if r.get("score") is not None  # (a task not run: qa without its data)
        }
    if measure == "passkey":
        out = {}
        for L in sorted({r["length"] for r in mine}):
            cells = [r for r in mine if r["length"] == L and r.get("accuracy") is not None]
            n = sum(r["trials"] for r in cells)
            if n:
                acc = sum(r["accuracy"] * r["trials"] for r in cells) / n
                out[f"passkey {L // 1024}k"] = f"{acc:.2f} ({n} samples)"
        return out
    if measure.startswith("ppl"):
        return {f"{measure} {r['length'] // 1024}k": f"{r['ppl']:.3f}" for r in mine if r.get("ppl")}
    if measure.startswith("icl"):
        return {measure: f"{r['accuracy']:.3f} ({r['examples'] * r['trials']} answers)" for r in mine}
    if measure == "demo":
        right = sum(f["memory"]["correct"] for f in data["facts"])
        speed = data["reading"]["memory"]["tokens_per_s"] / data["reading"]["no_memory"]["tokens_per_s"]
        return {
            "demo: facts answered": f"{right} of {len(data['facts'])}",
            "demo: ppl of the last 2,048 tokens": f"{data['ppl']['with_memory']:.3f}",
            "demo: reading speed against no memory (one run)": f"{speed:.2f}x",
            "bank: bytes of K/V per token": f"{data['bank']['kv_bytes_per_token']:,}",
        }
    speeds = {r["method"]: r["tokens_per_s"] for r in rows}
    return {measure: f"{speeds['memlong'] / speeds['base_windows']:.2f}x"} if method == "memlong" else {}


#: the fields a report's memlong rows are compared on: the bank's layout, then the question's
LAYOUT_FIELDS = ("bank_heads",)
QUESTION_FIELDS = (
    "question_reread",
    "question_window",
    "question_tail",
    "question_order",
    "question_score_ratio",
    "question_fresh_window",
)


def _setting_fields(data: dict) -> dict:
    """The layout and question-time fields a report's MemLong config had; a field the report does
    not record did not exist yet, so the run had its off value (the dataclass default)."""
    model = data.get("model") or {}  # the demo's: its config in model.memlong (flat in older reports)
    cfg = data.get("config", {}).get("memlong") or model.get("memlong") or model
    off = MemLongConfig.__dataclass_fields__
    out = {k: cfg.get(k, off[k].default) for k in LAYOUT_FIELDS + QUESTION_FIELDS}
    if out["bank_heads"] is not None:
        out["bank_heads"] = [list(p) for p in out["bank_heads"]]
    return out


def layouts(runs: list[tuple[dict, str]]) -> str:
    """README: the earlier default layout (every head banked) against the retrieval heads' (``bank_heads``,
    the default's now), measure by measure, each from its report; the reports whose questions were
    asked with other settings than the default's today are named under the table."""
    by = {Path(path).stem: data for data, path in runs}
    rows: dict[str, list[str]] = {}
    for measure, every, lean in LAYOUT_PAIRS:
        a, b = _layout_cells(measure, by.get(every)), _layout_cells(measure, by.get(lean))
        c = _layout_cells(measure, by.get(every), "memlong_no_memory") | _layout_cells(
            measure, by.get(lean), "memlong_no_memory"
        )
        for label in list(a) + [k for k in b if k not in a]:
            row = rows.setdefault(label, ["not run", "not run", "-"])
            row[:] = a.get(label, row[0]), b.get(label, row[1]), c.get(label, row[2])
    table = [
        "| measure | every head (the earlier default) | 11 retrieval heads (the default) | no memory |",
        "|---|---:|---:|---:|",
    ]
    table += [f"| {label} | {x} | {y} | {z} |" for label, (x, y, z) in rows.items()]
    sources = ", ".join(f"`{path}`" for _, path in runs)
    asked = [(data, path) for data, path in runs if not Path(path).stem.startswith(("bench", "demo"))]
    earlier = earlier_settings(asked, QUESTION_FIELDS)
    said = (
        ["Asked with other question settings than the default's today: " + "; ".join(earlier) + "."] if earlier else []
    )
    return "\n".join(table + [""] + said + ["", f"From {sources}."])


def train_command(args: dict) -> str:
    """The ``memlong train`` command of a run's recorded arguments (``train_summary.json``): every
    flag whose value differs from the verb's default."""
    import argparse

    from memlong.recipes import train

    p = argparse.ArgumentParser()
    train.add_arguments(p)
    defaults = vars(p.parse_args(["--data", "x", "--output", "x"]))

    def same(a, b) -> bool:
        return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)

    flags = []
    for key, value in args.items():
        if key == "model" and Path(str(value)).name.startswith("SmolLM2-135M-Instruct"):
            continue  # the default base, converted into the user's cache: what no --model trains
        if (
            key in defaults
            and (key in ("data", "output") or not same(value, defaults[key]))
            and value not in (None, False)
        ):
            value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            flags.append(f"--{key.replace('_', '-')}" + ("" if value is True else f" {value}"))
    return "memlong train " + " ".join(flags)


def learning_curve(runs: list[tuple[dict, str]]) -> str:
    """docs/DEVELOPMENT.md: an adaptation run's validation loss with and without memory against the
    tokens trained, from its summary (``final/train_summary.json``, copied as NAME.json) and its
    log (``log.csv``, copied as NAME.csv beside it)."""
    import csv

    out = []
    for data, path in runs:
        with open(ROOT / path.replace(".json", ".csv")) as f:
            rows = [r for r in csv.DictReader(f) if r.get("val_loss_memory")]
        out += [
            f"`{train_command(data['args'])}` ({data['hardware']}, {data['threads_per_process']} thread(s), "
            f"{data['mixed_precision']} precision; log: `{path.replace('.json', '.csv')}`, summary: `{path}`)",
            "",
            "| step | tokens trained | val loss, memory | val loss, no memory | memory's change | "
            "training tokens/s (x the plain forward's) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            mem, no = float(r["val_loss_memory"]), float(r["val_loss_no_memory"])
            speed = (
                f"{float(r['tokens_per_second']):.0f} ({float(r['forward_ratio']):.2f}x)"
                if r.get("forward_ratio")
                else "-"
            )
            out.append(
                f"| {r['step']} | {int(r['tokens']):,} | {mem:.4f} | {no:.4f} | {100 * (mem - no) / no:+.2f}% | {speed} |"
            )
        v = data["validation"]
        out += [
            "",
            f"Validation: {v['windows']} windows of {v['length']:,} tokens of the corpus' validation split, the "
            f"last {v['scored']:,} of each scored (the rest read into memory first); {data['steps']} steps, "
            f"{data['tokens']:,} tokens in {data['train_seconds'] / 60:.0f} min.",
        ]
    return "\n".join(out)


def concatenated(runs: list[tuple[dict, str]]) -> str:
    """Each report's Markdown (as in its .md), one after the other."""
    return "\n\n".join(_markdown(data, path) for data, path in runs)


#: marker -> (how the section shows its reports, the reports in docs/results/).
SECTIONS = {
    "demo": (concatenated, ["demo"]),  # README: the default model's `memlong demo`
    # README: the default model's evaluations (scripts/eval_default.sh), one row per method; the every-head
    # reports before the 11 heads' (bank_heads_*, then the default's): a later report's cell replaces an earlier's
    "default_headline": (
        headline,
        [
            "default_ppl_same_text",
            "bank_heads_ppl_same_text",
            "every_head_passkey",
            "bank_heads_passkey",
            "default_passkey",
            "default_passkey_32k",
            "default_passkey_64k",
            "bank_heads_passkey_long",
            "every_head_passkey_128k",
            "default_passkey_128k",
            "default_passkey_rag",
            "default_passkey_base_truncated",
            "default_passkey_base_truncated_long",
            "default_passkey_base_full",
            "default_passkey_no_memory_long",
            "default_passkey_no_memory_128k",
            "default_ruler_4k",
            "every_head_ruler_16k",
            "bank_heads_ruler_16k",
            "default_ruler_16k",
            "default_ruler_32k",
            "every_head_icl",
            "bank_heads_icl",
            "default_icl",
            "default_icl_rag",
            "default_icl_base_truncated",
            "demo",  # make demo: the facts each method answered (its own table: the README's demo section)
        ],
    ),
    # docs/RESULTS.md: RULER per task against the 4k ceiling and rag, the bars of a longer length
    "ruler_bars": (ruler_bars, [f"default_ruler_{name}" for name in ("4k", "16k", "32k")]),
    "bench_default": (concatenated, ["bench_ingest_default"]),  # README: make bench
    "long_default": (lambda runs: report.million_markdown(runs, LONG_CAPACITY), ["bench_long_default"]),
    # README: a million tokens read by today's default, nothing evicted (issue targets: < 45 min, < 5 GiB)
    "million_default": (concatenated, ["bench_million_default"]),
    "soak": (concatenated, ["soak_ask_1m", "soak_ask_256k"]),  # README: scripts/soak_ask.py, ask on a long input
    # README: the default layout against the retrieval heads' (bank_heads), read in one session each
    "bank_heads": (concatenated, ["bench_ingest_every_head_16k", "bench_ingest_bank_heads_16k"]),
    "default_results": (  # docs/RESULTS.md: each evaluation of the default model
        concatenated,
        [
            f"default_{name}"
            for name in ("ppl_test", "ppl_same_text", "ppl_to_64k", "ppl_by_length", "passkey", "passkey_32k")
            + ("passkey_64k", "passkey_64k_rerank_all", "passkey_128k", "passkey_rag", "passkey_base_truncated")
            + ("passkey_base_truncated_long", "passkey_base_full", "passkey_no_memory_long")
            + ("passkey_no_memory_128k", "passkey_no_sink")
            + ("passkey_upper_layers",)
            + ("ruler_4k", "ruler_16k", "ruler_32k", "ruler_16k_before_question_window", "ruler", "ruler_long")
            + ("icl", "icl_rag", "icl_base_truncated", "icl_no_requery")
        ]
        + ["every_head_passkey", "every_head_passkey_128k", "every_head_ruler_16k", "every_head_icl"],
    ),
    "base_ppl": (report.base_ppl_markdown, ["default_base_ppl_short", "default_ppl_by_length"]),  # the model card
    # docs/HISTORY.md: the earlier 7.5M reference model
    "results": (
        concatenated,
        [
            f"reference_{name}"
            for name in ("ppl_validation", "ppl_test", "copy_probe", "ppl_test_int8", "ppl_test_fp8", "passkey", "icl")
        ],
    ),
    "bench": (concatenated, ["bench_ingest"]),
    "million": (
        report.million_markdown,
        ["bench_million", "bench_million_mmap", "bench_million_speed_default", "bench_million_speed_mmap"],
    ),
    "search": (report.search_markdown, ["bench_search_minilm", "bench_search"]),
    "retriever": (concatenated, ["bench_retriever"]),
    # docs/DEVELOPMENT.md: scripts/experiments/kv_predictability.py, how far MemLong mode's layers are from its memory
    "kv_predictability": (concatenated, ["default_kv_predictability"]),
    # docs/DEVELOPMENT.md: adapting the default model in MemLong mode on a CPU, its learning curve
    "adaptation_default": (learning_curve, ["adaptation_default_train"]),
    "adaptation_default_test": (concatenated, ["adaptation_default_ppl_16k", "adaptation_default_passkey_16k"]),
    # docs/DEVELOPMENT.md: scripts/experiments/compare_question_options.py and the icl runs beside it
    "question_options": (
        concatenated,
        ["question_options_validation_16k", "question_options_validation_32k"]
        + ["question_options_icl_validation", "question_options_icl_validation_options"],
    ),
    # docs/DEVELOPMENT.md: the demo with question_order="score" (with the window and tails)
    "demo_question_order": (concatenated, ["demo_question_order_score"]),
    # docs/DEVELOPMENT.md: question_window and question_tail on the validation split
    "question_window": (
        concatenated,
        [f"question_window_validation_4k_{name}" for name in ("off", "on", "on_tail32", "on_tail32_score")],
    ),
    # README: the default layout against the retrieval heads', measure by measure
    "layouts": (layouts, list(dict.fromkeys(name for _, *pair in LAYOUT_PAIRS for name in pair))),
    # docs/RESULTS.md: the lean layout's runs, with their commands
    "bank_heads_runs": (
        concatenated,
        ["bank_heads_ruler_16k", "bank_heads_passkey", "bank_heads_passkey_long"]
        + ["bank_heads_ppl_same_text", "bank_heads_icl", "demo_bank_heads", "demo_bank_heads_ratio", "every_head_demo"],
    ),
    # docs/DEVELOPMENT.md: question_fresh_window and the lean bank on the validation split
    "question_fresh_window": (concatenated, ["question_fresh_window_validation_4k"]),
    "bank_heads_validation": (concatenated, ["bank_heads_validation_4k"]),
    "question_score_ratio": (concatenated, ["question_score_ratio_validation_4k"]),
    # docs/DEVELOPMENT.md: scripts/experiments/question_bar.py, the hits the ratio keeps and a bar from a hit not restating the question
    "question_bar": (concatenated, ["question_bar_validation_16k"]),
    "question_reread": (
        concatenated,
        [f"question_reread_validation_{name}" for name in ("16k", "seed2_16k", "seed3_passkey_16k")]
        + ["question_reread_validation_seed3_single_16k", "question_reread_validation_64k"]
        + ["question_reread_icl_validation", "question_reread_score_icl_validation"],
    ),
}


def _markdown(data: dict, path: str) -> str:
    """A report's Markdown, as its .md holds it (links relative to docs/results/)."""
    name = Path(path).stem
    if name.startswith("question_") and "summary" in data:  # an experiment's report, not a verb's
        return question_options_markdown(data, path)
    if name.startswith("question_bar_"):
        return question_bar_markdown(data, path)
    if name == "default_kv_predictability":
        return kv_predictability_markdown(data, path)
    if name == "adaptation_default_train":
        return learning_curve([(data, path)])
    note = NOTES.get(name) or (_changed_since(data) if name.startswith(("default_", "every_head_")) else None)
    return report.markdown(data, path, note, root=ROOT)


def _changed_since(data: dict) -> str | None:
    """The note under a default model's report measured with settings the default has changed
    since (:func:`_changed_keys`): which, and the ``--set`` flags that repeat it."""
    keys = _changed_keys(data)
    if not keys:
        return None
    theirs = _setting_fields(data)
    flags = " ".join(f"--set {k}={json.dumps(theirs[k]).replace(' ', '')}" for k in keys)
    return (
        "Measured with settings the default model has changed since ("
        + ", ".join(_setting(k, theirs[k]) for k in keys)
        + f"): `{flags}` repeats it."
    )


def _runs(names: list[str]) -> list[tuple[dict, str]]:
    """(report, its path from the repository root) of each of ``names`` that exists."""
    paths = [RESULTS / f"{name}.json" for name in names]
    return [(report.load(p), str(p.relative_to(ROOT))) for p in paths if p.exists()]


def render(text: str, page: Path = ROOT / "README.md") -> str:
    """``text`` (the contents of ``page``) with every section between its markers rebuilt."""
    for name, (show, names) in SECTIONS.items():
        marker = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", flags=re.DOTALL)
        runs = _runs(names)
        if marker.search(text) and runs:
            body = _relative_links(show(runs), page)
            text = marker.sub(lambda mt, body=body: mt.group(1) + body + "\n" + mt.group(2), text)
    return text


def _relative_links(body: str, page: Path) -> str:
    """Markdown link targets relative to docs/results/ (where the .md files lie) made relative to
    the folder of ``page``, where the reader's viewer resolves them."""
    return re.sub(
        r"\]\(([^)\s:#]+)\)",
        lambda m: "](" + os.path.relpath(RESULTS / m.group(1), page.resolve().parent) + ")",
        body,
    )


def markdown_files() -> dict[Path, str]:
    """Every .md of docs/results/ a section shows, from its JSON."""
    runs = {path: data for _, names in SECTIONS.values() for data, path in _runs(names)}
    return {(ROOT / path).with_suffix(".md"): _markdown(data, path) + "\n" for path, data in runs.items()}


DEFAULT_CARD = ROOT / "src" / "memlong" / "pretrained" / "default" / "README.md"


def rendered_files() -> list[Path]:
    """The files whose sections are rendered: README.md, every docs/*.md and the default model's card."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), DEFAULT_CARD]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    pages = [Path(a).resolve() for a in argv if a != "--check"]
    updated = {f: render(f.read_text(), f) for f in pages or rendered_files()}
    if not pages:
        updated.update(markdown_files())
    stale = [f for f, new in updated.items() if not f.exists() or f.read_text() != new]
    if check and stale:
        print(
            f"out of date: {', '.join(str(f.relative_to(ROOT)) for f in stale)}: run python scripts/render_readme.py",
            file=sys.stderr,
        )
        return 1
    for f in [] if check else stale:
        f.write_text(updated[f])
        print(f"updated {f.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
