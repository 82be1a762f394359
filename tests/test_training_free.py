"""The training-free mode (``MemLongConfig(mode="training_free")``): the same properties as
MemLong mode (parity with an empty memory, causality, batch equivalence, call boundaries,
generate, save/load, compressed banks), plus its own exactness: when every chunk that left the
window is retrieved, in every layer, it is the stock model with full attention."""

import pytest
import torch

import memlong

from conftest import (
    VOCAB,
    assert_padded_batch_equals_each_sequence_alone,
    set_gates,
    small_memlong_config,
    tiny_model,
)

ATOL = 1e-5


def rand_ids(B, S, seed=0):
    return torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(seed))


def free_model(family="llama", layers=4, **kw):
    model, ref = tiny_model(family, layers=layers)
    base = dict(mode="training_free", retrieval_layers=(2, 3, 4), memory_layer=1)
    base.update(kw)
    return memlong.wrap(model, small_memlong_config(**base), retriever=memlong.HashingRetriever(dim=32)), ref


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma", "mistral"])
@torch.no_grad()
def test_every_departed_chunk_retrieved_in_every_layer_is_full_attention(family):
    """tau 8, window 32: chunk 4 has chunk 0 behind its window, chunk 5 chunks 0-1. With top_k 2
    both are always retrieved, in stream order, just before the window: where they were."""
    m, ref = free_model(family, retrieval_layers=(1, 2, 3, 4), top_k=2, memory_capacity=400)
    ids = rand_ids(2, 48, seed=1)
    out = m(ids)
    assert len(out.memory.bank(0)) == 2
    torch.testing.assert_close(out.logits, ref(ids).logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_memory_changes_the_output_and_retrieval_off_is_the_window():
    m, ref = free_model()
    ids = rand_ids(1, 100, seed=2)
    with_memory = m(ids).logits
    without = m(ids, cache=m.new_memory(1, retrieval=False)).logits
    w = m.memlong_config.local_window
    torch.testing.assert_close(with_memory[:, :w], ref(ids[:, :w]).logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(with_memory[:, :w], without[:, :w], atol=ATOL, rtol=0)
    assert (with_memory[:, w + 8 :] - without[:, w + 8 :]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@torch.no_grad()
def test_empty_memory_is_the_base_model(family):
    m, ref = free_model(family)
    ids = rand_ids(2, 32)
    torch.testing.assert_close(m(ids).logits, ref(ids).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_no_dependence_on_future_tokens(sink):
    m, _ = free_model(sink_tokens=sink)
    ids = rand_ids(1, 140, seed=3)
    base = m(ids).logits
    assert m.memlong_config.capacity_chunks < 140 // 8 - 4  # the run evicts
    for t in [7, 40, 64, 65, 120]:
        changed = ids.clone()
        changed[:, t + 1 :] = rand_ids(1, 140 - t - 1, seed=100 + t)
        torch.testing.assert_close(m(changed).logits[:, : t + 1], base[:, : t + 1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_padded_batch_and_call_boundaries(sink):
    m, _ = free_model(sink_tokens=sink)
    assert_padded_batch_equals_each_sequence_alone(m, side="left", atol=ATOL)
    seq = rand_ids(1, 150, seed=4)
    whole = m(seq).logits
    memory, pieces, s = m.new_memory(), [], 0
    for n in [1, 3, 8, 13, 40, 2, 33, 50]:
        pieces.append(m(seq[:, s : s + n], cache=memory).logits)
        s += n
    torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=ATOL, rtol=0)


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_padded_batch_with_more_retrieved_than_the_window_holds(sink):
    """Retrieved rows outnumbering the window (top_k 4 chunks of 8 against a window of 32): the rows
    a slot leaves empty, and the slots a shorter row does not reach, keep their positions inside
    the RoPE table (they once indexed past it with a sink)."""
    m, _ = free_model(sink_tokens=sink, top_k=4, memory_capacity=400)
    assert_padded_batch_equals_each_sequence_alone(m, lengths=(170, 150, 9), side="left", atol=ATOL)


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_generate_equals_step_by_step_forward(sink):
    m, _ = free_model(sink_tokens=sink)
    prompt = rand_ids(1, 90, seed=5)
    gen = m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=False, pad_token_id=0)
    out = m(prompt)
    memory, tokens = out.memory, []
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(30):
        tokens.append(nxt)
        nxt = m(nxt, cache=memory).logits[:, -1].argmax(-1, keepdim=True)
    assert torch.equal(gen[:, 90:], torch.cat(tokens, 1))


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_decoding_reuses_the_chunks_memory_exactly(sink):
    # one token per call: the retrieved memory (and each layer's rotated memory keys) is built once
    # per chunk and reused; the logits are bitwise those of rebuilding it at every call
    m, _ = free_model(sink_tokens=sink)
    seq = rand_ids(1, 150, seed=6)

    (fast, reused, rotated, appended), (slow, *_) = decode(m, seq), decode(m, seq, rebuild=True)
    assert reused > 40 and rotated > 40  # most steps continue a chunk whose memory is already built
    # and each of the 3 retrieval layers appends the token to its decode buffer, except in the first
    # two calls of a chunk (the first still sees the chunk leaving the window, the second builds)
    assert appended == 3 * (60 - 15)
    assert torch.equal(fast, slow)


def decode(m, seq, start=90, rebuild=False):
    """Logits of ``seq[start:]`` read one token per call after ``seq[:start]``, and how many calls
    reused the previous call's memory buffers / rotated window keys (``rebuild``: none may, and no
    layer appends to a decode buffer: every call concatenates)."""
    memory, logits, reused, rotated = m(seq[:, :start]).memory, [], 0, 0
    prepare = memory.prepare
    calls = []  # per call: its decode buffers (layer -> buffer, None: none), and those it started with

    def spy(*args, **kwargs):
        nonlocal rotated
        ctx = prepare(*args, **kwargs)
        rotated += ctx.window_k_rotated is not None
        if rebuild:
            ctx.decode_buffers = None
        calls.append((ctx.decode_buffers, dict(ctx.decode_buffers or {})))
        return ctx

    memory.prepare = spy
    for i in range(start, seq.shape[1]):
        if rebuild:
            memory._last_memory = memory.rot_frame = None
        elif memory._last_memory is not None and memory._last_memory["rotated"]:
            reused += 1
        logits.append(m(seq[:, i : i + 1], cache=memory).logits)
    if rebuild:
        assert rotated == 0
    appended = sum(before.get(layer) is buf for after, before in calls if after for layer, buf in after.items())
    return torch.cat(logits, 1), reused, rotated, appended


@torch.no_grad()
def test_decoding_reuses_the_rotated_window_exactly_in_memlong_mode():
    model, _ = tiny_model("llama", layers=4)
    m = memlong.wrap(model, small_memlong_config(), retriever=memlong.HashingRetriever(dim=32))
    set_gates(m)
    seq = rand_ids(1, 150, seed=7)
    (fast, _, rotated, _), (slow, *_) = decode(m, seq), decode(m, seq, rebuild=True)
    assert rotated > 40 and torch.equal(fast, slow)


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_bank_holds_each_retrieval_layers_kv_and_saves(tmp_path, sink):
    m, _ = free_model(sink_tokens=sink)
    memlong_mode, _ = tiny_model("llama")
    plain = memlong.wrap(memlong_mode, small_memlong_config(), retriever=memlong.HashingRetriever(dim=32))
    assert m.new_memory().layout.kv_bytes_per_token() == 3 * plain.new_memory().layout.kv_bytes_per_token()
    assert m.memlong_gates() == {}  # no gates in this mode
    ids = rand_ids(2, 230, seed=19)
    whole = m(ids).logits
    memory = m(ids[:, :203]).memory
    memory.save(tmp_path / "mem")
    rest = m(ids[:, 203:], cache=m.load_memory(tmp_path / "mem")).logits
    torch.testing.assert_close(rest, whole[:, 203:], atol=ATOL, rtol=0)
    # a compressed bank: close to the exact one, not identical
    m8, _ = free_model(bank_dtype="int8", sink_tokens=sink)
    diff = (m8(ids).logits - whole).abs().max()
    assert 0 < diff < 0.05


def test_config_checks_for_training_free_mode():
    # retrieval layers need not be above the memory layer; positions must fit the model
    memlong.MemLongConfig(mode="training_free", memory_layer=13, retrieval_layers=(1, 2, 3))
    cfg = small_memlong_config(
        mode="training_free", memory_layer=1, retrieval_layers=(1, 2), top_k=60, memory_capacity=4000, local_window=64
    )
    model, _ = tiny_model("llama")  # max_position_embeddings 512 < 60 * 8 + 64
    with pytest.raises(memlong.MemLongConfigError, match="max_position_embeddings"):
        memlong.wrap(model, cfg, retriever=memlong.HashingRetriever(dim=32))
    with pytest.raises(memlong.MemLongConfigError, match="mode"):
        memlong.MemLongConfig(mode="free")
    with pytest.raises(memlong.MemLongConfigError, match="sink_tokens.*training_free"):
        memlong.MemLongConfig(sink_tokens=4)  # MemLong mode has no sink
    with pytest.raises(memlong.MemLongConfigError, match="sink_tokens.*0..chunk_size=8"):
        small_memlong_config(mode="training_free", sink_tokens=9)
    cfg = small_memlong_config(
        mode="training_free",
        memory_layer=1,
        retrieval_layers=(1, 2),
        top_k=56,
        memory_capacity=4000,
        local_window=64,
        sink_tokens=8,
    )  # 8 + 448 + 64 > 512
    with pytest.raises(memlong.MemLongConfigError, match="8 \\+ 448 \\+ 64"):
        memlong.wrap(tiny_model("llama")[0], cfg, retriever=memlong.HashingRetriever(dim=32))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@torch.no_grad()
def test_sink_tokens_stay_where_they_were_for_the_first_chunk_past_the_window(family):
    """tau 8, window 32: chunk 0 leaves the window when chunk 4 starts. With sink_tokens=8 (all of
    chunk 0) and no retrieval, chunk 4 reads the sink just before its window, where chunk 0 was:
    full attention. Before that nothing changes; after it, the sink is really read."""
    m, ref = free_model(family, retrieval_layers=(1, 2, 3, 4), sink_tokens=8)
    plain, _ = free_model(family, retrieval_layers=(1, 2, 3, 4))
    plain.load_state_dict(m.state_dict())
    ids = rand_ids(1, 56, seed=7)
    memory = m.new_memory(1, retrieval=False)
    out = m(ids, cache=memory).logits
    window_only = plain(ids, cache=plain.new_memory(1, retrieval=False)).logits
    torch.testing.assert_close(out[:, :40], ref(ids[:, :40]).logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out[:, :32], window_only[:, :32], atol=ATOL, rtol=0)
    assert (out[:, 40:] - window_only[:, 40:]).abs().max() > 1e-3
    assert memory.sink[0][0].shape[1] == 8 and len(memory.bank(0)) == 0
    memory.reset()
    assert memory.sink == [None]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@torch.no_grad()
def test_full_attention_holds_over_many_chunks_call_boundaries_and_a_question(family):
    """128 tokens, 12 chunks leave the window; top_k 12 retrieves them all: full attention again,
    read in one call, in pieces, and after focusing on a question (whose retrieval then changes
    nothing, since everything is retrieved)."""
    m, ref = free_model(family, retrieval_layers=(1, 2, 3, 4), top_k=12, memory_capacity=400)
    ids = rand_ids(1, 128, seed=3)
    full = ref(ids).logits
    torch.testing.assert_close(m(ids).logits, full, atol=1e-4, rtol=0)
    memory, outs, s = m.new_memory(), [], 0
    for n in [5, 30, 1, 40, 52]:
        outs.append(m(ids[:, s : s + n], cache=memory).logits)
        s += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-4, rtol=0)
    memory = m.ingest(ids[:, :101])
    memory.focus_on(m.memlong_retriever, [ids[0, 95:101].tolist()])
    torch.testing.assert_close(m(ids[:, 101:], cache=memory).logits, full[:, 101:], atol=1e-4, rtol=0)
