"""Chunk-level memory: one bank per sequence, exact cosine search, eviction, persistence."""

from memlong.memory.bank import BankFileError, BankLayout, MemoryBank

__all__ = ["BankFileError", "BankLayout", "MemoryBank"]
