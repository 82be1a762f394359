"""Per-sequence MemLong state across forward calls: local window, memory banks, chunk records.

:class:`MemLongCache` is a transformers ``Cache`` so that ``generate()`` carries it from step to
step like any KV cache. It holds, for each batch row (each row is its own sequence):

* the **local window**: every layer's keys/values (unrotated) of the recent tokens, with their
  stream positions; a token sees the previous ``local_window // chunk_size - 1`` whole chunks
  and its own chunk up to itself (a block-sliding window, so chunks leave it whole);
* the **memory bank** (:class:`memlong.memory.MemoryBank`) of chunks that left the window
  (but a chunk made only of text a question read again from the bank, ``question_reread``, is
  dropped: the bank holds it already; see :meth:`MemLongCache.mark_reread`);
* chunk records: tokens and retrieval embeddings of chunks still in the window, and the
  retrieved K/V of the chunk in progress (reused until it ends, so one chunk is retrieved for
  once, whatever the call boundaries: token-by-token generation equals one forward).

Timeline of chunk ``j`` (``tau`` tokens, ``w = local_window // tau - 1``): when its first token
is processed, chunk ``j - w - 1`` leaves the window and is written to the bank (evicting if the
bank is full), then the bank is searched with the query for chunk ``j`` (causal: the embedding
of chunk ``j - 1``) and the top-k chunks' K/V are fetched for the retrieval layers.
:meth:`MemLongCache.prepare` plans each call along this timeline and :meth:`~MemLongCache.commit`
keeps its keys/values in the window.

The memory's files are :mod:`memlong.memory.persistence`'s (``save``/``load``); a question's own
retrieval is :mod:`memlong.question`'s (``focus_on``, ``question_hits``, ...).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from memlong.attention import CallContext
from memlong.config import MemLongConfig
from memlong.memory import BankLayout, MemoryBank
from memlong.memory.persistence import MemoryFiles
from memlong.profiling import phase
from memlong.question import QuestionSearch
from memlong.retriever import Retriever

RotaryTable = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # P -> cos, sin [P, D]
KV = tuple[torch.Tensor, torch.Tensor]  # keys, values [H, m, D]


@dataclass
class Segment:
    """Where the tokens of one call sit (:meth:`MemLongCache.prepare`), row by row: ``B`` rows of
    ``S`` columns, after the ``L`` keys of the local window."""

    starts: list[int]  # tokens each row had read before the segment
    qpos: torch.Tensor  # [B, S] each token's stream position (-1: padding)
    kpos: torch.Tensor  # [B, L + S] each key's: the window's, then the segment's
    qchunk: torch.Tensor  # [B, S] each token's chunk
    qvalid: torch.Tensor  # [B, S] real tokens
    mask: torch.Tensor  # [B, S, L + S] the keys each token sees in the local window
    base: torch.Tensor  # [B, 1] origin of the local RoPE frame: where the window's oldest chunk starts
    first_chunk: torch.Tensor  # [B, 1] the chunk of each row's first token
    slot: torch.Tensor  # [B, S] each token's memory slot: its chunk counted from first_chunk
    slots: int  # memory slots per row
    aligned: bool  # one row, or rows that start together without padding (local attention in blocks)


def rope_at(table: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows ``pos`` ``[B, T]`` of a cos or sin ``table`` ``[P, D]``: ``[B, 1, T, D]``."""
    return table[pos.to(table.device)].unsqueeze(1)


