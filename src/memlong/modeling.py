"""MemLong on top of a stock transformers causal LM, through its extension points.

:func:`wrap` turns a loaded ``*ForCausalLM`` of a supported RoPE family into a MemLong model in
place: it registers the ``"memlong"`` attention (``AttentionInterface``), adds the gates to the
retrieval layers, and gives the model a subclass whose ``forward`` feeds any input length
through a :class:`~memlong.cache.MemLongCache` in segments no longer than the local window.
The stock modeling code runs unchanged; ``generate()`` is transformers' own.

    model = AutoModelForCausalLM.from_pretrained(...)
    model = memlong.wrap(model, MemLongConfig(...), retriever=...)
    out = model(input_ids)                      # any length; out.memory is the memory
    out = model(more_ids, cache=out.memory)     # keeps reading (past_key_values= works too)
    model.generate(ids, max_new_tokens=32)      # long prompt ingested, generation uses memory

The memory travels the way transformers passes a cache: as ``cache=`` on transformers >= 5.24,
``past_key_values=`` before (both are accepted); :data:`CACHE_ARG` is the name the installed
release uses, and outputs carry it under that field as well as under ``memory``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import warnings
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from memlong import attention
from memlong.bases import resolve_base
from memlong.cache import MemLongCache
from memlong.config import CONFIG_NAME, MemLongConfig, MemLongConfigError
from memlong.memory import BankLayout
from memlong.profiling import phase
from memlong.retriever import HashingRetriever, Retriever, SentenceTransformerRetriever, retriever_from_name

#: model_type -> family name. Llama-style decoders whose attention applies RoPE (rotate-half, over
#: the whole head) to q/k, after an optional q/k norm, and then calls the attention interface;
#: each is checked by the parity, causality and window tests (tests/test_modeling.py). Not
#: included, because their attention differs: Gemma 2/3 (logit soft-capping), Cohere
#: (interleaved RoPE), Phi/StableLM and other partial-rotary models.
SUPPORTED_FAMILIES = {
    "llama": "Llama",
    "mistral": "Mistral",
    "mixtral": "Mixtral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "qwen3_moe": "Qwen3-MoE",
    "gemma": "Gemma",
    "olmo": "OLMo",
    "olmo2": "OLMo-2",
    "granite": "Granite",
    "phi3": "Phi-3",
    "starcoder2": "Starcoder2",
}
#: Families whose stock mask is a sliding window whenever ``config.sliding_window`` is set.
_SLIDING_WHEN_SET = ("mistral", "mixtral", "starcoder2", "phi3", "qwen3_moe")
GATES_NAME = "memlong_gates.safetensors"

#: The keyword (and output field) under which the installed transformers passes a cache to a
#: model's ``forward``: ``"cache"`` from 5.24 on, ``"past_key_values"`` before. Read from the
#: output class's declared fields, the public contract ``generate()`` follows.
CACHE_ARG = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


@dataclasses.dataclass
class MemLongCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus ``memory``: the :class:`MemLongCache` the call read into
    (also under the installed release's cache field, :data:`CACHE_ARG`, when ``use_cache``)."""

    memory: MemLongCache | None = None


class UnsupportedModelError(ValueError):
    """The model's family is not one MemLong supports."""


