"""Retrieval causal attention, registered with transformers as the ``"memlong"`` attention.

The wrapped model calls its decoder with ``position_ids`` all zero, so the stock RoPE leaves
queries and keys unrotated (as if at position 0: exactly the form the memory bank stores).
This function then, for every layer:

1. records the layer's window keys/values with the new ones appended (the caller commits them
   to the local window after the forward, so a gradient-checkpointing recomputation cannot
   write twice);
2. applies RoPE at window-relative positions to the query and to ``[window keys; new keys]``
   (only to the new keys when the cache hands over the window keys as the previous call rotated
   them, in the same frame: every token of a chunk while decoding) and runs causal attention
   over the block-sliding local window (explicit boolean mask);
3. in a retrieval layer, also attends to the chunks retrieved for each query's chunk
   (memory keys unrotated, position 0; the query rotated at its position in its window) and
   fuses them as in the paper (eq. 2-5): ``out = local + g * memory`` with separate softmaxes,
   ``g = tanh(theta)`` per head, ``theta`` starting at 0 so the layer starts equal to the base.
   In training_free mode with ``bank_heads``, the heads the bank does not keep attend to the sink
   and the window only (their retrieved rows masked out; the sink just before the window).
   In training_free mode, one sequence decoding within a chunk writes its new keys/values into
   per-layer buffers that already hold the retrieved memory and the window (:class:`DecodeBuffer`)
   instead of concatenating them again at every token.

Shapes: ``B`` batch, ``H`` query heads, ``H_kv`` key/value heads, ``S`` new tokens, ``L``
window tokens, ``D`` head dim, ``n`` chunk slots touched by the call, ``M`` retrieved tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from memlong.profiling import phase

ATTN_NAME = "memlong"
GATE_NAME = "memlong_gate"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, h, T, D]``, ``cos``/``sin`` ``[B, 1, T, D]`` (the stock Llama formula)."""
    return (x * cos) + (rotate_half(x) * sin)


@dataclass
class CallContext:
    """What one forward call over a segment needs beyond the stock layer inputs.

    Built by :class:`memlong.cache.MemLongCache` before the call; read-only during it except for
    ``recorded``, which the attention writes (overwriting, so recomputation is harmless).
    """

    retrieval_layers: frozenset[int]  # 0-based
    chunk_size: int
    window_k: list[torch.Tensor | None]  # per layer [B, H_kv, L, D], unrotated
    window_v: list[torch.Tensor | None]
    # per layer: the window keys already rotated with this call's cos_k (their first L rows), or None
    window_k_rotated: list[torch.Tensor | None] | None
    local_mask: torch.Tensor  # [B, 1, S, L+S] bool, True = may attend
    cos_q: torch.Tensor  # [B, 1, S, D] local RoPE of the queries
    sin_q: torch.Tensor
    cos_k: torch.Tensor  # [B, 1, L+S, D] local RoPE of window + new keys
    sin_k: torch.Tensor
    cos_qm: torch.Tensor  # [B, 1, S, D] RoPE of the queries against memory (keys at 0)
    sin_qm: torch.Tensor
    gate_activation: str = "tanh"
    fusion: str = "separate"
    # training_free mode: one softmax over [retrieved; local], no gate; memory keys rotated at
    # positions just before the window (cos_mk/sin_mk), each layer reading its own heads of the bank
    training_free: bool = False
    mem_heads: dict[int, slice] = field(default_factory=dict)  # layer -> its heads in mem_k/mem_v
    # MemLongConfig.bank_heads: layer -> [H_kv] bool, its heads the bank does not keep ("streaming":
    # they read only the sink rows, sink_valid, rotated just before the window, cos_sk/sin_sk); {}: none
    streaming: dict[int, torch.Tensor] = field(default_factory=dict)
    sink_valid: torch.Tensor | None = None  # [B*n, 1, 1, M] bool: the rows that hold the sink
    sink_only: frozenset[int] = frozenset()  # layers none of whose heads is banked (see _sink_only_rows)
    sink_rows: int = 0  # the leading rows that hold a sink in some slot
    cos_sk: torch.Tensor | None = None  # [B*n, 1, M, D]
    sin_sk: torch.Tensor | None = None
    cos_mk: torch.Tensor | None = None  # [B*n, 1, M, D]
    sin_mk: torch.Tensor | None = None
    slot_has: torch.Tensor | None = None  # [B, n] bool: the slot retrieved something
    block_slots: list[int] | None = None  # the chunk slot of each local block (one chunk per block)
    mem_k: torch.Tensor | None = None  # [B*n, H_bank, M, D] (H_bank: H_kv per stored layer)
    mem_v: torch.Tensor | None = None
    mem_valid: torch.Tensor | None = None  # [B*n, 1, 1, M] bool
    # training_free, one slot: layer -> (rotated memory keys, memory values) in the query dtype,
    # filled by the attention and kept by the cache while the memory and its positions stay the same
    mem_rotated: dict | None = None
    # training_free, one slot whose queries see the whole window (decoding): layer -> DecodeBuffer,
    # kept by the cache beside mem_rotated; None: every call concatenates
    decode_buffers: dict | None = None
    grid_index: torch.Tensor | None = None  # [B, S] long: slot*tau + offset, pads -> n*tau
    num_slots: int = 0
    has_mem: torch.Tensor | None = None  # [B, 1, S, 1] query dtype: 1 where its chunk has memory
    # Query blocks with the key range they can see: (q_lo, q_hi, k_lo, k_hi, mask [B,1,q,k]).
    # Lets local attention skip keys outside each block's window (None: one masked call).
    local_blocks: list[tuple[int, int, int, int, torch.Tensor]] | None = None
    recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    recorded_rotated: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> k_local


