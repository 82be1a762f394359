"""`memlong bench ingest`: tokens/s and peak memory of reading N tokens of real text.

Methods, measured side by side in one run, each (method, N) in a fresh process so that peak
RSS is its own:

* ``memlong``: the MemLong model reads the text through its memory (``model.ingest``);
* ``base_full``: the same base model with full causal attention over all N tokens, read the
  way a serving stack reads a long prompt (chunked prefill): ``local_window`` tokens per
  forward into a growing ``DynamicCache``, logits for the last position only. Same attention
  FLOPs as one N-token forward, and it ends holding the KV cache a user needs to continue
  (one forward of N tokens would additionally hold N-token activations and keep nothing);
* ``base_sliding``: the same weights as a sliding-window model without memory (every token
  sees the previous ``--window`` tokens, itself included): loaded into transformers' Mistral
  (Llama plus a sliding window) and fed ``--window`` tokens per forward through a rolling
  ``DynamicCache`` that keeps the last ``window - 1`` keys/values of every layer;
* ``base_windows``: the base model's plain forward over consecutive *disjoint* windows of
  ``--window`` tokens (no memory, no cache): the cost floor of the LM itself.

The baselines (every method but ``memlong``) run under ``--base-timeout`` seconds; every
method runs under a memory guard (``--max-rss-gb``: the worker is killed when its RSS passes
it). A method that hits either is reported as ``"error": "out of time ..."`` / ``"out of
memory ..."``, never as a number, and is not run at larger N.

The model is a small Llama with random weights (speed does not depend on the weights) and the
retriever's tokenizer, or with ``--model shipped`` (or ``default``) the default model,
SmolLM2-135M-Instruct, whose ``memlong`` method reads with the default MemLong model's
training-free config (``--chunk-size``, ``--top-k``, ``--window`` and a given ``--capacity`` applied),
or any local causal LM path with its own tokenizer. The text is the Python standard library's
sources (``--text`` for other local files). Also reports where MemLong's time goes
(retriever, search, bank writes, attention, rest) and the bank's bytes per token against the
memory layer's K/V alone (``2 * num_kv_heads * head_dim * dtype bytes``).

    memlong bench ingest --tokens 16384,65536,262144 --json bench.json --plot bench.png
    memlong bench ingest --model shipped --tokens 131072,262144,1048576 --methods memlong \\
        --capacity 1048576 --threads 1 --json docs/results/bench_million.json

`memlong bench search`: latency of one top-k query (MemLong searches once per chunk) against
bank size, for exact search (torch, faiss flat) and approximate search (faiss HNSW and IVF),
with the approximate indexes' recall@k measured against exact. Vectors are random unit vectors
(the hardest case for approximate indexes: no cluster structure to exploit), or with
``--vectors minilm`` MiniLM embeddings of consecutive chunks of real text (banks are prefixes,
queries the chunks that follow the largest one).

    memlong bench search --sizes 1000,10000,100000,1000000 --json search.json
    memlong bench search --vectors minilm --sizes 1000,3000,10000 --embeddings-cache emb.npy --json s.json

`memlong bench retriever`: cost and retrieval quality of the cheap retrievers against MiniLM
(see :mod:`memlong.recipes.bench_retriever` for the protocol).

    memlong bench retriever --chunks 3000 --json docs/results/bench_retriever.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time

from memlong.config import add_overrides_argument
from memlong.profiling import machine
from memlong.report import write_markdown

METHODS = ("memlong", "base_full", "base_sliding", "base_windows")
#: ``--capacity`` of the random-weight Llama (and any ``--model`` path) when none is given
DEFAULT_CAPACITY = 32768
#: --model values meaning the default model (SmolLM2-135M-Instruct with the default MemLong config)
DEFAULT_NAMES = ("shipped", "default")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One sub-command per benchmark (``memlong bench ingest|search|retriever``), each with its own
    flags; the flags they share come from parent parsers, so they are spelled the same everywhere."""
    from memlong.recipes import bench_retriever

    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default, all cores; bench retriever: 1)"
    )
    shared.add_argument("--json", default=None, metavar="OUT", help="write the results here")
    shared.add_argument("--chunk-size", type=int, default=128, help="tokens per chunk (MemLong's tau)")
    shared.add_argument("--top-k", type=int, default=4, help="chunks retrieved per query (k)")
    text = argparse.ArgumentParser(add_help=False)  # the benchmarks that read local text
    text.add_argument(
        "--text",
        default=None,
        help="a text file or a directory (its *.py, *.txt, *.md files, recursively, sorted); "
        "default: the Python standard library's sources",
    )

    benches = p.add_subparsers(dest="what", metavar="BENCH", required=True)

    def bench(name: str, summary: str, doc: str, *parents):
        return benches.add_parser(
            name,
            parents=[shared, *parents],
            help=summary,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    ingest = bench(
        "ingest",
        "tokens/s and peak memory of reading N tokens, MemLong against the base model's baselines",
        _section("ingest"),
        text,
    )
    ingest.add_argument("--tokens", default="16384,65536,262144", help="comma-separated token counts")
    ingest.add_argument("--methods", default="memlong,base_windows", help=f"comma-separated: {', '.join(METHODS)}")
    ingest.add_argument(
        "--model",
        default=None,
        help="'shipped' or 'default' (the default model, SmolLM2-135M-Instruct; memlong reads "
        "with the default MemLong model's training-free config), or a local causal LM path, "
        "with its own tokenizer; default: a random-weight Llama of the shape below",
    )
    ingest.add_argument(
        "--retriever",
        default="minilm",
        choices=["minilm", "hashing", "embedding"],
        help="minilm: the default all-MiniLM-L6-v2; hashing: the cheap lexical retriever; "
        "embedding: the LM's own pooled input embeddings",
    )
    shape = ingest.add_argument_group("the random-weight Llama (without --model)")
    shape.add_argument("--layers", type=int, default=8)
    shape.add_argument("--hidden", type=int, default=256)
    shape.add_argument("--heads", type=int, default=8)
    shape.add_argument("--kv-heads", type=int, default=4)
    ingest.add_argument(
        "--window",
        type=int,
        default=1024,
        help="MemLong's local window; the tokens per forward of the baselines, and base_sliding's sliding window",
    )
    ingest.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="memory capacity in tokens (default: the default model's own with --model shipped, "
        f"{DEFAULT_CAPACITY:,} otherwise)",
    )
    add_overrides_argument(ingest, "--set bank_heads=[[7,0],[8,2]] --set bank_dtype=int8", " (memlong only)")
    ingest.add_argument(
        "--base-timeout",
        type=float,
        default=600.0,
        help="seconds a baseline may run at one N before it is reported as out of time",
    )
    ingest.add_argument(
        "--max-rss-gb",
        type=float,
        default=0.0,
        help="kill a worker whose RSS passes this many GiB and report it as out of memory "
        "(0: 85%% of the memory available at start)",
    )
    ingest.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=0,
        metavar="BYTES",
        help="run the workers with MALLOC_MMAP_THRESHOLD_=BYTES (glibc): a fixed threshold stops "
        "glibc raising it as large blocks are freed, which lets freed tensor memory pile up in "
        "the heap as the input grows (0: glibc's default, a dynamic threshold)",
    )
    ingest.add_argument(
        "--generate",
        type=int,
        default=0,
        metavar="T",
        help="after the read, time T greedy new tokens with generate(): memlong, base_full and "
        "base_sliding continue from what they read; base_windows generates after a --window "
        "token prompt (its prefill not timed): the base at its own window's context (0: off)",
    )
    ingest.add_argument("--plot", default=None, metavar="PNG", help="PNG of tokens/s and peak RSS against tokens")
    ingest.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)

    search = bench(
        "search",
        "latency and recall of one top-k query against bank size, exact and approximate indexes",
        _section("search"),
        text,
    )
    search.add_argument("--sizes", default="1000,10000,100000", help="bank sizes in chunks")
    search.add_argument("--dim", type=int, default=384, help="embedding dimension of random vectors (MiniLM: 384)")
    search.add_argument("--queries", type=int, default=200, help="queries per size")
    search.add_argument(
        "--vectors",
        default="random",
        choices=["random", "minilm"],
        help="random unit vectors, or MiniLM embeddings of --chunk-size-token chunks of --text",
    )
    search.add_argument("--embeddings-cache", default=None, help=".npy file caching the MiniLM embeddings")
    search.add_argument("--indexes", default="torch,faiss_flat,faiss_hnsw,faiss_ivf", help="which indexes")

    bench_retriever.add_arguments(
        bench("retriever", "cost and retrieval quality of the cheap retrievers against MiniLM", bench_retriever.__doc__)
    )


