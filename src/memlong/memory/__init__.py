"""Chunk-level memory: one bank per sequence, exact cosine search, eviction, persistence."""

from memlong.memory.bank import BankLayout, MemoryBank
from memlong.memory.budget import EvictionWarning, ReadingPlan, plan_reading
from memlong.memory.persistence import BankFileError

__all__ = ["BankFileError", "BankLayout", "EvictionWarning", "MemoryBank", "ReadingPlan", "plan_reading"]
