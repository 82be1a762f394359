"""Shared fixtures: tiny deterministic models built from configs (no downloads).

Markers: ``slow`` tests (real sentence-transformers retriever on long inputs, benchmarks) are
skipped by plain ``pytest`` (see pyproject addopts); run them with ``pytest -m slow``.
Tiny models use 8 query heads over 4 KV heads so grouped-query code paths really run.
Verbs that load a model folder get one from :func:`save_tiny_lm`: a tiny random Llama saved with
the ``bpe_tokenizer_dir`` fixture's tokenizer, trained here in a second (no download, no real model).

Deprecations: a FutureWarning/DeprecationWarning attributed to memlong's own code (the frame its
``stacklevel`` names, looking through torch's ``nn.Module.__call__``) fails the test
(:func:`_deprecated_calls_from_memlong_fail`): the next transformers release removes what it warns
about. pyproject's ``filterwarnings`` catches those attributed to memlong directly; this also
catches calls that go through ``nn.Module.__call__``, which the warning attributes to torch.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import sys
import warnings

import pytest
import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    OlmoConfig,
    OlmoForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    Starcoder2Config,
    Starcoder2ForCausalLM,
)

import memlong

VOCAB = 101

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 4096}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 8}),
    "mixtral": (
        MixtralConfig,
        MixtralForCausalLM,
        {"sliding_window": 4096, "num_local_experts": 2, "num_experts_per_tok": 1},
    ),
    "qwen3_moe": (
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
        {"head_dim": 8, "num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 32},
    ),
    "gemma": (GemmaConfig, GemmaForCausalLM, {"head_dim": 8}),
    "olmo": (OlmoConfig, OlmoForCausalLM, {}),
    "olmo2": (Olmo2Config, Olmo2ForCausalLM, {}),
    # attention_multiplier: a non-default attention scale, passed to the attention as `scaling`
    "granite": (
        GraniteConfig,
        GraniteForCausalLM,
        {"attention_multiplier": 0.3, "embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 2.0},
    ),
    "phi3": (Phi3Config, Phi3ForCausalLM, {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
    "starcoder2": (
        Starcoder2Config,
        Starcoder2ForCausalLM,
        {"sliding_window": 4096, "bos_token_id": 1, "eos_token_id": 2},
    ),
}


def tiny_config(family: str = "llama", layers: int = 4):
    cfg_cls, _, extra = FAMILIES[family]
    return cfg_cls(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        **extra,
    )


def tiny_model(family: str = "llama", layers: int = 4, seed: int = 0):
    """A stock model and an independent copy (own config object) with the same weights."""
    _, model_cls, _ = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = tiny_config(family, layers)
    model = model_cls(cfg).eval()
    ref = model_cls(copy.deepcopy(cfg)).eval()
    ref.load_state_dict(model.state_dict())
    return model, ref


def assert_padded_batch_equals_each_sequence_alone(m, lengths=(130, 77, 9), side="left", atol=1e-5):
    """A padded batch of random sequences gives each row the logits it gets alone; returns the
    batch's output."""
    S = max(lengths)
    ids = torch.zeros(len(lengths), S, dtype=torch.long)
    mask = torch.zeros(len(lengths), S, dtype=torch.long)
    alone = []
    for b, n in enumerate(lengths):
        seq = torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(10 + b))
        cols = slice(S - n, S) if side == "left" else slice(0, n)
        ids[b, cols], mask[b, cols] = seq[0], 1
        alone.append((cols, m(seq).logits[0]))
    out = m(ids, attention_mask=mask)
    for b, (cols, logits) in enumerate(alone):
        torch.testing.assert_close(out.logits[b, cols], logits, atol=atol, rtol=0)
    return out


def small_memlong_config(**kw) -> memlong.MemLongConfig:
    base = dict(
        memory_layer=2,
        retrieval_layers=(3, 4),
        chunk_size=8,
        top_k=2,
        memory_capacity=48,
        local_window=32,
        rerank_window=4,
    )  # half-overlapping windows of 4: the window index is built in every test
    base.update(kw)
    return memlong.MemLongConfig(**base)


def set_gates(model, value: float = 0.7, seed: int = 1) -> None:
    """Non-zero, head-varying gates so that memory really changes the output."""
    g = torch.Generator().manual_seed(seed)
    for i in model.memlong_config.retrieval_layer_indices:
        p = getattr(model.model.layers[i].self_attn, "memlong_gate")
        with torch.no_grad():
            p.copy_(value + 0.3 * torch.rand(p.shape, generator=g))


def gated_llama(**config_kw):
    """A tiny wrapped Llama (``small_memlong_config(**config_kw)``) with active gates and a
    hashing retriever, plus its stock twin."""
    model, ref = tiny_model("llama")
    m = memlong.wrap(model, small_memlong_config(**config_kw), retriever=memlong.HashingRetriever(dim=32))
    set_gates(m)
    return m, ref


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory):
    """Folder of a 512-entry byte-level BPE (``memlong.tokenizer``: what ``memlong data`` trains)
    fitted on a few stdlib modules: an offline tokenizer for real text."""
    import sysconfig
    from pathlib import Path

    from memlong.tokenizer import train_and_save

    lib = Path(sysconfig.get_paths()["stdlib"])
    texts = [
        (lib / n).read_text()[:8000]
        for n in ("argparse.py", "typing.py", "inspect.py", "textwrap.py", "shutil.py", "tempfile.py")
    ]
    folder = tmp_path_factory.mktemp("bpe_tokenizer")
    train_and_save(texts, 512, folder)
    return folder


