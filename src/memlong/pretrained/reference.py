"""The shipped reference MemLong model (``pretrained/memlong/``), when there is one.

It is what ``memlong train`` writes to ``OUTPUT/final`` on top of the shipped base model:
``memlong_config.json``, ``memlong_base.json`` (pointing to ``../base``), the trained tensors
and the gates, optionally a tokenizer. ``memlong.from_pretrained`` rebuilds it from its base.

    from memlong.pretrained.reference import load_reference_model
    model, tok = load_reference_model()        # FileNotFoundError (with what to do) if absent
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_REFERENCE_MODEL: Path = Path(__file__).resolve().parent / "memlong"

# Point the package's reference model at another local MemLong directory without code changes.
ENV_VAR = "MEMLONG_REFERENCE_MODEL"

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def reference_model_path(path: str | os.PathLike | None = None) -> str:
    """Directory of the reference MemLong model: ``path``, else ``$MEMLONG_REFERENCE_MODEL``,
    else the shipped ``pretrained/memlong``. Raises ``FileNotFoundError`` saying what to do when
    that directory holds no MemLong model (no ``memlong_config.json``)."""
    from memlong.config import CONFIG_NAME

    chosen = path if path is not None else (os.environ.get(ENV_VAR) or DEFAULT_REFERENCE_MODEL)
    chosen = Path(chosen)
    if not (chosen / CONFIG_NAME).is_file():
        where = "given" if path is not None else ("$" + ENV_VAR if os.environ.get(ENV_VAR) else "shipped")
        raise FileNotFoundError(
            f"no MemLong model in the {where} directory {chosen} (no {CONFIG_NAME}). Train one on top of the "
            f"shipped base with `memlong train --data CORPUS --output runs/memlong` and copy runs/memlong/final "
            f"there (its memlong_base.json must point to the base), set ${ENV_VAR} to such a directory, or pass "
            f"its path explicitly"
        )
    return str(chosen)


def _base_dir(model_dir: Path) -> Path | None:
    """The local base model directory recorded in ``memlong_base.json`` (None if not local)."""
    from memlong.modeling import BASE_NAME

    info_path = model_dir / BASE_NAME
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    if not info.get("local"):
        return None
    return (model_dir / info["base_model"]).resolve()


def load_reference_tokenizer(path: str | os.PathLike | None = None):
    """The reference model's tokenizer: its own if its directory has one, else its base's
    (else the default base model's). ``model_max_length`` is lifted: MemLong reads long inputs."""
    from transformers import AutoTokenizer

    model_dir = Path(reference_model_path(path))
    if any((model_dir / f).is_file() for f in _TOKENIZER_FILES):
        source = model_dir
    else:
        source = _base_dir(model_dir)
        if source is None or not any((source / f).is_file() for f in _TOKENIZER_FILES):
            from memlong.pretrained import default_base_model_path

            source = default_base_model_path()
    tok = AutoTokenizer.from_pretrained(str(source))
    tok.model_max_length = 10**9
    return tok


def load_reference_model(retriever=None, dtype=None, path: str | os.PathLike | None = None):
    """``(model, tokenizer)``: the reference MemLong model (eval mode) and its tokenizer, offline.

    ``retriever``: the frozen chunk embedder or its name (default: ``"minilm"``,
    all-MiniLM-L6-v2 over decoded text, the retriever ``memlong train`` uses by default). ``dtype``: default float32. ``path``: another
    MemLong directory than :func:`reference_model_path`'s.
    """
    import torch

    import memlong

    model_dir = reference_model_path(path)
    tok = load_reference_tokenizer(model_dir)
    retriever = retriever or "minilm"
    model = memlong.from_pretrained(model_dir, retriever=retriever, tokenizer=tok, dtype=dtype or torch.float32)
    return model.eval(), tok
