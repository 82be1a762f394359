"""Evaluation components shared by training's validation and the `memlong eval` verbs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


@torch.no_grad()
def window_nll(
    model,
    windows: Sequence[torch.Tensor],
    score_last: int,
    use_memory: bool = True,
    batch_size: int = 1,
    progress: bool = False,
) -> tuple[float, int]:
    """Sum of next-token NLL over the last ``score_last`` tokens of each window, and their count.

    Each window (``[L]`` token ids, all the same length) is read from a fresh memory, so no
    window sees another's text. The prefix before the scored part goes through the local window
    and into memory exactly as in streaming. ``use_memory=False``: the same model and window with
    retrieval off. ``progress=True``: the unscored prefix is read first with ``model.ingest`` (a
    progress bar per window), then the scored part continues from that memory: the same stream,
    the same numbers (call boundaries do not change a MemLong model's output).
    """
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        ids = torch.stack(list(windows[i : i + batch_size])).to(model.device)
        L = ids.shape[1]
        n = min(score_last, L - 1)
        memory = model.new_memory(ids.shape[0], retrieval=use_memory)
        start = 0
        if progress and L - n - 1 > 0:
            start = L - n - 1
            model.ingest(ids[:, :start], memory, progress=True, desc="read")
        logits = model(ids[:, start:], cache=memory, logits_to_keep=n + 1).logits[:, :-1].float()
        targets = ids[:, L - n :]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += targets.numel()
    return total, count


@torch.no_grad()
def perplexity(nll_sum: float, count: int) -> float:
    return math.exp(nll_sum / max(1, count))


def token_windows(
    token_lists: Sequence[Sequence[int]], length: int, max_windows: int | None = None, per_document: int = 1
) -> list[torch.Tensor]:
    """Up to ``per_document`` non-overlapping windows of ``length`` tokens from each document
    long enough, taken from its start, in order; at most ``max_windows`` in all."""
    out: list[torch.Tensor] = []
    for ids in token_lists:
        for k in range(min(per_document, len(ids) // length)):
            out.append(torch.tensor(ids[k * length : (k + 1) * length], dtype=torch.long))
            if max_windows is not None and len(out) >= max_windows:
                return out
    return out


@torch.no_grad()
def prefix_cache(model, prefix: Sequence[int], rows: int = 1):
    """A stock model's key/value cache (a transformers ``Cache``) after reading ``prefix`` in each
    of ``rows`` rows: the ``memory`` of :func:`continuation_logprobs` for prompts that begin with
    ``prefix``, so a shared beginning is read once (pass each prompt a ``copy.deepcopy`` of it)."""
    ids = torch.tensor([list(prefix)] * rows, device=next(model.parameters()).device)
    return model(ids, use_cache=True, logits_to_keep=1).cache


def continuation_rows(continuations: Sequence[Sequence[int]]) -> int:
    """Rows :func:`continuation_logprobs` scores ``continuations`` in: one when each is one token
    (one next-token distribution serves all), else one per continuation."""
    return 1 if max(len(c) for c in continuations) == 1 else len(continuations)


@torch.no_grad()
def continuation_logprobs(
    model,
    prompt: Sequence[int],
    continuations: Sequence[Sequence[int]],
    use_memory: bool | None = None,
    requery: int = 0,
    memory=None,
    read: int = 0,
) -> list[float]:
    """Sum of the log-probabilities of each continuation's tokens after ``prompt``.

    Classification by scoring: the predicted label is the argmax. One forward: a single row
    when every continuation is one token (its next-token distribution serves all), else one
    right-padded row per continuation. ``use_memory``: None for a stock model; for a MemLong
    model, whether its fresh memory retrieves (``False``: the no-memory baseline).
    ``requery=n`` (MemLong with memory): the prompt's last ``n`` tokens are the input to classify;
    what comes before them is read first, then they and the continuations retrieve with their own
    embedding (:meth:`MemLongCache.focus_on`, as ``generate(requery=n)`` does for a question).
    ``memory``/``read``: a memory of :func:`continuation_rows` rows that has already read
    the prompt's first ``read`` tokens (a copy of a shared one: it is consumed), so prompts with a
    common beginning read it once; by default a fresh memory reads the whole prompt. For a stock
    model (``use_memory=None``) the memory is its key/value cache (a transformers ``Cache``,
    :func:`prefix_cache`), extended in place.
    """
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("every continuation needs at least one token")
    if requery and (use_memory is None or not 1 <= requery <= len(prompt)):
        raise ValueError(f"requery={requery}: needs a MemLong model (use_memory) and 1..{len(prompt)} prompt tokens")
    single = continuation_rows(continuations) == 1
    rows = [list(prompt)] if single else [list(prompt) + list(c) for c in continuations]
    if memory is not None and not 0 < read <= len(prompt) - max(1, requery):
        raise ValueError(f"memory: read={read} must be 1..{len(prompt) - max(1, requery)}, before the input")
    if memory is not None and use_memory is None and memory.get_seq_length() != read:
        raise ValueError(f"memory: the key/value cache holds {memory.get_seq_length()} tokens, not read={read}")
    if (
        memory is not None
        and use_memory is not None
        and (memory.batch_size != len(rows) or memory.seen != [read] * len(rows))
    ):
        raise ValueError(
            f"memory: needs {len(rows)} row(s) that have read the same first read={read} tokens, before the input"
        )
    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    keep = width - len(prompt) + 1  # logits from the prompt's last token on
    if use_memory is None and memory is None:
        kwargs = {"use_cache": False}
    elif use_memory is None:  # the stock model's cache of the first ``read`` tokens
        kwargs = {"cache": memory, "use_cache": True}
        ids = ids[:, read:]
    else:
        kwargs = {"cache": memory if memory is not None else model.new_memory(len(rows), use_memory)}
        ids, mask = ids[:, read:], mask  # the mask covers every column read (what the memory read too)
    if requery:
        memory, head = kwargs["cache"], len(prompt) - requery - read
        if head:
            model.ingest(ids[:, :head].to(device), memory)
        tau = model.memlong_config.chunk_size
        model.focus_question(memory, [list(prompt[-requery:])[-tau:]] * len(rows))  # + the hits reread
        try:
            logits = model(
                ids[:, head:].to(device), attention_mask=mask.to(device), logits_to_keep=keep, **kwargs
            ).logits.float()
        finally:
            memory.unfocus()
    else:
        logits = model(ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep, **kwargs).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    if single:
        return [float(logp[0, 0, c[0]]) for c in continuations]
    return [float(sum(logp[i, t, tok] for t, tok in enumerate(c))) for i, c in enumerate(continuations)]


# ---------------------------------------------------------------------------------------------
# intervals: how far a mean over a few samples can be trusted
# ---------------------------------------------------------------------------------------------

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (95% by default): unlike the
    normal approximation it stays inside [0, 1] and is not empty at 0 or n successes."""
    if n <= 0:
        raise ValueError("wilson: n must be >= 1")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(scores: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high) of per-sample scores in [0, 1]: Wilson's interval when every score is 0 or 1
    (an accuracy), else the normal interval of the mean (partial credit, as RULER's multi-value
    scores), clipped to [0, 1]; the wider of the two when that one is narrower than Wilson's
    (few samples, all alike)."""
    n = len(scores)
    if n == 0:
        raise ValueError("mean_interval: no scores")
    mean = sum(scores) / n
    lo, hi = wilson(mean * n, n, z)
    if any(s not in (0, 1) for s in scores):
        sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / max(1, n - 1))
        lo, hi = min(lo, max(0.0, mean - z * sd / math.sqrt(n))), max(hi, min(1.0, mean + z * sd / math.sqrt(n)))
    return mean, lo, hi


def mean_of_means(cells: Sequence[tuple[float, float, float]], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of several cells' means (each ``(mean, low, high)`` as
    :func:`mean_interval` gives), the cells independent: each cell's standard error is taken as its
    interval's half-width over ``z``."""
    if not cells:
        raise ValueError("mean_of_means: no cells")
    t = len(cells)
    mean = sum(c[0] for c in cells) / t
    se = math.sqrt(sum(((c[2] - c[1]) / (2 * z)) ** 2 for c in cells)) / t
    return mean, max(0.0, mean - z * se), min(1.0, mean + z * se)


# ---------------------------------------------------------------------------------------------
# prompts that begin alike: each shared beginning read once
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def shared_reading(model, prompts: Sequence[Sequence[int]], unread: Sequence[int], retrieval: bool = True):
    """Reads prompts that begin alike (RULER's samples over one haystack, up to their first
    needle) sharing what they share: yields ``(index, memory, read)`` for each prompt, ``memory`` a
    one-row MemLong memory (``retrieval`` on or off) that has read ``prompts[index][:read]``, the
    caller's to continue (``model.generate(ids[:, read:], memory=memory, ...)``). A beginning common
    to several prompts is read once and the memory cloned where they part (call boundaries do not
    change a MemLong model's output, so each answer is the one a fresh memory gives).
    ``unread[i]``: prompt i's last tokens left for the caller (a question asked with
    ``requery=N`` must arrive whole). Live memories: at most one per level of sharing."""
    import itertools

    order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))

    def visit(group: list[int], start: int, memory):
        limit = min(len(prompts[i]) - unread[i] for i in group)
        first = prompts[group[0]]
        end = start
        while end < limit and all(prompts[i][end] == first[end] for i in group[1:]):
            end += 1
        if end > start:
            model.ingest(torch.tensor([list(first[start:end])], device=model.device), memory)
        done = [i for i in group if len(prompts[i]) - unread[i] == end]  # read as far as they may be
        rest = [i for i in group if i not in done]
        for j, i in enumerate(done):
            yield i, memory if not rest and j == len(done) - 1 else memory.clone(), end
        subs = [list(g) for _, g in itertools.groupby(rest, key=lambda i: prompts[i][end])]
        for j, sub in enumerate(subs):
            yield from visit(sub, end, memory if j == len(subs) - 1 else memory.clone())

    yield from visit(order, 0, model.new_memory(1, retrieval=retrieval))