def save_tiny_lm(folder, tokenizer_dir, layers: int = 4, seed: int = 0, **config):
    """Saves a tiny random Llama with ``tokenizer_dir``'s vocabulary and that tokenizer into
    ``folder`` (a ``from_pretrained`` folder, as a user's model would be); returns ``folder``.
    ``config``: LlamaConfig fields to change (default: hidden 64, 8 heads / 4 KV heads, 1024 positions)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg.update(config)
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**cfg)).eval().save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return Path(folder)


def assert_markdown_beside(json_path) -> str:
    """The Markdown a verb wrote beside its ``--json`` (``X.md``) is :func:`memlong.report.markdown` of
    that JSON; returns it."""
    import json
    from pathlib import Path

    from memlong.report import markdown

    text = Path(json_path).with_suffix(".md").read_text()
    assert text == markdown(json.loads(Path(json_path).read_text()), json_path) + "\n"
    return text


def _package(frame) -> str:
    return frame.f_globals.get("__name__", "").split(".")[0]


@pytest.fixture(autouse=True)
def _deprecated_calls_from_memlong_fail(monkeypatch):
    real_warn = warnings.warn

    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        cat = category or (type(message) if isinstance(message, Warning) else UserWarning)
        if issubclass(cat, (FutureWarning, DeprecationWarning)):
            frame = sys._getframe(1)  # the frame the warning is attributed to, as warnings does
            for _ in range(stacklevel - 1):
                frame = frame.f_back if frame is not None else None
            while frame is not None and _package(frame) in ("torch", "functools", "contextlib"):
                frame = frame.f_back  # nn.Module.__call__ dispatch: the caller of model(...)
            caller = "" if frame is None else frame.f_globals.get("__name__", "")
            if caller.split(".")[0] == "memlong":
                raise cat(f"deprecated call from {caller} (line {frame.f_lineno}): {message}")
        return real_warn(message, category, stacklevel + 1, source, **kwargs)

    monkeypatch.setattr(warnings, "warn", warn)


@pytest.fixture
def memlong_model():
    return gated_llama()


@contextlib.contextmanager
def collector_off():
    """Python's cycle collector disabled inside: an object then goes only when its last reference
    does, so a test can show that dropping it frees it at once (no reference cycle)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def save_tiny_memlong_model(texts: list[str], directory, max_position_embeddings: int = 512) -> None:
    """A tiny random MemLong model for the `memlong eval` verbs, saved in ``directory`` with a BPE
    tokenizer trained on ``texts`` (vocabulary 512): 4 layers, open gates, chunk 16, window 64,
    hashing retriever."""
    from memlong.tokenizer import train_and_save

    tok = train_and_save(texts, 512, directory)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=max_position_embeddings,
        )
    )
    m = memlong.wrap(
        lm,
        small_memlong_config(chunk_size=16, local_window=64, memory_capacity=1024),
        retriever=memlong.HashingRetriever(dim=32),
    )
    set_gates(m)
    m.save_pretrained(directory)


def stdlib_prose(max_words: int = 6000) -> list[str]:
    """Prose for an essay haystack (:func:`memlong.data.ruler.is_prose`): the docstrings of a few
    standard-library modules' classes and functions that read as prose, about ``max_words`` words
    in all (source code itself is not prose)."""
    import argparse
    import inspect
    import logging
    import shutil
    import subprocess
    import tempfile
    import textwrap

    from memlong.data.ruler import is_prose

    out, words = [], 0
    for module in (argparse, shutil, tempfile, textwrap, subprocess, logging, inspect):
        for _, obj in sorted(vars(module).items()):
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__:
                doc = inspect.getdoc(obj)
                if doc and is_prose(doc):
                    out.append(doc)
                    words += len(doc.split())
                    if words >= max_words:
                        return out
    return out


@pytest.fixture(scope="session")
def eval_setup(tmp_path_factory):
    """For the `memlong eval` verbs: a saved tiny MemLong model (``model``, base window 512, see
    :func:`save_tiny_memlong_model`) and a corpus (``corpus``) whose test split holds about 6k tokens."""
    import json
    import sysconfig
    from pathlib import Path

    lib = Path(sysconfig.get_paths()["stdlib"])
    root = tmp_path_factory.mktemp("eval")
    save_tiny_memlong_model(
        [(lib / n).read_text()[:8000] for n in ("argparse.py", "typing.py", "textwrap.py", "shutil.py")], root / "model"
    )
    (root / "corpus").mkdir()
    with open(root / "corpus" / "test.jsonl", "w") as f:
        for i, name in enumerate(("inspect.py", "tempfile.py")):
            f.write(json.dumps({"id": f"d{i}", "text": (lib / name).read_text()[:9000]}) + "\n")
    return root
