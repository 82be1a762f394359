"""`memlong pretrain` end to end on a tiny config: train, checkpoint, resume, evaluate."""

import json

import pytest
import torch
from safetensors.torch import load_file

from memlong.cli import main
from memlong.data.corpus import iter_split, write_corpus
from memlong.data.sources import SkipCounter, stdlib_documents, stdlib_root
import random

from memlong.recipes.pretrain import (
    _record_phase,
    induction_probe,
    induction_rows,
    lr_lambda,
    mean_nll,
    plant_copies,
    tile_shuffled,
)
from memlong.tokenizer import train_and_save

TINY = ["--layers", "2", "--hidden", "64", "--heads", "8", "--kv-heads", "4", "--seq-len", "32",
        "--batch-size", "2", "--warmup", "2", "--max-steps", "4", "--eval-every", "2", "--save-every", "2",
        "--eval-windows-per-source", "2", "--no-progress"]


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
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "loss.png", "train_summary.json"):
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
    assert main(["pretrain", "--eval-only", "--model", str(final), "--corpus", str(corpus), "--split", "test",
                 "--lengths", "16,32,64", "--docs-per-source", "2", "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())
    assert res["lengths"] == [16, 32, 64]
    for L in ("16", "32", "64"):
        r = res["results"][L]
        assert r["tokens"] > 0 and 1 < r["ppl"] < 1e4


def test_plant_copies_marks_exact_copies():
    x = torch.arange(4 * 64).reshape(4, 64)  # every token distinct: a copy is recognisable
    y, copied = plant_copies(x, random.Random(3), 1.0, 16)
    assert not copied[:, 0].any() and y.shape == x.shape
    for row in range(4):
        changed = (y[row] != x[row]).nonzero().flatten()
        assert 4 <= len(changed) <= 16 and (changed.diff() == 1).all()  # one contiguous span
        dst, n = changed[0].item(), len(changed)
        src = y[row, dst].item() - x[row, 0].item()
        assert src + n <= dst  # copied from before itself, whole
        assert torch.equal(y[row, dst : dst + n], x[row, src : src + n])
        assert copied[row].nonzero().flatten().tolist() == list(range(dst + 1, dst + n))
    untouched, none = plant_copies(x, random.Random(3), 0.0, 16)
    assert torch.equal(untouched, x) and not none.any()
    # random sources: the source passage is replaced by random ids, and the copy repeats them
    z, zc = plant_copies(x, random.Random(3), 1.0, 16, random_share=1.0, vocab=7)
    for row in range(4):
        pos = zc[row].nonzero().flatten()
        dst, n = pos[0].item() - 1, len(pos) + 1
        assert bool((z[row, dst : dst + n] < 7).all())  # ids from the random vocabulary
        src = [s for s in range(0, dst - n + 1) if torch.equal(z[row, s : s + n], z[row, dst : dst + n])]
        assert src and (z[row] != x[row]).sum() >= n  # source overwritten, then copied


def test_tile_shuffled_repeats_a_shuffled_passage_of_the_row():
    x = torch.arange(3 * 50).reshape(3, 50)
    y, copied = tile_shuffled(x, random.Random(1), 1.0, 12)
    for row in range(3):
        n = int((~copied[row]).sum())
        assert 3 <= n <= 12
        passage = y[row, :n]
        assert sorted(passage.tolist()) == list(range(passage.min().item(), passage.min().item() + n))  # a passage
        assert passage.min() >= x[row, 0] and passage.max() <= x[row, -1]  # of this row
        assert torch.equal(y[row], passage.repeat(50 // n + 1)[:50])  # repeated to the end
    same, none = tile_shuffled(x, random.Random(1), 0.0, 12)
    assert torch.equal(same, x) and not none.any()


def test_induction_rows_copy_pool_tokens_at_a_random_distance():
    x = torch.arange(10_000, 10_000 + 6 * 64).view(6, 64)
    pool = torch.tensor([3, 5, 7, 11])
    new, copied, labels = induction_rows(x, random.Random(0), 0.5, 16, pool)
    synthetic = (new != x).any(1)
    assert 0 < int(synthetic.sum()) < 6
    for b in range(6):
        if not synthetic[b]:
            assert torch.equal(new[b], x[b]) and not copied[b].any() and torch.equal(labels[b], x[b])
            continue
        assert set(new[b].tolist()) <= set(pool.tolist())
        assert torch.equal(labels[b] != -100, copied[b])  # the loss counts only the copy
        assert torch.equal(labels[b][copied[b]], new[b][copied[b]])
        pos = copied[b].nonzero().flatten()
        n = len(pos) + 1  # every copied token but the first is marked
        dst = int(pos[0]) - 1
        assert 4 <= n <= 16 and torch.equal(pos, torch.arange(dst + 1, dst + n))
        # some earlier passage of n tokens equals the copy
        assert any(torch.equal(new[b, s : s + n], new[b, dst : dst + n]) for s in range(0, dst - n + 1))


def test_pretrain_with_induction_rows(corpus, tmp_path):
    out = tmp_path / "ind"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(out), *TINY, "--induction-rate", "0.5",
                 "--induction-span", "8", "--induction-pool", "20"]) == 0
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([m for m in metrics if "loss" in m]) == 4 and all(0 < m["loss"] < 20 for m in metrics if "loss" in m)
    with pytest.raises(SystemExit, match="--induction-rate"):
        main(["pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "bad"), *TINY, "--induction-rate", "1.5"])


def test_induction_probe_is_a_repeated_random_sequence():
    ids, scored = induction_probe(50, seed=2, rows=3, length=10)
    assert ids.shape == (3, 20) and torch.equal(ids[:, :10], ids[:, 10:])
    assert scored.sum() == 3 * 9 and not scored[:, :11].any()
    assert torch.equal(induction_probe(50, seed=2, rows=3, length=10)[0], ids)  # fixed by the seed


def test_mean_nll_scores_only_the_marked_tokens(corpus):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    x = torch.randint(0, 50, (2, 12))
    marked = torch.zeros_like(x, dtype=torch.bool)
    marked[0, 5] = True
    nll, n = mean_nll(model, x, scored=marked)
    logp = torch.log_softmax(model(input_ids=x[:1]).logits[0, 4].float(), -1)
    assert n == 1 and nll == pytest.approx(-logp[x[0, 5]].item(), rel=1e-5)
    assert mean_nll(model, x)[1] == 2 * 11


def test_continued_pretraining_with_copies(corpus, tmp_path):
    """--init-from starts from a model folder's weights (its architecture, a fresh schedule);
    --copy-rate plants copies in the training windows; the copy probe is logged."""
    base = tmp_path / "base"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(base), *TINY]) == 0
    out = tmp_path / "cont"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(out), *TINY, "--layers", "3",
                 "--init-from", str(base / "final"), "--copy-rate", "1.0", "--copy-span", "8"]) == 0
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2  # the init model's architecture, not --layers
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["val_copy_loss"] > 0 and m["induction_loss"] > 0 for m in metrics if "val_loss" in m)
    a = load_file(str(base / "final" / "model.safetensors"))
    b = load_file(str(out / "final" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # it trained from there
    with pytest.raises(SystemExit, match="--seq-len"):
        main(["pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "c2"), *TINY,
              "--init-from", str(base / "final"), "--seq-len", "16"])
    with pytest.raises(SystemExit, match="--copy-rate"):
        main(["pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "c3"), *TINY, "--copy-rate", "2"])


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


def test_export_and_model_card(corpus, tmp_path):
    """The card is rendered from the run's JSON records (no hand-typed numbers)."""
    from memlong.pretrained import card

    run_dir = tmp_path / "run"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(run_dir), *TINY, "--max-steps", "2"]) == 0
    (corpus / "long_documents.json").write_text(json.dumps({"min_tokens": 64, "validation": {}, "test": {}}))
    ship = tmp_path / "ship"
    assert card.main(["--run", str(run_dir), "--corpus", str(corpus), "--out", str(ship)]) == 0
    assert (ship / "model.safetensors").is_file() and not (ship / "README.md").exists()
    for split in ("validation", "test"):
        assert main(["pretrain", "--eval-only", "--model", str(ship), "--corpus", str(corpus), "--split", split,
                     "--lengths", "16,64", "--docs-per-source", "1", "--json", str(ship / f"ppl_{split}.json")]) == 0
    assert card.main(["--run", str(run_dir), "--corpus", str(corpus), "--out", str(ship), "--card-only"]) == 0
    text = (ship / "README.md").read_text()
    ppl64 = json.loads((ship / "ppl_test.json").read_text())["results"]["64"]["ppl"]
    assert f"| 64 (past training context) | {ppl64:.2f} |" in text
    assert "2 of a 2-step schedule" in text

    # Continued pretraining from the shipped folder into itself, resumed once with other flags:
    # the card lists both stages and both phases of the last one, from the records.
    cont = tmp_path / "cont"
    flags = [*TINY, "--init-from", str(ship), "--tokenizer", str(corpus / "tokenizer"), "--copy-rate", "0.5"]
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(cont), *flags, "--stop-after", "1"]) == 0
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(cont), *flags, "--copy-random", "0.5"]) == 0
    history = json.loads((cont / "run_args_history.json").read_text())
    assert [h["from_step"] for h in history] == [0, 1]
    assert [h["args"]["copy_random"] for h in history] == [0.0, 0.5]
    assert card.main(["--run", str(cont), "--corpus", str(corpus), "--out", str(ship)]) == 0
    summary = json.loads((ship / "train_summary.json").read_text())
    assert [st["steps"] for st in summary["previous_stages"]] == [2] and summary["steps"] == 4
    assert card.main(["--run", str(cont), "--corpus", str(corpus), "--out", str(ship), "--card-only"]) == 0
    text = (ship / "README.md").read_text()
    assert "| 1 (from scratch) | 2 |" in text and "| 2 (continued) | 4 |" in text
    assert "stage 2, steps 1-1:" in text and "stage 2, steps 2-4:" in text and "--copy-random 0.5" in text
    assert f"{(2 + 4) * 2 * 32:,} (2 windows" in text

    # A run stopped early (--stop-after) is ended where it is with --finish; its checkpoint records
    # it, so a third stage continued from that checkpoint lists stage 2's phases and stage 3.
    stopped = tmp_path / "stopped"
    with pytest.raises(SystemExit, match="--finish"):
        main(["pretrain", "--corpus", str(corpus), "--out", str(stopped), *TINY, "--finish"])
    flags2 = [*TINY, "--init-from", str(ship), "--tokenizer", str(corpus / "tokenizer"), "--repeat-rate", "0.5"]
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(stopped), *flags2, "--stop-after", "1"]) == 0
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(stopped), *flags2, "--induction-rate", "0.5",
                 "--stop-after", "1"]) == 0
    assert not (stopped / "final").exists()
    before = load_file(str(stopped / "checkpoint" / "model.safetensors"))
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(stopped), *flags2, "--induction-rate", "0.5",
                 "--finish"]) == 0
    done = json.loads((stopped / "final" / "train_summary.json").read_text())
    assert done["steps"] == 2 and done["validated_at_step"] == 2 and done["final_val_loss"] > 0
    assert [p["from_step"] for p in done["phases"]] == [0, 1]  # --finish adds no phase
    after = load_file(str(stopped / "final" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # no training step taken
    assert json.loads((stopped / "checkpoint" / "train_summary.json").read_text())["steps"] == 2
    third = tmp_path / "third"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(third), *TINY, "--init-from",
                 str(stopped / "checkpoint"), "--tokenizer", str(corpus / "tokenizer")]) == 0
    assert card.main(["--run", str(third), "--corpus", str(corpus), "--out", str(ship)]) == 0
    assert card.main(["--run", str(third), "--corpus", str(corpus), "--out", str(ship), "--card-only"]) == 0
    text = (ship / "README.md").read_text()
    assert "| 1 (from scratch) | 2 |" in text and "| 3 (continued) | 2 of 4 |" in text and "| 4 (continued) | 4 |" in text
    assert "stage 3, steps 1-1:" in text and "stage 3, steps 2-2:" in text and "--induction-rate 0.5" in text

    # Token counts for the embedding retriever's SIF weights, balanced by source, in the card.
    assert card.main(["--corpus", str(corpus), "--out", str(ship), "--card-only", "--token-counts", "300"]) == 0
    tc = json.loads((ship / "token_counts.json").read_text())
    assert tc["tokens"] == sum(tc["tokens_per_source"].values()) <= 300 and len(tc["counts"]) == 600
    assert "`token_counts.json`: unigram counts of" in (ship / "README.md").read_text()
    with pytest.raises(SystemExit):
        card.main(["--corpus", str(corpus), "--out", str(ship)])  # exporting needs --run


def test_record_phase_reads_old_records_with_defaults(tmp_path):
    """A phase recorded before a flag existed ran with its default: resuming with that default
    (and other run-only flags such as --finish) adds no phase; another value does."""
    old = {"corpus": "c", "copy_rate": 0.5, "lr": 0.001, "no_progress": True}  # no induction_rate, no finish
    (tmp_path / "run_args_history.json").write_text(json.dumps([{"from_step": 0, "args": old}]))
    _record_phase(tmp_path, {**old, "induction_rate": 0.0, "finish": True, "no_progress": False}, 10, resume=True)
    assert len(json.loads((tmp_path / "run_args_history.json").read_text())) == 1
    _record_phase(tmp_path, {**old, "induction_rate": 0.5}, 20, resume=True)
    history = json.loads((tmp_path / "run_args_history.json").read_text())
    assert [h["from_step"] for h in history] == [0, 20]
    _record_phase(tmp_path, {**old, "induction_rate": 0.0, "threads": 3}, 20, resume=True)  # phase 20 ran no step
    assert [h["from_step"] for h in json.loads((tmp_path / "run_args_history.json").read_text())] == [0]
