"""`memlong bench ingest`'s baselines: the sliding-window model really slides, and the time
and memory guards report errors, never numbers."""

import json
import os
import sys

import pytest
import torch
from transformers import DynamicCache

from memlong.cli import main
from memlong.modeling import CACHE_ARG
from memlong.recipes.bench import _run_worker, plot_ingest, sliding_window_model

from conftest import VOCAB, assert_markdown_beside, tiny_model


def test_sliding_window_model_slides():
    model, _ = tiny_model("llama", layers=2)
    window, n = 16, 48
    ids = torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        wide = sliding_window_model(model, n)
        assert torch.allclose(wide(ids).logits, full, atol=1e-5)  # a window >= the text: the base model
        sliding = sliding_window_model(model, window)
        oneshot = sliding(ids).logits
        cache = DynamicCache(config=sliding.config)
        fed = torch.cat(
            [sliding(ids[:, s : s + window], **{CACHE_ARG: cache}, use_cache=True).logits for s in range(0, n, window)],
            dim=1,
        )
    assert torch.allclose(fed, oneshot, atol=1e-5)  # the rolling cache is the sliding mask
    assert torch.allclose(oneshot[:, :window], full[:, :window], atol=1e-5)
    assert not torch.allclose(oneshot[:, window:], full[:, window:], atol=1e-3)  # later tokens lose the far past
    assert cache.layers[0].keys.shape[-2] == window - 1


def test_worker_guards_report_errors():
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    assert _run_worker(sleeper, timeout=0.3, max_rss=1 << 40)["error"].startswith("out of time")
    assert _run_worker(sleeper, timeout=None, max_rss=1)["error"].startswith("out of memory")
    crash = [sys.executable, "-c", "raise MemoryError('no room')"]
    assert _run_worker(crash, timeout=None, max_rss=1 << 40)["error"].startswith("out of memory")


def test_bench_baselines_end_to_end(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    tiny = [
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
        "--threads",
        "1",
    ]
    assert (
        main(
            [
                "bench",
                "ingest",
                "--tokens",
                "512",
                "--methods",
                "base_full,base_sliding",
                *tiny,
                "--json",
                str(out),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    for r in rows.values():
        assert r["tokens"] == 512 and r["tokens_per_s"] > 0 and r["peak_rss_bytes"] > 0 and r["bank_bytes"] == 0
        assert r["seconds"] > 0 and len(r["load_average_at_start"]) == 3
        assert r["malloc_mmap_threshold"] == int(os.environ.get("MALLOC_MMAP_THRESHOLD_", 0))
    assert rows["base_full"]["kv_cache_tokens"] == 512 and rows["base_sliding"]["kv_cache_tokens"] == 255
    assert png.stat().st_size > 1000
    assert "![tokens/s and peak RSS against tokens](bench.png)" in assert_markdown_beside(out)
    assert not any("generate_tokens" in r for r in rows.values())  # only when asked

    # --generate: decoding speed after the read (base_windows: after a window-long prompt)
    assert (
        main(
            [
                "bench",
                "ingest",
                "--tokens",
                "512",
                "--methods",
                "memlong,base_full,base_sliding,base_windows",
                "--generate",
                "5",
                *tiny,
                "--json",
                str(out),
            ]
        )
        == 0
    )
    for r in json.loads(out.read_text())["results"]:
        assert r["generate_tokens"] == 5 and r["generate_seconds"] > 0, r
        assert r["generate_tokens_per_s"] == pytest.approx(5 / r["generate_seconds"], rel=0.05)  # (rounded)
    with pytest.raises(SystemExit, match="--generate"):
        main(["bench", "ingest", "--tokens", "512", "--generate", "-1", *tiny])

    # Out of time at the first size: an error entry, and the method is not run at larger sizes.
    assert (
        main(
            [
                "bench",
                "ingest",
                "--tokens",
                "512,1024",
                "--methods",
                "base_full",
                "--base-timeout",
                "0.01",
                *tiny,
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["results"]
    assert [r["tokens"] for r in rows] == [512, 1024]
    assert rows[0]["error"].startswith("out of time") and "tokens_per_s" not in rows[0]
    assert rows[1]["error"] == "not run: out of time at 512 tokens"
    plot_ingest(rows, tmp_path / "empty.png")  # failed points are left out, not drawn as zeros

    # A fixed glibc mmap threshold reaches the workers and is recorded with their results.
    assert (
        main(
            [
                "bench",
                "ingest",
                "--tokens",
                "512",
                "--methods",
                "memlong",
                "--malloc-mmap-threshold",
                "131072",
                *tiny,
                "--json",
                str(out),
            ]
        )
        == 0
    )
    (row,) = json.loads(out.read_text())["results"]
    assert row["malloc_mmap_threshold"] == 131072 and row["config"]["memory_capacity"] == 512  # --capacity
    assert row["bank_chunks"] == (512 - 256) // 64  # the last window's chunks are still in the local window
    with pytest.raises(SystemExit, match="malloc-mmap-threshold"):
        main(["bench", "ingest", "--tokens", "512", "--malloc-mmap-threshold", "-1", *tiny])


def test_worker_gets_its_environment():
    show = [sys.executable, "-c", "import json, os; print(json.dumps({'v': os.environ['MEMLONG_BENCH_PROBE']}))"]
    assert _run_worker(show, timeout=None, max_rss=1 << 40, env={"MEMLONG_BENCH_PROBE": "7"}) == {"v": "7"}


@pytest.mark.slow
def test_bench_search_real_embeddings(tmp_path):
    out, cache = tmp_path / "search.json", tmp_path / "emb.npy"
    argv = [
        "bench",
        "search",
        "--vectors",
        "minilm",
        "--sizes",
        "40,80",
        "--queries",
        "10",
        "--chunk-size",
        "64",
        "--indexes",
        "faiss_flat,faiss_hnsw",
        "--threads",
        "1",
        "--embeddings-cache",
        str(cache),
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["results"]
    assert {r["vectors"] for r in rows} == {"minilm"} and rows[0]["dim"] == 384
    assert all(r["recall_at_k"] == 1.0 for r in rows if r["index"] == "faiss_flat")
    assert cache.exists()
    assert main(argv) == 0  # from the cache
