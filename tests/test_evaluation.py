"""window_nll: reading the prefix with a progress bar (model.ingest) scores the same as one call."""

import pytest
import torch

from memlong.evaluation import window_nll


@pytest.mark.parametrize("use_memory", [True, False])
def test_window_nll_progress_path_matches(memlong_model, use_memory):
    m, _ = memlong_model
    g = torch.Generator().manual_seed(3)
    windows = [torch.randint(0, 100, (150,), generator=g) for _ in range(2)]
    plain = window_nll(m, windows, 40, use_memory=use_memory)
    shown = window_nll(m, windows, 40, use_memory=use_memory, progress=True)
    assert shown[1] == plain[1] == 80
    assert shown[0] == pytest.approx(plain[0], rel=1e-5)
    assert window_nll(m, windows, 40)[0] != pytest.approx(window_nll(m, windows, 40, use_memory=False)[0])


def test_wilson_interval():
    from memlong.evaluation import wilson

    # published values (Wilson 1927; e.g. Newcombe 1998, table I): 0/10, 5/10, 10/10 at 95%
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    with pytest.raises(ValueError):
        wilson(0, 0)


def test_mean_interval_and_mean_of_means():
    from memlong.evaluation import mean_interval, mean_of_means, wilson

    assert mean_interval([1, 0, 1, 1]) == pytest.approx((0.75, *wilson(3, 4)))  # an accuracy: Wilson's
    mean, lo, hi = mean_interval([0.25, 0.5, 0.75, 0.5, 0.5])  # partial credit: at least the normal interval
    assert mean == 0.5 and lo <= 0.5 - 1.96 * 0.1768 / 5**0.5 + 1e-3 and hi >= 0.5 + 1.96 * 0.1768 / 5**0.5 - 1e-3
    assert 0 <= lo and hi <= 1
    # the mean of two equal cells: its interval narrower than either cell's, by sqrt(2)
    cell = mean_interval([1, 0] * 5)
    m, lo2, hi2 = mean_of_means([cell, cell])
    assert m == pytest.approx(0.5) and (hi2 - lo2) == pytest.approx((cell[2] - cell[1]) / 2**0.5, rel=1e-6)


@pytest.mark.parametrize("retrieval", [True, False])
def test_shared_reading_answers_as_a_fresh_memory_does(retrieval):
    """Prompts alike up to where a needle goes in (RULER's samples over one haystack): read together,
    each shared beginning once, every answer is the one a fresh memory gives."""
    import memlong
    from memlong.evaluation import shared_reading

    from conftest import VOCAB, set_gates, small_memlong_config, tiny_model

    model, _ = tiny_model("llama")
    m = memlong.wrap(model, small_memlong_config(), retriever=memlong.HashingRetriever(dim=32))
    set_gates(m)
    g = torch.Generator().manual_seed(5)
    hay = torch.randint(3, VOCAB, (400,), generator=g).tolist()
    needle, question = [7, 8, 9, 10, 11], torch.randint(3, VOCAB, (12,), generator=g).tolist()
    prompts = [hay[:a] + needle + hay[a:b] + question for a, b in ((150, 300), (60, 300), (150, 200), (150, 300))]
    prompts.append(torch.randint(3, VOCAB, (320,), generator=g).tolist() + question)  # nothing shared
    q = len(question)

    def answer(ids, memory, read):
        x = torch.tensor([ids[read:]])
        out = m.generate(
            x,
            memory=memory,
            attention_mask=torch.ones_like(x),
            requery=q,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )
        return out[0, x.shape[1] :].tolist()

    fresh = [answer(p, m.new_memory(1, retrieval=retrieval), 0) for p in prompts]
    seen, reads, ingested = {}, {}, []
    ingest = m.ingest
    m.ingest = lambda ids, memory, **kw: ingested.append(ids.shape[1]) or ingest(ids, memory, **kw)
    for i, memory, read in shared_reading(m, prompts, [q] * len(prompts), retrieval=retrieval):
        assert memory.seen == [read] and memory.retrieval == retrieval
        seen[i], reads[i] = answer(prompts[i], memory, read), read
    assert [seen[i] for i in range(len(prompts))] == fresh
    assert all(reads[i] == len(p) - q for i, p in enumerate(prompts))  # each read up to its question
    # the shared beginnings once: 60 tokens common to the first four, 205 to three, 305 to two
    assert sum(ingested) == 60 + (305 - 60) + (205 - 60) + (305 - 205) + 320
