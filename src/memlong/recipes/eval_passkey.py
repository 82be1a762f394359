"""`memlong eval passkey`: a passkey (random digits) is stated once inside a haystack of real text
(held-out documents) at a given depth and asked for at the end; accuracy is the exact match of
the greedily generated digits, over several trials per length and depth, for the methods of
``eval ppl``. For ``memlong`` with the question re-querying memory (the default), each answer also
records whether the chunks the question retrieves hold the key (``key_retrieved``) and the rank
of the key's chunk among all banked chunks by the retriever's similarity (``key_chunk_rank``,
1 = best): a miss is then a retrieval miss or a reading miss. ``rag`` (the base model on the
``top_k`` haystack chunks most similar to the question, as text: :mod:`memlong.rag`) records the
same two of its own chunks. Every row also carries its cost: ``tokens_per_second`` (prompt
tokens per second of the method's time) and ``bytes_per_token`` (:mod:`memlong.cost`). The MemLong
methods read what a trial's prompts share (one haystack up to the shallowest needle) once, each
answer as from a fresh memory; a length's seconds are split evenly over its depths' rows.

    memlong eval passkey --model PATH --data PATH --lengths 4096,65536 --depths 0.1,0.5,0.9 --trials 3
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from memlong.recipes.eval_common import DATA_HELP, METHODS, Skip, generate_answer, measured, run_by_length

DEFAULT_LENGTHS = "4096,8192,16384,32768,65536"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``memlong eval passkey`` beside the shared ones (:mod:`memlong.recipes.eval`)."""
    p.add_argument("--data", required=True, help=f"the haystack's text: {DATA_HELP}")
    p.add_argument("--depths", default="0.1,0.5,0.9", help="where the key is stated (fractions)")
    p.add_argument("--trials", type=int, default=3, help="trials per length and depth")


#: the flags that decide the prompts (keys are drawn in order over lengths, depths and trials) and
#: how they are read: a resumed run must share them
SAME_PROMPTS = ("seed", "lengths", "depths", "trials", "data", "split", "model", "overrides", "retriever", "requery")


def run(args, methods: list[str]) -> int:
    return run_by_length(args, methods, DEFAULT_LENGTHS, _run_passkey, plot, _cell, SAME_PROMPTS)


def _cell(row: dict) -> tuple:
    return row["method"], row["length"], row["depth"]


def passkey_question_ids(tok) -> list[int]:
    """The tokens that end every passkey prompt: the question, "What is the pass key? The pass key is"."""
    from memlong.training import PASSKEY_QUESTION

    return tok("\n" + PASSKEY_QUESTION.split("{key}")[0].rstrip(), add_special_tokens=False)["input_ids"]


def passkey_prompt(tok, pool: list[int], key: str, length: int, depth: float, offset: int = 0) -> list[int]:
    """``length`` tokens: haystack from ``pool`` (starting at ``offset``) with the passkey statement
    at ``depth`` of it, ending with the question whose answer is ``key``."""
    from memlong.training import PASSKEY_STATEMENT

    q_ids = passkey_question_ids(tok)
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


def key_retrieval(model, tok, memory, question: list[int], key: str) -> dict:
    """Whether the chunks ``question`` retrieves from ``memory`` (as ``generate(requery=...)``
    focuses it; searched again after the answer, counters untouched) hold ``key``; and the rank
    of the best chunk holding it among all banked chunks by the retriever's similarity (1 = best;
    None when no banked chunk holds all its digits: still in the local window, or split between
    two chunks)."""
    bank, query = memory.bank(0), question[-model.memlong_config.chunk_size :]
    slots, _ = memory.question_hits(model.memlong_retriever, query)
    holds = {s for s in bank.valid.nonzero().flatten().tolist() if key in tok.decode(bank.token_ids[s].tolist())}
    ranked, _ = bank.search(model.memlong_retriever.embed([query])[0], len(bank), count=False)
    ranks = [r + 1 for r, s in enumerate(ranked.tolist()) if s in holds]
    return {
        "key_retrieved": any(s in holds for s in slots.tolist()),
        "key_chunk_rank": min(ranks) if ranks else None,
        "bank_chunks": len(bank),
    }


def passkey_cases(args, tok, lengths: list[int]) -> Iterator[tuple[int, float, list]]:
    """The prompts of a run: for each length and depth (``--depths``), ``--trials`` pairs of (key,
    prompt ids ``[1, length]``), the haystack being the held-out documents of ``--data`` back to
    back and the keys drawn in order from ``--seed``."""
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
    for L in lengths:
        for depth in depths:
            cases = []
            for t in range(args.trials):
                key = str(rng.randrange(10_000, 100_000))
                cases.append((key, torch.tensor([passkey_prompt(tok, pool, key, L, depth, offset=t * 997)])))
            yield L, depth, cases


def rag_key_retrieval(tok, ids: list[int], rag, key: str) -> dict:
    """As :func:`key_retrieval`, for the chunks ``rag`` (a :class:`memlong.rag.RagPrompt` of the
    prompt ``ids``) put in its prompt: whether one holds ``key``, and the rank of the best chunk
    holding it among all the context's chunks by similarity to the question (1 = best; None when
    no chunk holds all its digits)."""
    holds = {i for i, (a, b) in enumerate(rag.spans) if key in tok.decode(ids[a:b])}
    ranks = [r + 1 for r, i in enumerate(rag.ranking) if i in holds]
    return {
        "key_retrieved": any(i in holds for i in rag.chosen),
        "key_chunk_rank": min(ranks) if ranks else None,
        **rag.record(),
    }


