"""`memlong demo`: the default MemLong model on a long held-out document, offline, on a CPU.

1. loads the default MemLong model (``memlong.pretrained.load_memlong_model``: SmolLM2-135M-Instruct
   in ``training_free`` mode, no training), or ``--model NAME_OR_PATH``, and says what it is;
2. builds one long document from the corpus' test split (held out from any training): the
   stdlib's ``unittest/mock.py``, followed by further test-split stdlib files until it holds
   ``--min-tokens`` tokens, with three short made-up facts planted far back (at 5%, 15% and 30%
   of the text);
3. reads it twice: WITH memory (every 128-token chunk leaving the 1024-token local window goes to
   the bank; later tokens attend to the top-k retrieved chunks) and WITHOUT memory (the same model
   and local window, retrieval off). Each read takes all but the last ``--score`` tokens with
   ``model.ingest`` and then one forward over those last tokens, whose logits give the perplexity;
4. after each read, asks about each fact in other words than the fact's sentence (as ``memlong
   ask`` does: ``Question: ...`` / ``Answer:``, the same prompt with and without memory), each question from a
   copy of the memory as the read left it (so no question sees another's answer):
   ``generate(requery=True)``, greedy; shows which chunks the question retrieves, whether the
   fact's chunk is among them, the answer and whether it contains the expected value;
5. asks the same questions of two baselines, the base model alone: ``rag`` (the ``top_k`` chunks of
   the document most similar to the question, embedded with the same retriever, as text before
   it: :mod:`memlong.rag`) and ``base_truncated`` (the document's last tokens that fit the base
   model's trained context, then the question);
6. reading speed, peak memory (RSS), the bank's size, each method's cost (``tokens_per_second``:
   the document's tokens per second of the method's time, reading and answering;
   ``bytes_per_token``: :mod:`memlong.cost`); a summary table (and ``--json OUT``).

It shows what the model does; no number here is adjusted or selected.

    memlong demo [--model NAME_OR_PATH] [--doc PATH] [--min-tokens 32768] [--score 2048] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import resource
import sysconfig
import time
from pathlib import Path

from memlong.config import add_overrides_argument
from memlong.report import write_markdown

DEFAULT_DOC = "unittest/mock.py"  # relative to the stdlib; document id stdlib/unittest/mock.py (test split)
# appended whole, in this order, while the document is shorter than --min-tokens (all in the test split)
EXTRA_DOCS = ("test/test_support.py", "socketserver.py", "weakref.py")
SEPARATOR = "\n\n"
RULE = "=" * 78

# (depth, fact sentence, question in other words); the {value} in braces, drawn with --seed, is the expected answer
FACTS = (
    (0.05, "The release vault passkey is {number}.", "What is the passkey of the release vault?"),
    (
        0.15,
        "Captain Orla {name} commands the supply ship Halcyon Drift.",
        "Who is the captain of the supply ship Halcyon Drift?",
    ),
    (
        0.30,
        "The ferry to Korvath Island departs from pier {pier}.",
        "From which pier does the Korvath Island ferry leave?",
    ),
)
SURNAMES = ("Venmire", "Quillacre", "Dorrowind", "Tallisker", "Brackenholt", "Marrowgate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="a MemLong directory or base model name/path for memlong.pretrained.load_memlong_model "
        "(default: the shipped default MemLong model, SmolLM2-135M-Instruct, training_free)",
    )
    p.add_argument(
        "--doc",
        default=None,
        help=f"text file to read (default: the stdlib's {DEFAULT_DOC}, held out); extended with "
        f"held-out stdlib files while shorter than --min-tokens",
    )
    p.add_argument(
        "--min-tokens",
        type=int,
        default=32768,
        help="append held-out stdlib files (whole) while the document is shorter (0: never)",
    )
    p.add_argument("--score", type=int, default=2048, help="perplexity of the document's last N tokens")
    p.add_argument(
        "--retriever",
        default="minilm",
        help="minilm (default), hashing, embedding (the LM's own pooled input embeddings), "
        "or a sentence-transformers path",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=32,
        help="tokens generated after each question (an answer that first restates the question needs "
        "20 or more; `memlong ask` gives 64)",
    )
    p.add_argument("--seed", type=int, default=0, help="draws the planted facts' numbers and name")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default, or 1 when other processes already load the CPU)",
    )
    p.add_argument("--json", default=None, help="also write everything here")
    add_overrides_argument(p, "--set question_fresh_window=true --set top_k=8")


def _doc_id(path: Path) -> str | None:
    """The corpus document id of a stdlib file (``stdlib/<relpath>``), None for other files."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    try:
        return "stdlib/" + path.resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"cannot read {path}: {e}") from e


