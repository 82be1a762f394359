"""Exact cosine top-k over a bank's chunk embeddings (unit vectors: cosine = inner product).

``faiss`` (default) keeps an ``IndexIDMap2(IndexFlatIP)`` keyed by slot: for one query at a
time it measured faster than a torch scan at every bank size (`memlong bench search`).
``torch`` scans the bank's own embedding tensor (no second copy; the bank can live on a GPU).

Why there is no approximate index (measured, issue 6): search stays exact at every size because
at the sizes a bank reaches it is already a negligible part of the cost, and the approximate
indexes do not fit a bank that evicts.

* Size: a bank holds ``memory_capacity // chunk_size`` chunks: 256 by default, 8192 for a
  million-token capacity. Reading a million tokens into such a bank with the shipped model
  spent under 1% of its time in search (``time_split_s.search`` against ``seconds`` in
  docs/results/bench_million.json): MemLong searches once per chunk, and a chunk costs the
  model and retriever on the order of 100 ms on this CPU, against well under a millisecond
  for an exact search of 1e4 chunks.
* Speed and recall on real embeddings (MiniLM embeddings of 128-token chunks of text,
  docs/results/bench_search_minilm.json): HNSW keeps near-exact recall up to 1e4 chunks and is
  a few times faster than exact from about 3e3 chunks, but what it saves is a fraction of a
  millisecond per chunk; IVF loses recall. On random vectors (docs/results/bench_search.json)
  both lose most of the true top-k from 1e4 chunks, and exact search grows linearly, to about
  10 ms per query at 1e5 chunks: only there (a 12.8M-token capacity) would it start to matter.
* Eviction: faiss HNSW cannot remove entries (``remove_ids`` is not implemented), so a bank
  that evicts would have to rebuild it; IVF must be trained on data the bank does not have yet.

So exact search stays the default. For banks that do grow past a few thousand chunks (a
multi-million-token capacity, or a GPU, where a chunk's model cost is far smaller than on this
CPU) ``"auto"`` (:class:`AutoIndex`) switches to HNSW above ``approximate_above`` chunks
(default :data:`APPROXIMATE_ABOVE`), rebuilding the graph after evictions.
"""

from __future__ import annotations

import torch


class TorchIndex:
    def __init__(self, dim: int):
        self.dim = dim
        self._n = 0

    def add(self, slot: int, vector: torch.Tensor) -> None:
        self._n += 1

    def remove(self, slots: torch.Tensor) -> None:
        self._n -= int(slots.numel())

    def size(self) -> int:
        return self._n

    def search(self, query: torch.Tensor, k: int, embeddings: torch.Tensor, valid: torch.Tensor):
        scores = embeddings.float() @ query.to(embeddings.device)
        scores = scores.masked_fill(~valid.to(scores.device), float("-inf"))
        top = torch.topk(scores, k)
        return top.values.cpu(), top.indices.cpu()


class FaissIndex:
    """Exact cosine search in a faiss ``IndexIDMap2(IndexFlatIP)`` keyed by slot, or in the
    ID-mapped faiss ``index`` given (:class:`AutoIndex` passes an HNSW one)."""

    def __init__(self, dim: int, index=None):
        import faiss

        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def add(self, slot: int, vector: torch.Tensor) -> None:
        self.add_many(torch.tensor([slot]), vector[None])

    def add_many(self, slots: torch.Tensor, vectors: torch.Tensor) -> None:
        if slots.numel():
            self.index.add_with_ids(
                vectors.detach().float().cpu().contiguous().numpy(), slots.cpu().numpy().astype("int64")
            )

    def remove(self, slots: torch.Tensor) -> None:
        if slots.numel():
            self.index.remove_ids(slots.cpu().numpy().astype("int64"))

    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, query: torch.Tensor, k: int, embeddings: torch.Tensor, valid: torch.Tensor):
        scores, ids = self.index.search(query.detach().float().cpu().numpy()[None], k)
        found = ids[0] >= 0  # an approximate index may find fewer than k
        return torch.from_numpy(scores[0][found]), torch.from_numpy(ids[0][found]).long()


# Where HNSW starts to pay, on MiniLM embeddings of real text (docs/results/bench_search_minilm.json):
# at 1,000 chunks it is slower than exact faiss (0.126 vs 0.034 ms), at 3,000 faster (0.051 vs
# 0.089 ms) with recall@k 1.000, at 10,000 4.6x faster (0.090 vs 0.416 ms) with recall@k 0.998.
APPROXIMATE_ABOVE = 3000


def hnsw_index(dim: int):
    """The HNSW graph :class:`AutoIndex` uses and ``memlong bench search`` measures (``faiss_hnsw``):
    ``IndexHNSWFlat`` over inner products, M=32, efConstruction 80, efSearch 64."""
    import faiss

    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction, index.hnsw.efSearch = 80, 64
    return index


class AutoIndex:
    """Exact search (faiss ``IndexFlatIP``) up to ``approximate_above`` chunks, HNSW
    (:func:`hnsw_index`, as measured) above.

    HNSW cannot remove entries, so an eviction marks the graph stale and the next search rebuilds
    it from the bank's live embeddings (the counter rule frees half the bank at once, so that is
    once per eviction round); it falls back to exact search when the bank shrinks to the
    threshold or below. Chunks added while the graph is stale come in with the rebuild.
    """

    def __init__(self, dim: int, approximate_above: int = APPROXIMATE_ABOVE):
        self.dim = dim
        self.approximate_above = approximate_above
        self.current = FaissIndex(dim)  # exact, or wrapping the HNSW graph once the bank is big enough
        self._hnsw = None  # the IndexHNSWFlat inside current's IDMap (kept alive beside it)
        self._stale = False
        self._n = 0
        self.rebuilds = 0  # for tests and logs

    @property
    def approximate(self) -> bool:
        return self._hnsw is not None

    def add(self, slot: int, vector: torch.Tensor) -> None:
        self._n += 1
        if not self._stale:
            self.current.add(slot, vector)

    def remove(self, slots: torch.Tensor) -> None:
        self._n -= int(slots.numel())
        if not self.approximate:
            self.current.remove(slots)
        elif slots.numel():
            self._stale = True

    def size(self) -> int:
        return self._n

    def _rebuild(self, embeddings: torch.Tensor, valid: torch.Tensor) -> None:
        import faiss

        slots = valid.nonzero().flatten().cpu()
        self._hnsw = hnsw_index(self.dim) if len(slots) > self.approximate_above else None
        self.current = FaissIndex(self.dim, None if self._hnsw is None else faiss.IndexIDMap(self._hnsw))
        self.current.add_many(slots, embeddings[slots.to(embeddings.device)])
        self._stale = False
        self.rebuilds += 1

    def search(self, query: torch.Tensor, k: int, embeddings: torch.Tensor, valid: torch.Tensor):
        if self._stale or (not self.approximate and self._n > self.approximate_above):
            self._rebuild(embeddings, valid)
        return self.current.search(query, k, embeddings, valid)


def make_index(backend: str, dim: int, approximate_above: int = APPROXIMATE_ABOVE):
    if backend == "torch":
        return TorchIndex(dim)
    if backend == "faiss":
        return FaissIndex(dim)
    if backend == "auto":
        return AutoIndex(dim, approximate_above)
    raise ValueError(f"unknown search backend {backend!r}; choose 'torch', 'faiss' or 'auto'")