def _run_passkey(args, tok, model, base, base_window, lengths, methods, have=frozenset()) -> Iterator[dict]:
    from memlong.cost import bytes_per_token, tokens_per_second

    new_tokens = 8
    q_len = len(passkey_question_ids(tok))
    q = q_len if args.requery else False
    for L, groups in _by_length(passkey_cases(args, tok, lengths)):
        for method in methods:
            every = [{"method": method, "length": L, "depth": depth, "trials": len(cases)} for depth, cases in groups]
            rows, todo = [], []
            for row, pair in zip(every, groups):
                if _cell(row) not in have:
                    rows.append(row)
                    todo.append(pair)
            if not todo:
                continue
            group: dict = {}
            with measured(group, "accuracy"):
                if method == "base_full" and L > args.max_base_length:
                    raise Skip(f"not attempted above --max-base-length={args.max_base_length}")
                answers, kept = _answers(args, method, model, base, tok, base_window, todo, new_tokens, q, q_len)
            for row, (depth, cases) in zip(rows, todo):
                row["seconds"] = round(group["seconds"] / len(rows), 2)  # a length's reading is shared
                if group.get("accuracy", 0) is None:
                    row.update(accuracy=None, note=group["note"])
                else:
                    mine = answers[depth]
                    row.update(accuracy=sum(a.pop("right") for a in mine) / len(cases), answers=mine)
                    if any("key_retrieved" in a for a in mine):
                        row["key_retrieved"] = sum(a["key_retrieved"] for a in mine) / len(mine)
                row["tokens_per_second"] = (
                    tokens_per_second(L * len(cases), row["seconds"]) if row.get("accuracy") is not None else None
                )
                rag_kept = kept.get(depth, (0, 0)) if row.get("accuracy") is not None else (0, 0)
                row["bytes_per_token"] = (
                    bytes_per_token(method, model, base, rag_kept) if method != "rag" or rag_kept[1] else None
                )
                acc = f"{row['accuracy']:.2f}" if row.get("accuracy") is not None else "-"
                found = f"key retrieved {row['key_retrieved']:.2f}  " if "key_retrieved" in row else ""
                print(
                    f"{method:>18} L={L:>7} depth={depth:.2f}  accuracy {acc}  {found}({row['trials']} trials) "
                    f"{row.get('note', '')}",
                    flush=True,
                )
                yield row


def _by_length(cases) -> Iterator[tuple[int, list[tuple[float, list]]]]:
    """:func:`passkey_cases` grouped: (length, [(depth, cases), ...]) for each length."""
    import itertools

    for L, items in itertools.groupby(cases, key=lambda c: c[0]):
        yield L, [(depth, trials) for _, depth, trials in items]


def _answers(args, method, model, base, tok, base_window, todo, new_tokens, q, q_len):
    """Every answer of one length's cases ``todo`` ([(depth, [(key, ids), ...])]) by ``method``:
    ({depth: [answer record, ...]}, {depth: rag's (embeddings kept, context tokens)}). The MemLong
    methods read what the prompts share once (:func:`memlong.evaluation.shared_reading`: a trial's
    prompts are one haystack up to the shallowest needle), each answer as from a fresh memory."""
    from memlong.evaluation import shared_reading

    flat = [(depth, key, ids) for depth, cases in todo for key, ids in cases]
    records: list[dict | None] = [None] * len(flat)
    kept: dict[float, tuple[int, int]] = {}
    if method in ("memlong", "memlong_no_memory") and q:
        readings = shared_reading(
            model, [ids[0].tolist() for _, _, ids in flat], [q_len] * len(flat), retrieval=method == "memlong"
        )
    else:
        readings = ((i, None, 0) for i in range(len(flat)))
    for i, memory, read in readings:
        depth, key, ids = flat[i]
        rag: list = []  # the haystack is the context, the question its tail
        answer = generate_answer(
            method,
            model,
            base,
            tok,
            ids,
            new_tokens,
            q,
            base_window,
            memory=memory,
            read=read,
            context=(0, ids.shape[1] - q_len),
            retrieved=rag,
        )
        record = {"key": key, "answer": answer, "right": passkey_digits(answer) == key}
        if memory is not None and method == "memlong":
            record.update(key_retrieval(model, tok, memory, ids[0, -q:].tolist(), key))
        if rag:
            record.update(rag_key_retrieval(tok, ids[0].tolist(), rag[0], key))
            n, c = kept.get(depth, (0, 0))
            kept[depth] = (n + len(rag[0].spans), c + rag[0].context_tokens)
        records[i] = record
    answers: dict[float, list[dict]] = {}
    for (depth, _, _), record in zip(flat, records):
        answers.setdefault(depth, []).append(record)
    return answers, kept


def plot(results: list[dict], path: str) -> None:
    """A heatmap of accuracy per method (depth by length; '-' where skipped or failed)."""
    from memlong.plotting import pyplot, save, score_grid

    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    lengths = sorted({r["length"] for r in results})
    depths = sorted({r["depth"] for r in results})
    fig, axes = pyplot().subplots(1, len(methods), figsize=(3.2 * len(methods), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for r in results:
            if r["method"] == method and r.get("accuracy") is not None:
                grid[depths.index(r["depth"])][lengths.index(r["length"])] = r["accuracy"]
        score_grid(
            ax, grid, [f"{n // 1024}k" if n >= 1024 else str(n) for n in lengths], [f"{d:.0%}" for d in depths], method
        )
        ax.set_xlabel("length")
    axes[0][0].set_ylabel("depth")
    save(fig, path)
