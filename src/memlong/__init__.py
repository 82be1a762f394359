"""MemLong: memory-augmented retrieval for long text modeling, for Hugging Face RoPE decoders.

A frozen lower stack writes the memory layer's keys/values of every chunk into a per-sequence
memory bank, indexed by a frozen retriever's embedding of the chunk; before a chunk goes
through the upper layers, the most relevant past chunks are retrieved and the retrieval layers
attend to them beside the local window.
"""

from memlong import pretrained  # noqa: E402,F401  (registers the default model's base, memlong:default)
from memlong.cache import MemLongCache
from memlong.config import MemLongConfig, MemLongConfigError
from memlong.memory import BankFileError, BankLayout, EvictionWarning, MemoryBank
from memlong.modeling import SUPPORTED_FAMILIES, UnsupportedModelError, from_pretrained, wrap
from memlong.retriever import EmbeddingRetriever, HashingRetriever, Retriever, SentenceTransformerRetriever

# The release (CHANGELOG.md); equal to pyproject.toml's version (tests/test_version.py).
__version__ = "0.2.0"

__all__ = [
    "BankFileError",
    "BankLayout",
    "EmbeddingRetriever",
    "EvictionWarning",
    "HashingRetriever",
    "MemLongCache",
    "MemLongConfig",
    "MemLongConfigError",
    "MemoryBank",
    "Retriever",
    "SentenceTransformerRetriever",
    "SUPPORTED_FAMILIES",
    "UnsupportedModelError",
    "from_pretrained",
    "wrap",
]
