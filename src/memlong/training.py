"""Components of MemLong's adaptation training (the paper's stage 2, section 4.1).

* :func:`freeze_for_memlong`: everything at and below the memory layer, the embeddings and the
  LM head stay frozen (so stored K/V never drift); the layers above it learn, fully or through
  LoRA (peft), and so do the gates.
* :class:`SegmentStream`: long documents streamed in order, one per batch row, in segments of
  the local window; a row whose document ends starts a new one and its memory is reset.
* :func:`plant_passkey`: the optional synthetic retrieval task (a key stated early, asked for
  after the local window has moved on), mixed into real text.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from memlong.attention import GATE_NAME


@dataclass
class LoraSpec:
    """LoRA on the upper layers. ``targets``: module names inside a decoder layer."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


#: What ``freeze_for_memlong(layers=...)`` trains: every layer above the memory layer (the paper),
#: or only the retrieval layers (those that attend to memory; the layers between stay frozen).
TRAIN_LAYERS = ("upper", "retrieval")


def trained_layer_indices(model, layers: str = "upper") -> list[int]:
    """0-based indices of the trainable layers: those above the memory layer (``"upper"``), or
    only the retrieval layers (``"retrieval"``)."""
    if layers not in TRAIN_LAYERS:
        raise ValueError(f"layers must be one of {TRAIN_LAYERS}, got {layers!r}")
    cfg = model.memlong_config
    if layers == "retrieval":
        return sorted(cfg.retrieval_layer_indices)
    return list(range(cfg.memory_layer_index + 1, model.config.num_hidden_layers))


def gate_parameters(model) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.endswith(GATE_NAME)]


def freeze_for_memlong(model, lora: LoraSpec | None = None, train_final_norm: bool = True, layers: str = "upper"):
    """Sets what trains. Returns the model to train (a peft model with ``lora``).

    Full mode: every parameter of the trained layers, the gates, and (with ``train_final_norm``)
    the final norm. LoRA mode: LoRA adapters on ``lora.targets`` of the trained layers, and the
    gates. The trained layers are those above the memory layer (``layers="upper"``, the paper) or
    only the retrieval layers (``"retrieval"``: fewer weights to update; gradients still flow
    through the frozen layers between them). Embeddings, LM head and the lower stack never train.
    """
    upper = trained_layer_indices(model, layers)
    for p in model.parameters():
        p.requires_grad_(False)
    if lora is None:
        for i in upper:
            for p in model.model.layers[i].parameters():
                p.requires_grad_(True)
        if train_final_norm:
            for p in model.model.norm.parameters():
                p.requires_grad_(True)
        trained = model
    else:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.targets),
            layers_to_transform=upper,
            layers_pattern="layers",
            bias="none",
        )
        trained = get_peft_model(model, cfg)
    for p in gate_parameters(model):
        p.requires_grad_(True)
    return trained


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters that train (names as in ``model.named_parameters()``), detached."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------- data
PASSKEY_STATEMENT = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key? The pass key is {key}."


