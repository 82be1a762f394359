"""Build the on-disk corpus: one JSONL file per split plus a summary of what was read/skipped.

Layout of a corpus directory::

    train.jsonl, validation.jsonl, test.jsonl   # {"id", "source", "text"} per line
    summary.json                                # documents/bytes per split and source, skips
    long_documents.json                         # held-out documents >= 16k tokens, by source

The corpus is written once and then streamed by the tokenizer trainer and the pretrain recipe,
so the (slow) man page rendering happens once per machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from memlong.data.loaders import jsonl_documents
from memlong.data.sources import SOURCE_NAMES, Document, SkipCounter, iter_source
from memlong.data.split import SPLITS, split_of

LONG_DOCUMENT_TOKENS = 16384


def corpus_file(corpus_dir: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    return Path(corpus_dir) / f"{split}.jsonl"


def write_corpus(
    out_dir: str | os.PathLike,
    documents: Iterable[Document],
    skipped: SkipCounter,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
) -> dict:
    """Split ``documents`` by id hash into ``out_dir/{split}.jsonl``; write and return a summary.

    Duplicate ids (the same file reached twice) are skipped with reason ``duplicate-id``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict = {s: {"documents": 0, "bytes": 0, "by_source": {}} for s in SPLITS}
    seen: set[str] = set()
    handles = {s: open(out / f"{s}.jsonl.tmp", "w", encoding="utf-8") for s in SPLITS}
    try:
        for doc in documents:
            if doc.id in seen:
                skipped.skip("duplicate-id", doc.id)
                continue
            seen.add(doc.id)
            split = split_of(doc.id, validation_fraction, test_fraction)
            handles[split].write(json.dumps({"id": doc.id, "source": doc.source, "text": doc.text}) + "\n")
            n_bytes = len(doc.text.encode("utf-8"))
            st = stats[split]
            st["documents"] += 1
            st["bytes"] += n_bytes
            src = st["by_source"].setdefault(doc.source, {"documents": 0, "bytes": 0})
            src["documents"] += 1
            src["bytes"] += n_bytes
    finally:
        for h in handles.values():
            h.close()
    for s in SPLITS:
        os.replace(out / f"{s}.jsonl.tmp", out / f"{s}.jsonl")
    summary = {
        "splits": stats,
        "skipped": skipped.as_dict(),
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def build_corpus(
    out_dir: str | os.PathLike,
    sources: Iterable[str] = SOURCE_NAMES,
    source_kwargs: dict[str, dict] | None = None,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
) -> dict:
    """Read the named local sources and write the split corpus (see module docstring)."""
    source_kwargs = source_kwargs or {}
    skipped = SkipCounter()

    def docs() -> Iterator[Document]:
        for name in sources:
            yield from iter_source(name, skipped=skipped, **source_kwargs.get(name, {}))

    return write_corpus(out_dir, docs(), skipped, validation_fraction, test_fraction)


def iter_split(corpus_dir: str | os.PathLike, split: str) -> Iterator[Document]:
    """Stream the documents of one split of a corpus directory."""
    path = corpus_file(corpus_dir, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the corpus first with `memlong data --out {corpus_dir}`")
    return jsonl_documents(path, id_field="id")


def long_documents(
    documents: Iterable[Document], tokenizer, min_tokens: int = LONG_DOCUMENT_TOKENS
) -> dict[str, list[dict]]:
    """Documents of at least ``min_tokens`` tokens, grouped by source, longest first.

    ``tokenizer`` is a transformers tokenizer (or anything with ``encode(text) -> list[int]``).
    """
    out: dict[str, list[dict]] = {}
    for doc in documents:
        # Byte-level BPE tokens cover >= 1 byte, so fewer bytes than min_tokens cannot qualify.
        if len(doc.text.encode("utf-8")) < min_tokens:
            continue
        n = len(tokenizer.encode(doc.text, add_special_tokens=False))
        if n >= min_tokens:
            out.setdefault(doc.source, []).append({"id": doc.id, "tokens": n})
    for lst in out.values():
        lst.sort(key=lambda d: (-d["tokens"], d["id"]))
    return dict(sorted(out.items()))
