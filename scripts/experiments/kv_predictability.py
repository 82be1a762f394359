"""How far MemLong mode's upper layers are from reading the memory layer's keys and values as their own.

In MemLong mode (the paper's) a retrieval layer r attends with its own queries to the keys and values
that the memory layer m banked; untrained, they are another layer's, in another space. This measures
the distance on the default base model: for each memory layer m and upper layer r, the share of the
variance of layer r's keys and values (k_proj and v_proj outputs, before RoPE) that a linear map of
layer m's keys and values explains (ridge regression, fitted on 70% of the tokens of held-out manual
pages, R^2 on the other 30%). R^2 near 1: a fixed linear map would let layer r read layer m's memory
almost as its own; near 0: adaptation has to learn it from text.

    python scripts/experiments/kv_predictability.py --data runs/corpus --tokens 6144 \\
        --json docs/results/default_kv_predictability.json

The forward hooks are torch's public ``register_forward_hook`` on the model's projections.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/corpus", help="a corpus folder from `memlong data`")
    p.add_argument("--split", default="validation")
    p.add_argument("--source", default="man", help="the documents' source in the corpus (man: prose)")
    p.add_argument("--tokens", type=int, default=6144)
    p.add_argument("--memory-layers", default="8,12,17,19,22", help="1-based")
    p.add_argument("--ridge", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)

    import torch

    from memlong.pretrained import load_default_base_model

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load_default_base_model(dtype=torch.float32)
    lines = (Path(args.data) / f"{args.split}.jsonl").read_text().splitlines()
    texts = [d["text"] for d in map(json.loads, lines) if d.get("source") == args.source]
    ids = tok("\n\n".join(texts), return_tensors="pt")["input_ids"][:, : args.tokens]
    window = 1024
    got: dict[tuple[str, int], list] = {}

    def keep(kind, i):
        return lambda module, inputs, out: got.setdefault((kind, i), []).append(out.detach()[0])

    layers = model.model.layers
    hooks = [
        getattr(layer.self_attn, f"{k}_proj").register_forward_hook(keep(k, i))
        for i, layer in enumerate(layers)
        for k in "kv"
    ]
    with torch.no_grad():
        for s in range(0, ids.shape[1], window):  # the model's window at a time, as memory is written
            model(ids[:, s : s + window])
    for h in hooks:
        h.remove()
    kv = {i: torch.cat([torch.cat(got[("k", i)]), torch.cat(got[("v", i)])], -1) for i in range(len(layers))}
    n, width = kv[0].shape
    half = width // 2
    fit = int(0.7 * n)

    def r2(m: int, r: int) -> tuple[float, float]:
        x = torch.cat([kv[m], torch.ones(n, 1)], 1)
        a, b = x[:fit], kv[r][:fit]
        w = torch.linalg.solve(a.T @ a + args.ridge * torch.eye(a.shape[1]), a.T @ b)
        pred, true = x[fit:] @ w, kv[r][fit:]
        res, tot = ((pred - true) ** 2).sum(0), ((true - true.mean(0)) ** 2).sum(0)
        return round(1 - (res[:half].sum() / tot[:half].sum()).item(), 3), round(
            1 - (res[half:].sum() / tot[half:].sum()).item(), 3
        )

    results = []
    for m in (int(x) for x in args.memory_layers.split(",")):
        for r in range(m + 1, len(layers) + 1):
            k, v = r2(m - 1, r - 1)
            results.append({"memory_layer": m, "layer": r, "keys_r2": k, "values_r2": v})
    report = {
        "results": results,
        "config": {**vars(args), "tokens_read": int(ids.shape[1]), "seconds": round(time.perf_counter() - t0, 1)},
        "command": "python scripts/experiments/kv_predictability.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
