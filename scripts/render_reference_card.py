"""Writes the reference MemLong model's card from the files its commands produced.

    python scripts/render_reference_card.py --run runs/memlong-ref \
        --eval docs/results/reference_ppl_validation.json --eval docs/results/reference_ppl_test.json \
        --out src/memlong/pretrained/memlong/README.md

Every number in the card comes from the training run (args.json, log.csv) or an eval JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
from pathlib import Path

from render_readme import results_section  # scripts/ is on sys.path when run as a script


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True)
    p.add_argument("--eval", action="append", default=[], help="memlong eval ppl/passkey JSON (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--command", default=None, help="the exact training command (default: rebuilt from args.json)")
    a = p.parse_args()
    run = Path(a.run)
    args = json.loads((run / "args.json").read_text())
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    cfg = json.loads((run / "final" / "memlong_config.json").read_text())
    cmd = a.command or "memlong train " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in args.items()
        if v not in (None, False) and k not in ("worker",) and not isinstance(v, bool)
    )
    out = [
        "# memlong reference model",
        "",
        "MemLong adaptation (the paper's stage 2) of the shipped base model `../base`: the embeddings, the LM head "
        f"and layers 1-{cfg['memory_layer']} are frozen; layers {cfg['memory_layer'] + 1}-"
        f"{max(cfg['retrieval_layers'])} and the gates were trained. This directory holds only what was trained "
        "(`memlong_trained.safetensors`, `memlong_gates.safetensors`), the MemLong config and the tokenizer; "
        "`memlong.from_pretrained` puts it on top of `../base`.",
        "",
        "```python",
        "import memlong",
        "from memlong.pretrained import load_reference_model",
        "model, tokenizer = load_reference_model()   # offline, one call",
        "```",
        "",
        "## Training",
        "",
        f"- command: `{cmd}`",
        f"- steps: {last['step']}, tokens: {int(last['tokens']):,}, wall time: {float(last['seconds']) / 60:.1f} min",
        f"- hardware: {os.cpu_count()} CPU cores ({platform.machine()}), torch threads: {args.get('threads') or 'default'}",
        f"- data: `{args['data']}` (train split; documents of at least {args.get('min_doc_tokens') or 2 * cfg['local_window']} "
        f"tokens), synthetic passkey rate {args.get('passkey_rate', 0)}, synthetic recall rate "
        f"{args.get('recall_rate', 0)} (copies of {args.get('recall_span')}-token passages of the document from "
        "beyond the local window)",
        f"- MemLong config: memory layer {cfg['memory_layer']}, retrieval layers {cfg['retrieval_layers']}, chunk "
        f"{cfg['chunk_size']}, top-k {cfg['top_k']}, local window {cfg['local_window']}, capacity "
        f"{cfg['memory_capacity']} tokens, retrieval query {cfg['retrieval_query']}, retrieval offsets "
        f"{cfg.get('retrieval_offsets', [0])}, retriever `{args['retriever']}`",
        f"- final training loss {float(last['loss']):.3f}; loss curve: `loss.png`",
        "",
        "## Evaluation",
        "",
    ]
    out += [results_section([Path(path) for path in a.eval]), ""]  # the README's tables, one renderer
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(out) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
