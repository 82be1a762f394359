"""``MemLongConfig.bank_heads``: the bank keeps only some KV heads (training_free mode); the
others read the sink and the local window. Exactness: an empty memory is the base model; listing
every head is today's layout, bit for bit; a layer none of whose heads is banked is the local
window (with the sink); at the lowest retrieval layer each banked head's output is the one it has
when every head is banked and each other head's is the one it has with no retrieval at all (sink
and window); plus causality, batch and call-boundary equivalence, save/load and the bytes kept."""

import pytest
import torch

import memlong
from memlong.cost import bytes_per_token
from memlong.memory.bank import BankFileError

from conftest import VOCAB, assert_padded_batch_equals_each_sequence_alone, small_memlong_config, tiny_model

ATOL = 1e-5
PARTIAL = ((2, 0), (2, 2), (3, 1), (4, 3))  # tiny models: 4 KV heads (8 query heads) per layer
EVERY = tuple((layer, h) for layer in (2, 3, 4) for h in range(4))


def rand_ids(B, S, seed=0):
    return torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(seed))


def free_model(**kw):
    model, ref = tiny_model("llama", layers=4)
    base = dict(mode="training_free", retrieval_layers=(2, 3, 4), memory_layer=1)
    base.update(kw)
    return memlong.wrap(model, small_memlong_config(**base), retriever=memlong.HashingRetriever(dim=32)), ref