@dataclass
class DecodeBuffer:
    """One layer's keys and values while decoding within a chunk (training_free, one sequence),
    laid out so that a new token writes one row of each instead of concatenating the window and
    the retrieved memory again at every call:

    * ``kr`` ``[1, H_kv, M + cap, D]``: the rotated memory keys, then the rotated window keys;
    * ``v``: the memory values, then the window values;
    * ``k`` ``[1, H_kv, cap, D]``: the unrotated window keys (what the cache keeps as the window).

    The cache keeps the window as views of these (``commit`` slices what the attention recorded),
    so the next call finds its window at the start of ``k``/after the memory in ``kr``/``v`` and
    appends. Rows past the window are free: no view reaches them.
    """

    k: torch.Tensor
    kr: torch.Tensor
    v: torch.Tensor
    mem_k: torch.Tensor  # the rotated memory keys copied in (identity: the same memory, same positions)

    @classmethod
    def build(cls, mem_k, mem_v, wk, wv, wk_rot, extra: int) -> "DecodeBuffer":
        """A buffer holding ``mem_k``/``mem_v`` and the window (``wk_rot``: its keys rotated) with
        room for ``extra`` more tokens."""
        (_, H, M, D), L = mem_k.shape, wk.shape[2]
        k = wk.new_empty(1, H, L + extra, D)
        kr = wk.new_empty(1, H, M + L + extra, D)
        v = wk.new_empty(kr.shape)
        k[:, :, :L] = wk
        kr[:, :, :M], kr[:, :, M : M + L] = mem_k, wk_rot
        v[:, :, :M], v[:, :, M : M + L] = mem_v, wv
        return cls(k, kr, v, mem_k)

    def continues(self, mem_k, wk, wv, wk_rot, S: int) -> bool:
        """Whether this call's window is this buffer's, with this memory, and ``S`` more rows fit.
        ``wk_rot``: the rotated window the cache handed over (:func:`_handed_rotated_window`), or None."""
        M, L = self.mem_k.shape[2], wk.shape[2]
        return (
            mem_k is self.mem_k
            and wk_rot is not None
            and L + S <= self.k.shape[2]
            and wk.dtype == wv.dtype == wk_rot.dtype == self.k.dtype
            and wk.data_ptr() == self.k.data_ptr()
            and wk.stride() == self.k.stride()
            and wk_rot.data_ptr() == self.kr[:, :, M:].data_ptr()
            and wk_rot.stride() == self.kr.stride()
            and wv.data_ptr() == self.v[:, :, M:].data_ptr()
            and wv.stride() == self.v.stride()
            and wv.shape[2] == L
        )


