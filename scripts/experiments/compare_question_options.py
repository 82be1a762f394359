"""How a question reads its hits: `MemLongConfig.question_order`, `question_offsets`,
`question_reread` and a question-time `top_k` (`--variants`) compared on the corpus' VALIDATION
split, with the default model. Each prompt is read once into memory (as `memlong eval` reads it)
and then answered greedily, the question re-querying memory, once per variant from a copy of that
memory: only what the question does with its hits differs between variants, never the reading of
the prompt. Each passkey's row also lists the question's hits (chunk, score, whether it holds the
key, the start of its text).

Prompts: RULER's needle tasks over text (`memlong eval ruler --haystacks text`) and passkeys at
several depths (`memlong eval passkey`), both built by the eval recipes from validation text.

    python scripts/experiments/compare_question_options.py --lengths 16384 --ruler-samples 4 --passkey-trials 2 \\
        --json docs/results/question_options_validation.json

About 2.5 minutes per 16k prompt on one thread. ``--resume`` continues a run from its --json.

Kept as the record of a study, apart from the package (nothing imports it): it was written against
the RULER generator before `memlong eval ruler` followed RULER's own definitions, so it runs as it
did only from commit a49c312 (`git checkout a49c312 -- src scripts`), where its JSONs were measured.
"""

import argparse
import copy
import dataclasses
import json
import os
import time

import torch

