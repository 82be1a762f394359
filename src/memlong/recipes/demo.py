"""`memlong demo`: the shipped model on a long held-out document, offline, on a CPU.

1. loads the reference MemLong model shipped in ``memlong/pretrained/memlong`` (or ``--model``,
   or ``$MEMLONG_REFERENCE_MODEL``); when there is none, the shipped base LM wrapped with
   MemLong and its gates CLOSED (untrained), announced by a banner: memory cannot change that
   model's output, and the demo then shows the machinery, not a gain;
2. (a) reads a long document held out from training (the stdlib's ``unittest/mock.py``, in the
   corpus' test split) in order and scores its last 2048 tokens with memory and without
   (the same model and local window, retrieval off), as ``memlong eval ppl`` does;
3. (c) plants a fact near the start of the document, reads it all into memory, asks for the
   fact at the end, shows which chunks the retriever fetches, and generates an answer;
4. (b) passkey retrieval at 64k tokens: a key stated once in a haystack of held-out stdlib text,
   asked for at the end, greedy digits, exact match, with memory and without;
5. (d) ingestion tokens/s and peak memory; a summary table (and ``--json OUT``).

    memlong demo [--model DIR] [--doc PATH] [--passkey-length 65536] [--passkey-trials 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import resource
import sysconfig
import time
from pathlib import Path

FACT = "Note for maintainers: the secret passkey of the release vault is 48213, keep it safe."
QUESTION = "What is the secret passkey of the release vault? The secret passkey of the release vault is"
DEFAULT_DOC = "unittest/mock.py"  # relative to the stdlib; document id stdlib/unittest/mock.py (test split)
RULE = "=" * 78


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="a MemLong directory (memlong train's final/); default: $MEMLONG_REFERENCE_MODEL or the "
                        "shipped reference model, else the shipped base with closed (untrained) gates")
    p.add_argument("--doc", default=None, help=f"text file to read (default: the stdlib's {DEFAULT_DOC}, held out)")
    p.add_argument("--score", type=int, default=2048, help="(a): score the document's last N tokens")
    p.add_argument("--passkey-length", type=int, default=65536, help="(b): prompt length in tokens (0: skip)")
    p.add_argument("--passkey-trials", type=int, default=2)
    p.add_argument("--no-passkey-baseline", dest="passkey_baseline", action="store_false",
                   help="(b): skip the no-memory passkey baseline (saves about a third of the demo's time)")
    p.add_argument("--capacity", type=int, default=None,
                   help="memory capacity in tokens (default: enough for the passkey prompt and the document)")
    p.add_argument("--retriever", default="minilm", help="minilm (default), hashing, embedding (the LM's own pooled input embeddings), or a sentence-transformers path")
    p.add_argument("--max-new-tokens", type=int, default=16, help="(c): tokens generated after the question")
    p.add_argument("--no-requery", dest="requery", action="store_false",
                   help="answer with the memory the question's chunk retrieved with the text before it, instead "
                        "of retrieving again with the question (generate(requery=True))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)")
    p.add_argument("--json", default=None, help="also write everything here")


def _doc_id(path: Path) -> str | None:
    """The corpus document id of a stdlib file (``stdlib/<relpath>``), None for other files."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    try:
        return "stdlib/" + path.resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def _load_model(args):
    """(model, tokenizer, is_reference, description)."""
    import torch

    import memlong
    from memlong.pretrained import default_base_model_path, load_default_base_model
    from memlong.pretrained.reference import load_reference_model, reference_model_path

    try:
        path = reference_model_path(args.model)
    except FileNotFoundError as e:
        if args.model is not None:
            raise SystemExit(str(e)) from None
        missing = str(e)
    else:
        model, tok = load_reference_model(args.retriever, path=path)
        return model, tok, True, f"reference MemLong model {path}"
    base, tok = load_default_base_model(dtype=torch.float32)
    tok.model_max_length = 10**9
    cfg = memlong.MemLongConfig.for_num_layers(base.config.num_hidden_layers, chunk_size=128, top_k=4,
                                               local_window=1024, memory_capacity=65536)
    model = memlong.wrap(base, cfg, retriever=args.retriever, tokenizer=tok).eval()
    print(RULE)
    print("NO TRAINED MEMLONG MODEL: " + missing.split(". ")[0] + ".")
    print(f"Falling back to the shipped base LM ({default_base_model_path()}) wrapped with MemLong,")
    print("with its gates CLOSED (untrained, tanh(0) = 0): memory CANNOT change this model's output, so")
    print("every with-memory number below equals its no-memory twin by construction. What is real here:")
    print("the base LM, the retriever, ingestion, memory writes, retrieval, generation, speed and memory.")
    print(RULE)
    return model, tok, False, f"shipped base LM + MemLong, gates closed (untrained) [{default_base_model_path()}]"


