"""Deterministic document-level train / validation / test split.

A document's split depends only on a hash of its id (and a salt), never on the order in which
documents are read or on which other documents exist, so the split is stable across machines,
Python versions and corpus growth. Splitting by document (not by window) keeps every token of a
held-out document out of training.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")

# Held-out fractions. 5% each leaves ~90% for training while giving enough long documents
# (>= 16k tokens) in validation/test to measure long-context perplexity.
DEFAULT_VALIDATION_FRACTION = 0.05
DEFAULT_TEST_FRACTION = 0.05
DEFAULT_SALT = "memlong-split-v1"


def hash_unit(doc_id: str, salt: str = DEFAULT_SALT) -> float:
    """Map a document id to a number in [0, 1) with SHA-256 (stable, unlike ``hash()``)."""
    digest = hashlib.sha256(f"{salt}\0{doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(
    doc_id: str,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    salt: str = DEFAULT_SALT,
) -> str:
    """The split (``train``, ``validation`` or ``test``) a document id belongs to."""
    if not (0 <= validation_fraction and 0 <= test_fraction and validation_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 <= validation_fraction, test_fraction and their sum < 1; got "
            f"{validation_fraction} and {test_fraction}"
        )
    u = hash_unit(doc_id, salt)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"
