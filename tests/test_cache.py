"""Saving a whole memory (`MemLongCache.save` / `load`) survives a process killed at any point:
the folder then holds the previous save, loadable and unchanged, or the new one complete; never a
half-written one. A child process saving is killed with SIGKILL at seeded random times spread over
its save (:mod:`killing`), and the folder is loaded after each kill."""

import copy
import functools
import hashlib
import os
import random

import pytest
import torch

import memlong
from memlong.cache import MemLongCache
from memlong.memory import BankLayout, MemoryBank
from memlong.memory.persistence import MEMORY_JSON

from killing import Killer

TAU, H, D, E, LAYERS, WINDOW = 8, 4, 64, 32, 4, 32
CHUNKS = 200  # about 3 MB of K/V: a save takes long enough (tens of ms) to be killed inside it


def config() -> memlong.MemLongConfig:
    return memlong.MemLongConfig(
        memory_layer=2,
        retrieval_layers=(3, 4),
        chunk_size=TAU,
        top_k=2,
        memory_capacity=TAU * 2 * CHUNKS,
        local_window=WINDOW,
    )


def layout() -> BankLayout:
    return BankLayout(2 * CHUNKS, TAU, H, D, E)


@functools.lru_cache(maxsize=4)
def build_memory(seed: int, chunks: int = CHUNKS) -> MemLongCache:
    """A memory as reading ``chunks`` chunks and a window would leave it (random contents, no
    model); shared: copy it before changing it."""
    g = torch.Generator().manual_seed(seed)
    m = MemLongCache(config(), layout(), LAYERS)
    for c in range(chunks):
        kv = torch.randn(H, TAU, D, generator=g)
        e = torch.randn(E, generator=g)
        m.bank(0).add(
            kv,
            -kv,
            e / e.norm(),
            chunk_id=c,
            span=(c * TAU, (c + 1) * TAU),
            token_ids=torch.randint(0, 100, (TAU,), generator=g),
            text_span=(c * 30, c * 30 + 30),
        )
    grow(m, seed)
    return m


