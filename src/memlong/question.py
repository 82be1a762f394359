"""A question's search of a memory: retrieval with the question's own embedding, re-ranked by
the chunks' windows and the question's words.

Reading retrieves causally (chunk ``j`` with the embedding of chunk ``j - 1``). A question about
what was read retrieves with its own embedding instead, from :meth:`~QuestionSearch.focus_on` to
:meth:`~QuestionSearch.unfocus`, and scores each chunk by the best of its own similarity and its
windows' (:class:`QuestionRescore`), from the bank's window index (:func:`index_bank_windows`)
or embedded when asked. :class:`QuestionSearch` gives :class:`~memlong.cache.MemLongCache` these
methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memlong.memory.bank import MemoryBank, lexical_scores, window_starts
from memlong.profiling import phase
from memlong.retriever import Retriever


@torch.no_grad()
def index_bank_windows(banks: list[MemoryBank], retriever: Retriever, chunk_size: int) -> int:
    """Embeds, in one retriever batch, the windows of every chunk of ``banks`` not in their window
    index yet (see :meth:`QuestionSearch.index_windows`); returns the chunks indexed."""
    todo = []
    for bank in banks:
        slots = bank.unwindowed() if bank.layout.index_window else torch.zeros(0, dtype=torch.long)
        if slots.numel():
            todo.append((bank, slots, window_starts(chunk_size, bank.layout.index_window)))
    texts = [
        t[s : s + bank.layout.index_window]
        for bank, slots, starts in todo
        for t in bank.token_ids[slots].tolist()
        for s in starts
    ]
    if not texts:
        return 0
    with phase("retriever"):
        e = retriever.embed(texts)
    done = 0
    for bank, slots, starts in todo:
        n = len(slots) * len(starts)
        bank.set_window_embeddings(slots, e[:n].view(len(slots), len(starts), -1))
        e, done = e[n:], done + len(slots)
    return done


@dataclass(frozen=True, eq=False)
class QuestionRescore:
    """A question's ``rescore`` of the candidates of a search of ``bank`` (:meth:`MemoryBank.best`):
    each scores the best of its own similarity and its windows' (``window`` tokens each, at
    :func:`~memlong.memory.bank.window_starts`) to ``query``, plus ``weight`` times its share of
    the question's tokens ``words`` (:meth:`MemoryBank.lexical_scores`). ``indexed``: the windows'
    similarities come from the bank's window index, else the candidates' windows are embedded now.

    It holds the bank, not the memory (no reference cycle); a copy of the memory shares it, as it
    would share a function (copying it would copy the retriever).
    """

    bank: MemoryBank
    retriever: Retriever
    query: torch.Tensor
    window: int
    chunk_size: int
    indexed: bool
    words: torch.Tensor
    weight: float

    def __call__(self, slots: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        windows = self.indexed_scores(slots) if self.indexed else self.embedded_scores(slots)
        dense = torch.maximum(windows, scores.float().cpu())
        return dense + self.weight * self.bank.lexical_scores(slots, self.words) if self.weight else dense

    def indexed_scores(self, slots: torch.Tensor) -> torch.Tensor:
        """Each slot's best window similarity, from the window index (chunks banked since the
        question was asked, if any, are indexed first)."""
        index_bank_windows([self.bank], self.retriever, self.chunk_size)
        return self.bank.window_scores(slots, self.query)

    def embedded_scores(self, slots: torch.Tensor) -> torch.Tensor:
        """Each slot's best window similarity, its windows embedded now (one retriever batch)."""
        W, starts = self.window, window_starts(self.chunk_size, self.window)
        toks = self.bank.token_ids[slots]
        with phase("retriever"):
            e = self.retriever.embed([toks[i, s : s + W].tolist() for i in range(len(slots)) for s in starts])
        return (e.float() @ self.query.float().to(e.device)).view(len(slots), len(starts)).amax(1).cpu()

    def __deepcopy__(self, memo: dict) -> QuestionRescore:
        return self


