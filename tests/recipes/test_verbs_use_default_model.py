"""Every verb defaults to the default model: without ``--model``, ``eval`` evaluates the shipped
default MemLong model (``pretrained/default``: training-free config on ``memlong:default``) and
its base, ``ask`` answers with it, ``train`` and ``heads`` use the default base, and
``bench ingest --model shipped`` measures it. The real default base (SmolLM2-135M-Instruct) is
replaced through ``$MEMLONG_BASE_MODEL`` by a tiny random Llama of the same depth and KV heads
(30 layers, 3 KV heads: the shipped ``bank_heads`` name them), so the shipped config itself is what
runs."""

import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from memlong.cli import main
from memlong.pretrained import DEFAULT_BASE, DEFAULT_MEMLONG_MODEL, ENV_VAR
from memlong.report import eval_command


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, bpe_tokenizer_dir):
    root = tmp_path_factory.mktemp("tiny_default_base")
    tok = AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir))
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=30,
            num_attention_heads=6,
            num_key_value_heads=3,
            max_position_embeddings=2048,
        )
    ).save_pretrained(root)
    tok.save_pretrained(root)
    return root


@pytest.fixture
def default_is_tiny(tiny_base, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tiny_base))
    return tiny_base


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    import sysconfig
    from pathlib import Path

    path = tmp_path_factory.mktemp("doc") / "doc.txt"
    path.write_text(Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text()[:12000])
    return path


def test_eval_ppl_cut_short_keeps_the_rows_it_measured(default_is_tiny, doc, tmp_path, monkeypatch):
    from memlong.recipes import eval_ppl

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # a session's end, hours into a long run

    monkeypatch.setattr(eval_ppl, "_nll_plain", die)  # base_truncated, measured after memlong
    out = tmp_path / "ppl.json"
    with pytest.raises(KeyboardInterrupt):
        main(
            [
                "eval",
                "ppl",
                "--data",
                str(doc),
                "--lengths",
                "1536",
                "--score",
                "128",
                "--retriever",
                "hashing",
                "--methods",
                "memlong,base_truncated",
                "--threads",
                "1",
                "--json",
                str(out),
            ]
        )
    rows = json.loads(out.read_text())["results"]
    assert [(r["method"], r["length"]) for r in rows] == [("memlong", 1536)] and rows[0]["ppl"] > 1


def test_eval_ppl_without_model_uses_the_default_model_and_its_base(default_is_tiny, doc, tmp_path):
    out = tmp_path / "ppl.json"
    assert (
        main(
            [
                "eval",
                "ppl",
                "--data",
                str(doc),
                "--lengths",
                "1536",
                "--score",
                "128",
                "--retriever",
                "hashing",
                "--methods",
                "memlong,memlong_no_memory,base_truncated",
                "--set",
                "top_k=2",
                "--threads",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    config = r["config"]
    assert config["model"] is None and config["base_model"] == str(default_is_tiny) and config["base_window"] == 2048
    assert config["memlong"]["mode"] == "training_free" and config["memlong"]["top_k"] == 2  # --set still applies
    rows = {row["method"]: row for row in r["results"]}
    assert rows["memlong"]["documents"] == 1 and rows["memlong"]["ppl"] > 1  # --data: one text file, one document
    assert rows["base_truncated"]["ppl"] > 1
    # the command that wrote it runs the same evaluation: no --model means the default
    command = eval_command(config, "ppl.json")
    assert command.startswith(f"memlong eval ppl --data {doc} ") and "--model" not in command
    assert "--set top_k=2" in command


def test_eval_command_names_a_given_model():
    c = {"task": "passkey", "model": "runs/m/final", "data": "d", "lengths": "4096", "trials": 1}
    assert eval_command(c, "o.json").startswith("memlong eval passkey --model runs/m/final --data d")
    assert "--model" not in eval_command({**c, "model": "default"}, "o.json")


def test_ask_without_model_uses_the_default_model(default_is_tiny, doc, tmp_path, capsys):
    out = tmp_path / "ask.json"
    assert (
        main(
            [
                "ask",
                str(doc),
                "-q",
                "What does the parser do?",
                "--retriever",
                "hashing",
                "--max-new-tokens",
                "3",
                "--threads",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["model"] == "default" and r["memlong_config"]["mode"] == "training_free"
    assert r["tokens_read"] > 2048 and "A: " in capsys.readouterr().out


def test_bench_ingest_shipped_is_the_default_model(default_is_tiny, tmp_path):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "ingest",
                "--model",
                "shipped",
                "--tokens",
                "1536",
                "--methods",
                "memlong",
                "--retriever",
                "hashing",
                "--threads",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    (row,) = json.loads(out.read_text())["results"]
    assert row["model"] == f"default model (${ENV_VAR}={default_is_tiny})"
    # without --capacity, the default model's own capacity: a million-token read is not evicted
    shipped = json.loads((DEFAULT_MEMLONG_MODEL / "memlong_config.json").read_text())["memory_capacity"]
    assert row["config"]["mode"] == "training_free" and row["config"]["memory_capacity"] == shipped >= 1_000_000
    assert row["bank_chunks"] == (1536 - 1024) // 128


def test_train_without_model_adapts_the_default_base(tiny_base, doc, tmp_path, monkeypatch):
    """No --model and no $MEMLONG_BASE_MODEL: the default base, recorded as memlong:default (its
    converted path is per machine), so the trained directory loads on any machine."""
    import memlong.pretrained

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(memlong.pretrained, "default_base_model_path", lambda: str(tiny_base))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(doc),
                "--output",
                str(run),
                "--steps",
                "1",
                "--eval-every",
                "0",
                "--save-every",
                "0",
                "--window",
                "64",
                "--chunk-size",
                "16",
                "--capacity",
                "256",
                "--retriever",
                "hashing",
                "--batch-size",
                "1",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    info = json.loads((run / "final" / "memlong_base.json").read_text())
    assert info["base_model"] == DEFAULT_BASE and info["local"] is False
    m = memlong.from_pretrained(run / "final", retriever="hashing")
    assert m.config.num_hidden_layers == 30 and m.memlong_config.local_window == 64


def test_train_with_base_from_the_environment_records_it(default_is_tiny, doc, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(doc),
                "--output",
                str(run),
                "--steps",
                "1",
                "--eval-every",
                "0",
                "--save-every",
                "0",
                "--window",
                "64",
                "--chunk-size",
                "16",
                "--capacity",
                "256",
                "--retriever",
                "hashing",
                "--batch-size",
                "1",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    info = json.loads((run / "final" / "memlong_base.json").read_text())
    assert info["local"] is True and (run / "final" / info["base_model"]).resolve() == default_is_tiny.resolve()


def test_heads_without_model_uses_the_default_base(default_is_tiny, tmp_path):
    out = tmp_path / "heads.json"
    assert main(["heads", "--length", "16", "--rows", "1", "--pool", "50", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["model"] == "the default base model" and len(r["induction"]) == 30