def _gate_summary(model) -> dict[str, float]:
    """Mean |tanh(gate)| per retrieval layer (1-based): how open each layer's memory gate is."""
    import torch

    return {str(int(k.split(".")[1]) + 1): round(float(torch.tanh(v.float()).abs().mean()), 4)
            for k, v in model.memlong_gates().items()}


def _passkey_pool(tok, need: int, exclude: str | None) -> tuple[list[int], list[str]]:
    """Token ids of held-out (test split) stdlib documents back to back, at least ``need`` of them."""
    from memlong.data.sources import stdlib_documents
    from memlong.data.split import split_of

    pool: list[int] = []
    used: list[str] = []
    for doc in stdlib_documents():
        if doc.id == exclude or split_of(doc.id) != "test":
            continue
        pool.extend(tok(doc.text + "\n\n", add_special_tokens=False)["input_ids"])
        used.append(doc.id)
        if len(pool) >= need:
            break
    return pool, used


def _ingest(model, ids, memory, label: str) -> tuple[object, float]:
    """Reads ``ids`` ``[1, S]`` into ``memory`` with a progress bar; (memory, seconds)."""
    print(f"  {label}: {ids.shape[1]:,} tokens", flush=True)
    t0 = time.perf_counter()
    model.ingest(ids, memory, progress=True)
    return memory, time.perf_counter() - t0


