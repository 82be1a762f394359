"""The reference MemLong model loader, on a fake reference directory laid out as `memlong train`'s
final/ (trained tensors + gates + config + memlong_base.json pointing to a local base), and the
demo running on it."""

import json
from pathlib import Path

import pytest
import torch

import memlong
from memlong.modeling import BASE_NAME, save_trained
from memlong.pretrained import toy_base_model_path
from memlong.pretrained.reference import (
    DEFAULT_REFERENCE_MODEL,
    ENV_VAR,
    load_reference_model,
    reference_model_path,
)

TOY = toy_base_model_path()  # the base the shipped reference model was trained on
shipped_base = (TOY / "model.safetensors").is_file()
pytestmark = pytest.mark.skipif(not shipped_base, reason="the shipped base model is missing")

TRAINED = "model.layers.7.mlp.down_proj.weight"


def load_toy_base():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(TOY), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(TOY))


@pytest.fixture(scope="module")
def fake_reference(tmp_path_factory):
    """What `memlong train` would write: only the upper layer it trained, open gates, config."""
    ref = tmp_path_factory.mktemp("ref") / "memlong"
    base, tok = load_toy_base()
    cfg = memlong.MemLongConfig.for_num_layers(8, chunk_size=64, top_k=2, local_window=256, memory_capacity=4096)
    model = memlong.wrap(base, cfg, retriever=memlong.HashingRetriever(), tokenizer=tok)
    for name, p in model.named_parameters():
        p.requires_grad_(name == TRAINED or "memlong_gate" in name)
    torch.manual_seed(0)
    with torch.no_grad():
        dict(model.named_parameters())[TRAINED].add_(0.01 * torch.randn_like(dict(model.named_parameters())[TRAINED]))
        for gate in model.memlong_gates().values():
            gate.fill_(1.0)
    save_trained(model, model, ref, base_model=str(TOY))
    expected = dict(model.named_parameters())[TRAINED].detach().clone()
    return ref, expected


def test_missing_reference_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="memlong train"):
        reference_model_path()
    with pytest.raises(FileNotFoundError, match="given"):
        reference_model_path(tmp_path)
    monkeypatch.delenv(ENV_VAR)
    if not (DEFAULT_REFERENCE_MODEL / "memlong_config.json").is_file():
        with pytest.raises(FileNotFoundError, match=str(DEFAULT_REFERENCE_MODEL)):
            reference_model_path()


def test_loads_fake_reference_with_the_base_tokenizer(fake_reference, monkeypatch):
    ref, expected = fake_reference
    info = json.loads((ref / BASE_NAME).read_text())
    assert info["local"] and not Path(info["base_model"]).is_absolute()  # moves with its base
    assert not (ref / "tokenizer.json").exists()
    monkeypatch.setenv(ENV_VAR, str(ref))
    assert reference_model_path() == str(ref)
    model, tok = load_reference_model(retriever=memlong.HashingRetriever())
    assert not model.training and model.memlong_config.local_window == 256
    assert tok.model_max_length >= 10**9 and len(tok) == model.config.vocab_size  # the base's tokenizer
    assert torch.equal(dict(model.named_parameters())[TRAINED], expected)
    assert all(torch.all(g == 1.0) for g in model.memlong_gates().values())


@pytest.mark.skipif(not (DEFAULT_REFERENCE_MODEL / "memlong_config.json").is_file(), reason="no shipped reference model")
def test_shipped_reference_loads_offline_in_one_call(monkeypatch):
    """The shipped reference: one call, offline, on top of the shipped base; frozen layers are
    the base's, the gates were trained open, and its card's record matches its config."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    model, tok = load_reference_model()
    cfg = model.memlong_config
    base, _ = load_toy_base()
    frozen = dict(base.named_parameters())
    params = dict(model.named_parameters())
    for i in range(cfg.memory_layer):  # layers up to the memory layer: bit-identical to the base
        name = f"model.layers.{i}.self_attn.k_proj.weight"
        assert torch.equal(params[name], frozen[name])
    assert any(float(g.abs().max()) > 0 for g in model.memlong_gates().values())
    summary = json.loads((DEFAULT_REFERENCE_MODEL / "train_summary.json").read_text())
    assert summary["args"]["memory_layer"] == cfg.memory_layer and summary["steps"] > 0
    assert len(tok) == model.config.vocab_size
