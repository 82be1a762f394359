"""The synthetic recall task of the training stream."""

import random

import pytest

from memlong.training import SegmentStream, plant_recall


def test_plant_recall_copies_from_beyond_the_gap():
    ids = list(range(10_000, 16_000))  # distinct tokens: every copy can be traced to its source
    out = plant_recall(ids, random.Random(0), span=100, gap=1000)
    seen: set[int] = set()
    assert [t for t in out if not (t in seen or seen.add(t))] == ids  # the document, in order
    first: dict[int, int] = {}
    for i, t in enumerate(out):
        first.setdefault(t, i)
        # a copied token sits at least span + gap after its source (beyond the local window)
        assert i == first[t] or i - first[t] >= 100 + 1000
    copies = len(range(1000, 6000, 200)) - 1  # one after every 2*span tokens, none after the last
    assert len(out) == len(ids) + copies * 100
    assert plant_recall(ids[:900], random.Random(0), 100, 1000) == ids[:900]  # too short: unchanged


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_stream_applies_recall_at_its_rate(rate):
    docs = [" ".join(str(i) for i in range(d * 1000, d * 1000 + 800)) for d in range(3)]
    stream = SegmentStream(
        documents=lambda: iter(docs),
        tokenize=lambda t: [int(w) for w in t.split()],
        batch_size=1,
        segment=64,
        recall_rate=rate,
        recall_span=32,
    )
    tokens = []
    while len(tokens) < 800:
        b = stream.next_batch()
        tokens += b.input_ids[0, : int(b.attention_mask[0].sum())].tolist()
    first = tokens[:800] if rate == 0 else tokens
    assert (len(set(first)) == len(first)) == (rate == 0)