def build_document(tok, doc_path: Path, min_tokens: int) -> tuple[str, list[dict]]:
    """``doc_path``'s text, followed (``SEPARATOR`` between) by :data:`EXTRA_DOCS` while it is
    shorter than ``min_tokens`` tokens; and the parts: ``{path, doc_id, split, start, end}``
    (character range in the text)."""
    from memlong.data.split import split_of

    root = Path(sysconfig.get_paths()["stdlib"])
    paths = [doc_path] + [root / rel for rel in EXTRA_DOCS if (root / rel).resolve() != doc_path.resolve()]
    text, parts = "", []
    for i, path in enumerate(paths):
        if i and len(tok(text, add_special_tokens=False)["input_ids"]) >= min_tokens:
            break
        if i and not path.is_file():
            continue
        doc_id = _doc_id(path)
        split = split_of(doc_id) if doc_id else None
        if i and split != "test":  # the extras must be held out too; split_of is deterministic
            raise SystemExit(f"internal error: {doc_id} is in the {split} split, not test")
        if i:
            text += SEPARATOR
        start = len(text)
        text += _read(path)
        parts.append({"path": str(path), "doc_id": doc_id, "split": split, "start": start, "end": len(text)})
    return text, parts


def plant_facts(text: str, parts: list[dict], seed: int) -> tuple[str, list[dict]]:
    """Inserts each of :data:`FACTS` on its own line at the line start nearest before its depth
    (a fraction of the characters); returns the new text (``parts`` shifted in place) and the
    facts: sentence, question, expected value, depth, character span."""
    rng = random.Random(seed)
    values = {
        "number": str(rng.randrange(10_000, 100_000)),
        "name": rng.choice(SURNAMES),
        "pier": str(rng.randrange(11, 100)),
    }
    facts = []
    for depth, sentence, question in FACTS:
        key = re.search(r"\{(\w+)\}", sentence).group(1)
        facts.append(
            {
                "depth": depth,
                "fact": sentence.format(**values),
                "question": question,
                "expected": values[key],
                "at": text.rfind("\n", 0, int(depth * len(text))) + 1,
            }
        )
    for f in sorted(facts, key=lambda f: -f["at"]):  # back to front: earlier insertion points stay valid
        line = f["fact"] + "\n"
        text = text[: f["at"]] + line + text[f["at"] :]
        for p in parts:
            p["start"] += len(line) if p["start"] > f["at"] else 0
            p["end"] += len(line) if p["end"] >= f["at"] else 0
    for f in facts:
        del f["at"]
        start = text.index(f["fact"])
        f["chars"] = [start, start + len(f["fact"])]
        f["in_document"] = next((p["doc_id"] or p["path"] for p in parts if p["start"] <= start < p["end"]), None)
    return text, facts


