"""The properties that define MemLong, on tiny models of every supported family."""

import dataclasses
import json

import pytest
import torch

import memlong

from conftest import (
    FAMILIES,
    VOCAB,
    assert_padded_batch_equals_each_sequence_alone,
    collector_off,
    gated_llama,
    set_gates,
    small_memlong_config,
    tiny_model,
)

ATOL = 1e-5


def rand_ids(B, S, seed=0):
    return torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(seed))


def windowed_reference(ref, ids, tau, window):
    """The stock model with MemLong's block-sliding local window as a 4D mask: token t sees
    the previous ``window // tau - 1`` whole chunks and its own chunk up to itself. This is what
    MemLong must equal when memory contributes nothing (RoPE is relative, so MemLong's
    window-based positions give the same scores as the stock absolute ones)."""
    w = window // tau - 1
    S = ids.shape[1]
    pos = torch.arange(S)
    allowed = (pos[None, :] <= pos[:, None]) & (pos[None, :] // tau >= pos[:, None] // tau - w)
    mask = allowed[None, None].expand(ids.shape[0], 1, S, S)
    return ref(ids, attention_mask=mask).logits


@pytest.mark.parametrize("family", list(FAMILIES))
@torch.no_grad()
def test_parity_with_empty_memory(family):
    model, ref = tiny_model(family)
    m = memlong.wrap(model, small_memlong_config(), retriever=memlong.HashingRetriever(dim=32))
    set_gates(m)  # memory is empty, so even open gates must not change anything
    ids = rand_ids(2, 32)
    torch.testing.assert_close(m(ids).logits, ref(ids).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "family, fusion", [(f, "separate") for f in FAMILIES] + [("llama", "joint"), ("qwen3", "joint")]
)
@torch.no_grad()
def test_gate_at_initial_value_equals_base_on_its_window(family, fusion):
    model, ref = tiny_model(family)
    cfg = small_memlong_config(fusion=fusion)
    m = memlong.wrap(model, cfg, retriever=memlong.HashingRetriever(dim=32))
    ids = rand_ids(2, 130, seed=1)  # 17 chunks: memory fills and evicts, gates stay at 0
    out = m(ids)
    assert out.memory.bank(0).evictions > 0
    expected = windowed_reference(ref, ids, cfg.chunk_size, cfg.local_window)
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)


def test_memory_changes_output_when_gates_open(memlong_model):
    m, ref = memlong_model
    cfg = m.memlong_config
    ids = rand_ids(1, 100, seed=2)
    with torch.no_grad():
        got = m(ids).logits
        expected = windowed_reference(ref, ids, cfg.chunk_size, cfg.local_window)
    w = cfg.local_window  # before the first departure + retrieval nothing differs
    torch.testing.assert_close(got[:, :w], expected[:, :w], atol=ATOL, rtol=0)
    assert (got[:, w + cfg.chunk_size :] - expected[:, w + cfg.chunk_size :]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "family, fusion, positions",
    [
        ("llama", "separate", "paper"),
        ("qwen3", "separate", "paper"),
        ("llama", "joint", "paper"),
        ("llama", "separate", "none"),
        ("gemma", "separate", "paper"),
        ("phi3", "separate", "paper"),
        ("granite", "separate", "paper"),
        ("olmo2", "separate", "paper"),
    ],
)
@torch.no_grad()
def test_no_dependence_on_future_tokens(family, fusion, positions):
    model, _ = tiny_model(family)
    m = memlong.wrap(
        model,
        small_memlong_config(fusion=fusion, memory_positions=positions),
        retriever=memlong.HashingRetriever(dim=32),
    )
    set_gates(m)
    ids = rand_ids(1, 140, seed=3)
    base = m(ids).logits
    assert m.memlong_config.capacity_chunks < 140 // 8 - 4  # the run evicts
    for t in [7, 40, 64, 65, 120]:  # chunk ends/starts, before and after the first departures
        changed = ids.clone()
        changed[:, t + 1 :] = rand_ids(1, 140 - t - 1, seed=100 + t)
        other = m(changed).logits
        torch.testing.assert_close(other[:, : t + 1], base[:, : t + 1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_memory_positions_none_changes_only_memory_attention():
    ids = rand_ids(1, 140, seed=3)
    out = {}
    for positions in ("paper", "none"):
        m, _ = gated_llama(memory_positions=positions)
        out[positions] = m(ids).logits
    w = m.memlong_config.local_window  # nothing is in memory before the first departure
    torch.testing.assert_close(out["none"][:, :w], out["paper"][:, :w], atol=ATOL, rtol=0)
    assert (out["none"][:, w + 8 :] - out["paper"][:, w + 8 :]).abs().max() > 1e-4


@torch.no_grad()
def test_paper_chunk_query_mode_leaks_future_tokens():
    """The documented reason the paper's same-chunk query is opt-in: it is not causal."""
    m, _ = gated_llama(retrieval_query="chunk")
    ids = rand_ids(1, 140, seed=3)
    base = m(ids).logits
    leaks = 0
    for t in range(64, 136, 8):  # the first token of a chunk; change the rest of that chunk
        changed = ids.clone()
        changed[:, t + 1 : t + 8] = rand_ids(1, 7, seed=200 + t)
        leaks += int((m(changed).logits[:, t] - base[:, t]).abs().max() > 1e-4)
    assert leaks > 0


@torch.no_grad()
def test_call_boundaries_do_not_matter(memlong_model):
    m, _ = memlong_model
    ids = rand_ids(2, 150, seed=4)
    whole = m(ids).logits
    cache, pieces, s = None, [], 0
    for n in [1, 3, 8, 13, 40, 2, 33, 50]:
        out = m(ids[:, s : s + n], cache=cache)
        cache = out.memory
        pieces.append(out.logits)
        s += n
    assert s == 150
    torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=ATOL, rtol=0)
    assert cache.get_seq_length() == 150


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_batch_equals_each_sequence_alone(memlong_model, side):
    out = assert_padded_batch_equals_each_sequence_alone(memlong_model[0], side=side, atol=ATOL)
    assert [len(out.memory.bank(b)) for b in range(3)][2] == 0


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("keep", [1, 5, 60])
@torch.no_grad()
def test_logits_to_keep_are_the_last_columns_of_the_full_logits(memlong_model, side, keep):
    m = memlong_model[0]
    lengths = (130, 77, 9)
    S = max(lengths)
    ids = torch.zeros(len(lengths), S, dtype=torch.long)
    mask = torch.zeros(len(lengths), S, dtype=torch.long)
    for b, n in enumerate(lengths):
        cols = slice(S - n, S) if side == "left" else slice(0, n)
        ids[b, cols], mask[b, cols] = rand_ids(1, n, seed=20 + b)[0], 1
    full = m(ids, attention_mask=mask).logits
    kept = m(ids, attention_mask=mask, logits_to_keep=keep).logits
    assert kept.shape == (len(lengths), keep, full.shape[-1])
    torch.testing.assert_close(kept, full[:, -keep:], atol=ATOL, rtol=0)  # padding columns: 0 in both


@torch.no_grad()
def test_generate_equals_step_by_step_forward(memlong_model):
    m, _ = memlong_model
    prompt = rand_ids(1, 90, seed=5)
    gen = m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 130)
    # by hand: one forward over the prompt, then one token per call with the same memory
    out = m(prompt)
    cache, tokens = out.memory, []
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(40):
        tokens.append(nxt)
        out = m(nxt, cache=cache)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    assert torch.equal(gen[:, 90:], torch.cat(tokens, 1))
    assert len(cache.bank(0)) > 0  # generated tokens went to memory too


