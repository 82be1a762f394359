"""The memory bank of one sequence: chunk-level K/V, retrieval embeddings, counters.

Every entry is one chunk of ``chunk_size`` tokens and holds, in the same slot of parallel
tensors (so they cannot get out of step):

* ``keys`` / ``values`` ``[H_kv, tau, D]``: the memory layer's K and V for the chunk, unrotated
  (as if at position 0);
* ``embeddings`` ``[dim]``: the frozen retriever's unit-norm embedding of the chunk;
* ``window_embeddings`` ``[n_windows, dim]`` (float16; only when ``BankLayout.index_window``):
  the retriever's embeddings of the chunk's half-overlapping windows of ``index_window`` tokens
  (:func:`window_starts`), the window index a question searches (:meth:`MemoryBank.window_scores`);
  ``windowed`` says which slots have theirs (they are embedded when first needed:
  :meth:`~memlong.cache.MemLongCache.index_windows`);
* ``chunk_ids``: the chunk's index in the stream (its age; ``-1`` marks a free slot);
* ``spans`` ``[2]``: its token span ``[start, end)`` in the stream;
* ``token_ids`` ``[tau]``: its tokens (decode them to see what was stored or retrieved);
* ``text_spans`` ``[2]``: its character span ``[start, end)`` in the source text, when the text
  was given (``model.ingest_text``), else ``(-1, -1)``;
* ``counts``: how many times it has been retrieved.

K/V storage (``BankLayout.dtype``) is float32/float16/bfloat16, or compressed: ``int8`` or
``float8_e4m3fn`` with one float32 scale per (chunk, head, token) (absmax scaling), dequantized
to ``compute_dtype`` when gathered. Tiers (``BankLayout.device``/``mmap_dir``): K/V live on the
model's device, in host memory (pinned when the model is on a GPU, so retrieved chunks are copied to
the GPU asynchronously), or in a memory-mapped file; only the retrieved chunks go to the model.

Eviction frees slots in place; new chunks take free slots, so nothing large is ever copied.
Storage grows with use up to the capacity (so a large capacity costs nothing until used): K/V in
pages (:class:`~memlong.memory.paged.PagedTensor`) that are added, never reallocated, so growing
the bank does not hold its old and new storage at once.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from functools import partial

import torch

from memlong.memory.index import APPROXIMATE_ABOVE, make_index
from memlong.memory.paged import PagedTensor
from memlong.memory.persistence import BankFileError as BankFileError  # what MemoryBank.load raises
from memlong.memory.persistence import BankFiles

# Largest K/V page (per tensor): growth adds pages of at most this size.
PAGE_BYTES = 64 * 2**20
#: the name of a memory-mapped K/V page's file (unlinked as soon as it is mapped)
MMAP_PREFIX = "memlong-kv-"
# Search: candidates fetched beyond k (at least k more), re-ranked exactly; and how close a
# backend's score may come to the k-th best before more candidates are fetched (float32
# inner products of unit vectors differ between backends in the last bits).
TIE_CANDIDATES = 8
TIE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class BankLayout:
    """Shapes and dtypes shared by every bank of a model."""

    capacity: int  # in chunks
    chunk_size: int
    num_kv_heads: int
    head_dim: int
    embed_dim: int
    dtype: torch.dtype = torch.float32  # storage dtype of K/V (may be int8 / float8_e4m3fn)
    device: str | torch.device = "cpu"  # where K/V and embeddings are stored
    compute_dtype: torch.dtype | None = None  # dtype gathered K/V come back in (None: ``dtype``)
    mmap_dir: str | None = None  # K/V in memory-mapped files in this folder (host tier)
    pin_memory: bool = False  # host tier feeding a GPU model: page-locked, for asynchronous copies
    index_window: int = 0  # tokens per window of the window index (0: no window index)
    # the (1-based layer, KV head) each stored head is, in order (MemLongConfig.bank_heads);
    # None: every KV head of each banked layer
    heads: tuple[tuple[int, int], ...] | None = None

    @property
    def windows(self) -> int:
        """Window embeddings stored per chunk (0 without a window index)."""
        return len(window_starts(self.chunk_size, self.index_window)) if self.index_window else 0

    @property
    def quantized(self) -> bool:
        return self.dtype in QUANTIZED

    @property
    def out_dtype(self) -> torch.dtype:
        return self.compute_dtype or (torch.float32 if self.quantized else self.dtype)

    def kv_bytes_per_token(self) -> int:
        """Bytes of stored K/V (and scales) per token: the bank's payload."""
        per = 2 * self.num_kv_heads * self.head_dim * torch.empty(0, dtype=self.dtype).element_size()
        return per + (2 * self.num_kv_heads * 4 if self.quantized else 0)

    def slot_bytes(self) -> int:
        """Bytes of one slot of a bank (:meth:`MemoryBank.nbytes` is this times its slots): the
        chunk's K/V (and scales), its float32 embedding, its float16 window embeddings, its token
        ids (int32) and the per-slot records (windowed flag, chunk id, token and text spans,
        counter). The search index's own copy of the embedding (faiss) is not counted."""
        per_slot_records = 1 + 8 + 2 * 8 + 8 + 2 * 8  # windowed, chunk_ids, spans, counts, text_spans
        return (
            self.chunk_size * (self.kv_bytes_per_token() + 4)
            + 4 * self.embed_dim
            + 2 * self.windows * self.embed_dim
            + per_slot_records
        )

    def bytes_per_token(self) -> float:
        """What the bank keeps per banked token: :meth:`slot_bytes` over ``chunk_size``."""
        return self.slot_bytes() / self.chunk_size


