"""The ``auto`` search backend: exact up to a size, HNSW above it, rebuilt after evictions."""

import torch

from memlong.memory import BankLayout, MemoryBank
from memlong.memory.index import AutoIndex

H, TAU, D, E = 1, 2, 2, 16


def unit(seed):
    v = torch.randn(E, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def add(bank, cid):
    kv = torch.full((H, TAU, D), float(cid))
    bank.add(kv, kv, unit(cid), chunk_id=cid, span=(cid * TAU, (cid + 1) * TAU))


def test_auto_switches_to_hnsw_and_agrees_with_exact():
    auto = MemoryBank(BankLayout(200, TAU, H, D, E), search_backend="auto", approximate_above=30)
    exact = MemoryBank(BankLayout(200, TAU, H, D, E), search_backend="faiss")
    for c in range(30):
        add(auto, c), add(exact, c)
    auto.search(unit(0), 4)
    assert not auto.index.approximate  # at the threshold: exact
    for c in range(30, 120):
        add(auto, c), add(exact, c)
    for q in range(20):  # small banks: HNSW with efSearch 64 finds the exact top-k
        a, sa = auto.search(unit(1000 + q), 4, count=False)
        b, sb = exact.search(unit(1000 + q), 4, count=False)
        assert a.tolist() == b.tolist() and torch.allclose(sa, sb, atol=1e-5)
    assert auto.index.approximate and auto.index.rebuilds == 1
    for c in range(120):  # every stored chunk finds itself
        slot, _ = auto.search(unit(c), 1, count=False)
        assert int(auto.chunk_ids[slot[0]]) == c
    auto.check_invariants()


def test_auto_rebuilds_after_eviction_and_never_returns_evicted_chunks():
    bank = MemoryBank(BankLayout(100, TAU, H, D, E), search_backend="auto", approximate_above=20)
    for c in range(100):
        add(bank, c)
    bank.search(unit(0), 2)
    assert bank.index.approximate
    add(bank, 100)  # full: the counter rule evicts half, the graph goes stale
    assert bank.evictions == 1 and len(bank) == 51
    rebuilds = bank.index.rebuilds
    live = {int(c) for c in bank.chunk_ids[bank.valid]}
    for q in range(100):
        slots, _ = bank.search(unit(q), 3, count=False)
        assert {int(bank.chunk_ids[s]) for s in slots} <= live
        if q in live:
            assert int(bank.chunk_ids[slots[0]]) == q
    assert bank.index.rebuilds == rebuilds + 1  # rebuilt once, at the first search
    assert bank.index.approximate and bank.index.size() == len(bank) == 51
    bank.check_invariants()


def test_auto_falls_back_to_exact_when_the_bank_shrinks():
    index = AutoIndex(E, approximate_above=10)
    emb = torch.stack([unit(c) for c in range(16)])
    valid = torch.ones(16, dtype=torch.bool)
    for s in range(16):
        index.add(s, emb[s])
    index.search(emb[3], 1, emb, valid)
    assert index.approximate
    gone = torch.arange(8)
    valid[gone] = False
    index.remove(gone)
    scores, slots = index.search(emb[12], 2, emb, valid)
    assert not index.approximate and index.size() == 8
    assert int(slots[0]) == 12 and set(slots.tolist()) <= set(range(8, 16))


def test_auto_bank_survives_save_and_load(tmp_path):
    bank = MemoryBank(BankLayout(100, TAU, H, D, E), search_backend="auto", approximate_above=20)
    for c in range(40):
        add(bank, c)
    bank.save(tmp_path / "bank")
    back = MemoryBank.load(tmp_path / "bank")
    assert back.search_backend == "auto" and back.approximate_above == 20
    slots, _ = back.search(unit(7), 1, count=False)
    assert int(back.chunk_ids[slots[0]]) == 7 and back.index.approximate


def test_every_backend_breaks_ties_by_score_then_chunk_id():
    """Equal scores (here: chunks with the same embedding) come out oldest first, the same in
    every backend (HNSW found others before), and a tie straddling the k-th place is settled by
    chunk id, not by the index."""
    twins = unit(1)
    picked = {}
    for backend in ("torch", "faiss", "auto"):
        bank = MemoryBank(BankLayout(200, TAU, H, D, E), search_backend=backend, approximate_above=5)
        # 40 chunks; chunk ids 3, 7, 11, ..., 39 share one embedding
        for cid in range(40):
            kv = torch.full((H, TAU, D), float(cid))
            bank.add(
                kv, kv, twins if cid % 4 == 3 else unit(100 + cid), chunk_id=cid, span=(cid * TAU, (cid + 1) * TAU)
            )
        slots, scores = bank.search(twins, 4, count=False)
        picked[backend] = [int(bank.chunk_ids[s]) for s in slots]
        assert torch.allclose(scores, torch.ones(4), atol=1e-5)
        assert bank.index.size() == 40
    assert picked["torch"] == picked["faiss"] == picked["auto"] == [3, 7, 11, 15]


def test_rescore_reorders_the_candidates_and_keeps_k():
    bank = MemoryBank(BankLayout(100, TAU, H, D, E), search_backend="faiss")
    for c in range(20):
        add(bank, c)
    plain = bank.retrieve(unit(3), 2)
    assert 3 in bank.chunk_ids[plain].tolist()
    # a rescoring that prefers chunk 17 above all: it wins if among the candidates, ties by chunk id
    prefer = lambda slots, scores: (bank.chunk_ids[slots] == 17).float() + 0 * scores  # noqa: E731
    got = bank.retrieve(unit(3), 2, rescore=prefer, candidates=20)
    assert bank.chunk_ids[got].tolist() == [0, 17]  # 17 first by score, then the oldest tie; returned in stream order
    assert bank.retrieve(unit(3), 2, rescore=prefer, candidates=2).tolist() == plain.tolist()  # no more than k: off
