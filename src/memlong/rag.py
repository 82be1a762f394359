"""The plain retrieval-augmented-generation baseline (``rag``): what a person with a long document
and a small local model would build without MemLong.

The context is cut into the memory's chunks, each chunk's text is embedded with the retriever
the memory uses, the question is embedded the same way, and the ``top_k`` chunks most similar to
it (cosine) are put back as *text* in the prompt, in document order, before the question; the
**base model alone** then reads that short prompt (no memory, no MemLong attention).
:func:`rag_prompt` builds the prompt and says what it retrieved; :func:`top_k` ranks any
token-id items (chunks, in-context demonstrations) against a question, :func:`rank` embeddings
computed once for many questions.

How its search differs from the memory's question search
(:meth:`memlong.cache.MemLongCache.question_search`), on purpose, to stay the plain baseline:

* question: the whole prompt tail after the context (``ids[end:]``) is embedded; the memory
  embeds the question's last ``chunk_size`` tokens. Neither adds a query instruction or prefix
  (the retriever embeds the decoded text as it is);
* ranking: whole-chunk cosine only; the memory also scores each chunk by its best
  ``rerank_window``-token window and adds ``lexical_weight`` times the share of the question's
  words and word pairs the chunk holds;
* what is read: the ``k`` best chunks as text, in document order (no ``question_offsets``,
  ``question_order``), and nothing else of the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


class RagPromptTooLong(ValueError):
    """The retrieval-augmented prompt does not fit the base model's trained context."""


@dataclass
class RagPrompt:
    """A retrieval-augmented prompt and what it retrieved.

    ``ids``: the prompt, ``ids[:start]`` + the chosen chunks' tokens in document order +
    ``ids[end:]``. ``spans[i]``: token span ``(a, b)`` of context chunk ``i`` in the original
    prompt (chunk ``i`` is ``ids[a:b]`` there). ``chosen``: indices of the chunks in the prompt,
    in document order; ``ranking``: every chunk's index, most similar first; ``scores[i]``: chunk
    ``i``'s cosine similarity to the question. ``dim``: the retriever's embedding size.
    """

    ids: list[int]
    spans: list[tuple[int, int]]
    chosen: list[int]
    ranking: list[int]
    scores: list[float]
    dim: int

    @property
    def context_tokens(self) -> int:
        return sum(b - a for a, b in self.spans)

    def bytes_per_token(self) -> float:
        """What the baseline keeps per context token (:func:`embedding_bytes_per_token`)."""
        return embedding_bytes_per_token(len(self.spans), self.context_tokens, self.dim)

    def record(self) -> dict:
        """What an evaluation keeps of the retrieval (JSON): chunks chosen, their scores, how many."""
        return {
            "rag_chunks": list(self.chosen),
            "rag_scores": [round(self.scores[i], 4) for i in self.chosen],
            "rag_context_chunks": len(self.spans),
        }


def embedding_bytes_per_token(items: int, tokens: int, dim: int) -> float:
    """What the baseline keeps per context token: one float32 embedding of ``dim`` per item (a
    chunk, a demonstration) over the ``tokens`` the items hold (``items x dim x 4 / tokens``); the
    items' text is the document itself, kept by whoever holds the document."""
    return items * dim * 4 / max(1, tokens)


