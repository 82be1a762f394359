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
