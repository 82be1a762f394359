"""`memlong bench ingest`: tokens/s and peak memory of reading N tokens of real text.

Methods, measured side by side in one run, each (method, N) in a fresh process so that peak
RSS is its own:

* ``memlong``: the MemLong model reads the text through its memory (``model.ingest``);
* ``base_windows``: the same base model's plain forward over the same tokens in consecutive
  windows of ``local_window`` tokens (no memory, no cache): the cost floor of the LM itself.

The model is a small Llama with random weights (speed does not depend on the weights); the
text is the Python standard library's sources, tokenized with the retriever's tokenizer.
Also reports where MemLong's time goes (retriever, search, bank writes, attention, rest).

    memlong bench ingest --tokens 16384,65536,262144 --json bench.json

`memlong bench search`: latency of one top-k query (MemLong searches once per chunk) against
bank size, for exact search (torch, faiss flat) and approximate search (faiss HNSW and IVF),
with the approximate indexes' recall@k measured against exact. Vectors are random unit vectors
(the hardest case for approximate indexes: no cluster structure to exploit).

    memlong bench search --sizes 1000,10000,100000,1000000 --json search.json

`memlong bench retriever`: cost and retrieval quality of the cheap retrievers against MiniLM
(see :mod:`memlong.recipes.bench_retriever` for the protocol).

    memlong bench retriever --chunks 3000 --json docs/results/bench_retriever.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["ingest", "search", "retriever"], help="what to benchmark")
    p.add_argument("--sizes", default="1000,10000,100000", help="search: bank sizes in chunks")
    p.add_argument("--dim", type=int, default=384, help="search: embedding dimension (MiniLM: 384)")
    p.add_argument("--queries", type=int, default=200, help="search: queries per size")
    p.add_argument("--indexes", default="torch,faiss_flat,faiss_hnsw,faiss_ivf", help="search: which indexes")
    p.add_argument("--tokens", default="16384,65536,262144", help="comma-separated token counts")
    p.add_argument("--methods", default="memlong,base_windows", help="comma-separated: memlong, base_windows")
    p.add_argument("--retriever", default="minilm", choices=["minilm", "hashing", "embedding"],
                   help="minilm: the default all-MiniLM-L6-v2; hashing: the cheap lexical retriever; "
                        "embedding: the LM's own pooled input embeddings")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--capacity", type=int, default=32768, help="memory capacity in tokens")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    from memlong.recipes import bench_retriever

    bench_retriever.add_arguments(p)


def _text_tokens(tokenizer, n: int) -> list[int]:
    """At least ``n`` tokens of the stdlib's sources, in a fixed order."""
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    ids: list[int] = []
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) >= n:
            return ids[:n]
    raise RuntimeError(f"the standard library holds fewer than {n} tokens")


def _worker(args) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import memlong
    from memlong import profiling
    from memlong.retriever import default_retriever_path, retriever_from_name

    if args.threads:
        torch.set_num_threads(args.threads)
    method, n = args.worker[0], int(args.worker[1])
    tok = AutoTokenizer.from_pretrained(default_retriever_path())
    ids = torch.tensor([_text_tokens(tok, n)])
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=args.hidden, intermediate_size=int(args.hidden * 8 / 3) // 8 * 8,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(2048, args.window),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    result = {"method": method, "tokens": n, "params": params, "threads": torch.get_num_threads()}
    if method == "base_windows":
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, n, args.window):
                model(ids[:, s : s + args.window], logits_to_keep=1, use_cache=False)
        seconds = time.perf_counter() - t0
        bank_bytes = 0
    elif method == "memlong":
        retriever = retriever_from_name(args.retriever, tok, model=model)
        mcfg = memlong.MemLongConfig.for_num_layers(
            args.layers, chunk_size=args.chunk_size, top_k=args.top_k, local_window=args.window,
            memory_capacity=args.capacity,
        )
        m = memlong.wrap(model, mcfg, retriever=retriever, tokenizer=tok)
        with profiling.record() as timings:
            t0 = time.perf_counter()
            memory = m.ingest(ids)
            seconds = time.perf_counter() - t0
        bank_bytes = memory.bank(0).nbytes()
        split = dict(timings.seconds)
        inner = sum(split.get(k, 0.0) for k in ("retriever", "search", "bank_write"))
        split["plan"] = split.pop("prepare", 0.0) - inner
        split["rest"] = seconds - sum(split.values())
        result["time_split_s"] = {k: round(v, 3) for k, v in sorted(split.items())}
        result["bank_chunks"] = len(memory.bank(0))
        result["retriever"] = retriever.describe()
        result["config"] = mcfg.to_dict()
    else:
        raise SystemExit(f"unknown method {method!r}; choose memlong or base_windows")
    result.update(
        seconds=round(seconds, 3),
        tokens_per_s=round(n / seconds, 1),
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        bank_bytes=bank_bytes,
    )
    return result


