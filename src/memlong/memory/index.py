"""Exact cosine top-k over a bank's chunk embeddings (unit vectors: cosine = inner product).

``faiss`` (default) keeps an ``IndexIDMap2(IndexFlatIP)`` keyed by slot: for one query at a
time it measured faster than a torch scan at every bank size (`memlong bench search`).
``torch`` scans the bank's own embedding tensor (no second copy; the bank can live on a GPU).
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
