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

So an ``approximate_search_above`` switch would never fire at realistic capacities; it is
worth adding (with a rebuild-on-evict HNSW) only for banks of 1e5+ chunks.
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
    def __init__(self, dim: int):
        import faiss

        self.dim = dim
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def add(self, slot: int, vector: torch.Tensor) -> None:
        import numpy as np

        self.index.add_with_ids(vector.detach().float().cpu().numpy()[None], np.array([slot], dtype="int64"))

    def remove(self, slots: torch.Tensor) -> None:
        if slots.numel():
            self.index.remove_ids(slots.cpu().numpy().astype("int64"))

    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, query: torch.Tensor, k: int, embeddings: torch.Tensor, valid: torch.Tensor):
        scores, ids = self.index.search(query.detach().float().cpu().numpy()[None], k)
        return torch.from_numpy(scores[0]), torch.from_numpy(ids[0]).long()


def make_index(backend: str, dim: int):
    if backend == "torch":
        return TorchIndex(dim)
    if backend == "faiss":
        return FaissIndex(dim)
    raise ValueError(f"unknown search backend {backend!r}; choose 'torch' or 'faiss'")
