"""`memlong eval icl`: in-context learning with demonstrations held in memory (section 4.3,
Table 2). Each test input follows ``--shots-memory`` M demonstrations, then ``--shots-context``
K more; the prediction is the label word with the highest log-probability after the input
(classification by scoring; multi-token words: the sum over their tokens). Every method reads
the same token stream, M demonstrations first, and differs only in what it can see:

* ``memlong``: the MemLong model, a memory per test input; the M demonstrations leave the
  local window (``--set local_window=N``) into the memory bank before the input is read;
* ``memlong_no_memory``: the same model and local window with retrieval off;
* ``in_context``: the base model with all K+M demonstrations in its context, only where every
  prompt fits its window (otherwise reported as skipped, with the reason);
* ``base_truncated``: the base model on the demonstrations' last tokens that fit its window
  beside the longest test input and label word (the same for every input of a trial), then the
  input: the model in its own window, as a user without memory or retrieval would run it;
* ``rag`` (the paper's "w./ RAG"): the base model with the ``top_k`` of the M memory
  demonstrations most similar to the test input (the MemLong model's retriever, cosine:
  :mod:`memlong.rag`), as text in their order, before the K context demonstrations and the input.

Each row also carries its cost: ``tokens_per_second`` (the prompts' tokens, each counted whole,
per second of the method's time) and ``bytes_per_token`` (:mod:`memlong.cost`).

The demonstrations are sampled once per trial (``--trials``, seeds ``--seed`` + t) and shared
by all test inputs of that trial, so the MemLong methods read them once per trial and each test
input continues from a copy of that memory (the same as reading its whole prompt: the memory
does not depend on where calls split the input; hundreds of demonstrations in memory cost one
read), and the base model's methods keep the key/value cache of the demonstrations every input
of the trial starts with (:func:`memlong.evaluation.prefix_cache`); accuracy is the mean over
trials. The run stops with an error when no memory demonstration would reach the bank (memory
would measure nothing) and says which share of the memory demonstrations' tokens did
(``memory_tokens_banked``): the rest is still in the local window, seen by both MemLong methods.
``--data``: ``sst2``, ``mr``, ``subj``, ``sst5``, ``mpqa`` (through ``datasets``: SetFit/sst2,
rotten_tomatoes, SetFit/subj, SetFit/sst5, SetFit/mpqa), a ``.jsonl`` file or folder of
``{"text", "label"}`` lines (``--labels``), or ``corpus-source:CORPUS_DIR``: short passages of a
``memlong data`` corpus labelled ``python`` / ``manual`` / ``java`` by their source (see
:mod:`memlong.data.icl`).

    memlong eval icl --model PATH --data corpus-source:runs/corpus --shots-context 4 --shots-memory 18 \
        --set local_window=512 --max-examples 60 --trials 3 --json icl.json --plot icl.png
"""

from __future__ import annotations

import argparse

from memlong.recipes.eval_common import Skip, load_models, measured, write_report

