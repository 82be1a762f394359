import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memlong.memory import BankFileError, BankLayout, MemoryBank

H, TAU, D, E = 2, 4, 3, 8


def make_bank(capacity=10, eviction="counter", backend="torch"):
    return MemoryBank(BankLayout(capacity, TAU, H, D, E), eviction=eviction, search_backend=backend)


def unit(seed):
    v = torch.randn(E, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def add(bank, cid, emb=None):
    kv = torch.full((H, TAU, D), float(cid))
    return bank.add(
        kv,
        -kv,
        unit(cid) if emb is None else emb,
        chunk_id=cid,
        span=(cid * TAU, (cid + 1) * TAU),
        token_ids=torch.arange(TAU) + cid,
    )


def ids(bank):
    return [e["chunk_id"] for e in bank.entries()]


def test_counter_rule_hand_computed():
    # C=10: drop oldest floor(0.1*10)=1, keep newest 1, delete least-retrieved of the
    # middle 8 until floor(0.5*10)=5 remain.
    bank = make_bank(10)
    for c in range(10):
        add(bank, c)
    counts = [9, 0, 5, 1, 7, 2, 8, 3, 0, 4]
    for e in bank.entries():
        bank.counts[e["slot"]] = counts[e["chunk_id"]]
    # oldest (id 0) goes despite its 9 retrievals; the middle loses 1, 8 (0), 3 (1), 5 (2)
    assert sorted(int(bank.chunk_ids[s]) for s in bank.eviction_plan()) == [0, 1, 3, 5, 8]
    add(bank, 10)  # full -> evicts, then stores chunk 10
    assert ids(bank) == [2, 4, 6, 7, 9, 10]
    assert bank.evictions == 1
    bank.check_invariants()


def test_counter_rule_ties_delete_older_first():
    bank = make_bank(10)
    for c in range(10):
        add(bank, c)
    bank.counts[bank.valid] = 1
    add(bank, 10)
    assert ids(bank) == [5, 6, 7, 8, 9, 10]


def test_fifo_drops_oldest_one_at_a_time():
    bank = make_bank(4, eviction="fifo")
    for c in range(6):
        add(bank, c)
    assert ids(bank) == [2, 3, 4, 5]
    bank.check_invariants()


def test_search_finds_planted_chunk_and_counts_it():
    bank = make_bank(64)
    for c in range(40):
        add(bank, c)
    target = bank.entries()[3]
    q = bank.embeddings[target["slot"]] + 0.05 * unit(999)
    slots, scores = bank.search(q / q.norm(), k=3)
    assert int(slots[0]) == target["slot"]
    assert scores[0] >= scores[1] >= scores[2]
    assert int(bank.counts[target["slot"]]) == 1
    k, v = bank.gather(slots)
    assert k.shape == (H, 3 * TAU, D) and v.shape == k.shape


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_retrieve_with_continuations(backend):
    bank = make_bank(64, backend=backend)
    for c in [0, 1, 2, 5, 6, 9]:  # 3, 4, 7, 8 absent (evicted or never stored)
        add(bank, c)
    by_id = {e["chunk_id"]: e["slot"] for e in bank.entries()}

    def query(cid):
        return bank.embeddings[by_id[cid]]

    assert [int(bank.chunk_ids[s]) for s in bank.retrieve(query(5), 1)] == [5]
    # hit 5 -> 5 and its continuation 6; hit 2 -> 2 only (3 is gone); stream order, no duplicates
    assert [int(bank.chunk_ids[s]) for s in bank.retrieve(query(5), 1, (0, 1))] == [5, 6]
    assert [int(bank.chunk_ids[s]) for s in bank.retrieve(query(2), 1, (0, 1))] == [2]
    assert [int(bank.chunk_ids[s]) for s in bank.retrieve(query(1), 1, (1,))] == [2]
    q = query(1) + query(0)
    got = [int(bank.chunk_ids[s]) for s in bank.retrieve(q / q.norm(), 2, (0, 1))]
    assert got == [0, 1, 2]  # hits 0 and 1; 1 is also 0's continuation: returned once
    # every returned chunk was counted once per retrieval
    counts = {e["chunk_id"]: e["count"] for e in bank.entries()}
    assert counts == {0: 1, 1: 1, 2: 3, 5: 2, 6: 1, 9: 0}
    k, _ = bank.gather(bank.retrieve(query(5), 1, (0, 1)))
    assert k[0, :, 0].tolist() == [5.0] * TAU + [6.0] * TAU
    # order="score": the worst hit first, the best last, each followed by what its offsets bring;
    # a chunk two hits bring keeps its later place; gather(keep_order=True) reads them so
    stored = set(by_id)
    for best in (0, 1, 5):
        hits = [int(bank.chunk_ids[s]) for s in bank.best(query(best), 3)[0]]
        assert hits[0] == best
        want = []
        for j in reversed(hits):
            want = [c for c in want if c not in (j, j + 1)] + [c for c in (j, j + 1) if c in stored]
        slots = bank.retrieve(query(best), 3, (0, 1), order="score")
        assert [int(bank.chunk_ids[s]) for s in slots] == want and want[-2:] == [best, best + 1]
        assert bank.gather(slots, keep_order=True)[0][0, ::TAU, 0].tolist() == [float(c) for c in want]
        assert bank.gather(slots)[0][0, ::TAU, 0].tolist() == sorted(float(c) for c in want)  # default: stream order


def test_torch_and_faiss_agree():
    a, b = make_bank(32, backend="torch"), make_bank(32, backend="faiss")
    for c in range(40):  # evicts in both
        add(a, c)
        add(b, c)
        if c % 3 == 0:
            q = unit(1000 + c)
            sa, _ = a.search(q, 4)
            sb, _ = b.search(q, 4)
            assert sa.tolist() == sb.tolist()
    assert ids(a) == ids(b)
    a.check_invariants()
    b.check_invariants()


def test_rejects_bad_shapes_and_order():
    bank = make_bank()
    add(bank, 3)
    with pytest.raises(ValueError, match="chunk ids must increase"):
        add(bank, 2)
    with pytest.raises(ValueError, match="chunk K/V must be"):
        bank.add(torch.zeros(H, TAU + 1, D), torch.zeros(H, TAU + 1, D), unit(0), 9, (0, 4))


# ---------------------------------------------------------------- property-based
class ReferenceBank:
    """An independent, list-based model of the paper's counter rule / FIFO."""

    def __init__(self, capacity, eviction):
        self.C, self.eviction, self.items = capacity, eviction, []  # [cid, count], oldest first

    def add(self, cid):
        if len(self.items) >= self.C:
            if self.eviction == "fifo":
                self.items.pop(0)
            else:
                n, C = len(self.items), self.C
                n_old = math.floor(0.1 * C)
                n_new = math.floor(0.1 * C)
                keep = math.floor(0.5 * C)
                rest = self.items[n_old:]
                middle, newest = rest[: len(rest) - n_new], rest[len(rest) - n_new :]
                more = (n - keep) - n_old
                ranked = sorted(range(len(middle)), key=lambda i: (middle[i][1], i))
                drop = set(ranked[:more])
                self.items = [m for i, m in enumerate(middle) if i not in drop] + newest
        self.items.append([cid, 0])

    def bump(self, cids):
        for it in self.items:
            if it[0] in cids:
                it[1] += 1


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(min_value=2, max_value=25),
    eviction=st.sampled_from(["counter", "fifo"]),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 10_000), st.integers(1, 4)), min_size=1, max_size=80),
)
def test_bank_matches_reference_under_random_ops(capacity, eviction, ops):
    bank, ref = make_bank(capacity, eviction), ReferenceBank(capacity, eviction)
    next_id = 0
    for is_add, seed, k in ops:
        if is_add:
            add(bank, next_id)
            ref.add(next_id)
            next_id += 1
        else:
            slots, _ = bank.search(unit(seed), k)
            ref.bump({int(bank.chunk_ids[s]) for s in slots})
        bank.check_invariants()
        assert [[e["chunk_id"], e["count"]] for e in bank.entries()] == ref.items
        for e in bank.entries():  # K/V and embedding stayed with their chunk
            s, c = e["slot"], e["chunk_id"]
            assert bool((bank.keys[s] == c).all()) and bool((bank.values[s] == -c).all())
            assert torch.allclose(bank.embeddings[s], unit(c))
            assert bank.token_ids[s].tolist() == list(range(c, c + TAU))


