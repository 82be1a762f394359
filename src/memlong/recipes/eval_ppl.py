"""`memlong eval ppl`: perplexity by input length (the paper's protocol, section 4.2, Table 1).

For each test document and each length L, the first L tokens form a window; only its last
``--score`` tokens (2048 by default; all of them when L is shorter) are scored, the prefix goes
to memory. With ``--same-text``, every length scores the same tokens instead: each document is
cut at its first ``max(--lengths)`` tokens and the window of length L is the last L tokens of
that cut, so a longer window adds context before the same scored text (documents shorter than
the longest length are left out). Methods, side by side in one run:

* ``memlong``: the MemLong model with memory (fresh for every window);
* ``memlong_no_memory``: the same model and local window with retrieval off;
* ``base_full``: the base model over the whole window (where it fits: a failure or
  out-of-memory is reported as such, never a number);
* ``base_truncated``: the base model over the last ``max_position_embeddings`` tokens only.

    memlong eval ppl --model PATH --data PATH_OR_NAME --lengths 4096,16384 --json OUT.json


``--data`` may also be a single text file (one document).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator

from memlong.recipes.eval_common import DATA_HELP, Skip, measured, run_by_length

#: perplexity scores text, it asks no question: no ``rag`` (which retrieves with a question)
METHODS = ("memlong", "memlong_no_memory", "base_full", "base_truncated")

DEFAULT_LENGTHS = "1024,2048,4096,8192,16384,32768"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``memlong eval ppl`` beside the shared ones (:mod:`memlong.recipes.eval`)."""
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--score", type=int, default=2048, help="score the last N tokens of each window")
    p.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="copy probe: each window ends with a copy of its own first N tokens and only the copy is "
        "scored: with memory the copy's source is retrievable, without it (and for the base "
        "truncated to its window) it is out of reach; base_full sees both copies. Measures whether "
        "a model can use what it reads, apart from how often real text repeats itself",
    )
    p.add_argument(
        "--same-text",
        action="store_true",
        help="score the same text at every length: the window of length L is the last L of each "
        "document's first max(--lengths) tokens, so longer windows only add context before it "
        "(the default: the first L tokens, scoring different text at each length)",
    )
    p.add_argument("--max-documents", type=int, default=8, help="documents per length (the longest first)")


def run(args, methods: list[str]) -> int:
    if args.same_text and args.repeat:
        raise SystemExit(
            "--same-text and --repeat cannot be combined: the copy probe scores a copy of each "
            "window's own start, which differs by length"
        )
    return run_by_length(args, methods, DEFAULT_LENGTHS, _run_ppl, plot, _cell, SAME_WINDOWS)


#: the flags that decide the windows and the scored tokens: a resumed run must share them
SAME_WINDOWS = (
    "lengths",
    "score",
    "repeat",
    "same_text",
    "max_documents",
    "data",
    "split",
    "model",
    "overrides",
    "retriever",
)


def _cell(row: dict) -> tuple:
    return row["method"], row["length"]


def length_windows(
    docs: list[list[int]], L: int, lengths: list[int], max_documents: int, same_text: bool = False
) -> list[list[int]]:
    """The windows of length ``L`` of ``docs`` (token lists, longest first), at most ``max_documents``:
    each document's first ``L`` tokens; with ``same_text``, the last ``L`` of its first
    ``max(lengths)`` tokens (only documents that long), so every length ends on the same tokens."""
    if same_text:
        end = max(lengths)
        return [d[end - L : end] for d in docs if len(d) >= end][:max_documents]
    return [d[:L] for d in docs if len(d) >= L][:max_documents]


def _nll_plain(model, ids, score: int) -> tuple[float, int]:
    """Stock forward over ``ids`` ``[1, L]``; NLL of the last ``score`` tokens."""
    import torch

    L = ids.shape[1]
    n = min(score, L - 1)
    with torch.no_grad():
        logits = model(ids, logits_to_keep=n + 1, use_cache=False).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits[0], ids[0, L - n :], reduction="sum")
    return float(nll), n


def _run_ppl(args, tok, model, base, base_window, lengths, methods, have=frozenset()) -> Iterator[dict]:
    import torch

    from memlong.evaluation import window_nll
    from memlong.training import document_texts

    docs = []
    for text in document_texts(args.data, args.split)():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= min(lengths):
            docs.append(ids)
    docs.sort(key=len, reverse=True)
    score = min(args.score, args.repeat) if args.repeat else args.score
    for L in lengths:
        windows = [torch.tensor(w) for w in length_windows(docs, L, lengths, args.max_documents, args.same_text)]
        if args.repeat:  # copy probe: the window ends with a copy of its own first `repeat` tokens
            if not 0 < args.repeat < L:
                raise SystemExit(f"--repeat must be in (0, length); got {args.repeat} for length {L}")
            windows = [torch.cat([w[: L - args.repeat], w[: args.repeat]]) for w in windows]
        for method in methods:
            row = {"method": method, "length": L, "documents": len(windows)}
            if _cell(row) in have:
                continue
            if not windows:
                row.update(
                    ppl=None, tokens_scored=0, note=f"no document has {max(lengths) if args.same_text else L} tokens"
                )
                print(_fmt(row), flush=True)
                yield row
                continue
            with measured(row, "ppl", tokens_scored=0):
                if method in ("memlong", "memlong_no_memory"):
                    s, n = window_nll(model, windows, score, use_memory=method == "memlong")
                elif method == "base_full" and L > args.max_base_length:
                    raise Skip(f"not attempted above --max-base-length={args.max_base_length}")
                else:
                    s = n = 0
                    for w in windows:
                        ids = w[None]
                        if method == "base_truncated":
                            ids = ids[:, -base_window:]
                        a, b = _nll_plain(base, ids, score)
                        s, n = s + a, n + b
                row.update(ppl=round(math.exp(s / n), 4), tokens_scored=n)
            print(_fmt(row), flush=True)
            yield row


def _fmt(r: dict) -> str:
    ppl = f"{r['ppl']:10.3f}" if r.get("ppl") is not None else f"{'-':>10}"
    return f"{r['method']:>18} L={r['length']:>6}  ppl {ppl}  tokens {r['tokens_scored']:>7}  docs {r['documents']}  {r.get('note', '')}"


def plot(results: list[dict], path: str) -> None:
    from memlong.plotting import figure

    with figure(path, "input length (tokens)", "perplexity of the last tokens") as ax:
        for method in METHODS:
            pts = [(r["length"], r["ppl"]) for r in results if r["method"] == method and r.get("ppl") is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
