"""What a method keeps per context token and how fast it reads: the cost fields
(``bytes_per_token``, ``tokens_per_second``) beside each result of ``memlong eval passkey``,
``memlong eval icl`` and ``memlong demo``, so that a score is read with its price.

``bytes_per_token`` is the state a method keeps per token of context it holds:

* ``memlong``: a bank slot over its chunk's tokens (:meth:`memlong.memory.BankLayout.bytes_per_token`:
  the banked K/V, embeddings, window embeddings, token ids and records);
* ``memlong_no_memory``: the local window's K/V cache per token (every layer, the model's dtype);
* ``base_full``, ``base_truncated``, ``in_context``: the base model's K/V cache per token,
  ``2 x layers x kv_heads x head_dim x dtype bytes`` (:func:`kv_bytes_per_token`);
* ``rag``: one float32 embedding per chunk (:func:`memlong.rag.embedding_bytes_per_token`).
"""

from __future__ import annotations


def kv_bytes_per_token(model) -> int:
    """K/V cache bytes per token of a decoder: ``2 x layers x kv_heads x head_dim x dtype bytes``
    (keys and values of every layer, in the model's dtype)."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * next(model.parameters()).element_size()


def bytes_per_token(method: str, model, base=None, rag: tuple[int, int] | None = None) -> float:
    """``method``'s state per context token (the module docstring says what each counts).
    ``model``: the MemLong model; ``base``: the base model (for the base methods); ``rag``: for
    ``rag``, (embeddings kept, context tokens they cover)."""
    from memlong.rag import embedding_bytes_per_token

    if method == "memlong":
        return round(model.new_memory(1).bank(0).layout.bytes_per_token(), 2)
    if method == "memlong_no_memory":
        return kv_bytes_per_token(model)
    if method == "rag":
        if rag is None:
            raise ValueError("bytes_per_token('rag'): pass rag=(embeddings kept, context tokens)")
        return round(embedding_bytes_per_token(*rag, model.memlong_retriever.dim), 2)
    if base is None:
        raise ValueError(f"bytes_per_token({method!r}): pass base=, the base model")
    return kv_bytes_per_token(base)


def tokens_per_second(tokens: int, seconds: float | None) -> float | None:
    """Prompt tokens read per second (None when nothing was timed)."""
    return round(tokens / seconds, 1) if seconds else None
