"""What a memory keeps of an input, before reading it: :func:`plan_reading`.

The memory holds the last ``local_window`` tokens in its window and the chunks that left the
window in its bank, up to ``memory_capacity`` tokens; past that, eviction drops chunks (the
bank's policy decides which; how many depends only on the counts, :meth:`MemoryBank.chunks_after`).
So whether, and how much of, an input will be evicted is known from its token length alone,
before any of it is read; what was evicted is known after (:meth:`MemoryBank.evicted_report`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


class EvictionWarning(UserWarning):
    """An input is longer than the memory holds: part of it will be evicted while reading."""


@dataclass(frozen=True)
class ReadingPlan:
    """What reading ``tokens`` more tokens into a memory will keep (row 0 unless told)."""

    tokens: int  # tokens to read
    chunk_size: int
    stored_chunks: int  # chunks in the bank before reading (a memory read into again)
    banked_chunks: int  # chunks that will leave the window for the bank while reading
    chunks_after: int  # chunks in the bank when reading ends
    capacity_tokens: int  # the bank's capacity now (memory_capacity, whole chunks)
    bytes_per_chunk: int  # what one chunk of bank capacity takes once used (K/V, embeddings, index)

    @property
    def evicted_chunks(self) -> int:
        """Chunks eviction will drop while reading (the earlier contents of the bank included)."""
        return self.stored_chunks + self.banked_chunks - self.chunks_after

    @property
    def evicted_tokens(self) -> int:
        return self.evicted_chunks * self.chunk_size

    @property
    def kept_tokens(self) -> int:
        """Of the tokens read, those in the bank or the window when reading ends (into a memory
        that held chunks already, eviction may drop some of those instead: then at least this)."""
        return max(0, self.tokens - self.evicted_tokens)

    @property
    def evicts(self) -> bool:
        return self.evicted_chunks > 0

    @property
    def capacity_needed(self) -> int:
        """The smallest ``memory_capacity`` (tokens) that keeps everything."""
        return (self.stored_chunks + self.banked_chunks) * self.chunk_size

    @property
    def bytes_needed(self) -> int:
        """Bytes the bank takes at :attr:`capacity_needed`, once full."""
        return (self.stored_chunks + self.banked_chunks) * self.bytes_per_chunk

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "evicted_chunks": self.evicted_chunks,
            "evicted_tokens": self.evicted_tokens,
            "kept_tokens": self.kept_tokens,
            "capacity_needed": self.capacity_needed,
            "bytes_needed": self.bytes_needed,
        }

    def warning(self, raise_with: str = "memory_capacity") -> str:
        """One paragraph for a user, before reading: what is kept, what is evicted, and how to keep
        everything (``raise_with``: how this program sets the capacity, e.g. ``--set memory_capacity=N``)."""
        return (
            f"{self.tokens:,} tokens to read, more than this memory holds ({self.capacity_tokens:,} tokens of "
            f"bank, memory_capacity, plus the local window): about {self.kept_tokens:,} tokens will be kept and "
            f"{self.evicted_tokens:,} ({self.evicted_chunks:,} chunks of {self.chunk_size}) evicted while "
            f"reading; a question about an evicted part is answered from what remains. To keep everything: "
            f"{raise_with.replace('N', str(self.capacity_needed))} (about {human_bytes(self.bytes_needed)} "
            f"of bank)"
        )


def plan_reading(memory, tokens: int, row: int = 0) -> ReadingPlan:
    """What reading ``tokens`` more tokens into row ``row`` of ``memory`` (a
    :class:`~memlong.cache.MemLongCache`) will keep and evict (pure: nothing is read)."""
    cfg, bank = memory.config, memory.bank(row)
    tau, w = cfg.chunk_size, cfg.window_chunks

    def departed(seen: int) -> int:  # chunks that have left the window after ``seen`` tokens
        return max(0, (seen - 1) // tau - w) if seen else 0

    before = memory.seen[row]
    banked = departed(before + tokens) - departed(before)
    stored = len(bank)
    # without retrieval (the no-memory baseline) nothing is banked: every chunk leaving the window is dropped
    after = bank.chunks_after(banked) if memory.retrieval else stored
    return ReadingPlan(
        tokens=tokens,
        chunk_size=tau,
        stored_chunks=stored,
        banked_chunks=banked,
        chunks_after=after,
        capacity_tokens=bank.capacity * tau,
        bytes_per_chunk=bank.slot_bytes(),
    )


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # unreachable


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux ``MemAvailable``; elsewhere the
    free physical pages), None when unknown."""
    import os

    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
