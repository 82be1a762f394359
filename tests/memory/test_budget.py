"""What a memory keeps of an input, known before reading (`plan_reading`) and reported after
(`MemoryBank.evicted_report`): the plan matches what reading a tiny model really leaves, and
`ingest_text` warns before reading an input that will be evicted."""

import warnings

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import memlong
from memlong.memory import EvictionWarning, plan_reading

from conftest import VOCAB, gated_llama


@pytest.mark.parametrize("eviction", ["counter", "fifo"])
@torch.no_grad()
def test_the_plan_is_what_reading_leaves(eviction):
    # chunk 8, window 32 (3 past chunks + its own), capacity 48 tokens = 6 chunks
    m, _ = gated_llama(eviction=eviction)
    for first, more in ((20, 0), (40, 0), (64, 0), (90, 0), (200, 0), (57, 100), (200, 9)):
        memory = m.new_memory()
        if first:
            m.ingest(torch.randint(0, VOCAB, (1, first), generator=torch.Generator().manual_seed(first)), memory)
        before = memory.bank(0).evicted_report()["chunks"]
        n = more or first
        if more:
            plan = plan_reading(memory, more)
            m.ingest(torch.randint(0, VOCAB, (1, more), generator=torch.Generator().manual_seed(more)), memory)
        else:
            memory = m.new_memory()
            plan = plan_reading(memory, n)
            m.ingest(torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(n)), memory)
            before = 0
        bank = memory.bank(0)
        assert len(bank) == plan.chunks_after, (first, more)
        assert bank.evicted_report()["chunks"] - before == plan.evicted_chunks, (first, more)
        assert plan.evicts == (plan.evicted_chunks > 0)
        if not more:  # a new memory: what is not evicted is kept
            assert plan.kept_tokens == n - plan.evicted_tokens
    full = plan_reading(m.new_memory(), 200)
    assert full.evicts and full.capacity_needed == 21 * 8  # chunks 0..20 leave the window of 200 tokens
    assert full.bytes_needed == 21 * m.new_memory().bank(0).slot_bytes()


@torch.no_grad()
def test_a_capacity_of_capacity_needed_keeps_everything():
    m, _ = gated_llama(memory_capacity=48)
    plan = plan_reading(m.new_memory(), 200)
    m2, _ = gated_llama(memory_capacity=plan.capacity_needed)
    memory = m2.ingest(torch.randint(0, VOCAB, (1, 200), generator=torch.Generator().manual_seed(1)))
    assert not plan_reading(m2.new_memory(), 200).evicts
    assert memory.bank(0).evicted_report()["chunks"] == 0 and len(memory.bank(0)) == plan.capacity_needed // 8


def test_without_retrieval_every_chunk_leaving_the_window_is_dropped():
    m, _ = gated_llama()
    plan = plan_reading(m.new_memory(retrieval=False), 200)
    assert plan.chunks_after == 0 and plan.evicted_chunks == plan.banked_chunks == 21


@torch.no_grad()
def test_ingest_text_warns_before_evicting_and_reports_after(bpe_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir))
    torch.manual_seed(0)
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=512,
        )
    )
    cfg = memlong.MemLongConfig(
        memory_layer=2, retrieval_layers=(3, 4), chunk_size=8, top_k=2, memory_capacity=48, local_window=32
    )
    m = memlong.wrap(lm, cfg, retriever=memlong.HashingRetriever(dim=32), tokenizer=tok)
    text = "The quick brown fox jumps over the lazy dog. " * 30
    with pytest.warns(
        EvictionWarning,
        match=r"tokens to read, more than this memory holds .* evicted .*"
        r"memory_capacity = \d+",
    ):
        memory = m.ingest_text(text)
    report = memory.bank(0).evicted_report()
    assert report["chunks"] > 0 and sum(b - a for a, b in report["spans"]) == report["tokens"] == 8 * report["chunks"]
    assert all(a < b < c for (a, b), (c, _) in zip(report["spans"], report["spans"][1:]))  # sorted, disjoint
    assert report["text_spans"] and all(0 <= a < b <= len(text) for a, b in report["text_spans"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvictionWarning)
        m.ingest_text("A short text.")  # fits: no warning
        m.ingest_text(text, warn_eviction=False)
