"""`memlong bench retriever`: cost and retrieval quality of the cheap retrievers against MiniLM.

Protocol (all at one torch thread, on the CPU):

* **Chunks.** Real documents from a corpus JSONL (records ``{"id", "source", "text"}``; default
  ``runs/corpus/validation.jsonl``, the corpus's held-out validation split) are tokenized with
  the default base model's tokenizer and cut into consecutive full chunks of ``--chunk-size``
  (128) tokens. Documents are taken longest first, round-robin over sources (so Python, man
  pages and Java all appear), at most ``--max-doc-chunks`` chunks from the start of each, until
  ``--chunks`` chunks are collected.
* **Retrievers.** ``minilm`` (all-MiniLM-L6-v2 on the decoded text: the external reference);
  ``hashing`` (:class:`~memlong.retriever.HashingRetriever`, token 1-2-gram feature hashing);
  ``embedding*``, variants of :class:`~memlong.retriever.EmbeddingRetriever` over the base
  model's own input-embedding matrix: ``embedding_mean`` (plain mean), ``embedding_centered``
  (minus the matrix's mean row), ``embedding_whitened`` (centered and whitened by the matrix
  rows' covariance: data-free), ``embedding`` (what ``--retriever embedding`` builds: whitened,
  with SIF token weights ``a/(a+p(t))`` from the ``token_counts.json`` in the model folder,
  written with :func:`memlong.retriever.save_token_counts`; data-free where the folder has none),
  ``embedding_sif`` (whitened, SIF with ``p`` estimated from the first ``--sample-tokens``
  tokens of ``--sample-corpus``, default the training split) and ``embedding_sif_self`` (``p``
  from the evaluated chunks themselves: what a retriever that learned frequencies from
  everything it read would approach; transductive, an optimistic bound for that idea).
* **Cost.** Every chunk is embedded in batches of ``--batch`` chunks (8 = a 1024-token local
  window of 128-token chunks: MemLong embeds the chunks one forward call completes in one
  batch), after one warm-up batch; reported as chunks/s and ms per chunk.
* **Agreement with MiniLM.** Each chunk ``i`` with more than ``k`` earlier chunks in its
  document (and a next chunk) is a query against chunks ``0..i-1`` of the same document, as
  MemLong searches its bank with the latest chunk. Recall@k is ``|top-k(retriever) ∩
  top-k(MiniLM)| / k``, averaged over queries; the random baseline is its expectation ``k / i``.
* **Continuation proxy** (retriever-independent). For the same queries, the *target* is the set
  of earlier chunks sharing the most distinct token 8-grams with chunk ``i + 1`` (queries whose
  next chunk shares no 8-gram with any earlier chunk are skipped); hit@k is how often top-k
  contains a target: whether the retriever fetches what the continuation is going to copy.
  The random baseline is ``1 - C(i - |T|, k) / C(i, k)``.

    memlong bench retriever --chunks 3000 --json docs/results/bench_retriever.json
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from memlong.report import write_markdown

VARIANTS = (
    "minilm",
    "hashing",
    "embedding_mean",
    "embedding_centered",
    "embedding_whitened",
    "embedding",
    "embedding_sif",
    "embedding_sif_self",
)


def add_arguments(p) -> None:
    """The flags of ``memlong bench retriever`` beside the shared ones (:mod:`memlong.recipes.bench`)."""
    p.add_argument("--corpus", default="runs/corpus/validation.jsonl", help="documents to chunk (JSONL)")
    p.add_argument(
        "--sample-corpus",
        default="runs/corpus/train.jsonl",
        help="JSONL whose first --sample-tokens tokens give embedding_sif its frequencies",
    )
    p.add_argument("--sample-tokens", type=int, default=1_000_000)
    p.add_argument("--chunks", type=int, default=3000, help="chunks in all")
    p.add_argument("--max-doc-chunks", type=int, default=150, help="chunks per document at most")
    p.add_argument("--batch", type=int, default=8, help="chunks per embed() call")
    p.add_argument("--retrievers", default=",".join(VARIANTS), help="comma-separated, minilm first")


def _read_jsonl(path: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def documents(path: str, tokenizer, chunk_size: int, total: int, per_doc: int) -> list[dict]:
    """``[{"id", "source", "chunks": [[ids] * n]}]``: longest documents first, round-robin over sources."""
    by_source: dict[str, list[dict]] = {}
    for r in _read_jsonl(path):
        by_source.setdefault(r.get("source", "?"), []).append(r)
    for docs in by_source.values():
        docs.sort(key=lambda r: (-len(r["text"]), r["id"]))
    queues = [by_source[s] for s in sorted(by_source)]
    out, n = [], 0
    while n < total and any(queues):
        for q in queues:
            if not q or n >= total:
                continue
            r = q.pop(0)
            ids = tokenizer(r["text"], add_special_tokens=False)["input_ids"]
            m = min(len(ids) // chunk_size, per_doc, total - n)
            if m < 2:
                continue
            out.append(
                {
                    "id": r["id"],
                    "source": r.get("source", "?"),
                    "chunks": [ids[i * chunk_size : (i + 1) * chunk_size] for i in range(m)],
                }
            )
            n += m
    return out


def sample_tokens(path: str, tokenizer, n: int, exclude: set[str]) -> list[list[int]]:
    """The first ``n`` tokens of ``path``'s documents (skipping ids in ``exclude``), per document."""
    out, got = [], 0
    for r in _read_jsonl(path):
        if r["id"] in exclude:
            continue
        ids = tokenizer(r["text"], add_special_tokens=False)["input_ids"][: n - got]
        out.append(ids)
        got += len(ids)
        if got >= n:
            break
    return out


