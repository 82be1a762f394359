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
    e = r.embed([ids_of(tok, "the cat sat on the mat"), ids_of(tok, "a feline rested on a rug"),
                 ids_of(tok, "stock markets fell sharply today")])
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
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    m = memlong.wrap(LlamaForCausalLM(cfg).eval(),
                     memlong.MemLongConfig(memory_layer=1, retrieval_layers=(2,), chunk_size=tau, top_k=1,
                                           memory_capacity=64 * tau, local_window=4 * tau),
                     retriever=r)
    cache = m.ingest(ids)
    counts = {e["chunk_id"]: e["count"] for e in cache.bank(0).entries()}
    assert counts[2] >= 1, counts


@torch.no_grad()
def test_ingest_text_records_character_spans(minilm):
    tok, r = minilm
    text = "The quick brown fox jumps over the lazy dog. " * 40
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    m = memlong.wrap(LlamaForCausalLM(cfg).eval(),
                     memlong.MemLongConfig(memory_layer=1, retrieval_layers=(2,), chunk_size=16, top_k=1,
                                           memory_capacity=1024, local_window=64),
                     retriever=memlong.HashingRetriever(), tokenizer=tok)
    bank = m.ingest_text(text).bank(0)
    assert len(bank) > 10
    for e in bank.entries():
        lo, hi = e["text_span"]
        ids = bank.token_ids[e["slot"]].tolist()
        assert tok.decode(ids) == tok.decode(tok(text[lo:hi], add_special_tokens=False)["input_ids"])
