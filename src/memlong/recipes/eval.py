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

`memlong eval passkey`: a passkey (random digits) is stated once inside a haystack of real text
(held-out documents) at a given depth and asked for at the end; accuracy is the exact match of
the greedily generated digits, over several trials per length and depth, for the same methods.

    memlong eval passkey --model PATH --data PATH --lengths 4096,65536 --depths 0.1,0.5,0.9 --trials 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path


METHODS = ("memlong", "memlong_no_memory", "base_full", "base_truncated")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=["ppl", "passkey"], help="what to evaluate")
    p.add_argument("--model", required=True, help="a MemLong directory (memlong train / save_pretrained) or a base LM")
    p.add_argument("--base-model", default=None, help="base LM for the base_* methods (default: the model's base)")
    p.add_argument("--data", required=True,
                   help="a corpus folder (test split), a .jsonl file, a folder of .txt files, or a datasets name")
    p.add_argument("--split", default="test")
    p.add_argument("--lengths", default=None,
                   help="comma-separated input lengths (default: ppl 1k..32k, passkey 4k..64k)")
    p.add_argument("--depths", default="0.1,0.5,0.9", help="passkey: where the key is stated (fraction)")
    p.add_argument("--trials", type=int, default=3, help="passkey: trials per length and depth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--score", type=int, default=2048, help="score the last N tokens of each window")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--max-documents", type=int, default=8, help="documents per length (the longest first)")
    p.add_argument("--max-base-length", type=int, default=16384,
                   help="base_full is not attempted above this length (reported as skipped)")
    p.add_argument("--retriever", default="minilm", help="minilm, hashing, or a sentence-transformers name/path")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                   help="override a reading-time MemLong config field, VALUE in JSON (repeatable), e.g. "
                        "--set bank_dtype=int8 --set retrieval_offsets=[0,1] --set top_k=8 (a bare word is a string)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="write a PNG (ppl against length; passkey heatmaps)")


def _nll_plain(model, ids, score: int) -> tuple[float, int]:
    """Stock forward over ``ids`` ``[1, L]``; NLL of the last ``score`` tokens."""
    import torch

    L = ids.shape[1]
    n = min(score, L - 1)
    with torch.no_grad():
        logits = model(ids, logits_to_keep=n + 1, use_cache=False).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits[0], ids[0, L - n :], reduction="sum")
    return float(nll), n


# fields whose value shapes the weights (gates, trained layers): not changeable at reading time
_WEIGHT_FIELDS = ("memory_layer", "retrieval_layers", "gate_mode", "gate_activation")


def reading_overrides(config, overrides: list[str]):
    """``config`` with ``FIELD=VALUE`` overrides (VALUE in JSON; a bare word is taken as a string)."""
    from memlong.config import MemLongConfigError

    changes = {}
    for item in overrides:
        field, sep, raw = item.partition("=")
        field = field.strip()
        if not sep or not hasattr(config, field):
            raise MemLongConfigError(f"--set {item!r}: expected FIELD=VALUE with FIELD a MemLongConfig field")
        if field in _WEIGHT_FIELDS:
            raise MemLongConfigError(f"--set {field}: the trained weights depend on it; it cannot change at reading time")
        try:
            changes[field] = json.loads(raw)
        except json.JSONDecodeError:
            changes[field] = raw
    return dataclasses.replace(config, **changes)


