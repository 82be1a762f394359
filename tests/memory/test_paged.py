"""PagedTensor behaves like one tensor, and growing a bank never moves what it stores."""

import random

import pytest
import torch

import memlong.memory.bank as bank_module
from memlong.memory.bank import BankLayout, MemoryBank
from memlong.memory.paged import PagedTensor


def test_paged_tensor_matches_a_plain_tensor():
    rng = random.Random(0)
    paged = PagedTensor(lambda n: torch.zeros(n, 3, 2))
    plain = torch.zeros(0, 3, 2)
    for size in (1, 4, 2, 7):
        paged.extend(size)
        plain = torch.cat([plain, torch.zeros(size, 3, 2)])
        for _ in range(20):
            rows = torch.tensor([rng.randrange(len(plain)) for _ in range(rng.randint(1, 5))]).unique()
            value = torch.randn(len(rows), 3, 2)
            paged[rows] = value
            plain[rows] = value
        i = rng.randrange(len(plain))
        paged[i] = torch.full((3, 2), float(i))
        plain[i] = float(i)
        paged[1:3] = torch.ones(3, 2)  # one row broadcast
        plain[1:3] = 1.0
        assert paged.shape == plain.shape and len(paged.pages) <= 4
        assert torch.equal(paged[slice(None)], plain)
        order = torch.randperm(len(plain))
        assert torch.equal(paged[order], plain[order])  # a copy in the order asked
        assert torch.equal(paged[-1], plain[-1])
    assert paged.numel() * paged.element_size() == plain.numel() * 4
    with pytest.raises(IndexError, match="out of range"):
        paged[torch.tensor([len(plain)])]
    with pytest.raises(IndexError, match="out of range"):
        paged[len(plain)]
    with pytest.raises(IndexError, match="integer row indices"):
        paged[torch.ones(len(plain), dtype=torch.bool)]


def test_bank_growth_adds_pages_and_never_moves_stored_chunks(monkeypatch):
    tau, h, d = 4, 2, 8
    per_slot = h * tau * d * 4
    monkeypatch.setattr(bank_module, "PAGE_BYTES", 8 * per_slot)  # pages of at most 8 chunks
    bank = MemoryBank(BankLayout(40, tau, h, d, 6))
    pointers = {}
    for c in range(40):
        bank.add(
            torch.full((h, tau, d), float(c)),
            -torch.full((h, tau, d), float(c)),
            torch.nn.functional.normalize(torch.randn(6), dim=0),
            c,
            (c * tau, (c + 1) * tau),
        )
        for i, page in enumerate(bank.keys.pages):
            assert pointers.setdefault(i, page.data_ptr()) == page.data_ptr()  # never reallocated
    sizes = [p.shape[0] for p in bank.keys.pages]
    assert sizes == [4, 4, 8, 8, 8, 8] and sum(sizes) == bank.num_slots == 40
    bank.check_invariants()
    k, v = bank.gather(torch.tensor([39, 3, 17]))  # across pages, back in stream order
    assert k.shape == (h, 3 * tau, d)
    assert torch.equal(k[:, :tau], torch.full((h, tau, d), 3.0))
    assert torch.equal(k[:, tau : 2 * tau], torch.full((h, tau, d), 17.0))
    assert torch.equal(v[:, 2 * tau :], torch.full((h, tau, d), -39.0))
