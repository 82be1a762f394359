"""Retrieval heads: which KV heads copy a fact stated far back, to choose ``MemLongConfig.bank_heads``.

Few attention heads fetch information from far back in the context (Wu et al. 2024, "Retrieval
Head Mechanistically Explains Long-Context Factuality": under 5% of heads); DuoAttention keeps a
full cache for those alone. This probe finds them in a base model: a passkey statement (random
digits) is planted in real text, the question follows, and the answer is teacher-forced after it.
For each answer token, each query head's strongest attention (over the whole context) either
points at a needle token equal to the one being copied (a hit) or not; a head's **retrieval
score** is its share of hits over the answer tokens (Wu et al.'s score), its **needle mass** the
mean attention it puts on the needle statement. A KV head serves its group of query heads, so it
scores its best query head's (banking it serves them all).

Shapes: ``L`` layers, ``H`` query heads, ``H_kv`` KV heads per layer.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import torch

#: the passkey statement and question of ``memlong eval passkey`` (:mod:`memlong.training`)
from memlong.training import PASSKEY_QUESTION, PASSKEY_STATEMENT


@dataclass
class NeedleCase:
    """One probe sequence: haystack with the needle statement, the question, then the answer."""

    ids: list[int]
    needle: tuple[int, int]  # [start, end) of the needle statement's tokens
    answer: int  # where the answer's tokens start (they run to the end of ids)
    key: str


def needle_case(tok, pool: list[int], key: str, length: int, depth: float, offset: int = 0) -> NeedleCase:
    """A ``length``-token case: haystack tokens from ``pool`` (from ``offset``) with the statement of
    ``key`` at ``depth`` (a fraction) of it, the question, and the answer ``" " + key``."""
    stated = tok("\n" + PASSKEY_STATEMENT.format(key=key) + "\n", add_special_tokens=False)["input_ids"]
    question = tok("\n" + PASSKEY_QUESTION.split("{key}")[0].rstrip(), add_special_tokens=False)["input_ids"]
    answer = tok(" " + key, add_special_tokens=False)["input_ids"]
    budget = length - len(stated) - len(question) - len(answer)
    if budget < 1 or len(pool) < budget:
        raise ValueError(
            f"cannot build a {length}-token needle case from {len(pool)} haystack tokens "
            f"(the needle, question and answer take {length - budget}); give more text or a longer length"
        )
    start = offset % max(1, len(pool) - budget + 1)
    hay = pool[start : start + budget]
    at = int(depth * budget)
    ids = hay[:at] + stated + hay[at:] + question + answer
    return NeedleCase(ids, (at, at + len(stated)), len(ids) - len(answer), key)


def needle_cases(tok, texts: Iterable[str], n: int, length: int, seed: int = 0) -> list[NeedleCase]:
    """``n`` cases of ``length`` tokens from ``texts`` (back to back), depths spread evenly over
    the haystack ((i + 0.5) / n), keys random 5-digit numbers drawn from ``seed``."""
    pool: list[int] = []
    for text in texts:
        pool.extend(tok(text + "\n\n", add_special_tokens=False)["input_ids"])
        if len(pool) >= length + n * 997:
            break
    rng = random.Random(seed)
    return [
        needle_case(tok, pool, str(rng.randrange(10_000, 100_000)), length, (i + 0.5) / n, offset=i * 997)
        for i in range(n)
    ]


@dataclass
class RetrievalScores:
    """What :func:`retrieval_scores` measured, per query head ``[L, H]``."""

    hits: torch.Tensor  # answer tokens whose strongest attention is the needle token being copied
    mass: torch.Tensor  # attention on the needle statement, summed over answer tokens
    tokens: int  # answer tokens scored
    correct: int  # of them, the model's greedy prediction was right (does it retrieve at all?)

    def __add__(self, other: RetrievalScores) -> RetrievalScores:
        return RetrievalScores(
            self.hits + other.hits, self.mass + other.mass, self.tokens + other.tokens, self.correct + other.correct
        )

    def per_kv_head(self, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(retrieval score, needle mass), each ``[L, H_kv]``: the best query head of each KV head's
        group (transformers' grouping: query head ``h`` reads KV head ``h // (H / H_kv)``)."""
        L, H = self.hits.shape
        score = (self.hits / max(1, self.tokens)).view(L, kv_heads, H // kv_heads).amax(-1)
        mass = (self.mass / max(1, self.tokens)).view(L, kv_heads, H // kv_heads).amax(-1)
        return score, mass


@torch.no_grad()
def retrieval_scores(model, case: NeedleCase) -> RetrievalScores:
    """Scores one case on ``model`` (a causal LM loaded with ``attn_implementation="eager"``, so
    that ``output_attentions`` returns the weights). The context before the answer is read once
    with a KV cache; only the queries that predict the answer return their attention
    (``[H, answer, context]`` per layer), so memory stays small at long lengths."""
    device = next(model.parameters()).device
    ids = torch.tensor([case.ids], device=device)
    cut = case.answer - 1  # the position whose output predicts the first answer token
    cache = model(input_ids=ids[:, :cut], use_cache=True).cache
    out = model(input_ids=ids[:, cut:-1], cache=cache, output_attentions=True)
    if out.attentions is None or out.attentions[0] is None:
        raise ValueError("the model returned no attention weights; load it with attn_implementation='eager'")
    target = ids[0, case.answer :]  # [A] the answer tokens, each predicted by the query before it
    lo, hi = case.needle
    att = torch.stack([a[0].float() for a in out.attentions])  # [L, H, A, T]
    best = att.argmax(-1)  # [L, H, A]
    copied = (best >= lo) & (best < hi) & (ids[0, best] == target)
    mass = att[..., lo:hi].sum(-1)  # [L, H, A]
    correct = int((out.logits[0].argmax(-1) == target).sum())
    return RetrievalScores(copied.sum(-1).float().cpu(), mass.sum(-1).cpu(), len(target), correct)


def top_heads(score: torch.Tensor, mass: torch.Tensor, n: int) -> tuple[tuple[int, int], ...]:
    """The ``n`` best KV heads by retrieval score (ties: needle mass) as ``MemLongConfig.bank_heads``
    pairs (1-based layer, 0-based KV head), in the config's order."""
    L, H_kv = score.shape
    order = sorted(range(L * H_kv), key=lambda i: (-float(score.flatten()[i]), -float(mass.flatten()[i]), i))
    return tuple(sorted((i // H_kv + 1, i % H_kv) for i in order[: max(0, n)]))


def kv_head_bytes(head_dim: int, dtype: torch.dtype) -> int:
    """Bytes per token one banked KV head costs: its key and value (and their scales, for a
    compressed ``dtype``), as :meth:`memlong.memory.BankLayout.kv_bytes_per_token` counts them."""
    from memlong.memory import BankLayout

    return BankLayout(
        capacity=1, chunk_size=1, num_kv_heads=1, head_dim=head_dim, embed_dim=1, dtype=dtype
    ).kv_bytes_per_token()