def gate_value(module: torch.nn.Module, activation: str, dtype: torch.dtype) -> torch.Tensor:
    """The gate ``g`` of a retrieval layer as ``[1, H or 1, 1, 1]``."""
    theta = getattr(module, GATE_NAME)
    g = torch.tanh(theta) if activation == "tanh" else theta
    return g.to(dtype).view(1, -1, 1, 1)


def _attend_with_lse(q, k, v, mask, scale):
    """Eager attention that also returns the log-sum-exp of each query's scores.

    ``q`` ``[N, H, T, D]``, ``k``/``v`` ``[N, H_kv, K, D]``, ``mask`` broadcastable to
    ``[N, H, T, K]`` (bool). Returns ``out`` ``[N, H, T, D]`` and ``lse`` ``[N, H, T]`` (``-inf``
    where a query may attend to nothing; its ``out`` is 0).
    """
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1).clamp_min(-1e30)).nan_to_num(0.0)
    return (probs @ v.float()).to(q.dtype), lse


def _to_grid(x: torch.Tensor, ctx: CallContext) -> torch.Tensor:
    """``[B, H, S, D]`` queries -> ``[B*n, H, tau, D]`` grouped by the chunk slot they belong to."""
    B, H, S, D = x.shape
    tau, n = ctx.chunk_size, ctx.num_slots
    grid = x.new_zeros(B, H, n * tau + 1, D)  # the extra row absorbs padding queries
    grid.scatter_(2, ctx.grid_index[:, None, :, None].expand(B, H, S, D), x)
    return grid[:, :, : n * tau].view(B, H, n, tau, D).transpose(1, 2).reshape(B * n, H, tau, D)


def _from_grid(y: torch.Tensor, ctx: CallContext, S: int) -> torch.Tensor:
    """Inverse of :func:`_to_grid` (padding queries get 0). ``y`` may be ``[B*n, H, tau(, D)]``."""
    tau, n = ctx.chunk_size, ctx.num_slots
    B = y.shape[0] // n
    H = y.shape[1]
    tail = y.shape[3:]
    flat = y.reshape(B, n, H, tau, *tail).transpose(1, 2).reshape(B, H, n * tau, *tail)
    flat = torch.cat([flat, flat.new_zeros(B, H, 1, *tail)], dim=2)
    idx = ctx.grid_index[:, None, :].expand(B, H, S)
    if tail:
        idx = idx[..., None].expand(B, H, S, *tail)
    return flat.gather(2, idx)


def _local_attention(q, k, v, ctx: CallContext, p: float, scale: float) -> torch.Tensor:
    """Causal attention over the block-sliding window: ``[B, H, S, D]``."""
    if ctx.local_blocks is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=ctx.local_mask, dropout_p=p, scale=scale, enable_gqa=True
        )
    return torch.cat(
        [
            F.scaled_dot_product_attention(
                q[:, :, ql:qh], k[:, :, kl:kh], v[:, :, kl:kh], attn_mask=m, dropout_p=p, scale=scale, enable_gqa=True
            )
            for ql, qh, kl, kh, m in ctx.local_blocks
        ],
        dim=2,
    )


def memlong_attention(*args, **kwargs) -> tuple[torch.Tensor, None]:
    """The ``"memlong"`` attention interface (see :func:`_memlong_attention`)."""
    with phase("attention"):
        return _memlong_attention(*args, **kwargs)