def _check_family(model: nn.Module) -> int | None:
    """Raises for an unsupported model; returns its sliding window (None if it has none)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"MemLong does not support model_type={model_type!r} ({type(model).__name__}); supported "
            f"families: {', '.join(SUPPORTED_FAMILIES.values())} (model_type {', '.join(SUPPORTED_FAMILIES)})"
        )
    if not hasattr(getattr(model, "model", None), "layers") or not hasattr(model.model, "rotary_emb"):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no .model.layers/.model.rotary_emb; MemLong wraps the "
            "*ForCausalLM class of a supported family"
        )
    rope = getattr(model.config, "rope_parameters", None) or {}
    partial = rope.get("partial_rotary_factor", getattr(model.config, "partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise UnsupportedModelError(
            f"{type(model).__name__} rotates only part of each head (partial_rotary_factor={partial}); "
            "MemLong's attention applies RoPE to the whole head and supports only fully rotary models"
        )
    sliding = getattr(model.config, "sliding_window", None)
    layer_types = getattr(model.config, "layer_types", None) or []
    uses_sliding = model_type in _SLIDING_WHEN_SET or "sliding_attention" in layer_types
    return sliding if (uses_sliding and sliding) else None


class MemLongMixin:
    """Behaviour added to the wrapped model's class (see :func:`wrap`)."""

    memlong_config: MemLongConfig
    memlong_retriever: Retriever

    # ------------------------------------------------------------------ memory objects
    def _bank_layout(self) -> BankLayout:
        """Shapes and dtypes of this model's banks (KV heads, head dim, retriever dim)."""
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        bank_dtype = getattr(torch, self.memlong_config.bank_dtype) if self.memlong_config.bank_dtype else self.dtype
        return BankLayout(
            capacity=self.memlong_config.capacity_chunks,
            chunk_size=self.memlong_config.chunk_size,
            # training_free: one K/V per retrieval layer, stacked along the heads (only bank_heads' when set)
            num_kv_heads=sum(map(len, self.memlong_config.banked_heads(self._kv_heads()).values())),
            head_dim=head_dim,
            embed_dim=self.memlong_retriever.dim,
            dtype=bank_dtype,
            device=self.device if self.memlong_config.bank_device == "model" else "cpu",
            pin_memory=self.memlong_config.bank_device == "cpu" and self.device.type == "cuda",
            compute_dtype=self.dtype,
            mmap_dir=(self.memlong_config.bank_mmap_dir or tempfile.gettempdir())
            if self.memlong_config.bank_device == "mmap"
            else None,
            index_window=self.memlong_config.index_window,
            heads=self.memlong_config.bank_heads,
        )

    def _kv_heads(self) -> int:
        """The base model's key/value heads per layer."""
        return getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads

    def new_memory(self, batch_size: int = 1, retrieval: bool = True) -> MemLongCache:
        """An empty memory (window + bank per row) for ``batch_size`` sequences.
        ``retrieval=False`` gives the no-memory baseline: same model, same local window."""
        return MemLongCache(
            self.memlong_config,
            self._bank_layout(),
            self.config.num_hidden_layers,
            batch_size,
            retrieval=retrieval,
            retriever_info=self.memlong_retriever.describe(),
            kv_heads=self._kv_heads(),
        )

    def load_memory(self, directory: str | os.PathLike) -> MemLongCache:
        """A memory saved with ``memory.save(directory)`` by this model (same MemLong config,
        retriever dimension and K/V shapes); reading continues exactly where it stopped. The
        config may differ in how questions search (``MemLongConfig.QUESTION_FIELDS``:
        ``lexical_weight``, ``rerank_*``), which reading never used."""
        return MemLongCache.load(
            directory,
            self.memlong_config,
            self._bank_layout(),
            self.config.num_hidden_layers,
            device=self.device,
            retriever_info=self.memlong_retriever.describe(),
            kv_heads=self._kv_heads(),
        )

    def _rotary_table(self, P: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[P, D]`` for positions ``0..P-1`` from the model's own rotary module,
        divided by the value at position 0 (the model already applied that scaling when it
        "rotated" queries and keys at position 0)."""
        key = (P, self.dtype, self.device)
        cached = getattr(self, "_memlong_rope_cache", None)
        if cached is not None and cached[0][0] >= P and cached[0][1:] == key[1:]:
            return cached[1][:P], cached[2][:P]
        P2 = max(P, 2 * self.memlong_config.local_window)
        pos = torch.arange(P2, device=self.device)[None]
        dummy = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = self.model.rotary_emb(dummy, position_ids=pos)
        cos, sin = cos[0], sin[0]
        scale = cos[0:1]
        if not torch.all(scale == 1):
            cos, sin = cos / scale, sin / scale
        self._memlong_rope_cache = ((P2, self.dtype, self.device), cos, sin)
        return cos[:P], sin[:P]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: MemLongCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        char_offsets: torch.Tensor | None = None,
        past_key_values: MemLongCache | None = None,
        **kwargs,
    ) -> MemLongCausalLMOutput:
        """Reads ``input_ids`` ``[B, S]`` (any S) on top of the memory given as ``cache`` (or
        ``past_key_values``, its name before transformers 5.24; a new memory when neither).

        ``attention_mask`` (``[B, S]`` or, as in ``generate``, ``[B, columns so far + S]``)
        marks padding; a padded column is skipped, so each row is read as its own sequence.
        ``position_ids`` are ignored: positions are the local window's. Returns the usual
        output with ``memory``, the :class:`MemLongCache` to continue from (also under the
        installed release's cache field unless ``use_cache=False``).
        ``logits_to_keep=k`` keeps only the last k positions' logits (0: all).
        ``char_offsets`` ``[B, S, 2]``: each token's character span in its source text (as a
        fast tokenizer's ``offset_mapping``); banked chunks then record their text span.
        """
        if input_ids is None:
            raise ValueError(
                "MemLong needs input_ids (the retriever embeds chunks of tokens); inputs_embeds alone is not supported"
            )
        for k in ("output_attentions", "output_hidden_states"):
            if kwargs.pop(k, False):
                raise ValueError(f"MemLong forward does not support {k}=True")
        kwargs.pop("return_dict", None)
        kwargs.pop("cache_position", None)
        B, S = input_ids.shape
        cache = _memory_argument(cache, past_key_values)
        if cache is None:
            cache = self.new_memory(B)
        if cache.batch_size != B:
            raise ValueError(f"memory holds {cache.batch_size} sequences but input_ids has batch size {B}")

        if attention_mask is not None:
            real = attention_mask[:, -S:].to(torch.bool).cpu()
        else:
            real = torch.ones(B, S, dtype=torch.bool)
        counts = real.sum(1).tolist()
        # Left-align each row's real tokens: rows are independent sequences.
        order = torch.argsort((~real).to(torch.int8), dim=1, stable=True).to(input_ids.device)
        compact = input_ids.gather(1, order)
        if char_offsets is not None:
            char_offsets = char_offsets[:, -S:].cpu().gather(1, order.cpu()[..., None].expand(B, S, 2))

        if labels is not None and logits_to_keep:
            raise ValueError("labels cannot be combined with logits_to_keep")
        keep_from = S - logits_to_keep if logits_to_keep else 0
        dev = input_ids.device
        # needed[b, i]: compact position i of row b is a real token whose logits are kept
        width = max(counts) if counts else 0
        needed = (torch.arange(width)[None] < torch.tensor(counts)[:, None]) & (order[:, :width].cpu() >= keep_from)
        if labels is not None:  # the LM head runs only where a loss is taken: a position whose next label counts
            targets = torch.zeros(B, S, dtype=torch.bool)
            targets[:, :-1] = (labels[:, 1:] != -100).cpu() & real[:, 1:]
            needed &= targets.gather(1, order.cpu())[:, :width]
        V = self.config.vocab_size
        # the compact positions some row keeps logits for, and each one's column in logits_c
        kept = needed.any(0)
        column = kept.cumsum(0) - 1
        logits_c = None  # [B, kept positions, V], row-compact; filled where needed
        off = 0
        while off < width:
            remaining = [max(0, c - off) for c in counts]
            n = cache.allowed_segment(remaining)
            seg = compact[:, off : off + n]
            seg_counts = [min(n, r) for r in remaining]
            with phase("prepare"):
                ctx = cache.prepare(
                    seg,
                    seg_counts,
                    self.memlong_retriever,
                    self._rotary_table,
                    self.memlong_config.gate_activation,
                    None if char_offsets is None else char_offsets[:, off : off + n],
                )
            # Only positions some row needs go through the LM head (ingestion needs none).
            want = needed[:, off : off + n].any(0).nonzero().flatten()
            out = super().forward(
                input_ids=seg,
                position_ids=torch.zeros_like(seg),
                attention_mask=None,
                use_cache=False,
                memlong=ctx,
                logits_to_keep=want.to(dev),
                **kwargs,
            )
            with phase("commit"):
                cache.commit(ctx)
            if want.numel():
                if logits_c is None:
                    logits_c = out.logits.new_zeros(B, int(kept.sum()), V)
                logits_c[:, column[off + want].to(dev)] = out.logits
            off += n
        cache.columns += S
        # Back to the caller's column layout; padding columns (and skipped ones) stay zero.
        logits = input_ids.new_zeros(B, S - keep_from, V, dtype=self.dtype if logits_c is None else logits_c.dtype)
        if logits_c is not None:
            sel = needed.to(dev)
            rows = torch.arange(B, device=dev)[:, None].expand(B, width)
            cols = column.to(dev)[None, :].expand(B, width)
            logits[rows[sel], order[:, :width][sel] - keep_from] = logits_c[rows[sel], cols[sel]]
        loss = None
        if labels is not None:
            labels = labels.masked_fill(~real.to(labels.device), -100)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=V)
        return MemLongCausalLMOutput(
            loss=loss, logits=logits, memory=cache, **{CACHE_ARG: cache if use_cache is not False else None}
        )

    @torch.no_grad()
    def ingest_text(
        self, text: str, memory: MemLongCache | None = None, progress: bool = False, warn_eviction: bool = True
    ) -> MemLongCache:
        """Tokenizes ``text`` with the model's tokenizer and reads it into memory; each banked
        chunk records its character span in ``text`` (``bank.text_spans``, ``entries()``).

        Before reading, when the text is longer than the memory holds (the bank's
        ``memory_capacity`` plus the local window), an :class:`~memlong.memory.budget.EvictionWarning`
        says how many tokens will be kept and evicted and the capacity that would keep them all
        (``warn_eviction=False``: a caller that reports it itself, :func:`~memlong.memory.budget.plan_reading`);
        after reading, ``memory.bank(0).evicted_report()`` says which token and character ranges went."""
        from memlong.memory.budget import EvictionWarning, plan_reading

        tok = self.memlong_tokenizer
        if tok is None:
            raise ValueError("ingest_text needs the tokenizer: pass tokenizer= to memlong.wrap / from_pretrained")
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False, return_tensors="pt")
        memory = memory if memory is not None else self.new_memory(1)
        plan = plan_reading(memory, enc["input_ids"].shape[1])
        if warn_eviction and plan.evicts:
            warnings.warn(
                EvictionWarning(
                    plan.warning("model.memlong_config.memory_capacity = N, then a new memory (model.new_memory())")
                ),
                stacklevel=3,
            )
        return self.ingest(enc["input_ids"], memory, progress=progress, char_offsets=enc["offset_mapping"])

    @torch.no_grad()
    def ingest(
        self,
        input_ids: torch.LongTensor,
        memory: MemLongCache | None = None,
        attention_mask=None,
        progress: bool = False,
        char_offsets: torch.Tensor | None = None,
        desc: str = "ingest",
    ) -> MemLongCache:
        """Reads a long input into ``memory`` (a new one if ``None``) without keeping logits;
        returns the memory. Feeds ``local_window`` tokens per call (a progress bar in tokens
        with ``progress=True``)."""
        from tqdm.auto import tqdm

        memory = memory if memory is not None else self.new_memory(input_ids.shape[0])  # an empty cache is falsy
        step = self.memlong_config.local_window
        S = input_ids.shape[1]
        with tqdm(total=S, disable=not progress, unit="tok", unit_scale=True, desc=desc) as bar:
            for s in range(0, S, step):
                am = None if attention_mask is None else attention_mask[:, s : s + step]
                co = None if char_offsets is None else char_offsets[:, s : s + step]
                self(input_ids[:, s : s + step], attention_mask=am, cache=memory, logits_to_keep=1, char_offsets=co)
                bar.update(min(step, S - s))
        return memory

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        *args,
        memory: MemLongCache | None = None,
        requery: bool | int = False,
        **kwargs,
    ):
        """transformers' ``generate`` with MemLong memory.

        ``memory=`` (or ``cache=`` / ``past_key_values=``): continue from a memory that has
        already read earlier text (e.g. from :meth:`ingest`); ``inputs`` then hold only the new
        tokens. Without one, a new memory is made for the prompt, so generation always runs on
        a memory given to transformers as a user-defined cache (no private hook).

        ``requery``: answer a question with the chunks it is about. The question (the whole
        prompt when ``memory`` has already read text, else the prompt's last ``chunk_size`` tokens;
        or its last ``requery=N`` tokens) is embedded first, and the question and the answer are read
        retrieving with that embedding (:meth:`MemLongCache.focus_on`); what comes before the
        question is read as usual. The question's tokens then depend on its end: for answering,
        not for scoring the question.
        Beam search and ``num_return_sequences > 1`` are not supported (memory is per sequence).
        """
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        given = [v for v in (kwargs.pop("cache", None), kwargs.pop("past_key_values", None)) if v is not None]
        if len(given) + (memory is not None) > 1:
            raise ValueError("pass the memory once: memory=, cache= or past_key_values=")
        memory = _memory_argument(memory if memory is not None else (given[0] if given else None), None)
        if requery is not False:
            if args:
                raise TypeError("generate(requery=True) takes the prompt as its only positional argument")
            return self._generate_requeried(inputs, memory=memory, requery=requery, **kwargs)
        if kwargs.get("num_beams", 1) > 1 or kwargs.get("num_return_sequences", 1) > 1:
            MemLongCache._unsupported(None)
        if kwargs.get("use_cache") is False:
            raise ValueError("MemLong generation reads through its memory: use_cache=False is not supported")
        if inputs is None:
            raise ValueError("MemLong generate needs input_ids (the prompt, or the new tokens after a memory)")
        if memory is None:
            memory = self.new_memory(inputs.shape[0])
        memory.origin = memory.columns
        return super().generate(inputs, *args, **{CACHE_ARG: memory}, **kwargs)

    def _generate_requeried(
        self, input_ids=None, memory=None, attention_mask=None, requery: bool | int = True, **kwargs
    ):
        if input_ids is None or input_ids.shape[1] < 1:
            raise ValueError("generate(requery=...) needs input_ids (the question to read and retrieve with)")
        if attention_mask is not None and not bool(attention_mask[:, -1].all()):
            raise ValueError(
                "generate(requery=...) needs the prompt's last column to be real in every row (use left padding)"
            )
        S = input_ids.shape[1]
        if requery is True:  # after a memory that has read text the prompt is the question; else its last chunk
            n = S if memory is not None and memory.columns > 0 else min(S, self.memlong_config.chunk_size)
        else:
            n = int(requery)
            if not 1 <= n <= S:
                raise ValueError(f"generate(requery={requery}): the question must be 1..{S} tokens of the prompt")
        memory = memory if memory is not None else self.new_memory(input_ids.shape[0])
        head, question = input_ids[:, : S - n], input_ids[:, S - n :]
        mask_head = None if attention_mask is None else attention_mask[:, : S - n]
        mask_q = torch.ones_like(question) if attention_mask is None else attention_mask[:, S - n :]
        if head.shape[1]:
            self.ingest(head, memory, attention_mask=mask_head)
        tau = self.memlong_config.chunk_size
        real = [question[b][mask_q[b].bool()].tolist()[-tau:] for b in range(question.shape[0])]
        self.focus_question(memory, real)
        try:
            out = self.generate(question, memory=memory, attention_mask=mask_q, **kwargs)
        finally:
            memory.unfocus()
        if isinstance(out, torch.Tensor):
            return torch.cat([head, out], dim=1)
        out.sequences = torch.cat([head, out.sequences], dim=1)  # return_dict_in_generate=True
        return out

    @torch.no_grad()
    def focus_question(self, memory: MemLongCache, questions: list[list[int]]) -> None:
        """Readies ``memory`` to read a question and its answer (``generate(requery=...)`` does it):
        with ``question_reread`` (the memory's config, as every question field), first reads the
        chunks each row's question retrieves from its bank as it is now
        (:meth:`MemLongCache.question_tokens`) as text, left-padded to one length, so that they sit
        in the local window just before the question; then :meth:`MemLongCache.focus_on` the
        questions (call ``memory.unfocus()`` after the answer). ``questions[b]``: row ``b``'s
        question tokens (its last ``chunk_size`` are embedded). With ``question_fresh_window``, the
        local window's whole chunks go to the bank first (:meth:`MemLongCache.flush_window`; a
        memory without retrieval keeps its window)."""
        if memory.config.question_fresh_window and memory.retrieval:  # the no-memory baseline keeps its window
            memory.flush_window()
        if memory.config.question_reread:
            self._reread(memory, questions)
        memory.focus_on(self.memlong_retriever, questions)

    def _reread(self, memory: MemLongCache, questions: list[list[int]]) -> None:
        texts = memory.question_tokens(self.memlong_retriever, questions)
        R = max(len(t) for t in texts)
        if not R:
            return
        ids = torch.zeros(len(texts), R, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for b, t in enumerate(texts):
            if t:
                ids[b, R - len(t) :] = torch.tensor(t, device=self.device)
                mask[b, R - len(t) :] = 1
        starts = list(memory.seen)
        self.ingest(ids, memory, attention_mask=mask, desc="reread")
        for b, t in enumerate(texts):
            memory.mark_reread(b, starts[b], starts[b] + len(t))  # in the bank already: not banked again

    # ------------------------------------------------------------------ persistence
    def memlong_gates(self) -> dict[str, torch.Tensor]:
        if self.memlong_config.mode == "training_free":
            return {}  # no gates: memory joins the window's softmax as it is
        return {
            f"layers.{i}": getattr(self.model.layers[i].self_attn, attention.GATE_NAME).detach()
            for i in self.memlong_config.retrieval_layer_indices
        }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Saves the base model (without gates), ``memlong_config.json`` and the gates."""
        state = kwargs.pop("state_dict", None) or self.state_dict()
        state = {k: v for k, v in state.items() if attention.GATE_NAME not in k}
        out = super().save_pretrained(save_directory, *args, state_dict=state, **kwargs)
        self.memlong_config.save_pretrained(save_directory)
        _save_gates(self, save_directory)
        # transformers records the class name; record the base class so plain loaders work.
        self.config.architectures = [self._memlong_base_class.__name__]
        self.config.save_pretrained(save_directory)
        return out


def _memory_argument(cache: Any, past_key_values: Any) -> MemLongCache | None:
    """The memory given to ``forward``/``generate`` under either cache name, checked."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the memory once, as cache= or as past_key_values=, not both")
    memory = cache if cache is not None else past_key_values
    if memory is not None and not isinstance(memory, MemLongCache):
        raise TypeError(
            f"a MemLong model reads and writes its own memory, not a {type(memory).__name__}: pass a "
            "MemLongCache from model.new_memory(), model.ingest() or an earlier output's .memory, or no cache at all"
        )
    return memory


_CLASSES: dict[type, type] = {}


def _memlong_class(base: type) -> type:
    if base not in _CLASSES:
        name = f"MemLong{base.__name__}"
        cls = type(name, (MemLongMixin, base), {"__module__": __name__, "_memlong_base_class": base})
        setattr(sys.modules[__name__], name, cls)  # picklable by reference
        _CLASSES[base] = cls
    return _CLASSES[base]


def default_retriever(tokenizer=None) -> Retriever:
    """all-MiniLM-L6-v2 over decoded text when a tokenizer is given, else token hashing."""
    if tokenizer is not None:
        return SentenceTransformerRetriever(tokenizer)
    return HashingRetriever()


def wrap(
    model: nn.Module,
    config: MemLongConfig | None = None,
    retriever: Retriever | str | None = None,
    tokenizer=None,
) -> nn.Module:
    """Makes ``model`` (a supported ``*ForCausalLM``) a MemLong model, in place, and returns it.

    Args:
        model: a loaded causal LM of a family in :data:`SUPPORTED_FAMILIES` (Llama, Mistral,
            Qwen2/3, Gemma, OLMo, Granite, Phi-3, ... ).
        config: the MemLong config (default: the paper's layout scaled to the model's depth).
        retriever: the frozen chunk embedder (default: all-MiniLM-L6-v2 if ``tokenizer`` is
            given, else :class:`HashingRetriever`), or a name for
            :func:`~memlong.retriever.retriever_from_name` (``"minilm"``, ``"hashing"``,
            ``"embedding"``: this model's own input embeddings, ...).
        tokenizer: the LM's tokenizer (needed by text retrievers).
    """
    sliding = _check_family(model)
    if isinstance(model, MemLongMixin):
        raise ValueError("this model is already a MemLong model")
    n_layers = model.config.num_hidden_layers
    config = config or MemLongConfig.for_num_layers(n_layers)
    config.validate_for_model(
        n_layers,
        getattr(model.config, "max_position_embeddings", None),
        getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads,
    )
    if sliding is not None and config.local_window > sliding:
        raise MemLongConfigError(
            f"MemLongConfig.local_window={config.local_window} exceeds the model's sliding window "
            f"({sliding}); use a local window no larger than it"
        )
    attention.register()
    model.set_attn_implementation(attention.ATTN_NAME)
    heads = model.config.num_attention_heads
    ref = next(model.parameters())
    for i in config.retrieval_layer_indices if config.mode == "memlong" else ():
        attn = model.model.layers[i].self_attn
        shape = (heads,) if config.gate_mode == "head" else (1,)
        attn.register_parameter(
            attention.GATE_NAME, nn.Parameter(torch.zeros(shape, dtype=torch.float32, device=ref.device))
        )
    model.__class__ = _memlong_class(type(model))
    model.memlong_config = config
    if isinstance(retriever, str):
        retriever = retriever_from_name(retriever, tokenizer, model=model)
    model.memlong_retriever = retriever or default_retriever(tokenizer)
    model.memlong_tokenizer = tokenizer
    return model


TRAINED_NAME = "memlong_trained.safetensors"
BASE_NAME = "memlong_base.json"


def save_trained(trained: nn.Module, model: nn.Module, directory: str | os.PathLike, base_model: str) -> None:
    """Writes only what adaptation training changed, on top of ``base_model``: the LoRA adapter
    (peft) or the trained tensors, the gates, and ``memlong_config.json``.

    ``trained`` is what trained (a peft model or ``model`` itself); ``model`` the MemLong model.
    ``memlong.from_pretrained(directory)`` rebuilds the same model from its base.
    """
    import json

    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    lora = trained is not model and hasattr(trained, "peft_config")
    if lora:
        trained.save_pretrained(directory)
    else:
        tensors = {
            n: p.detach().cpu().contiguous()
            for n, p in model.named_parameters()
            if p.requires_grad and attention.GATE_NAME not in n
        }
        save_file(tensors, os.path.join(directory, TRAINED_NAME))
    model.memlong_config.save_pretrained(directory)
    _save_gates(model, directory)
    base = str(base_model)
    if os.path.isdir(base):  # a local base is recorded relative to this directory, so both can move together
        base = os.path.relpath(os.path.abspath(base), os.path.abspath(directory))
    with open(os.path.join(directory, BASE_NAME), "w") as f:
        json.dump(
            {"base_model": base, "local": os.path.isdir(str(base_model)), "mode": "lora" if lora else "full"},
            f,
            indent=2,
        )


def _save_gates(model: nn.Module, directory: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.float().cpu().contiguous() for k, v in model.memlong_gates().items()}, os.path.join(directory, GATES_NAME)
    )


def _load_gates(model: nn.Module, gates_path: str) -> None:
    from safetensors.torch import load_file

    gates = load_file(gates_path)
    for i in model.memlong_config.retrieval_layer_indices if model.memlong_config.mode == "memlong" else ():
        param = getattr(model.model.layers[i].self_attn, attention.GATE_NAME)
        key = f"layers.{i}"
        if key not in gates or gates[key].shape != param.shape:
            raise ValueError(f"{gates_path}: gate {key!r} missing or of the wrong shape for this config")
        with torch.no_grad():
            param.copy_(gates[key])


def from_pretrained(
    name_or_path: str | os.PathLike,
    config: MemLongConfig | None = None,
    retriever: Retriever | str | None = None,
    tokenizer=None,
    base_model: str | None = None,
    **hf_kwargs,
) -> nn.Module:
    """Loads a causal LM with ``AutoModelForCausalLM.from_pretrained`` and wraps it.

    * a plain model name/path: wrapped with ``config`` (or the default layout);
    * a directory from a MemLong model's ``save_pretrained``: its own config and gates;
    * a directory from ``memlong train`` (only what was trained): its base model (recorded in
      ``memlong_base.json``, or ``base_model=``) with the adapter/tensors and gates on top.
    """
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    path = str(name_or_path)
    is_dir = os.path.isdir(path)
    trained_delta = is_dir and os.path.isfile(os.path.join(path, BASE_NAME))
    if trained_delta:
        with open(os.path.join(path, BASE_NAME)) as f:
            info = json.load(f)
        base = base_model or info["base_model"]
        if base_model is None and info.get("local"):
            base = os.path.normpath(os.path.join(path, base))
        base = resolve_base(base)
        model = AutoModelForCausalLM.from_pretrained(base, **hf_kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **hf_kwargs)
    saved = is_dir and os.path.isfile(os.path.join(path, CONFIG_NAME))
    if saved and config is None:
        config = MemLongConfig.from_pretrained(path)
    model = wrap(model, config, retriever=retriever, tokenizer=tokenizer)
    if trained_delta and info.get("mode") != "none":  # "none": a config on a base, nothing trained
        if info.get("mode") == "lora":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        else:
            tensors = load_file(os.path.join(path, TRAINED_NAME))
            missing = set(tensors) - set(dict(model.named_parameters()))
            if missing:
                raise ValueError(f"{path}: trained tensors {sorted(missing)[:3]} do not exist in the base model")
            model.load_state_dict(tensors, strict=False)
    gates_path = os.path.join(path, GATES_NAME)
    if saved and os.path.isfile(gates_path):
        _load_gates(model, gates_path)
    return model
