"""Packed, resumable training stream over a corpus split."""

import pytest
import torch

from memlong.data.corpus import write_corpus
from memlong.data.packing import PackedStream, index_jsonl_by_source
from memlong.data.sources import Document, SkipCounter


class WordTokenizer:
    """Tiny deterministic tokenizer: one id per character, EOS = 0."""

    eos_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [1 + (ord(c) % 50) for c in text]


@pytest.fixture
def train_file(tmp_path):
    docs = [Document(f"{src}/{i}", src, f"{src} document {i} " * (i % 5 + 1)) for src in ("a", "b") for i in range(30)]
    write_corpus(tmp_path, docs, SkipCounter(), 0.0, 0.0)
    return tmp_path / "train.jsonl"


def test_index_groups_by_source(train_file):
    index = index_jsonl_by_source(train_file)
    assert sorted(index) == ["a", "b"] and len(index["a"]) == len(index["b"]) == 30


def test_windows_shape_and_separator(train_file):
    stream = PackedStream(train_file, WordTokenizer(), seq_len=16, batch_size=3, seed=1)
    batches = [stream.next_batch() for _ in range(20)]
    assert all(b.shape == (3, 16) and b.dtype == torch.long for b in batches)
    flat = torch.cat(batches, dim=1)
    assert (flat == 0).any()  # documents are separated by EOS
    assert not torch.equal(flat[0], flat[1])  # rows are independent streams


def test_resume_gives_the_same_windows(train_file):
    a = PackedStream(train_file, WordTokenizer(), 16, 2, seed=7)
    for _ in range(13):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(40)]  # runs past one epoch of each source

    b = PackedStream(train_file, WordTokenizer(), 16, 2, seed=7)
    b.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(expected, (b.next_batch() for _ in range(40))))

    c = PackedStream(train_file, WordTokenizer(), 32, 2, seed=7)
    with pytest.raises(ValueError, match="seq_len"):
        c.load_state_dict(state)


def test_source_weights(train_file):
    only_b = PackedStream(train_file, WordTokenizer(), 16, 1, source_weights={"a": 0.0, "b": 1.0})
    text_ids = torch.cat([only_b.next_batch() for _ in range(10)], dim=1)
    # Only source a's texts ("a document i ...") contain the letter "a".
    assert not (text_ids == 1 + ord("a") % 50).any()
    with pytest.raises(ValueError, match="not in"):
        PackedStream(train_file, WordTokenizer(), 16, 1, source_weights={"zzz": 1.0})
    with pytest.raises(ValueError, match="positive"):
        PackedStream(train_file, WordTokenizer(), 16, 1, source_weights={"a": 0.0, "b": 0.0})
