"""The CLI verbs run end to end at small sizes."""

import json
import subprocess
import sys

import pytest

from memlong.cli import main


def test_help_and_unknown_verb(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_demo_end_to_end(tmp_path):
    import sysconfig
    from pathlib import Path

    doc = tmp_path / "doc.txt"
    doc.write_text(Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text()[:9000])
    out = tmp_path / "demo.json"
    assert main(["demo", "--doc", str(doc), "--chunk-size", "32", "--window", "128", "--capacity", "4096",
                 "--max-new-tokens", "4", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["untrained_model"] is True and s["tokens_ingested"] > 1500
    assert s["bank_chunks"] > 0 and s["fact_chunk_in_memory"] is True
    assert s["fact_retrieved_for_question"] is True  # the frozen retriever finds the planted fact


def test_bench_ingest_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "memlong", "bench", "ingest", "--tokens", "1024", "--retriever", "hashing",
         "--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2", "--chunk-size", "64",
         "--window", "256", "--capacity", "512", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    assert {r["method"] for r in results} == {"memlong", "base_windows"}
    mem = next(r for r in results if r["method"] == "memlong")
    assert mem["tokens"] == 1024 and mem["tokens_per_s"] > 0 and mem["bank_chunks"] == 8
    assert set(mem["time_split_s"]) >= {"attention", "retriever", "search", "rest"}
    with pytest.raises(SystemExit):
        main(["bench", "ingest", "--tokens", "0"])


def test_bench_search_end_to_end(tmp_path):
    out = tmp_path / "search.json"
    assert main(["bench", "search", "--sizes", "500", "--queries", "20", "--dim", "32",
                 "--indexes", "torch,faiss_flat,faiss_hnsw", "--json", str(out)]) == 0
    rows = {r["index"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["torch"]["recall_at_k"] == 1.0 and rows["faiss_flat"]["recall_at_k"] == 1.0
    assert 0 <= rows["faiss_hnsw"]["recall_at_k"] <= 1 and rows["faiss_hnsw"]["query_ms"] > 0
