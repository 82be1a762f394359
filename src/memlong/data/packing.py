"""Streaming, resumable packing of a corpus split into fixed-length training windows.

The stream keeps ``streams`` independent document streams open at once. Each draws documents (a
source chosen by weight, then the next document of that source's shuffled order), tokenizes them
on the fly, appends the end-of-text token and cuts its token stream into windows of ``seq_len``.
Each batch takes its rows from ``batch_size`` streams picked at random. Why many streams: a long
document (100k tokens is common in the JDK) would otherwise fill the same row for a hundred
consecutive steps, and the model would fit the current document instead of the corpus (training
loss far below validation loss, strongly correlated gradients).

Only byte offsets into the JSONL file are held in memory, never the corpus text, and the whole
position of the stream is a small ``state_dict`` saved with each checkpoint, so a resumed run
sees exactly the windows an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch


def index_jsonl_by_source(path: str | os.PathLike) -> dict[str, list[int]]:
    """Byte offset of every line of a corpus JSONL file, grouped by the row's ``source``."""
    index: dict[str, list[int]] = {}
    with open(path, "rb") as f:
        offset = 0
        for line in f:
            if line.strip():
                src = json.loads(line).get("source", "unknown")
                index.setdefault(src, []).append(offset)
            offset += len(line)
    if not index:
        raise ValueError(f"{path} holds no documents")
    return index


class PackedStream:
    """Yields ``LongTensor[batch_size, seq_len]`` windows from a corpus split, forever.

    Args:
        path: ``{split}.jsonl`` of a corpus directory.
        tokenizer: transformers tokenizer; its ``eos_token_id`` separates documents.
        seq_len: window length (the pretraining context).
        batch_size: rows per batch, each from a different open document stream.
        seed: fixes document order and source draws.
        source_weights: probability weight of each source (default: equal for all sources, so
            the 210 MB JDK does not drown 30 MB of stdlib and man pages).
        streams: open document streams to pick rows from (default ``max(32, batch_size)``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tokenizer,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        source_weights: dict[str, float] | None = None,
        streams: int | None = None,
    ) -> None:
        if seq_len < 2 or batch_size < 1:
            raise ValueError(f"need seq_len >= 2 and batch_size >= 1; got {seq_len}, {batch_size}")
        self.path = Path(path)
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError("tokenizer has no eos_token_id to separate packed documents")
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.index = index_jsonl_by_source(self.path)
        self.sources = sorted(self.index)
        weights = source_weights or {s: 1.0 for s in self.sources}
        unknown = set(weights) - set(self.sources)
        if unknown:
            raise ValueError(f"source_weights name sources not in {self.path}: {sorted(unknown)}")
        self.weights = [float(weights.get(s, 0.0)) for s in self.sources]
        if sum(self.weights) <= 0:
            raise ValueError("source_weights must give some source a positive weight")
        self.streams = streams if streams is not None else max(32, batch_size)
        if self.streams < batch_size:
            raise ValueError(f"streams ({self.streams}) must be >= batch_size ({batch_size})")
        self.batches = 0
        self.rows = [
            {"drawn": 0, "epoch": {s: 0 for s in self.sources}, "pos": {s: 0 for s in self.sources}, "buffer": []}
            for _ in range(self.streams)
        ]
        self._orders: dict[tuple[int, str, int], list[int]] = {}
        self._file = open(self.path, "rb")

    # -- document order ------------------------------------------------------------------
    def _order(self, row: int, source: str, epoch: int) -> list[int]:
        key = (row, source, epoch)
        if key not in self._orders:
            order = list(range(len(self.index[source])))
            random.Random(f"{self.seed}/{row}/{source}/{epoch}").shuffle(order)
            self._orders = {k: v for k, v in self._orders.items() if k[:2] != key[:2]}
            self._orders[key] = order
        return self._orders[key]

    def _next_document_tokens(self, row: int) -> list[int]:
        st = self.rows[row]
        rng = random.Random(f"{self.seed}/{row}/draw/{st['drawn']}")
        source = rng.choices(self.sources, weights=self.weights)[0]
        st["drawn"] += 1
        order = self._order(row, source, st["epoch"][source])
        offset = self.index[source][order[st["pos"][source]]]
        st["pos"][source] += 1
        if st["pos"][source] >= len(order):
            st["epoch"][source] += 1
            st["pos"][source] = 0
        self._file.seek(offset)
        text = json.loads(self._file.readline())["text"]
        return self.tokenizer.encode(text, add_special_tokens=False) + [self.eos]

    def _next_window(self, row: int) -> list[int]:
        buf = self.rows[row]["buffer"]
        while len(buf) < self.seq_len:
            buf.extend(self._next_document_tokens(row))
        window = buf[: self.seq_len]
        del buf[: self.seq_len]
        return window

    def next_batch(self) -> torch.Tensor:
        """The next ``LongTensor[batch_size, seq_len]``."""
        picks = random.Random(f"{self.seed}/pick/{self.batches}").sample(range(self.streams), self.batch_size)
        self.batches += 1
        return torch.tensor([self._next_window(r) for r in picks], dtype=torch.long)

    def __iter__(self):
        while True:
            yield self.next_batch()

    # -- resumption ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "streams": self.streams,
            "sources": self.sources,
            "batches": self.batches,
            "rows": json.loads(json.dumps(self.rows)),  # deep copy
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "seq_len", "batch_size", "streams", "sources"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume the data stream: checkpoint has {key}={state[key]!r}, "
                    f"this run has {getattr(self, key)!r}"
                )
        self.rows = json.loads(json.dumps(state["rows"]))
        self.batches = state["batches"]

    def close(self) -> None:
        self._file.close()