def _load(args):
    """(tokenizer, MemLong model, base model, base window, base path)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import memlong
    from memlong.modeling import BASE_NAME
    from memlong.retriever import retriever_from_name

    model_dir = Path(args.model)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.model_max_length = 10**9
    retriever = retriever_from_name(args.retriever, tok)
    model = memlong.from_pretrained(args.model, retriever=retriever, tokenizer=tok, dtype=torch.float32).eval()
    if args.overrides:
        model.memlong_config = reading_overrides(model.memlong_config, args.overrides)
    base_path = args.base_model
    if base_path is None and (model_dir / BASE_NAME).is_file():
        info = json.loads((model_dir / BASE_NAME).read_text())
        base_path = str((model_dir / info["base_model"]).resolve()) if info.get("local") else info["base_model"]
    base = AutoModelForCausalLM.from_pretrained(base_path or args.model, dtype=torch.float32).eval()
    return tok, model, base, int(getattr(base.config, "max_position_embeddings", 2048)), base_path or args.model


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    default = "1024,2048,4096,8192,16384,32768" if args.task == "ppl" else "4096,8192,16384,32768,65536"
    lengths = sorted(int(x) for x in (args.lengths or default).split(",") if x)
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad or not lengths or min(lengths) < 2:
        raise SystemExit(f"--methods must be among {METHODS} and --lengths positive integers; got {bad or args.lengths}")
    tok, model, base, base_window, base_path = _load(args)
    task = _run_ppl if args.task == "ppl" else _run_passkey
    results = task(args, tok, model, base, base_window, lengths, methods)
    report = {"results": results, "config": {**vars(args), "memlong": model.memlong_config.to_dict(),
                                             "base_model": base_path, "base_window": base_window,
                                             "retriever": model.memlong_retriever.describe()}}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        (_plot if args.task == "ppl" else _plot_passkey)(results, args.plot)
    return 0


def _run_ppl(args, tok, model, base, base_window, lengths, methods) -> list[dict]:
    import torch

    from memlong.evaluation import window_nll
    from memlong.training import document_texts

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
    return results


class _Skip(Exception):
    pass


def passkey_prompt(tok, pool: list[int], key: str, length: int, depth: float, offset: int = 0) -> list[int]:
    """``length`` tokens: haystack from ``pool`` (starting at ``offset``) with the passkey statement
    at ``depth`` of it, ending with the question whose answer is ``key``."""
    from memlong.training import PASSKEY_QUESTION, PASSKEY_STATEMENT

    question = PASSKEY_QUESTION.split("{key}")[0].rstrip()  # "What is the pass key? The pass key is"
    q_ids = tok("\n" + question, add_special_tokens=False)["input_ids"]
    s_ids = tok("\n" + PASSKEY_STATEMENT.format(key=key) + "\n", add_special_tokens=False)["input_ids"]
    budget = length - len(s_ids) - len(q_ids)
    if budget < 0 or len(pool) < budget:
        raise ValueError(f"cannot build a {length}-token passkey prompt from {len(pool)} haystack tokens")
    start = offset % max(1, len(pool) - budget + 1)
    hay = pool[start : start + budget]
    at = int(depth * budget)
    return hay[:at] + s_ids + hay[at:] + q_ids


def passkey_digits(answer: str, n: int = 5) -> str:
    """The first ``n`` digits of a generated answer (compared with the key for exact match)."""
    import re

    return "".join(re.findall(r"\d", answer))[:n]


def _run_passkey(args, tok, model, base, base_window, lengths, methods) -> list[dict]:
    import random

    import torch

    from memlong.training import document_texts

    pool: list[int] = []  # haystack: held-out documents back to back
    for text in document_texts(args.data, args.split)():
        pool.extend(tok(text + "\n\n", add_special_tokens=False)["input_ids"])
        if len(pool) >= max(lengths) + args.trials * 997:
            break
    if len(pool) < max(lengths):
        raise SystemExit(f"--data holds {len(pool)} tokens, fewer than the longest --lengths {max(lengths)}")
    depths = [float(x) for x in args.depths.split(",") if x]
    rng = random.Random(args.seed)
    new_tokens = 8
    results = []
    for L in lengths:
        for depth in depths:
            cases = []
            for t in range(args.trials):
                key = str(rng.randrange(10_000, 100_000))
                cases.append((key, torch.tensor([passkey_prompt(tok, pool, key, L, depth, offset=t * 997)])))
            for method in methods:
                row = {"method": method, "length": L, "depth": depth, "trials": len(cases)}
                t0 = time.perf_counter()
                try:
                    if method == "base_full" and L > args.max_base_length:
                        raise _Skip(f"not attempted above --max-base-length={args.max_base_length}")
                    hits = 0
                    for key, ids in cases:
                        if method in ("memlong", "memlong_no_memory"):
                            memory = model.new_memory(1, retrieval=method == "memlong")
                            out = model.generate(ids, memory=memory, attention_mask=torch.ones_like(ids),
                                                 max_new_tokens=new_tokens, do_sample=False,
                                                 pad_token_id=tok.pad_token_id)
                        else:
                            if method == "base_truncated":
                                ids = ids[:, -(base_window - new_tokens):]
                            with torch.no_grad():
                                out = base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                                    do_sample=False, pad_token_id=tok.pad_token_id)
                        answer = tok.decode(out[0, ids.shape[1]:])
                        hits += int(passkey_digits(answer) == key)
                    row.update(accuracy=hits / len(cases))
                except _Skip as e:
                    row.update(accuracy=None, note=f"skipped: {e}")
                except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
                    row.update(accuracy=None, note=f"failed: {type(e).__name__}: {str(e)[:200]}")
                row["seconds"] = round(time.perf_counter() - t0, 2)
                results.append(row)
                acc = f"{row['accuracy']:.2f}" if row.get("accuracy") is not None else "-"
                print(f"{method:>18} L={L:>7} depth={depth:.2f}  accuracy {acc}  ({row['trials']} trials) "
                      f"{row.get('note', '')}", flush=True)
    return results


def _plot_passkey(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    lengths = sorted({r["length"] for r in results})
    depths = sorted({r["depth"] for r in results})
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for r in results:
            if r["method"] == method and r.get("accuracy") is not None:
                grid[depths.index(r["depth"])][lengths.index(r["length"])] = r["accuracy"]
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_title(method, fontsize=9)
        ax.set_xticks(range(len(lengths)), [f"{n // 1024}k" if n >= 1024 else str(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
        ax.set_xlabel("length")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, "-" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=7)
    axes[0][0].set_ylabel("depth")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
