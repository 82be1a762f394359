"""Data for MemLong: local document sources, dataset loaders, the split and the corpus files.

sources.py  stdlib / man pages / JDK sources -> Document(id, source, text), skips counted
loaders.py  paper datasets through `datasets`, a folder of .txt files, one text file, a JSONL file
split.py    deterministic train/validation/test split by a hash of the document id
corpus.py   writes {split}.jsonl + summary.json, streams splits, lists long documents
packing.py  token streams packed into fixed-length training windows (resumable)
icl.py      labelled examples and prompts for in-context learning (paper tasks, JSONL, corpus source)
"""

from memlong.data.corpus import build_corpus, iter_split, long_documents, write_corpus
from memlong.data.loaders import (
    PAPER_DATASETS,
    folder_documents,
    hf_documents,
    jsonl_documents,
    load_documents,
    text_file_documents,
)
from memlong.data.sources import (
    SOURCE_NAMES,
    Document,
    SkipCounter,
    jdk_documents,
    man_documents,
    stdlib_documents,
)
from memlong.data.split import SPLITS, split_of

__all__ = [
    "Document",
    "PAPER_DATASETS",
    "SOURCE_NAMES",
    "SPLITS",
    "SkipCounter",
    "build_corpus",
    "folder_documents",
    "hf_documents",
    "iter_split",
    "jdk_documents",
    "jsonl_documents",
    "load_documents",
    "long_documents",
    "man_documents",
    "split_of",
    "stdlib_documents",
    "text_file_documents",
    "write_corpus",
]
