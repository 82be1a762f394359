"""Which hits a question reads again under `MemLongConfig.question_score_ratio`, and what a bar
taken from a hit that does not restate the question would read: the question's search scores
computed for every chunk of RULER prompts on the corpus' VALIDATION split, without the LM.

A question's search (:class:`memlong.question.QuestionRescore`) scores a chunk by the best of its
own and its windows' similarity to the question, plus ``lexical_weight`` times its share of the
question's words (:func:`memlong.memory.bank.lexical_scores`); the best ``top_k`` are its hits and,
with ``question_score_ratio``, those under that share of the best hit's score are left out. On
RULER's variable tracking the best hit is the task's worked example, which repeats the question's
wording, so the ratio leaves every assignment out. This script scores each prompt's chunks (every
whole chunk before the question, as if all were banked) with the model's retriever and settings and
compares three rules over the same ``top_k`` hits:

- ``every_hit``: all ``top_k`` (``question_score_ratio=0``);
- ``ratio``: those scoring at least ``--ratio`` of the best (the default model's rule);
- ``ratio_bar_not_restating``: the same, the bar taken from the best hit whose longest verbatim run
  of the question's tokens is under ``--min-run`` (a hit repeating the question's wording, such as
  an example or instructions, does not decide how sure the others must be; it is still read).

Per task: the share of the answered statements' chunks read (mean over samples), how often at
least one is, and how many other needle chunks (RULER's needle templates: "special magic", "VAR ")
a question reads. Reads only: the answers these reads would give are for `memlong eval ruler`.

    python scripts/experiments/question_bar.py --lengths 16384 --samples 10 \\
        --json docs/results/question_bar_validation_16k.json

About 25 s a 16k prompt on one thread (the retriever embeds every chunk and window).
"""

import argparse
import json
import time

import torch


def longest_run(chunk: list[int], question: list[int]) -> int:
    """The longest run of consecutive tokens ``chunk`` shares verbatim with ``question``."""
    best, prev = 0, [0] * (len(question) + 1)
    for a in chunk:
        cur = [0] * (len(question) + 1)
        for j, b in enumerate(question):
            if a == b:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


def chunk_scores(retriever, chunks: list[list[int]], question: list[int], cfg) -> dict:
    """Each chunk's whole and best-window similarity to ``question``, its lexical share, the
    search's score and the longest verbatim run of the question it holds."""
    from memlong.memory.bank import lexical_scores, window_starts

    W, starts = cfg.rerank_window, window_starts(cfg.chunk_size, cfg.rerank_window)
    q = retriever.embed([question])[0].float()
    whole = retriever.embed(chunks).float() @ q
    windows = retriever.embed([c[a : a + W] for c in chunks for a in starts]).float() @ q
    window = windows.view(len(chunks), len(starts)).amax(1)
    lexical = lexical_scores(torch.tensor(chunks), question)
    score = torch.maximum(whole, window) + cfg.lexical_weight * lexical
    return {
        "whole": whole.tolist(),
        "window": window.tolist(),
        "lexical": lexical.tolist(),
        "score": score.tolist(),
        "run": [longest_run(c, question) for c in chunks],
    }


def rules(s: dict, top_k: int, ratio: float, min_run: int) -> dict[str, list[int]]:
    """The chunks each rule reads again, best first."""
    score = s["score"]
    hits = sorted(range(len(score)), key=lambda c: (-score[c], c))[:top_k]
    restating = [c for c in hits if s["run"][c] < min_run]
    bar = score[restating[0]] if restating else score[hits[0]]
    return {
        "every_hit": hits,
        "ratio": [c for c in hits if score[c] >= ratio * score[hits[0]]],
        "ratio_bar_not_restating": [c for c in hits if score[c] >= ratio * bar],
    }


def main() -> None:
    from memlong.pretrained import load_memlong_model
    from memlong.recipes import eval_ruler

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/corpus")
    p.add_argument("--split", default="validation")
    p.add_argument("--lengths", default="16384")
    p.add_argument("--tasks", default="ruler", help="as `memlong eval ruler --tasks` takes them")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ratio", type=float, default=0.7)
    p.add_argument(
        "--min-run", type=int, default=8, help="a hit holding this many question tokens in a row restates it"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_memlong_model(None, retriever="minilm", dtype=torch.float32)
    cfg = model.memlong_config
    tasks = eval_ruler._task_names(a.tasks)
    ns = argparse.Namespace(
        samples=a.samples, tasks=tasks, chat_template=True, data=a.data, split=a.split, seed=a.seed,
        qa_squad=None, qa_hotpotqa=None,
    )  # fmt: skip
    lengths = [int(x) for x in a.lengths.split(",")]
    prompts, not_run = eval_ruler.build_prompts(ns, tok, lengths)
    tau, rows, t0 = cfg.chunk_size, [], time.perf_counter()
    for (task, L), samples in prompts.items():
        per_rule: dict[str, dict[str, float]] = {}
        examples = []
        for s in samples:
            head = len(s.ids) - s.question_tokens
            chunks = [s.ids[c * tau : (c + 1) * tau] for c in range(head // tau)]
            question = s.ids[head:][-tau:]  # what the question's search embeds (eval ruler's requery)
            scores = chunk_scores(model.memlong_retriever, chunks, question, cfg)
            answer = sorted({q // tau for q in s.positions if q // tau < len(chunks)})
            texts = [tok.decode(c) for c in chunks]
            needles = {c for c, t in enumerate(texts) if "special magic" in t or "VAR " in t} - set(answer)
            read = rules(scores, cfg.top_k, a.ratio, a.min_run)
            for name, chosen in read.items():
                r = per_rule.setdefault(name, {"answer_share": 0.0, "any_answer": 0.0, "other_needles": 0.0})
                r["answer_share"] += len(set(answer) & set(chosen)) / max(1, len(answer)) / len(samples)
                r["any_answer"] += bool(set(answer) & set(chosen)) / len(samples)
                r["other_needles"] += len(needles & set(chosen)) / len(samples)
            best = read["every_hit"]
            examples.append(
                {
                    "answer_chunks": answer,
                    "context_starts_at_chunk": s.span[0] // tau,
                    "reads": read,
                    "hits": [
                        {k: round(scores[k][c], 4) if k != "run" else scores[k][c] for k in scores} | {"chunk": c}
                        for c in best
                    ],
                }
            )
        rows.append({"task": task, "length": L, "samples": len(samples), "rules": per_rule, "examples": examples})
        print(
            f"{task:>18} L={L}: " + "; ".join(f"{k} {v['answer_share']:.2f}" for k, v in per_rule.items()), flush=True
        )
    report = {
        "results": rows,
        "not_run": not_run,
        "config": {
            **vars(a),
            "top_k": cfg.top_k,
            "lexical_weight": cfg.lexical_weight,
            "rerank_window": cfg.rerank_window,
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    with open(a.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