def _contains(answer: str, expected: str) -> bool:
    """Whether ``answer`` states ``expected`` (a whole number / word, case-insensitive)."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(expected)}(?![0-9A-Za-z])", answer, re.IGNORECASE) is not None


def _overlaps(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _describe(model, name) -> dict:
    from memlong.pretrained import DEFAULT_MEMLONG_MODEL

    cfg = model.memlong_config
    return {
        "model": "default" if name in (None, "default") else str(name),
        "model_path": str(DEFAULT_MEMLONG_MODEL) if name in (None, "default") else str(name),
        "base_model": str(getattr(model.config, "_name_or_path", "") or model.config.model_type),
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": model.config.num_hidden_layers,
        "max_position_embeddings": getattr(model.config, "max_position_embeddings", None),
        "mode": cfg.mode,
        "bank_layers": [i + 1 for i in cfg.bank_layers],
        "bank_heads": [list(p) for p in cfg.bank_heads] if cfg.bank_heads is not None else None,
        "chunk_size": cfg.chunk_size,
        "top_k": cfg.top_k,
        "local_window": cfg.local_window,
        "memory_capacity": cfg.memory_capacity,
        "bank_dtype": cfg.bank_dtype,
        "memlong": cfg.to_dict(),  # every field, as eval reports record it (config.memlong)
        "retriever": model.memlong_retriever.describe(),
    }


def _retriever_name(info: dict) -> str:
    extra = info.get("model") or info.get("name")
    return (
        f"{info.get('class', '?')} ({Path(str(extra)).name}, dim {info.get('dim')})"
        if extra
        else f"{info.get('class', '?')} (dim {info.get('dim')})"
    )


def _peak_rss() -> int:
    """Peak resident memory of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _read_document(model, ids, offsets, score: int, use_memory: bool, label: str) -> tuple[object, dict]:
    """Reads ``ids`` ``[1, L]`` into a fresh memory: all but the last ``score`` tokens with
    ``ingest``, then one forward over the rest whose logits score them. (memory, record)."""
    import torch

    L = ids.shape[1]
    n = min(score, L - 1)
    start = L - n - 1
    memory = model.new_memory(1, retrieval=use_memory)
    print(
        f"  reading {label}: {start:,} tokens with ingest, then {n + 1:,} in one forward scoring the last {n:,}",
        flush=True,
    )
    t0 = time.perf_counter()
    if start:
        model.ingest(ids[:, :start], memory, progress=True, char_offsets=offsets[:, :start], desc="read")
    t1 = time.perf_counter()
    with torch.no_grad():
        logits = (
            model(ids[:, start:], cache=memory, logits_to_keep=n + 1, char_offsets=offsets[:, start:])
            .logits[0, :-1]
            .float()
        )
    nll = float(torch.nn.functional.cross_entropy(logits, ids[0, L - n :], reduction="sum"))
    del logits
    t2 = time.perf_counter()
    rec = {
        "tokens": L,
        "tokens_scored": n,
        "ppl": round(math.exp(nll / n), 4),
        "ingest_seconds": round(t1 - t0, 2),
        "scored_forward_seconds": round(t2 - t1, 2),
        "seconds": round(t2 - t0, 2),
        "tokens_per_s": round(L / (t2 - t0), 1),
        "peak_rss_bytes_after_read": _peak_rss(),
    }
    print(
        f"  read {L:,} tokens in {rec['seconds']:.0f} s ({rec['tokens_per_s']:.0f} tokens/s); "
        f"ppl of the last {n:,}: {rec['ppl']:.3f}",
        flush=True,
    )
    return memory, rec


def _question_retrieval(model, tok, memory, q_ids: list[int], fact: dict, text: str) -> dict:
    """The chunks ``generate(requery=True)`` gives the question and its answer: the question's
    embedding searches the bank; when the config re-ranks (``rerank_candidates``), the
    candidates (every chunk with the bank's window index) are scored again by their best
    ``rerank_window``-token window, plus ``lexical_weight`` times the share of the question's words
    each holds, as :meth:`MemLongCache.focus_on` does, and the best ``top_k`` kept. Counters are
    not touched."""
    cfg = model.memlong_config
    bank = memory.bank(0)
    q_tokens = q_ids[-cfg.chunk_size :]  # what focus_on embeds
    slots, final = (t.tolist() for t in memory.question_hits(model.memlong_retriever, q_tokens))
    q_emb = model.memlong_retriever.embed([q_tokens])[0]
    all_slots, cos = bank.search(q_emb, len(bank), count=False)  # every chunk by its embedding, best first
    cos_of = dict(zip(all_slots.tolist(), cos.tolist()))
    candidates = memory.question_search(0, q_emb, model.memlong_retriever).get("candidates", 0)
    reranked = min(candidates, len(bank)) if candidates > cfg.top_k else 0  # as bank.best decides

    def has_fact(s: int) -> bool:
        return bool(bank.text_spans[s, 0] >= 0) and _overlaps(tuple(bank.text_spans[s].tolist()), fact["chars"])

    hits = []
    for s, sc in zip(slots, final):
        span = tuple(bank.text_spans[s].tolist())
        chunk_text = text[span[0] : span[1]] if span[0] >= 0 else tok.decode(bank.token_ids[s].tolist())
        hits.append(
            {
                "chunk_id": int(bank.chunk_ids[s]),
                "score": round(sc, 4),
                "cosine": round(cos_of[s], 4),
                "text_span": list(span),
                "has_fact": has_fact(s),
                "text_start": chunk_text[:100],
            }
        )
    ranks = [r + 1 for r, s in enumerate(all_slots.tolist()) if has_fact(s)]
    return {
        "retrieved": hits,
        "fact_retrieved": any(h["has_fact"] for h in hits),
        "fact_chunk_rank_by_embedding": min(ranks) if ranks else None,  # among all chunks, 1 = best
        "reranked_candidates": reranked,
        "bank_chunks": len(bank),
    }


