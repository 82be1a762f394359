"""The MemLong configuration: one typed, validated, JSON-serialisable dataclass.

Layer numbers are **1-based**, as in the paper (a 26-layer model: memory layer 13, retrieval
layers 14, 18, 22, 26). ``memory_layer_index`` / ``retrieval_layer_indices`` give the 0-based
indices that ``model.model.layers[i]`` uses.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

EvictionPolicy = Literal["counter", "fifo"]
GateMode = Literal["head", "layer"]
GateActivation = Literal["tanh", "identity"]
Fusion = Literal["separate", "joint"]
QueryMode = Literal["causal", "chunk"]
SearchBackend = Literal["torch", "faiss", "auto"]
Mode = Literal["memlong", "training_free"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("memlong", "training_free"),
    "eviction": ("counter", "fifo"),
    "gate_mode": ("head", "layer"),
    "gate_activation": ("tanh", "identity"),
    "fusion": ("separate", "joint"),
    "retrieval_query": ("causal", "chunk"),
    "memory_positions": ("paper", "none"),
    "search_backend": ("torch", "faiss", "auto"),
}

CONFIG_NAME = "memlong_config.json"


class MemLongConfigError(ValueError):
    """An invalid MemLong configuration value; the message names the field and what to do."""


@dataclass
class MemLongConfig:
    """Everything that defines a MemLong model on top of a base causal LM.

    Attributes:
        mode: ``"memlong"`` (the paper, default): the bank stores the memory layer's K/V and the
            retrieval layers mix memory in through gates that start closed, so memory helps only
            after adaptation training (``memlong train``). ``"training_free"`` (what InfLLM and
            EM-LLM do, for a pretrained model as it is): each retrieval layer stores its own K/V
            of every chunk, and attends to the retrieved chunks and its local window in one
            softmax with no gate, the retrieved chunks placed just before the local window in
            their original order (positions the model was trained on). ``memory_layer``, the
            gates, ``fusion`` and ``memory_positions`` are not used in that mode; the bank holds
            one K/V per retrieval layer (``len(retrieval_layers)`` times the bytes per token).
        memory_layer: 1-based index of the memory layer. Layers 1..memory_layer are the frozen
            lower stack; this layer's keys and values are what the memory bank stores.
        retrieval_layers: 1-based indices of the layers that attend to retrieved chunks; each
            must be above ``memory_layer``. The paper finds a few spaced layers beat "all upper
            layers" (Table 3).
        chunk_size: tokens per chunk (tau). The unit of memory, retrieval and eviction.
        top_k: chunks retrieved for each chunk of input.
        memory_capacity: bank capacity in **tokens** (a whole number of chunks is used:
            ``memory_capacity // chunk_size``). The paper evaluates 4K and 32K.
        local_window: tokens of local context, a multiple of ``chunk_size``. A token sees the
            previous ``local_window // chunk_size - 1`` whole chunks and its own chunk up to
            itself; a chunk is written to memory when it leaves that window.
        eviction: ``"counter"`` (paper: keep newest 10%, drop oldest 10%, delete the
            least-retrieved of the middle until the bank is at 50%) or ``"fifo"`` (drop the
            oldest chunk to make room for the new one).
        evict_keep_newest, evict_drop_oldest, evict_target: the fractions of the counter rule.
        gate_mode: one gate per head (``"head"``) or one per retrieval layer (``"layer"``).
        gate_activation: the gate's value is ``tanh(theta)`` (LLaMA-Adapter) or ``theta``.
            ``theta`` starts at 0, where every retrieval layer equals the base model exactly.
        fusion: ``"separate"`` (paper eq. 2-5: a softmax over local scores, a softmax over
            memory scores, memory scaled by the gate) or ``"joint"`` (one softmax over memory
            and local keys, mixed in by the gate: ``local + g * (joint - local)``).
        retrieval_query: ``"causal"`` (default): chunk j is retrieved for with the embedding
            of chunk j-1, so nothing depends on tokens not yet seen. ``"chunk"``: the paper's
            way, the chunk's own text; this leaks future tokens into earlier predictions and
            is kept only for replication.
        search_backend: exact cosine top-k with faiss ``IndexFlatIP`` (``"faiss"``, default: for
            the one query per chunk MemLong makes, it measured faster than a torch scan at every
            size from 1k to 100k chunks, docs/results/bench_search.json), a torch scan
            (``"torch"``), or ``"auto"``: exact up to ``approximate_above`` chunks, faiss HNSW
            above (rebuilt after evictions; :class:`memlong.memory.index.AutoIndex`).
        approximate_above: the ``"auto"`` backend's switch point in chunks (default 3000: where
            HNSW became faster than exact search on MiniLM embeddings with recall@k 1.0,
            docs/results/bench_search_minilm.json).
        retrieval_offsets: which chunks each hit brings: for a hit with chunk id ``j``, the
            stored chunks ``j + o``. ``(0,)`` (default): the hits, as in the paper. ``(0, 1)``:
            each hit and its continuation (RETRO's neighbour + continuation). With causal
            retrieval the query is the previous chunk, so the hit resembles text the local
            window already holds and its continuation is what predicts the chunk being read.
        memory_positions: RoPE in memory attention. ``"paper"``: memory keys at position 0 and
            each query at its position in the local window (as in the paper and the Focused
            Transformer), so a query-memory score depends on where the query sits in the window.
            ``"none"``: neither side rotated; memory attention matches content only (retrieved
            chunks have no meaningful distance to the query). Both equal the base at gate 0.
        rerank_candidates, rerank_window: when a question is asked (``generate(requery=...)``,
            :meth:`~memlong.cache.MemLongCache.focus_on`), the top ``rerank_candidates`` chunks are
            scored again by their best window of ``rerank_window`` tokens (half-overlapping) and
            the best ``top_k`` kept: a short fact inside a chunk of other text matches its window
            far better than the whole chunk. ``rerank_candidates=0`` turns it off. Reading is
            not affected.
        rerank_index: keep a window index in the bank (default): the windows of ``rerank_window``
            tokens of every banked chunk are embedded once, when a question first needs them (one
            retriever batch; :meth:`~memlong.cache.MemLongCache.index_windows` does it ahead), and
            stored beside the chunk (float16), so a question scores **every** banked chunk by its
            best window and ``rerank_candidates`` only switches re-ranking on or off. Reading alone
            never pays for it; the first question pays about 18% of the reading time with MiniLM
            (later ones only for chunks banked since), plus ``windows x dim x 2`` bytes per chunk
            (7 x 384 x 2 for 128-token chunks, 32-token windows and MiniLM). ``False``: the windows
            of the top ``rerank_candidates`` chunks are embedded at each question (a fact in a chunk
            whose whole-chunk embedding ranks lower is never seen).
        lexical_weight: a question's chunk score adds ``lexical_weight`` times the share of the
            question's rarity-weighted words and word pairs the chunk holds (BM25 over the bank's
            chunks, in [0, 1]: :func:`~memlong.memory.bank.lexical_scores`) to its embedding score
            (with re-ranking on). An embedding can miss what the words say: MiniLM puts chunks of
            code full of ``pass`` above "The pass key is 65125" for "What is the pass key?".
            ``0``: embeddings alone. Reading is not affected (only questions are). The default,
            0.5, was chosen on the validation split (``scripts/experiments/tune_lexical_weight.py``): it
            found planted facts among chunks sharing the question's words and RULER's needles
            among needles with other keys, and moved no fact asked in other words down.
        question_offsets: the chunks a question's hits bring (as ``retrieval_offsets``, for
            ``generate(requery=...)`` / ``focus_on`` only); ``None`` (default): ``retrieval_offsets``.
            ``(0, 1)`` also brings each hit's continuation: a statement that straddles a chunk
            boundary ("... magic number for sleepy-parrot is: 415469" | "3.") is read whole.
        question_order: the order in which a question reads its chunks before the local window:
            ``"stream"`` (default: as in the text) or ``"score"``: the worst hit first and the
            best last, nearest the question, each hit followed by the chunks its offsets bring
            (a small model tends to answer from the nearest of several similar statements).
        question_reread: a question first reads its hits again, as text just before it
            (``generate(requery=...)``, ``memlong ask``): the ``top_k`` chunks it retrieves from the
            bank as it is when asked (with what ``question_offsets`` brings, in ``question_order``)
            enter the local window, so the answer finds a fact a few hundred tokens back as well as
            in memory placed before the window. Costs reading up to ``top_k *
            len(question_offsets)`` chunks per question; the memory then holds them as read text:
            the window's oldest chunks are banked meanwhile, so the question's own search runs on
            that bank. When the reread text leaves the window (the question, the answer or later
            reading outgrowing it), a chunk made only of it is dropped, not banked again (the bank
            holds it already). ``False`` (default): the question reads its hits as memory only; the
            shipped default model turns it on.
        sink_tokens: ``training_free`` mode: the first ``sink_tokens`` tokens a sequence read stay
            visible to every later query in every retrieval layer once the local window has slid
            past them, placed first, before the retrieved chunks (the attention sinks of
            StreamingLLM, InfLLM's initial tokens). A pretrained model puts much of its attention
            on the first tokens it saw; without them a slid window reads badly (on the default
            model a passkey 430 tokens back, inside the window, was missed). ``0`` (default) keeps
            none; at most ``chunk_size``. Must be 0 in ``"memlong"`` mode.
        bank_dtype: dtype of stored keys/values (``None``: the model's dtype): ``"float32"``,
            ``"float16"``, ``"bfloat16"``, or compressed ``"int8"`` / ``"float8_e4m3fn"`` (one
            float32 scale per head and token; dequantized when retrieved).
        bank_device: where the bank's K/V live: ``"model"`` (the model's device), ``"cpu"``
            (host memory, pinned when the model is on a GPU; only retrieved chunks are copied to the
            model's device) or ``"mmap"`` (a memory-mapped file in ``bank_mmap_dir``, the system
            temporary folder when ``None``; the OS pages it in and out).
    """

    mode: Mode = "memlong"
    memory_layer: int = 13
    retrieval_layers: tuple[int, ...] = (14, 18, 22, 26)
    chunk_size: int = 128
    top_k: int = 4
    memory_capacity: int = 32768
    local_window: int = 1024
    eviction: EvictionPolicy = "counter"
    evict_keep_newest: float = 0.1
    evict_drop_oldest: float = 0.1
    evict_target: float = 0.5
    gate_mode: GateMode = "head"
    gate_activation: GateActivation = "tanh"
    fusion: Fusion = "separate"
    retrieval_query: QueryMode = "causal"
    search_backend: SearchBackend = "faiss"
    approximate_above: int = 3000
    retrieval_offsets: tuple[int, ...] = (0,)
    memory_positions: str = "paper"
    rerank_candidates: int = 32
    rerank_window: int = 32
    rerank_index: bool = True
    lexical_weight: float = 0.5
    question_offsets: tuple[int, ...] | None = None
    question_order: str = "stream"
    question_reread: bool = False
    sink_tokens: int = 0
    bank_dtype: str | None = None
    bank_device: str = "model"
    bank_mmap_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    #: Fields that only change how a question searches the bank, never what reading stores: a
    #: saved memory loads into a model whose config differs in these alone. (``question_reread``
    #: reads more text at a question, into the memory that answers it, never before.)
    QUESTION_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"rerank_candidates", "rerank_window", "rerank_index", "lexical_weight", "question_offsets", "question_order",
         "question_reread"})

    def __post_init__(self) -> None:
        self.retrieval_layers = tuple(int(x) for x in self.retrieval_layers)
        if isinstance(self.retrieval_offsets, (list, tuple)):
            self.retrieval_offsets = tuple(self.retrieval_offsets)
        if isinstance(self.question_offsets, list):
            self.question_offsets = tuple(self.question_offsets)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(name: str, msg: str) -> None:
            raise MemLongConfigError(f"MemLongConfig.{name}: {msg}")

        for name in ("memory_layer", "chunk_size", "top_k", "memory_capacity", "local_window", "approximate_above",
                     "rerank_candidates", "rerank_window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                bad(name, f"must be an int, got {v!r}")
        if self.memory_layer < 1:
            bad("memory_layer", f"is 1-based and must be >= 1, got {self.memory_layer}")
        if not self.retrieval_layers:
            bad("retrieval_layers", "must name at least one layer above the memory layer")
        if len(set(self.retrieval_layers)) != len(self.retrieval_layers):
            bad("retrieval_layers", f"has duplicates: {list(self.retrieval_layers)}")
        for layer in self.retrieval_layers:
            if layer < 1:
                bad("retrieval_layers", f"layer numbers are 1-based and must be >= 1, got {layer}")
            if layer <= self.memory_layer and self.mode == "memlong":
                bad(
                    "retrieval_layers",
                    f"layer {layer} is at or below memory_layer={self.memory_layer}; retrieval "
                    "layers must be above the memory layer (1-based numbering)",
                )
        if self.chunk_size < 1:
            bad("chunk_size", f"must be >= 1, got {self.chunk_size}")
        if self.local_window < self.chunk_size:
            bad(
                "chunk_size",
                f"chunk_size={self.chunk_size} is larger than local_window={self.local_window}; "
                "use a chunk no larger than the window",
            )
        if self.local_window % self.chunk_size:
            bad(
                "local_window",
                f"must be a multiple of chunk_size={self.chunk_size}, got {self.local_window}",
            )
        if self.top_k < 1:
            bad("top_k", f"must be >= 1, got {self.top_k}")
        for name in ("rerank_index", "question_reread"):
            if not isinstance(getattr(self, name), bool):
                bad(name, f"must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.lexical_weight, bool) or not isinstance(self.lexical_weight, (int, float)) \
                or not 0 <= self.lexical_weight < float("inf"):
            bad("lexical_weight", f"must be a number >= 0, got {self.lexical_weight!r}")
        if self.rerank_candidates < 0 or self.rerank_window < 1:
            bad("rerank_candidates", f"rerank_candidates must be >= 0 and rerank_window >= 1, got "
                                     f"{self.rerank_candidates} and {self.rerank_window}")
        if not 0 <= self.sink_tokens <= self.chunk_size:
            bad("sink_tokens", f"must be in 0..chunk_size={self.chunk_size}, got {self.sink_tokens}")
        if self.sink_tokens and self.mode != "training_free":
            bad("sink_tokens", f"is a training_free setting; mode is {self.mode!r}: set sink_tokens=0 or "
                               "mode='training_free'")
        if self.approximate_above < 1:
            bad("approximate_above", f"must be >= 1 chunk, got {self.approximate_above}")
        if self.memory_capacity < self.top_k * self.chunk_size:
            bad(
                "memory_capacity",
                f"{self.memory_capacity} tokens holds fewer than top_k={self.top_k} chunks of "
                f"{self.chunk_size} tokens; raise it to at least {self.top_k * self.chunk_size}",
            )
        for name, choices in _CHOICES.items():
            v = getattr(self, name)
            if v not in choices:
                bad(name, f"unknown value {v!r}; choose one of {list(choices)}")
        for name in ("evict_keep_newest", "evict_drop_oldest"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                bad(name, f"must be in [0, 1), got {v}")
        if not 0.0 < self.evict_target < 1.0:
            bad("evict_target", f"must be in (0, 1), got {self.evict_target}")
        if self.evict_keep_newest + self.evict_drop_oldest > self.evict_target:
            bad(
                "evict_keep_newest",
                "evict_keep_newest + evict_drop_oldest must not exceed evict_target, "
                f"got {self.evict_keep_newest} + {self.evict_drop_oldest} > {self.evict_target}",
            )
        for name in ("retrieval_offsets", "question_offsets"):
            offs = getattr(self, name)
            if offs is None and name == "question_offsets":
                continue
            if (not isinstance(offs, tuple) or not offs or len(set(offs)) != len(offs)
                    or any(isinstance(o, bool) or not isinstance(o, int) or abs(o) > 8 for o in offs)):
                bad(name, f"must be distinct ints in [-8, 8], at least one, e.g. (0,) or (0, 1); got {offs!r}")
        if self.question_order not in ("stream", "score"):
            bad("question_order", f"must be 'stream' or 'score', got {self.question_order!r}")
        dtypes = ("float32", "float16", "bfloat16", "int8", "float8_e4m3fn")
        if self.bank_dtype is not None and self.bank_dtype not in dtypes:
            bad("bank_dtype", f"must be None or one of {list(dtypes)}, got {self.bank_dtype!r}")
        if self.bank_device not in ("model", "cpu", "mmap"):
            bad("bank_device", f"must be 'model', 'cpu' or 'mmap', got {self.bank_device!r}")
        if self.bank_mmap_dir is not None and self.bank_device != "mmap":
            bad("bank_mmap_dir", f"is only used with bank_device='mmap' (bank_device is {self.bank_device!r})")

    def validate_for_model(self, num_layers: int, max_positions: int | None = None) -> None:
        """Checks that depend on the base model (raised when wrapping)."""
        if self.memory_layer >= num_layers and self.mode == "memlong":
            raise MemLongConfigError(
                f"MemLongConfig.memory_layer: {self.memory_layer} leaves no layer above it in a "
                f"{num_layers}-layer model (1-based); choose at most {num_layers - 1}"
            )
        for layer in self.retrieval_layers:
            if layer > num_layers:
                raise MemLongConfigError(
                    f"MemLongConfig.retrieval_layers: layer {layer} is beyond the model, which has "
                    f"{num_layers} layers (1-based numbering: 1..{num_layers})"
                )
        if max_positions is not None and self.local_window > max_positions:
            raise MemLongConfigError(
                f"MemLongConfig.local_window: {self.local_window} exceeds the model's "
                f"max_position_embeddings={max_positions}; the window must fit what the model was trained on"
            )
        if max_positions is not None and self.mode == "training_free" and self.span_tokens > max_positions:
            raise MemLongConfigError(
                f"MemLongConfig.top_k: in training_free mode the sink and retrieved tokens sit before the local "
                f"window, {self.sink_tokens} + {self.retrieved_tokens} + {self.local_window} = {self.span_tokens} positions, beyond the model's "
                f"max_position_embeddings={max_positions}; lower top_k, chunk_size or local_window"
            )

    # ------------------------------------------------------------------ derived values
    @property
    def memory_layer_index(self) -> int:
        """0-based index of the memory layer."""
        return self.memory_layer - 1

    @property
    def retrieval_layer_indices(self) -> tuple[int, ...]:
        """0-based indices of the retrieval layers."""
        return tuple(layer - 1 for layer in self.retrieval_layers)

    @property
    def retrieved_tokens(self) -> int:
        """Most tokens retrieved for one chunk: ``top_k`` hits, each with its offsets (a
        question's, ``question_offsets``, where they bring more)."""
        offsets = max(len(self.retrieval_offsets), len(self.question_offsets or ()))
        return self.top_k * offsets * self.chunk_size

    @property
    def span_tokens(self) -> int:
        """Positions a query's attention spans in training_free mode: sink + retrieved + local window."""
        return self.sink_tokens + self.retrieved_tokens + self.local_window

    @property
    def bank_layers(self) -> tuple[int, ...]:
        """0-based layers whose K/V the bank stores for each chunk."""
        return self.retrieval_layer_indices if self.mode == "training_free" else (self.memory_layer_index,)

    @property
    def capacity_chunks(self) -> int:
        return self.memory_capacity // self.chunk_size

    @property
    def index_window(self) -> int:
        """Tokens per window of the bank's window index (``rerank_index``); 0: no window index."""
        on = self.rerank_index and self.rerank_candidates and self.rerank_window < self.chunk_size
        return self.rerank_window if on else 0

    @property
    def window_chunks(self) -> int:
        """Whole past chunks a token sees locally besides its own chunk."""
        return self.local_window // self.chunk_size - 1

    @classmethod
    def for_num_layers(cls, num_layers: int, **overrides: Any) -> MemLongConfig:
        """The paper's layout scaled to ``num_layers``: memory layer in the middle, four spaced
        retrieval layers above it (26 layers give 13 and 14, 18, 22, 26)."""
        if num_layers < 2:
            raise MemLongConfigError(f"a MemLong model needs at least 2 layers, got {num_layers}")
        memory = num_layers // 2
        step = max(1, (num_layers - (memory + 1)) // 3)
        retrieval = tuple(range(memory + 1, num_layers + 1, step))
        return cls(memory_layer=memory, retrieval_layers=retrieval, **overrides)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["retrieval_layers"] = list(self.retrieval_layers)
        d["retrieval_offsets"] = list(self.retrieval_offsets)
        d["question_offsets"] = None if self.question_offsets is None else list(self.question_offsets)
        return d

    def differences(self, saved: dict[str, Any], ignore: frozenset[str] = frozenset()) -> list[str]:
        """The fields, except ``ignore``, in which ``saved`` (a :meth:`to_dict` written earlier,
        perhaps by an older version) differs from this config; a field added since compares as
        its default (what the saving version did)."""
        mine = self.to_dict()
        default = {f.name: f.default for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        return sorted(k for k in (set(saved) | set(mine)) - ignore if saved.get(k, default.get(k)) != mine.get(k))

    def memory_differences(self, saved: dict[str, Any]) -> list[str]:
        """The fields in which the config a memory was read with (``saved``) differs from this
        one in what reading stores (all but :attr:`QUESTION_FIELDS`): a memory may be continued
        only where this is empty."""
        return self.differences(saved, self.QUESTION_FIELDS)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemLongConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MemLongConfigError(
                f"unknown MemLongConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**d)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.to_json_string() + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> MemLongConfig:
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory!s}: not a MemLong directory")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise MemLongConfigError(f"{path} is not valid JSON ({e}); the file is corrupted") from e
        return cls.from_dict(d)
