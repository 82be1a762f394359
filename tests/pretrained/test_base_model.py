"""The toy base model shipped in the package (``base/``) loads offline with one call, through
``$MEMLONG_BASE_MODEL`` (it is no longer the default: see test_default_model.py)."""

import json

import pytest
import torch

from memlong.pretrained import ENV_VAR, default_base_model_path, load_default_base_model, toy_base_model_path

TOY = toy_base_model_path()
shipped = (TOY / "model.safetensors").is_file()
needs_checkpoint = pytest.mark.skipif(not shipped, reason=f"no checkpoint committed yet in {TOY}")


def test_env_override(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "some-org/some-model")
    assert default_base_model_path() == "some-org/some-model"


@needs_checkpoint
def test_loads_offline_and_generates(monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(TOY))
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
    files = {p.name for p in TOY.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= files
    total = sum(p.stat().st_size for p in TOY.rglob("*") if p.is_file())
    assert total <= 40 * 2**20
    ppl = json.loads((TOY / "ppl_test.json").read_text())
    assert ppl["lengths"] == [256, 512, 1024, 2048, 4096]