@torch.no_grad()
def test_memory_is_accepted_as_cache_or_past_key_values_and_returned(memlong_model):
    from memlong.modeling import CACHE_ARG

    m, _ = memlong_model
    doc, more = rand_ids(1, 150, seed=3), rand_ids(1, 20, seed=4)
    outs = [m(more, **{name: m.ingest(doc)}) for name in ("cache", "past_key_values")]
    torch.testing.assert_close(outs[0].logits, outs[1].logits, atol=0, rtol=0)
    out = outs[0]
    assert isinstance(out.memory, memlong.MemLongCache) and out[CACHE_ARG] is out.memory
    assert out.memory.get_seq_length() == 170
    memory = out.memory
    with pytest.raises(ValueError, match="not both"):
        m(more, cache=memory, past_key_values=m.new_memory())
    from transformers import DynamicCache

    with pytest.raises(TypeError, match="not a DynamicCache"):
        m(more, cache=DynamicCache(config=m.config))
    with pytest.raises(TypeError, match="not a DynamicCache"):
        m.generate(more, cache=DynamicCache(config=m.config), max_new_tokens=2)


def test_memory_describes_itself_to_transformers(memlong_model):
    m, _ = memlong_model
    memory = m.new_memory(2)
    n = m.config.num_hidden_layers
    assert len(memory) == n and bool(memory)  # an empty memory is not falsy
    assert memory.is_linear == [False] * n and memory.is_sliding == [False] * n
    assert memory.is_croppable is False and memory.is_compileable is False
    with pytest.raises(NotImplementedError, match="not a per-layer KV cache"):
        memory.update(torch.zeros(1), torch.zeros(1), 0)
    with pytest.raises(NotImplementedError, match="per sequence"):
        memory.crop(3)


@torch.no_grad()
@pytest.mark.parametrize("name", ["memory", "cache", "past_key_values"])
def test_generate_takes_the_memory_under_each_name(memlong_model, name):
    m, _ = memlong_model
    doc, question = rand_ids(1, 150, seed=6), rand_ids(1, 5, seed=7)
    memory = m.ingest(doc)
    out = m.generate(question, **{name: memory}, max_new_tokens=6, do_sample=False, pad_token_id=0)
    # the same as reading doc + question + the tokens generated so far, step by step
    again = m.ingest(doc)
    step = m(question, cache=again).logits[:, -1].argmax(-1, keepdim=True)
    tokens = [step]
    for _ in range(5):
        step = m(step, cache=again).logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(step)
    assert torch.equal(out[:, 5:], torch.cat(tokens, 1))
    assert memory.columns == again.columns == 150 + 5 + 5  # the prompt and the tokens fed back


@torch.no_grad()
def test_ingest_reads_into_the_memory_it_is_given(memlong_model):
    m, _ = memlong_model
    given = m.new_memory(1, retrieval=False)  # empty, hence len() == 0: must not be replaced
    assert m.ingest(rand_ids(1, 100, seed=5), given) is given
    assert given.get_seq_length() == 100 and len(given.bank(0)) == 0


@torch.no_grad()
def test_generate_continues_from_ingested_memory_and_samples(memlong_model):
    m, _ = memlong_model
    doc = rand_ids(1, 200, seed=6)
    memory = m.ingest(doc)
    assert memory.get_seq_length() == 200
    question = rand_ids(1, 5, seed=7)
    torch.manual_seed(0)
    out = m.generate(
        question,
        memory=memory,
        attention_mask=torch.ones_like(question),
        max_new_tokens=12,
        do_sample=True,
        top_k=20,
        pad_token_id=0,
    )
    assert out.shape == (1, 17) and torch.equal(out[:, :5], question)
    # same as reading doc + question in one stream
    again = m.ingest(doc)
    logits_mem = m(question, cache=again).logits
    full = m(torch.cat([doc, question], 1)).logits[:, 200:]
    torch.testing.assert_close(logits_mem, full, atol=ATOL, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("offsets", [(0,), (0, 1)])
def test_planted_chunk_is_retrieved_from_far_back(offsets):
    model, _ = tiny_model("llama")
    cfg = small_memlong_config(memory_capacity=400, retrieval_offsets=offsets)
    m = memlong.wrap(model, cfg, retriever=memlong.HashingRetriever(dim=128))
    ids = rand_ids(1, 320, seed=8)
    needle = torch.arange(90, 98)  # a distinctive chunk
    ids[0, 16:24] = needle  # chunk 2
    ids[0, 296:304] = needle  # chunk 37: the causal query of chunk 38
    cache = m(ids).memory
    counts = {e["chunk_id"]: e["count"] for e in cache.bank(0).entries()}
    assert counts[2] >= 1
    if offsets == (0, 1):  # the hit's continuation came with it
        assert counts[3] >= 1
    slots, _ = cache.bank(0).search(m.memlong_retriever.embed([needle.tolist()])[0], 1, count=False)
    assert int(cache.bank(0).chunk_ids[slots[0]]) == 2


@torch.no_grad()
def test_requery_retrieves_with_the_question():
    model, _ = tiny_model("llama")
    cfg = small_memlong_config(memory_capacity=400, top_k=1)
    m = memlong.wrap(model, cfg, retriever=memlong.HashingRetriever(dim=128))
    set_gates(m)
    doc = rand_ids(1, 296, seed=8)
    needle = torch.arange(90, 98)
    doc[0, 16:24] = needle  # chunk 2
    question = torch.cat([rand_ids(1, 3, seed=9), needle[None, :4]], 1)  # tokens 296..302: chunk 37
    memory = m.ingest(torch.cat([doc, question[:, :-1]], 1))
    before = memory.chunk_mem[0][37]
    assert memory.retrieve_again(m.memlong_retriever) == [0]
    k, _ = memory.chunk_mem[0][37]
    assert torch.equal(k, memory.bank(0).gather(torch.tensor([memory.bank(0).entries()[2]["slot"]]))[0])
    assert before is None or not torch.equal(before[0], k)
    # generate(requery=True): the prompt's last chunk_size tokens are the question; it is read
    # (and answered) retrieving with the question's own embedding (focus_on), the rest as usual
    prompt = torch.cat([doc, question], 1)
    plain = m.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=3,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    asked = m.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=3,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
        requery=True,
    )
    assert torch.equal(asked.sequences[:, : prompt.shape[1]], prompt) and asked.sequences.shape == (1, 306)
    by_hand = m.ingest(prompt[:, :-8])
    by_hand.focus_on(m.memlong_retriever, [prompt[0, -8:].tolist()])
    first = m(prompt[:, -8:], cache=by_hand).logits[:, -1]
    torch.testing.assert_close(asked.scores[0], first, atol=ATOL, rtol=0)
    assert not torch.allclose(plain.scores[0], asked.scores[0])
    counts = {e["chunk_id"]: e["count"] for e in by_hand.bank(0).entries()}
    assert counts[2] >= 1  # the needle's chunk, found by the question
    # with a memory, the whole prompt is the question; requery=N takes its last N tokens
    mem_a, mem_b = m.ingest(doc), m.ingest(doc)
    a = m.generate(question, memory=mem_a, max_new_tokens=2, do_sample=False, pad_token_id=0, requery=True)
    b = m.generate(question, memory=mem_b, max_new_tokens=2, do_sample=False, pad_token_id=0, requery=question.shape[1])
    assert torch.equal(a, b) and mem_a.focus == [None]  # focus ends with the answer
    with pytest.raises(ValueError, match="1..7"):
        m.generate(question, memory=mem_a, max_new_tokens=2, requery=9)
    # at a chunk boundary there is nothing to redo: the next chunk retrieves with those tokens
    at_boundary = m.ingest(rand_ids(1, 304, seed=10))
    assert at_boundary.retrieve_again(m.memlong_retriever) == []
    with pytest.warns(FutureWarning, match="retrieve_again"):  # the old name of retrieve_again
        assert at_boundary.requery(m.memlong_retriever) == []


