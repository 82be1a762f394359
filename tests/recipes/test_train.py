"""`memlong train` end to end on a tiny model: what is frozen stays bit-identical, loss falls,
checkpoints resume, and only what trained is saved and reloads on top of the base."""

import csv
import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import memlong
from memlong.cli import main
from memlong.tokenizer import train_and_save

from conftest import assert_markdown_beside

COMMON = [
    "--window",
    "64",
    "--chunk-size",
    "16",
    "--top-k",
    "2",
    "--capacity",
    "256",
    "--retriever",
    "hashing",
    "--batch-size",
    "2",
    "--eval-windows",
    "2",
    "--eval-length",
    "256",
    "--eval-score",
    "64",
    "--log-every",
    "1",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    lib = Path(sysconfig.get_paths()["stdlib"])
    texts = [
        (lib / n).read_text()[:8000]
        for n in ("argparse.py", "typing.py", "inspect.py", "textwrap.py", "shutil.py", "tempfile.py")
    ]
    tok = train_and_save(texts, 512, root / "model")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        initializer_range=0.2,
    )  # an expressive frozen LM head, so upper layers can lower the loss
    LlamaForCausalLM(cfg).save_pretrained(root / "model")
    with open(root / "train.jsonl", "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"doc{i}", "text": t}) + "\n")
    return root


def losses(run_dir):
    with open(run_dir / "log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def frozen_and_trained(base_dir, final_dir):
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    m = memlong.from_pretrained(final_dir, retriever=memlong.HashingRetriever())
    bp = dict(base.named_parameters())
    frozen, changed = [], []
    for name, p in m.named_parameters():
        if name in bp:
            (frozen if torch.equal(p, bp[name]) else changed).append(name)
    return m, frozen, changed


def test_single_process_freezes_learns_resumes_and_reloads(setup):
    run = setup / "run"
    args = [
        "train",
        "--model",
        str(setup / "model"),
        "--data",
        str(setup / "train.jsonl"),
        "--output",
        str(run),
        "--lr",
        "1e-2",
        "--warmup",
        "2",
        "--eval-every",
        "15",
        "--save-every",
        "15",
        *COMMON,
    ]
    assert main([*args, "--steps", "30"]) == 0
    ls = [loss for _, loss in losses(run)]
    assert len(ls) == 30
    assert sum(ls[:5]) / 5 - sum(ls[-5:]) / 5 > 0.3, ls  # it learns
    m, frozen, changed = frozen_and_trained(setup / "model", run / "final")
    # embeddings, LM head and every layer up to the memory layer (2 of 4) are untouched
    assert "model.embed_tokens.weight" in frozen and "lm_head.weight" in frozen
    assert all(n in frozen for n in bp_names(m, [0, 1]))
    assert all(n in changed for n in bp_names(m, [2, 3], suffix="self_attn.q_proj.weight"))
    trained = load_file(run / "final" / "memlong_trained.safetensors")
    assert not any(k.startswith(("model.layers.0.", "model.layers.1.", "model.embed")) for k in trained)
    gates = load_file(run / "final" / "memlong_gates.safetensors")
    assert all(g.abs().sum() > 0 for g in gates.values())  # the gates trained
    for k, v in trained.items():
        assert torch.equal(dict(m.named_parameters())[k], v)
    # validation with and without memory was logged
    with open(run / "log.csv") as f:
        val = [r for r in csv.DictReader(f) if r["val_ppl_memory"]]
    assert [int(r["step"]) for r in val] == [15, 30] and float(val[-1]["val_ppl_no_memory"]) > 0
    with open(run / "log.csv") as f:  # the speed, as a ratio to the plain forward's, on every row
        assert all(float(r["forward_ratio"]) > 0 and float(r["tokens_per_second"]) > 0 for r in csv.DictReader(f))
    assert (run / "loss.png").stat().st_size > 1000
    # a checkpoint keeps what trains, not the frozen base
    held = load_file(run / "checkpoints" / "step-30" / "model.safetensors")
    assert set(changed) <= set(held) and not set(held) & set(frozen)  # the trained layers, the gates
    assert all(k in dict(m.named_parameters()) for k in held)
    # resume from the newest checkpoint and carry on to step 40
    assert main([*args, "--steps", "40", "--resume"]) == 0
    steps = [s for s, _ in losses(run)]
    assert steps == list(range(1, 41))


def test_a_run_killed_between_checkpoints_resumes_to_the_same_losses(setup, tmp_path, monkeypatch):
    """Killed after step 13 with checkpoints every 5 steps (and a later save cut short), a run
    resumes from step 10 (its checkpoint holding only what trains) and logs the same losses as a
    run never cut."""
    from accelerate import Accelerator

    def run(out, *extra):
        argv = ["train", "--model", str(setup / "model"), "--data", str(setup / "train.jsonl"), "--output", str(out)]
        flags = ["--steps", "20", "--lr", "1e-2", "--warmup", "2", "--eval-every", "0", "--save-every", "5"]
        return main([*argv, *flags, *COMMON, *extra])

    assert run(tmp_path / "whole") == 0
    backward, calls = Accelerator.backward, []

    def killed_after_13(self, loss, **kwargs):
        calls.append(1)
        if len(calls) > 13:
            raise KeyboardInterrupt  # the session's end
        return backward(self, loss, **kwargs)

    monkeypatch.setattr(Accelerator, "backward", killed_after_13)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    monkeypatch.setattr(Accelerator, "backward", backward)
    partial = tmp_path / "cut" / "checkpoints" / "step-15"  # a save cut short: no trainer_state.json yet
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"")
    assert run(tmp_path / "cut", "--resume") == 0
    cut, whole = losses(tmp_path / "cut"), losses(tmp_path / "whole")
    assert [s for s, _ in cut] == list(range(1, 21))
    assert [x for _, x in cut] == pytest.approx([x for _, x in whole], rel=1e-5)


def bp_names(m, layers, suffix=""):
    return [
        n
        for n, _ in m.named_parameters()
        if any(n.startswith(f"model.layers.{i}.") for i in layers) and n.endswith(suffix)
    ]


def test_lora_saves_only_the_adapter(setup):
    """LoRA, trained under bf16 autocast (accelerate's mixed precision): the adapter is saved in float32.
    On a CPU without bfloat16 kernels (no AVX-512) the run warns that bf16 is slow there."""
    from contextlib import nullcontext

    from safetensors.torch import load_file

    from memlong.profiling import slow_bfloat16

    run = setup / "lora"
    slow = slow_bfloat16("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.warns(UserWarning, match="no AVX-512") if slow else nullcontext():
        assert (
            main(
                [
                    "train",
                    "--model",
                    str(setup / "model"),
                    "--data",
                    str(setup / "train.jsonl"),
                    "--output",
                    str(run),
                    "--steps",
                    "6",
                    "--lora-r",
                    "4",
                    "--lr",
                    "1e-2",
                    "--eval-every",
                    "0",
                    "--save-every",
                    "0",
                    "--mixed-precision",
                    "bf16",
                    *COMMON,
                ]
            )
            == 0
        )
    files = set(os.listdir(run / "final"))
    assert "adapter_model.safetensors" in files and "memlong_trained.safetensors" not in files
    assert {t.dtype for t in load_file(str(run / "final" / "adapter_model.safetensors")).values()} == {torch.float32}
    m, frozen, changed = frozen_and_trained(setup / "model", run / "final")
    assert all(n in frozen for n in bp_names(m, [0, 1]))
    assert any(n in changed for n in bp_names(m, [2, 3]))  # merged LoRA deltas


def test_two_processes_with_gloo(setup):
    run = setup / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "memlong",
        "train",
        "--model",
        str(setup / "model"),
        "--data",
        str(setup / "train.jsonl"),
        "--output",
        str(run),
        "--steps",
        "6",
        "--lr",
        "1e-2",
        "--eval-every",
        "0",
        "--save-every",
        "3",
        "--threads",
        "1",
        *COMMON,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    state = json.loads((run / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    assert len(state["streams"]) == 2  # each process read its own documents
    m, frozen, changed = frozen_and_trained(setup / "model", run / "final")
    assert all(n in frozen for n in bp_names(m, [0, 1]))
    assert any(n in changed for n in bp_names(m, [2, 3]))


@pytest.fixture(scope="module")
def short_run(setup):
    """A 2-step training run of its own (no dependence on other tests' order)."""
    run = setup / "short"
    assert (
        main(
            [
                "train",
                "--model",
                str(setup / "model"),
                "--data",
                str(setup / "train.jsonl"),
                "--output",
                str(run),
                "--steps",
                "2",
                "--eval-every",
                "0",
                "--save-every",
                "0",
                *COMMON,
            ]
        )
        == 0
    )
    return run


def test_eval_ppl_on_the_trained_model(setup, short_run, tmp_path):
    run = short_run
    out = tmp_path / "ppl.json"
    assert (
        main(
            [
                "eval",
                "ppl",
                "--model",
                str(run / "final"),
                "--data",
                str(setup / "train.jsonl"),
                "--split",
                "train",
                "--lengths",
                "64,1024",
                "--score",
                "64",
                "--retriever",
                "hashing",
                "--max-documents",
                "2",
                "--max-base-length",
                "512",
                "--json",
                str(out),
                "--plot",
                str(tmp_path / "ppl.png"),
            ]
        )
        == 0
    )
    rows = {(r["method"], r["length"]): r for r in json.loads(out.read_text())["results"]}
    assert "| 1,024 | base_full |" in assert_markdown_beside(out)
    assert set(m for m, _ in rows) == {"memlong", "memlong_no_memory", "base_full", "base_truncated"}
    assert rows[("memlong", 1024)]["tokens_scored"] == 2 * 64 and rows[("memlong", 1024)]["ppl"] > 1
    assert rows[("base_full", 1024)]["ppl"] is None and "skipped" in rows[("base_full", 1024)]["note"]
    # at L = local window (64) nothing leaves the window: no memory, both MemLong rows agree
    assert rows[("memlong", 64)]["ppl"] == pytest.approx(rows[("memlong_no_memory", 64)]["ppl"], rel=1e-5)
    assert (tmp_path / "ppl.png").exists()


def test_trained_directory_moves_with_its_local_base(setup, short_run, tmp_path):
    import shutil

    run = short_run
    info = json.loads((run / "final" / "memlong_base.json").read_text())
    assert info["local"] and not os.path.isabs(info["base_model"])
    shutil.copytree(setup / "model", tmp_path / "pkg" / "base")
    shutil.copytree(run / "final", tmp_path / "pkg" / "ref" / "final")
    (tmp_path / "pkg" / "ref" / "final" / "memlong_base.json").write_text(
        json.dumps({**info, "base_model": "../../base"})
    )
    moved = memlong.from_pretrained(tmp_path / "pkg" / "ref" / "final", retriever=memlong.HashingRetriever())
    here = memlong.from_pretrained(run / "final", retriever=memlong.HashingRetriever())
    ids = torch.randint(0, 500, (1, 200))
    with torch.no_grad():
        torch.testing.assert_close(moved(ids).logits, here(ids).logits, atol=0, rtol=0)


def test_passkey_prompt_and_eval_verb(setup, short_run, tmp_path):
    from transformers import AutoTokenizer

    from memlong.recipes.eval_passkey import passkey_digits, passkey_prompt

    tok = AutoTokenizer.from_pretrained(setup / "model")
    pool = tok((setup / "train.jsonl").read_text(), add_special_tokens=False)["input_ids"]
    for depth in (0.0, 0.5, 1.0):
        ids = passkey_prompt(tok, pool, "48213", 600, depth, offset=5)
        text = tok.decode(ids)
        assert len(ids) == 600 and text.rstrip().endswith("The pass key is")
        at = text.index("The pass key is 48213")
        assert abs(at / len(text) - depth) < 0.15
    run = short_run
    out = tmp_path / "pk.json"
    assert (
        main(
            [
                "eval",
                "passkey",
                "--model",
                str(run / "final"),
                "--data",
                str(setup / "train.jsonl"),
                "--split",
                "train",
                "--lengths",
                "300,600",
                "--depths",
                "0.2,0.8",
                "--trials",
                "2",
                "--retriever",
                "hashing",
                "--max-base-length",
                "300",
                "--json",
                str(out),
                "--plot",
                str(tmp_path / "pk.png"),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 2 * 2 * 5  # memlong, memlong_no_memory, base_full, base_truncated, rag
    assert all(r["trials"] == 2 and (r["accuracy"] is None or 0 <= r["accuracy"] <= 1) for r in rows)
    assert [r["note"] for r in rows if r["accuracy"] is None][0].startswith("skipped")
    for r in rows:  # each trial's key and generated answer, for finding out why one failed
        if r["accuracy"] is not None:
            assert len(r["answers"]) == 2 and all(
                len(a["key"]) == 5 and isinstance(a["answer"], str) for a in r["answers"]
            )
            assert r["accuracy"] == sum(passkey_digits(a["answer"]) == a["key"] for a in r["answers"]) / 2
        if r["method"] == "memlong":  # where the key was: retrieved for the question, its chunk's rank
            assert r["key_retrieved"] == sum(a["key_retrieved"] for a in r["answers"]) / 2
            for a in r["answers"]:
                assert a["bank_chunks"] > 0 and (
                    a["key_chunk_rank"] is None or 1 <= a["key_chunk_rank"] <= a["bank_chunks"]
                )
                assert not a["key_retrieved"] or a["key_chunk_rank"] is not None
        elif r["method"] == "rag":  # the same for the chunks rag put in its prompt
            assert r["key_retrieved"] == sum(a["key_retrieved"] for a in r["answers"]) / 2
            assert all(
                a["key_retrieved"] == (a["key_chunk_rank"] is not None and a["key_chunk_rank"] <= len(a["rag_chunks"]))
                for a in r["answers"]
            )
        else:
            assert "key_retrieved" not in r
    assert (tmp_path / "pk.png").stat().st_size > 1000


def test_passkey_key_retrieval_finds_the_keys_chunk(setup, short_run):
    """A question made of the key chunk's own tokens retrieves it, ranked first; a key that is
    nowhere in the bank has no rank."""
    from transformers import AutoTokenizer

    from memlong.recipes.eval_passkey import key_retrieval, passkey_prompt

    tok = AutoTokenizer.from_pretrained(setup / "model")
    model = memlong.from_pretrained(short_run / "final", retriever=memlong.HashingRetriever())
    pool = tok((setup / "train.jsonl").read_text(), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([passkey_prompt(tok, pool, "48213", 300, 0.5, offset=5)])  # the bank holds all it read
    memory = model.new_memory(1)
    model.ingest(ids, memory)
    bank = memory.bank(0)
    slot = next(s for s in bank.valid.nonzero().flatten().tolist() if "48213" in tok.decode(bank.token_ids[s].tolist()))
    found = key_retrieval(model, tok, memory, bank.token_ids[slot].tolist(), "48213")
    assert found == {"key_retrieved": True, "key_chunk_rank": 1, "bank_chunks": len(bank)}
    missing = key_retrieval(model, tok, memory, bank.token_ids[slot].tolist(), "99999")
    assert missing == {"key_retrieved": False, "key_chunk_rank": None, "bank_chunks": len(bank)}


def test_eval_reading_time_overrides(setup, short_run, tmp_path):
    from memlong.config import MemLongConfig, MemLongConfigError, reading_overrides

    cfg = MemLongConfig(memory_layer=2, retrieval_layers=(3,), chunk_size=8, memory_capacity=64, local_window=32)
    got = reading_overrides(cfg, ["bank_dtype=int8", "retrieval_offsets=[0,1]", "top_k=3"])
    assert (got.bank_dtype, got.retrieval_offsets, got.top_k) == ("int8", (0, 1), 3)
    for bad, msg in (
        ("memory_layer=1", "trained weights depend"),
        ("mode=training_free", "trained weights depend"),
        ("nonsense=1", "MemLongConfig field"),
        ("top_k=0", "MemLongConfig.top_k"),
    ):
        with pytest.raises(MemLongConfigError, match=msg):
            reading_overrides(cfg, [bad])
    free = MemLongConfig(
        mode="training_free",
        memory_layer=1,
        retrieval_layers=(1, 2, 3),
        chunk_size=8,
        memory_capacity=64,
        local_window=32,
    )
    assert reading_overrides(free, ["retrieval_layers=[2,3]"]).retrieval_layers == (2, 3)  # nothing trained
    with pytest.raises(MemLongConfigError, match="trained weights depend"):
        reading_overrides(cfg, ["retrieval_layers=[3]"])  # MemLong mode: the gates belong to these layers
    out = tmp_path / "ppl.json"
    assert (
        main(
            [
                "eval",
                "ppl",
                "--model",
                str(short_run / "final"),
                "--data",
                str(setup / "train.jsonl"),
                "--split",
                "train",
                "--lengths",
                "256",
                "--score",
                "64",
                "--retriever",
                "hashing",
                "--max-documents",
                "1",
                "--methods",
                "memlong",
                "--set",
                "bank_dtype=int8",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    config = json.loads(out.read_text())["config"]
    assert config["memlong"]["bank_dtype"] == "int8"
    assert config["retriever"] == "hashing" and config["retriever_info"]["class"] == "HashingRetriever"
    with pytest.raises(SystemExit):  # a usage error naming the field, not a traceback
        main(
            [
                "eval",
                "ppl",
                "--model",
                str(short_run / "final"),
                "--data",
                str(setup / "train.jsonl"),
                "--set",
                "bank_device=gpu",
            ]
        )


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("fsdp", "FSDP")])
def test_accelerate_config_files_parse(name, kind):
    """The documented multi-GPU configs are valid accelerate configs (they cannot run here: no GPU)."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / f"{name}.yaml"
    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type.name == kind and cfg.num_processes > 1
    assert "accelerate launch --config_file configs/accelerate/" in path.read_text()


def test_eval_ppl_copy_probe(setup, short_run, tmp_path):
    out = tmp_path / "copy.json"
    common = [
        "eval",
        "ppl",
        "--model",
        str(short_run / "final"),
        "--data",
        str(setup / "train.jsonl"),
        "--split",
        "train",
        "--score",
        "64",
        "--retriever",
        "hashing",
        "--max-documents",
        "2",
    ]
    assert main([*common, "--lengths", "512", "--repeat", "48", "--json", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["memlong"]["tokens_scored"] == 2 * 48 and rows["base_full"]["tokens_scored"] == 2 * 48
    with pytest.raises(SystemExit, match="--repeat"):
        main([*common, "--lengths", "512", "--repeat", "512"])


def test_length_windows_same_text_ends_every_length_on_the_same_tokens():
    from memlong.recipes.eval_ppl import length_windows

    docs = [list(range(100, 1100)), list(range(2000, 2700)), list(range(5000, 5300))]
    first = length_windows(docs, 256, [256, 512], max_documents=8)
    assert [w[0] for w in first] == [100, 2000, 5000] and all(len(w) == 256 for w in first)
    same = {L: length_windows(docs, L, [256, 512, 700], max_documents=8, same_text=True) for L in (256, 512, 700)}
    for L, windows in same.items():  # only documents of max(lengths) tokens; each ends at that token
        assert [len(w) for w in windows] == [L, L] and [w[-1] for w in windows] == [799, 2699]
    assert same[256][0] == same[700][0][-256:]
    assert len(length_windows(docs, 256, [256, 512, 700], max_documents=1, same_text=True)) == 1


def test_eval_ppl_same_text(setup, short_run, tmp_path):
    """--same-text: at every length the same last tokens of each document's first max(--lengths)
    tokens are scored, after the L - score tokens before them."""
    from transformers import AutoTokenizer

    out = tmp_path / "same.json"
    common = [
        "eval",
        "ppl",
        "--model",
        str(short_run / "final"),
        "--data",
        str(setup / "train.jsonl"),
        "--split",
        "train",
        "--score",
        "64",
        "--retriever",
        "hashing",
        "--max-documents",
        "2",
        "--methods",
        "base_full",
    ]
    assert main([*common, "--lengths", "128,512", "--same-text", "--json", str(out)]) == 0
    rows = {r["length"]: r for r in json.loads(out.read_text())["results"]}
    assert rows[128]["tokens_scored"] == rows[512]["tokens_scored"] == 2 * 64
    tok = AutoTokenizer.from_pretrained(setup / "model")
    base = AutoModelForCausalLM.from_pretrained(setup / "model").eval()
    docs = [json.loads(line)["text"] for line in (setup / "train.jsonl").read_text().splitlines()]
    ids = sorted((tok(t, add_special_tokens=False)["input_ids"] for t in docs), key=len, reverse=True)[:2]
    for L in (128, 512):
        nll = 0.0
        for d in ids:
            w = torch.tensor(d[512 - L : 512])[None]
            with torch.no_grad():
                logits = base(w).logits[0, -65:-1]
            nll += float(torch.nn.functional.cross_entropy(logits, w[0, -64:], reduction="sum"))
        assert rows[L]["ppl"] == pytest.approx(math.exp(nll / 128), rel=1e-4)
    with pytest.raises(SystemExit, match="--same-text and --repeat"):
        main([*common, "--lengths", "512", "--same-text", "--repeat", "48"])


def test_train_summary_records_the_run(short_run):
    """final/train_summary.json, the record a model card is written from: steps, tokens,
    processes, the hardware (the CPU's name on a CPU) and the arguments."""
    import torch

    from memlong.profiling import cpu_name

    summary = json.loads((short_run / "final" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["tokens"] > 0 and summary["processes"] == 1
    if not torch.cuda.is_available():
        assert summary["hardware"] == f"{cpu_name()} ({os.cpu_count()} cores)"
    assert summary["args"]["steps"] == 2 and summary["args"]["window"] == 64


def test_train_layers_retrieval_trains_only_the_retrieval_layers(setup):
    """--train-layers retrieval: LoRA on the retrieval layers (2 and 4, 1-based) alone; the layer
    between them stays frozen like the lower stack, and the run reloads on top of the base."""
    run = setup / "retrieval_only"
    assert (
        main(
            [
                "train",
                "--model",
                str(setup / "model"),
                "--data",
                str(setup / "train.jsonl"),
                "--output",
                str(run),
                "--steps",
                "4",
                "--lora-r",
                "4",
                "--lr",
                "1e-2",
                "--eval-every",
                "0",
                "--save-every",
                "0",
                "--memory-layer",
                "1",
                "--retrieval-layers",
                "2,4",
                "--train-layers",
                "retrieval",
                *COMMON,
            ]
        )
        == 0
    )
    m, frozen, changed = frozen_and_trained(setup / "model", run / "final")
    assert all(n in frozen for n in bp_names(m, [0, 2]))
    assert any(n in changed for n in bp_names(m, [1])) and any(n in changed for n in bp_names(m, [3]))
    assert json.loads((run / "args.json").read_text())["train_layers"] == "retrieval"


def test_loss_on_a_sample_of_positions_trains(setup, tmp_path):
    run = tmp_path / "sampled"
    args = [
        "train",
        "--model",
        str(setup / "model"),
        "--data",
        str(setup / "train.jsonl"),
        "--output",
        str(run),
        "--lr",
        "1e-2",
        "--warmup",
        "2",
        "--eval-every",
        "0",
        "--save-every",
        "0",
        "--loss-sample",
        "0.25",
        *COMMON,
    ]
    assert main([*args, "--steps", "12"]) == 0
    assert len(losses(run)) == 12 and json.loads((run / "args.json").read_text())["loss_sample"] == 0.25
    with pytest.raises(SystemExit, match="--loss-sample"):
        main([*args[: -len(COMMON)], "--loss-sample", "0", *COMMON, "--steps", "1"])