def _ask(model, tok, memory, fact: dict, text: str, max_new_tokens: int) -> dict:
    """One question on ``memory`` (consumed), put as ``memlong ask`` puts it (``Question: ...`` /
    ``Answer:``, retrieval focused on it): the chunks it retrieves, the greedy answer."""
    from memlong.qa import answer, question_ids

    prompt, query = question_ids(tok, fact["question"], chat=False)
    rec: dict = {"prompt": tok.decode(prompt)}
    if memory.retrieval:
        rec.update(_question_retrieval(model, tok, memory, query, fact, text))
    rec["answer"], seconds = answer(model, tok, memory, fact["question"], chat=False, max_new_tokens=max_new_tokens)
    rec["correct"] = _contains(rec["answer"], fact["expected"])
    rec["generate_seconds"] = round(seconds, 2)
    return rec


def _baselines(model, tok, base, ids, offsets, facts: list[dict], max_new_tokens: int) -> tuple[list, list, float]:
    """Each fact's question put to the base model alone, as :func:`_ask` puts it: ``rag`` (the
    document's chunks embedded once; the answer reads the top-k as text, :func:`memlong.qa.rag_answer`)
    and ``base_truncated`` (the document's last tokens that fit the base model's context before
    the question). (rag records, base_truncated records, seconds embedding the chunks)."""
    import torch
    from transformers import StoppingCriteriaList

    from memlong.qa import answer_end, plain_answer, question_ids, rag_answer
    from memlong.rag import embed_context

    doc, spans = ids[0].tolist(), offsets[0].tolist()
    t0 = time.perf_counter()
    embeddings = embed_context(model, doc, (0, len(doc)))
    embed_seconds = time.perf_counter() - t0
    window = int(base.config.max_position_embeddings)
    rag_recs, trunc_recs = [], []
    for i, f in enumerate(facts):
        print(f"  Q{i + 1} ({f['depth']:.0%}): {f['question']!r}  expected {f['expected']!r}", flush=True)
        reply, rag, seconds = rag_answer(model, base, tok, doc, embeddings, f["question"], False, max_new_tokens)
        chars = [[spans[a][0], spans[b - 1][1]] for a, b in rag.spans]
        rag_recs.append(
            {
                "answer": reply,
                "correct": _contains(reply, f["expected"]),
                "generate_seconds": round(seconds, 2),
                **rag.record(),
                "fact_retrieved": any(_overlaps(chars[i], f["chars"]) for i in rag.chosen),
                "fact_chunk_rank": next(
                    (r + 1 for r, i in enumerate(rag.ranking) if _overlaps(chars[i], f["chars"])), None
                ),
            }
        )
        r = rag_recs[-1]
        print(
            f"    rag read chunks {r['rag_chunks']} of {r['rag_context_chunks']} as text; the fact's chunk ranks "
            f"{r['fact_chunk_rank']} by embedding",
            flush=True,
        )
        _print_answer("rag", r, f)
        prompt = question_ids(tok, f["question"], chat=False)[0]
        x = torch.tensor([(doc + prompt)[-(window - max_new_tokens) :]])
        t0 = time.perf_counter()
        with torch.no_grad():
            out = base.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                stopping_criteria=StoppingCriteriaList([answer_end(tok, x.shape[1])]),
            )
        reply = plain_answer(tok.decode(out[0, x.shape[1] :], skip_special_tokens=True))[0].strip()
        trunc_recs.append(
            {
                "answer": reply,
                "correct": _contains(reply, f["expected"]),
                "tokens_read": x.shape[1],
                "generate_seconds": round(time.perf_counter() - t0, 2),
            }
        )
        _print_answer("base_truncated", trunc_recs[-1], f)
    return rag_recs, trunc_recs, embed_seconds


