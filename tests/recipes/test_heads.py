"""`memlong heads`: per-layer previous-token / induction scores and the suggested memory layer."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from memlong.cli import main
from memlong.recipes.heads import head_scores


def test_scores_read_the_right_attention_entries():
    """A model whose attention is replaced by known maps: the scores are those maps' entries."""
    L = 5

    class Fake(torch.nn.Module):
        def forward(self, input_ids, output_attentions):
            T = input_ids.shape[1]
            prev = torch.zeros(1, 1, T, T)
            ind = torch.zeros(1, 1, T, T)
            for t in range(1, T):
                prev[0, 0, t, t - 1] = 1.0
                ind[0, 0, t, max(0, t - L + 1)] = 1.0
            return type("Out", (), {"attentions": (prev, ind)})()

    prev, ind = head_scores(Fake(), torch.zeros(1, 2 * L, dtype=torch.long), L)
    assert prev[:, 0].tolist() == [1.0, 0.0] and ind[:, 0].tolist() == [0.0, 1.0]


def test_verb_on_a_tiny_model(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    out = tmp_path / "heads.json"
    assert main(["heads", "--model", str(tmp_path / "m"), "--length", "20", "--pool", "40", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["induction"]) == 3 and len(data["induction"][0]) == 4
    assert data["suggestion"] is None  # random weights: no induction head
    assert "barely copies" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--length"):
        main(["heads", "--model", str(tmp_path / "m"), "--length", "1"])


def test_retrieval_probe_writes_a_table_per_kv_head_and_bank_heads(tmp_path, capsys, bpe_tokenizer_dir):
    import memlong

    from conftest import save_tiny_lm

    folder = save_tiny_lm(tmp_path / "lm", bpe_tokenizer_dir, layers=3)  # 8 query heads over 4 KV heads, dim 8
    out = tmp_path / "heads.json"
    common = ["heads", "--model", str(folder), "--length", "20", "--pool", "40", "--retrieval", "--needles", "2"]
    assert main([*common, "--needle-length", "160", "--heads", "3", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    r = data["retrieval"]
    assert len(r["score"]) == 3 and len(r["score"][0]) == 4 and len(r["needle_mass"][0]) == 4
    assert all(0 <= v <= 1 for row in r["score"] for v in row) and r["answer_tokens"] > 0
    s = r["suggestion"]
    assert len(s["bank_heads"]) == 3 and s["of_heads"] == 12
    assert s["kv_bytes_per_token"] == 3 * 2 * 8 * 2 and s["kv_bytes_per_token_every_head"] == 12 * 32  # bfloat16
    cfg = memlong.MemLongConfig(mode="training_free", retrieval_layers=(1, 2, 3), bank_heads=s["bank_heads"])
    assert cfg.bank_heads == tuple(map(tuple, s["bank_heads"]))  # the suggestion is a valid config
    assert "--retrieval --needles 2 --needle-length 160 --heads 3" in data["config"]["command"]
    assert "suggested bank_heads (3 of 12 KV heads" in capsys.readouterr().out
    # a budget: 100 bytes of bfloat16 K/V per token keep 3 heads of 32 bytes
    assert main([*common, "--needle-length", "160", "--budget-bytes-per-token", "100", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["retrieval"]["suggestion"]["heads"] == 3
    with pytest.raises(SystemExit, match="keeps no KV head"):
        main([*common, "--needle-length", "160", "--budget-bytes-per-token", "31"])
    with pytest.raises(SystemExit, match="needle-length"):
        main([*common, "--needle-length", "10"])
