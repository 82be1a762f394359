"""How `MemLongConfig.lexical_weight`'s default was chosen: retrieval alone (the retriever, no LM),
on the corpus' VALIDATION split, the rank of the chunk that answers a question when chunks are
scored as a question scores them (best of the chunk's and its 32-token windows' MiniLM
similarity, plus lexical_weight x `lexical_scores`), for several weights:

* hard negatives: the passkey statement in a validation chunk, among 500 validation chunks that
  share the most words with "What is the pass key?" (`pass`, `key`, `What`): what defeated the
  embeddings at 128k on the test split;
* other words: twelve made-up facts asked in other words (few or no shared words), each in a
  validation chunk among 500 random validation chunks: what the lexical term must not hurt;
* RULER niah_multikey at 16k on validation text: the needle among needles with other keys.

    python scripts/experiments/tune_lexical_weight.py --json docs/results/lexical_weight_validation.json

About 10 minutes on one thread.

Kept as the record of a study, apart from the package (nothing imports it): it was written against
the RULER generator before `memlong eval ruler` followed RULER's own definitions, so it runs as it
did only from commit a49c312 (`git checkout a49c312 -- src scripts`), where its JSONs were measured.
"""

import argparse
import json
import random

import torch

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
TAU, W = 128, 32
FACTS = [  # (fact, question in other words)
    ("The quarterly meeting has been moved to Thursday afternoon.", "On which day will the gathering take place?"),
    (
        "Dr. Imani Okafor leads the cardiology department at Westbrook Hospital.",
        "Who is in charge of heart medicine at the clinic?",
    ),
    (
        "Our office cat is named Biscuit and she sleeps on the printer.",
        "What do we call the feline that lives at work?",
    ),
    (
        "The bridge over the Tamsen river was closed for repairs last spring.",
        "Why could nobody cross the waterway a few months ago?",
    ),
    ("Maria's flight to Lisbon leaves at 6:40 in the morning.", "When does her plane to Portugal depart?"),
    (
        "The new library wing cost 4.2 million dollars to build.",
        "How expensive was the construction of the extra section for books?",
    ),
    ("Tomas prefers green tea without sugar.", "How does he like his drink?"),
    (
        "The warehouse alarm code was changed to 7731.",
        "What are the digits that disarm the storage building security system?",
    ),
    (
        "Our team lost the final match three goals to one.",
        "What was the score when the squad was defeated in the championship game?",
    ),
    ("The recipe needs two cups of flour and one egg.", "Which ingredients go into the dish?"),
    (
        "Professor Lindqvist retired after forty years of teaching physics.",
        "How long did the scientist work as an educator?",
    ),
    ("The shipment of laptops arrives at the Denver depot on May 3.", "When will the computers reach Colorado?"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/corpus")
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from memlong.data import ruler
    from memlong.memory.bank import lexical_scores, window_starts
    from memlong.pretrained import default_base_model_path
    from memlong.recipes.eval_passkey import passkey_question_ids
    from memlong.retriever import retriever_from_name
    from memlong.training import PASSKEY_STATEMENT, document_texts

    tok = AutoTokenizer.from_pretrained(default_base_model_path())
    retriever = retriever_from_name("minilm", tok)
    starts = window_starts(TAU, W)

    def embedded(chunks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each chunk's embedding [n, dim] and its windows' [n, windows, dim]."""
        whole = retriever.embed(chunks).float()
        windows = retriever.embed([c[s : s + W] for c in chunks for s in starts]).float()
        return whole, windows.view(len(chunks), len(starts), -1)

    def dense(emb: tuple[torch.Tensor, torch.Tensor], question: list[int]) -> torch.Tensor:
        """The question's embedding score of each chunk: the best of the chunk's and its windows'."""
        q = retriever.embed([question])[0].float()
        return torch.maximum(emb[0] @ q, (emb[1] @ q).amax(1))

    def join(a: tuple, b: tuple) -> tuple:
        return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])

    def ranks(scores_dense: torch.Tensor, chunks: torch.Tensor, question: list[int], answer: list[int]) -> dict:
        lex = lexical_scores(chunks, question, chunks)
        out = {}
        for w in WEIGHTS:
            s = scores_dense + w * lex
            best = max(float(s[a]) for a in answer)
            out[str(w)] = int((s > best).sum()) + 1
        return out

    ids: list[int] = []
    for text in document_texts(args.data, "validation")():
        ids.extend(tok(text + "\n\n", add_special_tokens=False)["input_ids"])
    n = len(ids) // TAU
    chunks = torch.tensor(ids[: n * TAU]).view(n, TAU)
    rng = random.Random(0)

    def planted(sentence: str) -> list[int]:
        """``sentence`` on its own line inside a random validation chunk, at a random offset."""
        s_ids = tok("\n" + sentence + "\n", add_special_tokens=False)["input_ids"]
        host = chunks[rng.randrange(n)].tolist()
        at = rng.randrange(0, TAU - len(s_ids))
        return (host[:at] + s_ids + host[at:])[:TAU]

    results: dict = {"weights": list(WEIGHTS), "validation_chunks": n}
    # 1. hard negatives for the passkey question
    q = passkey_question_ids(tok)
    words = torch.tensor([t for t in set(q) if tok.decode([t]).strip().lower() in ("pass", "key", "what")])
    hard = chunks[torch.argsort((chunks.unsqueeze(-1) == words).sum((1, 2)), descending=True)[:500]]
    hard_emb = embedded(hard.tolist())
    trials = []
    for _ in range(40):
        kc = planted(PASSKEY_STATEMENT.format(key=rng.randrange(10_000, 100_000)))
        bank = torch.cat([torch.tensor([kc]), hard])
        trials.append(ranks(dense(join(embedded([kc]), hard_emb), q), bank, q, [0]))
    results["hard_negatives"] = trials
    # 2. facts asked in other words, among random chunks
    negs = chunks[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:500]]
    negs_emb = embedded(negs.tolist())
    trials = []
    for t in range(36):
        fact, question = FACTS[t % len(FACTS)]
        qq = tok("\n" + question, add_special_tokens=False)["input_ids"]
        kc = planted(fact)
        bank = torch.cat([torch.tensor([kc]), negs])
        trials.append(ranks(dense(join(embedded([kc]), negs_emb), qq), bank, qq, [0]))
    results["other_words"] = trials
    # 3. RULER niah_multikey, 16k tokens of validation text
    hay = ruler.text_haystack(tok, document_texts(args.data, "validation")(), 40_000)
    trials = []
    for t in range(12):
        s = ruler.make_sample("niah_multikey", tok, 16384, random.Random(100 + t), hay)
        m = (len(s.ids) - 1024) // TAU  # the chunks a 1,024-token window has banked
        bank = torch.tensor(s.ids[: m * TAU]).view(m, TAU)
        asked = [(p, len(x)) for p, x in zip(s.positions, s.statements) if any(a in tok.decode(x) for a in s.answers)]
        answer = sorted({j for p, k in asked for j in range(p // TAU, (p + k - 1) // TAU + 1) if j < m})
        question = s.ids[-s.question_tokens :]
        trials.append(ranks(dense(embedded(bank.tolist()), question), bank, question, answer))
    results["ruler_niah_multikey_16k"] = trials
    summary = {}
    for task in ("hard_negatives", "other_words", "ruler_niah_multikey_16k"):
        summary[task] = {}
        for w in WEIGHTS:
            r = [x[str(w)] for x in results[task]]
            summary[task][str(w)] = {
                "top4": round(sum(v <= 4 for v in r) / len(r), 3),
                "top1": round(sum(v == 1 for v in r) / len(r), 3),
                "worst": max(r),
            }
    results["summary"] = summary
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