class QuestionSearch:
    """:class:`~memlong.cache.MemLongCache`'s question-time search: retrieval focused on a question
    (:meth:`focus_on`, :meth:`unfocus`), how a question searches a bank (:meth:`question_search`),
    what it finds (:meth:`question_hits`, :meth:`question_tokens`), the window index
    (:meth:`index_windows`) and the hits a question reads again as text (:meth:`mark_reread`)."""

    @torch.no_grad()
    def focus_on(self, retriever: Retriever, tokens: list[list[int]], rows: list[int] | None = None) -> None:
        """Retrieves with a given text (a question) until :meth:`unfocus`: row ``rows[i]``'s
        query becomes the embedding of ``tokens[i]``, the chunk in progress retrieves again
        with it, and so does every chunk that starts meanwhile. For answering: read the
        question after this call and every token of it, and of the answer, attends to the
        chunks the question is about. The question's own tokens then depend on its end (the
        paper's same-chunk query): use it to answer, not to score the question."""
        rows = list(range(self.batch_size_)) if rows is None else list(rows)
        if len(tokens) != len(rows):
            raise ValueError(f"focus_on: {len(tokens)} token lists for {len(rows)} rows")
        if not self.retrieval:
            return
        with phase("retriever"):
            queries = retriever.embed([list(t) for t in tokens])
        self.index_windows(retriever, rows)  # one batch for every row (the window index, if kept)
        tau = self.config.chunk_size
        for b, query, tokens_b in zip(rows, queries, tokens):
            self.focus[b] = query
            self.focus_search[b] = self.question_search(b, query, retriever, list(tokens_b))
            if self.seen[b] % tau:
                self.chunk_mem[b][self.seen[b] // tau] = self._retrieve(b, query, self.focus_search[b])

    def unfocus(self, rows: list[int] | None = None) -> None:
        """Back to causal retrieval (see :meth:`focus_on`) for chunks that start from now on."""
        for b in range(self.batch_size_) if rows is None else rows:
            self.focus[b] = None
            self.focus_search[b] = {}

    def question_search(self, b: int, query: torch.Tensor, retriever: Retriever, tokens=None) -> dict:
        """How a question searches row ``b``'s bank: the keyword arguments (``rescore``,
        ``candidates``) of :meth:`MemoryBank.best` / :meth:`~MemoryBank.retrieve`. A chunk's score
        is the best of its own and its windows' of ``rerank_window`` tokens (half-overlapping): a
        short fact inside a long chunk of other text matches its window far better than the whole
        chunk's embedding. With the bank's window index (``rerank_index``) every chunk is scored
        from the stored window embeddings (chunks not indexed yet are first, :meth:`index_windows`);
        without one, the top ``rerank_candidates`` chunks' windows are embedded now. With the
        question's ``tokens`` and ``lexical_weight``, ``lexical_weight`` times the share of the
        question's words and word pairs a chunk holds (:func:`~memlong.memory.bank.lexical_scores`)
        is added: what an embedding misses ("pass key" against code full of ``pass``). ``{}``:
        plain cosine search (re-ranking off)."""
        cfg = self.config
        W = cfg.rerank_window
        if not cfg.rerank_candidates or W >= cfg.chunk_size:
            return {}
        bank = self.banks[b]
        weight = cfg.lexical_weight if tokens is not None and len(tokens) else 0.0
        words = torch.as_tensor(list(tokens) if weight else [], dtype=torch.long)
        indexed = bank.layout.index_window == W
        rescore = QuestionRescore(bank, retriever, query, W, cfg.chunk_size, indexed, words, weight)
        # with the window index every chunk is scored: the search returns all
        return {"rescore": rescore, "candidates": bank.capacity if indexed else cfg.rerank_candidates}

    @torch.no_grad()
    def index_windows(self, retriever: Retriever, rows: list[int] | None = None) -> int:
        """Completes the window index of rows' banks (``rerank_index``): embeds, in one retriever
        batch, the ``rerank_window``-token windows of every banked chunk that has none yet. Done
        when a question first needs them, so reading alone never pays for it; call it after reading
        to move that cost out of the first question. Returns the chunks indexed."""
        rows = range(self.batch_size_) if rows is None else rows
        return index_bank_windows([self.banks[b] for b in rows], retriever, self.config.chunk_size)

    @torch.no_grad()
    def question_hits(self, retriever: Retriever, tokens: list[int], row: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank slots a question of ``tokens`` retrieves once :meth:`focus_on` is given them
        (``generate(requery=...)``, ``memlong ask``), best first, with their scores: the search
        and the window re-ranking the model runs, counters untouched. For showing a user what
        an answer reads (``bank.entries()``, ``bank.text_spans[slot]``). ``retrieval_offsets``
        other than ``(0,)`` also bring each hit's neighbours, not listed here."""
        bank = self.banks[row]
        if len(bank) == 0:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0)
        with phase("retriever"):
            query = retriever.embed([list(tokens)])[0]
        return bank.best(query, self.config.top_k, **self.question_search(row, query, retriever, list(tokens)))

    @torch.no_grad()
    def question_reads(
        self, retriever: Retriever, tokens: list[int], row: int = 0
    ) -> list[tuple[int, float, int | None]]:
        """The hits a question of ``tokens`` reads, best first, as ``(chunk id, score, bank slot)``:
        :meth:`question_hits`, and with ``question_window`` the best ``top_k`` of those and the local
        window's whole chunks (:meth:`window_hits`; their slot is ``None``), the choice
        :meth:`question_tokens` reads again; counters untouched. For showing a user what an answer
        reads (a window chunk's text: ``chunk_tokens`` / ``chunk_chars``)."""
        bank = self.banks[row]
        if not self.retrieval or len(bank) == 0:
            return []
        with phase("retriever"):
            query = retriever.embed([list(tokens)])[0]
        return [(c, score, slot) for score, c, slot in self._chosen(row, query, retriever, list(tokens))]

    def _chosen(self, b: int, query: torch.Tensor, retriever: Retriever, tokens: list[int]) -> list[tuple]:
        """The hits a question reads again from row ``b``'s memory, best first, as ``(score, chunk id,
        bank slot or None)``: the best ``top_k`` of the bank's and (``question_window``) the local
        window's whole chunks (:meth:`window_hits`), older first among equal scores, less those under
        ``question_score_ratio`` of the best."""
        search = self.question_search(b, query, retriever, tokens)
        hits, scores = self.banks[b].best(query, self.config.top_k, **search)
        ids = self.banks[b].chunk_ids
        both = [(float(s), int(ids[h]), int(h)) for h, s in zip(hits.tolist(), scores.tolist())]
        if self.config.question_window:
            both += [(s, c, None) for s, c, _ in self.window_hits(b, query, retriever, tokens, search)]
        best = sorted(both, key=lambda x: (-x[0], x[1]))[: self.config.top_k]
        return [hit for hit in best if self._sure(hit[0], best[0][0])]

    def _sure(self, score: float, best: float) -> bool:
        """Whether a hit scoring ``score`` is read again beside the best hit's ``best``
        (``question_score_ratio``; the best hit always is)."""
        ratio = self.config.question_score_ratio
        return not ratio or best <= 0 or score >= ratio * best

    @torch.no_grad()
    def question_tokens(
        self, retriever: Retriever, tokens: list[list[int]], rows: list[int] | None = None
    ) -> list[list[int]]:
        """For each of ``rows`` (all by default), the token ids of the chunks a question of
        ``tokens[i]`` retrieves from the bank as it is now (as :meth:`focus_on` would): its hits and
        what ``question_offsets`` bring, in ``question_order``, back to back; counters untouched.
        With ``question_window``, the hits are the best ``top_k`` of the bank's and the local
        window's whole chunks (:meth:`window_hits`); a window chunk brings itself alone. With
        ``question_tail``, each is followed by the start of the chunk after it (:meth:`_text_of`).
        With ``question_score_ratio``, a hit scoring under that share of the best hit's score is
        left out. ``question_reread`` reads them as text just before the question
        (``generate(requery=...)``)."""
        rows = list(range(self.batch_size_)) if rows is None else list(rows)
        if len(tokens) != len(rows):
            raise ValueError(f"question_tokens: {len(tokens)} token lists for {len(rows)} rows")
        if not self.retrieval or not any(len(self.banks[b]) for b in rows):
            return [[] for _ in rows]
        with phase("retriever"):
            queries = retriever.embed([list(t) for t in tokens])
        self.index_windows(retriever, rows)
        out: list[list[int]] = []
        for b, query, tokens_b in zip(rows, queries, tokens):
            bank = self.banks[b]
            if len(bank) == 0:
                out.append([])
                continue
            chosen = self._chosen(b, query, retriever, list(tokens_b))
            out.append(self._text_of(b, self._reread_chunks(bank, chosen, self._offsets(question=True))))
        return out

    def _text_of(self, b: int, chunks: list[int]) -> list[int]:
        """The tokens of row ``b``'s ``chunks`` (ids, from the bank or the local window), back to
        back, each followed by the first ``question_tail`` tokens of the chunk after it where that
        one is not read next: a statement cut by a chunk boundary ("... is: 22" | "89301.") is
        read whole."""
        bank, tail = self.banks[b], self.config.question_tail
        stored = bank.slots_by_chunk()

        def text(c: int) -> list[int]:
            if c in stored:
                return bank.token_ids[stored[c]].tolist()
            return list(self.chunk_tokens[b].get(c, []))

        out: list[int] = []
        for i, c in enumerate(chunks):
            out += text(c)
            if tail and (i + 1 == len(chunks) or chunks[i + 1] != c + 1):
                out += text(c + 1)[:tail]
        return out

    def window_hits(
        self, b: int, query: torch.Tensor, retriever: Retriever, tokens: list[int], search: dict
    ) -> list[tuple[float, int, list[int]]]:
        """The whole chunks of row ``b``'s local window (not yet banked, not reread text), scored as
        :meth:`question_search` scores the bank's (document frequencies over the bank), the best
        ``top_k``: ``(score, chunk id, tokens)``, best first. With ``question_window``,
        :meth:`question_tokens` takes its hits from these and the bank's together: reading the
        hits again as text (``question_reread``) pushes the oldest of the window out of it, and a
        fact read there, not in the bank yet, is then one of the hits, not lost between the two."""
        tau = self.config.chunk_size
        chunks = [
            c
            for c, t in sorted(self.chunk_tokens[b].items())
            if len(t) == tau
            and c in self.chunk_emb[b]
            and not any(s <= c * tau and (c + 1) * tau <= e for s, e in self.reread[b])
        ]
        if not chunks:
            return []
        q = query.detach().float().cpu()
        scores = torch.stack([self.chunk_emb[b][c].float().cpu() for c in chunks]) @ q
        rescore = search.get("rescore")
        if rescore is not None:
            W, starts = rescore.window, window_starts(tau, rescore.window)
            with phase("retriever"):
                e = retriever.embed([self.chunk_tokens[b][c][s : s + W] for c in chunks for s in starts])
            scores = torch.maximum(scores, (e.float().cpu() @ q).view(len(chunks), len(starts)).amax(1))
            if rescore.weight:
                bank = rescore.bank
                corpus = bank.token_ids[bank.valid]
                held = torch.tensor([self.chunk_tokens[b][c] for c in chunks], dtype=corpus.dtype)
                scores = scores + rescore.weight * lexical_scores(corpus, rescore.words, held)
        ranked = sorted(zip(scores.tolist(), chunks), key=lambda x: (-x[0], x[1]))[: self.config.top_k]
        return [(s, c, list(self.chunk_tokens[b][c])) for s, c in ranked]

    def _reread_chunks(self, bank: MemoryBank, chosen: list[tuple], offsets) -> list[int]:
        """The chunks (ids) a question reads again for its hits ``chosen`` (:meth:`_chosen`): a bank
        hit brings its ``offsets`` as :meth:`MemoryBank.select` does, a window hit itself alone; in
        stream order, or (``question_order="score"``) hit by hit from the worst to the best."""
        stored = bank.slots_by_chunk()
        picked: list[int] = []  # chunk ids, worst hit first
        for _, c, slot in reversed(chosen):
            picked += [c + o for o in offsets if c + o in stored] if slot is not None else [c]
        last = {c: i for i, c in enumerate(picked)}
        picked = [c for i, c in enumerate(picked) if last[c] == i]
        if self.config.question_order != "score":
            picked.sort()
        return picked

    def mark_reread(self, row: int, start: int, end: int) -> None:
        """Stream positions ``start..end - 1`` of row ``row`` hold text read again from its bank
        (``question_reread``: a question's hits read as text before it). A chunk made only of
        them is dropped, not banked, when it leaves the window: the bank holds that text already,
        and a second copy would take a later search's slot beside the original. A chunk that also
        holds other text (the document before, the question after) is banked as usual."""
        if not self.seen[row] >= end >= start >= 0:
            raise ValueError(f"mark_reread({row}, {start}, {end}): not a range of the {self.seen[row]} tokens read")
        if end > start:
            self.reread[row].append([start, end])
