"""`memlong pretrain` end to end on a tiny config: train, checkpoint, resume, evaluate."""

import json

import pytest
import torch
from safetensors.torch import load_file

from memlong.cli import main
from memlong.data.corpus import iter_split, write_corpus
from memlong.data.sources import SkipCounter, stdlib_documents, stdlib_root
from memlong.recipes.pretrain import _record_phase, lr_lambda, mean_nll
from memlong.tokenizer import train_and_save

TINY = [
    "--layers",
    "2",
    "--hidden",
    "64",
    "--heads",
    "8",
    "--kv-heads",
    "4",
    "--seq-len",
    "32",
    "--batch-size",
    "2",
    "--warmup",
    "2",
    "--max-steps",
    "4",
    "--eval-every",
    "2",
    "--save-every",
    "2",
    "--eval-windows-per-source",
    "2",
    "--no-progress",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A real-text corpus: the stdlib `email` package, split 60/20/20, with a 600-token BPE."""
    root = tmp_path_factory.mktemp("corpus")
    docs = list(stdlib_documents(stdlib_root() / "email", SkipCounter()))
    write_corpus(root, docs, SkipCounter(), 0.2, 0.2)
    train_and_save([d.text for d in iter_split(root, "train")], 600, root / "tokenizer")
    return root


def test_lr_schedule():
    assert lr_lambda(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_lambda(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_lambda(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_lambda(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_pretrain_end_to_end_with_resume(corpus, tmp_path):
    straight = tmp_path / "straight"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(straight), *TINY]) == 0
    final = straight / "final"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "loss.png",
        "train_summary.json",
    ):
        assert (final / name).is_file(), name
    summary = json.loads((final / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens_seen"] == 4 * 2 * 32
    metrics = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    assert [m["step"] for m in metrics if "val_loss" in m] == [2, 4]

    # Interrupted after 2 steps, then resumed by re-running the same command.
    resumed = tmp_path / "resumed"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(resumed), *TINY, "--stop-after", "2"]) == 0
    assert (resumed / "checkpoint").is_dir() and not (resumed / "final").exists()
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(resumed), *TINY]) == 0
    a = load_file(str(final / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    resumed_metrics = [json.loads(l) for l in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in resumed_metrics if "loss" in m] == [1, 2, 3, 4]

    # Evaluation past the 32-token training context runs and writes its table.
    out_json = tmp_path / "ppl.json"
    assert (
        main(
            [
                "pretrain",
                "--eval-only",
                "--model",
                str(final),
                "--corpus",
                str(corpus),
                "--split",
                "test",
                "--lengths",
                "16,32,64",
                "--docs-per-source",
                "2",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    res = json.loads(out_json.read_text())
    assert res["lengths"] == [16, 32, 64]
    for L in ("16", "32", "64"):
        r = res["results"][L]
        assert r["tokens"] > 0 and 1 < r["ppl"] < 1e4


def test_mean_nll_is_the_mean_next_token_loss_of_each_window():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    x = torch.randint(0, 50, (2, 12))
    nll, n = mean_nll(model, x)
    with torch.no_grad():
        want = sum(model(input_ids=x[i : i + 1], labels=x[i : i + 1]).loss.item() for i in range(2)) / 2
    assert n == 2 * 11 and nll == pytest.approx(want, rel=1e-5)
    assert mean_nll(model, x, batch_size=2) == pytest.approx((nll, n), rel=1e-5)


def test_continued_pretraining(corpus, tmp_path):
    """--init-from starts from a model folder's weights (its architecture, a fresh schedule)."""
    base = tmp_path / "base"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(base), *TINY]) == 0
    out = tmp_path / "cont"
    assert (
        main(
            [
                "pretrain",
                "--corpus",
                str(corpus),
                "--out",
                str(out),
                *TINY,
                "--layers",
                "3",
                "--init-from",
                str(base / "final"),
            ]
        )
        == 0
    )
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2  # the init model's architecture, not --layers
    a = load_file(str(base / "final" / "model.safetensors"))
    b = load_file(str(out / "final" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # it trained from there
    summary = json.loads((out / "final" / "train_summary.json").read_text())
    assert [st["steps"] for st in summary["previous_stages"]] == [4] and summary["steps"] == 4
    with pytest.raises(SystemExit, match="--seq-len"):
        main(
            [
                "pretrain",
                "--corpus",
                str(corpus),
                "--out",
                str(tmp_path / "c2"),
                *TINY,
                "--init-from",
                str(base / "final"),
                "--seq-len",
                "16",
            ]
        )


def test_pretrain_bf16_autocast_keeps_float32_weights(corpus, tmp_path):
    """--bf16 runs the forward pass under bfloat16 autocast; weights and checkpoint stay float32
    and the logged losses are finite."""
    out = tmp_path / "bf16"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(out), *TINY, "--bf16"]) == 0
    weights = load_file(str(out / "final" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 4 and all(0 < l < 20 for l in losses)
    assert json.loads((out / "run_args.json").read_text())["bf16"] is True


def test_pretrain_bad_flags(corpus, tmp_path):
    with pytest.raises(SystemExit, match="divisible"):
        main(["pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "x"), *TINY, "--kv-heads", "3"])
    with pytest.raises(SystemExit, match="memlong data"):
        main(["pretrain", "--corpus", str(tmp_path / "nocorpus"), "--out", str(tmp_path / "y")])
    with pytest.raises(SystemExit, match="--model"):
        main(["pretrain", "--corpus", str(corpus), "--eval-only"])


def test_stages_and_phases_are_recorded(corpus, tmp_path):
    """Every step's flags are on record: a run resumed with other flags starts a new phase
    (run_args_history.json); a run stopped early is ended at its checkpoint with --finish; a run
    continued from a folder lists that folder's stages before its own (train_summary.json)."""
    first = tmp_path / "first"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(first), *TINY, "--max-steps", "2"]) == 0
    tok = ["--tokenizer", str(corpus / "tokenizer")]
    cont = tmp_path / "cont"
    flags = [*TINY, "--init-from", str(first / "final"), *tok]
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(cont), *flags, "--stop-after", "1"]) == 0
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(cont), *flags, "--lr", "0.002"]) == 0
    history = json.loads((cont / "run_args_history.json").read_text())
    assert [h["from_step"] for h in history] == [0, 1]
    assert [h["args"]["lr"] for h in history] == [1.5e-3, 0.002]
    summary = json.loads((cont / "final" / "train_summary.json").read_text())
    assert [st["steps"] for st in summary["previous_stages"]] == [2] and summary["steps"] == 4
    assert [p["from_step"] for p in summary["phases"]] == [0, 1]

    # A run stopped early (--stop-after) is ended where it is with --finish; its checkpoint records
    # it, so a third stage continued from that checkpoint lists it, with its phases.
    stopped = tmp_path / "stopped"
    with pytest.raises(SystemExit, match="--finish"):
        main(["pretrain", "--corpus", str(corpus), "--out", str(stopped), *TINY, "--finish"])
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(stopped), *flags, "--stop-after", "1"]) == 0
    assert (
        main(["pretrain", "--corpus", str(corpus), "--out", str(stopped), *flags, "--lr", "0.002", "--stop-after", "1"])
        == 0
    )
    assert not (stopped / "final").exists()
    before = load_file(str(stopped / "checkpoint" / "model.safetensors"))
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(stopped), *flags, "--lr", "0.002", "--finish"]) == 0
    done = json.loads((stopped / "final" / "train_summary.json").read_text())
    assert done["steps"] == 2 and done["validated_at_step"] == 2 and done["final_val_loss"] > 0
    assert [p["from_step"] for p in done["phases"]] == [0, 1]  # --finish adds no phase
    after = load_file(str(stopped / "final" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # no training step taken
    assert json.loads((stopped / "checkpoint" / "train_summary.json").read_text())["steps"] == 2
    third = tmp_path / "third"
    assert (
        main(
            [
                "pretrain",
                "--corpus",
                str(corpus),
                "--out",
                str(third),
                *TINY,
                "--init-from",
                str(stopped / "checkpoint"),
                *tok,
            ]
        )
        == 0
    )
    stages = json.loads((third / "final" / "train_summary.json").read_text())["previous_stages"]
    assert [st["steps"] for st in stages] == [2, 2] and stages[1]["args"]["max_steps"] == 4
    assert [p["from_step"] for p in stages[1]["phases"]] == [0, 1]


def test_record_phase_reads_old_records_with_defaults(tmp_path):
    """A phase recorded before a flag existed ran with its default: resuming with that default
    (and other run-only flags such as --finish) adds no phase; another value does."""
    old = {"corpus": "c", "lr": 0.001, "no_progress": True}  # no bf16, no finish
    (tmp_path / "run_args_history.json").write_text(json.dumps([{"from_step": 0, "args": old}]))
    _record_phase(tmp_path, {**old, "bf16": False, "finish": True, "no_progress": False}, 10, resume=True)
    assert len(json.loads((tmp_path / "run_args_history.json").read_text())) == 1
    _record_phase(tmp_path, {**old, "bf16": True}, 20, resume=True)
    history = json.loads((tmp_path / "run_args_history.json").read_text())
    assert [h["from_step"] for h in history] == [0, 20]
    _record_phase(tmp_path, {**old, "bf16": False, "threads": 3}, 20, resume=True)  # phase 20 ran no step
    assert [h["from_step"] for h in json.loads((tmp_path / "run_args_history.json").read_text())] == [0]