def test_unsupported_model_names_supported_families():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(memlong.UnsupportedModelError, match="Llama, Mistral, Mixtral, Qwen2, Qwen3"):
        memlong.wrap(model, small_memlong_config(retrieval_layers=(2,), memory_layer=1))


def test_partial_rotary_models_are_refused():
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        pad_token_id=0,
        partial_rotary_factor=0.5,
    )
    with pytest.raises(memlong.UnsupportedModelError, match="partial_rotary_factor=0.5"):
        memlong.wrap(Phi3ForCausalLM(cfg), small_memlong_config())


def test_wrap_rejects_config_that_does_not_fit_the_model():
    model, _ = tiny_model("llama")
    with pytest.raises(memlong.MemLongConfigError, match="beyond the model"):
        memlong.wrap(model, small_memlong_config(retrieval_layers=(3, 7)))


@torch.no_grad()
def test_save_pretrained_round_trip(memlong_model, tmp_path):
    m, _ = memlong_model
    m.save_pretrained(tmp_path)
    back = memlong.from_pretrained(tmp_path, retriever=memlong.HashingRetriever(dim=32))
    assert back.memlong_config == m.memlong_config
    ids = rand_ids(1, 120, seed=9)
    torch.testing.assert_close(back(ids).logits, m(ids).logits, atol=0, rtol=0)


@torch.no_grad()
def test_bank_save_load_through_cache(memlong_model, tmp_path):
    m, _ = memlong_model
    cache = m(rand_ids(1, 200, seed=11)).memory
    cache.save_bank(tmp_path / "bank")
    fresh = m.new_memory()
    fresh.load_bank(tmp_path / "bank")

    def content(bank):
        return [(e["chunk_id"], e["span"], e["count"]) for e in bank.entries()]

    assert content(fresh.bank(0)) == content(cache.bank(0))
    # a corrupted file fails clearly and leaves the bank in memory untouched
    tfile = next((tmp_path / "bank").glob("bank-*.safetensors"))
    tfile.write_bytes(tfile.read_bytes()[:100])
    before = fresh.bank(0)
    with pytest.raises(memlong.BankFileError):
        fresh.load_bank(tmp_path / "bank")
    assert fresh.bank(0) is before and len(before) > 0


@torch.no_grad()
def test_saved_memory_refuses_another_retriever(memlong_model, tmp_path):
    m, _ = memlong_model
    cache = m(rand_ids(1, 200, seed=11)).memory
    cache.save_bank(tmp_path / "bank")
    cache.save(tmp_path / "memory")
    model, _ = tiny_model("llama")
    other = memlong.wrap(model, small_memlong_config(), retriever=memlong.HashingRetriever(dim=32, seed=5))
    with pytest.raises(memlong.BankFileError, match="indexed by the retriever"):
        other.new_memory().load_bank(tmp_path / "bank")
    with pytest.raises(memlong.BankFileError, match="indexed by the retriever"):
        other.load_memory(tmp_path / "memory")
    assert len(m.load_memory(tmp_path / "memory").bank(0)) == len(cache.bank(0))  # its own retriever: fine


@torch.no_grad()
def test_reset_rows_forgets_only_those_rows(memlong_model):
    m, _ = memlong_model
    ids = rand_ids(2, 120, seed=12)
    cache = m(ids).memory
    cache.reset(rows=[1])
    assert len(cache.bank(1)) == 0 and len(cache.bank(0)) > 0 and cache.seen == [120, 0]


def test_training_gradients_reach_gates_and_survive_checkpointing(memlong_model):
    m, _ = memlong_model
    m.train()
    ids = rand_ids(2, 100, seed=13)
    out = m(ids, labels=ids)
    out.loss.backward()
    gate = m.model.layers[2].self_attn.memlong_gate
    grad = gate.grad.clone()
    assert grad.abs().sum() > 0
    m.zero_grad()
    m.activation_checkpointing_enable()
    out2 = m(ids, labels=ids)
    out2.loss.backward()  # recomputation must neither fail nor write memory twice
    torch.testing.assert_close(out2.loss, out.loss)
    torch.testing.assert_close(gate.grad, grad)
    assert out2.memory.seen == [100, 100]


@torch.no_grad()
def test_bfloat16_runs_and_stores_bf16(memlong_model):
    m, _ = memlong_model
    m = m.to(torch.bfloat16)
    out = m(rand_ids(1, 120, seed=14))
    assert out.logits.dtype == torch.bfloat16 and bool(torch.isfinite(out.logits).all())
    assert out.memory.bank(0).keys.dtype == torch.bfloat16


def test_failed_forward_leaves_memory_marked_not_silently_wrong(memlong_model):
    m, _ = memlong_model
    memory = m.ingest(rand_ids(1, 60, seed=15))

    class Boom(RuntimeError):
        pass

    def explode(*a, **k):
        raise Boom("simulated out-of-memory")

    handle = m.model.layers[3].register_forward_pre_hook(explode)
    with pytest.raises(Boom):
        m(rand_ids(1, 20, seed=16), cache=memory)
    handle.remove()
    with pytest.raises(RuntimeError, match="left inconsistent"):
        m(rand_ids(1, 20, seed=16), cache=memory)
    memory.reset()
    assert m(rand_ids(1, 20, seed=16), cache=memory).logits.shape == (1, 20, VOCAB)