def attention_outputs(m, ids, layer, memory=None):
    """Layer ``layer``'s (0-based) attention output per query head, before ``o_proj``: ``[B, S, H, D]``."""
    seen = []
    attn = m.model.layers[layer].self_attn
    hook = attn.o_proj.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        m(ids, cache=memory) if memory is not None else m(ids)
    finally:
        hook.remove()
    x = torch.cat(seen, 1)  # one call per segment the model reads
    return x.view(*x.shape[:2], m.config.num_attention_heads, -1)


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_empty_memory_is_the_base_model(sink):
    m, ref = free_model(bank_heads=PARTIAL, sink_tokens=sink)
    ids = rand_ids(2, 32)
    torch.testing.assert_close(m(ids).logits, ref(ids).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_listing_every_head_is_the_default_layout_bit_for_bit(sink):
    every, _ = free_model(bank_heads=EVERY, sink_tokens=sink)
    default, _ = free_model(sink_tokens=sink)
    ids = rand_ids(2, 150, seed=1)
    out, want = every(ids), default(ids)
    assert torch.equal(out.logits, want.logits)
    assert every.new_memory().layout.kv_bytes_per_token() == default.new_memory().layout.kv_bytes_per_token()


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_banked_heads_see_every_retrieved_chunk_the_others_the_sink_and_window(sink):
    """top_k 12 retrieves every chunk that left the window. At layer 2 (the lowest retrieval
    layer: its input is the same in every model here) KV heads 0 and 2 are banked: their query
    heads (0, 1, 4, 5) attend as when every head is banked; heads 1 and 3 (query heads 2, 3, 6, 7)
    as with no retrieval at all (the sink just before the window, then the window)."""
    kw = dict(top_k=12, memory_capacity=400, sink_tokens=sink)
    partial, _ = free_model(bank_heads=PARTIAL, **kw)
    every, _ = free_model(**kw)
    ids = rand_ids(1, 128, seed=3)
    got = attention_outputs(partial, ids, 1)
    banked = attention_outputs(every, ids, 1)
    window = attention_outputs(every, ids, 1, every.new_memory(1, retrieval=False))
    assert (banked - window).abs().max() > 1e-2  # retrieval really changes these heads
    torch.testing.assert_close(got[:, :, [0, 1, 4, 5]], banked[:, :, [0, 1, 4, 5]], atol=ATOL, rtol=0)
    torch.testing.assert_close(got[:, :, [2, 3, 6, 7]], window[:, :, [2, 3, 6, 7]], atol=ATOL, rtol=0)


@torch.no_grad()
def test_a_layer_with_no_banked_head_is_the_local_window():
    """Without a sink, a retrieval layer none of whose heads is banked is a plain local layer: the
    same logits as the model whose retrieval layers leave it out."""
    some = free_model(bank_heads=tuple((layer, h) for layer in (3, 4) for h in range(4)), top_k=4, memory_capacity=400)[
        0
    ]
    fewer = free_model(retrieval_layers=(3, 4), top_k=4, memory_capacity=400)[0]
    ids = rand_ids(2, 140, seed=4)
    torch.testing.assert_close(some(ids).logits, fewer(ids).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_no_dependence_on_future_tokens(sink):
    m, _ = free_model(bank_heads=PARTIAL, sink_tokens=sink)
    ids = rand_ids(1, 140, seed=3)
    base = m(ids).logits
    for t in [7, 40, 64, 65, 120]:
        changed = ids.clone()
        changed[:, t + 1 :] = rand_ids(1, 140 - t - 1, seed=100 + t)
        torch.testing.assert_close(m(changed).logits[:, : t + 1], base[:, : t + 1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_padded_batch_call_boundaries_and_decoding(sink):
    m, _ = free_model(bank_heads=PARTIAL, sink_tokens=sink)
    assert_padded_batch_equals_each_sequence_alone(m, side="left", atol=ATOL)
    seq = rand_ids(1, 150, seed=4)
    whole = m(seq).logits
    memory, pieces, s = m.new_memory(), [], 0
    for n in [1, 3, 8, 13, 40, 2, 33, 50]:
        pieces.append(m(seq[:, s : s + n], cache=memory).logits)
        s += n
    torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=ATOL, rtol=0)
    memory, steps = m(seq[:, :90]).memory, []  # one token per call: the decode buffers
    for t in range(90, 150):
        steps.append(m(seq[:, t : t + 1], cache=memory).logits)
    torch.testing.assert_close(torch.cat(steps, 1), whole[:, 90:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("sink", [0, 3])
@torch.no_grad()
def test_save_load_round_trips_and_another_layout_is_refused(tmp_path, sink):
    m, _ = free_model(bank_heads=PARTIAL, sink_tokens=sink)
    ids = rand_ids(2, 230, seed=19)
    whole = m(ids).logits
    memory = m(ids[:, :203]).memory
    memory.save(tmp_path / "mem")
    memory.save_bank(tmp_path / "bank")
    rest = m(ids[:, 203:], cache=m.load_memory(tmp_path / "mem")).logits
    torch.testing.assert_close(rest, whole[:, 203:], atol=ATOL, rtol=0)
    fresh = m.new_memory()
    fresh.load_bank(tmp_path / "bank")
    assert torch.equal(fresh.bank(0).keys[: len(memory.bank(0))], memory.bank(0).keys[: len(memory.bank(0))])

    other, _ = free_model(bank_heads=((2, 1), (2, 2), (3, 1), (4, 3)), sink_tokens=sink)  # as many heads
    with pytest.raises(BankFileError, match="bank_heads"):
        other.load_memory(tmp_path / "mem")
    with pytest.raises(BankFileError, match=r"stores the KV heads \[\[2, 0\].*banks the KV heads \[\[2, 1\]"):
        other.new_memory().load_bank(tmp_path / "bank")
    default, _ = free_model(sink_tokens=sink)
    with pytest.raises(BankFileError, match="but this model's config banks every KV head"):
        default.new_memory().load_bank(tmp_path / "bank")


def test_bytes_per_token_drop_by_the_share_of_heads_kept():
    default, _ = free_model()
    partial, _ = free_model(bank_heads=PARTIAL)
    d, p = default.new_memory().layout, partial.new_memory().layout
    assert d.kv_bytes_per_token() == 2 * 3 * 4 * 8 * 4  # K and V, 3 layers x 4 KV heads x 8 dims, float32
    assert p.kv_bytes_per_token() * 3 == d.kv_bytes_per_token()  # 4 heads kept of 12
    assert d.slot_bytes() - p.slot_bytes() == 8 * (d.kv_bytes_per_token() - p.kv_bytes_per_token())
    memory = partial(rand_ids(1, 120, seed=5)).memory
    bank = memory.bank(0)
    assert len(bank) > 0 and tuple(bank.keys[0].shape) == (4, 8, 8)
    assert bytes_per_token("memlong", partial) == round(p.bytes_per_token(), 2)


def test_config_checks():
    cfg = small_memlong_config(
        mode="training_free", memory_layer=1, retrieval_layers=(2, 3), bank_heads=[[3, 1], [2, 0]]
    )
    assert cfg.bank_heads == ((2, 0), (3, 1))  # sorted: the bank's order
    assert memlong.MemLongConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.banked_heads(4) == {1: (0,), 2: (1,)}
    assert cfg.memory_differences(
        small_memlong_config(mode="training_free", memory_layer=1, retrieval_layers=(2, 3)).to_dict()
    ) == ["bank_heads"]
    for bad, match in [
        (dict(bank_heads=((14, 0),)), "training_free"),
        (dict(mode="training_free", bank_heads=()), "at least one"),
        (dict(mode="training_free", retrieval_layers=(2, 3), bank_heads=((1, 0),)), "not a retrieval layer"),
        (dict(mode="training_free", retrieval_layers=(2, 3), bank_heads=((2, 0), (2, 0))), "duplicates"),
        (dict(mode="training_free", retrieval_layers=(2, 3), bank_heads=((2, -1),)), "0-based"),
        (dict(mode="training_free", retrieval_layers=(2, 3), bank_heads=((2, 0, 1),)), "pair"),
        (dict(mode="training_free", retrieval_layers=(2, 3), bank_heads=(("2", 0),)), "pair"),
    ]:
        with pytest.raises(memlong.MemLongConfigError, match=f"bank_heads.*{match}"):
            small_memlong_config(memory_layer=1, **bad)
    with pytest.raises(memlong.MemLongConfigError, match="KV head 4.*4 KV heads per layer"):
        free_model(bank_heads=((2, 4),))
    m, _ = free_model(bank_heads=PARTIAL)
    memlong.config.apply_overrides(m, ["bank_heads=[[2, 1]]"])  # training_free: may change at reading time
    assert m.memlong_config.bank_heads == ((2, 1),)
    with pytest.raises(memlong.MemLongConfigError, match="KV head 9"):
        memlong.config.apply_overrides(m, ["bank_heads=[[2, 9]]"])


@torch.no_grad()
def test_a_layer_with_no_banked_head_reads_only_the_sink_rows_with_the_same_result(monkeypatch):
    """A retrieval layer none of whose heads is banked attends to the sink rows alone (the other
    retrieved rows are masked out for all its heads): the same logits as attending to every row
    masked, while reading, decoding one token at a time, and in a padded batch."""
    import memlong.attention as attention

    kw = dict(bank_heads=((2, 0), (3, 1)), sink_tokens=3, top_k=4, memory_capacity=400)  # layer 4: no banked head
    m, _ = free_model(**kw)
    calls = []
    real = attention._sink_only_rows
    monkeypatch.setattr(attention, "_sink_only_rows", lambda ctx, layer: calls.append(real(ctx, layer)) or calls[-1])
    seq = rand_ids(2, 170, seed=5)
    seq[1, :20] = 0  # left padding in row 1
    mask = torch.ones_like(seq)
    mask[1, :20] = 0

    def run():
        whole = m(seq, attention_mask=mask).logits
        memory, steps = m(seq[:1, :120]).memory, []
        for t in range(120, 170):
            steps.append(m(seq[:1, t : t + 1], cache=memory).logits)
        return whole, torch.cat(steps, 1)

    fast = run()
    assert any(r is not None and r > 0 for r in calls)  # the sink-only path ran, with a sink
    monkeypatch.setattr(attention, "_sink_only_rows", lambda ctx, layer: None)
    masked = run()
    for a, b in zip(fast, masked):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
