"""Rewrites the README's generated sections from the JSON the benchmark commands wrote.

    python scripts/render_readme.py            # after: memlong bench ingest --json docs/results/bench_ingest.json

Figures are never typed by hand: every number between the markers comes from the JSON.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_section(path: Path) -> str:
    data = json.loads(path.read_text())
    rows = {(r["method"], r["tokens"]): r for r in data["results"]}
    sizes = sorted({r["tokens"] for r in data["results"]})
    m = data["machine"]
    out = [
        f"Ingestion of real text (Python stdlib sources), measured by `{data['command']}` "
        f"on {m['cpu_count']} CPU cores ({m['platform']}, torch {m['torch']}); JSON: `{path.relative_to(ROOT)}`. "
        "Small Llama with random weights (speed does not depend on them); `base_windows` is the same model's "
        "plain forward over consecutive windows of the same length, without memory.",
        "",
        "| tokens | method | tokens/s | peak RSS (MiB) | bank (MiB) | bank chunks | MemLong time split (s) |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for n in sizes:
        for method in ("memlong", "base_windows"):
            r = rows.get((method, n))
            if r is None:
                continue
            if "error" in r:
                out.append(f"| {n:,} | {method} | failed: {r['error']} | | | | |")
                continue
            split = ", ".join(f"{k} {v:.1f}" for k, v in r.get("time_split_s", {}).items())
            out.append(
                f"| {n:,} | {method} | {r['tokens_per_s']:,.0f} | {r['peak_rss_bytes'] / 2**20:,.0f} | "
                f"{r['bank_bytes'] / 2**20:,.1f} | {r.get('bank_chunks', '')} | {split} |"
            )
    example = next((r for r in data["results"] if r.get("method") == "memlong" and "params" in r), None)
    if example:
        c = example["config"]
        out += ["", f"Model: {example['params'] / 1e6:.1f}M parameters, {example['threads']} torch thread(s); "
                f"MemLong: chunk {c['chunk_size']}, window {c['local_window']}, top-k {c['top_k']}, "
                f"capacity {c['memory_capacity']} tokens, memory layer {c['memory_layer']}, "
                f"retrieval layers {c['retrieval_layers']}; retriever {example['retriever']['class']}."]
    return "\n".join(out)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    bench = ROOT / "docs" / "results" / "bench_ingest.json"
    if not bench.exists():
        print(f"{bench} not found: run `memlong bench ingest --json {bench}` first", file=sys.stderr)
        return 1
    new = re.sub(r"(<!-- bench:start -->\n).*?(\n<!-- bench:end -->)",
                 lambda mt: mt.group(1) + bench_section(bench) + mt.group(2), text, flags=re.S)
    readme.write_text(new)
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
