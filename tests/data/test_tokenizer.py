"""Byte-level BPE: trains, saves as a transformers tokenizer, round-trips text exactly."""

import pytest

from memlong.tokenizer import EOS_TOKEN, is_lossless, load_tokenizer, train_and_save, train_bpe, vocab_sweep

TEXTS = [
    'def parse_args(argv=None):\n    """Parse the command line."""\n    return parser.parse_args(argv)\n',
    "NAME\n       ls - list directory contents\n\nSYNOPSIS\n       ls [OPTION]... [FILE]...\n",
    "public final class String implements java.io.Serializable, Comparable<String> {}\n",
] * 20
ODD = "  leading spaces, tabs\t\tand CRLF\r\n, unicode: naïve café ☃ 数学 🙂, trailing  \n\n"


def test_train_save_load_lossless(tmp_path):
    tok = train_and_save(TEXTS, 600, tmp_path / "tok")
    assert len(tok) <= 600
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.eos_token == EOS_TOKEN and loaded.eos_token_id == loaded.convert_tokens_to_ids(EOS_TOKEN)
    for text in TEXTS[:3] + [ODD, "", " ", "x"]:
        assert is_lossless(loaded, text), repr(text)
    # No special tokens are added by encode: documents are packed with an explicit EOS.
    assert EOS_TOKEN not in loaded.decode(loaded.encode("abc"))


def test_bpe_compresses_and_rejects_tiny_vocab():
    tok = train_bpe(TEXTS, 700)
    assert len(tok.encode(TEXTS[0]).ids) < len(TEXTS[0].encode()) / 2
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(TEXTS, 100)


def test_load_tokenizer_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_vocab_sweep_rows():
    rows = vocab_sweep(TEXTS, TEXTS[:3], [512, 700], step_seconds=lambda v: v / 1000)
    assert [r["vocab_size"] for r in rows] == [512, 700]
    assert rows[1]["bytes_per_token"] >= rows[0]["bytes_per_token"]
    assert rows[0]["bytes_per_second"] == pytest.approx(rows[0]["bytes_per_token"] * 1024 / 0.512, rel=1e-3)