def run(args) -> int:
    import torch

    from memlong import profiling
    from memlong.data.split import split_of
    from memlong.evaluation import window_nll
    from memlong.recipes.eval import passkey_digits, passkey_prompt

    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.passkey_length < 0 or args.passkey_trials < 1 or args.score < 1:
        raise SystemExit("--passkey-length must be >= 0, --passkey-trials and --score >= 1")
    doc_path = Path(args.doc) if args.doc else Path(sysconfig.get_paths()["stdlib"]) / DEFAULT_DOC
    try:
        text = doc_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"cannot read --doc {doc_path}: {e}") from e
    doc_id = _doc_id(doc_path)
    split = split_of(doc_id) if doc_id else None
    if args.doc is None and split != "test":  # the default must be held out; split_of is deterministic
        raise SystemExit(f"internal error: the default document {doc_id} is in the {split} split, not test")

    print("MemLong demo: a long held-out document through MemLong's memory, on this machine's CPU.")
    model, tok, is_reference, model_desc = _load_model(args)
    cfg = model.memlong_config
    doc_ids = tok(text, add_special_tokens=False)["input_ids"]
    need = max(cfg.memory_capacity, args.passkey_length, len(doc_ids) + 64)
    capacity = args.capacity or -(-need // cfg.chunk_size) * cfg.chunk_size
    model.memlong_config = cfg = dataclasses.replace(cfg, memory_capacity=capacity)  # reading-time field
    gates = _gate_summary(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {model_desc}")
    print(f"  {model.config.num_hidden_layers} layers, {n_params / 1e6:.1f}M parameters, local window "
          f"{cfg.local_window}, memory layer {cfg.memory_layer}, retrieval layers {list(cfg.retrieval_layers)}, "
          f"chunk {cfg.chunk_size}, top-k {cfg.top_k}, capacity {cfg.memory_capacity:,} tokens")
    print(f"  retriever: {model.memlong_retriever.describe()}; gates mean |tanh| by layer: {gates}")
    where = f"{doc_id}, {split} split" + (" (held out from training)" if split == "test" else "") if doc_id \
        else "not from the training corpus"
    print(f"document: {doc_path} ({where}), {len(text):,} characters, {len(doc_ids):,} tokens")
    summary: dict = {
        "reference_model": is_reference,
        "model": model_desc,
        "memlong_config": cfg.to_dict(),
        "gates_mean_abs_tanh": gates,
        "retriever": model.memlong_retriever.describe(),
        "document": {"path": str(doc_path), "doc_id": doc_id, "split": split, "characters": len(text),
                     "tokens": len(doc_ids)},
    }
    ingest_tokens, ingest_seconds = 0, 0.0

    # (a) perplexity of the last tokens, the whole document read in order, with and without memory
    print(f"\n(a) perplexity of the document's last {min(args.score, len(doc_ids) - 1):,} tokens")
    window = torch.tensor(doc_ids)
    ppl = {}
    for name, use in (("with_memory", True), ("without_memory", False)):
        print(f"  reading {'with memory' if use else 'without memory (retrieval off, same local window)'}",
              flush=True)
        t0 = time.perf_counter()
        s, n = window_nll(model, [window], args.score, use_memory=use, progress=True)
        ppl[name] = round(math.exp(s / n), 4)
        ppl[f"{name}_seconds"] = round(time.perf_counter() - t0, 2)
        ppl["tokens_scored"] = n
        print(f"  ppl {name.replace('_', ' ')}: {ppl[name]:.3f}", flush=True)
    summary["ppl"] = ppl

    # (c) a fact planted near the start, asked for at the end
    print("\n(c) a fact planted near the start of the document, asked for at the end")
    cut = text.rfind("\n", 0, len(text) // 40) + 1  # ~2.5% into the document, at a line start
    planted = tok(text[:cut] + FACT + "\n" + text[cut:], add_special_tokens=False)["input_ids"]
    fact_ids = tok(FACT, add_special_tokens=False)["input_ids"]
    fact_at = next((i for i in range(len(planted)) if planted[i : i + len(fact_ids)] == fact_ids), None)
    if fact_at is None:  # the fact tokenized differently in context: locate it by its first characters
        fact_at = len(tok(text[:cut], add_special_tokens=False)["input_ids"])
    fact_span = (fact_at, fact_at + len(fact_ids))
    print(f"  fact: {FACT!r} at tokens {fact_span[0]:,}-{fact_span[1]:,} of {len(planted):,}")

    def overlaps_fact(span) -> bool:
        return span[0] < fact_span[1] and fact_span[0] < span[1]

    with profiling.record() as timings:
        memory, secs = _ingest(model, torch.tensor([planted]), model.new_memory(1), "reading the document with the fact")
    ingest_tokens, ingest_seconds = ingest_tokens + len(planted), ingest_seconds + secs
    bank = memory.bank(0)
    q_ids = tok(QUESTION, add_special_tokens=False)["input_ids"]
    q_emb = model.memlong_retriever.embed([q_ids])[0]
    slots, scores = bank.search(q_emb, cfg.top_k, count=False)  # the search the model runs for the question
    print("  chunks the retriever fetches from memory for the question:")
    hits = []
    for s, sc in zip(slots.tolist(), scores.tolist()):
        chunk_text = tok.decode(bank.token_ids[s].tolist()).replace("\n", " ")
        has_fact = overlaps_fact(tuple(bank.spans[s].tolist()))
        hits.append({"chunk_id": int(bank.chunk_ids[s]), "score": round(sc, 4), "has_fact": has_fact})
        print(f"    chunk {int(bank.chunk_ids[s]):>4}  cos={sc:.3f}  {'[FACT] ' if has_fact else ''}{chunk_text[:80]!r}")
    question = torch.tensor([q_ids])
    t0 = time.perf_counter()
    out = model.generate(question, memory=memory, attention_mask=torch.ones_like(question), requery=args.requery,
                         max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    gen_s = time.perf_counter() - t0
    answer = tok.decode(out[0, len(q_ids):])
    fact_chunks = [e for e in bank.entries() if overlaps_fact(e["span"])]
    summary["fact"] = {
        "fact": FACT, "question": QUESTION, "expected": "48213", "fact_tokens": list(fact_span),
        "tokens_ingested": len(planted), "ingest_seconds": round(secs, 2),
        "time_split_s": {k: round(v, 2) for k, v in timings.seconds.items()},
        "bank_chunks": len(bank), "bank_capacity_chunks": bank.capacity, "evictions": bank.evictions,
        "bank_bytes": bank.nbytes(),
        "fact_chunk_in_memory": bool(fact_chunks),
        "fact_chunk_retrievals": [e["count"] for e in fact_chunks],
        "question_top_hits": hits,
        "fact_retrieved_for_question": any(h["has_fact"] for h in hits),
        "generated": answer,
        "answer_correct": "48213" in answer,
        "generate_seconds": round(gen_s, 2),
    }
    print(f"  generated after the question: {answer!r}")
    del memory, bank

    # (b) passkey retrieval at --passkey-length tokens
    passkey: dict = {"length": args.passkey_length, "trials": args.passkey_trials, "cases": []}
    if args.passkey_length:
        L = args.passkey_length
        print(f"\n(b) passkey retrieval at {L:,} tokens, {args.passkey_trials} trial(s)")
        pool, used = _passkey_pool(tok, L + args.passkey_trials * 997, doc_id)
        print(f"  haystack: {len(pool):,} tokens from {len(used)} held-out (test split) stdlib documents")
        rng = random.Random(args.seed)
        methods = [("memory", True)] + ([("no_memory", False)] if args.passkey_baseline else [])
        for t in range(args.passkey_trials):
            key = str(rng.randrange(10_000, 100_000))
            depth = round((t + 0.5) / args.passkey_trials, 3)
            try:
                prompt = passkey_prompt(tok, pool, key, L, depth, offset=t * 997)
            except ValueError as e:
                raise SystemExit(f"--passkey-length {L}: {e}") from None
            tail = min(32, L)  # the question (and a little haystack) goes through generate()
            case = {"key": key, "depth": depth}
            for name, use in methods:
                memory = model.new_memory(1, retrieval=use)
                memory, secs = _ingest(model, torch.tensor([prompt[:-tail]]), memory,
                                       f"trial {t + 1}, key at {depth:.0%} depth, {name.replace('_', ' ')}")
                if use:
                    ingest_tokens, ingest_seconds = ingest_tokens + L - tail, ingest_seconds + secs
                ids = torch.tensor([prompt[-tail:]])
                out = model.generate(ids, memory=memory, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                     requery=args.requery,
                                     do_sample=False, pad_token_id=tok.pad_token_id)
                answer = tok.decode(out[0, ids.shape[1]:])
                case[name] = {"generated": answer, "correct": passkey_digits(answer) == key,
                              "seconds": round(secs, 2)}
                print(f"    {name.replace('_', ' '):>9}: generated {answer!r} -> "
                      f"{'correct' if case[name]['correct'] else 'wrong'} (key {key})", flush=True)
                del memory
            passkey["cases"].append(case)
        for name, _ in methods:
            passkey[f"accuracy_{name}"] = sum(c[name]["correct"] for c in passkey["cases"]) / len(passkey["cases"])
    summary["passkey"] = passkey

    # (d) speed and memory; the summary
    summary["ingest_tokens_per_s"] = round(ingest_tokens / max(ingest_seconds, 1e-9), 1)
    summary["ingest_tokens"] = ingest_tokens
    summary["torch_threads"] = torch.get_num_threads()
    summary["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)

    f = summary["fact"]
    acc = lambda k: "-" if k not in passkey else f"{passkey[k]:.0%}"  # noqa: E731
    rows = [
        ("model", model_desc),
        ("document", f"{doc_id or doc_path} ({split or 'outside the corpus'}), {len(doc_ids):,} tokens"),
        (f"(a) ppl, last {ppl['tokens_scored']:,} tokens", f"with memory {ppl['with_memory']:.3f}   "
                                                           f"without memory {ppl['without_memory']:.3f}"),
        (f"(b) passkey @ {args.passkey_length:,}", "skipped" if not args.passkey_length else
         f"with memory {acc('accuracy_memory')}   without memory {acc('accuracy_no_memory')}   "
         f"({args.passkey_trials} trial(s), exact match)"),
        ("(c) fact: generated", repr(f["generated"])),
        ("(c) fact chunk", f"in memory: {f['fact_chunk_in_memory']}, fetched for the question: "
                           f"{f['fact_retrieved_for_question']}, answer has 48213: {f['answer_correct']}"),
        ("(d) ingestion", f"{summary['ingest_tokens_per_s']:,} tokens/s over {ingest_tokens:,} tokens "
                          f"({summary['torch_threads']} torch threads)"),
        ("(d) peak RSS", f"{summary['peak_rss_bytes'] / 2**20:,.0f} MiB"),
        ("wall time", f"{summary['wall_seconds']:.0f} s"),
    ]
    print("\n" + RULE + "\nSUMMARY" + ("" if is_reference else
                                        "  (untrained gates: memory cannot change the output)"))
    print("-" * 78)
    for k, v in rows:
        print(f"{k:>28}  {v}")
    print(RULE)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0