def _print_answer(name: str, rec: dict, fact: dict) -> None:
    if "retrieved" in rec:
        how = (
            f"re-ranked from the top {rec['reranked_candidates']} by embedding"
            if rec["reranked_candidates"]
            else "by embedding"
        )
        print(
            f"    retrieved for the answer: top-{len(rec['retrieved'])} of {rec['bank_chunks']} chunks, {how}; "
            f"the fact's chunk ranks {rec['fact_chunk_rank_by_embedding']} by embedding"
        )
        for h in rec["retrieved"]:
            start = h["text_start"][:64].replace("\n", " ")
            print(
                f"      chunk {h['chunk_id']:>4}  score={h['score']:.3f} cos={h['cosine']:.3f}  "
                f"{'[FACT] ' if h['has_fact'] else '       '}{start!r}"
            )
    verdict = "contains" if rec["correct"] else "does NOT contain"
    print(f"    {name:>14}: {rec['answer'].strip()[:80]!r}  -> {verdict} {fact['expected']!r}", flush=True)


def run(args) -> int:
    import torch

    from memlong.config import MemLongConfigError, apply_overrides
    from memlong.memory.budget import plan_reading
    from memlong.pretrained import load_memlong_model

    t_start = time.perf_counter()
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    busy = load > cores / 2  # other processes use the CPU: threads fighting them slow every step several-fold
    if args.threads or busy:
        torch.set_num_threads(args.threads or 1)
    if args.score < 1 or args.min_tokens < 0 or args.max_new_tokens < 1:
        raise SystemExit("--score and --max-new-tokens must be >= 1, --min-tokens >= 0")
    doc_path = Path(args.doc) if args.doc else Path(sysconfig.get_paths()["stdlib"]) / DEFAULT_DOC
    if not doc_path.is_file():
        raise SystemExit(f"--doc {doc_path}: no such file")

    print("MemLong demo: a long held-out document read with and without MemLong's memory, on this CPU.")
    print(
        f"  {torch.get_num_threads()} torch threads, {cores} cores, load average {load:.1f} at start"
        + (
            " (other processes are using the CPU: 1 thread, which competes least; --threads N to choose)"
            if busy and not args.threads
            else ""
        ),
        flush=True,
    )
    if busy:
        print(
            "  NOTE: the CPU is shared with other processes; times and speeds below are slower than on an idle machine",
            flush=True,
        )
    print("\n[1/5] loading the model", flush=True)
    t0 = time.perf_counter()
    model, tok = load_memlong_model(args.model, retriever=args.retriever)
    try:
        apply_overrides(model, args.overrides)
    except MemLongConfigError as e:
        raise SystemExit(f"memlong demo: {e}") from None
    model_info = {**_describe(model, args.model), "overrides": list(args.overrides)}
    model_info["load_seconds"] = round(time.perf_counter() - t0, 1)
    m = model_info
    layers = m["bank_layers"]
    contiguous = layers == list(range(layers[0], layers[-1] + 1))
    banked = f"layers {layers[0]}..{layers[-1]}" if contiguous else f"layers {layers}"
    if m["bank_heads"] is not None:
        banked = f"{len(m['bank_heads'])} KV heads (layers {sorted({layer for layer, _ in m['bank_heads']})})"
    print(
        f"  {'the default MemLong model' if m['model'] == 'default' else 'MemLong model'} ({m['model_path']})\n"
        f"  base {m['base_model']}: {m['parameters'] / 1e6:.1f}M parameters, {m['layers']} layers, "
        f"{m['max_position_embeddings']} positions\n  mode {m['mode']}: banks the K/V of "
        f"{banked} for every "
        f"{m['chunk_size']}-token chunk; top-{m['top_k']} chunks retrieved beside a {m['local_window']}-token "
        f"local window (bank dtype {m['bank_dtype'] or 'model'}, capacity {m['memory_capacity']:,} tokens)\n"
        f"  retriever: {_retriever_name(m['retriever'])}; loaded in {m['load_seconds']:.0f} s",
        flush=True,
    )

    print("\n[2/5] the document", flush=True)
    text, parts = build_document(tok, doc_path, args.min_tokens)
    if args.doc is None and parts[0]["split"] != "test":  # the default must be held out; split_of is deterministic
        raise SystemExit(f"internal error: the default document {parts[0]['doc_id']} is not in the test split")
    text, facts = plant_facts(text, parts, args.seed)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, return_tensors="pt")
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    L = ids.shape[1]
    starts = offsets[0, :, 0].tolist()
    for p in parts:
        p["tokens_from"] = next((i for i, s in enumerate(starts) if s >= p["start"]), L)
        p["characters"] = p["end"] - p["start"]
        held = (
            "test split, held out"
            if p["split"] == "test"
            else (f"{p['split']} split" if p["split"] else "not from the corpus")
        )
        print(f"  {p['doc_id'] or p['path']} ({held}): {p['characters']:,} characters, from token {p['tokens_from']:,}")
    for i, p in enumerate(parts):
        p["tokens"] = (parts[i + 1]["tokens_from"] if i + 1 < len(parts) else L) - p["tokens_from"]
    if L < args.min_tokens:
        print(f"  NOTE: {L:,} tokens, fewer than --min-tokens {args.min_tokens:,} (no more documents to append)")
    print(f"  in all {len(text):,} characters, {L:,} tokens (this model's tokenizer)")
    for f in facts:
        f["token"] = next((i for i, s in enumerate(starts) if s >= f["chars"][0]), L)
        print(f"  planted at {f['depth']:.0%} (token {f['token']:,}): {f['fact']!r}")
    plan = plan_reading(model.new_memory(1), L)
    if plan.evicts:  # said before reading: nothing is dropped silently
        print(f"  warning: {plan.warning('memory_capacity=N in the MemLong config of a --model DIR')}")
    score = min(args.score, L - 1)
    print(
        f"  the local window holds {model.memlong_config.local_window:,} tokens; every fact lies "
        f"{min(L - f['token'] for f in facts):,}+ tokens before the questions"
    )

    results: dict = {"memory": {}, "no_memory": {}}
    answers: dict = {"memory": [], "no_memory": []}
    bank_info: dict = {}
    for step, (name, use) in enumerate((("memory", True), ("no_memory", False))):
        what = "WITH memory" if use else "WITHOUT memory (retrieval off: the same model and local window)"
        print(f"\n[{3 + step}/5] reading {what}", flush=True)
        memory, rec = _read_document(model, ids, offsets, score, use, "with memory" if use else "without memory")
        results[name] = rec
        if use:
            bank = memory.bank(0)
            banked = len(bank) * bank.layout.chunk_size
            bank_info = {
                "chunks": len(bank),
                "tokens": banked,
                "capacity_chunks": bank.capacity,
                "evictions": bank.evictions,
                "bytes": bank.nbytes(),
                "bytes_per_token": round(bank.nbytes() / max(1, banked), 1),
                "kv_bytes_per_token": bank.layout.kv_bytes_per_token(),
                "memory_bytes_with_window": memory.nbytes(),
                "evicted": bank.evicted_report(),
                "reading_plan": plan.to_dict(),
            }
            in_bank = [e for e in bank.entries() if e["text_span"][0] >= 0]
            for f in facts:
                f["fact_chunks"] = [e["chunk_id"] for e in in_bank if _overlaps(e["text_span"], f["chars"])]
            print(
                f"  bank: {bank_info['chunks']:,} chunks ({banked:,} tokens), {bank_info['bytes'] / 2**20:,.1f} MiB, "
                f"{bank_info['bytes_per_token']:,.0f} bytes per token, {bank.evictions} evictions",
                flush=True,
            )
            evicted = bank_info["evicted"]
            if evicted["chunks"]:
                print(
                    f"  evicted while reading: {evicted['chunks']:,} chunks ({evicted['tokens']:,} tokens), token "
                    f"ranges {', '.join(f'{a:,}-{b:,}' for a, b in evicted['spans'][:8])}"
                    f"{' ...' if len(evicted['spans']) > 8 else ''} (all in --json)",
                    flush=True,
                )
        print(
            f"  asking the {len(facts)} questions, each from a copy of this memory "
            f"(greedy, {args.max_new_tokens} new tokens, requery=True)",
            flush=True,
        )
        if memory.retrieval:  # the window index once, before the copies (each would build it again)
            t0 = time.perf_counter()
            memory.index_windows(model.memlong_retriever)
            rec["window_index_seconds"] = round(time.perf_counter() - t0, 2)
        rec["memory_copy_seconds"] = 0.0
        for i, f in enumerate(facts):
            print(f"  Q{i + 1} ({f['depth']:.0%}): {f['question']!r}  expected {f['expected']!r}", flush=True)
            t0 = time.perf_counter()
            copy = memory.clone()  # each question reads into its own copy
            rec["memory_copy_seconds"] = round(rec["memory_copy_seconds"] + time.perf_counter() - t0, 2)
            a = _ask(model, tok, copy, f, text, args.max_new_tokens)
            del copy
            answers[name].append(a)
            _print_answer("with memory" if use else "without memory", a, f)
        del memory

    print(
        "\n[5/5] the baselines, the base model alone: rag (the top-k chunks as text) and base_truncated "
        "(the last tokens that fit its context)",
        flush=True,
    )
    from memlong.cost import bytes_per_token
    from memlong.pretrained import base_model_of
    from memlong.qa import BaseModelUnavailable, load_base

    try:
        base = load_base(base_model_of(args.model))
    except BaseModelUnavailable as e:
        raise SystemExit(f"memlong demo: {e}") from None
    answers["rag"], answers["base_truncated"], rag_seconds = _baselines(
        model, tok, base, ids, offsets, facts, args.max_new_tokens
    )
    cost = {}
    for name, method in (
        ("memory", "memlong"),
        ("no_memory", "memlong_no_memory"),
        ("rag", "rag"),
        ("base_truncated", "base_truncated"),
    ):
        busy = sum(a["generate_seconds"] for a in answers[name]) + (
            rag_seconds if name == "rag" else results[name]["seconds"] if name in results else 0
        )
        chunks = -(-L // model.memlong_config.chunk_size)  # rag: an embedding per chunk of the document
        cost[name] = {
            "tokens_per_second": round(L / busy, 1),
            "bytes_per_token": bytes_per_token(method, model, base, (chunks, L)),
        }

    summary: dict = {
        "model": model_info,
        "document": {"parts": parts, "characters": len(text), "tokens": L, "min_tokens": args.min_tokens},
        "facts": [
            {**f, "memory": a, "no_memory": b, "rag": c, "base_truncated": d}
            for f, a, b, c, d in zip(
                facts, answers["memory"], answers["no_memory"], answers["rag"], answers["base_truncated"]
            )
        ],
        "cost": cost,
        "rag_embed_seconds": round(rag_seconds, 2),
        "ppl": {
            "tokens_scored": score,
            "with_memory": results["memory"]["ppl"],
            "without_memory": results["no_memory"]["ppl"],
        },
        "reading": results,
        "bank": bank_info,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": cores,
        "load_average_at_start": round(load, 2),
        "peak_rss_bytes": _peak_rss(),  # overall, including the memory copies made for the questions
        "peak_rss_bytes_reading_with_memory": results["memory"]["peak_rss_bytes_after_read"],
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
    }
    summary["answered"] = {k: sum(a["correct"] for a in answers[k]) for k in answers}
    summary["accuracy"] = {k: v / len(facts) for k, v in summary["answered"].items()}
    summary["facts_retrieved"] = sum(bool(a.get("fact_retrieved")) for a in answers["memory"])
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    _print_summary(summary)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}\nwrote {write_markdown(summary, args.json)}")
    return 0