# ---------------------------------------------------------------- persistence
def filled(n=12, capacity=10):
    bank = make_bank(capacity)
    for c in range(n):
        add(bank, c)
        bank.search(unit(c + 100), 2)
    return bank


def test_save_load_round_trip(tmp_path):
    bank = filled()
    bank.save(tmp_path / "b", metadata={"doc": "x"})
    back = MemoryBank.load(tmp_path / "b", expected=bank.layout)
    assert [(e["chunk_id"], e["span"], e["count"]) for e in back.entries()] == [
        (e["chunk_id"], e["span"], e["count"]) for e in bank.entries()
    ]
    for e, f in zip(bank.entries(), back.entries()):
        assert torch.equal(bank.keys[e["slot"]], back.keys[f["slot"]])
        assert torch.equal(bank.embeddings[e["slot"]], back.embeddings[f["slot"]])
        assert torch.equal(bank.token_ids[e["slot"]], back.token_ids[f["slot"]])
    back.check_invariants()
    # it keeps working: same search results, same eviction behaviour
    q = unit(7)
    assert bank.search(q, 3, count=False)[1].tolist() == back.search(q, 3, count=False)[1].tolist()
    add(bank, 50)
    add(back, 50)
    assert ids(bank) == ids(back)


def test_resave_replaces_atomically(tmp_path):
    bank = filled()
    bank.save(tmp_path)
    add(bank, 99)
    bank.save(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len([f for f in files if f.endswith(".safetensors")]) == 1 and "bank.json" in files
    assert 99 in ids(MemoryBank.load(tmp_path))


def test_truncated_file_fails_clearly(tmp_path):
    bank = filled()
    bank.save(tmp_path)
    tfile = next(tmp_path.glob("bank-*.safetensors"))
    data = tfile.read_bytes()
    tfile.write_bytes(data[: len(data) // 2])
    with pytest.raises(BankFileError, match="truncated or corrupted"):
        MemoryBank.load(tmp_path)


def test_missing_and_mismatched(tmp_path):
    with pytest.raises(BankFileError, match="not a saved memory bank"):
        MemoryBank.load(tmp_path)
    bank = filled()
    bank.save(tmp_path)
    other = BankLayout(10, TAU, H, D + 1, E)
    with pytest.raises(BankFileError, match="different model or retriever"):
        MemoryBank.load(tmp_path, expected=other)
    (tmp_path / "bank.json").write_text('{"format": "memlong-bank-v1", "tens')
    with pytest.raises(BankFileError, match="not valid JSON"):
        MemoryBank.load(tmp_path)
    for f in tmp_path.glob("bank-*.safetensors"):
        f.unlink()
    bank.save(tmp_path)
    next(tmp_path.glob("bank-*.safetensors")).unlink()
    with pytest.raises(BankFileError, match="missing"):
        MemoryBank.load(tmp_path)


# ---------------------------------------------------------------- compressed K/V, storage tiers
def random_bank(layout, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = MemoryBank(layout, search_backend="torch")
    for c in range(n):
        k = torch.randn(H, TAU, D, generator=g) * (c + 1)
        bank.add(k, -2 * k, unit(c), chunk_id=c, span=(c * TAU, (c + 1) * TAU))
    return bank


@pytest.mark.parametrize("dtype, tol", [(torch.int8, 1 / 127), (torch.float8_e4m3fn, 1 / 8)])
def test_compressed_kv_round_trip(dtype, tol, tmp_path):
    exact = random_bank(BankLayout(10, TAU, H, D, E))
    small = random_bank(BankLayout(10, TAU, H, D, E, dtype=dtype, compute_dtype=torch.float32))
    slots = torch.arange(6)
    (k0, v0), (k1, v1) = exact.gather(slots), small.gather(slots)
    assert k1.dtype == torch.float32 and k1.shape == k0.shape
    # absmax scaling per (head, token): the error is bounded relative to the row's largest value
    bound = k0.abs().amax(-1, keepdim=True) * tol
    assert bool(((k1 - k0).abs() <= bound + 1e-6).all()) and bool(((v1 - v0).abs() <= 2 * bound + 1e-6).all())
    assert small.keys.dtype == dtype and small.layout.kv_bytes_per_token() == 2 * H * D + 2 * H * 4
    small.save(tmp_path)
    back = MemoryBank.load(tmp_path, expected=small.layout)
    assert back.keys.dtype == dtype
    kb, vb = back.gather(slots)
    assert torch.equal(kb, k1) and torch.equal(vb, v1)


def test_mmap_tier_matches_memory_and_leaves_no_files(tmp_path):
    plain = random_bank(BankLayout(10, TAU, H, D, E), n=9)  # grows 4 -> 8 -> 10 slots (3 pages), evicts once
    mapped = random_bank(BankLayout(10, TAU, H, D, E, mmap_dir=str(tmp_path / "kv")), n=9)
    assert ids(plain) == ids(mapped)
    slots = mapped.valid.nonzero().flatten()
    for a, b in zip(plain.gather(slots), mapped.gather(slots)):
        assert torch.equal(a, b)
    assert all(page.untyped_storage().filename is not None for page in mapped.keys.pages)  # really file-backed
    assert list((tmp_path / "kv").iterdir()) == []  # unlinked at once: nothing to clean up


def test_window_index_follows_its_chunk_through_growth_eviction_and_save(tmp_path):
    """The window index (``BankLayout.index_window``): a chunk has no window embeddings until they
    are set (``unwindowed`` lists it), they stay with its slot through growth, eviction (a reused
    slot starts without) and save/load, ``window_scores`` is the best window's cosine and refuses
    chunks not indexed; a bank saved without an index loads without one."""
    from memlong.memory.bank import window_starts

    layout = BankLayout(6, 8, H, D, E, index_window=4)
    assert window_starts(8, 4) == [0, 2, 4] and layout.windows == 3 and BankLayout(6, 8, H, D, E).windows == 0
    bank = MemoryBank(layout, eviction="fifo", search_backend="torch")

    def windows(cid):
        w = torch.randn(3, E, generator=torch.Generator().manual_seed(100 + cid))
        return w / w.norm(dim=-1, keepdim=True)

    kv = torch.zeros(H, 8, D)
    with pytest.raises(ValueError, match="window_embeddings must be"):
        bank.add(kv, kv, unit(0), chunk_id=0, span=(0, 8), window_embeddings=torch.zeros(2, E))
    for cid in range(4):
        bank.add(kv, kv, unit(cid), chunk_id=cid, span=(cid * 8, cid * 8 + 8), window_embeddings=windows(cid))
    for cid in range(4, 10):  # 6 slots: chunks 6-9 reuse the slots of evicted chunks 0-3, unindexed
        bank.add(kv, kv, unit(cid), chunk_id=cid, span=(cid * 8, cid * 8 + 8))
    slots = torch.tensor([e["slot"] for e in bank.entries()])
    assert torch.equal(bank.unwindowed(), slots)  # 4 and 5 were never indexed; 6-9 took evicted slots
    with pytest.raises(RuntimeError, match="no window embeddings yet"):
        bank.window_scores(slots, unit(99))
    bank.set_window_embeddings(slots[:3], torch.stack([windows(c) for c in (4, 5, 6)]))
    assert torch.equal(bank.unwindowed(), slots[3:])
    bank.set_window_embeddings(slots[3:], torch.stack([windows(c) for c in (7, 8, 9)]))
    bank.check_invariants()
    q = unit(99)
    want = torch.stack([(windows(e["chunk_id"]).half().float() @ q).max() for e in bank.entries()])
    assert torch.allclose(bank.window_scores(slots, q), want, atol=1e-6)

    bank.save(tmp_path / "with")
    back = MemoryBank.load(tmp_path / "with", expected=layout)
    back.check_invariants()
    back_slots = torch.tensor([e["slot"] for e in back.entries()])
    assert (
        torch.equal(back.window_scores(back_slots, q), bank.window_scores(slots, q)) and not back.unwindowed().numel()
    )

    plain = MemoryBank(BankLayout(6, 8, H, D, E), search_backend="torch")
    plain.add(kv, kv, unit(0), chunk_id=0, span=(0, 8), window_embeddings=windows(0))  # ignored: no index
    with pytest.raises(ValueError, match="keeps no window index"):
        plain.set_window_embeddings(torch.tensor([0]), windows(0).unsqueeze(0))
    plain.save(tmp_path / "without")
    loaded = MemoryBank.load(tmp_path / "without", expected=layout)
    assert loaded.layout.index_window == 0 and loaded.window_embeddings is None
    back.drop_window_index()
    assert back.layout.windows == 0 and back.window_embeddings is None and not back.windowed.any()
    back.add(kv, kv, unit(10), chunk_id=10, span=(80, 88))
    back.check_invariants()


def test_lexical_scores_weigh_rare_words_and_word_pairs():
    """A question's words as BM25 over token ids: a word every chunk holds adds almost nothing, a
    rare pair of the question's tokens held together beats the same tokens apart; document
    frequencies come from the whole corpus, so scoring some chunks gives those rows of the whole."""
    from memlong.memory.bank import lexical_scores

    corpus = torch.tensor([[1, 2, 3, 4], [1, 5, 6, 4], [1, 7, 8, 4], [1, 8, 2, 7], [9, 9, 9, 9]])
    question = [1, 7, 8]
    s = lexical_scores(corpus, question, corpus)
    assert int(s.argmax()) == 2 and s[2] > s[3] > s[0] == s[1] > s[4] == 0 and abs(float(s[2]) - 1) < 1e-6
    assert float(s[0]) < 0.1 * float(s[2]) and float(s.max()) <= 1.0
    torch.testing.assert_close(lexical_scores(corpus, question, corpus[[3, 1]]), s[[3, 1]])
    assert lexical_scores(corpus, [], corpus).eq(0).all()
    bank = make_bank()
    for i, toks in enumerate(corpus):
        bank.add(
            torch.zeros(H, TAU, D),
            torch.zeros(H, TAU, D),
            unit(i),
            chunk_id=i,
            span=(TAU * i, TAU * i + TAU),
            token_ids=toks,
        )
    slots = torch.tensor([e["slot"] for e in bank.entries()])
    torch.testing.assert_close(bank.lexical_scores(slots, question), s)


def test_lexical_scores_match_a_plain_count_over_many_chunks():
    """The presence lookup (sorted terms, searchsorted) against a plain set count, over more
    chunks than one batch of it (8,192), with question words no chunk holds."""
    import math

    from memlong.memory.bank import _BIGRAM, lexical_scores

    torch.manual_seed(0)
    corpus = torch.randint(0, 40, (8200, 6))
    question = [3, 7, 7, 12, 99, 3]

    def grams(row):
        row = [int(t) for t in row]
        return set(row) | {a * _BIGRAM + b for a, b in zip(row, row[1:])}

    terms = grams(question)
    held = [grams(row) & terms for row in corpus]
    n = len(held)
    idf = {t: math.log1p((n - sum(t in h for h in held) + 0.5) / (sum(t in h for h in held) + 0.5)) for t in terms}
    total = sum(idf.values())
    expected = torch.tensor([sum(idf[t] for t in h) / total for h in held])
    torch.testing.assert_close(lexical_scores(corpus, question), expected)
    torch.testing.assert_close(lexical_scores(corpus, question, corpus[8190:]), expected[8190:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_a_dropped_bank_is_freed_at_once(dtype):
    """No reference cycle through the bank's K/V pages: a bank (and its K/V) goes as soon as the
    last reference does, not when the garbage collector next runs (an evaluation copying a
    memory per input grew to 15 GB before a collection)."""
    import weakref

    from conftest import collector_off

    bank = MemoryBank(BankLayout(10, TAU, H, D, E, dtype=dtype), search_backend="torch")
    add(bank, 0)
    gone = weakref.ref(bank)
    with collector_off():
        del bank
        assert gone() is None


@pytest.mark.parametrize(
    "layout",
    [
        BankLayout(10, TAU, H, D, E),
        BankLayout(10, TAU, H, D, E, index_window=2),
        BankLayout(10, TAU, H, D, E, dtype=torch.int8, compute_dtype=torch.float32),
    ],
)
def test_slot_bytes_is_what_a_slot_holds(layout):
    """``BankLayout.slot_bytes`` (what ``bytes_per_token`` reports per banked token) is what
    ``nbytes`` counts per slot, with a window index and with compressed K/V too."""
    bank = random_bank(layout, n=9)
    assert bank.num_slots > 0 and bank.nbytes() == bank.num_slots * layout.slot_bytes()
    assert layout.bytes_per_token() == layout.slot_bytes() / TAU > layout.kv_bytes_per_token()


@pytest.mark.parametrize(
    "eviction, capacity, fractions",
    [
        ("counter", 10, (0.1, 0.1, 0.5)),
        ("counter", 7, (0.1, 0.2, 0.9)),
        ("fifo", 4, (0.1, 0.1, 0.5)),
        ("counter", 1, (0.0, 0.0, 0.5)),
    ],
)
def test_chunks_after_predicts_what_eviction_leaves(eviction, capacity, fractions):
    keep, drop, target = fractions
    bank = MemoryBank(
        BankLayout(capacity, TAU, H, D, E),
        eviction=eviction,
        keep_newest=keep,
        drop_oldest=drop,
        target=target,
        search_backend="torch",
    )
    predicted = [bank.chunks_after(n) for n in range(40)]
    for n in range(40):
        assert len(bank) == predicted[n], n
        assert bank.chunks_after(0) == len(bank) and bank.chunks_after(3) == make_like(bank, 3)
        add(bank, n)


def make_like(bank, n):
    """Chunks ``bank`` holds after ``n`` more adds, by adding them to a copy."""
    import copy

    other = copy.deepcopy(bank)
    start = int(other.chunk_ids.max()) + 1 if len(other) else 0
    for c in range(start, start + n):
        add(other, c)
    return len(other)


def test_eviction_is_recorded_with_its_token_and_text_spans(tmp_path):
    bank = make_bank(10)
    for c in range(10):
        kv = torch.full((H, TAU, D), float(c))
        bank.add(kv, -kv, unit(c), chunk_id=c, span=(c * TAU, (c + 1) * TAU), text_span=(c * 10, c * 10 + 10))
    bank.counts[bank.valid] = torch.tensor([9, 0, 5, 1, 7, 2, 8, 3, 0, 4])[bank.chunk_ids[bank.valid]]
    assert bank.evicted_report() == {"rounds": 0, "chunks": 0, "tokens": 0, "spans": [], "text_spans": []}
    add(bank, 10)  # evicts 0, 1, 3, 5, 8 (test_counter_rule_hand_computed)
    report = bank.evicted_report()
    assert report["rounds"] == 1 and report["chunks"] == 5 and report["tokens"] == 5 * TAU
    assert report["spans"] == [[0, 2 * TAU], [3 * TAU, 4 * TAU], [5 * TAU, 6 * TAU], [8 * TAU, 9 * TAU]]
    assert report["text_spans"] == [[0, 20], [30, 40], [50, 60], [80, 90]]
    bank.save(tmp_path)
    assert MemoryBank.load(tmp_path).evicted_report() == report  # kept with the saved bank
    bank.reset()
    assert bank.evicted_report()["chunks"] == 0 and bank.evicted_report()["spans"] == []


def test_merged_ranges_stay_sorted_and_disjoint():
    from memlong.memory.bank import merge_range

    ranges = []
    for r in ([8, 12], [0, 4], [4, 6], [20, 24], [12, 16], [30, 31], [2, 21]):
        merge_range(ranges, r)
    assert ranges == [[0, 24], [30, 31]]


@pytest.mark.parametrize("dtype, window", [(torch.float32, 0), (torch.int8, 2)])
def test_slot_bytes_is_what_a_used_slot_takes(dtype, window):
    bank = MemoryBank(BankLayout(64, TAU, H, D, E, dtype=dtype, index_window=window), search_backend="torch")
    for c in range(9):
        add(bank, c)
    assert bank.slot_bytes() == bank.nbytes() / bank.num_slots + E * 4  # + the index's copy of the embedding


def test_a_save_cleans_tensor_files_left_by_a_killed_save(tmp_path):
    bank = filled()
    bank.save(tmp_path)
    (tmp_path / "bank-deadbeef0000.safetensors.tmp").write_bytes(b"half")  # killed while writing
    (tmp_path / "bank-deadbeef0001.safetensors").write_bytes(b"whole, never named in bank.json")
    assert ids(MemoryBank.load(tmp_path)) == ids(bank)  # ignored by load
    bank.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("bank-")) == [
        json.loads((tmp_path / "bank.json").read_text())["tensors"]
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_save_and_load_go_a_batch_of_slots_at_a_time_and_write_plain_safetensors(dtype, tmp_path, monkeypatch):
    """A bank larger than RAM (memory-mapped) is saved and loaded without being gathered whole:
    K/V move a page's worth of slots at a time; the file stays what safetensors reads."""
    from safetensors.torch import load_file

    import memlong.memory.bank as bank_module

    layout = BankLayout(10, TAU, H, D, E, dtype=dtype, compute_dtype=torch.float32, mmap_dir=str(tmp_path / "kv"))
    bank = random_bank(layout, n=9)  # evicts once: slots out of chunk order
    gathered = []
    real = bank_module.PagedTensor.__getitem__

    def spy(self, index):
        out = real(self, index)
        if not isinstance(index, int):
            gathered.append(out.numel() * out.element_size())
        return out

    page = 2 * H * TAU * D * torch.empty(0, dtype=dtype).element_size()
    monkeypatch.setattr(bank_module, "PAGE_BYTES", page)  # two slots of K a batch
    monkeypatch.setattr(bank_module.PagedTensor, "__getitem__", spy)
    bank.save(tmp_path / "b")
    assert len(gathered) >= 4 and max(gathered) <= page
    slots = bank.valid.nonzero().flatten()
    slots = slots[torch.argsort(bank.chunk_ids[slots])]
    saved = load_file(next((tmp_path / "b").glob("bank-*.safetensors")))
    assert torch.equal(saved["keys"], real(bank.keys, slots)) and torch.equal(saved["values"], real(bank.values, slots))
    assert torch.equal(saved["chunk_ids"], bank.chunk_ids[slots]) and torch.equal(
        saved["embeddings"], bank.embeddings[slots]
    )
    if layout.quantized:
        assert torch.equal(saved["key_scales"], real(bank.key_scales, slots))
    back = MemoryBank.load(tmp_path / "b", expected=layout)
    assert all(page.untyped_storage().filename is not None for page in back.keys.pages)  # loaded into mapped pages
    assert [e["chunk_id"] for e in back.entries()] == [e["chunk_id"] for e in bank.entries()]
    (k0, v0), (k1, v1) = bank.gather(slots), back.gather(torch.arange(len(slots)))
    assert torch.equal(k0, k1) and torch.equal(v0, v1)
    back.check_invariants()


def test_a_copy_of_a_memory_mapped_bank_is_memory_mapped_and_independent(tmp_path):
    import copy

    bank = random_bank(BankLayout(10, TAU, H, D, E, mmap_dir=str(tmp_path / "kv")), n=6)
    twin = copy.deepcopy(bank)
    assert all(page.untyped_storage().filename is not None for page in twin.keys.pages + twin.values.pages)
    slots = bank.valid.nonzero().flatten()
    assert all(torch.equal(a, b) for a, b in zip(bank.gather(slots), twin.gather(slots)))
    add_to = twin.keys.pages[0]
    add_to.fill_(7.0)
    assert not torch.equal(bank.keys.pages[0], add_to)
    assert list((tmp_path / "kv").iterdir()) == []
