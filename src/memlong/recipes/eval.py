"""`memlong eval ppl`: perplexity by input length (the paper's protocol, section 4.2, Table 1).

For each test document and each length L, the first L tokens form a window; only its last
``--score`` tokens (2048 by default; all of them when L is shorter) are scored, the prefix goes
to memory. Methods, side by side in one run:

* ``memlong``: the MemLong model with memory (fresh for every window);
* ``memlong_no_memory``: the same model and local window with retrieval off;
* ``base_full``: the base model over the whole window (where it fits: a failure or
  out-of-memory is reported as such, never a number);
* ``base_truncated``: the base model over the last ``max_position_embeddings`` tokens only.

    memlong eval ppl --model PATH --data PATH_OR_NAME --lengths 4096,16384 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

METHODS = ("memlong", "memlong_no_memory", "base_full", "base_truncated")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=["ppl"], help="what to evaluate")
    p.add_argument("--model", required=True, help="a MemLong directory (memlong train / save_pretrained) or a base LM")
    p.add_argument("--base-model", default=None, help="base LM for the base_* methods (default: the model's base)")
    p.add_argument("--data", required=True,
                   help="a corpus folder (test split), a .jsonl file, a folder of .txt files, or a datasets name")
    p.add_argument("--split", default="test")
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--score", type=int, default=2048, help="score the last N tokens of each window")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--max-documents", type=int, default=8, help="documents per length (the longest first)")
    p.add_argument("--max-base-length", type=int, default=16384,
                   help="base_full is not attempted above this length (reported as skipped)")
    p.add_argument("--retriever", default="minilm", help="minilm, hashing, or a sentence-transformers name/path")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="write a PNG of ppl against length")


def _nll_plain(model, ids, score: int) -> tuple[float, int]:
    """Stock forward over ``ids`` ``[1, L]``; NLL of the last ``score`` tokens."""
    import torch

    L = ids.shape[1]
    n = min(score, L - 1)
    with torch.no_grad():
        logits = model(ids, logits_to_keep=n + 1, use_cache=False).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits[0], ids[0, L - n :], reduction="sum")
    return float(nll), n


def run(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import memlong
    from memlong.evaluation import window_nll
    from memlong.modeling import BASE_NAME
    from memlong.retriever import HashingRetriever, SentenceTransformerRetriever
    from memlong.training import document_texts

    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = sorted(int(x) for x in args.lengths.split(",") if x)
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad or not lengths or min(lengths) < 2:
        raise SystemExit(f"--methods must be among {METHODS} and --lengths positive integers; got {bad or args.lengths}")
    model_dir = Path(args.model)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.model_max_length = 10**9
    retriever = (HashingRetriever() if args.retriever == "hashing"
                 else SentenceTransformerRetriever(tok, None if args.retriever == "minilm" else args.retriever))
    model = memlong.from_pretrained(args.model, retriever=retriever, tokenizer=tok, dtype=torch.float32).eval()
    base_path = args.base_model
    if base_path is None and (model_dir / BASE_NAME).is_file():
        info = json.loads((model_dir / BASE_NAME).read_text())
        base_path = str((model_dir / info["base_model"]).resolve()) if info.get("local") else info["base_model"]
    base = AutoModelForCausalLM.from_pretrained(base_path or args.model, dtype=torch.float32).eval()
    base_window = int(getattr(base.config, "max_position_embeddings", 2048))

    docs = []
    for text in document_texts(args.data, args.split)():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= min(lengths):
            docs.append(ids)
    docs.sort(key=len, reverse=True)
    results = []
    for L in lengths:
        windows = [torch.tensor(d[:L]) for d in docs if len(d) >= L][: args.max_documents]
        for method in methods:
            row = {"method": method, "length": L, "documents": len(windows)}
            if not windows:
                row.update(ppl=None, tokens_scored=0, note=f"no document has {L} tokens")
                results.append(row)
                print(_fmt(row), flush=True)
                continue
            t0 = time.perf_counter()
            try:
                if method in ("memlong", "memlong_no_memory"):
                    s, n = window_nll(model, windows, args.score, use_memory=method == "memlong")
                elif method == "base_full" and L > args.max_base_length:
                    raise _Skip(f"not attempted above --max-base-length={args.max_base_length}")
                else:
                    s = n = 0
                    for w in windows:
                        ids = w[None]
                        if method == "base_truncated":
                            ids = ids[:, -base_window:]
                        a, b = _nll_plain(base, ids, args.score)
                        s, n = s + a, n + b
                row.update(ppl=round(math.exp(s / n), 4), tokens_scored=n)
            except _Skip as e:
                row.update(ppl=None, tokens_scored=0, note=f"skipped: {e}")
            except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
                row.update(ppl=None, tokens_scored=0, note=f"failed: {type(e).__name__}: {str(e)[:200]}")
            row["seconds"] = round(time.perf_counter() - t0, 2)
            results.append(row)
            print(_fmt(row), flush=True)
    report = {"results": results, "config": {**vars(args), "memlong": model.memlong_config.to_dict(),
                                             "base_model": base_path or args.model, "base_window": base_window,
                                             "retriever": retriever.describe()}}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        _plot(results, args.plot)
    return 0


class _Skip(Exception):
    pass


def _fmt(r: dict) -> str:
    ppl = f"{r['ppl']:10.3f}" if r.get("ppl") is not None else f"{'-':>10}"
    return f"{r['method']:>18} L={r['length']:>6}  ppl {ppl}  tokens {r['tokens_scored']:>7}  docs {r['documents']}  {r.get('note', '')}"


def _plot(results: list[dict], path: str) -> None:
    from memlong.plotting import figure

    with figure(path, "input length (tokens)", "perplexity of the last tokens") as ax:
        for method in METHODS:
            pts = [(r["length"], r["ppl"]) for r in results if r["method"] == method and r.get("ppl") is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
