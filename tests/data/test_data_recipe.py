"""`memlong data` end to end on a small real source: corpus files, tokenizer, long-document listing."""

import json

import pytest

from memlong.cli import main
from memlong.data.sources import stdlib_root
from memlong.tokenizer import is_lossless, load_tokenizer


def test_data_recipe_builds_corpus_and_tokenizer(tmp_path, capsys):
    out = tmp_path / "corpus"
    rc = main(
        [
            "data",
            "--out",
            str(out),
            "--sources",
            "stdlib",
            "--stdlib-root",
            str(stdlib_root() / "email"),
            "--vocab-size",
            "600",
            "--long-min-tokens",
            "3000",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"]["train"]["documents"] > 0
    assert set(summary["splits"]) == {"train", "validation", "test"}
    tok = load_tokenizer(out / "tokenizer")
    assert len(tok) == 600
    text = (stdlib_root() / "email" / "header.py").read_text()
    assert is_lossless(tok, text)
    listing = json.loads((out / "long_documents.json").read_text())
    assert listing["min_tokens"] == 3000 and set(listing) == {"min_tokens", "validation", "test"}
    assert "lossless round trip" in capsys.readouterr().out


def test_data_recipe_rejects_unknown_source(tmp_path):
    with pytest.raises(SystemExit, match="unknown source"):
        main(["data", "--out", str(tmp_path), "--sources", "wikipedia"])