def plant_passkey(text: str, rng: random.Random, min_gap_chars: int) -> str:
    """Inserts a passkey statement in the first fifth of ``text`` and the question (with its
    answer, which the model learns to predict) at least ``min_gap_chars`` later."""
    key = str(rng.randrange(10_000, 100_000))
    n = len(text)
    if n < min_gap_chars + 100:
        return text
    at = rng.randrange(0, max(1, n // 5))
    ask = rng.randrange(min(n, at + min_gap_chars), n + 1)
    return (
        text[:at]
        + "\n"
        + PASSKEY_STATEMENT.format(key=key)
        + "\n"
        + text[at:ask]
        + "\n"
        + PASSKEY_QUESTION.format(key=key)
        + "\n"
        + text[ask:]
    )


def plant_recall(ids: list[int], rng: random.Random, span: int, gap: int) -> list[int]:
    """Copies of earlier passages of the document itself, ``span`` tokens each, inserted after
    every ``2 * span`` tokens once ``gap`` tokens have been read, each copied from at least
    ``gap`` tokens back (beyond the local window, so only memory can supply it). A dense
    retrieval signal: every token of a copy is predictable from memory, as in documents that
    quote themselves (code, manuals)."""
    out, pos, every = list(ids[:gap]), gap, 2 * span
    while pos < len(ids):
        out += ids[pos : pos + every]
        pos += every
        latest = len(out) - gap - span  # a source must end at least ``gap`` tokens back
        if latest >= 0 and pos < len(ids):
            at = rng.randrange(0, latest + 1)
            out += out[at : at + span]
    return out


def document_texts(spec: str, split: str) -> Callable[[], Iterator[str]]:
    """A restartable source of texts: a corpus folder from `memlong data` (its ``split``), a
    ``.jsonl`` file, a text file (one document, the same for every split), a folder of ``.txt``
    files, or a datasets name (``split``)."""
    from pathlib import Path

    from memlong.data import load_documents
    from memlong.data.corpus import corpus_file

    p = Path(spec)
    if p.is_dir() and corpus_file(p, split).is_file():
        path = str(corpus_file(p, split))
        return lambda: (d.text for d in load_documents(path, id_field="id"))
    return lambda: (d.text for d in load_documents(spec, split))


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, W] right-padded
    attention_mask: torch.Tensor  # [B, W]
    new_document: list[int]  # rows that start a new document: reset their memory first
    tokens: int  # real tokens in the batch


@dataclass
class SegmentStream:
    """Documents in order, one per row, cut into segments of ``segment`` tokens.

    Args:
        documents: a callable returning a fresh iterator of texts (restartable for resume).
        tokenize: text -> token ids.
        batch_size: rows.
        segment: tokens per row per step (the local window).
        min_tokens: documents shorter than this are skipped (memory needs length to matter).
        rank, world: this process takes documents ``i`` with ``i % world == rank``.
        passkey_rate: probability that a document gets a planted passkey.
        recall_rate: probability that a document gets copies of its own earlier passages
            (:func:`plant_recall`, ``recall_span`` tokens each, copied from at least two
            segments back).
        seed: for the synthetic tasks.
    """

    documents: Callable[[], Iterator[str]]
    tokenize: Callable[[str], list[int]]
    batch_size: int
    segment: int
    min_tokens: int = 0
    rank: int = 0
    world: int = 1
    passkey_rate: float = 0.0
    passkey_gap_chars: int = 4000
    recall_rate: float = 0.0
    recall_span: int = 512
    seed: int = 0
    next_doc: int = 0  # documents consumed (global index): the resumable position
    epoch: int = 0
    _rows: list[list[int]] = field(default_factory=list, repr=False)
    _iter: Iterator[tuple[int, str]] | None = field(default=None, repr=False)

    def _docs(self) -> Iterator[tuple[int, str]]:
        while True:
            seen = False
            for i, text in enumerate(self.documents()):
                seen = True
                if i < self.next_doc or i % self.world != self.rank:
                    continue
                yield i, text
            if not seen:
                raise ValueError("the training data holds no documents")
            self.epoch += 1
            self.next_doc = 0

    def _next_document(self) -> list[int]:
        if self._iter is None:
            self._iter = self._docs()
        for _ in range(100_000):
            i, text = next(self._iter)
            self.next_doc = i + 1
            rng = random.Random(hash((self.seed, self.epoch, i)) & 0xFFFFFFFF)
            if self.passkey_rate and rng.random() < self.passkey_rate:
                text = plant_passkey(text, rng, self.passkey_gap_chars)
            ids = self.tokenize(text)
            if len(ids) >= max(1, self.min_tokens):
                if self.recall_rate and rng.random() < self.recall_rate:
                    ids = plant_recall(ids, rng, self.recall_span, 2 * self.segment)
                return ids
        raise ValueError(f"no training document has at least {self.min_tokens} tokens")

    def next_batch(self) -> Batch:
        if not self._rows:
            self._rows = [[] for _ in range(self.batch_size)]
        ids = torch.zeros(self.batch_size, self.segment, dtype=torch.long)
        mask = torch.zeros_like(ids)
        new, tokens = [], 0
        for b in range(self.batch_size):
            if not self._rows[b]:
                self._rows[b] = self._next_document()
                new.append(b)
            take = self._rows[b][: self.segment]
            self._rows[b] = self._rows[b][self.segment :]
            ids[b, : len(take)] = torch.tensor(take)
            mask[b, : len(take)] = 1
            tokens += len(take)
        return Batch(ids, mask, new, tokens)

    def state_dict(self) -> dict:
        """Resume point: the next document to start (``next_doc``, ``epoch``) and what is left of
        each row's document in progress (``rows``), to go on with the memory saved beside it
        (``memlong train`` checkpoints both)."""
        return {"next_doc": self.next_doc, "epoch": self.epoch, "rows": [list(r) for r in self._rows]}

    def load_state_dict(self, state: dict) -> None:
        """Continues from :meth:`state_dict`; without ``rows`` (no memory to go on with, or a
        checkpoint from before they were kept) the documents in progress are dropped and reading
        restarts at ``next_doc``."""
        self.next_doc, self.epoch = int(state["next_doc"]), int(state["epoch"])
        self._rows, self._iter = [list(r) for r in state.get("rows", [])], None
