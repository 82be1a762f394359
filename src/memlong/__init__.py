"""MemLong: memory-augmented retrieval for long text modeling."""
__version__ = "0.1.0"
