"""Shared fixtures: tiny deterministic models built from configs (no downloads).

Markers: ``slow`` tests (real sentence-transformers retriever on long inputs, benchmarks) are
skipped by plain ``pytest`` (see pyproject addopts); run them with ``pytest -m slow``.
Tiny models use 8 query heads over 4 KV heads so grouped-query code paths really run.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import memlong

VOCAB = 101

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 4096}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 8}),
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


def small_memlong_config(**kw) -> memlong.MemLongConfig:
    base = dict(memory_layer=2, retrieval_layers=(3, 4), chunk_size=8, top_k=2, memory_capacity=48, local_window=32)
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


@pytest.fixture
def memlong_model():
    return gated_llama()
