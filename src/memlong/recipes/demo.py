"""`memlong demo`: an end-to-end run of MemLong's machinery on a long real document.

It plants a fact near the start of a long document from the Python standard library, reads
the whole document through MemLong's memory, asks about the fact at the end, shows which
chunks the frozen retriever fetched from memory, and generates an answer.

The language model here is UNTRAINED: a tiny Llama built from a config with random weights
(no pretrained causal LM can be downloaded on our machines). Its generated text is noise; the
demo shows the machinery (ingestion, memory writes, eviction, retrieval, generation with
memory, speed and memory use), not answer quality. The retriever (all-MiniLM-L6-v2) is real.

    memlong demo [--doc PATH] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sysconfig
import time
from pathlib import Path

FACT = "Note for maintainers: the secret passkey of the release vault is 48213, keep it safe."
QUESTION = "What is the secret passkey of the release vault? The secret passkey of the release vault is"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--doc", default=None, help="text file to read (default: the stdlib's typing.py)")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--capacity", type=int, default=65536, help="memory capacity in tokens")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--json", default=None, help="also write the summary here")


def run(args) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import memlong
    from memlong import profiling
    from memlong.retriever import default_retriever_path

    if args.threads:
        torch.set_num_threads(args.threads)
    doc_path = Path(args.doc) if args.doc else Path(sysconfig.get_paths()["stdlib"]) / "typing.py"
    try:
        text = doc_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"cannot read --doc {doc_path}: {e}") from e
    print("=" * 78)
    print("MemLong demo: UNTRAINED language model (tiny Llama, random weights).")
    print("Generated text is noise; retrieval uses the real all-MiniLM-L6-v2 embedder.")
    print("=" * 78)

    tok = AutoTokenizer.from_pretrained(default_retriever_path())
    tok.model_max_length = 10**9  # we read long documents on purpose; the LM never sees them whole
    cut = len(text) // 40  # plant the fact ~2.5% into the document
    doc_ids = tok(text[:cut] + "\n" + FACT + "\n" + text[cut:], add_special_tokens=False)["input_ids"]
    fact_ids = tok(FACT, add_special_tokens=False)["input_ids"]
    fact_at = next(i for i in range(len(doc_ids)) if doc_ids[i : i + len(fact_ids)] == fact_ids)
    fact_span = (fact_at, fact_at + len(fact_ids))

    def overlaps_fact(span) -> bool:
        return span[0] < fact_span[1] and fact_span[0] < span[1]
    q_ids = tok(QUESTION, add_special_tokens=False)["input_ids"]
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=args.window)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg).eval()
    mcfg = memlong.MemLongConfig(memory_layer=2, retrieval_layers=(3, 4), chunk_size=args.chunk_size,
                                 top_k=args.top_k, memory_capacity=args.capacity, local_window=args.window)
    model = memlong.wrap(base, mcfg, tokenizer=tok)  # default retriever: all-MiniLM-L6-v2 over decoded text
    print(f"document: {doc_path} ({len(doc_ids):,} tokens, fact planted at tokens {fact_span[0]:,}-{fact_span[1]:,})")
    print(f"model: Llama {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"{sum(p.numel() for p in base.parameters()) / 1e6:.1f}M params; MemLong: {json.dumps(mcfg.to_dict())}")

    ids = torch.tensor([doc_ids])
    with profiling.record() as timings:
        t0 = time.perf_counter()
        memory = model.ingest(ids, progress=True)
        ingest_s = time.perf_counter() - t0
    bank = memory.bank(0)

    # What does the bank return for the question? (the same search the model runs)
    q_emb = model.memlong_retriever.embed([q_ids])[0]
    slots, scores = bank.search(q_emb, args.top_k, count=False)
    print("\nchunks the retriever fetches from memory for the question:")
    hits = []
    for s, sc in zip(slots.tolist(), scores.tolist()):
        chunk_text = tok.decode(bank.token_ids[s].tolist()).replace("\n", " ")
        has_fact = overlaps_fact(tuple(bank.spans[s].tolist()))
        hits.append({"chunk_id": int(bank.chunk_ids[s]), "score": round(sc, 4), "has_fact": has_fact})
        print(f"  chunk {int(bank.chunk_ids[s]):>4}  cos={sc:.3f}  {'[FACT] ' if has_fact else ''}{chunk_text[:90]!r}")

    # Generate with memory: the question continues the stream after the document.
    question = torch.tensor([q_ids])
    t0 = time.perf_counter()
    out = model.generate(question, memory=memory, attention_mask=torch.ones_like(question),
                         max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    gen_s = time.perf_counter() - t0
    answer = tok.decode(out[0, len(q_ids):])
    fact_chunks = [e for e in bank.entries() if overlaps_fact(e["span"])]
    summary = {
        "untrained_model": True,
        "document": str(doc_path),
        "tokens_ingested": len(doc_ids),
        "ingest_seconds": round(ingest_s, 2),
        "ingest_tokens_per_s": round(len(doc_ids) / ingest_s, 1),
        "time_split_s": {k: round(v, 2) for k, v in timings.seconds.items()},
        "bank_chunks": len(bank),
        "bank_capacity_chunks": bank.capacity,
        "evictions": bank.evictions,
        "bank_bytes": bank.nbytes(),
        "fact_chunk_in_memory": bool(fact_chunks),
        "fact_chunk_retrievals": [e["count"] for e in fact_chunks],
        "question_top_hits": hits,
        "fact_retrieved_for_question": any(h["has_fact"] for h in hits),
        "generated": answer,
        "generate_seconds": round(gen_s, 2),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print(f"\ngenerated after the question (untrained model, expect noise): {answer!r}")
    print("\n" + "-" * 78)
    rows = [
        ("tokens ingested", f"{len(doc_ids):,}"),
        ("ingest speed", f"{summary['ingest_tokens_per_s']:,} tokens/s ({ingest_s:.1f} s)"),
        ("time split", ", ".join(f"{k} {v:.1f}s" for k, v in summary["time_split_s"].items())),
        ("memory bank", f"{len(bank)} / {bank.capacity} chunks, {bank.nbytes() / 2**20:.1f} MiB, {bank.evictions} evictions"),
        ("fact still in memory", f"{bool(fact_chunks)} (retrieved {summary['fact_chunk_retrievals']} times while reading)"),
        ("fact fetched for question", str(summary["fact_retrieved_for_question"])),
        ("peak RSS", f"{summary['peak_rss_bytes'] / 2**20:.0f} MiB"),
    ]
    for k, v in rows:
        print(f"{k:>26}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0
