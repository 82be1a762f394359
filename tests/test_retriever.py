import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import memlong
from memlong.retriever import default_retriever_path


@pytest.fixture(scope="module")
def minilm():
    tok = AutoTokenizer.from_pretrained(default_retriever_path())
    return tok, memlong.SentenceTransformerRetriever(tok)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_default_retriever_is_offline_minilm(minilm):
    tok, r = minilm
    assert r.dim == 384
    e = r.embed(
        [
            ids_of(tok, "the cat sat on the mat"),
            ids_of(tok, "a feline rested on a rug"),
            ids_of(tok, "stock markets fell sharply today"),
        ]
    )
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3  # paraphrase closer than an unrelated sentence


def test_hashing_retriever_is_deterministic_and_lexical():
    r = memlong.HashingRetriever(dim=64)
    a, b, c = [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7], [50, 60, 70, 80, 90, 99]
    e = r.embed([a, b, c])
    assert torch.equal(e, r.embed([a, b, c]))
    assert e[0] @ e[1] > e[0] @ e[2]
    with pytest.raises(ValueError):
        memlong.HashingRetriever(dim=0)


def test_text_retriever_needs_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        memlong.SentenceTransformerRetriever(None)


@torch.no_grad()
def test_semantic_needle_retrieved_from_far_back_through_the_model(minilm):
    """Real text, real retriever: a fact stated early is fetched when a later chunk asks about it."""
    import sysconfig
    from pathlib import Path

    tok, r = minilm
    tau = 16
    filler = ids_of(tok, Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text()[:20000])
    needle = (ids_of(tok, "the launch code of the orbital station is kept under the blue ceramic vase") + filler)[:tau]
    question = (ids_of(tok, "where is the launch code of the orbital station kept? under the vase") + filler)[:tau]
    chunks = [filler[i * tau : (i + 1) * tau] for i in range(60)]
    chunks[2] = needle
    chunks[57] = question  # the causal query of chunk 58
    ids = torch.tensor([sum(chunks, [])])
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    m = memlong.wrap(
        LlamaForCausalLM(cfg).eval(),
        memlong.MemLongConfig(
            memory_layer=1,
            retrieval_layers=(2,),
            chunk_size=tau,
            top_k=1,
            memory_capacity=64 * tau,
            local_window=4 * tau,
        ),
        retriever=r,
    )
    cache = m.ingest(ids)
    counts = {e["chunk_id"]: e["count"] for e in cache.bank(0).entries()}
    assert counts[2] >= 1, counts


@torch.no_grad()
def test_ingest_text_records_character_spans(minilm):
    tok, r = minilm
    text = "The quick brown fox jumps over the lazy dog. " * 40
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    m = memlong.wrap(
        LlamaForCausalLM(cfg).eval(),
        memlong.MemLongConfig(
            memory_layer=1, retrieval_layers=(2,), chunk_size=16, top_k=1, memory_capacity=1024, local_window=64
        ),
        retriever=memlong.HashingRetriever(),
        tokenizer=tok,
    )
    bank = m.ingest_text(text).bank(0)
    assert len(bank) > 10
    for e in bank.entries():
        lo, hi = e["text_span"]
        ids = bank.token_ids[e["slot"]].tolist()
        assert tok.decode(ids) == tok.decode(tok(text[lo:hi], add_special_tokens=False)["input_ids"])


# --- EmbeddingRetriever: the LM's own pooled input embeddings ------------------------------------


def _emb_retriever(seed=0, vocab=101, dim=32, **kw):
    g = torch.Generator().manual_seed(seed)
    return memlong.EmbeddingRetriever(torch.randn(vocab, dim, generator=g), **kw)