METHODS = ("memlong", "memlong_no_memory", "in_context", "base_truncated", "rag")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``memlong eval icl`` beside the shared ones (:mod:`memlong.recipes.eval`)."""
    p.add_argument(
        "--data",
        required=True,
        help="sst2, mr, subj, sst5, mpqa (datasets), a .jsonl file / folder of {text, label} lines, or "
        "corpus-source:CORPUS_DIR (passages labelled by source)",
    )
    p.add_argument("--shots-context", type=int, default=4, help="K demonstrations right before the test input")
    p.add_argument("--shots-memory", type=int, default=18, help="M demonstrations read first, into memory")
    p.add_argument("--trials", type=int, default=3, help="demonstration samples (accuracy is their mean)")
    p.add_argument("--max-examples", type=int, default=100, help="test examples per trial")
    p.add_argument("--labels", default=None, help="comma-separated label words (local data; replaces a task's own)")
    p.add_argument(
        "--demo-split",
        default=None,
        help="split the demonstrations come from (default: train; corpus-source: validation)",
    )


def run(args, methods: list[str]) -> int:
    data = _icl_data(args)  # bad options and data fail before any model is loaded
    tok, model, base, base_window, base_path = load_models(args, methods)
    results = _run_icl(args, data, tok, model, base, base_window, methods)
    write_report(args, results, model, base_path, base_window, plot)
    return 0


def _icl_data(args):
    """(task, demonstration pool, test examples) for ``eval icl``; bad options exit naming the option."""
    from memlong.data.icl import load_icl_data

    for name in ("shots_context", "shots_memory"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0; got {getattr(args, name)}")
    for name in ("max_examples", "trials"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    shots = args.shots_context + args.shots_memory
    labels = [w.strip() for w in args.labels.split(",") if w.strip()] if args.labels else None
    try:
        task, pool, tests = load_icl_data(
            args.data, args.split, args.demo_split, labels, args.max_examples, pool=max(64, 2 * shots), seed=args.seed
        )
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"eval icl: {e}") from None
    if len(pool) < shots:
        raise SystemExit(
            f"--shots-context + --shots-memory = {shots} demonstrations, but --data has only "
            f"{len(pool)} to draw them from"
        )
    if not tests:
        raise SystemExit(f"--data {args.data}: no test examples in split {args.split!r}")
    return task, pool, tests


def _run_icl(args, data, tok, model, base, base_window, methods) -> list[dict]:
    import copy
    import random
    from collections import Counter

    from memlong.cost import bytes_per_token, tokens_per_second
    from memlong.data.icl import demo_text, query_text
    from memlong.evaluation import continuation_logprobs, continuation_rows, prefix_cache

    task, pool, tests = data
    K, M = args.shots_context, args.shots_memory
    cfg = model.memlong_config
    tau, w = cfg.chunk_size, cfg.window_chunks

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"] if text else []

    cands = [ids(" " + word) for word in task.label_words]
    if len({tuple(c) for c in cands}) < len(cands):
        raise SystemExit(f"label words {list(task.label_words)} do not tokenize to distinct sequences (--labels)")
    trials = []  # per trial: token ids of every test prompt
    prefixes = []  # per trial: the demonstrations every prompt of the trial starts with
    question_tokens = []  # per trial: tokens of each test input (the requery question)
    rag_parts = []  # per trial: the memory demonstrations one by one, the context ones, each test input
    share, local = [], []  # per prompt: memory-demonstration tokens banked, context ones in the window (shares)
    for t in range(args.trials):
        demos = random.Random(args.seed + t).sample(pool, K + M)
        # each part tokenized on its own, so the boundaries between them are exact
        mem = ids("".join(demo_text(task, d) for d in demos[:M]))
        ctx = ids("".join(demo_text(task, d) for d in demos[M:]))
        queries = [ids(query_text(task, ex)) for ex in tests]
        prompts = [mem + ctx + q for q in queries]
        prefixes.append(mem + ctx)
        rag_parts.append(([ids(demo_text(task, d)) for d in demos[:M]], ctx, queries))
        question_tokens.append([len(q) for q in queries])
        for p in prompts:
            # the prompt's last token (chunk J) sees chunks J-w..J; chunks 0..J-w-1 are in the bank
            gone = max(0, ((len(p) - 1) // tau - w) * tau)
            share.append(min(len(mem), gone) / max(1, len(mem)))
            local.append(1 - min(len(ctx), max(0, gone - len(mem))) / max(1, len(ctx)))
        trials.append(prompts)
    if M and max(share) == 0:
        raise SystemExit(
            f"the {M} memory demonstrations never leave the local window ({cfg.local_window} tokens) before a test "
            f"input is read, so memlong would equal memlong_no_memory by construction; raise --shots-memory or "
            f"lower the local window (--set local_window=N)"
        )
    if M and min(share) < 1:
        print(
            f"note: {sum(share) / len(share):.0%} of the memory demonstrations' tokens reach the bank on average "
            f"(the rest stay in the {cfg.local_window}-token local window, seen by both MemLong methods)"
        )
    if K and min(local) < 1:
        print(
            f"note: only {sum(local) / len(local):.0%} of the context demonstrations' tokens are in the "
            f"{cfg.local_window}-token local window at the test input on average (the rest left it: into memory for memlong, dropped without)"
        )
    longest = max(len(p) for prompts in trials for p in prompts) + max(len(c) for c in cands)
    # base_truncated: the demonstrations' last tokens that fit beside the longest input and label word
    fits = base_window - max(n for q in question_tokens for n in q) - max(len(c) for c in cands)
    majority = Counter(ex.label for ex in tests).most_common(1)[0][1] / len(tests)
    print(f"{'method':>18} {'task':>14}   K   M  accuracy  per trial  examples  banked  predicted / note")
    results = []
    for method in methods:
        row = {
            "method": method,
            "task": task.name,
            "shots_context": K,
            "shots_memory": M,
            "examples": len(tests),
            "trials": args.trials,
            "label_words": list(task.label_words),
            "majority_accuracy": majority,
            "prompt_tokens_max": longest,
        }
        if method == "memlong":  # (memlong_no_memory drops what leaves its window)
            row["memory_tokens_banked"] = round(sum(share) / len(share), 4) if M else None
            row["requery"] = args.requery
        if method in ("memlong", "memlong_no_memory"):
            row["context_tokens_in_window"] = round(sum(local) / len(local), 4) if K else None
        if method == "rag":
            row["rag_top_k"] = cfg.top_k
        if method == "base_truncated":  # the share of the demonstrations' tokens in the base model's window
            row["demonstration_tokens_in_window"] = round(
                sum(min(1, max(0, fits) / max(1, len(p))) for p in prefixes) / len(prefixes), 4
            )
        with measured(row, "accuracy"):
            if method == "in_context" and longest > base_window:
                raise Skip(f"prompts of up to {longest} tokens do not fit the base model's window ({base_window})")
            plain, shared_base = trials, prefixes
            if method == "base_truncated":
                if fits < 1:
                    raise Skip(
                        f"test inputs and label words of up to {base_window - fits} tokens fill the base "
                        f"model's window ({base_window}): no demonstration fits beside them"
                    )
                shared_base = [p[-fits:] for p in prefixes]
                plain = [[b + p[len(a) :] for p in prompts] for a, b, prompts in zip(prefixes, shared_base, trials)]
            if method == "rag":  # timed with the method: embedding the demonstrations is its reading
                plain = [_rag_prompts(model, *parts) for parts in rag_parts]
                need = max(len(p) for prompts in plain for p in prompts) + max(len(c) for c in cands)
                if need > base_window:
                    raise Skip(f"rag prompts of up to {need} tokens do not fit the base model's window ({base_window})")
            per_trial, predicted = [], Counter()
            for prompts, questions, prefix, base_prefix in zip(plain, question_tokens, prefixes, shared_base):
                hits, shared = 0, None  # what every prompt of the trial starts with, read once
                if method in ("memlong", "memlong_no_memory") and prefix:
                    shared = _read_prefix(model, prefix, continuation_rows(cands), method == "memlong")
                elif method in ("in_context", "base_truncated") and base_prefix:
                    shared = prefix_cache(base, base_prefix, continuation_rows(cands))
                for prompt, n, ex in zip(prompts, questions, tests):
                    if method == "rag":
                        scores = continuation_logprobs(base, prompt, cands)
                    elif method in ("in_context", "base_truncated"):  # from a copy of the shared cache
                        memory = copy.deepcopy(shared) if shared is not None else None
                        scores = continuation_logprobs(base, prompt, cands, memory=memory, read=len(base_prefix))
                    else:  # every prompt of the trial continues from a copy of the shared demonstrations
                        scores = continuation_logprobs(
                            model,
                            prompt,
                            cands,
                            use_memory=method == "memlong",
                            requery=n if args.requery and method == "memlong" else 0,
                            memory=shared.clone() if shared else None,
                            read=len(prefix) if shared else 0,
                        )
                    guess = max(range(len(scores)), key=scores.__getitem__)
                    predicted[task.label_words[guess]] += 1
                    hits += int(guess == ex.label)
                per_trial.append(hits / len(tests))
            row.update(
                accuracy=sum(per_trial) / len(per_trial),
                accuracy_per_trial=per_trial,
                predicted=dict(sorted(predicted.items())),
            )  # a model stuck on one label shows here
        read = sum(len(p) for prompts in trials for p in prompts)
        row["tokens_per_second"] = tokens_per_second(read, row["seconds"]) if row["accuracy"] is not None else None
        items = [d for demos, _, _ in rag_parts for d in demos]  # rag keeps an embedding per memory demonstration
        row["bytes_per_token"] = bytes_per_token(method, model, base, (len(items), sum(map(len, items))))
        results.append(row)
        acc = f"{row['accuracy']:.3f}" if row["accuracy"] is not None else "-"
        per = ",".join(f"{a:.2f}" for a in row.get("accuracy_per_trial", [])) or "-"
        banked = f"{row['memory_tokens_banked']:.0%}" if row.get("memory_tokens_banked") is not None else "-"
        pred = " ".join(f"{k}:{v}" for k, v in row.get("predicted", {}).items())
        print(
            f"{method:>18} {task.name:>14} {K:>3} {M:>3}  {acc:>8}  {per:>9}  {len(tests):>8}  {banked:>6}  "
            f"{pred or row.get('note', '')}",
            flush=True,
        )
    print(f"(majority-class accuracy of the test examples: {majority:.3f}; label words: {', '.join(task.label_words)})")
    return results


def _rag_prompts(model, demos: list[list[int]], ctx: list[int], queries: list[list[int]]) -> list[list[int]]:
    """``rag``'s prompt for each test input of a trial: the ``top_k`` memory demonstrations
    (``demos``, one token list each) most similar to it, in their order, then the context
    demonstrations and the input. The demonstrations are embedded once, the inputs in one batch."""
    from memlong.rag import rank

    retriever, k = model.memlong_retriever, model.memlong_config.top_k
    if not demos:
        return [ctx + q for q in queries]
    emb, q_emb = retriever.embed(demos), retriever.embed(queries)
    return [[t for i in rank(emb, e, k)[0] for t in demos[i]] + ctx + q for e, q in zip(q_emb, queries)]


def _read_prefix(model, prefix: list[int], rows: int, retrieval: bool):
    """A memory of ``rows`` rows that has read ``prefix`` (the demonstrations every test prompt of a
    trial starts with), once per trial: each test input then continues from a copy, which reads
    what a fresh memory reading the whole prompt would (the memory does not depend on where
    calls split the input). With retrieval, the bank's window index is built here too, once."""
    import torch

    memory = model.ingest(
        torch.tensor([prefix] * rows, device=next(model.parameters()).device), model.new_memory(rows, retrieval)
    )
    if retrieval:
        memory.index_windows(model.memlong_retriever)
    return memory


def plot(results: list[dict], path: str) -> None:
    from memlong.plotting import figure

    with figure(path, "method", "accuracy", size=(5, 3.5)) as ax:
        names = [r["method"] for r in results]
        ax.bar(names, [r["accuracy"] or 0 for r in results], color="tab:blue")
        for i, r in enumerate(results):
            ax.text(
                i,
                (r["accuracy"] or 0) + 0.01,
                "skipped" if r["accuracy"] is None else f"{r['accuracy']:.2f}",
                ha="center",
                fontsize=8,
            )
        if results:
            ax.axhline(results[0]["majority_accuracy"], ls="--", color="gray", label="majority class")
            r = results[0]
            ax.set_title(f"{r['task']}: {r['shots_context']} in context + {r['shots_memory']} in memory", fontsize=9)
        ax.set_ylim(0, 1.05)
