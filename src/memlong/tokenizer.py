"""Byte-level BPE tokenizer training (``tokenizers``), saved as a transformers tokenizer.

Byte-level BPE with no normaliser and no prefix space is lossless: ``decode(encode(text))``
returns ``text`` exactly, for any Unicode text, which the perplexity numbers rely on (every
byte of a document is scored).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
# One special token plays BOS, EOS and PAD: documents are packed back to back, separated by it.
SPECIAL_TOKENS = (EOS_TOKEN,)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Train a byte-level BPE of ``vocab_size`` entries (special token and 256 bytes included).

    Returns a ``tokenizers.Tokenizer``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 512:
        raise ValueError(f"vocab_size must be >= 512 (256 byte tokens + merges); got {vocab_size}")
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False keeps encoding lossless (no space is invented at the start).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def to_transformers(tok, model_max_length: int = 1024):
    """Wrap a ``tokenizers.Tokenizer`` as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=None,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # would alter text such as " ," and break losslessness
    )


def train_and_save(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike, model_max_length: int = 1024):
    """Train a BPE on ``texts`` and save it with ``save_pretrained`` into ``out_dir``."""
    hf_tok = to_transformers(train_bpe(texts, vocab_size), model_max_length)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(str(out_dir))
    return hf_tok


def load_tokenizer(path: str | os.PathLike):
    """Load a saved tokenizer folder (``AutoTokenizer``); raises a clear error for a bad path."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {p}; train one with `memlong data`")
    return AutoTokenizer.from_pretrained(str(p))


def is_lossless(tokenizer, text: str) -> bool:
    """True when ``decode(encode(text)) == text`` for a transformers tokenizer."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text


def vocab_sweep(
    train_texts: list[str],
    eval_texts: list[str],
    vocab_sizes: Iterable[int],
    step_seconds=None,
    tokens_per_step: int = 1024,
) -> list[dict]:
    """Measure what each vocabulary size costs and buys, to choose one.

    For each size: BPE train time and bytes per token on ``eval_texts`` (more bytes per token
    means each trained token carries more text). With ``step_seconds(vocab_size) -> float`` (the
    measured time of one training step of ``tokens_per_step`` tokens for a model with that
    vocabulary) it also reports ``bytes_per_second``: text covered per second of training, the
    figure of merit for a compute-bound run, in which the output layer's cost grows with V.
    """
    rows = []
    eval_bytes = sum(len(t.encode("utf-8")) for t in eval_texts)
    for v in vocab_sizes:
        t0 = time.perf_counter()
        tok = train_bpe(train_texts, v)
        train_s = time.perf_counter() - t0
        n_tokens = sum(len(e.ids) for e in tok.encode_batch(eval_texts))
        row = {
            "vocab_size": v,
            "bpe_train_seconds": round(train_s, 2),
            "bytes_per_token": round(eval_bytes / max(1, n_tokens), 4),
        }
        if step_seconds is not None:
            s = step_seconds(v)
            row["step_seconds"] = round(s, 3)
            row["bytes_per_second"] = round(row["bytes_per_token"] * tokens_per_step / s, 1)
        rows.append(row)
    return rows
