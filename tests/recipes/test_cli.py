"""The CLI verbs run end to end at small sizes."""

import json
import subprocess
import sys

import pytest

from memlong.cli import main

from conftest import assert_markdown_beside


def test_help_and_unknown_verb(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def _tiny_memlong_dir(tmp_path, tokenizer_dir):
    """A MemLong directory on a tiny random base (8 layers, a small BPE), training_free like the
    default model, small sizes."""
    from memlong.config import MemLongConfig

    from conftest import save_tiny_lm

    base = save_tiny_lm(tmp_path / "tiny-base", tokenizer_dir, layers=8)
    d = tmp_path / "tiny-memlong"
    MemLongConfig(
        mode="training_free",
        memory_layer=1,
        retrieval_layers=tuple(range(1, 9)),
        chunk_size=64,
        top_k=2,
        local_window=256,
        memory_capacity=8192,
        bank_dtype="bfloat16",
    ).save_pretrained(d)
    (d / "memlong_base.json").write_text(json.dumps({"base_model": str(base), "local": False, "mode": "none"}))
    return d


def test_demo_end_to_end(tmp_path, capsys, bpe_tokenizer_dir):
    """The demo on a tiny training_free model: a short document with three planted facts, read with and
    without memory; every question answered from both, the chunks it retrieves, ppl, speed, bank size."""
    import sysconfig
    from pathlib import Path

    doc = tmp_path / "doc.txt"
    doc.write_text(Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text()[:12000])
    out = tmp_path / "demo.json"
    assert (
        main(
            [
                "demo",
                "--model",
                str(_tiny_memlong_dir(tmp_path, bpe_tokenizer_dir)),
                "--doc",
                str(doc),
                "--min-tokens",
                "0",
                "--score",
                "256",
                "--retriever",
                "hashing",
                "--max-new-tokens",
                "4",
                "--threads",
                "1",
                "--set",
                "question_fresh_window=true",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "SUMMARY" in printed and "without memory" in printed
    markdown = assert_markdown_beside(out)
    assert "| fact (depth) |" in markdown and "memlong demo --set question_fresh_window=true --json" in markdown
    assert "| with memory | without memory | rag | base_truncated |" in markdown  # every method's answers
    s = json.loads(out.read_text())
    assert s["model"]["mode"] == "training_free" and s["model"]["layers"] == 8 and s["model"]["top_k"] == 2
    assert s["model"]["overrides"] == ["question_fresh_window=true"]
    cfg = s["model"]["memlong"]  # the whole config it ran with, as eval reports record theirs
    assert cfg["question_fresh_window"] is True and cfg["bank_heads"] is None and cfg["question_score_ratio"] == 0.0
    d = s["document"]
    assert len(d["parts"]) == 1 and d["parts"][0]["split"] is None and d["tokens"] > 2000  # not a stdlib path
    assert s["ppl"]["tokens_scored"] == 256 and s["ppl"]["with_memory"] > 1 and s["ppl"]["without_memory"] > 1
    assert len(s["facts"]) == 3
    for f in s["facts"]:
        assert f["expected"] in f["fact"] and f["expected"] not in f["question"]
        assert f["token"] < d["tokens"] - 256 - 256  # far back: out of the local window when asked
        assert f["fact_chunks"], "the fact's chunk is in the bank (character spans recorded)"
        mem, no = f["memory"], f["no_memory"]
        assert len(mem["retrieved"]) == 2 and isinstance(mem["fact_retrieved"], bool)
        assert mem["fact_chunk_rank_by_embedding"] >= 1 and mem["bank_chunks"] > 0 and mem["reranked_candidates"] > 2
        assert "retrieved" not in no  # retrieval off: nothing to retrieve from
        assert mem["prompt"] == no["prompt"] == f"\n\nQuestion: {f['question']}\nAnswer:"  # no chat template
        assert isinstance(mem["answer"], str) and isinstance(no["correct"], bool)
    assert s["accuracy"]["memory"] in (0, 1 / 3, 2 / 3, 1) and 0 <= s["facts_retrieved"] <= 3
    r = s["reading"]
    assert r["memory"]["tokens"] == r["no_memory"]["tokens"] == d["tokens"] and r["memory"]["tokens_per_s"] > 0
    assert s["bank"]["chunks"] > 0 and s["bank"]["bytes"] > 0 and s["bank"]["bytes_per_token"] > 0
    # the document fits (capacity 8192 tokens): no warning before reading, nothing evicted
    assert s["bank"]["reading_plan"]["tokens"] == d["tokens"] and not s["bank"]["reading_plan"]["evicted_chunks"]
    assert s["bank"]["evicted"]["chunks"] == 0 and "warning:" not in printed and "evicted while" not in printed
    assert s["peak_rss_bytes"] >= s["peak_rss_bytes_reading_with_memory"] > 0
    # the baselines, the base model alone: rag (top-2 chunks of 64 tokens as text) and base_truncated
    for f in s["facts"]:
        rag, trunc = f["rag"], f["base_truncated"]
        assert len(rag["rag_chunks"]) == 2 and rag["rag_chunks"] == sorted(rag["rag_chunks"])
        assert rag["rag_context_chunks"] == -(-d["tokens"] // 64) and isinstance(rag["fact_retrieved"], bool)
        assert 1 <= rag["fact_chunk_rank"] <= rag["rag_context_chunks"]
        assert rag["fact_retrieved"] == (rag["fact_chunk_rank"] <= 2)
        assert trunc["tokens_read"] == 1024 - 4 and isinstance(trunc["answer"], str)  # its context less the answer
    assert set(s["accuracy"]) == {"memory", "no_memory", "rag", "base_truncated"}
    assert "rag" in printed and "base_truncated" in printed
    # each method's cost: tokens/s, and what it keeps per token (8 layers x 4 KV heads x 8 dims, K and V)
    cost = s["cost"]
    assert all(c["tokens_per_second"] > 0 for c in cost.values())
    assert cost["base_truncated"]["bytes_per_token"] == cost["no_memory"]["bytes_per_token"] == 2 * 8 * 4 * 8 * 4
    assert cost["rag"]["bytes_per_token"] == round(-(-d["tokens"] // 64) * 256 * 4 / d["tokens"], 2)
    assert cost["memory"]["bytes_per_token"] > 2 * 8 * 4 * 8 * 2  # a bank slot: bfloat16 K/V of 8 layers and more


def test_demo_refuses_a_bad_set_before_reading(tmp_path, capsys, bpe_tokenizer_dir):
    model = str(_tiny_memlong_dir(tmp_path, bpe_tokenizer_dir))
    with pytest.raises(SystemExit, match="memlong demo: .*question_tail"):
        main(["demo", "--model", model, "--retriever", "hashing", "--set", "question_tail=999"])
    assert "reading" not in capsys.readouterr().out.lower()


def test_demo_document_is_extended_with_held_out_files(bpe_tokenizer_dir):
    """--min-tokens appends held-out stdlib files; the facts land where they say."""
    import sysconfig
    from pathlib import Path

    from transformers import AutoTokenizer

    from memlong.data.split import split_of
    from memlong.recipes.demo import DEFAULT_DOC, build_document, plant_facts

    tok = AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir))
    first = Path(sysconfig.get_paths()["stdlib"]) / DEFAULT_DOC
    need = len(tok(first.read_text(), add_special_tokens=False)["input_ids"]) + 5_000  # more than the first file
    text, parts = build_document(tok, first, need)
    assert len(parts) >= 2 and all(split_of(p["doc_id"]) == "test" for p in parts)
    assert len(tok(text, add_special_tokens=False)["input_ids"]) >= need
    planted, facts = plant_facts(text, parts, seed=1)
    assert len(planted) == len(text) + sum(len(f["fact"]) + 1 for f in facts)
    for f in facts:
        assert planted[f["chars"][0] : f["chars"][1]] == f["fact"]
        assert planted[f["chars"][0] - 1] == "\n" and planted[f["chars"][1]] == "\n"  # on its own line
        assert abs(f["chars"][0] / len(planted) - f["depth"]) < 0.01
    for p in parts:  # the parts still delimit the original files, facts aside
        part = planted[p["start"] : p["end"]]
        for f in facts:
            part = part.replace(f["fact"] + "\n", "")
        assert part == Path(p["path"]).read_text()


def test_demo_shows_the_chunks_generate_reads(tmp_path, bpe_tokenizer_dir):
    """The chunks the demo lists for a question are those generate(requery=True) retrieves (re-ranked,
    with the question's words)."""
    import sysconfig
    from pathlib import Path

    import torch

    from memlong.pretrained import load_memlong_model
    from memlong.recipes.demo import _question_retrieval

    model, tok = load_memlong_model(_tiny_memlong_dir(tmp_path, bpe_tokenizer_dir), retriever="hashing")
    text = Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text()[:8000]
    memory = model.ingest_text(text)
    cfg, bank = model.memlong_config, memory.bank(0)
    for question in ("What does the parser do with optional arguments?", "Who wrote this module?"):
        q_ids = tok("\n\nQuestion: " + question + "\nAnswer:", add_special_tokens=False)["input_ids"]
        shown = _question_retrieval(model, tok, memory, q_ids, {"chars": [0, 1]}, text)
        # the bank's window index (rerank_index, the default): every chunk is a candidate
        assert shown["reranked_candidates"] == len(bank) > cfg.top_k and len(shown["retrieved"]) == cfg.top_k
        q = model.memlong_retriever.embed([q_ids[-cfg.chunk_size :]])[0]
        counts = bank.counts.clone()
        search = memory.question_search(0, q, model.memlong_retriever, q_ids[-cfg.chunk_size :])  # its words too
        slots = bank.retrieve(q, cfg.top_k, cfg.retrieval_offsets, **search)
        bank.counts.copy_(counts)
        assert sorted(h["chunk_id"] for h in shown["retrieved"]) == sorted(bank.chunk_ids[slots].tolist())
        assert torch.equal(bank.counts, counts)


def test_demo_default_document_is_held_out():
    import sysconfig
    from pathlib import Path

    from memlong.data.split import split_of
    from memlong.recipes.demo import DEFAULT_DOC, _doc_id

    path = Path(sysconfig.get_paths()["stdlib"]) / DEFAULT_DOC
    assert _doc_id(path) == "stdlib/unittest/mock.py" and split_of(_doc_id(path)) == "test"
    assert len(path.read_text()) > 50_000


def test_bench_ingest_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "memlong",
            "bench",
            "ingest",
            "--tokens",
            "1024",
            "--retriever",
            "hashing",
            "--layers",
            "2",
            "--hidden",
            "64",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--chunk-size",
            "64",
            "--window",
            "256",
            "--capacity",
            "512",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    assert {r["method"] for r in results} == {"memlong", "base_windows"}
    assert "MemLong reads at" in assert_markdown_beside(out)
    mem = next(r for r in results if r["method"] == "memlong")
    assert mem["tokens"] == 1024 and mem["tokens_per_s"] > 0 and mem["bank_chunks"] == 8
    assert set(mem["time_split_s"]) >= {"attention", "retriever", "search", "rest"}
    with pytest.raises(SystemExit):
        main(["bench", "ingest", "--tokens", "0"])


def test_bench_search_end_to_end(tmp_path):
    out = tmp_path / "search.json"
    assert (
        main(
            [
                "bench",
                "search",
                "--sizes",
                "500",
                "--queries",
                "20",
                "--dim",
                "32",
                "--indexes",
                "torch,faiss_flat,faiss_hnsw",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = {r["index"]: r for r in json.loads(out.read_text())["results"]}
    assert "| random | 500 | faiss_hnsw |" in assert_markdown_beside(out)
    assert rows["torch"]["recall_at_k"] == 1.0 and rows["faiss_flat"]["recall_at_k"] == 1.0
    assert 0 <= rows["faiss_hnsw"]["recall_at_k"] <= 1 and rows["faiss_hnsw"]["query_ms"] > 0