def test_embedding_retriever_is_deterministic_unit_norm_and_batch_equals_single():
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randint(0, 101, (n,), generator=g).tolist() for n in (8, 8, 5, 8)]
    for kw in (
        {},
        {"whiten": False},
        {"center": False, "whiten": False},
        {"token_weights": torch.rand(101, generator=g)},
    ):
        r = _emb_retriever(**kw)
        e = r.embed(chunks)
        assert e.shape == (4, 32) and e.dtype == torch.float32
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))
        assert torch.equal(e, _emb_retriever(**kw).embed(chunks))  # a fresh instance agrees exactly
        single = torch.cat([r.embed([c]) for c in chunks])
        torch.testing.assert_close(e, single, rtol=0, atol=1e-6)
    assert r.embed([]).shape == (0, 32)
    with pytest.raises(ValueError, match="token ids"):
        r.embed([[0, 101]])


def test_embedding_retriever_finds_a_planted_near_duplicate():
    r = _emb_retriever()
    g = torch.Generator().manual_seed(2)
    bank = [torch.randint(0, 101, (16,), generator=g).tolist() for _ in range(40)]
    query = list(bank[17])
    query[3], query[11] = (query[3] + 1) % 101, (query[11] + 5) % 101  # two tokens changed
    sims = r.embed(bank) @ r.embed([query])[0]
    assert int(sims.argmax()) == 17


def test_embedding_retriever_describe_tracks_the_weights_and_options():
    model, _ = tiny_model_pair()
    r = memlong.EmbeddingRetriever.from_model(model)
    d = r.describe()
    assert d["class"] == "EmbeddingRetriever" and d["dim"] == 64 and d["weights"]
    assert memlong.EmbeddingRetriever.from_model(model).describe() == d
    assert memlong.EmbeddingRetriever.from_model(model, whiten=False).describe() != d
    with torch.no_grad():
        model.get_input_embeddings().weight[5, 0] += 1e-3
    assert memlong.EmbeddingRetriever.from_model(model).describe()["weights"] != d["weights"]
    # a detached copy: changing the model afterwards does not change the retriever
    assert r.describe() == d and not r.table.requires_grad


def test_retriever_from_name_embedding_needs_the_model():
    from memlong.retriever import retriever_from_name

    with pytest.raises(ValueError, match="model="):
        retriever_from_name("embedding", None)
    model, _ = tiny_model_pair()
    r = retriever_from_name("embedding", None, model=model)
    assert isinstance(r, memlong.EmbeddingRetriever) and r.dim == model.config.hidden_size


def test_embedding_retriever_uses_the_token_counts_shipped_in_the_model_folder(tmp_path):
    from memlong.retriever import (
        EmbeddingRetriever,
        count_tokens,
        load_token_counts,
        retriever_from_name,
        save_token_counts,
    )

    model, _ = tiny_model_pair()
    vocab = model.config.vocab_size
    model.save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path)
    plain = retriever_from_name("embedding", None, model=loaded)
    assert plain.describe()["token_weights"] is None and load_token_counts(tmp_path) is None

    counts = count_tokens([[1, 2, 2, 3], [3, 3, 5]], vocab)
    assert counts[:6].tolist() == [0, 1, 2, 3, 0, 1] and int(counts.sum()) == 7
    save_token_counts(tmp_path, counts, {"split": "train"})
    assert torch.equal(load_token_counts(tmp_path), counts)
    sif = retriever_from_name("embedding", None, model=LlamaForCausalLM.from_pretrained(tmp_path))
    want = EmbeddingRetriever.sif_from_counts(counts)
    assert torch.equal(sif.token_weights, want) and sif.describe()["token_weights"] is not None
    assert want[3] < want[1] < want[0]  # frequent tokens weigh less
    assert torch.allclose(EmbeddingRetriever.sif_weights([[1, 2, 2, 3], [3, 3, 5]], vocab), want)
    chunk = [[1, 3, 3, 4]]
    assert not torch.allclose(sif.embed(chunk), plain.embed(chunk))

    (tmp_path / "token_counts.json").write_text('{"counts": "oops"}')
    with pytest.raises(ValueError, match="token-count file"):
        load_token_counts(tmp_path)
    with pytest.raises(ValueError, match="token ids"):
        count_tokens([[vocab]], vocab)


