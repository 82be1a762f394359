"""`memlong heads`: where a base model's copying heads are, to choose MemLong's memory layer and,
with ``--retrieval``, the KV heads a training_free bank keeps (``MemLongConfig.bank_heads``).

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

``--retrieval`` also runs the retrieval-head probe (:mod:`memlong.retrieval_heads`): a passkey in
real text (``--data``, default the Python standard library's sources), asked for and answered;
per KV head, the share of answer tokens its strongest attention copies from the needle (Wu et
al. 2024's retrieval score) and its attention mass on the needle; and the best KV heads as
``bank_heads`` (``--heads N``, or as many as ``--budget-bytes-per-token`` of K/V allows; default
an eighth of all KV heads):

    memlong heads --retrieval --data data/corpus --needles 2 --needle-length 2048 --json heads.json
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
    r = p.add_argument_group("retrieval heads (--retrieval)")
    r.add_argument("--retrieval", action="store_true", help="also score retrieval heads with a needle probe")
    r.add_argument(
        "--data",
        default=None,
        help="the haystack's text: a corpus folder (its --split), a .jsonl file, a text file, a folder of "
        ".txt files, or a datasets name (default: the Python standard library's sources)",
    )
    r.add_argument("--split", default="test", help="the split of --data")
    r.add_argument("--needles", type=int, default=2, help="probe sequences (needle depths spread evenly)")
    r.add_argument("--needle-length", type=int, default=2048, help="tokens per probe sequence")
    n = r.add_mutually_exclusive_group()
    n.add_argument("--heads", type=int, default=None, help="KV heads to suggest banking")
    n.add_argument(
        "--budget-bytes-per-token",
        type=int,
        default=None,
        help="suggest as many KV heads as this many bytes of K/V per token allows (see --bank-dtype)",
    )
    r.add_argument(
        "--bank-dtype",
        default="bfloat16",
        choices=["float32", "float16", "bfloat16", "int8", "float8_e4m3fn"],
        help="the bank's K/V dtype, for --budget-bytes-per-token (compressed dtypes also keep a float32 "
        "scale per head and token)",
    )


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
    if args.retrieval and (args.needles < 1 or args.needle_length < 64):
        raise SystemExit("--needles must be >= 1 and --needle-length >= 64")
    if (args.heads is not None and args.heads < 1) or (
        args.budget_bytes_per_token is not None and args.budget_bytes_per_token < 1
    ):
        raise SystemExit("--heads and --budget-bytes-per-token must be >= 1")
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
    retrieval = _retrieval_heads(args, model) if args.retrieval else None
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "previous_token": [[round(v, 4) for v in row] for row in prev.tolist()],
                    "induction": [[round(v, 4) for v in row] for row in ind.tolist()],
                    "suggestion": suggestion,
                    **({"retrieval": retrieval} if retrieval else {}),
                    "config": {
                        "model": given or "the default base model",
                        "length": args.length,
                        "rows": args.rows,
                        "pool": args.pool,
                        "seed": args.seed,
                        "token_counts": counts is not None,
                        "command": f"memlong heads{f' --model {given}' if given else ''} --length {args.length} --rows {args.rows} "
                        f"--pool {args.pool} --seed {args.seed}{_retrieval_flags(args)} --json {args.json}",
                    },
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


def _retrieval_flags(args) -> str:
    if not args.retrieval:
        return ""
    n = f" --heads {args.heads}" if args.heads is not None else ""
    if args.budget_bytes_per_token is not None:
        n = f" --budget-bytes-per-token {args.budget_bytes_per_token} --bank-dtype {args.bank_dtype}"
    data = f" --data {args.data} --split {args.split}" if args.data else ""
    return f" --retrieval{data} --needles {args.needles} --needle-length {args.needle_length}{n}"


def _retrieval_heads(args, model) -> dict:
    """Runs the retrieval-head probe (:mod:`memlong.retrieval_heads`), prints the best KV heads, and returns
    the per-(layer, KV head) table and the suggested ``bank_heads`` for the JSON."""
    import torch
    from transformers import AutoTokenizer

    from memlong.retrieval_heads import kv_head_bytes, needle_cases, retrieval_scores, top_heads

    cfg = model.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if args.data:
        from memlong.training import document_texts

        texts = document_texts(args.data, args.split)()
    else:
        from memlong.data.sources import stdlib_documents

        texts = (d.text for d in stdlib_documents())
    tok = AutoTokenizer.from_pretrained(args.model)
    try:
        cases = needle_cases(tok, texts, args.needles, args.needle_length, args.seed)
    except ValueError as e:
        raise SystemExit(f"--data: {e}") from e
    total = None
    for case in cases:
        s = retrieval_scores(model, case)
        total = s if total is None else total + s
    score, mass = total.per_kv_head(kv_heads)
    all_heads = score.numel()
    per_head = kv_head_bytes(head_dim, getattr(torch, args.bank_dtype))
    if args.heads is not None:
        n = args.heads
    elif args.budget_bytes_per_token is not None:
        n = args.budget_bytes_per_token // per_head
    else:
        n = max(1, all_heads // 8)
    n = min(n, all_heads)
    if n < 1:
        raise SystemExit(
            f"--budget-bytes-per-token {args.budget_bytes_per_token} keeps no KV head (each costs {per_head} bytes "
            f"per token in {args.bank_dtype}); raise it"
        )
    chosen = top_heads(score, mass, n)
    print(
        f"retrieval heads ({len(cases)} needles x {args.needle_length} tokens; the model predicted "
        f"{total.correct}/{total.tokens} answer tokens):"
    )
    print(f"{'layer':>5}  {'kv head':>7}  {'retrieval score':>15}  {'needle mass':>11}")
    for layer, h in sorted(chosen, key=lambda p: (-float(score[p[0] - 1, p[1]]), p)):
        print(f"{layer:>5}  {h:>7}  {float(score[layer - 1, h]):>15.2f}  {float(mass[layer - 1, h]):>11.2f}")
    pairs = [list(p) for p in chosen]
    print(
        f"suggested bank_heads ({n} of {all_heads} KV heads, {n * per_head} bytes of K/V per token in "
        f"{args.bank_dtype} instead of {all_heads * per_head}): --set 'bank_heads={json.dumps(pairs)}'"
    )
    return {
        "score": [[round(v, 4) for v in row] for row in score.tolist()],
        "needle_mass": [[round(v, 4) for v in row] for row in mass.tolist()],
        "answer_tokens": total.tokens,
        "answer_tokens_predicted": total.correct,
        "keys": [c.key for c in cases],
        "suggestion": {
            "bank_heads": pairs,
            "heads": n,
            "of_heads": all_heads,
            "kv_bytes_per_token": n * per_head,
            "kv_bytes_per_token_every_head": all_heads * per_head,
            "bank_dtype": args.bank_dtype,
            "set": f"bank_heads={json.dumps(pairs)}",
        },
    }
