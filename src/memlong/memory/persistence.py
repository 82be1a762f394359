"""Saving and loading banks and whole memories: their files, the checks on reading, atomic writes.

A bank (:meth:`MemoryBank.save <memlong.memory.MemoryBank.save>`) is a folder holding ``bank.json``
(format, layout, policy, counters, the SHA-256 of the tensors) and the ``bank-<id>.safetensors``
it names. A memory (:meth:`MemLongCache.save <memlong.cache.MemLongCache.save>`) is a folder
holding ``memory.json``, which names a version folder ``v-<id>/`` with every row's bank
(``row-<b>/``) and ``window.safetensors`` (the local window, the chunks still in it, the
retrieval of the chunk in progress). A save writes and syncs the files first and replaces its JSON
last, in one ``os.replace``: a killed save leaves the previous one loadable.

:class:`BankFiles` and :class:`MemoryFiles` give the bank and the memory their ``save``/``load``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from memlong.memory.index import APPROXIMATE_ABOVE

if TYPE_CHECKING:
    from memlong.config import MemLongConfig
    from memlong.memory.bank import BankLayout, MemoryBank
    from memlong.memory.paged import PagedTensor

BANK_FORMAT = "memlong-bank-v1"
BANK_JSON = "bank.json"
MEMORY_FORMAT = "memlong-memory-v1"
MEMORY_JSON = "memory.json"
_VERSION = re.compile(r"v-[0-9a-f]{12}")  # a save's version folder (save names them so)


def is_save_leftover(name: str) -> bool:
    """Whether ``name`` can be what a killed :meth:`MemLongCache.save` leaves in a memory's folder: a
    version folder (a leftover unless ``memory.json`` names it, which :meth:`~MemLongCache.load`
    follows and the next save keeps) or its temporary ``memory.json``."""
    return name == MEMORY_JSON + ".tmp" or bool(_VERSION.fullmatch(name))


class BankFileError(ValueError):
    """A saved bank cannot be loaded; the message says which file and why."""


class BankFiles:
    """:class:`~memlong.memory.MemoryBank`'s ``save`` and ``load``: the bank's files."""

    def save(self, directory: str | os.PathLike, metadata: dict | None = None) -> str:
        """Writes the bank to ``directory`` as ``bank-<id>.safetensors`` + ``bank.json``.

        Atomic: the tensors go to a new file first; ``bank.json`` (which names that file and its
        SHA-256) is replaced in one ``os.replace``. A crash leaves the previous save intact.
        """
        os.makedirs(directory, exist_ok=True)
        slots = self.valid.nonzero().flatten()
        slots = slots[torch.argsort(self.chunk_ids[slots])]
        # K/V (and their scales) go to the file a batch of slots at a time: a bank kept in a
        # memory-mapped file (bank_device="mmap") may not fit in RAM, and saving must not copy it there
        tensors: dict[str, torch.Tensor | _Rows] = {
            "keys": _Rows(self.keys, slots),
            "values": _Rows(self.values, slots),
            "embeddings": self.embeddings[slots].contiguous().cpu(),
            "chunk_ids": self.chunk_ids[slots].contiguous(),
            "spans": self.spans[slots].contiguous(),
            "token_ids": self.token_ids[slots].contiguous(),
            "text_spans": self.text_spans[slots].contiguous(),
            "counts": self.counts[slots].contiguous(),
        }
        if self.layout.windows:
            tensors["window_embeddings"] = self.window_embeddings[slots].contiguous().cpu()
            tensors["windowed"] = self.windowed[slots].contiguous()
        if self.layout.quantized:
            tensors["key_scales"] = _Rows(self.key_scales, slots)
            tensors["value_scales"] = _Rows(self.value_scales, slots)
        name = f"bank-{uuid.uuid4().hex[:12]}.safetensors"
        path = os.path.join(directory, name)
        digest = write_safetensors(path + ".tmp", tensors)
        os.replace(path + ".tmp", path)
        L = self.layout
        meta = {
            "format": BANK_FORMAT,
            "tensors": name,
            "sha256": digest,
            "num_chunks": int(slots.numel()),
            "layout": {
                "capacity": L.capacity,
                "chunk_size": L.chunk_size,
                "num_kv_heads": L.num_kv_heads,
                "head_dim": L.head_dim,
                "embed_dim": L.embed_dim,
                "dtype": str(L.dtype).removeprefix("torch."),
                "index_window": L.index_window,
                **({} if L.heads is None else {"heads": [list(h) for h in L.heads]}),
            },
            "eviction": self.eviction,
            "fractions": [self.keep_newest, self.drop_oldest, self.target],
            "search_backend": self.search_backend,
            "approximate_above": self.approximate_above,
            "evictions": self.evictions,
            "evicted": {
                "chunks": self.evicted_chunks,
                "spans": self.evicted_spans,
                "text_spans": self.evicted_text_spans,
            },
            "metadata": metadata or {},
        }
        json_path = os.path.join(directory, BANK_JSON)
        try:
            old = _read_json(json_path).get("tensors") if os.path.isfile(json_path) else None
        except BankFileError:
            old = None  # a corrupt previous save is simply replaced
        with open(json_path + ".tmp", "w") as f:
            json.dump(meta, f, indent=2)
        _fsync(json_path + ".tmp")
        os.replace(json_path + ".tmp", json_path)
        _fsync_dir(directory)
        if old and old != name and os.path.isfile(os.path.join(directory, old)):
            os.remove(os.path.join(directory, old))
        for leftover in os.listdir(directory):  # tensor files of saves killed before their bank.json
            if leftover.startswith("bank-") and ".safetensors" in leftover and leftover != name:
                os.remove(os.path.join(directory, leftover))
        return json_path

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        expected: BankLayout | None = None,
        device: str | torch.device | None = None,
    ) -> MemoryBank:
        """Reads a bank written by :meth:`save`. Raises :class:`BankFileError` with what is wrong
        (missing file, checksum mismatch, wrong shapes, layout different from ``expected``)."""
        from memlong.memory import bank as bank_module
        from memlong.memory.bank import BankLayout

        json_path = os.path.join(directory, BANK_JSON)
        meta = read_metadata(directory, BANK_JSON, BANK_FORMAT, "memory bank")
        try:
            lay = meta["layout"]
            layout = BankLayout(
                capacity=int(lay["capacity"]),
                chunk_size=int(lay["chunk_size"]),
                num_kv_heads=int(lay["num_kv_heads"]),
                head_dim=int(lay["head_dim"]),
                embed_dim=int(lay["embed_dim"]),
                dtype=getattr(torch, lay["dtype"]),
                device=device if device is not None else (expected.device if expected else "cpu"),
                compute_dtype=expected.compute_dtype if expected else None,
                mmap_dir=expected.mmap_dir if expected else None,
                pin_memory=expected.pin_memory if expected else False,
                index_window=int(lay.get("index_window", 0)),  # banks saved before the window index: none
                heads=None if lay.get("heads") is None else tuple(tuple(int(x) for x in h) for h in lay["heads"]),
            )
            tpath = os.path.join(directory, meta["tensors"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BankFileError(f"{json_path}: malformed bank metadata ({e!r})") from e
        if expected is not None:
            if layout.heads != expected.heads:

                def said(h):
                    return "every KV head of each banked layer" if h is None else f"the KV heads {[list(p) for p in h]}"

                raise BankFileError(
                    f"bank in {directory!s} stores {said(layout.heads)} but this model's config banks "
                    f"{said(expected.heads)} (MemLongConfig.bank_heads); load it into a model with the bank_heads "
                    "it was read with, or read the text again"
                )
            mine = (layout.chunk_size, layout.num_kv_heads, layout.head_dim, layout.embed_dim)
            theirs = (expected.chunk_size, expected.num_kv_heads, expected.head_dim, expected.embed_dim)
            if mine != theirs:
                raise BankFileError(
                    f"bank in {directory!s} has (chunk_size, kv_heads, head_dim, embed_dim)={mine} but this "
                    f"model/retriever needs {theirs}; it was saved by a different model or retriever"
                )
        if not os.path.isfile(tpath):
            raise BankFileError(f"{tpath} is missing: the bank directory is incomplete")
        if _sha256(tpath) != meta.get("sha256"):
            raise BankFileError(
                f"{tpath} does not match the checksum in {BANK_JSON}: the file is truncated or corrupted"
            )
        n = int(meta["num_chunks"])
        kv = (n, layout.num_kv_heads, layout.chunk_size, layout.head_dim)
        want = {
            "keys": kv,
            "values": kv,
            "embeddings": (n, layout.embed_dim),
            "chunk_ids": (n,),
            "spans": (n, 2),
            "token_ids": (n, layout.chunk_size),
            "counts": (n,),
            "text_spans": (n, 2),
        }
        if layout.quantized:
            want["key_scales"] = want["value_scales"] = kv[:3]
        if layout.windows:
            want["window_embeddings"] = (n, layout.windows, layout.embed_dim)
            want["windowed"] = (n,)
        # K/V are read a batch of slots at a time into the bank's own storage (a memory-mapped file
        # with bank_device="mmap"), never whole: a bank larger than RAM loads as it was saved
        with _SafetensorsReader(tpath) as f:
            for key, shape in want.items():
                got = f.shape(key)
                if got != shape:
                    raise BankFileError(
                        f"{tpath}: tensor {key!r} should be {shape}, got {'missing' if got is None else got}"
                    )
            if f.dtype("keys") != layout.dtype or f.dtype("values") != layout.dtype:
                raise BankFileError(f"{tpath}: K/V are {f.dtype('keys')}, the metadata says {layout.dtype}")
            t = {key: f.get(key) for key in want if key not in _KV_NAMES}
            if n > layout.capacity:
                raise BankFileError(f"{tpath}: {n} chunks exceed the saved capacity {layout.capacity}")
            keep, drop, target = meta.get("fractions", [0.1, 0.1, 0.5])
            bank = cls(
                layout,
                meta.get("eviction", "counter"),
                keep,
                drop,
                target,
                meta.get("search_backend", "faiss"),
                meta.get("approximate_above", APPROXIMATE_ABOVE),
            )
            bank.evictions = int(meta.get("evictions", 0))
            evicted = meta.get("evicted") or {}  # banks saved before this bookkeeping: none recorded
            bank.evicted_chunks = int(evicted.get("chunks", 0))
            bank.evicted_spans = [[int(a), int(b)] for a, b in evicted.get("spans", [])]
            bank.evicted_text_spans = [[int(a), int(b)] for a, b in evicted.get("text_spans", [])]
            bank.metadata = dict(meta.get("metadata") or {})
            while bank.num_slots < n:
                bank._grow()
            step = max(1, bank_module.PAGE_BYTES // max(1, layout.slot_bytes()))
            for a in range(0, n, step):
                b = min(n, a + step)
                scales = (f.get("key_scales", a, b), f.get("value_scales", a, b)) if layout.quantized else (None, None)
                bank._store(slice(a, b), f.get("keys", a, b), f.get("values", a, b), *scales)
        bank.embeddings[:n] = t["embeddings"].to(layout.device)
        if layout.windows:
            bank.window_embeddings[:n] = t["window_embeddings"].to(bank.window_embeddings)
            bank.windowed[:n] = t["windowed"].bool()
        bank.chunk_ids[:n] = t["chunk_ids"]
        bank.spans[:n] = t["spans"]
        bank.token_ids[:n] = t["token_ids"]
        bank.text_spans[:n] = t["text_spans"]
        bank.counts[:n] = t["counts"]
        for s in range(n):
            bank.index.add(s, bank.embeddings[s])
        return bank


class MemoryFiles:
    """:class:`~memlong.cache.MemLongCache`'s ``save`` and ``load`` (the whole memory) and ``save_bank`` /
    ``load_bank`` (one row's bank)."""

    def save_bank(self, directory: str | os.PathLike, row: int = 0, metadata: dict | None = None) -> str:
        """Saves row ``row``'s bank (see :meth:`MemoryBank.save`)."""
        return self.banks[row].save(directory, {**(metadata or {}), "retriever": self.retriever_info})

    def load_bank(self, directory: str | os.PathLike, row: int = 0) -> None:
        """Replaces row ``row``'s bank with a saved one. The file is fully checked first; on any
        error the bank in memory is left untouched."""
        from memlong.memory.bank import MemoryBank

        bank = MemoryBank.load(directory, expected=self.layout)
        check_retriever(bank.metadata.get("retriever"), self.retriever_info, directory)
        if bank.layout.index_window != self.layout.index_window:
            bank.drop_window_index()  # another rerank_window or none: not what this config's questions search
        self.banks[row] = bank

    def save(self, directory: str | os.PathLike, metadata: dict | None = None) -> str:
        """Saves everything needed to continue exactly where reading stopped: every row's bank,
        the local window's keys/values for all layers, the chunks still in the window and the
        retrieval of the chunk in progress; ``metadata`` (JSON) goes into ``memory.json`` as is.

        Atomic: the state goes into a new version folder; ``memory.json``, which names it, is
        replaced in one ``os.replace``; older versions, and folders of saves killed before
        that point, are removed after. A process killed at any point leaves the previous save
        loadable and unchanged, or the new one complete (:meth:`load` reads only the version
        ``memory.json`` names). Two processes must not save into one folder at once (``memlong
        ask`` locks it: :mod:`memlong.memory.lock`).
        """
        from safetensors.torch import save_file

        if self.broken:
            raise RuntimeError(f"refusing to save a memory left inconsistent ({self.broken}); reset it first")
        if any(f is not None for f in self.focus):
            raise RuntimeError(
                "refusing to save a memory focused on a question (focus_on); call memory.unfocus() first"
            )
        os.makedirs(directory, exist_ok=True)
        version = f"v-{uuid.uuid4().hex[:12]}"
        vdir = os.path.join(directory, version)
        os.makedirs(vdir)
        for b, bank in enumerate(self.banks):
            bank.save(os.path.join(vdir, f"row-{b}"), {"retriever": self.retriever_info})
        tensors: dict[str, torch.Tensor] = {}
        for layer in range(self.num_layers):
            if self.win_k[layer] is not None:
                tensors[f"win_k.{layer}"] = self.win_k[layer].contiguous().cpu()
                tensors[f"win_v.{layer}"] = self.win_v[layer].contiguous().cpu()
        if self.win_pos is not None:
            tensors["win_pos"] = self.win_pos.contiguous()
        mem_none = []
        for b in range(self.batch_size_):
            for c, e in self.chunk_emb[b].items():
                tensors[f"emb.{b}.{c}"] = e.contiguous().cpu()
            for j, m in self.chunk_mem[b].items():
                if m is None:
                    mem_none.append([b, j])
                else:
                    tensors[f"mem_k.{b}.{j}"], tensors[f"mem_v.{b}.{j}"] = (t.contiguous().cpu() for t in m)
            if self.sink[b] is not None:
                tensors[f"sink_k.{b}"], tensors[f"sink_v.{b}"] = (t.contiguous().cpu() for t in self.sink[b])
        wfile = os.path.join(vdir, "window.safetensors")
        save_file(tensors, wfile)
        _fsync(wfile)
        meta = {
            "format": MEMORY_FORMAT,
            "version": version,
            "window_sha256": _sha256(wfile),
            "config": self.config.to_dict(),
            "num_layers": self.num_layers,
            "batch_size": self.batch_size_,
            "seen": self.seen,
            "columns": self.columns,
            "retrieval": self.retrieval,
            "retriever": self.retriever_info,
            "chunk_tokens": [{str(c): t for c, t in d.items()} for d in self.chunk_tokens],
            "chunk_chars": [{str(c): t for c, t in d.items()} for d in self.chunk_chars],
            "mem_none": mem_none,
            "reread": self.reread,
            "metadata": metadata or {},
        }
        _fsync_dir(vdir)
        path = os.path.join(directory, MEMORY_JSON)
        with open(path + ".tmp", "w") as f:
            json.dump(meta, f)
        _fsync(path + ".tmp")
        os.replace(path + ".tmp", path)  # the commit: before it the previous save is the memory, after it this one
        _fsync_dir(directory)
        for name in os.listdir(directory):  # older versions and leftovers of killed saves; nothing else
            if _VERSION.fullmatch(name) and name != version:
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        return path

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        config: MemLongConfig,
        layout: BankLayout,
        num_layers: int,
        device: str | torch.device | None = None,
        retriever_info: dict | None = None,
        kv_heads: int | None = None,
    ):
        """Reads a memory written by :meth:`save` for a model with this ``config``/``layout``
        (window K/V go to ``device``, the model's; the banks to their tier). Everything is
        checked before anything is returned; errors say which file and why."""

        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from memlong.memory.bank import MemoryBank

        meta = read_metadata(directory, MEMORY_JSON, MEMORY_FORMAT, "MemLong memory")
        diff = config.memory_differences(meta["config"])
        if diff or meta["num_layers"] != num_layers:
            raise BankFileError(
                f"memory in {directory!s} was saved by a model with another MemLong config (differs in {diff}) "
                f"or depth ({meta['num_layers']} layers); load it into the model that wrote it"
            )
        check_retriever(meta.get("retriever"), retriever_info, directory)
        vdir = os.path.join(directory, meta["version"])
        wfile = os.path.join(vdir, "window.safetensors")
        if not os.path.isfile(wfile) or _sha256(wfile) != meta["window_sha256"]:
            raise BankFileError(f"{wfile} is missing, truncated or corrupted")
        try:
            t = load_file(wfile)
        except (SafetensorError, OSError) as e:
            raise BankFileError(f"{wfile} cannot be read ({e})") from e
        B = int(meta["batch_size"])
        banks = [MemoryBank.load(os.path.join(vdir, f"row-{b}"), expected=layout) for b in range(B)]
        for bank in banks:
            if bank.layout.index_window != layout.index_window:
                bank.drop_window_index()  # another rerank_window or none: not what this config's questions search
        cache = cls(
            config,
            layout,
            num_layers,
            B,
            retrieval=bool(meta["retrieval"]),
            retriever_info=retriever_info,
            kv_heads=kv_heads,
        )
        dev = layout.device if device is None else device
        cache.banks = banks
        cache.seen = [int(x) for x in meta["seen"]]
        cache.columns = int(meta["columns"])
        cache.win_pos = t.get("win_pos")
        for layer in range(num_layers):
            if f"win_k.{layer}" in t:
                cache.win_k[layer] = t[f"win_k.{layer}"].to(dev)
                cache.win_v[layer] = t[f"win_v.{layer}"].to(dev)
        cache.chunk_tokens = [{int(c): list(v) for c, v in d.items()} for d in meta["chunk_tokens"]]
        cache.chunk_chars = [{int(c): list(v) for c, v in d.items()} for d in meta["chunk_chars"]]
        for key, value in t.items():
            kind, *rest = key.split(".")
            if kind == "emb":
                cache.chunk_emb[int(rest[0])][int(rest[1])] = value
            elif kind == "mem_k":
                b, j = int(rest[0]), int(rest[1])
                cache.chunk_mem[b][j] = (value.to(dev), t[f"mem_v.{b}.{j}"].to(dev))
            elif kind == "sink_k":
                b = int(rest[0])
                cache.sink[b] = (value.to(dev), t[f"sink_v.{b}"].to(dev))
        for b, j in meta["mem_none"]:
            cache.chunk_mem[b][j] = None
        cache.reread = [
            [[int(s), int(e)] for s, e in row] for row in meta.get("reread", [[]] * B)
        ]  # older saves record none
        cache.metadata = dict(meta.get("metadata") or {})
        return cache