@torch.no_grad()
def test_faiss_backend_and_fifo_run_through_the_model():
    ids = rand_ids(1, 160, seed=17)
    outs = {}
    for backend in ("torch", "faiss"):
        outs[backend] = gated_llama(search_backend=backend)[0](ids)
    # "auto" past its switch point: HNSW over a few chunks finds the exact top-k
    outs["auto"] = gated_llama(search_backend="auto", approximate_above=2)[0](ids)
    torch.testing.assert_close(outs["faiss"].logits, outs["torch"].logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(outs["auto"].logits, outs["torch"].logits, atol=ATOL, rtol=0)
    model, _ = tiny_model("llama")
    m = memlong.wrap(model, small_memlong_config(eviction="fifo"), retriever=memlong.HashingRetriever(dim=32))
    bank = m(ids).memory.bank(0)
    # 20 chunks, 4 in the window at the end -> chunks 0..15 departed; FIFO keeps the newest 6
    assert [e["chunk_id"] for e in bank.entries()] == list(range(10, 16))


@torch.no_grad()
def test_bank_tiers_and_compression_through_the_model(tmp_path):
    ids = rand_ids(1, 160, seed=17)
    outs = {}
    for name, kw in {
        "plain": {},
        "cpu": dict(bank_device="cpu"),
        "mmap": dict(bank_device="mmap", bank_mmap_dir=str(tmp_path)),
        "int8": dict(bank_dtype="int8"),
        "fp8": dict(bank_dtype="float8_e4m3fn"),
    }.items():
        outs[name] = gated_llama(**kw)[0](ids)
        assert len(outs[name].memory.bank(0)) > 0
    for tier in ("cpu", "mmap"):  # where K/V are stored changes nothing
        torch.testing.assert_close(outs[tier].logits, outs["plain"].logits, atol=0, rtol=0)
    # compressed K/V: close to exact, but not identical (the test would notice a no-op)
    for name, tol in (("int8", 0.05), ("fp8", 0.3)):
        diff = (outs[name].logits - outs["plain"].logits).abs().max()
        assert 0 < diff < tol, (name, diff)
    assert outs["int8"].memory.bank(0).keys.dtype == torch.int8


@torch.no_grad()
def test_retrieval_off_is_the_windowed_base_even_with_open_gates(memlong_model):
    m, ref = memlong_model
    cfg = m.memlong_config
    ids = rand_ids(1, 100, seed=18)
    out = m(ids, cache=m.new_memory(1, retrieval=False))
    assert len(out.memory.bank(0)) == 0
    torch.testing.assert_close(
        out.logits, windowed_reference(ref, ids, cfg.chunk_size, cfg.local_window), atol=ATOL, rtol=0
    )


@torch.no_grad()
def test_whole_memory_save_load_continues_exactly(memlong_model, tmp_path):
    m, _ = memlong_model
    ids = rand_ids(2, 230, seed=19)  # stops mid-chunk, with evictions behind it
    cut = 203
    whole = m(ids).logits
    memory = m(ids[:, :cut]).memory
    memory.save(tmp_path / "mem")
    memory.save(tmp_path / "mem")  # re-save replaces the previous version
    assert len([p for p in (tmp_path / "mem").iterdir() if p.name.startswith("v-")]) == 1
    loaded = m.load_memory(tmp_path / "mem")
    rest = m(ids[:, cut:], past_key_values=loaded).logits
    torch.testing.assert_close(rest, whole[:, cut:], atol=ATOL, rtol=0)
    # a damaged save fails clearly
    wfile = next((tmp_path / "mem").glob("v-*/window.safetensors"))
    wfile.write_bytes(wfile.read_bytes()[:50])
    with pytest.raises(memlong.BankFileError, match="truncated or corrupted"):
        m.load_memory(tmp_path / "mem")


def test_memory_from_another_config_is_refused(memlong_model, tmp_path):
    m, _ = memlong_model
    m(rand_ids(1, 80, seed=20)).memory.save(tmp_path / "mem")
    model, _ = tiny_model("llama")
    other = memlong.wrap(model, small_memlong_config(top_k=3), retriever=memlong.HashingRetriever(dim=32))
    with pytest.raises(memlong.BankFileError, match=r"another MemLong config \(differs in \['top_k'\]\)"):
        other.load_memory(tmp_path / "mem")
    # how a question searches is not part of what reading stored
    model, _ = tiny_model("llama")
    asks = memlong.wrap(
        model, small_memlong_config(lexical_weight=2.0, rerank_candidates=5), retriever=memlong.HashingRetriever(dim=32)
    )
    assert asks.load_memory(tmp_path / "mem").seen == m.load_memory(tmp_path / "mem").seen


@pytest.mark.parametrize("family", ["mistral", "mixtral", "phi3", "starcoder2"])
def test_local_window_must_fit_a_sliding_window_model(family):
    """These families' stock attention slides whenever config.sliding_window is set: a MemLong
    local window wider than it would show the model more context than it was trained with."""
    import copy

    from conftest import tiny_config

    cfg = copy.deepcopy(tiny_config(family))
    cfg.sliding_window = 16
    model = FAMILIES[family][1](cfg)
    with pytest.raises(memlong.MemLongConfigError, match="sliding window"):
        memlong.wrap(model, small_memlong_config(local_window=32), retriever=memlong.HashingRetriever(dim=32))
    memlong.wrap(
        model,
        small_memlong_config(local_window=16, chunk_size=8, memory_capacity=48),
        retriever=memlong.HashingRetriever(dim=32),
    )  # fits


@torch.no_grad()
def test_window_index_is_built_when_a_question_needs_it(tmp_path):
    """``rerank_index``: reading leaves every chunk unindexed (reading pays nothing, logits equal a
    model without the index); the first question embeds each banked chunk's half-overlapping
    windows of ``rerank_window`` tokens with the retriever, and scores chunks from them as
    embedding the windows at question time does (float16 storage), over every chunk; a saved
    memory keeps the index; one saved before the field existed loads."""
    ids = torch.randint(0, VOCAB, (1, 203), generator=torch.Generator().manual_seed(3))
    retriever = memlong.HashingRetriever(dim=32)
    with_index = memlong.wrap(tiny_model("llama")[0], small_memlong_config(memory_capacity=400), retriever=retriever)
    without = memlong.wrap(
        tiny_model("llama")[0],
        small_memlong_config(memory_capacity=400, rerank_index=False, rerank_candidates=1000),
        retriever=retriever,
    )
    set_gates(with_index)
    set_gates(without)
    out, out_plain = with_index(ids), without(ids)
    torch.testing.assert_close(out.logits, out_plain.logits, atol=0, rtol=0)  # reading: the same model
    bank, plain = out.memory.bank(0), out_plain.memory.bank(0)
    assert bank.layout.index_window == 4 and plain.window_embeddings is None and len(bank) == len(plain) > 10
    assert len(bank.unwindowed()) == len(bank)  # nothing embedded while reading
    question = ids[0, 40:46].tolist()
    q = retriever.embed([question])[0]
    search = out.memory.question_search(0, q, retriever)
    embed_search = out_plain.memory.question_search(0, q, retriever)
    assert search["candidates"] >= len(bank) and embed_search["candidates"] == 1000
    slots = torch.tensor([e["slot"] for e in bank.entries()])
    plain_slots = torch.tensor([e["slot"] for e in plain.entries()])
    cos = bank.embeddings[slots] @ q
    torch.testing.assert_close(
        search["rescore"](slots, cos), embed_search["rescore"](plain_slots, cos), atol=2e-3, rtol=0
    )
    assert not bank.unwindowed().numel()  # the question indexed every chunk
    for e in bank.entries():
        toks = bank.token_ids[e["slot"]].tolist()
        assert torch.equal(
            bank.window_embeddings[e["slot"]], retriever.embed([toks[s : s + 4] for s in (0, 2, 4)]).half()
        )
    assert torch.equal(
        out.memory.question_hits(retriever, question)[0], out_plain.memory.question_hits(retriever, question)[0]
    )
    # reading on: new chunks arrive unindexed; index_windows embeds only them
    n = len(bank)
    more = with_index(ids[:, :40], past_key_values=out.memory).memory
    assert more.index_windows(retriever) == 5 and more.index_windows(retriever) == 0
    # a saved memory keeps the index; one saved by a version without the field loads (its default)
    more.save(tmp_path / "mem")
    meta = json.loads((tmp_path / "mem" / "memory.json").read_text())
    del meta["config"]["rerank_index"]
    (tmp_path / "mem" / "memory.json").write_text(json.dumps(meta))
    loaded = with_index.load_memory(tmp_path / "mem")
    assert len(loaded.bank(0)) == n + 5 and not loaded.bank(0).unwindowed().numel()
    # a bank loaded into a model keeping no window index drops its own
    more.save_bank(tmp_path / "bank")
    out_plain.memory.load_bank(tmp_path / "bank")
    assert out_plain.memory.bank(0).window_embeddings is None
    assert len(out_plain.memory.question_hits(retriever, question)[0]) == 2  # questions re-rank by embedding
    # so does a whole memory: configs differing only in how questions search share saved memories
    across = without.load_memory(tmp_path / "mem")
    assert across.bank(0).window_embeddings is None and len(across.bank(0)) == n + 5
    nxt = ids[:, 150:170]
    torch.testing.assert_close(
        without(nxt, past_key_values=across).logits,
        with_index(nxt, past_key_values=with_index.load_memory(tmp_path / "mem")).logits,
        atol=0,
        rtol=0,
    )
    assert torch.equal(
        across.question_hits(retriever, question)[0],
        with_index.load_memory(tmp_path / "mem").question_hits(retriever, question)[0],
    )
    # a memory dropped while focused on a question is freed at once (no reference cycle through it)
    import weakref

    focused = with_index(ids[:, :100]).memory
    focused.focus_on(retriever, [question])
    gone = weakref.ref(focused)
    with collector_off():
        del focused
        assert gone() is None


@torch.no_grad()
def test_lexical_weight_adds_the_question_words_to_each_chunk_score():
    """``lexical_weight``: a question scores every chunk by its embedding score plus the weight
    times the share of the question's words it holds (bank.lexical_scores), with or without the
    window index; without the question's tokens (or at weight 0) embeddings alone decide.
    Reading is unchanged."""
    ids = torch.randint(0, VOCAB, (1, 203), generator=torch.Generator().manual_seed(3))
    retriever = memlong.HashingRetriever(dim=32)
    question = ids[0, 40:46].tolist()
    q = retriever.embed([question])[0]
    outs = []
    for index in (True, False):
        kw = dict(memory_capacity=400, rerank_index=index, rerank_candidates=1000)
        plain = memlong.wrap(
            tiny_model("llama")[0], small_memlong_config(lexical_weight=0.0, **kw), retriever=retriever
        )
        lexical = memlong.wrap(
            tiny_model("llama")[0], small_memlong_config(lexical_weight=0.5, **kw), retriever=retriever
        )
        out, out_plain = lexical(ids), plain(ids)
        torch.testing.assert_close(out.logits, out_plain.logits, atol=0, rtol=0)
        memory, bank = out.memory, out.memory.bank(0)
        slots = torch.tensor([e["slot"] for e in bank.entries()])
        cos = bank.embeddings[slots] @ q
        dense = out_plain.memory.question_search(0, q, retriever, question)["rescore"](slots, cos)
        both = memory.question_search(0, q, retriever, question)["rescore"](slots, cos)
        lex = bank.lexical_scores(slots, question)
        assert abs(float(lex.max()) - 1) < 1e-6 and (lex > 0).sum() < len(slots)  # the chunk holding the question
        torch.testing.assert_close(both, dense + 0.5 * lex)
        torch.testing.assert_close(memory.question_search(0, q, retriever)["rescore"](slots, cos), dense)
        hits, scores = memory.question_hits(retriever, question)
        best = torch.argsort(both, descending=True, stable=True)[:2]
        assert set(hits.tolist()) == set(slots[best].tolist())
        outs.append(out.memory)


@torch.no_grad()
def test_question_hits_are_what_a_focused_question_reads():
    """memory.question_hits (what `memlong ask --show-retrieved` and the demo list) returns the
    chunks focus_on() then retrieves for the question, best first, without bumping counters."""
    model, _ = tiny_model("llama")
    m = memlong.wrap(
        model,
        small_memlong_config(rerank_candidates=6, rerank_window=4, memory_capacity=400),
        retriever=memlong.HashingRetriever(dim=32),
    )
    ids = torch.randint(0, VOCAB, (1, 203), generator=torch.Generator().manual_seed(3))
    memory = m.ingest(ids)
    bank = memory.bank(0)
    question = ids[0, 40:46].tolist()  # a passage from far back
    counts = bank.counts.clone()
    slots, scores = memory.question_hits(m.memlong_retriever, question)
    assert len(slots) == m.memlong_config.top_k and torch.equal(bank.counts, counts)
    assert bool((scores[:-1] >= scores[1:]).all())
    memory.focus_on(m.memlong_retriever, [question])
    k, v = memory.chunk_mem[0][memory.seen[0] // 8]
    want_k, want_v = bank.gather(slots)
    assert torch.equal(k, want_k) and torch.equal(v, want_v)
    with pytest.raises(RuntimeError, match="clone it before focusing"):  # a copy would share the focus
        memory.clone()
    memory.unfocus()
    assert memory.clone().seen == memory.seen


@torch.no_grad()
def test_a_question_reads_its_hits_best_last_with_their_continuations():
    """``question_order="score"`` and ``question_offsets=(0, 1)``: a focused question reads its
    hits from the worst to the best (nearest the question), each followed by the chunk after it;
    reading (no question) is the same model."""
    ids = torch.randint(0, VOCAB, (1, 203), generator=torch.Generator().manual_seed(3))
    question = ids[0, 40:46].tolist()
    models = [
        memlong.wrap(
            tiny_model("llama")[0],
            small_memlong_config(memory_capacity=400, **kw),
            retriever=memlong.HashingRetriever(dim=32),
        )
        for kw in ({}, dict(question_order="score", question_offsets=(0, 1)))
    ]
    for m in models:
        set_gates(m)
    plain, ordered = (m(ids) for m in models)
    torch.testing.assert_close(plain.logits, ordered.logits, atol=0, rtol=0)
    bank = ordered.memory.bank(0)
    slots, _ = ordered.memory.question_hits(models[1].memlong_retriever, question)
    assert torch.equal(slots, plain.memory.question_hits(models[0].memlong_retriever, question)[0])  # same hits
    stored = {int(bank.chunk_ids[s]): s for s in bank.valid.nonzero().flatten().tolist()}
    want = []
    for j in reversed(bank.chunk_ids[slots].tolist()):  # the worst hit first
        want = [s for s in want if s not in (stored.get(j), stored.get(j + 1))]
        want += [stored[c] for c in (j, j + 1) if c in stored]
    assert len(want) > len(slots)
    ordered.memory.focus_on(models[1].memlong_retriever, [question])
    k, v = ordered.memory.chunk_mem[0][ordered.memory.seen[0] // 8]
    want_k, want_v = bank.gather(torch.tensor(want), keep_order=True)
    assert torch.equal(k, want_k) and torch.equal(v, want_v)
    # the question's answer differs from reading the hits in stream order alone
    plain.memory.focus_on(models[0].memlong_retriever, [question])
    a = models[0](torch.tensor([question[-3:]]), cache=plain.memory).logits
    b = models[1](torch.tensor([question[-3:]]), cache=ordered.memory).logits
    assert not torch.allclose(a, b)


@torch.no_grad()
def test_question_reread_text_is_not_banked_again(tmp_path):
    """The chunks a question rereads are in the bank already: when reading goes on after the
    answer and they leave the local window, a chunk made only of reread text is dropped, not
    banked a second time (a later question would find the copy beside the original); a chunk
    that also holds the document or the question is banked as usual. A saved and loaded memory
    keeps that bookkeeping; a memory without reread banks every chunk."""
    m, _ = gated_llama(memory_capacity=400, question_reread=True)
    doc, more = rand_ids(1, 203, seed=8), rand_ids(1, 64, seed=10)
    question = doc[:, 40:44]  # retrieves chunk 5 (its text) and one more
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)

    def asked(model):
        mem = model.ingest(doc)
        reread = mem.question_tokens(model.memlong_retriever, question.tolist())[0]
        model.generate(question, memory=mem, requery=True, **kw)
        return mem, reread

    mem, reread = asked(m)
    assert len(reread) == 16  # stream 203..219: chunk 25 = 3 document tokens + 5 reread, 26 reread, 27 = 3 + question
    with pytest.raises(ValueError, match="not a range of the 225 tokens read"):  # 203 + 16 + 4 + 2
        mem.mark_reread(0, 220, 300)
    path = tmp_path / "memory"
    mem.save(path)
    loaded = m.load_memory(path)
    for memory in (mem, loaded):
        m.ingest(more, memory)  # chunks 25..32 leave the window
        bank = memory.bank(0)
        ids = bank.chunk_ids[bank.chunk_ids >= 0].tolist()
        assert 26 not in ids and {25, 27, 28} <= set(ids)
        tokens = [tuple(t) for t in bank.token_ids[bank.chunk_ids >= 0].tolist()]
        assert len(set(tokens)) == len(tokens)  # no chunk twice
    torch.testing.assert_close(m(more[:, :5], cache=mem).logits, m(more[:, :5], cache=loaded).logits, atol=ATOL, rtol=0)
    plain = memlong.wrap(
        tiny_model("llama")[0],
        dataclasses.replace(m.memlong_config, question_reread=False),
        retriever=m.memlong_retriever,
    )
    mem, _ = asked(plain)
    plain.ingest(more, mem)
    assert set(range(30)) <= set(mem.bank(0).chunk_ids.tolist())


@torch.no_grad()
def test_question_reread_reads_the_hits_as_text_before_the_question():
    """``question_reread=True``: ``generate(requery=...)`` first reads the chunks the question
    will retrieve (``question_tokens``: its hits in ``question_order``, with what
    ``question_offsets`` brings) as text, then the question as before; the returned sequence holds
    the prompt and the answer only. Each row of a batch is read as alone (left-padded when the
    rows' hits differ in length), and a memory with nothing banked reads nothing more."""
    m, _ = gated_llama(memory_capacity=400, question_offsets=(0, 1), question_order="score", question_reread=True)
    plain = memlong.wrap(
        tiny_model("llama")[0],
        dataclasses.replace(m.memlong_config, question_reread=False),
        retriever=m.memlong_retriever,
    )
    set_gates(plain)
    docs = rand_ids(2, 200, seed=8)
    docs[:, 16:24] = torch.arange(90, 98)  # chunk 2 of both rows
    question = torch.cat([rand_ids(2, 3, seed=9), torch.arange(90, 94).repeat(2, 1)], 1)
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    lengths = (200, 40)  # the second row: 40 tokens, a window of 32: one chunk banked
    ids, mask = torch.zeros(2, 200, dtype=torch.long), torch.zeros(2, 200, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, 200 - n :], mask[b, 200 - n :] = docs[b, :n], 1
    mem = m.ingest(ids, attention_mask=mask)
    counts = mem.bank(0).counts.clone()
    hits = mem.question_tokens(m.memlong_retriever, question.tolist())
    assert torch.equal(mem.bank(0).counts, counts)  # counters untouched
    assert len(hits[0]) % 8 == 0 and len(hits[0]) >= 24 and hits[1] == docs[1, :8].tolist()
    assert hits[0][-16:] == docs[0, 16:32].tolist()  # the best hit (the needle's chunk) last, then its continuation
    out = m.generate(question, memory=mem, requery=True, **kw)
    assert out.sequences.shape == (2, question.shape[1] + 3) and torch.equal(out.sequences[:, :7], question)
    assert mem.columns == 200 + len(hits[0]) + 7 + 2
    # by hand, each row alone: its hits read as text by a model without reread, then the question
    for b, n in enumerate(lengths):
        by_hand = plain.ingest(docs[b : b + 1, :n])
        plain.ingest(torch.tensor([hits[b]]), by_hand)
        by_hand.mark_reread(0, n, n + len(hits[b]))  # as reread text: not banked again when it leaves the window
        want = plain.generate(question[b : b + 1], memory=by_hand, requery=True, **kw)
        assert torch.equal(want.sequences[0], out.sequences[b])
        for step in range(3):
            torch.testing.assert_close(want.scores[step][0], out.scores[step][b], atol=ATOL, rtol=0)
    # nothing banked: nothing is reread, the answer is the plain model's
    empty_a, empty_b = m.new_memory(1), plain.new_memory(1)
    a = m.generate(question[:1], memory=empty_a, requery=True, **kw)
    b = plain.generate(question[:1], memory=empty_b, requery=True, **kw)
    assert torch.equal(a.sequences, b.sequences) and empty_a.columns == empty_b.columns


@torch.no_grad()
@pytest.mark.parametrize("order", ["stream", "score"])
def test_a_question_rereads_a_fact_still_in_the_local_window(order):
    """A fact read in the last chunks before the question is in the local window, not yet in the
    bank; reading the hits again pushes the window's oldest chunks out of it. The question's search
    therefore also scores the window's whole chunks, as it scores the bank's: the fact's chunk is
    one of the hits read again (it would otherwise be neither read again nor kept in view). Where
    the bank's hits score higher, they are read as before."""
    m, _ = gated_llama(memory_capacity=400, question_reread=True, question_window=True, question_order=order)
    doc = rand_ids(1, 200, seed=8)
    doc[:, 176:184] = torch.arange(90, 98)  # chunk 22: in the window (chunks 21-24) when the question comes
    doc[:, 40:48] = torch.arange(70, 78)  # chunk 5: in the bank
    question = torch.cat([rand_ids(1, 3, seed=9), torch.arange(90, 94)[None]], 1)
    mem = m.ingest(doc)
    assert 22 not in mem.bank(0).chunk_ids.tolist()
    hits = mem.question_tokens(m.memlong_retriever, question.tolist())[0]
    pieces = [hits[i : i + 8] for i in range(0, len(hits), 8)]
    assert doc[0, 176:184].tolist() in pieces and len(pieces) == 2  # top_k 2: the fact and one more
    if order == "score":
        assert pieces[-1] == doc[0, 176:184].tolist()  # the best hit last
    else:  # text order: the window's chunk, the latest, last
        assert pieces[-1] == doc[0, 176:184].tolist() and pieces[0] != pieces[1]
    # the answer reads them: the fact is read again just before the question
    seen = mem.columns
    m.generate(question, memory=mem, requery=True, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert mem.columns == seen + len(hits) + question.shape[1] + 1
    # without question_window: hits from the bank alone, without the fact (which their reading pushes out of the window)
    bank_only, _ = gated_llama(memory_capacity=400, question_reread=True, question_order=order)
    hits = bank_only.ingest(doc).question_tokens(bank_only.memlong_retriever, question.tolist())[0]
    assert len(hits) == 16 and doc[0, 176:184].tolist() not in [hits[i : i + 8] for i in range(0, 16, 8)]
    # a question about the banked fact: its chunk, from the bank, as before
    about_bank = torch.cat([rand_ids(1, 3, seed=9), torch.arange(70, 74)[None]], 1)
    hits = m.ingest(doc).question_tokens(m.memlong_retriever, about_bank.tolist())[0]
    assert doc[0, 40:48].tolist() in [hits[i : i + 8] for i in range(0, len(hits), 8)]


def memory_model(free: bool, **kw):
    """A tiny gated MemLong model, or (``free``) a training_free one with a 3-token sink."""
    if not free:
        return gated_llama(**kw)[0]
    cfg = small_memlong_config(mode="training_free", memory_layer=1, retrieval_layers=(2, 3, 4), sink_tokens=3, **kw)
    return memlong.wrap(tiny_model("llama")[0], cfg, retriever=memlong.HashingRetriever(dim=32))


def banked(memory, row=0) -> list[int]:
    bank = memory.bank(row)
    return sorted(bank.chunk_ids[bank.valid].tolist())


@torch.no_grad()
@pytest.mark.parametrize("free", [False, True])
def test_flushing_the_window_banks_its_whole_chunks_once(tmp_path, free):
    """``flush_window``: the window's whole chunks go to the bank at once, the chunk in progress
    stays; reading on banks every later chunk once (none twice, none lost) and hides the flushed
    text from what follows; a memory saved after a flush reads on exactly as the one kept."""
    m = memory_model(free, memory_capacity=400)
    doc = rand_ids(1, 203, seed=8)  # chunks 0-24 whole, chunk 25 holds 3 tokens
    mem = m.ingest(doc)
    window = sorted(c for c, t in mem.chunk_tokens[0].items() if len(t) == 8)
    assert window and 22 in window and 25 not in window
    assert mem.flush_window() == window
    assert banked(mem) == list(range(25)) and mem.window_tokens(0) == 3
    mem.save(tmp_path / "flushed")
    more = rand_ids(1, 70, seed=9)
    after = m(more, cache=mem).logits
    assert banked(mem) == list(range(31))  # chunks 31-33 in the window, 34 in progress
    loaded = m.load_memory(tmp_path / "flushed")
    torch.testing.assert_close(m(more, cache=loaded).logits, after, atol=1e-5, rtol=0)
    # the flushed text is out of view: without retrieval, what follows reads as after other text,
    # and (no sink) as it reads alone
    doc, other = doc[:, :200], doc[:, :200].clone()
    other[:, 180:200] = rand_ids(1, 20, seed=10)  # in chunks 22-24, the window's
    logits = []
    for text in (doc, other):
        memory = m.ingest(text, m.new_memory(1, retrieval=False))
        assert memory.flush_window() == [21, 22, 23, 24] and memory.window_tokens(0) == 0
        logits.append(m(more, cache=memory).logits)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=0)
    if not free:
        torch.testing.assert_close(logits[0], m(more, cache=m.new_memory(1, retrieval=False)).logits, atol=1e-5, rtol=0)
    kept = [m(more, cache=m.ingest(text, m.new_memory(1, retrieval=False))).logits for text in (doc, other)]
    assert (kept[0] - kept[1]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("free", [False, True])
def test_a_flush_at_a_chunk_boundary_keeps_the_next_chunks_query(tmp_path, free):
    """Flushed where a chunk has just ended: the next chunk still retrieves (causally, with the
    flushed chunk's embedding), from a memory saved and loaded too, as it would without the flush;
    the embedding is dropped once used. ``retrieve_again`` after a mid-chunk flush queries with
    the flushed chunk's tokens, from the bank."""
    m = memory_model(free, memory_capacity=400)
    doc = rand_ids(1, 200, seed=8)  # chunks 0-24 whole, none in progress
    plain, mem = m.ingest(doc), m.ingest(doc)
    assert mem.flush_window() == [21, 22, 23, 24]
    mem.save(tmp_path / "flushed")
    for memory in (mem, m.load_memory(tmp_path / "flushed")):
        m(rand_ids(1, 1, seed=9), cache=memory)
        assert memory.chunk_mem[0][25] is not None and 24 not in memory.chunk_emb[0]
    m(rand_ids(1, 1, seed=9), cache=plain)
    want, got = plain.chunk_mem[0][25], mem.chunk_mem[0][25]
    assert want is not None and got[0].shape == want[0].shape  # top_k chunks retrieved, as without the flush
    mid = m.ingest(rand_ids(1, 203, seed=8))
    mid.flush_window()
    expected = mid.bank(0).token_ids[mid.bank(0).slots_by_chunk()[24]].tolist()
    seen = []
    real = m.memlong_retriever.embed
    m.memlong_retriever.embed = lambda texts: seen.extend(texts) or real(texts)
    try:
        mid.retrieve_again(m.memlong_retriever)
    finally:
        m.memlong_retriever.embed = real
    assert seen == [(expected + mid.chunk_tokens[0][25])[-8:]]


@torch.no_grad()
def test_a_fresh_window_question_leaves_the_no_memory_baseline_its_window():
    """``question_fresh_window`` with retrieval off (``memlong_no_memory``): nothing is banked or
    hidden, the baseline answers from its window as without the option."""
    fresh, _ = gated_llama(memory_capacity=400, question_fresh_window=True)
    plain, _ = gated_llama(memory_capacity=400)
    doc, question = rand_ids(1, 203, seed=8), rand_ids(1, 5, seed=9)
    kw = dict(requery=True, max_new_tokens=4, do_sample=False, pad_token_id=0)
    answers, windows = [], []
    for m in (fresh, plain):
        memory = m.ingest(doc, m.new_memory(1, retrieval=False))
        answers.append(m.generate(question, memory=memory, **kw))
        windows.append(memory.win_pos.clone())
    assert torch.equal(answers[0], answers[1]) and torch.equal(windows[0], windows[1])
    assert int((windows[0] >= 0).sum()) == 211 - 23 * 8  # chunks 23-25 whole, 26 in progress: nothing hidden


@torch.no_grad()
def test_a_short_text_flushed_keeps_its_sink_and_reads_it_next():
    """A text shorter than the window flushed before its first chunk slid out: the sink is kept
    then, and the next tokens read it."""
    m = memory_model(True)
    mem = m.ingest(rand_ids(1, 20, seed=3))
    assert mem.sink[0] is None and mem.flush_window() == [0, 1]
    assert mem.sink[0][0].shape[1] == 3 and mem._sink_of(0, 2) == 3
    m(rand_ids(1, 50, seed=4), cache=mem)  # reads on: chunk 0 never departs a second time
    assert banked(mem) == list(range(70 // 8 - 3))  # chunks 5-7 in the window, 8 in progress


@torch.no_grad()
def test_a_batch_flushed_gives_each_row_what_it_gets_alone():
    m, _ = gated_llama(memory_capacity=400)
    docs, more = rand_ids(2, 90, seed=5), rand_ids(2, 30, seed=6)
    mem = m.ingest(docs)
    mem.flush_window()
    both = m(more, cache=mem).logits
    for b in range(2):
        alone = m.ingest(docs[b : b + 1])
        alone.flush_window()
        torch.testing.assert_close(m(more[b : b + 1], cache=alone).logits[0], both[b], atol=1e-5, rtol=0)


@torch.no_grad()
def test_a_question_with_a_fresh_window_reads_its_hits_from_the_bank():
    """``question_fresh_window``: a fact read in the window before the question is banked with the
    rest, found by the question's search and read again; the window's other text is out of view."""
    m, _ = gated_llama(memory_capacity=400, question_reread=True, question_fresh_window=True)
    doc = rand_ids(1, 203, seed=8)
    doc[:, 176:184] = torch.arange(90, 98)  # chunk 22: in the window when the question comes
    question = torch.cat([rand_ids(1, 3, seed=9), torch.arange(90, 94)[None]], 1)
    mem = m.ingest(doc)
    m.focus_question(mem, question.tolist())
    mem.unfocus()
    assert 22 in banked(mem)
    ((start, end),) = mem.reread[0]
    assert mem.window_tokens(0) == 3 + end - start  # the chunk in progress, then the hits read again
    window = sum((t for _, t in sorted(mem.chunk_tokens[0].items())), [])
    assert doc[0, 176:184].tolist() in [window[i : i + 8] for i in range(len(window) - 7)]
    # the same answer as flushing by hand before a question without the option
    plain, _ = gated_llama(memory_capacity=400, question_reread=True)
    kw = dict(requery=True, max_new_tokens=3, do_sample=False, pad_token_id=0)
    flushed = plain.ingest(doc)
    flushed.flush_window()
    want = plain.generate(question, memory=flushed, **kw)
    assert torch.equal(m.generate(question, memory=m.ingest(doc), **kw), want)


@torch.no_grad()
@pytest.mark.parametrize("window", [False, True])
def test_a_question_reads_again_only_hits_near_the_best_score(window):
    """``question_score_ratio=r``: a question reads again only the hits scoring at least r times
    the best hit's score (the best always); 0 reads all ``top_k``. ``question_reads`` lists the same."""
    doc = rand_ids(1, 200, seed=8)
    doc[:, 40:48] = torch.arange(70, 78)  # chunk 5: the fact, in the bank
    doc[:, 176:184] = torch.arange(90, 98)  # chunk 22: in the window
    question = torch.cat([rand_ids(1, 3, seed=9), torch.arange(70, 74)[None]], 1).tolist()
    kw = dict(memory_capacity=400, question_reread=True, question_window=window, top_k=3)
    every, _ = gated_llama(**kw)
    reads = every.ingest(doc).question_reads(every.memlong_retriever, question[0])
    assert len(reads) == 3 and reads[0][0] == 5
    assert reads[0][1] > reads[1][1] > reads[2][1] > 0
    for ratio, n in ((0.0, 3), (0.999, 1), (reads[1][1] / reads[0][1] - 1e-6, 2)):
        m, _ = gated_llama(**kw, question_score_ratio=ratio)
        mem = m.ingest(doc)
        kept = [c for c, _, _ in reads[:n]]
        assert [c for c, _, _ in mem.question_reads(m.memlong_retriever, question[0])] == kept
        text = mem.question_tokens(m.memlong_retriever, question)[0]
        assert sorted(text[i : i + 8] for i in range(0, len(text), 8)) == sorted(
            doc[0, 8 * c : 8 * c + 8].tolist() for c in kept
        )


@torch.no_grad()
def test_a_hit_read_again_brings_the_start_of_the_chunk_after_it():
    """``question_tail=T``: each hit a question reads again is followed by the first T tokens of
    the chunk after it (a statement cut by a chunk boundary is read whole), unless that chunk is
    read next anyway; the hits are the same."""
    doc = rand_ids(1, 200, seed=8)
    doc[:, 44:52] = torch.arange(70, 78)  # a "statement" across the boundary of chunks 5 and 6
    doc[:, 64:68] = torch.arange(70, 74)  # chunk 8 holds its first half too
    question = torch.cat([rand_ids(1, 3, seed=9), torch.arange(70, 74)[None]], 1).tolist()
    plain, _ = gated_llama(memory_capacity=400, question_reread=True)
    tail, _ = gated_llama(memory_capacity=400, question_reread=True, question_tail=3)
    hits = plain.ingest(doc).question_tokens(plain.memlong_retriever, question)[0]
    chunks = [
        next(c for c in range(25) if doc[0, 8 * c : 8 * c + 8].tolist() == hits[i : i + 8])
        for i in range(0, len(hits), 8)
    ]
    assert 5 in chunks
    want = []
    for i, c in enumerate(chunks):
        want += doc[0, 8 * c : 8 * c + 8].tolist()
        if i + 1 == len(chunks) or chunks[i + 1] != c + 1:
            want += doc[0, 8 * c + 8 : 8 * c + 11].tolist()
    assert tail.ingest(doc).question_tokens(tail.memlong_retriever, question)[0] == want


@pytest.mark.parametrize("side", ["right", "left"])
def test_the_lm_head_runs_only_where_a_loss_is_taken(memlong_model, side):
    """Labels masked at some positions (a sampled loss): the same loss as the full logits give, and
    no logits computed where no loss is taken (the LM head's share of a training step saved)."""
    m, _ = memlong_model
    ids = rand_ids(2, 90, seed=21)
    mask = torch.ones_like(ids)
    mask[1, :20] = 0 if side == "left" else 1
    if side == "right":
        mask[1, -20:] = 0
    labels = ids.masked_fill(torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.7, -100)
    with torch.no_grad():
        full = m(ids, attention_mask=mask).logits
        out = m(ids, attention_mask=mask, labels=labels)
    want = m.loss_function(logits=full, labels=labels.masked_fill(mask == 0, -100), vocab_size=m.config.vocab_size)
    torch.testing.assert_close(out.loss, want)
    target = torch.zeros_like(mask, dtype=torch.bool)
    target[:, :-1] = (labels[:, 1:] != -100) & (mask[:, 1:] == 1) & (mask[:, :-1] == 1)
    computed = out.logits.abs().sum(-1) > 0
    assert torch.equal(computed, target)  # exactly the positions whose next label counts
    torch.testing.assert_close(out.logits[target], full[target])


def test_sampled_labels_are_reproducible_per_step():
    from memlong.recipes.train import sampled_labels

    ids = rand_ids(2, 1000, seed=1)
    a, b = sampled_labels(ids, 0.25, seed=0, step=7), sampled_labels(ids, 0.25, seed=0, step=7)
    assert torch.equal(a, b) and not torch.equal(a, sampled_labels(ids, 0.25, seed=0, step=8))
    kept = (a != -100).float().mean().item()
    assert 0.2 < kept < 0.3 and torch.equal(a[a != -100], ids[a != -100])
    assert sampled_labels(ids, 1.0, seed=0, step=7) is ids