def chunk_spans(start: int, end: int, chunk_size: int) -> list[tuple[int, int]]:
    """The memory's chunks of the context ``[start, end)`` of a prompt: cut at the multiples of
    ``chunk_size`` (where the memory's chunks begin when it reads the prompt from its first token),
    the first and last clipped to the context."""
    if not 0 <= start <= end:
        raise ValueError(f"context span ({start}, {end}): expected 0 <= start <= end")
    cuts = list(range((start // chunk_size + 1) * chunk_size, end, chunk_size))
    edges = [start, *cuts, end]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def rank(items: torch.Tensor, question: torch.Tensor, k: int) -> tuple[list[int], list[int], list[float]]:
    """Ranks item embeddings ``[N, dim]`` by cosine similarity to a question's ``[dim]`` (all unit
    norm, as a retriever gives them). Returns (the best ``k`` indices in their original order,
    every index best first, every item's score); ties go to the earlier item."""
    scores = items.float() @ question.float().to(items.device)
    ranking = torch.argsort(scores, descending=True, stable=True).tolist()
    return sorted(ranking[:k]), ranking, scores.tolist()


@torch.no_grad()
def top_k_of(
    retriever, items: torch.Tensor, question: Sequence[int], k: int
) -> tuple[list[int], list[int], list[float]]:
    """:func:`rank` of item embeddings ``items`` against ``question``'s tokens, embedded by ``retriever``."""
    if not len(question):
        raise ValueError("rag: the question is empty (no tokens after the context); nothing to retrieve with")
    return rank(items, retriever.embed([list(map(int, question))])[0], k)


@torch.no_grad()
def top_k(
    retriever, items: Sequence[Sequence[int]], question: Sequence[int], k: int
) -> tuple[list[int], list[int], list[float]]:
    """:func:`rank` of ``items`` (token-id sequences) against ``question``'s tokens, both embedded
    by ``retriever`` in one batch (the retriever batches them: ``embed`` takes them all)."""
    if not len(question):
        raise ValueError("rag: the question is empty (no tokens after the context); nothing to retrieve with")
    if not items:
        return [], [], []
    emb = retriever.embed([list(map(int, it)) for it in items] + [list(map(int, question))])
    return rank(emb[:-1], emb[-1], k)


def embed_context(model, ids: Sequence[int], context: tuple[int, int]) -> torch.Tensor:
    """The embeddings ``[chunks, dim]`` of the context's chunks (:func:`chunk_spans`), one retriever
    batch: computed once, they serve every question about the same context (``rag_prompt(...,
    embeddings=)``)."""
    ids = [int(t) for t in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    spans = chunk_spans(*context, model.memlong_config.chunk_size)
    return model.memlong_retriever.embed([ids[a:b] for a, b in spans]) if spans else torch.zeros(0, 0)


def rag_prompt(
    model,
    ids: Sequence[int],
    context: tuple[int, int],
    new_tokens: int = 0,
    window: int | None = None,
    k: int | None = None,
    embeddings: torch.Tensor | None = None,
) -> RagPrompt:
    """The retrieval-augmented prompt of ``ids`` (a 1-D list or tensor of token ids) whose context
    is ``ids[start:end]`` (``context = (start, end)``) and whose question is the rest, ``ids[end:]``.

    ``model``: the MemLong model, for its retriever (``model.memlong_retriever``) and chunking
    (``memlong_config.chunk_size``; ``k`` defaults to its ``top_k``); a text retriever decodes
    the chunks with the model's tokenizer, as it does for the memory. The prompt must leave
    ``new_tokens`` to generate within ``window`` (default: the model's
    ``max_position_embeddings``, the base model's trained context): :class:`RagPromptTooLong`
    otherwise, saying by how much. ``embeddings``: the context's chunk embeddings from
    :func:`embed_context` (default: embedded here, with the question, in one batch).
    """
    ids = [int(t) for t in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    start, end = (int(x) for x in context)
    if end > len(ids):
        raise ValueError(f"context span ({start}, {end}) lies outside the {len(ids)}-token prompt")
    cfg = model.memlong_config
    k = cfg.top_k if k is None else int(k)
    if k < 1:
        raise ValueError(f"rag: k must be >= 1, got {k}")
    spans = chunk_spans(start, end, cfg.chunk_size)
    if embeddings is None:
        chosen, ranking, scores = top_k(model.memlong_retriever, [ids[a:b] for a, b in spans], ids[end:], k)
    else:
        if len(embeddings) != len(spans):
            raise ValueError(
                f"rag: {len(embeddings)} chunk embeddings for the {len(spans)} chunks of the context "
                f"({start}, {end}); compute them with embed_context on the same prompt and span"
            )
        chosen, ranking, scores = top_k_of(model.memlong_retriever, embeddings, ids[end:], k) if spans else ([], [], [])
    prompt = ids[:start] + [t for i in chosen for t in ids[spans[i][0] : spans[i][1]]] + ids[end:]
    window = window if window is not None else getattr(model.config, "max_position_embeddings", None)
    if window is not None and len(prompt) + new_tokens > window:
        raise RagPromptTooLong(
            f"the rag prompt has {len(prompt)} tokens ({len(chosen)} chunks of up to {cfg.chunk_size}, "
            f"{start} before the context, {len(ids) - end} of question) and {new_tokens} more are to be generated: "
            f"over the base model's {window}-token context; lower top_k (--set top_k=N) or shorten the question"
        )
    return RagPrompt(prompt, spans, chosen, ranking, scores, int(model.memlong_retriever.dim))


@torch.no_grad()
def rag_generate(
    model,
    base,
    ids: Sequence[int],
    context: tuple[int, int],
    max_new_tokens: int,
    embeddings: torch.Tensor | None = None,
    **generate_kwargs,
) -> tuple[RagPrompt, list[int]]:
    """The baseline's greedy answer: :func:`rag_prompt` (``model``'s retriever and chunks; the
    prompt must leave ``max_new_tokens`` within ``base``'s ``max_position_embeddings``), then the
    base model ``base`` alone generates after it. Returns (the prompt and what it retrieved, the
    generated token ids). ``embeddings``: as :func:`rag_prompt`'s. ``generate_kwargs`` go to
    ``base.generate`` (``pad_token_id``, ``stopping_criteria``)."""
    prompt = rag_prompt(
        model,
        ids,
        context,
        max_new_tokens,
        getattr(base.config, "max_position_embeddings", None),
        embeddings=embeddings,
    )
    x = torch.tensor([prompt.ids], device=next(base.parameters()).device)
    out = base.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs
    )
    return prompt, out[0, x.shape[1] :].tolist()