def window_starts(chunk_size: int, window: int) -> list[int]:
    """Start offsets of a chunk's half-overlapping windows of ``window`` tokens (the window index
    and the question's re-ranking use the same ones); none when the window is the whole chunk."""
    if window >= chunk_size:
        return []
    return list(range(0, chunk_size - window + 1, max(1, window // 2)))


# compressed K/V dtypes -> largest representable magnitude (absmax maps to it)
QUANTIZED: dict[torch.dtype, float] = {torch.int8: 127.0}
if hasattr(torch, "float8_e4m3fn"):
    QUANTIZED[torch.float8_e4m3fn] = float(torch.finfo(torch.float8_e4m3fn).max)


_BIGRAM = 1 << 32  # token id pairs coded as a * _BIGRAM + b (token ids are below 2**31)


def _grams(ids: torch.Tensor) -> torch.Tensor:
    """``ids`` ``[..., t]`` -> its unigrams and bigrams as int64 codes ``[..., 2t - 1]``."""
    ids = ids.long()
    return torch.cat([ids, ids[..., :-1] * _BIGRAM + ids[..., 1:]], -1)


def lexical_scores(
    corpus: torch.Tensor, question: list[int] | torch.Tensor, chunks: torch.Tensor | None = None
) -> torch.Tensor:
    """The share of a question's words and word pairs that each of ``chunks`` ``[m, tau]``
    holds, each weighted by its rarity: the question's distinct token unigrams and bigrams,
    weighted by BM25's inverse document frequency over ``corpus`` ``[n, tau]`` (every stored
    chunk); a chunk scores the sum of the weights of those it holds over their total, in [0, 1].
    A word every chunk holds weighs almost nothing; a pair such as "pass key" that one chunk
    holds decides. Presence, not counts: a chunk repeating one of the words (code full of
    ``pass``) scores no more than a chunk holding it once. Exact token ids, as the LM tokenized.
    ``chunks=None`` scores the corpus's own chunks (what a question over the whole bank does)."""
    q = torch.as_tensor(question, dtype=torch.long).flatten()
    if chunks is None:
        chunks = corpus
    if q.numel() == 0 or chunks.shape[0] == 0:
        return torch.zeros(chunks.shape[0])
    terms = torch.unique(_grams(q))

    def holds(rows: torch.Tensor) -> torch.Tensor:  # [rows, terms]: each gram looked up among the sorted terms
        held = torch.zeros(rows.shape[0], len(terms) + 1, dtype=torch.bool)
        for i in range(0, rows.shape[0], 8192):  # bounded work memory: [8192, 2 tau - 1] codes at a time
            grams = _grams(rows[i : i + 8192])
            at = torch.searchsorted(terms, grams).clamp_max(len(terms) - 1)
            # a gram that matches no term marks the spare last column
            held[i : i + 8192].scatter_(1, torch.where(terms[at] == grams, at, len(terms)), True)
        return held[:, :-1]

    n = corpus.shape[0]
    held_corpus = holds(corpus)
    df = held_corpus.sum(0).float()
    idf = torch.log1p((n - df + 0.5) / (df + 0.5))
    held = held_corpus if chunks is corpus else holds(chunks)
    return held.float() @ idf / idf.sum()


def quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[..., D]`` -> (``dtype`` values, float32 scales ``[...]``), absmax per row."""
    top = QUANTIZED[dtype]
    scale = x.float().abs().amax(-1).clamp_min(1e-12) / top
    y = x.float() / scale.unsqueeze(-1)
    y = y.round().clamp(-top, top) if dtype == torch.int8 else y
    return y.to(dtype), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale.unsqueeze(-1)).to(dtype)


def _kv_page(L: BankLayout, n: int, scales: bool = False) -> torch.Tensor:
    """A zeroed page of K/V storage (or of their scales) for ``n`` slots on the bank's tier.
    Memory-mapped files are unlinked at once: the mapping keeps them alive and nothing is
    left on disk when the bank goes away."""
    shape = (n, L.num_kv_heads, L.chunk_size) + (() if scales else (L.head_dim,))
    dtype = torch.float32 if scales else L.dtype
    if n == 0:
        return torch.zeros(shape, dtype=dtype, device="cpu" if L.mmap_dir is not None else L.device)
    if L.mmap_dir is not None:
        import tempfile

        os.makedirs(L.mmap_dir, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=MMAP_PREFIX, dir=L.mmap_dir)
        os.close(fd)
        try:
            return torch.from_file(path, shared=True, size=math.prod(shape), dtype=dtype).view(shape)
        finally:
            os.unlink(path)
    return torch.zeros(shape, dtype=dtype, device=L.device, pin_memory=L.pin_memory)


class MemoryBank(BankFiles):
    """Chunk memory of one sequence (see the module docstring for what a slot holds).

    Args:
        layout: shapes/dtypes.
        eviction: ``"counter"`` (paper) or ``"fifo"``.
        keep_newest, drop_oldest, target: fractions of the counter rule.
        search_backend: ``"faiss"`` or ``"torch"`` (both exact cosine), or ``"auto"`` (exact up to
            ``approximate_above`` chunks, HNSW above: :class:`~memlong.memory.index.AutoIndex`).
        approximate_above: the ``"auto"`` backend's switch point, in chunks.

    ``save`` / ``load``: the bank's files (:class:`~memlong.memory.persistence.BankFiles`).
    """

    def __init__(
        self,
        layout: BankLayout,
        eviction: str = "counter",
        keep_newest: float = 0.1,
        drop_oldest: float = 0.1,
        target: float = 0.5,
        search_backend: str = "faiss",
        approximate_above: int = APPROXIMATE_ABOVE,
    ):
        if eviction not in ("counter", "fifo"):
            raise ValueError(f"unknown eviction policy {eviction!r}; choose 'counter' or 'fifo'")
        self.layout = layout
        self.eviction = eviction
        self.keep_newest = keep_newest
        self.drop_oldest = drop_oldest
        self.target = target
        self.search_backend = search_backend
        self.approximate_above = approximate_above
        self.evictions = 0  # number of eviction rounds, for logs and tests
        # what eviction dropped, so that it is never silent: merged [start, end) token ranges and,
        # where the text was given, character ranges (``evicted_report``)
        self.evicted_chunks = 0
        self.evicted_spans: list[list[int]] = []
        self.evicted_text_spans: list[list[int]] = []
        self.metadata: dict = {}  # what a loaded bank was saved with
        self._allocate(0)

    # ------------------------------------------------------------------ storage
    def _allocate(self, n: int) -> None:
        L = self.layout
        # page factories hold the layout, not the bank: a bank in a reference cycle with its own
        # storage would keep its K/V alive until the garbage collector ran
        self.keys, self.values = PagedTensor(partial(_kv_page, L)), PagedTensor(partial(_kv_page, L))
        self.key_scales = PagedTensor(partial(_kv_page, L, scales=True)) if L.quantized else None
        self.value_scales = PagedTensor(partial(_kv_page, L, scales=True)) if L.quantized else None
        for t in self._kv_storage():
            t.extend(n)
        self.embeddings = torch.zeros(n, L.embed_dim, dtype=torch.float32, device=L.device)
        self.window_embeddings = (
            torch.zeros(n, L.windows, L.embed_dim, dtype=torch.float16, device=L.device) if L.windows else None
        )
        self.windowed = torch.zeros(n, dtype=torch.bool)
        self.chunk_ids = torch.full((n,), -1, dtype=torch.long)
        self.spans = torch.zeros(n, 2, dtype=torch.long)
        self.token_ids = torch.zeros(n, L.chunk_size, dtype=torch.int32)
        self.text_spans = torch.full((n, 2), -1, dtype=torch.long)
        self.counts = torch.zeros(n, dtype=torch.long)
        self.index = make_index(self.search_backend, L.embed_dim, self.approximate_above)

    def _kv_storage(self) -> list[PagedTensor]:
        return [t for t in (self.keys, self.values, self.key_scales, self.value_scales) if t is not None]

    def _grow(self) -> None:
        """More slots: as many again as there are (at least 4), at most a page of
        :data:`PAGE_BYTES` of K/V, never past the capacity. K/V get a new page (nothing stored
        is copied); the small per-slot tensors are reallocated."""
        L = self.layout
        old = self.num_slots
        per_slot = L.num_kv_heads * L.chunk_size * L.head_dim * torch.empty(0, dtype=L.dtype).element_size()
        pad = min(L.capacity - old, max(4, old), max(1, PAGE_BYTES // per_slot))

        def grow(t: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
            extra = torch.full((pad, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)
            return torch.cat([t, extra])

        for t in self._kv_storage():
            t.extend(pad)
        self.embeddings = grow(self.embeddings)
        if self.window_embeddings is not None:
            self.window_embeddings = grow(self.window_embeddings)
        self.windowed = grow(self.windowed, False)
        self.chunk_ids = grow(self.chunk_ids, -1)
        self.spans, self.token_ids, self.counts = grow(self.spans), grow(self.token_ids), grow(self.counts)
        self.text_spans = grow(self.text_spans, -1)

    @property
    def num_slots(self) -> int:
        return self.chunk_ids.shape[0]

    @property
    def valid(self) -> torch.Tensor:
        """``[num_slots]`` bool: which slots hold a chunk."""
        return self.chunk_ids >= 0

    def __len__(self) -> int:
        return int(self.valid.sum())

    @property
    def capacity(self) -> int:
        return self.layout.capacity

    def slot_bytes(self) -> int:
        """Bytes one slot takes in this bank's tensors (:meth:`nbytes` per slot) plus its search
        index entry: what each chunk of capacity costs once used."""
        return self.layout.slot_bytes() + self.layout.embed_dim * 4  # the index keeps its own copy of the embedding

    def nbytes(self) -> int:
        """Bytes held by the bank's tensors (allocated slots, used or free)."""
        ts = (
            self.keys,
            self.values,
            self.key_scales,
            self.value_scales,
            self.embeddings,
            self.window_embeddings,
            self.windowed,
            self.chunk_ids,
            self.spans,
            self.token_ids,
            self.counts,
            self.text_spans,
        )
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    # ------------------------------------------------------------------ write
    def add(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        embedding: torch.Tensor,
        chunk_id: int,
        span: tuple[int, int],
        token_ids: torch.Tensor | None = None,
        text_span: tuple[int, int] | None = None,
        window_embeddings: torch.Tensor | None = None,
    ) -> int:
        """Stores one chunk, evicting first if the bank is full. Returns its slot.

        Args:
            keys, values: ``[H_kv, tau, D]`` memory-layer K/V, unrotated.
            embedding: ``[dim]`` unit-norm retrieval embedding.
            chunk_id: the chunk's index in the stream; must exceed every stored one.
            span: ``(start, end)`` token positions in the stream.
            token_ids: ``[tau]`` the chunk's tokens.
            text_span: ``(start, end)`` characters in the source text, if known.
            window_embeddings: ``[layout.windows, dim]`` its windows' embeddings, if known (else
                :meth:`set_window_embeddings` later); ignored when the bank keeps no window index.
        """
        L = self.layout
        if keys.shape != (L.num_kv_heads, L.chunk_size, L.head_dim) or values.shape != keys.shape:
            raise ValueError(
                f"chunk K/V must be [H_kv={L.num_kv_heads}, tau={L.chunk_size}, D={L.head_dim}], "
                f"got keys {tuple(keys.shape)} and values {tuple(values.shape)}"
            )
        if embedding.shape != (L.embed_dim,):
            raise ValueError(f"embedding must be [{L.embed_dim}], got {tuple(embedding.shape)}")
        if L.windows and window_embeddings is not None and window_embeddings.shape != (L.windows, L.embed_dim):
            raise ValueError(
                f"window_embeddings must be [{L.windows}, {L.embed_dim}], got {tuple(window_embeddings.shape)}"
            )
        n = len(self)
        if n and chunk_id <= int(self.chunk_ids.max()):
            raise ValueError(f"chunk ids must increase: got {chunk_id} after {int(self.chunk_ids.max())}")
        if n >= L.capacity:
            self.evict()
        free = (~self.valid).nonzero().flatten()
        if free.numel() == 0:
            self._grow()
            free = (~self.valid).nonzero().flatten()
        slot = int(free[0])
        self._store(slot, keys, values)
        self.embeddings[slot] = embedding.to(self.embeddings)
        self.windowed[slot] = False
        if L.windows and window_embeddings is not None:
            self.set_window_embeddings(torch.tensor([slot]), window_embeddings.unsqueeze(0))
        self.chunk_ids[slot] = chunk_id
        self.spans[slot, 0], self.spans[slot, 1] = int(span[0]), int(span[1])
        if token_ids is not None:
            self.token_ids[slot] = token_ids.to(torch.int32).cpu()
        self.text_spans[slot, 0], self.text_spans[slot, 1] = text_span if text_span is not None else (-1, -1)
        self.counts[slot] = 0
        self.index.add(slot, self.embeddings[slot])
        return slot

    def _store(self, slot, keys: torch.Tensor, values: torch.Tensor, key_scales=None, value_scales=None) -> None:
        """Writes K/V (``[..., H_kv, tau, D]``) to ``slot`` (an int or slots), quantizing if the
        bank is compressed; already-quantized data comes with its scales."""
        dev = self.keys.device
        if not self.layout.quantized:
            self.keys[slot] = keys.to(device=dev, dtype=self.keys.dtype)
            self.values[slot] = values.to(device=dev, dtype=self.values.dtype)
            return
        for data, scales, store, store_scales in (
            (keys, key_scales, self.keys, self.key_scales),
            (values, value_scales, self.values, self.value_scales),
        ):
            if scales is None:
                data, scales = quantize(data, self.layout.dtype)
            store[slot] = data.to(dev)
            store_scales[slot] = scales.to(dev)

    # ------------------------------------------------------------------ eviction
    def eviction_plan(self) -> torch.Tensor:
        """Slots the policy would free now (sorted). Pure: changes nothing.

        ``fifo``: the oldest chunk. ``counter`` (paper, sec. 3.2): with n chunks stored, keep the
        newest ``floor(keep_newest*C)``, drop the oldest ``floor(drop_oldest*C)``, then delete the
        least-retrieved chunks of the middle (ties: older first) until ``floor(target*C)``
        remain, where C is the capacity.
        """
        slots = self.valid.nonzero().flatten()
        order = slots[torch.argsort(self.chunk_ids[slots])]  # oldest first
        n = order.numel()
        if n == 0:
            return order
        if self.eviction == "fifo":
            return order[:1]
        n_old, n_new, more = self._counter_round(n)
        oldest = order[:n_old]
        middle = order[n_old : n - n_new]
        if more > middle.numel():
            raise RuntimeError("eviction fractions leave too few middle chunks")  # guarded by config
        # Least-retrieved first; stable sort keeps age order among equal counts (older first).
        by_count = middle[torch.sort(self.counts[middle], stable=True).indices]
        victims = torch.cat([oldest, by_count[:more]])
        return torch.sort(victims).values

    def _counter_round(self, n: int) -> tuple[int, int, int]:
        """The counter rule's round with ``n`` chunks stored: (oldest dropped, newest kept, least
        retrieved of the middle dropped)."""
        C = self.capacity
        n_old = min(n, math.floor(self.drop_oldest * C))
        n_new = min(n - n_old, math.floor(self.keep_newest * C))
        keep_total = min(n, max(0, math.floor(self.target * C)))
        return n_old, n_new, max(0, n - keep_total - n_old)

    def chunks_after(self, n: int) -> int:
        """Chunks stored after ``n`` more are added (pure): what the policy's rounds leave, which
        depends only on the counts (``fifo`` frees one slot a round, ``counter`` down to
        ``floor(target * capacity)``), not on which chunks go."""
        stored, C = len(self), self.capacity
        if stored + n <= C:
            return stored + n
        n -= C - stored  # the adds that fill the bank; each later add first evicts a round
        n_old, _, more = self._counter_round(C)
        after = C - 1 if self.eviction == "fifo" else C - n_old - more
        per_round = C - after  # adds between two rounds (a round frees at least one slot)
        return after + 1 + (n - 1) % per_round

    def evict(self) -> torch.Tensor:
        """Applies :meth:`eviction_plan`; returns the freed slots. What it drops is recorded
        (:meth:`evicted_report`)."""
        victims = self.eviction_plan()
        self._record_evicted(victims)
        self.index.remove(victims)
        self.chunk_ids[victims] = -1
        self.counts[victims] = 0
        self.windowed[victims] = False
        self.evictions += 1
        return victims

    def _record_evicted(self, victims: torch.Tensor) -> None:
        self.evicted_chunks += int(victims.numel())
        for s in victims[torch.argsort(self.chunk_ids[victims])].tolist():
            merge_range(self.evicted_spans, self.spans[s].tolist())
            a, b = self.text_spans[s].tolist()
            if 0 <= a < b:
                merge_range(self.evicted_text_spans, [a, b])

    def evicted_report(self) -> dict:
        """What eviction has dropped since the bank was created or reset: ``rounds``, ``chunks``,
        ``tokens``, the token ranges ``spans`` (``[start, end)``, merged where adjacent, in stream
        order) and the character ranges ``text_spans`` of those whose text was given."""
        return {
            "rounds": self.evictions,
            "chunks": self.evicted_chunks,
            "tokens": self.evicted_chunks * self.layout.chunk_size,
            "spans": [list(r) for r in self.evicted_spans],
            "text_spans": [list(r) for r in self.evicted_text_spans],
        }

    def drop_window_index(self) -> None:
        """Forgets the window index (a bank loaded into a model whose config keeps another one, or
        none): its questions then re-rank by embedding windows when asked."""
        self.layout = dataclasses.replace(self.layout, index_window=0)
        self.window_embeddings = None
        self.windowed.zero_()

    def reset(self) -> None:
        """Forgets everything (keeps the layout)."""
        self.evictions = self.evicted_chunks = 0
        self.evicted_spans, self.evicted_text_spans = [], []
        self._allocate(0)

    # ------------------------------------------------------------------ search
    def search(self, query: torch.Tensor, k: int, count: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine top-k, deterministic. ``query`` ``[dim]`` unit norm.

        The index proposes candidates (a few more than ``k``); their scores are recomputed here
        from the stored embeddings, the same arithmetic for every backend, and ordered by score,
        then by chunk id (older first) among equal scores. While the last candidate could still
        tie with the k-th, more candidates are fetched. So the same bank retrieves the same
        chunks whatever the backend (torch scan, faiss flat, HNSW) or faiss version orders ties.

        Returns ``(slots, scores)``, at most ``k`` each, best first. ``count`` bumps the
        retrieval counter of every returned chunk (the paper's counter).
        """
        n = len(self)
        if n == 0:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0)
        k = min(k, n)
        want = min(n, k + max(TIE_CANDIDATES, k))
        q = query.detach().float()
        while True:
            _, cand = self.index.search(q, want, self.embeddings, self.valid)
            emb = self.embeddings[cand.to(self.embeddings.device)].float()
            scores = (emb * q.to(emb.device)).sum(-1).cpu()  # row by row: no batch-size-dependent blocking
            order = self.rank(cand, scores)
            top = order[:k]
            done = want >= n or len(cand) < want or bool(scores[order[-1]] < scores[top[-1]] - TIE_TOLERANCE)
            if done:
                break
            want = min(n, 2 * want)
        slots, scores = cand[top], scores[top]
        if count:
            self.counts[slots] += 1
        return slots, scores

    def unwindowed(self) -> torch.Tensor:
        """Stored chunks whose window embeddings are not in the window index yet (slots, oldest first)."""
        slots = (self.valid & ~self.windowed).nonzero().flatten()
        return slots[torch.argsort(self.chunk_ids[slots])]

    def set_window_embeddings(self, slots: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Stores ``embeddings`` ``[len(slots), layout.windows, dim]``: the windows of those chunks."""
        L = self.layout
        if not L.windows:
            raise ValueError("this bank keeps no window index (BankLayout.index_window is 0)")
        if embeddings.shape != (len(slots), L.windows, L.embed_dim):
            raise ValueError(
                f"window embeddings must be [{len(slots)}, {L.windows}, {L.embed_dim}], got {tuple(embeddings.shape)}"
            )
        self.window_embeddings[slots.to(self.window_embeddings.device)] = embeddings.to(self.window_embeddings)
        self.windowed[slots] = True

    def window_scores(self, slots: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Each slot's best window similarity to ``query`` (the window index: every slot must have
        its windows, see :meth:`unwindowed`)."""
        if not bool(self.windowed[slots].all()):
            raise RuntimeError("window_scores: some chunks have no window embeddings yet (index them first)")
        w = self.window_embeddings[slots.to(self.window_embeddings.device)].float()
        return (w @ query.detach().float().to(w.device)).amax(1).cpu()

    def lexical_scores(self, slots: torch.Tensor, tokens: list[int] | torch.Tensor) -> torch.Tensor:
        """How much of a question's words each of ``slots`` contains, in [0, 1] (see
        :func:`lexical_scores`; document frequencies over every stored chunk)."""
        valid = self.valid.nonzero().flatten()
        scores = lexical_scores(self.token_ids[valid], tokens)  # every stored chunk, in one pass
        position = torch.full((self.num_slots,), -1, dtype=torch.long)
        position[valid] = torch.arange(len(valid))
        return scores[position[slots.cpu()]]

    def rank(self, slots: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The order of ``slots`` by ``scores``, best first, older chunk first among equal scores:
        the one ordering every search and re-ranking uses, so ties never depend on a backend."""
        by_id = torch.argsort(self.chunk_ids[slots], stable=True)
        return by_id[torch.argsort(scores[by_id], descending=True, stable=True)]

    def best(self, query: torch.Tensor, k: int, rescore=None, candidates: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best slots for ``query`` and their scores, best first, counters untouched:
        cosine search, or, with ``rescore`` and ``candidates > k``, the top ``candidates`` scored
        again by ``rescore(slots, scores)`` (see :meth:`retrieve`)."""
        if rescore is not None and candidates > k:
            slots, scores = self.search(query, candidates, count=False)
            scores = rescore(slots, scores).float().cpu()
            order = self.rank(slots, scores)[:k]
            return slots[order], scores[order]
        return self.search(query, k, count=False)

    def retrieve(
        self,
        query: torch.Tensor,
        k: int,
        offsets: tuple[int, ...] = (0,),
        rescore=None,
        candidates: int = 0,
        order: str = "stream",
    ) -> torch.Tensor:
        """Slots to read for ``query``: for each of the top-``k`` chunks (chunk id ``j``), the
        stored chunks ``j + o`` for ``o`` in ``offsets`` (``(0,)``: the hits themselves, the
        paper; ``(0, 1)``: each hit and the chunk that followed it, RETRO's neighbour and
        continuation). Deduplicated; chunks not in the bank are skipped. ``order``:
        ``"stream"``, in stream order; ``"score"``, hit by hit from the worst to the best, each
        followed by what its offsets bring in offset order (a chunk two hits bring stays at its
        later place). Bumps the retrieval counter of every returned chunk.

        ``rescore(slots, scores) -> scores``: the top-``candidates`` chunks are scored again by
        it and the best ``k`` kept (ties by chunk id), e.g. a finer look at their text."""
        slots = self.select(query, k, offsets, rescore, candidates, order)
        self.counts[slots] += 1
        return slots

    def select(
        self,
        query: torch.Tensor,
        k: int,
        offsets: tuple[int, ...] = (0,),
        rescore=None,
        candidates: int = 0,
        order: str = "stream",
        hits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The slots :meth:`retrieve` returns, in its order, counters untouched. ``hits``: the best
        ``k`` slots, best first, when the caller has searched already (:meth:`best`)."""
        slots = self.best(query, k, rescore, candidates)[0] if hits is None else hits
        if order == "score":
            stored = self.slots_by_chunk()
            picked = [stored[j + o] for j in self.chunk_ids[slots.flip(0)].tolist() for o in offsets if j + o in stored]
            last = {s: i for i, s in enumerate(picked)}
            slots = torch.tensor([s for i, s in enumerate(picked) if last[s] == i], dtype=torch.long)
        else:
            if tuple(offsets) != (0,) and slots.numel():
                wanted = (self.chunk_ids[slots].unsqueeze(1) + torch.tensor(offsets).unsqueeze(0)).flatten()
                slots = (torch.isin(self.chunk_ids, wanted) & self.valid).nonzero().flatten()
            slots = slots[torch.argsort(self.chunk_ids[slots])]
        return slots

    def slots_by_chunk(self) -> dict[int, int]:
        """``{chunk id: slot}`` of every stored chunk."""
        valid = self.valid.nonzero().flatten()
        return dict(zip(self.chunk_ids[valid].tolist(), valid.tolist()))

    def gather(self, slots: torch.Tensor, keep_order: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of ``slots`` concatenated along tokens: ``[H_kv, len(slots)*tau, D]`` each, in
        stream order, or in the order of ``slots`` with ``keep_order`` (:meth:`retrieve`'s
        ``order="score"``); a copy: later evictions do not change it."""
        if not keep_order:
            slots = slots[torch.argsort(self.chunk_ids[slots])]
        k, v = self.keys[slots], self.values[slots]  # indexing copies
        if self.layout.quantized:
            k = dequantize(k, self.key_scales[slots], self.layout.out_dtype)
            v = dequantize(v, self.value_scales[slots], self.layout.out_dtype)
        else:
            k, v = k.to(self.layout.out_dtype), v.to(self.layout.out_dtype)
        return k.permute(1, 0, 2, 3).flatten(1, 2), v.permute(1, 0, 2, 3).flatten(1, 2)

    # ------------------------------------------------------------------ inspection
    def entries(self) -> list[dict]:
        """Stored chunks, oldest first: ``chunk_id``, ``span``, ``count``, ``slot``."""
        slots = self.valid.nonzero().flatten()
        slots = slots[torch.argsort(self.chunk_ids[slots])]
        return [
            {
                "slot": int(s),
                "chunk_id": int(self.chunk_ids[s]),
                "span": (int(self.spans[s, 0]), int(self.spans[s, 1])),
                "count": int(self.counts[s]),
                "text_span": (int(self.text_spans[s, 0]), int(self.text_spans[s, 1])),
            }
            for s in slots
        ]

    def check_invariants(self) -> None:
        """Raises AssertionError if the parallel tensors or the index disagree."""
        n = self.num_slots
        names = ("keys", "values", "embeddings", "spans", "token_ids", "counts", "text_spans", "windowed")
        for name in names + (("window_embeddings",) if self.layout.windows else ()):
            assert getattr(self, name).shape[0] == n, f"{name} has {getattr(self, name).shape[0]} slots, not {n}"
        assert len(self) <= self.capacity, f"{len(self)} chunks stored above capacity {self.capacity}"
        ids = self.chunk_ids[self.valid]
        assert ids.unique().numel() == ids.numel(), "duplicate chunk ids"
        assert bool((self.counts[~self.valid] == 0).all()), "free slots with non-zero counters"
        assert self.index.size() == len(self), f"index holds {self.index.size()} vectors for {len(self)} chunks"
        spans = self.spans[self.valid]
        assert bool((spans[:, 1] - spans[:, 0] == self.layout.chunk_size).all()), "span length != chunk size"


def merge_range(ranges: list[list[int]], r: list[int]) -> None:
    """Adds ``[start, end)`` to sorted disjoint ``ranges``, merging it with those it touches or overlaps."""
    import bisect

    a, b = int(r[0]), int(r[1])
    i = bisect.bisect_left(ranges, [a, b])
    if i and ranges[i - 1][1] >= a:  # touches the one before: extend it
        i -= 1
        ranges[i][1] = max(ranges[i][1], b)
    else:
        ranges.insert(i, [a, b])
    while i + 1 < len(ranges) and ranges[i + 1][0] <= ranges[i][1]:
        ranges[i][1] = max(ranges[i][1], ranges.pop(i + 1)[1])