def check_retriever(saved: dict | None, ours: dict | None, where) -> None:
    """Raises :class:`BankFileError` if a bank indexed by retriever ``saved`` (its ``describe()``)
    is loaded for retriever ``ours``: its embeddings would be compared with incompatible queries.
    Model paths are compared by their last component, so a moved model still matches."""
    if not saved or not ours:
        return

    def key(d: dict) -> dict:
        d = dict(d)
        if d.get("model") not in (None, "None"):
            d["model"] = os.path.basename(os.path.normpath(str(d["model"])))
        return d

    if key(saved) != key(ours):
        raise BankFileError(
            f"{where!s} was indexed by the retriever {saved} but this model retrieves with {ours}; "
            "load it with the retriever it was built with (memlong.from_pretrained(..., retriever=...))"
        )


def read_metadata(directory, name: str, fmt: str, what: str) -> dict:
    """The JSON ``name`` in ``directory``, checked to be of format ``fmt`` (errors say what to do)."""
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise BankFileError(f"no {name} in {directory!s}: not a saved {what}")
    meta = _read_json(path)
    if meta.get("format") != fmt:
        raise BankFileError(f"{path}: unsupported {what} format {meta.get('format')!r} (expected {fmt})")
    return meta


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BankFileError(f"{path} is not valid JSON ({e}): the file is truncated or corrupted") from e