def _search(args) -> list[dict]:
    import faiss
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    k, d = args.top_k, args.dim
    results, keepalive = [], []
    for n in [int(x) for x in args.sizes.split(",") if x]:
        X = rng.standard_normal((n, d), dtype=np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        Q = rng.standard_normal((args.queries, d), dtype=np.float32)
        Q /= np.linalg.norm(Q, axis=1, keepdims=True)
        Xt, Qt = torch.from_numpy(X), torch.from_numpy(Q)
        truth = torch.topk(Qt @ Xt.T, k, dim=1).indices.numpy()
        for name in [x for x in args.indexes.split(",") if x]:
            t0 = time.perf_counter()
            if name == "torch":
                def search(q):
                    return torch.topk(Xt @ torch.from_numpy(q[0]), k).indices.numpy()[None]
            else:
                if name == "faiss_flat":
                    index = faiss.IndexFlatIP(d)
                elif name == "faiss_hnsw":
                    index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
                    index.hnsw.efConstruction, index.hnsw.efSearch = 80, 64
                elif name == "faiss_ivf":
                    nlist = max(1, int(4 * n**0.5))
                    quantizer = faiss.IndexFlatIP(d)  # must outlive the index (faiss does not own it)
                    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
                    keepalive.append(quantizer)
                    index.train(X[rng.choice(n, min(n, 40 * nlist), replace=False)])
                    index.nprobe = max(1, nlist // 16)
                else:
                    raise SystemExit(f"unknown index {name!r}; choose torch, faiss_flat, faiss_hnsw, faiss_ivf")
                index.add(X)

                def search(q, index=index):
                    return index.search(q, k)[1]
            build = time.perf_counter() - t0
            found, t1 = [], time.perf_counter()
            for i in range(args.queries):
                found.append(search(Q[i : i + 1])[0])
            latency = (time.perf_counter() - t1) / args.queries
            recall = float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)]))
            r = {"index": name, "chunks": n, "build_s": round(build, 3), "query_ms": round(1000 * latency, 4),
                 "recall_at_k": round(recall, 4), "k": k, "dim": d}
            results.append(r)
            print(f"{name:>11} {n:>9} chunks  build {build:7.2f} s  query {1000 * latency:8.3f} ms  "
                  f"recall@{k} {recall:.3f}", flush=True)
    return results


def run(args) -> int:
    if args.what == "retriever":
        from memlong.recipes import bench_retriever

        return bench_retriever.run(args)
    if args.what == "search":
        results = _search(args)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump({"results": results, "machine": _machine(),
                           "command": " ".join(["memlong", "bench", *sys.argv[2:]])}, f, indent=2)
            print(f"wrote {args.json}")
        return 0
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    tokens = [int(x) for x in args.tokens.split(",") if x]
    methods = [m for m in args.methods.split(",") if m]
    if not tokens or min(tokens) < 1:
        raise SystemExit(f"--tokens needs positive integers, got {args.tokens!r}")
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k not in ("what", "tokens", "methods", "json", "worker") and v is not None]
    results = []
    for n in tokens:
        for method in methods:
            cmd = [sys.executable, "-m", "memlong", "bench", "ingest", "--worker", method, str(n), *passthrough]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
                results.append({"method": method, "tokens": n, "error": err})
            else:
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(_row(r), flush=True)
    report = {"results": results, "machine": _machine(), "command": " ".join(["memlong", "bench", *sys.argv[2:]])}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _row(r: dict) -> str:
    if "error" in r:
        return f"{r['method']:>13} {r['tokens']:>9}  FAILED: {r['error']}"
    split = " ".join(f"{k}={v:.1f}s" for k, v in r.get("time_split_s", {}).items())
    return (f"{r['method']:>13} {r['tokens']:>9} tok  {r['tokens_per_s']:>9.1f} tok/s  "
            f"peak RSS {r['peak_rss_bytes'] / 2**20:8.1f} MiB  bank {r['bank_bytes'] / 2**20:7.1f} MiB  {split}")


def _machine() -> dict:
    import platform

    import torch

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}