def build(name: str, tokenizer, model, docs: list[dict], args):
    from memlong.retriever import (
        EmbeddingRetriever,
        HashingRetriever,
        SentenceTransformerRetriever,
        retriever_from_name,
    )

    if name == "minilm":
        return SentenceTransformerRetriever(tokenizer)
    if name == "hashing":
        return HashingRetriever()
    if name == "embedding_mean":
        return EmbeddingRetriever.from_model(model, center=False, whiten=False)
    if name == "embedding_centered":
        return EmbeddingRetriever.from_model(model, whiten=False)
    if name == "embedding_whitened":
        return EmbeddingRetriever.from_model(model)
    if name == "embedding":
        return retriever_from_name("embedding", tokenizer, model=model)
    vocab = model.get_input_embeddings().weight.shape[0]
    if name == "embedding_sif":
        if not os.path.isfile(args.sample_corpus):
            return None
        sample = sample_tokens(args.sample_corpus, tokenizer, args.sample_tokens, {d["id"] for d in docs})
        return EmbeddingRetriever.from_model(model, token_weights=EmbeddingRetriever.sif_weights(sample, vocab))
    if name == "embedding_sif_self":
        sample = [c for d in docs for c in d["chunks"]]
        return EmbeddingRetriever.from_model(model, token_weights=EmbeddingRetriever.sif_weights(sample, vocab))
    raise SystemExit(f"unknown retriever {name!r}; choose from {', '.join(VARIANTS)}")


def embed_timed(retriever, docs: list[dict], batch: int):
    """(per-document embeddings, seconds, chunks) embedding every chunk in batches of ``batch``."""
    import torch

    flat = [c for d in docs for c in d["chunks"]]
    retriever.embed(flat[:batch])  # warm-up
    parts, t0 = [], time.perf_counter()
    for s in range(0, len(flat), batch):
        parts.append(retriever.embed(flat[s : s + batch]))
    seconds = time.perf_counter() - t0
    emb = torch.cat(parts)
    out, s = [], 0
    for d in docs:
        out.append(emb[s : s + len(d["chunks"])])
        s += len(d["chunks"])
    return out, seconds, len(flat)


def _grams(chunk: list[int], n: int = 8) -> set[tuple[int, ...]]:
    return {tuple(chunk[s : s + n]) for s in range(len(chunk) - n + 1)}


def queries(docs: list[dict], k: int) -> list[dict]:
    """Per query: document index, chunk index ``i`` and the continuation targets (set, maybe empty)."""
    out = []
    for di, d in enumerate(docs):
        grams = [_grams(c) for c in d["chunks"]]
        for i in range(k + 1, len(d["chunks"]) - 1):
            shared = [len(grams[c] & grams[i + 1]) for c in range(i)]
            best = max(shared)
            out.append(
                {"doc": di, "i": i, "targets": {c for c, v in enumerate(shared) if v == best} if best else set()}
            )
    return out


def top_k(emb, i: int, k: int) -> set[int]:
    import torch

    return set(torch.topk(emb[:i] @ emb[i], k).indices.tolist())


def quality(embs, ref, qs: list[dict], docs: list[dict], k: int) -> dict:
    rec, hit, by_source = [], [], {}
    for q in qs:
        found = top_k(embs[q["doc"]], q["i"], k)
        r = len(found & top_k(ref[q["doc"]], q["i"], k)) / k
        rec.append(r)
        s = by_source.setdefault(docs[q["doc"]]["source"], {"recall": [], "hit": []})
        s["recall"].append(r)
        if q["targets"]:
            h = float(bool(found & q["targets"]))
            hit.append(h)
            s["hit"].append(h)
    return {
        "recall_at_k": _mean(rec),
        "next_hit_at_k": _mean(hit),
        "by_source": {
            src: {"recall_at_k": _mean(v["recall"]), "next_hit_at_k": _mean(v["hit"]), "queries": len(v["recall"])}
            for src, v in sorted(by_source.items())
        },
    }