# ---------------------------------------------------------------------- the bank's tensor file
# safetensors (https://huggingface.co/docs/safetensors), written a batch of rows at a time: an
# 8-byte little-endian header length, the JSON header (padded with spaces to 8 bytes), the data
_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_KV_NAMES = ("keys", "values", "key_scales", "value_scales")  # read a batch of slots at a time


@dataclass
class _Rows:
    """Rows ``slots`` of a :class:`PagedTensor`, in that order, gathered a batch at a time."""

    source: PagedTensor
    slots: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.slots.numel(), *self.source.row_shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    def batches(self):
        from memlong.memory.bank import PAGE_BYTES

        step = max(1, PAGE_BYTES // max(1, math.prod(self.source.row_shape) * self.source.element_size()))
        for i in range(0, self.slots.numel(), step):
            yield self.source[self.slots[i : i + step]]


def write_safetensors(path: str, tensors: dict[str, torch.Tensor | _Rows]) -> str:
    """Writes ``tensors`` as a safetensors file at ``path`` (fsynced) without holding more than a
    batch of any :class:`_Rows` in memory; returns the file's SHA-256 (hex), computed as it is written.
    Tensors are laid out widest dtype first, as safetensors does, so every one stays aligned."""
    import struct

    def size(dtype: torch.dtype) -> int:
        return torch.empty(0, dtype=dtype).element_size()

    order = sorted(tensors, key=lambda k: (-size(tensors[k].dtype), k))
    header, offset = {}, 0
    for name in order:
        t = tensors[name]
        nbytes = math.prod(t.shape) * size(t.dtype)
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as f:

        def put(data) -> None:
            digest.update(data)
            f.write(data)

        put(struct.pack("<Q", len(blob)))
        put(blob)
        for name in order:
            t = tensors[name]
            for part in t.batches() if isinstance(t, _Rows) else (t,):
                put(memoryview(part.detach().cpu().contiguous().view(torch.uint8).numpy()))
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


class _SafetensorsReader:
    """A safetensors file read by name, whole or a range of rows (safetensors' ``safe_open``);
    what cannot be read raises :class:`BankFileError` naming the file."""

    def __init__(self, path: str):
        self.path = path

    def _fail(self, e: Exception) -> BankFileError:
        return BankFileError(f"{self.path} cannot be read ({e})")

    def __enter__(self) -> _SafetensorsReader:
        from safetensors import SafetensorError, safe_open

        self._errors = (SafetensorError, OSError, ValueError, RuntimeError)
        try:
            self._open = safe_open(self.path, framework="pt", device="cpu")
            self._file = self._open.__enter__()
            self._names = set(self._file.keys())
        except self._errors as e:
            raise self._fail(e) from e
        return self

    def __exit__(self, *exc) -> None:
        self._open.__exit__(*exc)

    def shape(self, name: str) -> tuple[int, ...] | None:
        return tuple(self._file.get_slice(name).get_shape()) if name in self._names else None

    def dtype(self, name: str) -> torch.dtype | str:
        got = self._file.get_slice(name).get_dtype()
        return _ST_NAMES.get(got, got)

    def get(self, name: str, start: int | None = None, end: int | None = None) -> torch.Tensor:
        try:
            return self._file.get_tensor(name) if start is None else self._file.get_slice(name)[start:end]
        except self._errors as e:
            raise self._fail(e) from e


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory) -> None:
    """Makes a rename in ``directory`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
