"""Loaders for the paper's datasets (through ``datasets``) and for local text.

* :func:`hf_documents` loads a dataset by name or alias (``pg19``, ``proof-pile``,
  ``wikitext-103``, ``bookcorpus``) or any ``datasets`` builder (``"json"``, ``"text"`` with
  ``data_files=``), streaming by default so a large corpus is never materialised.
* :func:`folder_documents` reads a folder of text files, :func:`text_file_documents` one text
  file (one document); :func:`jsonl_documents` reads a JSONL file with a ``text`` field.

All loaders yield :class:`~memlong.data.sources.Document` and count bad records (invalid UTF-8,
unreadable file, bad JSON, empty text) in a :class:`~memlong.data.sources.SkipCounter` instead
of raising.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from memlong.data.sources import Document, SkipCounter, decode_utf8, read_text_file


@dataclass(frozen=True)
class HubDataset:
    """Where a paper dataset lives on the hub and which field holds its text."""

    path: str
    config: str | None = None
    text_field: str = "text"
    id_field: str | None = None


# The datasets of the MemLong paper (Sec. 4.1), by short name.
PAPER_DATASETS: dict[str, HubDataset] = {
    "pg19": HubDataset("deepmind/pg19", None, "text", "short_book_title"),
    "proof-pile": HubDataset("hoskinson-center/proof-pile", None, "text", None),
    # Wikitext rows are lines, not articles; each non-empty row becomes one document.
    "wikitext-103": HubDataset("Salesforce/wikitext", "wikitext-103-raw-v1", "text", None),
    "bookcorpus": HubDataset("bookcorpus/bookcorpus", None, "text", None),
}


def hf_documents(
    name: str,
    split: str = "test",
    *,
    config: str | None = None,
    text_field: str | None = None,
    id_field: str | None = None,
    data_files: str | list[str] | dict | None = None,
    streaming: bool = True,
    limit: int | None = None,
    skipped: SkipCounter | None = None,
) -> Iterator[Document]:
    """Yield documents of a ``datasets`` dataset.

    Args:
        name: a key of :data:`PAPER_DATASETS` (``pg19``, ``proof-pile``, ``wikitext-103``,
            ``bookcorpus``), a hub repository id, or a builder name such as ``"json"``.
        split: dataset split to read.
        config, text_field, id_field: override the alias's defaults.
        data_files: passed to ``datasets.load_dataset`` (for ``"json"``/``"text"`` builders).
        streaming: stream rows instead of downloading the whole dataset first.
        limit: stop after this many yielded documents.
    """
    import datasets  # heavy; only users of this loader pay for it

    skipped = skipped if skipped is not None else SkipCounter()
    spec = PAPER_DATASETS.get(name.lower(), HubDataset(name))
    cfg = config if config is not None else spec.config
    field = text_field or spec.text_field
    idf = id_field if id_field is not None else spec.id_field
    kwargs = {"split": split, "streaming": streaming}
    if data_files is not None:
        kwargs["data_files"] = data_files
    ds = datasets.load_dataset(spec.path, cfg, **kwargs) if cfg else datasets.load_dataset(spec.path, **kwargs)
    source = name.lower()
    n = 0
    for i, row in enumerate(ds):
        doc_id = f"{source}/{split}/{row[idf] if idf and row.get(idf) is not None else i}"
        text = row.get(field)
        if not isinstance(text, str):
            skipped.skip("missing-text", doc_id)
            continue
        if not text.strip():
            skipped.skip("empty", doc_id)
            continue
        yield Document(doc_id, source, text)
        n += 1
        if limit is not None and n >= limit:
            return


def folder_documents(
    folder: str | os.PathLike,
    pattern: str = "**/*.txt",
    source: str | None = None,
    skipped: SkipCounter | None = None,
) -> Iterator[Document]:
    """Yield each file matching ``pattern`` under ``folder`` as one document (sorted order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    skipped = skipped if skipped is not None else SkipCounter()
    source = source or folder.name
    for path in sorted(folder.glob(pattern)):
        if not path.is_file():
            continue
        doc_id = f"{source}/{path.relative_to(folder).as_posix()}"
        text = read_text_file(path, doc_id, skipped)
        if text is not None:
            yield Document(doc_id, source, text)


def jsonl_documents(
    path: str | os.PathLike,
    text_field: str = "text",
    id_field: str | None = "id",
    source: str | None = None,
    skipped: SkipCounter | None = None,
) -> Iterator[Document]:
    """Yield one document per JSONL line with a string ``text_field``.

    The id is ``id_field`` when present, else the line number. A line that is not valid UTF-8 or
    JSON, or lacks the text, is counted as skipped. A ``source`` field in the row, if present and
    ``source`` is not given, is kept (so the corpus files round-trip).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"not a file: {path}")
    skipped = skipped if skipped is not None else SkipCounter()
    default_source = source or path.stem
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path.name}:{lineno}"
            line = decode_utf8(raw, where, SkipCounter()) if raw.strip() else ""
            if line is None:
                skipped.skip("invalid-utf8", where)
                continue
            if not line.strip():
                continue  # blank separator line, not a document
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped.skip("bad-json", where)
                continue
            text = row.get(text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                skipped.skip("missing-text", where)
                continue
            if not text.strip():
                skipped.skip("empty", where)
                continue
            doc_id = str(row[id_field]) if id_field and row.get(id_field) is not None else f"{default_source}/{lineno}"
            yield Document(doc_id, source or row.get("source") or default_source, text)


def text_file_documents(
    path: str | os.PathLike,
    source: str | None = None,
    skipped: SkipCounter | None = None,
) -> Iterator[Document]:
    """Yield one text file (strict UTF-8) as one document, ``<source>/<file name>``; an
    unreadable, invalid or empty file is counted as skipped and yields nothing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"not a file: {path}")
    skipped = skipped if skipped is not None else SkipCounter()
    source = source or path.stem
    doc_id = f"{source}/{path.name}"
    text = read_text_file(path, doc_id, skipped)
    if text is not None:
        yield Document(doc_id, source, text)


def load_documents(spec: str, split: str = "test", **kwargs) -> Iterator[Document]:
    """One entry point: a ``.jsonl`` file, a text file (one document, whatever ``split``), a
    folder of ``.txt`` files, or a dataset name."""
    p = Path(spec)
    if p.is_file() and p.suffix in (".jsonl", ".json"):
        return jsonl_documents(p, **kwargs)
    if p.is_file():
        return text_file_documents(p, **kwargs)
    if p.is_dir():
        return folder_documents(p, **kwargs)
    if os.sep in spec and not p.exists():
        raise FileNotFoundError(f"no such file or folder: {spec}")
    return hf_documents(spec, split, **kwargs)