def tiny_model_pair():
    from conftest import tiny_model

    return tiny_model("llama")


@torch.no_grad()
def test_embedding_retriever_through_wrap_end_to_end():
    """Wrapped tiny model: a repeated passage retrieves its first occurrence; bank saves with describe()."""
    from conftest import set_gates, small_memlong_config

    model, _ = tiny_model_pair()
    r = memlong.EmbeddingRetriever.from_model(model)
    m = memlong.wrap(model, small_memlong_config(top_k=1), retriever="embedding")  # a name resolves on this model
    assert (
        isinstance(m.memlong_retriever, memlong.EmbeddingRetriever) and m.memlong_retriever.describe() == r.describe()
    )
    set_gates(m)
    g = torch.Generator().manual_seed(3)
    tau = m.memlong_config.chunk_size
    chunks = [torch.randint(1, 101, (tau,), generator=g).tolist() for _ in range(12)]
    chunks[10] = list(chunks[1])  # chunk 10 repeats chunk 1: it is the query of chunk 11
    ids = torch.tensor([sum(chunks, [])])
    memory = m.ingest(ids)
    counts = {e["chunk_id"]: e["count"] for e in memory.bank(0).entries()}
    assert counts.get(1, 0) >= 1, counts
    assert memory.retriever_info == r.describe()
    out = m(ids[:, :40]).logits
    assert torch.isfinite(out).all()


def test_bench_retriever_runs_end_to_end(tmp_path, monkeypatch, bpe_tokenizer_dir):
    import json
    import sysconfig
    from pathlib import Path

    from transformers import AutoTokenizer

    from memlong.cli import main
    from memlong.pretrained import ENV_VAR
    from memlong.retriever import count_tokens, save_token_counts

    from conftest import assert_markdown_beside, save_tiny_lm

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    # each text repeats every ~6 chunks, so the next chunk often copies an earlier one
    docs = [
        {"id": f"stdlib/{n}", "source": "stdlib", "text": (stdlib / n).read_text()[:400] * 8}
        for n in ("argparse.py", "textwrap.py")
    ]
    # The default base replaced by a tiny model folder that ships token counts (SIF weights).
    base = save_tiny_lm(tmp_path / "base", bpe_tokenizer_dir)
    tok = AutoTokenizer.from_pretrained(str(base))
    seqs = [
        tok((stdlib / n).read_text()[:4000], add_special_tokens=False)["input_ids"] for n in ("shutil.py", "typing.py")
    ]
    save_token_counts(base, count_tokens(seqs, len(tok)), {"split": "test"})
    monkeypatch.setenv(ENV_VAR, str(base))
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "retriever",
            "--corpus",
            str(corpus),
            "--sample-corpus",
            str(corpus),
            "--chunks",
            "24",
            "--chunk-size",
            "32",
            "--max-doc-chunks",
            "12",
            "--sample-tokens",
            "500",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    assert "| hashing |" in assert_markdown_beside(out)
    report = json.loads(out.read_text())
    rows = {r["retriever"]: r for r in report["results"]}
    assert set(rows) == {
        "minilm",
        "hashing",
        "embedding_mean",
        "embedding_centered",
        "embedding_whitened",
        "embedding",
        "embedding_sif",
        "embedding_sif_self",
        "random",
    }
    # the base folder has token counts: `embedding` is SIF-weighted, `embedding_whitened` not
    assert rows["embedding"]["describe"]["token_weights"] is not None
    assert rows["embedding_whitened"]["describe"]["token_weights"] is None
    assert rows["minilm"]["recall_at_k"] == 1.0
    for name, r in rows.items():
        assert 0.0 <= r["recall_at_k"] <= 1.0 and 0.0 <= r["next_hit_at_k"] <= 1.0, name
        if name != "random":
            assert r["chunks_per_s"] > 0 and r["describe"]["dim"] == r["dim"]
    assert report["protocol"]["queries_with_target"] > 0 and report["command"].startswith("memlong bench retriever")