class MemLongCache(MemoryFiles, QuestionSearch, Cache):
    """State of a batch of sequences for a MemLong model (see the module docstring).

    Create it with ``model.new_memory(batch_size)`` rather than by hand. ``save`` / ``load`` (the
    whole memory) and ``save_bank`` / ``load_bank`` (one row's bank): the memory's files
    (:class:`~memlong.memory.persistence.MemoryFiles`).
    """

    def __init__(
        self,
        config: MemLongConfig,
        layout: BankLayout,
        num_layers: int,
        batch_size: int = 1,
        retrieval: bool = True,
        retriever_info: dict | None = None,
        kv_heads: int | None = None,
    ):
        super().__init__(layers=[])
        self.config = config
        # retrieval=False: the same model and local window with no memory at all (a baseline);
        # chunks leaving the window are dropped, nothing is embedded or stored.
        self.retrieval = retrieval
        self.layout = layout
        self.num_layers = num_layers
        self.batch_size_ = batch_size
        self.banks = [self._new_bank() for _ in range(batch_size)]
        self.broken: str | None = None  # set when a forward failed mid-segment (see prepare)
        self.columns = 0  # input columns consumed (padding included), for transformers' generate
        self.origin = 0  # columns that generate() should treat as already outside input_ids
        self.retriever_info = retriever_info  # the model's retriever.describe(), saved with banks
        self.metadata: dict = {}  # what a loaded memory was saved with (save(metadata=...))
        if kv_heads is None and config.bank_heads is not None:
            raise ValueError("MemLongCache: with MemLongConfig.bank_heads set, pass kv_heads (the model's KV heads)")
        # the model's KV heads per layer (without bank_heads the bank holds them all for each bank layer)
        self.kv_heads = kv_heads or layout.num_kv_heads // len(config.bank_layers)
        self._bank_heads, self._bank_rows, self._streaming = self._plan_heads()
        B = batch_size
        # ---- the timeline, per row: tokens read, the local window, chunk records
        self.seen = [0] * B  # tokens read by each row
        self.win_k: list[torch.Tensor | None] = [None] * num_layers  # per layer [B, H_kv, L, D], unrotated
        self.win_v: list[torch.Tensor | None] = [None] * num_layers
        self.win_pos: torch.Tensor | None = None  # [B, L] stream positions, -1 = empty
        # the window keys as the last call rotated them (per layer), and that call's RoPE frame:
        # the next call reuses them while its frame is the same (decoding within a chunk)
        self.win_k_rot: list[torch.Tensor | None] = [None] * num_layers
        self.rot_frame: tuple | None = None
        # chunk -> its tokens, its [start, end] characters in the source text, its retrieval
        # embedding (chunks still in the window), and the memory retrieved for it (chunk in progress)
        self.chunk_tokens: list[dict[int, list[int]]] = [{} for _ in range(B)]
        self.chunk_chars: list[dict[int, list[int]]] = [{} for _ in range(B)]
        self.chunk_emb: list[dict[int, torch.Tensor]] = [{} for _ in range(B)]
        self.chunk_mem: list[dict[int, tuple[torch.Tensor, torch.Tensor] | None]] = [{} for _ in range(B)]
        # training_free sink (config.sink_tokens): the first tokens' K/V in every bank layer,
        # [H_bank, s, D] each, kept from when chunk 0 leaves the window
        self.sink: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * B
        # ---- a question's retrieval
        self.focus: list[torch.Tensor | None] = [None] * B  # the question's embedding (see focus_on())
        self.focus_search: list[dict] = [{} for _ in range(B)]  # its re-ranking (see question_search())
        self.reread: list[list[list[int]]] = [[] for _ in range(B)]  # [start, end) reread (see mark_reread())
        # ---- between calls
        self._last_memory: dict | None = None  # see prepare(): one slot's retrieved memory, reused
        self._pending: tuple | None = None  # prepare() -> commit(): the segment's positions, counts, RoPE frame

    def _plan_heads(self) -> tuple[dict, torch.Tensor | None, dict[int, torch.Tensor]]:
        """Where each layer's heads sit when memory is gathered (``config.bank_heads``): retrieved
        K/V are laid out with every KV head of every bank layer (the sink's layout). Returns the
        bank's heads per layer (``config.banked_heads``), their rows in that layout (``None``:
        every row) and, per layer, ``[H_kv]`` bool, the heads the bank does not keep (they read the
        sink and the window only; empty without bank_heads)."""
        heads = self.config.banked_heads(self.kv_heads)
        H = self.kv_heads
        rows = [r * H + h for r, layer in enumerate(self.config.bank_layers) for h in heads[layer]]
        partial = len(rows) < H * len(self.config.bank_layers)
        streaming = {
            layer: torch.tensor([h not in heads[layer] for h in range(H)])
            for layer in self.config.bank_layers
            if partial and len(heads[layer]) < H
        }
        return heads, torch.tensor(rows) if partial else None, streaming

    def _new_bank(self) -> MemoryBank:
        c = self.config
        return MemoryBank(
            self.layout,
            c.eviction,
            c.evict_keep_newest,
            c.evict_drop_oldest,
            c.evict_target,
            c.search_backend,
            c.approximate_above,
        )

    def _clear_rows(self, rows) -> None:
        """Forgets rows: what they read, their banks and records (the window's columns stay, emptied)."""
        self._last_memory = None
        for b in rows:
            self.seen[b] = 0
            self.focus[b] = self.sink[b] = None
            self.focus_search[b] = {}
            self.reread[b] = []
            self.chunk_tokens[b].clear()
            self.chunk_chars[b].clear()
            self.chunk_emb[b].clear()
            self.chunk_mem[b].clear()
            self.banks[b].reset()
            if self.win_pos is not None:
                self.win_pos[b] = -1

    # ------------------------------------------------------------------ public lifecycle
    @property
    def batch_size(self) -> int:  # transformers' Cache API
        return self.batch_size_

    def bank(self, row: int = 0) -> MemoryBank:
        """The memory bank of batch row ``row``."""
        return self.banks[row]

    def clone(self) -> MemLongCache:
        """An independent copy of this memory (every row's bank, the window, the chunk in progress):
        what is read into the copy, a question and its answer say, leaves this one as it was. A
        memory focused on a question (:meth:`focus_on`) is refused: copy it before focusing (the
        copy would share the question's re-ranking with this one's bank)."""
        if any(f is not None for f in self.focus):
            raise RuntimeError(
                "refusing to copy a memory focused on a question (focus_on): clone it before focusing, "
                "or call memory.unfocus() first"
            )
        return copy.deepcopy(self)

    def reset(self, rows: list[int] | None = None) -> None:
        """Forgets rows (default: all): window, bank and records. Use at document boundaries."""
        rows = list(range(self.batch_size_)) if rows is None else list(rows)
        self._clear_rows(rows)
        if len(rows) == self.batch_size_:
            self.broken = None
            self.columns = self.origin = 0
            self.win_k = [None] * self.num_layers
            self.win_v = [None] * self.num_layers
            self.win_pos = None
        self.rot_frame = None  # a forgotten row's window changed

    def window_tokens(self, row: int = 0) -> int:
        return 0 if self.win_pos is None else int((self.win_pos[row] >= 0).sum())

    def nbytes(self) -> int:
        """Bytes of state: banks plus local windows."""
        win = sum(t.numel() * t.element_size() for t in self.win_k + self.win_v if t is not None)
        return win + sum(b.nbytes() for b in self.banks)

    # ------------------------------------------------------------------ transformers Cache API
    # generate() branches on these; the defaults inherited from Cache describe a per-layer KV
    # cache built from ``layers`` (empty here), which would misdescribe the memory.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns ``generate()`` should treat as already read (those since ``origin``)."""
        return self.columns - self.origin

    def __len__(self) -> int:
        """The model's number of layers, as for any transformers cache (the window holds one
        K/V per layer). An empty memory is still a memory: see ``__bool__``."""
        return self.num_layers

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_size={self.batch_size_}, layers={self.num_layers}, "
            f"chunks_in_banks={[len(b) for b in self.banks]}, retrieval={self.retrieval})"
        )

    @property
    def is_linear(self) -> list[bool]:
        """No layer is a recurrent (linear-attention) state: generate() slices prompts as usual."""
        return [False] * self.num_layers

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * self.num_layers

    @property
    def is_croppable(self) -> bool:
        """Memory cannot be rolled back (banks evict, counters count): no assisted decoding."""
        return False

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        raise NotImplementedError(
            "MemLongCache is a MemLong memory, not a per-layer KV cache: the stock attention cannot write to it. "
            "Pass it to the MemLong model it came from (model(ids, cache=memory) / model.generate(..., memory=memory))"
        )

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return True

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError(
            "MemLong memory is per sequence and cannot be reordered or expanded across the batch "
            "(beam search, num_return_sequences > 1, contrastive search); use greedy or sampling "
            "generation with one sequence per prompt"
        )

    reorder_cache = batch_repeat_interleave = batch_select_indices = crop = _unsupported

    # ------------------------------------------------------------------ streaming engine
    def allowed_segment(self, remaining: list[int]) -> int:
        """Longest next segment such that every chunk leaving the window during it was
        complete before it (so its memory-layer K/V are already in the window)."""
        tau, w = self.config.chunk_size, self.config.window_chunks
        allowed = [
            (self.seen[b] // tau + w + 1) * tau - self.seen[b] for b in range(self.batch_size_) if remaining[b] > 0
        ]
        return max(1, min(min(allowed), max(remaining)))

    @torch.no_grad()
    def prepare(
        self,
        ids: torch.Tensor,
        counts: list[int],
        retriever: Retriever,
        rotary: RotaryTable,
        gate_activation: str,
        char_offsets: torch.Tensor | None = None,
    ) -> CallContext:
        """Plans one segment: records tokens, embeds completed chunks, writes departing chunks
        to the banks, retrieves for chunks that start, and builds masks/RoPE/memory tensors.

        ``ids`` ``[B, S]`` new tokens per row, left-aligned; ``counts[b]`` of them are real.
        ``char_offsets`` ``[B, S, 2]`` (optional): each token's character span in the source text.
        """
        self._begin_segment()
        starts = list(self.seen)
        self._embed_chunks(self._record_tokens(ids, counts, starts, char_offsets), retriever)
        self._start_chunks(starts, counts, retriever)
        seg = self._segment(starts, counts, ids.shape[1])
        entries, sizes, sinks = self._memory_parts(seg)
        M = int(sizes.max())
        qrel, krel, qmem, cos, sin, frame = self._rope(seg, M, rotary)
        ctx = self._local_context(seg, qrel, krel, qmem, cos, sin, frame, gate_activation, ids.device)
        if M == 0:
            self._last_memory = None
        else:
            self._add_memory(ctx, seg, entries, sizes, sinks, cos, sin, ids.device)
        if seg.aligned:
            self._add_blocks(ctx, seg)
        self._pending = (seg.qpos, seg.kpos, counts, frame)
        return ctx

    def _begin_segment(self) -> None:
        """Refuses a memory an earlier call left inconsistent; marks this one inconsistent until
        :meth:`commit`."""
        if self.broken:
            raise RuntimeError(
                f"this memory was left inconsistent by an earlier error ({self.broken}); call .reset() "
                "or start from a saved bank"
            )
        # Until commit() succeeds the state is half-updated (tokens recorded, chunks written).
        self.broken = "a forward call failed between planning and committing a segment"

    def _record_tokens(
        self, ids: torch.Tensor, counts: list[int], starts: list[int], char_offsets: torch.Tensor | None
    ) -> list[tuple[int, int]]:
        """Adds the segment's tokens (and their characters) to the records of their chunks; returns
        the ``(row, chunk)`` it completes."""
        tau = self.config.chunk_size
        todo: list[tuple[int, int]] = []
        for b in range(ids.shape[0]):
            toks = ids[b, : counts[b]].tolist()
            p = starts[b]
            while toks:
                c, off = divmod(p, tau)
                take = toks[: tau - off]
                self.chunk_tokens[b].setdefault(c, []).extend(take)
                if char_offsets is not None:
                    i = p - starts[b]
                    lo, hi = int(char_offsets[b, i, 0]), int(char_offsets[b, i + len(take) - 1, 1])
                    span = self.chunk_chars[b].setdefault(c, [lo, hi])
                    span[1] = hi
                if len(self.chunk_tokens[b][c]) == tau:
                    todo.append((b, c))
                toks = toks[len(take) :]
                p += len(take)
        return todo

    def _embed_chunks(self, todo: list[tuple[int, int]], retriever: Retriever) -> None:
        """The retrieval embeddings of the completed chunks ``todo`` (one retriever batch)."""
        if todo and self.retrieval:
            with phase("retriever"):
                embs = retriever.embed([self.chunk_tokens[b][c] for b, c in todo])
            for (b, c), e in zip(todo, embs):
                self.chunk_emb[b][c] = e

    def _start_chunks(self, starts: list[int], counts: list[int], retriever: Retriever) -> None:
        """Each chunk that starts in the segment, in stream order: the chunk leaving the window goes
        to the bank (the first one keeps its sink), then the bank is searched for the new chunk."""
        cfg = self.config
        tau, w = cfg.chunk_size, cfg.window_chunks
        for b in range(len(starts)):
            first = -(-starts[b] // tau)  # first chunk starting at or after the segment start
            for j in range(first, (starts[b] + counts[b] - 1) // tau + 1):  # empty when counts[b] == 0
                leaving = j - w - 1  # banked already if flush_window took it early
                leaves = leaving >= 0 and not self._flushed(b, leaving)
                if leaving == 0 and leaves and cfg.sink_tokens:
                    self._keep_sink(b)
                if not self.retrieval:
                    self.chunk_tokens[b].pop(leaving, None)
                    self.chunk_chars[b].pop(leaving, None)
                    continue
                query = self._query(b, j, retriever)
                if j - 1 not in self.chunk_tokens[b]:
                    self.chunk_emb[b].pop(j - 1, None)  # a flushed chunk's embedding, kept for this query
                if leaves:
                    with phase("bank_write"):
                        self._depart(b, leaving)
                with phase("search"):
                    self.chunk_mem[b][j] = self._retrieve(b, query, self.focus_search[b])

    def _segment(self, starts: list[int], counts: list[int], S: int) -> Segment:
        """Where the segment's tokens and the window's keys sit, and the local mask."""
        tau, w = self.config.chunk_size, self.config.window_chunks
        B = len(starts)
        qpos = torch.full((B, S), -1, dtype=torch.long)
        for b in range(B):
            qpos[b, : counts[b]] = torch.arange(starts[b], starts[b] + counts[b])
        kpos = qpos if self.win_pos is None else torch.cat([self.win_pos, qpos], dim=1)
        L = kpos.shape[1] - S
        qchunk, kchunk = qpos.div(tau, rounding_mode="floor"), kpos.div(tau, rounding_mode="floor")
        qvalid = qpos >= 0
        mask = (
            (kpos[:, None, :] >= 0)
            & (kpos[:, None, :] <= qpos[:, :, None])
            & (kchunk[:, None, :] >= qchunk[:, :, None] - w)
        )
        pad_rows, pad_cols = (~qvalid).nonzero(as_tuple=True)
        mask[pad_rows, pad_cols, L + pad_cols] = True  # padding queries attend to themselves only
        base = torch.tensor([max(0, s // tau - w) * tau for s in starts]).view(B, 1)
        # retrieved memory, grouped by the chunk slot (of this segment) each query belongs to
        first_chunk = torch.tensor([s // tau for s in starts]).view(B, 1)
        slot = (qchunk - first_chunk).clamp_min(0)
        n = int(slot[qvalid].max()) + 1 if bool(qvalid.any()) else 1
        aligned = B == 1 or (len(set(starts)) == 1 and min(counts) == S)
        return Segment(starts, qpos, kpos, qchunk, qvalid, mask, base, first_chunk, slot, n, aligned)

    def _memory_parts(self, seg: Segment) -> tuple[list[list[list[KV]]], torch.Tensor, torch.Tensor]:
        """What each row's chunk slots read besides the window (:meth:`_memory_of`), and the tokens
        of it, ``[B, n]``, and of its sink, ``[B, n]``."""
        tau, B, n = self.config.chunk_size, len(seg.starts), seg.slots
        entries = [[self._memory_of(b, seg.starts[b] // tau + t) for t in range(n)] for b in range(B)]
        sizes = torch.tensor([[sum(k.shape[1] for k, _ in parts) for parts in row] for row in entries])  # [B, n]
        sinks = torch.tensor([[self._sink_of(b, seg.starts[b] // tau + t) for t in range(n)] for b in range(B)])
        return entries, sizes, sinks

    def _rope(
        self, seg: Segment, M: int, rotary: RotaryTable
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
        """RoPE positions in the local frame of queries, keys and queries against memory (``M``
        retrieved tokens at most per slot), the cos/sin table, and the frame (to reuse rotated keys)."""
        cfg = self.config
        tau, w = cfg.chunk_size, cfg.window_chunks
        qrel = (seg.qpos - seg.base).clamp_min(0)
        krel = (seg.kpos - seg.base).clamp_min(0)
        qmem = (seg.qpos - (seg.qchunk - w).clamp_min(0) * tau).clamp_min(0)
        training_free = cfg.mode == "training_free"
        if training_free:
            # Retrieved tokens sit just before each query's window: every local position moves M
            # further on (relative positions, so local scores are unchanged), and a slot's m
            # retrieved tokens take the m positions before its window's start, in stream order.
            qrel, krel = qrel + M, krel + M
            qmem = qrel
        elif cfg.memory_positions == "none":  # memory attention without positions: content only
            qmem = torch.zeros_like(qmem)
        P = int(max(qrel.max(), krel.max(), qmem.max())) + 1
        cos, sin = rotary(P)
        # keys at the same stream positions, rotated in the same frame as last call: reusable
        frame = (
            seg.base.flatten().tolist(),
            M if training_free else 0,
            cos.untyped_storage().data_ptr(),
            cos.dtype,
            str(cos.device),
        )
        return qrel, krel, qmem, cos, sin, frame

    def _local_context(
        self,
        seg: Segment,
        qrel: torch.Tensor,
        krel: torch.Tensor,
        qmem: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        frame: tuple,
        gate_activation: str,
        device: torch.device,
    ) -> CallContext:
        """The call's context without memory: the window, the local mask, RoPE tables."""
        cfg = self.config
        H_kv = self.kv_heads
        training_free = cfg.mode == "training_free"
        window_rot = self.win_k_rot if frame == self.rot_frame else None
        return CallContext(
            retrieval_layers=frozenset(cfg.retrieval_layer_indices),
            chunk_size=cfg.chunk_size,
            window_k=list(self.win_k),
            window_v=list(self.win_v),
            window_k_rotated=None if window_rot is None else list(window_rot),
            local_mask=seg.mask.unsqueeze(1).to(device),
            cos_q=rope_at(cos, qrel),
            sin_q=rope_at(sin, qrel),
            cos_k=rope_at(cos, krel),
            sin_k=rope_at(sin, krel),
            cos_qm=rope_at(cos, qmem),
            sin_qm=rope_at(sin, qmem),
            gate_activation=gate_activation,
            fusion=cfg.fusion,
            training_free=training_free,
            mem_heads={layer: slice(r * H_kv, (r + 1) * H_kv) for r, layer in enumerate(cfg.bank_layers)}
            if training_free
            else {},
        )

    def _add_memory(
        self,
        ctx: CallContext,
        seg: Segment,
        entries: list[list[list[KV]]],
        sizes: torch.Tensor,
        sinks: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        device: torch.device,
    ) -> None:
        """Adds the retrieved memory to ``ctx``, grouped by chunk slot: K/V ``[B * n, H, M, D]``,
        which of them are real, which slot each query reads (and, training_free, their RoPE)."""
        cfg = self.config
        tau, w = cfg.chunk_size, cfg.window_chunks
        training_free = cfg.mode == "training_free"
        B, n, M = len(seg.starts), seg.slots, int(sizes.max())
        qpos, qvalid, slot = seg.qpos, seg.qvalid, seg.slot
        # host tier -> GPU: stage in pinned memory so the copy below is asynchronous
        pin = torch.device(device).type == "cuda" and torch.device(self.layout.device).type == "cpu"
        valid = torch.arange(M) < sizes[..., None]  # [B, n, M]
        last = self._memory_buffers(entries, M, device, pin)
        mem_k, mem_v = last["mem_k"], last["mem_v"]
        self._last_memory = last if B * n == 1 else None
        slot_has = valid.any(-1)  # [B, n]
        valid[~slot_has] = True  # keep softmax finite; has_mem zeroes these slots' output
        has_mem = slot_has.gather(1, slot) & qvalid
        grid = torch.where(qvalid, slot * tau + qpos.remainder(tau), torch.full_like(qpos, n * tau))
        ctx.mem_k = mem_k.flatten(0, 1).to(device, non_blocking=pin)
        ctx.mem_v = mem_v.flatten(0, 1).to(device, non_blocking=pin)
        ctx.mem_valid = valid.flatten(0, 1)[:, None, None, :].to(device)
        ctx.grid_index = grid.to(device)
        ctx.num_slots = n
        ctx.has_mem = has_mem[:, None, :, None].to(device=device, dtype=cos.dtype)
        if training_free:
            m = valid.sum(-1, keepdim=True)  # [B, n, 1] retrieved tokens per slot
            chunk_t = seg.first_chunk[:, :, None] + torch.arange(n)[None, :, None]  # [B, n, 1]
            window_t = (chunk_t - w).clamp_min(0) * tau - seg.base[:, :, None]  # slot's window start, local frame
            # rows past a slot's m retrieved tokens, and slots a padded row does not reach, are masked
            # out: their positions only need to stay inside the RoPE table
            top = cos.shape[0] - 1
            kpos_mem = (window_t + M - m + torch.arange(M)).clamp(0, top).flatten(0, 1)  # [B*n, M]
            ctx.cos_mk, ctx.sin_mk = rope_at(cos, kpos_mem), rope_at(sin, kpos_mem)
            ctx.slot_has = slot_has.to(device)
            if self._streaming:
                # heads the bank does not keep read the sink only, placed just before the window
                s_t = sinks[:, :, None]  # [B, n, 1]
                is_sink = torch.arange(M) < s_t  # [B, n, M]
                kpos_sink = torch.where(is_sink, window_t + M - s_t + torch.arange(M), 0).clamp(0, top).flatten(0, 1)
                ctx.cos_sk, ctx.sin_sk = rope_at(cos, kpos_sink), rope_at(sin, kpos_sink)
                ctx.sink_valid = is_sink.flatten(0, 1)[:, None, None, :].to(device)  # [B*n, 1, 1, M]
                ctx.streaming = {layer: h.to(device) for layer, h in self._streaming.items()}
                # layers none of whose heads is banked read the leading sink rows alone
                ctx.sink_only = frozenset(layer for layer, h in self._streaming.items() if bool(h.all()))
                ctx.sink_rows = min(M, int(sinks.max()))
            if B * n == 1:
                if last["kpos"] is None or not torch.equal(last["kpos"], kpos_mem):
                    last["kpos"], last["rotated"], last["buffers"] = kpos_mem, {}, {}
                ctx.mem_rotated = last["rotated"]

    def _memory_buffers(self, entries: list[list[list[KV]]], M: int, device: torch.device, pin: bool) -> dict:
        """The retrieved K/V of every row's slots, ``mem_k`` / ``mem_v`` ``[B, n, H_mem, M, D]`` on
        the bank's tier (pinned when ``pin``), with what the call may reuse next time (the record
        :attr:`_last_memory` keeps for one slot)."""
        cfg, L_ = self.config, self.layout
        B, n = len(entries), len(entries[0])
        # The same retrieved tensors as the previous call (decoding within a chunk, one slot):
        # its buffers are reused, and its memory keys as each layer rotated them while the
        # positions are the same (CallContext.mem_rotated). Holding the parts keeps ids unique.
        parts_now = [p for row in entries for parts in row for p in parts]
        sig = (B, n, M, str(device), tuple(id(k) for k, _ in parts_now))
        last = self._last_memory if B * n == 1 else None
        if last is not None and last["sig"] == sig:
            return last
        H_mem = self.kv_heads * len(cfg.bank_layers)  # every KV head of every bank layer (the sink's layout)
        mem_k = torch.empty(B, n, H_mem, M, L_.head_dim, dtype=L_.out_dtype, device=L_.device, pin_memory=pin)
        mem_v = torch.empty(mem_k.shape, dtype=mem_k.dtype, device=mem_k.device, pin_memory=pin)
        rows = None if self._bank_rows is None else self._bank_rows.to(mem_k.device)
        for b in range(B):
            for t, parts in enumerate(entries[b]):
                m = 0
                for k, v in parts:  # written in place, one after the other: no concatenated copy
                    e = m + k.shape[1]
                    if k.shape[0] == H_mem:  # every head: the sink, or a bank without bank_heads
                        mem_k[b, t, :, m:e], mem_v[b, t, :, m:e] = k, v
                    else:  # bank_heads: the bank's heads at their rows, the others zero (masked out)
                        mem_k[b, t, :, m:e], mem_v[b, t, :, m:e] = 0, 0
                        mem_k[b, t, rows, m:e], mem_v[b, t, rows, m:e] = k, v
                    m = e
                # only the unused tail is cleared (masked out, but it must not hold NaN/inf garbage)
                mem_k[b, t, :, m:], mem_v[b, t, :, m:] = 0, 0
        return {
            "sig": sig,
            "parts": parts_now,
            "mem_k": mem_k,
            "mem_v": mem_v,
            "kpos": None,
            "rotated": {},
            "buffers": {},
        }

    def _add_blocks(self, ctx: CallContext, seg: Segment) -> None:
        """Rows aligned: splits local attention into blocks of whole chunks (:meth:`_blocks`), and
        lets decoding append to the buffers of the previous call (DecodeBuffer)."""
        tau = self.config.chunk_size
        training_free = self.config.mode == "training_free"
        qchunk, start = seg.qchunk[0], seg.starts[0]
        # training_free: one block per chunk, so each block reads one slot's memory
        ctx.local_blocks = self._blocks(ctx.local_mask, qchunk, per=1 if training_free else None)
        ctx.block_slots = [int(qchunk[ql]) - start // tau for ql, *_ in ctx.local_blocks]
        if ctx.mem_rotated is not None and [b[2:4] for b in ctx.local_blocks] == [(0, seg.kpos.shape[1])]:
            # one sequence in one chunk seeing its whole window (decoding): each layer appends the
            # new tokens to buffers that already hold the memory and the window (DecodeBuffer)
            ctx.decode_buffers = self._last_memory["buffers"]

    def _blocks(self, mask: torch.Tensor, qchunk: torch.Tensor, per: int | None = None):
        """Splits the queries (rows aligned) into groups of ``per`` whole chunks, each with the
        contiguous key range its mask allows: local attention then costs about S x window
        instead of S x (window + S). By default groups hold >= 128 queries to keep calls efficient."""
        S = mask.shape[2]
        per = per or max(1, -(-128 // self.config.chunk_size))
        bounds = [0]
        chunks = qchunk.tolist()
        for i in range(1, S):
            if chunks[i] != chunks[i - 1] and chunks[i] >= 0 and (chunks[i] - chunks[bounds[-1]]) >= per:
                bounds.append(i)
        bounds.append(S)
        blocks = []
        for ql, qh in zip(bounds[:-1], bounds[1:]):
            cols = mask[0, 0, ql:qh].any(0).nonzero().flatten()
            kl, kh = int(cols[0]), int(cols[-1]) + 1
            blocks.append((ql, qh, kl, kh, mask[:, :, ql:qh, kl:kh]))
        return blocks

    def _memory_of(self, b: int, j: int) -> list[KV]:
        """What chunk ``j`` of row ``b`` reads besides its window, in order: the sink (once chunk 0
        has left the window; every KV head of every bank layer), then the chunks retrieved for it
        (the bank's heads); K/V ``[H_bank, m, D]`` each."""
        parts = [self.sink[b]] if self._sink_of(b, j) else []
        mem = self.chunk_mem[b].get(j)
        return parts if mem is None else parts + [mem]

    def _sink_of(self, b: int, j: int) -> int:
        """Sink tokens chunk ``j`` of row ``b`` reads (0 until chunk 0 has left its window, by
        sliding or by :meth:`flush_window`)."""
        if self.sink[b] is None:
            return 0
        gone = j > self.config.window_chunks or not bool((self.win_pos[b] == 0).any())
        return self.sink[b][0].shape[1] if gone else 0

    def _flushed(self, b: int, c: int) -> bool:
        """Chunk ``c`` of row ``b`` left the window early (:meth:`flush_window`): it is neither
        recorded as in the window nor has a position there."""
        if c in self.chunk_tokens[b] or self.win_pos is None:
            return False
        return not bool((self.win_pos[b].div(self.config.chunk_size, rounding_mode="floor") == c).any())

    def _keep_sink(self, b: int) -> None:
        """Chunk 0 of row ``b`` leaves the window: keep its first ``sink_tokens`` tokens' K/V."""
        s, layers = self.config.sink_tokens, self.config.bank_layers
        idx = (self.win_pos[b] == 0).nonzero().flatten()
        if idx.numel() != 1:
            raise RuntimeError(f"the first chunk of row {b} is not in the window; state is inconsistent")
        i = int(idx[0])
        dtype = self.layout.out_dtype
        self.sink[b] = tuple(
            torch.cat([t[layer][b, :, i : i + s] for layer in layers]).to(dtype) for t in (self.win_k, self.win_v)
        )

    def _query(self, b: int, j: int, retriever: Retriever) -> torch.Tensor | None:
        """Retrieval query for chunk ``j`` of row ``b`` (None: nothing to retrieve with)."""
        if self.focus[b] is not None:
            return self.focus[b]
        if self.config.retrieval_query == "causal":
            return self.chunk_emb[b].get(j - 1)
        if j in self.chunk_emb[b]:
            return self.chunk_emb[b][j]
        with phase("retriever"):
            return retriever.embed([self.chunk_tokens[b][j]])[0]  # partial chunk ("chunk" mode only)

    def _offsets(self, question: bool) -> tuple[int, ...]:
        """The chunks each hit brings: ``question_offsets`` for a question (when set), else ``retrieval_offsets``."""
        cfg = self.config
        return cfg.question_offsets if question and cfg.question_offsets is not None else cfg.retrieval_offsets

    @torch.no_grad()
    def retrieve_again(self, retriever: Retriever, rows: list[int] | None = None) -> list[int]:
        """Retrieves again for each row's chunk in progress, with the embedding of the last
        ``chunk_size`` tokens read (they may span two chunks). Tokens read after this call see
        the new retrieval; tokens already read keep what they saw: still causal. A row whose next
        token starts a chunk needs nothing: that chunk will retrieve with exactly those tokens.
        Returns the rows retrieved for. (A question retrieves with its own embedding instead:
        :meth:`focus_on`, ``generate(requery=...)``.)"""
        tau = self.config.chunk_size
        if not self.retrieval:
            return []
        rows = [b for b in (range(self.batch_size_) if rows is None else rows) if self.seen[b] % tau]
        if not rows:
            return []
        chunks = [self.seen[b] // tau for b in rows]
        recent = [(self._tokens_of(b, c - 1) + self.chunk_tokens[b][c])[-tau:] for b, c in zip(rows, chunks)]
        with phase("retriever"):
            queries = retriever.embed(recent)  # one batch, as in prepare()
        for b, c, query in zip(rows, chunks, queries):
            self.chunk_mem[b][c] = self._retrieve(b, query)
        return rows

    @torch.no_grad()
    def flush_window(self, rows: list[int] | None = None) -> list[int]:
        """Writes every whole chunk of the rows' local windows to their banks now, as if it had
        left the window (reread text is dropped, as then), and hides it from what is read next: the
        window keeps only the chunk in progress, the sink (kept now if the first chunk was still in
        the window) is read from the next query on. For a question that reads only what it
        retrieves (``question_fresh_window``): its hits, read again or as memory, come from a bank
        that holds the whole text, and no unretrieved text of the window competes with them.
        Returns the chunk ids banked or dropped, over the rows."""
        rows = list(range(self.batch_size_)) if rows is None else list(rows)
        if self.win_pos is None:
            return []
        tau, cfg = self.config.chunk_size, self.config
        done: list[int] = []
        for b in rows:
            chunks = [c for c, t in sorted(self.chunk_tokens[b].items()) if len(t) == tau]
            if not chunks:
                continue
            if chunks[0] == 0 and cfg.sink_tokens and self.sink[b] is None:
                self._keep_sink(b)
            last = self.seen[b] // tau - 1  # at a chunk boundary: the next chunk's causal query
            query = self.chunk_emb[b].get(last) if self.seen[b] % tau == 0 else None
            for c in chunks:
                if self.retrieval:
                    with phase("bank_write"):
                        self._depart(b, c)
                else:
                    self.chunk_tokens[b].pop(c)
                    self.chunk_chars[b].pop(c, None)
            if query is not None:  # kept for that query alone (_start_chunks drops it)
                self.chunk_emb[b][last] = query
            gone = torch.isin(self.win_pos[b].div(tau, rounding_mode="floor"), torch.tensor(chunks))
            self.win_pos[b] = torch.where(gone & (self.win_pos[b] >= 0), -1, self.win_pos[b])
            done += chunks
        self._last_memory = None
        return done

    def _tokens_of(self, b: int, c: int) -> list[int]:
        """Chunk ``c`` of row ``b``'s tokens: from the window, else from the bank (flushed), else none."""
        if c in self.chunk_tokens[b]:
            return list(self.chunk_tokens[b][c])
        slot = self.banks[b].slots_by_chunk().get(c) if c >= 0 else None
        return [] if slot is None else self.banks[b].token_ids[slot].tolist()

    def requery(self, retriever: Retriever, rows: list[int] | None = None) -> list[int]:
        """Deprecated: :meth:`retrieve_again` (``requery`` names a question's own retrieval,
        ``generate(requery=...)``)."""
        warnings.warn(
            "MemLongCache.requery() is now MemLongCache.retrieve_again(); requery names a question's own "
            "retrieval (generate(requery=...))",
            FutureWarning,
            stacklevel=2,
        )
        return self.retrieve_again(retriever, rows)

    def _depart(self, b: int, c: int) -> None:
        """Chunk ``c`` of row ``b`` leaves the window: write it to the bank (unless it is reread text)."""
        tau = self.config.chunk_size
        pos = self.win_pos[b]
        idx = (pos == c * tau).nonzero().flatten()
        if idx.numel() != 1 or int(pos[int(idx[0]) + tau - 1]) != (c + 1) * tau - 1:
            raise RuntimeError(f"chunk {c} of row {b} is not whole in the window; state is inconsistent")
        lo, hi = c * tau, (c + 1) * tau
        again = any(s <= lo and hi <= e for s, e in self.reread[b])
        self.reread[b] = [r for r in self.reread[b] if r[1] > hi]  # ranges no later chunk can fall in go
        if again:
            self.chunk_tokens[b].pop(c)
            self.chunk_emb[b].pop(c)
            self.chunk_chars[b].pop(c, None)
            return
        i = int(idx[0])
        k, v = self._bank_kv(b, i)
        tokens = torch.tensor(self.chunk_tokens[b].pop(c), dtype=torch.int32)
        emb = self.chunk_emb[b].pop(c)
        chars = self.chunk_chars[b].pop(c, None)
        self.banks[b].add(
            k,
            v,
            emb,
            chunk_id=c,
            span=(c * tau, (c + 1) * tau),
            token_ids=tokens,
            text_span=tuple(chars) if chars else None,
        )

    def _bank_kv(self, b: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The K/V the bank keeps of row ``b``'s chunk at window index ``i``: ``[H_bank, tau, D]``,
        the bank layers' heads stacked (training_free: every retrieval layer; only ``bank_heads``
        when set)."""
        tau, layers = self.config.chunk_size, self.config.bank_layers
        if self._bank_rows is not None:
            picked = [(layer, list(h)) for layer, h in self._bank_heads.items() if h]
            return tuple(
                torch.cat([w[layer][b, h, i : i + tau] for layer, h in picked]) for w in (self.win_k, self.win_v)
            )
        if len(layers) == 1:
            return self.win_k[layers[0]][b, :, i : i + tau], self.win_v[layers[0]][b, :, i : i + tau]
        return tuple(torch.cat([w[layer][b, :, i : i + tau] for layer in layers]) for w in (self.win_k, self.win_v))

    def _retrieve(self, b: int, query: torch.Tensor | None, search: dict | None = None):
        """Row ``b``'s memory for ``query``; ``search``: a question's re-ranking (:meth:`question_search`)."""
        bank = self.banks[b]
        if query is None or len(bank) == 0:
            return None
        cfg = self.config
        question = self.focus[b] is not None
        order = cfg.question_order if question else "stream"
        slots = bank.retrieve(query, cfg.top_k, self._offsets(question), order=order, **(search or {}))
        return bank.gather(slots, keep_order=order == "score") if slots.numel() else None

    @torch.no_grad()
    def commit(self, ctx: CallContext) -> None:
        """After the forward: appends the segment's K/V to each layer's window and drops what
        no query can see any more (chunks stay until written to memory)."""
        qpos, kpos, counts, frame = self._pending
        self._pending = None
        tau, w = self.config.chunk_size, self.config.window_chunks
        B = qpos.shape[0]
        nxt = torch.tensor([self.seen[b] + counts[b] for b in range(B)])
        lowest = ((nxt - 1).div(tau, rounding_mode="floor") - w).view(B, 1)  # oldest chunk to keep
        keep = (kpos >= 0) & (kpos.div(tau, rounding_mode="floor") >= lowest)
        big = torch.iinfo(torch.long).max
        order = torch.argsort(torch.where(keep, kpos, big), dim=1)
        Lnew = int(keep.sum(1).max())
        idx = order[:, :Lnew]
        self.win_pos = torch.where(keep.gather(1, idx), kpos.gather(1, idx), -1)
        # Rows aligned (one sequence, or no padding): what stays is one contiguous range, a slice
        first = int(idx[0, 0]) if Lnew else 0
        contiguous = bool((idx == first + torch.arange(Lnew)).all())
        for layer in range(self.num_layers):
            kk, vv = ctx.recorded[layer]  # [window; new] as the attention saw it
            rot = ctx.recorded_rotated.get(layer)
            dtype = kk.dtype if self.win_k[layer] is None else self.win_k[layer].dtype
            kk, vv = kk.detach().to(dtype), vv.detach().to(dtype)
            if contiguous:
                # a view while it is most of the storage (decoding); a copy that frees the rest when a
                # long segment leaves only its last window (reading)
                copy = 2 * Lnew < kk.shape[2]

                def kept(t: torch.Tensor) -> torch.Tensor:
                    t = t[:, :, first : first + Lnew]
                    return t.clone() if copy else t

                self.win_k[layer], self.win_v[layer] = kept(kk), kept(vv)
                self.win_k_rot[layer] = None if rot is None else kept(rot.detach())
            else:
                g = idx.to(kk.device)[:, None, :, None].expand(B, kk.shape[1], Lnew, kk.shape[3])
                self.win_k[layer], self.win_v[layer] = kk.gather(2, g), vv.gather(2, g)
                self.win_k_rot[layer] = None
        self.rot_frame = frame
        for b in range(B):
            self.seen[b] = int(nxt[b])
            cur = self.seen[b] // tau
            for j in [j for j in self.chunk_mem[b] if j < cur]:
                del self.chunk_mem[b][j]
        self.broken = None