def grow(m: MemLongCache, seed: int) -> None:
    """What reading a little more changes: the window, the tokens seen, one more banked chunk."""
    g = torch.Generator().manual_seed(seed + 1000)
    bank = m.bank(0)
    c = int(bank.chunk_ids.max()) + 1 if len(bank) else 0
    kv = torch.randn(H, TAU, D, generator=g)
    bank.add(
        kv,
        kv,
        torch.nn.functional.normalize(torch.randn(E, generator=g), dim=0),
        chunk_id=c,
        span=(c * TAU, (c + 1) * TAU),
    )
    seen = (c + 1) * TAU + WINDOW - 3
    m.seen, m.columns = [seen], seen
    for layer in range(LAYERS):
        m.win_k[layer] = torch.randn(1, H, WINDOW, D, generator=g)
        m.win_v[layer] = torch.randn(1, H, WINDOW, D, generator=g)
    m.win_pos = torch.arange(seen - WINDOW, seen).unsqueeze(0)
    m.chunk_tokens = [{seen // TAU: [1, 2, 3]}]


def bank_fingerprint(bank: MemoryBank, h=None) -> str:
    """A digest of what a bank holds, in stream order."""
    h = h or hashlib.sha256()
    slots = bank.valid.nonzero().flatten()
    slots = slots[torch.argsort(bank.chunk_ids[slots])]
    for t in (
        bank.keys[slots],
        bank.values[slots],
        bank.embeddings[slots],
        bank.chunk_ids[slots],
        bank.spans[slots],
        bank.token_ids[slots],
        bank.text_spans[slots],
        bank.counts[slots],
    ):
        h.update(t.contiguous().numpy().tobytes())
    h.update(repr(bank.evicted_report()).encode())
    return h.hexdigest()


def fingerprint(m: MemLongCache) -> str:
    """A digest of everything the memory holds (the bank, the window, the counters)."""
    h = hashlib.sha256()
    bank_fingerprint(m.bank(0), h)
    for t in (m.win_pos, *m.win_k, *m.win_v):
        h.update(t.contiguous().numpy().tobytes())
    h.update(repr((m.seen, m.columns, m.chunk_tokens)).encode())
    return h.hexdigest()


def load(directory) -> MemLongCache:
    return MemLongCache.load(directory, config(), layout(), LAYERS)


# ------------------------------------------------------------------ jobs the killed children run
def jobs(directory: str, seed: int) -> dict:
    """In the killing helper: ``save`` writes a memory built from ``seed`` over ``directory``;
    ``read_then_save`` loads it, reads a little more (:func:`grow`) and saves it back."""
    import time

    memory = build_memory(seed)

    def save():
        start = time.perf_counter()
        memory.save(directory)
        return {"start": start, "end": time.perf_counter()}

    def read_then_save():
        start = time.perf_counter()
        loaded = load(directory)
        grow(loaded, seed)
        loaded.save(directory)
        return {"start": start, "end": time.perf_counter()}

    def save_bank():
        start = time.perf_counter()
        memory.save_bank(os.path.join(directory, "bank"))
        return {"start": start, "end": time.perf_counter()}

    return {"save": save, "read_then_save": read_then_save, "save_bank": save_bank}


@pytest.fixture(scope="module")
def killer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("killed") / "mem"
    with Killer("test_cache:jobs", directory=str(directory), seed=2) as k:
        k.directory = directory
        yield k


def kill_times(killer: Killer, job: str, kills: int, seed: int) -> list[float]:
    """Seeded times spread over one whole save (measured on a save that runs to its end)."""
    marks = killer.run(None, job)["marks"]
    rng = random.Random(seed)
    return sorted(rng.uniform(0, marks["end"] * 1.1) for _ in range(kills))


def kill_until_interrupted(killer: Killer, job: str, kill_at, outcomes: list, tries: int = 10) -> None:
    """More kills, each inside a save measured again just before, until one interrupts a save (a
    loaded machine moves a save in time, so the seeded times may all miss it)."""
    rng = random.Random(job)
    for _ in range(tries):
        if any(killed and not new for killed, new in outcomes):
            return
        kill_at(rng.uniform(0, killer.run(None, job)["marks"]["end"]))


@pytest.mark.parametrize("job", ["save", "read_then_save"])
def test_a_save_killed_at_any_point_leaves_the_old_memory_or_the_new_one(killer, job):
    directory = killer.directory
    old = build_memory(seed=1)
    old_print = fingerprint(old)
    if job == "save":
        new_print = fingerprint(build_memory(seed=2))
    else:
        grown = copy.deepcopy(build_memory(seed=1))
        grow(grown, seed=2)
        new_print = fingerprint(grown)
    assert new_print != old_print
    outcomes = []
    old.save(directory)
    times = kill_times(killer, job, kills=6, seed=0)
    old.save(directory)  # the measured save replaced it

    def kill_at(seconds: float) -> None:
        old.save(directory)  # the old memory, for the kill to interrupt a save over it
        result = killer.run(seconds, job)
        found = fingerprint(load(directory))  # never an error: a loadable memory is always there
        assert found in (old_print, new_print), f"killed at {seconds:.3f} s: a memory that is neither"
        outcomes.append((result["killed"], found == new_print))

    for seconds in times:
        kill_at(seconds)
    kill_until_interrupted(killer, job, kill_at, outcomes)
    assert any(killed and not new for killed, new in outcomes), f"no kill interrupted a save: {outcomes}"
    # what the kills left behind (version folders, temporary files) is ignored, then removed by the next save
    old.save(directory)
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith("v-")) == [MEMORY_JSON]
    assert len([p for p in directory.iterdir() if p.name.startswith("v-")]) == 1
    assert fingerprint(load(directory)) == old_print


def test_a_save_keeps_its_metadata_and_a_leftover_folder_is_not_loaded(tmp_path):
    m = build_memory(seed=3, chunks=4)
    m.save(tmp_path, metadata={"writer": "test"})
    os.makedirs(tmp_path / "v-killedsave0")  # a save killed before its memory.json
    (tmp_path / "v-killedsave0" / "window.safetensors").write_bytes(b"half a file")
    back = load(tmp_path)
    assert back.metadata == {"writer": "test"} and fingerprint(back) == fingerprint(m)


def test_a_bank_save_killed_at_any_point_leaves_the_old_bank_or_the_new_one(killer):
    directory = killer.directory / "bank"
    old, new = build_memory(seed=1), build_memory(seed=2)
    old_print, new_print = bank_fingerprint(old.bank(0)), bank_fingerprint(new.bank(0))
    old.save_bank(directory)
    times = kill_times(killer, "save_bank", kills=6, seed=1)
    outcomes = []

    def kill_at(seconds: float) -> None:
        old.save_bank(directory)
        result = killer.run(seconds, "save_bank")
        m = MemLongCache(config(), layout(), LAYERS)
        m.load_bank(directory)  # never an error
        found = bank_fingerprint(m.bank(0))
        assert found in (old_print, new_print), f"killed at {seconds:.3f} s: a bank that is neither"
        outcomes.append((result["killed"], found == new_print))

    for seconds in times:
        kill_at(seconds)
    kill_until_interrupted(killer, "save_bank", kill_at, outcomes)
    assert any(killed and not new for killed, new in outcomes), f"no kill interrupted a save: {outcomes}"
    old.save_bank(directory)
    assert len(list(directory.glob("bank-*"))) == 1 and bank_fingerprint(MemoryBank.load(directory)) == old_print


def test_clone_is_an_independent_copy():
    memory = build_memory(seed=1)
    before = fingerprint(memory)
    twin = memory.clone()
    assert fingerprint(twin) == before and twin is not memory
    grow(twin, seed=2)  # what the copy reads (a question, its answer) leaves the original as it was
    assert fingerprint(memory) == before and fingerprint(twin) != before
