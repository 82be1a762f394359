"""The Markdown of a report: what `memlong eval ppl|passkey|icl|ruler`, `memlong bench
ingest|search|retriever` and `memlong demo` write beside their JSON (``X.json`` -> ``X.md``): the
command that made it, its table(s) and its plot. scripts/render_readme.py copies these into the
README and docs/*.md, regenerating each from its JSON.

``path`` is the JSON's path as the Markdown shows it (in the command); files the report names (its
plot) are looked up under ``root`` and linked relative to the JSON's folder, where the .md lies.

    markdown(json.loads(Path("ppl.json").read_text()), "ppl.json")
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

MIB = 2**20


def markdown(report: dict, path: str | Path, note: str | None = None, root: str | Path = ".") -> str:
    """The Markdown of any report, by its kind. ``note``: a paragraph under the command (an eval or
    demo report's, e.g. what changed since it was measured)."""
    if "facts" in report:
        return demo_markdown(report, path, note)
    if "calls" in report:
        return soak_markdown(report, path, note)
    if "task" in report.get("config", {}):
        return eval_markdown(report, path, note, root)
    row = (report.get("results") or [{}])[0]  # a benchmark's, by what its rows measure
    if "index" in row:
        return search_markdown([(report, path)])
    if "next_hit_at_k" in row:
        return retriever_markdown(report, path)
    if "tokens" in row:
        return ingest_markdown(report, path, root)
    raise ValueError(f"{path}: not a report of memlong eval, bench or demo")


def write_markdown(report: dict, json_path: str | Path) -> Path:
    """Writes :func:`markdown` of ``report`` beside its JSON (``X.json`` -> ``X.md``); returns its path."""
    md = Path(json_path).with_suffix(".md")
    md.write_text(markdown(report, json_path) + "\n")
    return md


def _link(target: str | Path, json_path: str | Path) -> str:
    """``target`` (a path like ``json_path``'s) as a link from the JSON's folder."""
    return os.path.relpath(target, Path(json_path).parent)


# --- memlong eval ---------------------------------------------------------------------------------


def set_flags(overrides: list[str] | None) -> str:
    """The ``--set FIELD=VALUE`` flags of a command line, each value quoted for a shell."""
    return "".join(f" --set {shlex.quote(o)}" for o in overrides or [])


def eval_command(c: dict, json_path) -> str:
    """The ``memlong eval`` command line that wrote a result JSON, from its ``config`` record."""
    from memlong.data.ruler import RULER_TASKS

    keys = {
        "ppl": ("split", "lengths", "score", "methods", "max_documents", "retriever"),
        "passkey": ("split", "lengths", "depths", "trials", "methods", "retriever"),
        "icl": (
            "split",
            "demo_split",
            "labels",
            "shots_context",
            "shots_memory",
            "trials",
            "max_examples",
            "methods",
            "retriever",
        ),
        "ruler": ("split", "lengths", "tasks", "samples", "seed", "methods", "retriever", "qa_squad", "qa_hotpotqa"),
    }[c["task"]]
    if c["task"] == "ruler" and "haystacks" in c:  # a report of eval ruler before it followed RULER's definitions
        keys = ("split", "lengths", "tasks", "haystacks", "samples", "seed", "methods", "retriever")
    elif c["task"] == "ruler" and c.get("tasks") == ",".join(RULER_TASKS):
        keys = tuple(k for k in keys if k != "tasks")  # the default: RULER's 13
    args = "".join(f" --{k.replace('_', '-')} {c[k]}" for k in keys if c.get(k) is not None)
    if c["task"] == "ppl" and c.get("repeat"):
        args += f" --repeat {c['repeat']}"
    if c["task"] == "ppl" and c.get("same_text"):
        args += " --same-text"
    # (an icl report from before --no-requery existed was measured without it)
    if c["task"] in ("passkey", "ruler", "icl") and c.get("requery", c["task"] != "icl") is False:
        args += " --no-requery"
    if c["task"] == "ruler" and c.get("chat_template") is False:
        args += " --no-chat-template"
    if c.get("dtype", "float32") != "float32":
        args += f" --dtype {c['dtype']}"
    sets = set_flags(c.get("overrides"))
    # the default model is what a command without --model evaluates
    model = "" if c.get("model") in (None, "default") else f" --model {c['model']}"
    data = "" if c.get("data") is None else f" --data {c['data']}"  # ruler on noise alone reads no data
    return f"memlong eval {c['task']}{model}{data}{args}{sets} --json {json_path}"


def eval_markdown(report: dict, path: str | Path, note: str | None = None, root: str | Path = ".") -> str:
    """An eval report (ppl, passkey, icl or ruler) under the command that wrote it, and its plot
    when the command wrote one."""
    c, results = report["config"], report["results"]
    out = [f"`{eval_command(c, path)}`", ""] + ([note, ""] if note else [])
    if c["task"] == "ppl":
        out += [
            "| length | method | ppl of the last tokens | tokens scored | documents |",
            "|---:|---|---:|---:|---:|",
        ]
        for r in results:
            out.append(
                f"| {r['length']:,} | {r['method']} | {cell(r, 'ppl', '{:.3f}')} | {r['tokens_scored']:,} | "
                f"{r['documents']} |"
            )
    elif c["task"] == "passkey":
        out += passkey_table(results)
    elif c["task"] == "ruler":
        out += ruler_table(results, report.get("ruler_means"))
    else:
        out += [
            "| task | method | K in context | M in memory | accuracy | examples |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in results:
            out.append(
                f"| {r['task']} | {r['method']} | {r['shots_context']} | {r['shots_memory']} | "
                f"{cell(r, 'accuracy', '{:.3f}')} | {r.get('examples', '')} |"
            )
    if c.get("plot") and (Path(root) / c["plot"]).exists():
        out += ["", f"![{c['task']}]({_link(c['plot'], path)})"]
    return "\n".join(out)


def cell(r: dict, key: str, fmt: str = "{:.2f}") -> str:
    """A measured value, or what happened instead (skipped, out of memory, ...)."""
    return fmt.format(r[key]) if r.get(key) is not None else r.get("note", "-")


def passkey_table(results: list[dict]) -> list[str]:
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
        cells = " | ".join(cell(rows[d], "accuracy") if d in rows else "" for d in depths)
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


def _interval_cell(r: dict, key: str = "score") -> str:
    if r.get(key) is None:
        return r.get("note", "-").split(":")[0]
    lo, hi = r["interval"]
    return f"{r[key]:.2f} [{lo:.2f}, {hi:.2f}]"


def ruler_table(results: list[dict], means: list[dict] | None = None) -> list[str]:
    """Score by task (and haystack), a column per length and method; with ``means`` (a report of RULER
    as RULER defines it), each cell's 95% interval and RULER's mean over its tasks that ran."""
    cols = list(dict.fromkeys((r["length"], r["method"]) for r in results))
    out = ["| task | " + " | ".join(f"{L:,} {m}" for L, m in cols) + " |", "|---|" + "---:|" * len(cols)]
    show = _interval_cell if means is not None else (lambda r: cell(r, "score"))
    for label in dict.fromkeys(_ruler_label(r) for r in results):
        rows = {(r["length"], r["method"]): r for r in results if _ruler_label(r) == label}
        out.append(f"| {label} | " + " | ".join(show(rows[c]) if c in rows else "" for c in cols) + " |")
    samples = max(r.get("samples", 0) for r in results)
    if means is None:
        out.append(
            f"| mean ({samples} sample(s) per cell) | " + " | ".join(mean_score(results, *c) for c in cols) + " |"
        )
        return out
    by = {(m["length"], m["method"]): m for m in means}
    out.append(
        f"| RULER's mean ({samples} samples per task) | " + " | ".join(ruler_mean(by.get(c)) for c in cols) + " |"
    )
    return out


def ruler_mean(m: dict | None) -> str:
    """RULER's mean over its tasks that ran, with its 95% interval and how many of them ran."""
    if not m or "mean" not in m:
        return "-"
    from memlong.data.ruler import RULER_TASKS

    return f"{m['mean']:.2f} [{m['interval'][0]:.2f}, {m['interval'][1]:.2f}] ({len(m['tasks'])} of {len(RULER_TASKS)} tasks)"


def ruler_bars_table(
    reports: list[dict], method: str = "memlong", ceiling: tuple[str, int] = ("base_full", 4096)
) -> str:
    """RULER per task against the two bars a long-context method has to clear at each longer length:
    the base model's own score with full attention within its window (``ceiling``: method, length),
    times 0.9, and rag's score at the same length. Each cell is a score with its 95% interval; the
    verdict says which bar ``method`` misses and by how much (point estimates), or "meets both";
    "-" where a cell has not been measured."""
    from memlong.data.ruler import RULER_TASKS

    cells: dict[tuple[str, int, str], dict] = {}
    for data in reports:
        for r in data["results"]:
            if r["task"] in RULER_TASKS and r.get("score") is not None:
                cells[(r["task"], r["length"], r["method"])] = r
    lengths = sorted({L for _, L, m in cells if m == method and L > ceiling[1]})
    if not lengths:
        return ""
    name = f"{ceiling[0]} {ceiling[1] // 1024}k"
    head = [f"{name} (ceiling)"]
    for L in lengths:
        head += [f"rag {L // 1024}k", f"{method} {L // 1024}k", f"{method} {L // 1024}k against the bars"]
    out = [
        "| task | " + " | ".join(head) + " |",
        "|---|---:|" + "---:|---:|---|" * len(lengths),  # per length: rag, method, verdict
    ]
    for task in RULER_TASKS:
        top = cells.get((task, ceiling[1], ceiling[0]))
        if top is None and not any((task, L, method) in cells for L in lengths):
            continue
        row = [_interval_cell(top) if top else "-"]
        for L in lengths:
            rag, ours = cells.get((task, L, "rag")), cells.get((task, L, method))
            row += [_interval_cell(rag) if rag else "-", _interval_cell(ours) if ours else "-"]
            if ours is None or rag is None or top is None:
                row.append("-")
                continue
            missed = []
            if ours["score"] < rag["score"]:
                missed.append(f"below rag by {rag['score'] - ours['score']:.2f}")
            if ours["score"] < 0.9 * top["score"]:
                missed.append(f"below 0.9x the ceiling by {0.9 * top['score'] - ours['score']:.2f}")
            row.append("; ".join(missed) or "meets both")
        out.append(f"| {task} | " + " | ".join(row) + " |")
    return "\n".join(out)


def mean_score(results: list[dict], length: int, method: str, key: str = "score") -> str:
    """The plain mean of ``key`` over a length and method's measured rows."""
    vals = [r[key] for r in results if (r["length"], r["method"]) == (length, method) and r.get(key) is not None]
    return f"{sum(vals) / len(vals):.2f}" if vals else "-"


def base_ppl_markdown(runs: list[tuple[dict, str | Path]]) -> str:
    """The base model with full attention, perplexity by length, from every ppl report of ``runs``
    (their ``base_full`` rows), each run's command named."""
    rows = [r for report, _ in runs for r in report["results"] if r["method"] == "base_full"]
    out = [
        "| length | ppl of the last tokens (base, full attention) | tokens scored | documents |",
        "|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["length"]):
        out.append(f"| {r['length']:,} | {cell(r, 'ppl', '{:.3f}')} | {r['tokens_scored']:,} | {r['documents']} |")
    commands = "; ".join(f"`{eval_command(report['config'], path)}`" for report, path in runs)
    return "\n".join(out + ["", f"From {commands}."])


def headline_table(reports: list[dict]) -> str:
    """One row per method, one column per measurement, from eval reports: ppl (of the last
    ``--score`` tokens) by length, passkey accuracy (mean over depths) by length, RULER's mean by
    length, ICL accuracy by task, the facts a `memlong demo` report's methods answered, and where
    the runs recorded it, each method's cost (bytes kept per context token, prompt tokens per
    second of reading and answering) at its longest length. A later report's cell replaces an
    earlier one's in the same column. Rows: our methods in a fixed order, another label the reports
    use (a variant's, "memlong, ...") right after the method it starts with, else last."""
    cols: dict[str, dict[str, str]] = {}  # column -> method -> cell
    cost: dict[str, list[tuple[int, float, float]]] = {}  # method -> (length, bytes/token, tokens/s)
    for data in reports:
        if "facts" in data and "answered" in data:  # a `memlong demo` report: facts answered by each method
            for key, (method, _) in DEMO_ANSWERS.items():
                if key in data["answered"]:
                    cols.setdefault("demo facts", {})[method] = f"{data['answered'][key]} of {len(data['facts'])}"
            continue
        task, res = data["config"]["task"], data["results"]
        for r in res:
            if task == "ppl":  # the note's first word where not measured: "skipped", "failed"
                col, value = f"ppl {r['length'] // 1024}k", cell(r, "ppl", "{:.3f}").split(":")[0]
            elif task == "ruler" and "ruler_means" in data:  # RULER's mean over its tasks, with its interval
                col = f"RULER {r['length'] // 1024}k"
                key = (r["length"], r["method"])
                value = ruler_mean(next((m for m in data["ruler_means"] if (m["length"], m["method"]) == key), None))
            elif task in ("passkey", "ruler"):
                key = "accuracy" if task == "passkey" else "score"
                col, value = f"{task} {r['length'] // 1024}k", mean_score(res, r["length"], r["method"], key)
            else:  # icl
                col, value = f"icl {r['task']} ({r['shots_memory']} in memory)", cell(r, "accuracy")
            cols.setdefault(col, {})[r["method"]] = value
            costed = r.get("bytes_per_token") is not None and r.get("tokens_per_second") is not None
            if costed and r.get("length") is not None:  # (icl rows have no length: the cost comes from the others)
                cost.setdefault(r["method"], []).append((r["length"], r["bytes_per_token"], r["tokens_per_second"]))
    for m, rows in cost.items():  # each method's cost, from its longest measured length
        L, bpt, tps = max(rows, key=lambda x: (x[0], x[2]))
        cols.setdefault("bytes kept per token", {})[m] = f"{bpt:,.0f}"
        cols.setdefault("prompt tokens/s (read + answer)", {})[m] = f"{tps:,.0f} at {L // 1024}k"
    known = ("memlong", "memlong_no_memory", "rag", "base_full", "base_truncated")
    seen = dict.fromkeys(m for c in cols.values() for m in c)
    methods = []
    for m in [k for k in known if k in seen]:  # a variant's label (e.g. "memlong, ...") right after its method
        methods += [m] + [o for o in seen if o not in known and o.startswith(m) and o not in methods]
    methods += [o for o in seen if o not in methods]
    out = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in methods:
        out.append(f"| {m} | " + " | ".join(c.get(m, "not run") for c in cols.values()) + " |")
    return "\n".join(out)


# --- memlong bench --------------------------------------------------------------------------------


def _machine(data: dict, path: str | Path) -> str:
    m = data["machine"]
    return (
        f"measured by `{data['command']}` on {m['cpu_count']} CPU cores ({m['platform']}, torch {m['torch']}); "
        f"JSON: `{path}`"
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


def ingest_markdown(data: dict, path: str | Path, root: str | Path = ".") -> str:
    """`memlong bench ingest`: tokens/s, peak RSS and state by input length and method, MemLong's
    speed against the cost floor (``base_windows``), the model, and the plot beside the JSON
    (``X.png``) when there is one."""
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
        for method in dict.fromkeys(r["method"] for r in data["results"]):
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
    plot = Path(path).with_suffix(".png")
    if (Path(root) / plot).exists():
        out += ["", f"![tokens/s and peak RSS against tokens]({_link(plot, path)})"]
    return "\n".join(out)


def _allocator(r: dict) -> str:
    t = r.get("malloc_mmap_threshold", 0)
    return f"`MALLOC_MMAP_THRESHOLD_={t}`" if t else "glibc default"


def million_markdown(runs: list[tuple[dict, str | Path]], capacity_note: str | None = None) -> str:
    """Long reads by MemLong (`memlong bench ingest --methods memlong` reports, e.g. the same read
    with another allocator setting) in one table: memory beside the bank, bytes per token, and the
    load that shared the CPU. ``capacity_note``: what the table says of the bank's capacity
    (default: it holds every chunk)."""
    longest = max(r["tokens"] for d, _ in runs for r in d["results"])
    out = [
        f"MemLong reading up to {longest:,} tokens of the stdlib's sources (the model: below the table):",
        "",
        *[f"- {_machine(d, p)}" for d, p in runs],
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
    for data, _ in runs:
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


def search_markdown(runs: list[tuple[dict, str | Path]]) -> str:
    """`memlong bench search` reports (exact against approximate search), their commands, then one
    table of every run's rows."""
    out = [f"- `{data['command']}` ({path})" for data, path in runs]
    out += ["", "| vectors | chunks | index | query (ms) | recall@k | build (s) |", "|---|---:|---|---:|---:|---:|"]
    for data, _ in runs:
        for r in data["results"]:
            out.append(
                f"| {r.get('vectors', 'random')} | {r['chunks']:,} | {r['index']} | {r['query_ms']:.3f} | "
                f"{r['recall_at_k']:.3f} | {r['build_s']:.2f} |"
            )
    return "\n".join(out)


def retriever_markdown(data: dict, path: str | Path) -> str:
    """`memlong bench retriever`: each retriever's cost and its quality against MiniLM."""
    m = data["machine"]
    out = [
        f"Retriever cost and quality, measured by `{data['command']}` on {m['cpu_count']} CPU cores; JSON: "
        f"`{path}`. Recall@k: share of MiniLM's top-k among the retriever's top-k (each chunk "
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


# --- scripts/soak_ask.py -------------------------------------------------------------------------


def soak_markdown(r: dict, json_path: str | Path, note: str | None = None) -> str:
    """A `scripts/soak_ask.py` report: each `memlong ask` call on the long input, its time, memory and answer."""
    lines = [
        f"`memlong ask` on {r['input']['tokens']:,} tokens of held-out text (the corpus's test split), a fact planted "
        f"at {r['input']['depth']:.0%} of it and asked at the end; measured by `{r['command']}`; JSON: `{json_path}`.",
        "",
        *([note, ""] if note else []),
        "| call | question | seconds | tokens/s read | peak RssAnon (MiB) | RssAnon at 1/4, 1/2, 3/4, end of reading "
        "(MiB) | peak VmRSS (MiB) | answer | correct |",
        "|---|---|---:|---:|---:|---|---:|---|---|",
    ]
    for c in r["calls"]:
        anon = (c["rss_anon_while_reading"] or {}).get("at_quarters", {})
        quarters = ", ".join("-" if v is None else f"{v / MIB:,.0f}" for v in anon.values()) or "(loaded, not read)"
        tps = "-" if c["reused"] or c.get("tokens_per_s") is None else f"{c['tokens_per_s']:,.0f}"
        lines.append(
            f"| {c['name']} | {c['question']} | {c['seconds']:,.0f} | {tps} | {c['peak_rss_anon_bytes'] / MIB:,.0f} | "
            f"{quarters} | {c['peak_rss_bytes'] / MIB:,.0f} | {c['answer']!r} | {c['correct']} |"
        )
    lines += [
        "",
        f"Bank: {r['bank']}; saved memory on disk: {r['memory_bytes'] / 2**30:,.1f} GiB; evicted chunks: "
        f"{r['calls'][0]['evicted_chunks']}. RssAnon is the process's own memory (the model, the window, the bank's "
        "index and records); VmRSS also counts the pages of memory-mapped files the process touched (RssFile: the "
        "bank's, and a saved bank's file while it loads), which the kernel writes back and reclaims as it needs.",
    ]
    return "\n".join(lines) + "\n"


# --- memlong demo ---------------------------------------------------------------------------------


#: a `memlong demo` report's answers (its keys) -> (the method, as the headline names it; its column in the demo's table)
DEMO_ANSWERS = {
    "memory": ("memlong", "with memory"),
    "no_memory": ("memlong_no_memory", "without memory"),
    "rag": ("rag", "rag"),
    "base_truncated": ("base_truncated", "base_truncated"),
}


def demo_markdown(d: dict, path: str | Path, note: str | None = None) -> str:
    """`memlong demo`: facts asked with memory, without, and of the baselines it ran (rag, the base
    model on the document's last tokens), ppl, speed."""
    doc = d["document"]
    asked = [k for k in DEMO_ANSWERS if all(k in f for f in d["facts"])]  # rag, base_truncated: since they ran
    parts = " + ".join(f"{p['doc_id']} ({p['tokens']:,})" for p in doc["parts"])
    flags = set_flags(d.get("model", {}).get("overrides"))
    out = [
        f"`memlong demo{flags} --json {path}` on {doc['tokens']:,} tokens of held-out text ({parts}), "
        f"{d['torch_threads']} thread(s), load average {d['load_average_at_start']} at the start:",
        "",
        *([note, ""] if note else []),
        "| fact (depth) | expected | fact's chunk retrieved | " + " | ".join(DEMO_ANSWERS[k][1] for k in asked) + " |",
        "|---|---|---|" + "---|" * len(asked),
    ]
    for f in d["facts"]:
        hit = "yes" if any(r.get("has_fact") for r in f["memory"]["retrieved"]) else "no"
        ans = [("right" if f[k]["correct"] else "wrong") + f": {f[k]['answer'][:40]!r}" for k in asked]
        out.append(f"| {f['question']} ({f['depth']:.0%}) | {f['expected']} | {hit} | " + " | ".join(ans) + " |")
    ppl, rd, bank = d["ppl"], d["reading"], d["bank"]
    out += [
        "",
        "| measure | with memory | without memory |",
        "|---|---:|---:|",
        f"| ppl of the last {ppl['tokens_scored']:,} tokens | {ppl['with_memory']:.3f} | {ppl['without_memory']:.3f} |",
        f"| reading speed (tokens/s) | {rd['memory']['tokens_per_s']:.0f} | {rd['no_memory']['tokens_per_s']:.0f} |",
        f"| peak RSS after reading (MiB) | {rd['memory']['peak_rss_bytes_after_read'] / MIB:,.0f} | "
        f"{rd['no_memory']['peak_rss_bytes_after_read'] / MIB:,.0f} |",
        f"| bank | {bank['chunks']} chunks, {bank['bytes'] / MIB:,.0f} MiB, {bank['kv_bytes_per_token']:,} bytes/token of K/V | - |",
    ]
    return "\n".join(out)


def load(path: str | Path) -> dict:
    """A report from its JSON file."""
    return json.loads(Path(path).read_text())