def random_quality(qs: list[dict], docs: list[dict], k: int) -> dict:
    rec, hit, by_source = [], [], {}
    for q in qs:
        i, t = q["i"], len(q["targets"])
        r = k / i
        rec.append(r)
        s = by_source.setdefault(docs[q["doc"]]["source"], {"recall": [], "hit": []})
        s["recall"].append(r)
        if t:
            h = 1.0 - math.comb(i - t, k) / math.comb(i, k)
            hit.append(h)
            s["hit"].append(h)
    return {
        "recall_at_k": _mean(rec),
        "next_hit_at_k": _mean(hit),
        "by_source": {
            src: {"recall_at_k": _mean(v["recall"]), "next_hit_at_k": _mean(v["hit"]), "queries": len(v["recall"])}
            for src, v in sorted(by_source.items())
        },
    }


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def run(args) -> int:
    import torch

    from memlong.pretrained import default_base_model_path, load_default_base_model

    torch.set_num_threads(args.threads or 1)
    k = args.top_k
    names = [n for n in args.retrievers.split(",") if n]
    if not names or names[0] != "minilm":
        raise SystemExit("--retrievers must start with minilm (the reference the others are compared to)")
    if not os.path.isfile(args.corpus):
        raise SystemExit(f"no corpus at {args.corpus}; build it with `memlong data` or pass --corpus")
    model, tok = load_default_base_model(dtype=torch.float32)
    tok.model_max_length = 10**9
    docs = documents(args.corpus, tok, args.chunk_size, args.chunks, args.max_doc_chunks)
    qs = queries(docs, k)
    n_chunks = sum(len(d["chunks"]) for d in docs)
    if not qs:
        raise SystemExit(f"no queries: the documents need more than {k + 2} chunks of {args.chunk_size} tokens")
    print(
        f"{len(docs)} documents, {n_chunks} chunks of {args.chunk_size} tokens, {len(qs)} queries "
        f"({sum(bool(q['targets']) for q in qs)} with a continuation target), k={k}, "
        f"batch {args.batch}, {torch.get_num_threads()} thread(s)",
        flush=True,
    )
    rows, ref = [], None
    header = f"{'retriever':>20} {'dim':>5} {'chunks/s':>10} {'ms/chunk':>9} {'recall@k vs MiniLM':>19} {'next-chunk hit@k':>17}"
    print(header)
    for name in names:
        r = build(name, tok, model, docs, args)
        if r is None:
            print(f"{name:>20}  skipped (no --sample-corpus at {args.sample_corpus})")
            continue
        embs, seconds, n = embed_timed(r, docs, args.batch)
        if ref is None:
            ref = embs
        row = {
            "retriever": name,
            "describe": r.describe(),
            "dim": r.dim,
            "chunks": n,
            "seconds": round(seconds, 3),
            "chunks_per_s": round(n / seconds, 1),
            "ms_per_chunk": round(1000 * seconds / n, 4),
            **quality(embs, ref, qs, docs, k),
        }
        rows.append(row)
        print(_row(row), flush=True)
    rnd = {"retriever": "random", **random_quality(qs, docs, k)}
    rows.append(rnd)
    print(_row(rnd))
    report = {
        "results": rows,
        "protocol": {
            "chunk_size": args.chunk_size,
            "k": k,
            "batch": args.batch,
            "threads": torch.get_num_threads(),
            "documents": [{"id": d["id"], "source": d["source"], "chunks": len(d["chunks"])} for d in docs],
            "chunks": n_chunks,
            "queries": len(qs),
            "queries_with_target": sum(bool(q["targets"]) for q in qs),
            "corpus": args.corpus,
            "sample_corpus": args.sample_corpus,
            "sample_tokens": args.sample_tokens,
            "tokenizer": default_base_model_path(),
        },
        "command": _command(args),
    }
    if args.json:
        from memlong.profiling import machine

        report["machine"] = machine()
        Path(os.path.abspath(args.json)).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}\nwrote {write_markdown(report, args.json)}")
    return 0


def _command(args) -> str:
    """The command line that reproduces this run (every option that matters, explicitly)."""
    keys = (
        "corpus",
        "sample_corpus",
        "sample_tokens",
        "chunks",
        "max_doc_chunks",
        "chunk_size",
        "top_k",
        "batch",
        "retrievers",
        "threads",
        "json",
    )
    opts = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in keys if getattr(args, k) is not None]
    return " ".join(["memlong bench retriever", *opts])


def _row(r: dict) -> str:
    def f(x, spec):
        return format(x, spec) if x is not None else " " * (len(format(0.0, spec)) - 1) + "-"

    cost = (
        f"{r['dim']:>5} {r['chunks_per_s']:>10.1f} {r['ms_per_chunk']:>9.3f}"
        if "dim" in r
        else f"{'':>5} {'':>10} {'':>9}"
    )
    return f"{r['retriever']:>20} {cost} {f(r['recall_at_k'], '>19.3f')} {f(r['next_hit_at_k'], '>17.3f')}"