def _memlong_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    memlong: CallContext | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The ``"memlong"`` attention interface. ``query`` ``[B, H, S, D]``, ``key``/``value``
    ``[B, H_kv, S, D]`` arrive unrotated (positions 0). Returns ``[B, S, H, D]`` and ``None``."""
    ctx = memlong
    if ctx is None:
        raise RuntimeError(
            "this model uses MemLong attention but was called without MemLong state; call the "
            "wrapped model's forward()/generate() (memlong.wrap / MemLong from_pretrained), not its inner decoder"
        )
    layer = module.layer_idx
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    wk, wv = ctx.window_k[layer], ctx.window_v[layer]
    if (
        ctx.decode_buffers is not None
        and wk is not None
        and layer in ctx.retrieval_layers
        and ctx.mem_k is not None
        and not (module.training or torch.is_grad_enabled())
    ):
        return _buffered_attention(layer, query, key, value, ctx, scale), None
    keys = key if wk is None else torch.cat([wk.to(key.dtype), key], dim=2)
    values = value if wv is None else torch.cat([wv.to(value.dtype), value], dim=2)
    ctx.recorded[layer] = (keys, values)  # the window with the new tokens: commit keeps what stays
    q_local = apply_rope(query, ctx.cos_q, ctx.sin_q)
    done = None if wk is None else _handed_rotated_window(ctx, layer, wk, key.dtype)
    if done is not None:
        # RoPE is elementwise: rotating only the new keys gives the same k_local, bit for bit
        L = wk.shape[2]
        k_local = torch.cat([done, apply_rope(key, ctx.cos_k[:, :, L:], ctx.sin_k[:, :, L:])], dim=2)
    else:
        k_local = apply_rope(keys, ctx.cos_k, ctx.sin_k)
    ctx.recorded_rotated[layer] = k_local
    p = dropout if module.training else 0.0

    if layer not in ctx.retrieval_layers or ctx.mem_k is None:
        out = _local_attention(q_local, k_local, values, ctx, p, scale)
        return out.transpose(1, 2).contiguous(), None

    S = query.shape[2]
    if ctx.training_free:
        mem_k, mem_v = _layer_memory(ctx, layer, query.dtype)
        if ctx.local_blocks is not None:
            out = _blocked_joint_attention(q_local, k_local, values, mem_k, mem_v, ctx, p, scale, layer)
        else:  # rows not aligned (padding): two partial softmaxes, joined
            out, _ = _joint_attention(
                q_local, k_local, values, _to_grid(q_local, ctx), mem_k, mem_v, ctx, scale, S, layer
            )
        return out.transpose(1, 2).contiguous(), None
    q_mem = _to_grid(apply_rope(query, ctx.cos_qm, ctx.sin_qm), ctx)
    g = gate_value(module, ctx.gate_activation, query.dtype)
    if ctx.fusion == "separate":
        local = _local_attention(q_local, k_local, values, ctx, p, scale)
        mem = F.scaled_dot_product_attention(
            q_mem,
            ctx.mem_k.to(query.dtype),
            ctx.mem_v.to(query.dtype),
            attn_mask=ctx.mem_valid,
            dropout_p=p,
            scale=scale,
            enable_gqa=True,
        )
        out = local + g * _from_grid(mem, ctx, S) * ctx.has_mem
    else:  # joint: one softmax over [memory; local], mixed in by the gate
        joint, local = _joint_attention(
            q_local, k_local, values, q_mem, ctx.mem_k.to(query.dtype), ctx.mem_v.to(query.dtype), ctx, scale, S
        )
        out = local + g * (joint - local)
    return out.transpose(1, 2).contiguous(), None


def _layer_memory(ctx: CallContext, layer: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """training_free: this layer's retrieved keys rotated just before the window, and its values,
    ``[B*n, H_kv, M, D]`` in ``dtype``; built once while the memory and its positions stay the same."""
    done = None if ctx.mem_rotated is None else ctx.mem_rotated.get((layer, dtype))
    if done is None:
        heads = ctx.mem_heads[layer]
        rows = _sink_only_rows(ctx, layer)
        if rows is not None:  # no head of this layer is banked: the sink rows alone
            mk = ctx.mem_k[:, heads, :rows].to(dtype)
            rotated = apply_rope(mk, ctx.cos_sk[:, :, :rows], ctx.sin_sk[:, :, :rows])
        else:
            mk = ctx.mem_k[:, heads].to(dtype)
            rotated = apply_rope(mk, ctx.cos_mk, ctx.sin_mk)
            streaming = ctx.streaming.get(layer)
            if streaming is not None:  # these heads read only the sink, just before the window
                rotated = torch.where(streaming.view(1, -1, 1, 1), apply_rope(mk, ctx.cos_sk, ctx.sin_sk), rotated)
        done = rotated, ctx.mem_v[:, heads, : mk.shape[2]].to(dtype)
        if ctx.mem_rotated is not None:
            ctx.mem_rotated[(layer, dtype)] = done
    return done


def _sink_only_rows(ctx: CallContext, layer: int) -> int | None:
    """For a layer none of whose heads the bank keeps: how many of the retrieved rows to attend to
    (the sink's, which lead each slot's rows; the others are masked out for every head of the layer,
    so leaving them out changes nothing but the work). None for a layer with banked heads."""
    return ctx.sink_rows if layer in ctx.sink_only else None


def _memory_mask(ctx: CallContext, layer: int, heads: int) -> torch.Tensor:
    """Which retrieved rows each query head of ``layer`` may read: ``[B*n, 1, 1, M]`` (every head
    alike), or ``[B*n, heads, 1, M]`` where the layer has heads the bank does not keep (those
    read only the sink rows)."""
    streaming = ctx.streaming.get(layer)
    if streaming is None:
        return ctx.mem_valid
    rows = _sink_only_rows(ctx, layer)
    if rows is not None:
        return ctx.sink_valid[..., :rows]
    per_kv = torch.where(streaming.view(1, -1, 1, 1), ctx.sink_valid, ctx.mem_valid)  # [B*n, H_kv, 1, M]
    return per_kv.repeat_interleave(heads // per_kv.shape[1], dim=1)


def _handed_rotated_window(ctx: CallContext, layer: int, wk: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """The window keys ``wk`` as the previous call rotated them, when the cache handed them over
    (same RoPE frame) in ``dtype`` and for the whole window; else None (rotate them now)."""
    done = None if ctx.window_k_rotated is None else ctx.window_k_rotated[layer]
    return done if done is not None and done.dtype == dtype and done.shape[2] == wk.shape[2] else None


def _buffered_attention(layer: int, query, key, value, ctx: CallContext, scale: float) -> torch.Tensor:
    """training_free attention of one sequence whose queries see the whole window (decoding within
    a chunk) through the layer's :class:`DecodeBuffer`: the same keys, values and mask as
    :func:`_blocked_joint_attention` (bit for bit), with the new tokens written into free rows.
    Records the window for ``commit`` as views of the buffer. Returns ``[B, S, H, D]``."""
    wk, wv = ctx.window_k[layer], ctx.window_v[layer]
    L, S = wk.shape[2], key.shape[2]
    mem_k, mem_v = _layer_memory(ctx, layer, query.dtype)
    M = mem_k.shape[2]
    rot = _handed_rotated_window(ctx, layer, wk, key.dtype)
    buf = ctx.decode_buffers.get(layer)
    if buf is None or not buf.continues(mem_k, wk, wv, rot, S):
        if rot is None:
            rot = apply_rope(wk.to(key.dtype), ctx.cos_k[:, :, :L], ctx.sin_k[:, :, :L])
        buf = ctx.decode_buffers[layer] = DecodeBuffer.build(
            mem_k, mem_v, wk.to(key.dtype), wv.to(key.dtype), rot, S + ctx.chunk_size
        )
    buf.k[:, :, L : L + S] = key
    buf.kr[:, :, M + L : M + L + S] = apply_rope(key, ctx.cos_k[:, :, L:], ctx.sin_k[:, :, L:])
    buf.v[:, :, M + L : M + L + S] = value
    ctx.recorded[layer] = (buf.k[:, :, : L + S], buf.v[:, :, M : M + L + S])
    ctx.recorded_rotated[layer] = buf.kr[:, :, M : M + L + S]
    ((_, _, _, _, mask),) = ctx.local_blocks  # one block over every window key (see MemLongCache.prepare)
    mvalid = _memory_mask(ctx, layer, query.shape[1]).view(1, -1, 1, M) & ctx.slot_has.view(1, 1, 1, 1)
    h = mvalid.shape[1]
    full = torch.cat([mvalid.expand(1, h, S, M), mask.expand(1, h, S, mask.shape[-1])], dim=-1)
    q = apply_rope(query, ctx.cos_q, ctx.sin_q)
    out = F.scaled_dot_product_attention(
        q, buf.kr[:, :, : M + L + S], buf.v[:, :, : M + L + S], attn_mask=full, scale=scale, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous()


def _blocked_joint_attention(
    q, k, v, mem_k, mem_v, ctx: CallContext, p: float, scale: float, layer: int
) -> torch.Tensor:
    """training_free attention with rows aligned: for each chunk (a local block), one SDPA call
    over ``[its slot's retrieved keys; its local keys]``, all in one position frame (the
    retrieved keys rotated just before the chunk's window): ``[B, H, S, D]``."""
    B = q.shape[0]
    n, M = ctx.num_slots, mem_k.shape[2]
    mk = mem_k.view(B, n, *mem_k.shape[1:])
    mv = mem_v.view(B, n, *mem_v.shape[1:])
    mvalid = _memory_mask(ctx, layer, q.shape[1])
    h = mvalid.shape[1]
    mvalid = mvalid.view(B, n, h, 1, M) & ctx.slot_has.view(B, n, 1, 1, 1)
    outs = []
    for (ql, qh, kl, kh, mask), t in zip(ctx.local_blocks, ctx.block_slots):
        keys = torch.cat([mk[:, t], k[:, :, kl:kh]], dim=2)
        vals = torch.cat([mv[:, t], v[:, :, kl:kh]], dim=2)
        full = torch.cat([mvalid[:, t].expand(B, h, qh - ql, M), mask.expand(B, h, qh - ql, kh - kl)], dim=-1)
        outs.append(
            F.scaled_dot_product_attention(
                q[:, :, ql:qh], keys, vals, attn_mask=full, dropout_p=p, scale=scale, enable_gqa=True
            )
        )
    return torch.cat(outs, dim=2)


def _joint_attention(
    q_local, k_local, values, q_mem, mem_k, mem_v, ctx: CallContext, scale: float, S: int, layer: int | None = None
):
    """One softmax over each query's retrieved tokens and its local window, and the local-only
    attention: both ``[B, H, S, D]``. Computed as two partial softmaxes joined by their
    log-sum-exps (the retrieved tokens differ per chunk slot: they cannot share one masked call
    with the window)."""
    local, lse_l = _attend_with_lse(q_local, k_local, values, ctx.local_mask, scale)
    mvalid = ctx.mem_valid if layer is None else _memory_mask(ctx, layer, q_mem.shape[1])
    mem, lse_m = _attend_with_lse(q_mem, mem_k, mem_v, mvalid, scale)
    mem = _from_grid(mem, ctx, S)
    lse_m = _from_grid(lse_m, ctx, S).masked_fill(ctx.has_mem[:, :, :, 0] == 0, float("-inf"))
    top = torch.maximum(lse_l, lse_m)
    w_l = torch.exp(lse_l - top).unsqueeze(-1)
    w_m = torch.exp(lse_m - top).unsqueeze(-1)
    return ((w_l * local.float() + w_m * mem.float()) / (w_l + w_m)).to(q_local.dtype), local


def register() -> None:
    """Registers the ``"memlong"`` attention with transformers (idempotent, process-wide).

    No mask function is registered on purpose: transformers then skips building its own
    ``[S, S]`` mask (returns ``None``), and this function builds the block-sliding mask itself.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, memlong_attention)