#: name -> the question fields it sets (the rest as the model's config has them). Each sets
#: ``question_reread`` (the default model turns it on): a variant names how it asks whatever the
#: config. ``top_k`` set on the copy made after reading changes only what the question (and its
#: answer) retrieves.
VARIANTS = {
    "stream": dict(question_order="stream", question_offsets=None, question_reread=False),
    "best_last": dict(question_order="score", question_offsets=None, question_reread=False),
    "stream_next": dict(question_order="stream", question_offsets=(0, 1), question_reread=False),
    "best_last_next": dict(question_order="score", question_offsets=(0, 1), question_reread=False),
    "top1": dict(question_order="stream", question_offsets=None, question_reread=False, top_k=1),
    "top2": dict(question_order="stream", question_offsets=None, question_reread=False, top_k=2),
    "reread": dict(question_order="stream", question_offsets=None, question_reread=True),
    "reread_next": dict(question_order="stream", question_offsets=(0, 1), question_reread=True),
    "reread_best_last": dict(question_order="score", question_offsets=None, question_reread=True),
}
DEFAULT_VARIANTS = "stream,best_last,stream_next,best_last_next"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/corpus")
    p.add_argument("--lengths", default="16384")
    p.add_argument("--ruler-tasks", default="niah_single,niah_multikey,niah_multivalue,niah_multiquery")
    p.add_argument("--ruler-samples", type=int, default=4)
    p.add_argument("--passkey-depths", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--passkey-trials", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True)
    p.add_argument("--resume", action="store_true", help="keep the prompts already answered in --json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list of: {','.join(VARIANTS)}")
    args = p.parse_args()
    names = args.variants.split(",")
    if not all(v in VARIANTS for v in names) or len(set(names)) != len(names):
        raise SystemExit(f"--variants: a comma list of {', '.join(VARIANTS)}; got {args.variants!r}")
    torch.set_num_threads(args.threads)
    from transformers import StoppingCriteriaList

    from memlong.data.ruler import score
    from memlong.pretrained import load_memlong_model
    from memlong.recipes.ask import answer_end, plain_answer
    from memlong.recipes.eval_common import parse_lengths
    from memlong.recipes.eval_passkey import passkey_cases, passkey_digits, passkey_question_ids
    from memlong.recipes.eval_ruler import build_prompts

    lengths = parse_lengths(args.lengths)
    model, tok = load_memlong_model()
    common = dict(data=args.data, split="validation", seed=args.seed)
    prompts = []  # (name, task, length, ids, question tokens, answers, new tokens)
    if args.ruler_samples:
        ruler_args = argparse.Namespace(samples=args.ruler_samples, tasks=args.ruler_tasks, haystacks="text", **common)
        for (task, _, L), samples in build_prompts(ruler_args, tok, lengths).items():
            for i, s in enumerate(samples):
                prompts.append((f"{task}/{L}/{i}", task, L, s.ids, s.question_tokens, s.answers, s.max_new_tokens))
    if args.passkey_trials:
        pk_args = argparse.Namespace(depths=args.passkey_depths, trials=args.passkey_trials, **common)
        q = len(passkey_question_ids(tok))
        for L, depth, cases in passkey_cases(pk_args, tok, lengths):
            for t, (key, ids) in enumerate(cases):
                prompts.append((f"passkey/{L}/{depth}/{t}", "passkey", L, ids[0].tolist(), q, [key], 8))

    done = {}
    if args.resume and os.path.exists(args.json):
        report = json.load(open(args.json))
        if report["config"] != _config(args, model):
            raise SystemExit(
                f"--resume: {args.json} was made with other flags or another model config; use a new --json"
            )
        done = {r["prompt"]: r for r in report["prompts"]}
    rows = []
    for name, task, L, ids, q, answers, new_tokens in prompts:
        if name in done:
            rows.append(done[name])
            continue
        t0 = time.perf_counter()
        ids = torch.tensor([ids])
        memory = model.ingest(ids[:, :-q])  # what generate(requery=q) reads before the question
        memory.index_windows(model.memlong_retriever)  # once, not in every copy (the first question's work)
        row = {
            "prompt": name,
            "task": task,
            "length": L,
            "expected": answers,
            "read_seconds": round(time.perf_counter() - t0, 1),
            "answers": {},
        }
        question = ids[:, -q:]
        if task == "passkey":
            row["hits"] = question_hits(model, tok, memory, question[0].tolist(), answers[0])
        for variant, fields in ((v, VARIANTS[v]) for v in names):
            m = copy.deepcopy(memory)
            m.config = dataclasses.replace(memory.config, **fields)
            stop = StoppingCriteriaList([answer_end(tok, q)]) if task != "passkey" else None
            out = model.generate(
                question,
                memory=m,
                requery=True,
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                stopping_criteria=stop,
            )
            text = tok.decode(out[0, q:], skip_special_tokens=True)
            if task == "passkey":
                s = float(passkey_digits(text) == answers[0])
            else:
                text = plain_answer(text)[0]
                s = score(text, answers)
            row["answers"][variant] = {"output": text.strip()[:80], "score": s}
        print(
            json.dumps(
                {k: row[k] for k in ("prompt", "read_seconds")} | {v: a["score"] for v, a in row["answers"].items()}
            ),
            flush=True,
        )
        rows.append(row)
        _write(args, model, rows)
    _write(args, model, rows, final=True)


def question_hits(model, tok, memory, question: list[int], key: str) -> list[dict]:
    """The chunks the question retrieves under the model's config, best first: chunk id, score,
    whether it holds the key, and the start of its text (what a reading miss read besides the key)."""
    bank = memory.bank(0)
    slots, scores = memory.question_hits(model.memlong_retriever, question[-model.memlong_config.chunk_size :])
    hits = []
    for s, score in zip(slots.tolist(), scores.tolist()):
        text = tok.decode(bank.token_ids[s].tolist())
        hits.append({"chunk": int(bank.chunk_ids[s]), "score": round(score, 4), "key": key in text, "text": text[:160]})
    return hits


def _config(args, model) -> dict:
    chosen = {v: VARIANTS[v] for v in args.variants.split(",")}
    return {
        **vars(args),
        "resume": None,
        "json": None,
        "threads": None,
        "variants": _jsonable(chosen),
        "memlong": model.memlong_config.to_dict(),
    }


def _jsonable(x):
    return json.loads(json.dumps(x))


def _write(args, model, rows, final=False) -> None:
    summary: dict = {}
    for r in rows:
        for variant, a in r["answers"].items():
            cell = summary.setdefault(r["task"], {}).setdefault(str(r["length"]), {}).setdefault(variant, [])
            cell.append(a["score"])
    summary = {
        t: {
            L: {v: {"score": round(sum(s) / len(s), 3), "prompts": len(s)} for v, s in by_v.items()}
            for L, by_v in by_L.items()
        }
        for t, by_L in summary.items()
    }
    with open(args.json, "w") as f:
        json.dump({"summary": summary, "prompts": rows, "config": _config(args, model)}, f, indent=1)
        f.write("\n")
    if final:
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
