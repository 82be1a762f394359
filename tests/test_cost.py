"""What each method keeps per context token (:mod:`memlong.cost`)."""

import pytest
import torch

from memlong.cost import bytes_per_token, kv_bytes_per_token, tokens_per_second

from conftest import gated_llama


def test_bytes_per_token_of_each_method():
    model, base = gated_llama()  # 4 layers, 4 KV heads of 8 dims, float32; hashing retriever of 32 dims
    assert kv_bytes_per_token(base) == 2 * 4 * 4 * 8 * 4 == kv_bytes_per_token(model)
    for method in ("base_full", "base_truncated", "in_context"):
        assert bytes_per_token(method, model, base) == 2 * 4 * 4 * 8 * 4
    assert kv_bytes_per_token(base.to(torch.bfloat16)) == 2 * 4 * 4 * 8 * 2  # the dtype's bytes
    assert bytes_per_token("memlong_no_memory", model) == 2 * 4 * 4 * 8 * 4  # the window: every layer's K/V
    # memlong: a bank slot (K/V of the banked layers, embeddings, ids, records) over its chunk's tokens
    layout = model.new_memory(1).bank(0).layout
    assert bytes_per_token("memlong", model) == round(layout.slot_bytes() / 8, 2)
    assert bytes_per_token("memlong", model) > layout.kv_bytes_per_token()
    assert bytes_per_token("rag", model, rag=(10, 80)) == 10 * 32 * 4 / 80
    with pytest.raises(ValueError, match="rag=\\(embeddings kept"):
        bytes_per_token("rag", model)
    with pytest.raises(ValueError, match="pass base="):
        bytes_per_token("base_full", model)


def test_tokens_per_second():
    assert tokens_per_second(1000, 4.0) == 250.0
    assert tokens_per_second(1000, 0) is None and tokens_per_second(1000, None) is None
