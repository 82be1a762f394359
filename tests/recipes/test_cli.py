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


def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    """Without a reference model the demo falls back to the shipped base with closed gates, says so,
    and runs every part: (a) ppl with/without memory, (b) passkey, (c) planted fact, (d) speed."""
    import sysconfig
    from pathlib import Path

    from memlong.pretrained import ENV_VAR, toy_base_model_path

    monkeypatch.setenv("MEMLONG_REFERENCE_MODEL", str(tmp_path / "no-reference-here"))
    monkeypatch.setenv(ENV_VAR, str(toy_base_model_path()))  # the small toy base keeps this test fast
    doc = tmp_path / "doc.txt"
    doc.write_text(Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text()[:9000])
    out = tmp_path / "demo.json"
    assert main(["demo", "--doc", str(doc), "--passkey-length", "4096", "--passkey-trials", "1",
                 "--max-new-tokens", "4", "--threads", "1", "--json", str(out)]) == 0
    assert "gates CLOSED" in capsys.readouterr().out
    s = json.loads(out.read_text())
    assert s["reference_model"] is False and s["gates_mean_abs_tanh"] and not any(s["gates_mean_abs_tanh"].values())
    assert s["document"]["split"] is None and s["document"]["tokens"] > 2000  # not a stdlib path
    ppl = s["ppl"]
    assert ppl["tokens_scored"] == 2048 and ppl["with_memory"] > 1
    assert ppl["with_memory"] == pytest.approx(ppl["without_memory"], rel=1e-5)  # closed gates: memory is inert
    pk = s["passkey"]
    assert pk["length"] == 4096 and len(pk["cases"]) == 1 and set(pk["cases"][0]) >= {"key", "memory", "no_memory"}
    assert 0 <= pk["accuracy_memory"] <= 1 and 0 <= pk["accuracy_no_memory"] <= 1
    f = s["fact"]
    assert f["bank_chunks"] > 0 and f["fact_chunk_in_memory"] is True
    assert f["fact_retrieved_for_question"] is True  # the frozen retriever finds the planted fact
    assert isinstance(f["generated"], str) and f["generated"]
    assert s["ingest_tokens"] > 6000 and s["ingest_tokens_per_s"] > 0 and s["peak_rss_bytes"] > 0


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
