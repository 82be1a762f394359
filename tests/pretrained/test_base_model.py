"""The shipped base model loads offline with one call, through the package's default path."""

import json

import pytest
import torch

from memlong.pretrained import DEFAULT_BASE_MODEL, ENV_VAR, default_base_model_path, load_default_base_model

shipped = (DEFAULT_BASE_MODEL / "model.safetensors").is_file()
needs_checkpoint = pytest.mark.skipif(not shipped, reason=f"no checkpoint committed yet in {DEFAULT_BASE_MODEL}")


@needs_checkpoint
def test_default_path_resolves_to_the_shipped_model(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert default_base_model_path() == str(DEFAULT_BASE_MODEL)


def test_env_override(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "some-org/some-model")
    assert default_base_model_path() == "some-org/some-model"


@needs_checkpoint
def test_loads_offline_and_generates(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = load_default_base_model()
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    assert cfg.max_position_embeddings == 1024 and cfg.num_hidden_layers >= 8
    text = "def main(argv=None):\n    parser = argparse.ArgumentParser("
    ids = tok(text, return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == text  # lossless byte-level BPE
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4


@needs_checkpoint
def test_shipped_directory_is_complete_and_small():
    files = {p.name for p in DEFAULT_BASE_MODEL.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= files
    total = sum(p.stat().st_size for p in DEFAULT_BASE_MODEL.rglob("*") if p.is_file())
    assert total <= 40 * 2**20
    ppl = json.loads((DEFAULT_BASE_MODEL / "ppl_test.json").read_text())
    assert ppl["lengths"] == [256, 512, 1024, 2048, 4096]
