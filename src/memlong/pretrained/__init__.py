"""Checkpoints shipped inside the package.

``base/`` is a small Llama (grouped-query attention) trained from scratch with
``memlong pretrain`` at a 1024-token context; see ``base/README.md`` for its data, training run
and perplexities. It is the offline default base model: users with a model hub pass any
Hugging Face causal LM name instead.

    from transformers import AutoModelForCausalLM
    from memlong.pretrained import default_base_model_path
    model = AutoModelForCausalLM.from_pretrained(default_base_model_path())
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_BASE_MODEL: Path = Path(__file__).resolve().parent / "base"

# Point the package's default at another local folder or hub name without code changes.
ENV_VAR = "MEMLONG_BASE_MODEL"


def default_base_model_path() -> str:
    """Path (or hub name) of the default base model: ``$MEMLONG_BASE_MODEL`` or the shipped one.

    Raises ``FileNotFoundError`` with what to do if the shipped checkpoint is missing.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        return override
    if not (DEFAULT_BASE_MODEL / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the shipped base model is missing from {DEFAULT_BASE_MODEL}; reinstall memlong, "
            f"set ${ENV_VAR}, or pass a model name/path explicitly"
        )
    return str(DEFAULT_BASE_MODEL)


def load_default_base_model(dtype=None):
    """``(model, tokenizer)`` of the default base model, loaded offline in one call."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_base_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    return model, AutoTokenizer.from_pretrained(path)