def _section(name: str) -> str:
    """The part of this module's docstring about ``memlong bench NAME`` (its --help description)."""
    parts = __doc__.split("`memlong bench ")
    return "`memlong bench " + next(part for part in parts if part.startswith(f"{name}`")).strip()


def _text_files(text: str | None):
    """The files ``_text_tokens`` reads, in order."""
    import sysconfig
    from pathlib import Path

    if text is not None:
        root = Path(text)
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise SystemExit(f"--text {text!r}: no such file or directory")
        return sorted(p for ext in ("py", "txt", "md") for p in root.rglob(f"*.{ext}"))
    root = Path(sysconfig.get_paths()["stdlib"])
    # Top-level modules first (the text earlier results were measured on), then subpackages;
    # never installed packages, which differ between machines.
    sub = [
        p
        for p in sorted(root.rglob("*.py"))
        if p.parent != root and not {"site-packages", "dist-packages"} & set(p.parts)
    ]
    return sorted(root.glob("*.py")) + sub


def _text_tokens(tokenizer, n: int, text: str | None = None) -> list[int]:
    """At least ``n`` tokens of ``text`` (default: the stdlib's sources), in a fixed order."""
    ids: list[int] = []
    files = _text_files(text)
    for path in files:
        try:
            chunk = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        ids.extend(tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"])
        if len(ids) >= n:
            return ids[:n]
    raise SystemExit(
        f"{text or 'the standard library'} holds {len(ids)} tokens, fewer than the {n} asked for; "
        "pass --text with more local text"
    )


def _load_model(args):
    """``(model, tokenizer, description)`` for ``--model``."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from memlong.retriever import default_retriever_path

    if args.model is None:
        tok = AutoTokenizer.from_pretrained(default_retriever_path())
        cfg = LlamaConfig(
            vocab_size=tok.vocab_size,
            hidden_size=args.hidden,
            intermediate_size=int(args.hidden * 8 / 3) // 8 * 8,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.kv_heads,
            max_position_embeddings=max(2048, args.window),
        )
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg).eval(), tok, "random-weight Llama"
    if args.model in DEFAULT_NAMES:
        from memlong.pretrained import ENV_VAR, default_base_model_path, load_default_base_model

        model, tok = load_default_base_model()
        name = f"${ENV_VAR}={default_base_model_path()}" if os.environ.get(ENV_VAR) else "SmolLM2-135M-Instruct"
        return model.eval(), tok, f"default model ({name})"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(args.model), args.model


def sliding_window_model(model, window: int):
    """The Llama ``model``'s weights in transformers' Mistral with ``sliding_window=window``
    (the same architecture plus a sliding-window mask and rolling cache); shares no storage."""
    from transformers import MistralConfig, MistralForCausalLM

    d = model.config.to_dict()
    for k in ("model_type", "architectures", "transformers_version", "attention_bias", "mlp_bias", "pretraining_tp"):
        d.pop(k, None)
    if model.config.attention_bias or getattr(model.config, "mlp_bias", False):
        raise SystemExit("base_sliding needs a Llama without attention/MLP biases")
    cfg = MistralConfig(**{**d, "sliding_window": window, "max_position_embeddings": 1 << 30})
    sliding = MistralForCausalLM(cfg).to(next(model.parameters()).dtype).eval()
    missing, unexpected = sliding.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k or not cfg.tie_word_embeddings]:
        raise SystemExit(f"base_sliding: weights do not map onto Mistral (missing {missing}, unexpected {unexpected})")
    if cfg.tie_word_embeddings:
        sliding.tie_weights()
    return sliding


def _proc_kib_field(path: str, key: str) -> int:
    """Bytes of a ``key: N kB`` line of a /proc file (``/proc/PID/status``, ``/proc/meminfo``);
    0 when the line is missing."""
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_bytes() -> int:
    return _proc_kib_field("/proc/self/status", "VmRSS")


def _worker(args) -> dict:
    import torch
    from transformers import DynamicCache

    import memlong
    from memlong import profiling
    from memlong.modeling import CACHE_ARG

    if args.threads:
        torch.set_num_threads(args.threads)
    method, n = args.worker[0], int(args.worker[1])
    model, tok, described = _load_model(args)
    ids = torch.tensor([_text_tokens(tok, n + 1, args.text)])  # the last token starts --generate
    nxt, ids = ids[:, n:], ids[:, :n]
    params = sum(p.numel() for p in model.parameters())
    result = {
        "method": method,
        "tokens": n,
        "params": params,
        "model": described,
        "threads": torch.get_num_threads(),
        # other work on the machine makes a run slow and its ratios noisy: shown, not hidden
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    step = args.window
    bank_bytes = 0
    if method == "base_windows":
        rss_before = _rss_bytes()
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, n, step):
                model(ids[:, s : s + step], logits_to_keep=1, use_cache=False)
        seconds = time.perf_counter() - t0
        if args.generate:
            # the base as used without memory: a prompt of one window, prefilled (not timed), then decoding
            prompt = torch.cat([ids, nxt], 1)[:, -step:]
            cache = DynamicCache(config=model.config)
            with torch.no_grad():
                model(prompt[:, :-1], **{CACHE_ARG: cache}, use_cache=True, logits_to_keep=1)
            result.update(_time_generate(model, prompt, args.generate, tok, past_key_values=cache))
    elif method in ("base_full", "base_sliding"):
        if method == "base_sliding":
            model = sliding_window_model(model, args.window)
        cache = DynamicCache(config=model.config)
        rss_before = _rss_bytes()
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, n, step):
                model(ids[:, s : s + step], **{CACHE_ARG: cache}, use_cache=True, logits_to_keep=1)
        seconds = time.perf_counter() - t0
        result["kv_cache_bytes"] = sum(
            t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
        )
        result["kv_cache_tokens"] = cache.layers[0].keys.shape[-2]
        if args.generate:
            result.update(_time_generate(model, torch.cat([ids, nxt], 1), args.generate, tok, past_key_values=cache))
    elif method == "memlong":
        sizes = dict(chunk_size=args.chunk_size, top_k=args.top_k, local_window=args.window)
        if args.capacity is not None:
            sizes["memory_capacity"] = args.capacity
        if args.model in DEFAULT_NAMES:  # the default MemLong model's config (training-free), resized
            import dataclasses

            from memlong.pretrained import DEFAULT_MEMLONG_MODEL

            mcfg = dataclasses.replace(memlong.MemLongConfig.from_pretrained(DEFAULT_MEMLONG_MODEL), **sizes)
        else:
            sizes.setdefault("memory_capacity", DEFAULT_CAPACITY)
            mcfg = memlong.MemLongConfig.for_num_layers(model.config.num_hidden_layers, **sizes)
        m = memlong.wrap(model, mcfg, retriever=args.retriever, tokenizer=tok)
        memlong.config.apply_overrides(m, args.overrides)
        mcfg = m.memlong_config
        rss_before = _rss_bytes()
        with profiling.record() as timings:
            t0 = time.perf_counter()
            memory = m.ingest(ids)
            seconds = time.perf_counter() - t0
        bank = memory.bank(0)
        bank_bytes = bank.nbytes()
        split = dict(timings.seconds)
        inner = sum(split.get(k, 0.0) for k in ("retriever", "search", "bank_write"))
        split["plan"] = split.pop("prepare", 0.0) - inner
        split["rest"] = seconds - sum(split.values())
        lay = bank.layout
        result["time_split_s"] = {k: round(v, 3) for k, v in sorted(split.items())}
        result["bank_chunks"] = len(bank)
        result["bank_slots"] = bank.num_slots
        # Per stored token (allocated slots x chunk): K/V plus embedding, token id, span, counter.
        result["bank_bytes_per_token"] = round(bank_bytes / max(1, bank.num_slots * lay.chunk_size), 2)
        result["kv_bytes_per_token"] = lay.kv_bytes_per_token()
        result["retriever"] = m.memlong_retriever.describe()
        result["config"] = mcfg.to_dict()
        if args.generate:
            result.update(_time_generate(m, nxt, args.generate, tok, memory=memory))
    else:
        raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    result.update(
        seconds=round(seconds, 3),
        tokens_per_s=round(n / seconds, 1),
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        rss_before_bytes=rss_before,
        bank_bytes=bank_bytes,
        # The allocator setting in force: it decides whether freed memory piles up (see --malloc-mmap-threshold).
        malloc_mmap_threshold=int(os.environ.get("MALLOC_MMAP_THRESHOLD_", 0)),
    )
    return result


def _time_generate(model, ids, new_tokens: int, tok, **state) -> dict:
    """Seconds and tokens/s of ``new_tokens`` greedy tokens from ``model.generate`` continuing
    ``state`` (``memory=`` for MemLong, whose ``ids`` are the new tokens only; ``past_key_values=``
    for a base model, whose ``ids`` are everything read plus the new prompt token)."""
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    t0 = time.perf_counter()
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad,
        **state,
    )
    seconds = time.perf_counter() - t0
    made = out.shape[1] - ids.shape[1]
    return {
        "generate_tokens": made,
        "generate_seconds": round(seconds, 3),
        "generate_tokens_per_s": round(made / seconds, 2),
    }


def _real_vectors(args, count: int):
    """``count`` unit-norm MiniLM embeddings of consecutive ``--chunk-size``-token chunks of the
    text (``--text``, default the stdlib's sources), the way a bank embeds its chunks; cached in
    ``--embeddings-cache`` (.npy) when given, since embedding is the slow part."""
    import numpy as np
    from transformers import AutoTokenizer

    from memlong.retriever import SentenceTransformerRetriever, default_retriever_path

    cache = args.embeddings_cache
    E = np.load(cache) if cache and os.path.exists(cache) else np.zeros((0, 0), dtype="float32")
    if len(E) >= count:
        return E[:count]
    tok = AutoTokenizer.from_pretrained(default_retriever_path())
    ids = _text_tokens(tok, count * args.chunk_size, args.text)
    chunks = [ids[i : i + args.chunk_size] for i in range(len(E) * args.chunk_size, len(ids), args.chunk_size)]
    new = SentenceTransformerRetriever(tok).embed(chunks).numpy().astype("float32")
    E = np.concatenate([E, new]) if len(E) else new  # the cache holds a prefix of the same chunks
    if cache:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        np.save(cache, E)
    return E


def _search(args) -> list[dict]:
    import faiss
    import numpy as np
    import torch

    from memlong.memory.index import hnsw_index

    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    k, d = args.top_k, args.dim
    results, keepalive = [], []
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if args.vectors == "minilm":
        # Banks are prefixes of the text; queries are the chunks that follow the largest bank
        # (MemLong queries with the newest chunk, which is never in the bank yet).
        E = _real_vectors(args, max(sizes) + args.queries)
        d = E.shape[1]
    elif args.vectors != "random":
        raise SystemExit(f"--vectors {args.vectors!r}: choose random or minilm")
    for n in [int(x) for x in args.sizes.split(",") if x]:
        if args.vectors == "minilm":
            X, Q = np.ascontiguousarray(E[:n]), np.ascontiguousarray(E[max(sizes) :])
        else:
            X = rng.standard_normal((n, d), dtype=np.float32)
            X /= np.linalg.norm(X, axis=1, keepdims=True)
            Q = rng.standard_normal((args.queries, d), dtype=np.float32)
            Q /= np.linalg.norm(Q, axis=1, keepdims=True)
        Xt, Qt = torch.from_numpy(X), torch.from_numpy(Q)
        truth = torch.topk(Qt @ Xt.T, k, dim=1).indices.numpy()
        for name in [x for x in args.indexes.split(",") if x]:
            t0 = time.perf_counter()
            if name == "torch":

                def search(q, Xt=Xt):
                    return torch.topk(Xt @ torch.from_numpy(q[0]), k).indices.numpy()[None]
            else:
                if name == "faiss_flat":
                    index = faiss.IndexFlatIP(d)
                elif name == "faiss_hnsw":
                    index = hnsw_index(d)  # the graph search_backend="auto" builds
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
            r = {
                "index": name,
                "vectors": args.vectors,
                "chunks": n,
                "build_s": round(build, 3),
                "query_ms": round(1000 * latency, 4),
                "recall_at_k": round(recall, 4),
                "k": k,
                "dim": d,
            }
            results.append(r)
            print(
                f"{name:>11} {n:>9} chunks  build {build:7.2f} s  query {1000 * latency:8.3f} ms  "
                f"recall@{k} {recall:.3f}",
                flush=True,
            )
    return results


def _available_bytes() -> int:
    return _proc_kib_field("/proc/meminfo", "MemAvailable")


def _proc_rss(pid: int) -> int:
    try:
        return _proc_kib_field(f"/proc/{pid}/status", "VmRSS")
    except OSError:  # the worker has exited
        return 0


def _run_worker(cmd: list[str], timeout: float | None, max_rss: int, env: dict | None = None) -> dict:
    """Runs one worker (with ``env`` added to this process's environment) under a time limit and
    a memory guard; returns its result or ``{"error": ...}``."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env={**os.environ, **(env or {})})
        t0, peak, why = time.monotonic(), 0, None
        while proc.poll() is None:
            peak = max(peak, _proc_rss(proc.pid))
            if timeout is not None and time.monotonic() - t0 > timeout:
                why = f"out of time: did not finish in {timeout:g} s (--base-timeout)"
            elif peak > max_rss:
                why = f"out of memory: RSS passed {max_rss / 2**30:.1f} GiB (--max-rss-gb)"
            if why:
                proc.kill()
                proc.wait()
                return {"error": why}
            time.sleep(0.2)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode == 0:
        return json.loads(stdout.strip().splitlines()[-1])
    if proc.returncode == -9:
        return {"error": "out of memory: killed by the system (SIGKILL)"}
    last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {proc.returncode}"
    if "can't allocate memory" in last or "MemoryError" in last:
        return {"error": f"out of memory: {last}"}
    return {"error": last}


def worker_command(args, method: str, n: int) -> list[str]:
    """The process that measures ``method`` at ``n`` tokens: ``memlong bench ingest --worker METHOD N``
    with every flag of ``args`` but the run's own (tokens, methods, outputs) passed through."""
    passthrough = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k not in ("what", "tokens", "methods", "json", "plot", "worker", "overrides") and v is not None
    ]
    passthrough += [f"--set={o}" for o in getattr(args, "overrides", [])]
    return [sys.executable, "-m", "memlong", "bench", "ingest", "--worker", method, str(n), *passthrough]


def _write_json(path: str, report: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def run(args) -> int:
    if args.what == "retriever":
        from memlong.recipes import bench_retriever

        return bench_retriever.run(args)
    if args.what == "search":
        results = _search(args)
        if args.json:
            report = {
                "results": results,
                "machine": machine(),
                "command": shlex.join(["memlong", "bench", *sys.argv[2:]]),
            }
            _write_json(args.json, report)
            print(f"wrote {args.json}\nwrote {write_markdown(report, args.json)}")
        return 0
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    tokens = [int(x) for x in args.tokens.split(",") if x]
    methods = [m for m in args.methods.split(",") if m]
    if not tokens or min(tokens) < 1:
        raise SystemExit(f"--tokens needs positive integers, got {args.tokens!r}")
    if args.generate < 0:
        raise SystemExit(f"--generate needs a number of new tokens >= 0 (0: no generation), got {args.generate}")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise SystemExit(f"--methods: unknown {unknown or methods}; choose from {', '.join(METHODS)}")
    max_rss = int(args.max_rss_gb * 2**30) if args.max_rss_gb > 0 else int(0.85 * _available_bytes())
    command = shlex.join(["memlong", "bench", *sys.argv[2:]])
    if args.malloc_mmap_threshold < 0:
        raise SystemExit(f"--malloc-mmap-threshold must be >= 0 bytes, got {args.malloc_mmap_threshold}")
    worker_env = {"MALLOC_MMAP_THRESHOLD_": str(args.malloc_mmap_threshold)} if args.malloc_mmap_threshold else {}
    results, failed = [], {}
    for n in sorted(tokens):
        for method in methods:
            if method in failed:
                r = {"method": method, "tokens": n, "error": f"not run: {failed[method]}"}
            else:
                timeout = None if method == "memlong" else args.base_timeout
                r = _run_worker(worker_command(args, method, n), timeout, max_rss, worker_env)
                if "error" in r:
                    r = {"method": method, "tokens": n, **r}
                    if r["error"].startswith("out of"):
                        failed[method] = f"{r['error'].split(':')[0]} at {n} tokens"
            results.append(r)
            print(_row(r), flush=True)
            if args.json:  # after every row: a long run leaves what it measured so far
                _write_json(args.json, {"results": results, "machine": machine(), "command": command})
    if args.json:
        print(f"wrote {args.json}")
    if args.plot:
        plot_ingest(results, args.plot)
        print(f"wrote {args.plot}")
    if args.json:  # after the plot, which it links when it lies beside the JSON
        print(f"wrote {write_markdown({'results': results, 'machine': machine(), 'command': command}, args.json)}")
    return 0


def plot_ingest(results: list[dict], path: str) -> None:
    """Two panels, tokens/s and peak RSS against tokens (log x), one line per method; failed
    points are left out (the JSON says why)."""
    from memlong.plotting import finish, pyplot, save

    fig, (a, b) = pyplot().subplots(1, 2, figsize=(9, 3.6))
    for method in [m for m in METHODS if any(r["method"] == m for r in results)]:
        ok = sorted((r["tokens"], r) for r in results if r["method"] == method and "error" not in r)
        if not ok:
            continue
        xs = [n for n, _ in ok]
        a.plot(xs, [r["tokens_per_s"] for _, r in ok], marker="o", label=method)
        b.plot(xs, [r["peak_rss_bytes"] / 2**30 for _, r in ok], marker="o", label=method)
    for ax, ylabel in ((a, "tokens / s"), (b, "peak RSS (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        finish(ax, "tokens ingested", ylabel, legend_size=8, legend=ax is a)
    save(fig, path, dpi=80)


def _row(r: dict) -> str:
    if "error" in r:
        return f"{r['method']:>13} {r['tokens']:>9}  FAILED: {r['error']}"
    split = " ".join(f"{k}={v:.1f}s" for k, v in r.get("time_split_s", {}).items())
    gen = f"generate {r['generate_tokens_per_s']:.1f} tok/s  " if "generate_tokens_per_s" in r else ""
    return (
        f"{r['method']:>13} {r['tokens']:>9} tok  {r['tokens_per_s']:>9.1f} tok/s  {gen}"
        f"peak RSS {r['peak_rss_bytes'] / 2**20:8.1f} MiB  bank {r['bank_bytes'] / 2**20:7.1f} MiB  {split}"
    )
