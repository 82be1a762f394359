"""The shipped reference MemLong model: ``memlong/`` beside ``base/`` in this package.

It holds only what `memlong train` changed (upper layers, gates) plus the MemLong config and
tokenizer; :func:`load_reference_model` puts it on top of the shipped base model, offline.
"""

from __future__ import annotations

from pathlib import Path

REFERENCE_MODEL: Path = Path(__file__).resolve().parent / "memlong"


def reference_model_path() -> str:
    if not (REFERENCE_MODEL / "memlong_config.json").is_file():
        raise FileNotFoundError(
            f"the reference MemLong model is missing from {REFERENCE_MODEL}; train one with `memlong train` "
            "and load it with memlong.from_pretrained(PATH)"
        )
    return str(REFERENCE_MODEL)


def load_reference_model(retriever=None, dtype=None):
    """``(model, tokenizer)``: the reference MemLong model on the shipped base, with its
    retriever (all-MiniLM-L6-v2 unless another is given)."""
    import torch
    from transformers import AutoTokenizer

    import memlong

    path = reference_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    tok.model_max_length = 10**9
    model = memlong.from_pretrained(path, retriever=retriever, tokenizer=tok, dtype=dtype or torch.float32)
    return model.eval(), tok
