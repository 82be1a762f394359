"""Dataset loaders on small local data: JSONL, a folder of text files, `datasets` builders."""

import json

import pytest

from memlong.data.loaders import PAPER_DATASETS, folder_documents, hf_documents, jsonl_documents, load_documents
from memlong.data.sources import SkipCounter


@pytest.fixture
def jsonl_file(tmp_path):
    p = tmp_path / "books.jsonl"
    with p.open("wb") as f:
        f.write(json.dumps({"id": "b1", "text": "Call me Ishmael."}).encode() + b"\n")
        f.write(b"\n")  # blank line: not a document, not a skip
        f.write(json.dumps({"text": "No id here.", "source": "pg"}).encode() + b"\n")
        f.write(b"{not json}\n")
        f.write(json.dumps({"title": "no text field"}).encode() + b"\n")
        f.write(json.dumps({"id": "b5", "text": "   "}).encode() + b"\n")
        f.write(b'{"id": "b6", "text": "\xff\xfe"}\n')
        f.write(json.dumps({"id": "b7", "text": "Émile, naïve café."}, ensure_ascii=False).encode() + b"\n")
    return p


def test_jsonl_documents(jsonl_file):
    skipped = SkipCounter()
    docs = list(jsonl_documents(jsonl_file, skipped=skipped))
    assert [(d.id, d.source, d.text) for d in docs] == [
        ("b1", "books", "Call me Ishmael."),
        ("books/3", "pg", "No id here."),
        ("b7", "books", "Émile, naïve café."),
    ]
    assert skipped.counts == {"bad-json": 1, "missing-text": 1, "empty": 1, "invalid-utf8": 1}


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(jsonl_documents(tmp_path / "nope.jsonl"))


def test_folder_documents(tmp_path):
    (tmp_path / "a.txt").write_text("first book")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second book")
    (tmp_path / "c.txt").write_bytes(b"\x80\x81 not utf-8")
    (tmp_path / "d.txt").write_text("")
    (tmp_path / "e.md").write_text("not matched by the pattern")
    skipped = SkipCounter()
    docs = list(folder_documents(tmp_path, source="lib", skipped=skipped))
    assert [(d.id, d.text) for d in docs] == [("lib/a.txt", "first book"), ("lib/sub/b.txt", "second book")]
    assert skipped.counts == {"invalid-utf8": 1, "empty": 1}
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list(folder_documents(tmp_path / "a.txt"))


def test_hf_documents_through_datasets_json_builder(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text(
        "".join(json.dumps({"text": t, "title": f"t{i}"}) + "\n" for i, t in enumerate(["alpha", "", "gamma", "delta"]))
    )
    skipped = SkipCounter()
    docs = list(hf_documents("json", "train", data_files=str(p), id_field="title", skipped=skipped))
    assert [(d.id, d.text) for d in docs] == [
        ("json/train/t0", "alpha"),
        ("json/train/t2", "gamma"),
        ("json/train/t3", "delta"),
    ]
    assert skipped.counts == {"empty": 1}
    limited = list(hf_documents("json", "train", data_files=str(p), streaming=False, limit=1))
    assert [d.text for d in limited] == ["alpha"]


def test_hf_documents_text_builder(tmp_path):
    p = tmp_path / "lines.txt"
    p.write_text("line one\nline two\n")
    docs = list(hf_documents("text", "train", data_files=str(p)))
    assert [d.text for d in docs] == ["line one", "line two"]


def test_paper_datasets_are_named():
    assert set(PAPER_DATASETS) == {"pg19", "proof-pile", "wikitext-103", "bookcorpus"}
    assert all(spec.text_field == "text" for spec in PAPER_DATASETS.values())


def test_load_documents_dispatch(jsonl_file, tmp_path):
    assert [d.id for d in load_documents(str(jsonl_file))][0] == "b1"
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "x.txt").write_text("hello")
    assert [d.text for d in load_documents(str(folder))] == ["hello"]
    with pytest.raises(FileNotFoundError):
        load_documents(str(tmp_path / "missing" / "file.jsonl"))


def test_a_single_text_file_is_one_document(tmp_path, monkeypatch):
    from memlong.data.loaders import text_file_documents
    from memlong.training import document_texts

    book = tmp_path / "book.md"
    book.write_text("Chapter one.\n\nIt was a long text.\n")
    assert [(d.id, d.source, d.text) for d in load_documents(str(book))] == [("book/book.md", "book", book.read_text())]
    # every split of a single file is that file (eval reads "test", train "train" and "validation")
    for split in ("train", "validation", "test"):
        assert list(document_texts(str(book), split)()) == [book.read_text()]
    monkeypatch.chdir(tmp_path)
    assert [d.text for d in load_documents("book.md")] == [book.read_text()]  # a bare file name, not a dataset name
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert list(load_documents(str(empty))) == []  # counted as skipped, as in a folder
    with pytest.raises(FileNotFoundError):
        list(text_file_documents(tmp_path / "missing.txt"))