def _print_summary(s: dict) -> None:
    m, d, ppl, r, b = s["model"], s["document"], s["ppl"], s["reading"], s["bank"]
    yes = lambda v: "yes" if v else "no"  # noqa: E731
    docs = " + ".join(f"{p['doc_id'] or Path(p['path']).name} ({p['tokens']:,})" for p in d["parts"])
    rows = [
        (
            "model",
            f"{Path(m['base_model']).name}, {m['parameters'] / 1e6:.1f}M params, {m['layers']} layers, {m['mode']}",
        ),
        ("memory layout", f"chunk {m['chunk_size']}, top-{m['top_k']}, local window {m['local_window']}"),
        ("document", f"{d['tokens']:,} tokens: {docs}"),
    ]
    for i, f in enumerate(s["facts"]):
        mem, no = f["memory"], f["no_memory"]
        rows.append(
            (
                f"Q{i + 1} fact at {f['depth']:.0%} (tok {f['token']:,})",
                f"expected {f['expected']!r}; fact chunk retrieved: {yes(mem.get('fact_retrieved'))} "
                f"(rank by embedding {mem.get('fact_chunk_rank_by_embedding')})",
            )
        )
        rows.append(("  with memory", f"{'RIGHT' if mem['correct'] else 'wrong'}  {mem['answer'].strip()[:50]!r}"))
        rows.append(("  without memory", f"{'RIGHT' if no['correct'] else 'wrong'}  {no['answer'].strip()[:50]!r}"))
        for name in ("rag", "base_truncated"):
            if name in f:  # (the baselines)
                a = f[name]
                rows.append((f"  {name}", f"{'RIGHT' if a['correct'] else 'wrong'}  {a['answer'].strip()[:50]!r}"))
    n, got = len(s["facts"]), s["answered"]
    change = (ppl["with_memory"] / ppl["without_memory"] - 1) * 100
    rows += [
        (
            "facts answered",
            f"with memory {got['memory']}/{n}, without memory {got['no_memory']}/{n}, rag "
            f"{got.get('rag', '-')}/{n}, base_truncated {got.get('base_truncated', '-')}/{n}; "
            f"fact chunk retrieved {s['facts_retrieved']}/{n}",
        ),
        (
            f"ppl, last {ppl['tokens_scored']:,} tokens",
            f"with memory {ppl['with_memory']:.3f}, without memory {ppl['without_memory']:.3f} ({change:+.1f}%)",
        ),
        (
            "reading speed",
            f"with memory {r['memory']['tokens_per_s']:,.0f} tokens/s, without memory "
            f"{r['no_memory']['tokens_per_s']:,.0f} tokens/s ({s['torch_threads']} threads)",
        ),
        ("bank", f"{b['chunks']:,} chunks, {b['bytes'] / 2**20:,.1f} MiB, {b['bytes_per_token']:,.0f} bytes/token"),
        *(
            (f"cost: {name}", f"{c['tokens_per_second']:,.0f} tokens/s, {c['bytes_per_token']:,.0f} bytes/token")
            for name, c in s.get("cost", {}).items()
        ),
        (
            "peak RSS",
            f"{s['peak_rss_bytes_reading_with_memory'] / 2**20:,.0f} MiB after reading with memory; "
            f"{s['peak_rss_bytes'] / 2**20:,.0f} MiB in all (with the memory copies for the questions)",
        ),
        ("wall time", f"{s['wall_seconds']:.0f} s"),
    ]
    print("\n" + RULE + "\nSUMMARY\n" + "-" * 78)
    for k, v in rows:
        print(f"{k:>28}  {v}")
    print(RULE)
