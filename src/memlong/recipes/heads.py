"""`memlong heads`: where a base model's copying heads are, to choose MemLong's memory layer.

MemLong's upper layers can copy from retrieved chunks only if the memory layer's keys say which
token came before each position (as an induction head's keys do): a query "the current token is
x" then finds "the token before me was x" in memory, and the value there predicts the next token.
This verb measures, per layer and head, on random token sequences repeated once:

* previous-token score: attention from each position to the one before it;
* induction score: attention from each position of the repeat to the token after the earlier
  occurrence of the current token.

    memlong heads --json heads.json                  # the default base model
    memlong heads --model runs/base/final --json heads.json

It suggests the layer with the strongest induction head as the memory layer (retrieval layers:
the ones above it) when that score clears ``--min-score``; a base without one has little to copy
from memory with (``docs/HISTORY.md``: the small base trained here).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="causal LM name or path (default: the default base model, SmolLM2-135M-Instruct; "
        "$MEMLONG_BASE_MODEL replaces it)",
    )
    p.add_argument("--length", type=int, default=100, help="tokens per random sequence (repeated once)")
    p.add_argument("--rows", type=int, default=4, help="random sequences")
    p.add_argument(
        "--pool",
        type=int,
        default=2000,
        help="draw tokens from this many ids (the most frequent, when the model folder ships "
        "token_counts.json; else the first ids after the special tokens)",
    )
    p.add_argument("--min-score", type=float, default=0.3, help="weakest induction score worth suggesting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None, help="write the scores and the suggestion here")


def head_scores(model, input_ids, length: int):
    """``(previous, induction)``, each ``[layers, heads]``: mean attention of the repeat's
    positions to the previous position, and to the position after the earlier occurrence."""
    import torch

    with torch.no_grad():
        att = model(input_ids=input_ids, output_attentions=True).attentions
    q = torch.arange(length + 1, 2 * length)
    prev = torch.stack([a[:, :, q, q - 1].float().mean((0, 2)) for a in att])
    ind = torch.stack([a[:, :, q, q - length + 1].float().mean((0, 2)) for a in att])
    return prev, ind


def run(args) -> int:
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM

    from memlong.retriever import load_token_counts

    if args.length < 2 or args.rows < 1 or args.pool < 2:
        raise SystemExit("--length must be >= 2, --rows >= 1 and --pool >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    given = args.model
    if args.model is None:
        from memlong.pretrained import default_base_model_path

        args.model = str(default_base_model_path())
    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="eager", dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    counts = load_token_counts(args.model)
    if counts is not None:
        pool = torch.as_tensor(counts).argsort(descending=True)[: args.pool]
    else:
        pool = torch.arange(min(8, vocab - 2), vocab)[: args.pool]
    g = torch.Generator().manual_seed(args.seed)
    seq = pool[torch.randint(0, len(pool), (args.rows, args.length), generator=g)]
    prev, ind = head_scores(model, torch.cat([seq, seq], 1), args.length)

    best_layer = int(ind.max(1).values.argmax()) + 1
    best = float(ind.max())
    layers = model.config.num_hidden_layers
    suggestion = None
    if best >= args.min_score and best_layer < layers:
        suggestion = {"memory_layer": best_layer, "retrieval_layers": list(range(best_layer + 1, layers + 1))}
    print(f"{'layer':>5}  {'previous-token (max head)':>26}  {'induction (max head)':>21}")
    for i in range(layers):
        print(f"{i + 1:>5}  {prev[i].max():>26.2f}  {ind[i].max():>21.2f}")
    if suggestion:
        print(
            f"strongest induction head: layer {best_layer} ({best:.2f}); suggested MemLong layout: memory layer "
            f"{best_layer}, retrieval layers {suggestion['retrieval_layers']} "
            f"(memlong train --memory-layer {best_layer} --retrieval-layers "
            f"{','.join(map(str, suggestion['retrieval_layers']))})"
        )
    else:
        print(
            f"no induction head scores {args.min_score} or more below the last layer (best: layer {best_layer}, "
            f"{best:.2f}): this model barely copies from its context, so retrieved chunks will help it little"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "previous_token": [[round(v, 4) for v in row] for row in prev.tolist()],
                    "induction": [[round(v, 4) for v in row] for row in ind.tolist()],
                    "suggestion": suggestion,
                    "config": {
                        "model": given or "the default base model",
                        "length": args.length,
                        "rows": args.rows,
                        "pool": args.pool,
                        "seed": args.seed,
                        "token_counts": counts is not None,
                        "command": f"memlong heads{f' --model {given}' if given else ''} --length {args.length} --rows {args.rows} "
                        f"--pool {args.pool} --seed {args.seed} --json {args.json}",
                    },
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0
