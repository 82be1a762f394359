"""The MemLong configuration: one typed, validated, JSON-serialisable dataclass.

Layer numbers are **1-based**, as in the paper (a 26-layer model: memory layer 13, retrieval
layers 14, 18, 22, 26). ``memory_layer_index`` / ``retrieval_layer_indices`` give the 0-based
indices that ``model.model.layers[i]`` uses.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

EvictionPolicy = Literal["counter", "fifo"]
GateMode = Literal["head", "layer"]
GateActivation = Literal["tanh", "identity"]
Fusion = Literal["separate", "joint"]
QueryMode = Literal["causal", "chunk"]
SearchBackend = Literal["torch", "faiss", "auto"]
Mode = Literal["memlong", "training_free"]
MemoryPositions = Literal["paper", "none"]
QuestionOrder = Literal["stream", "score"]
BankDtype = Literal["float32", "float16", "bfloat16", "int8", "float8_e4m3fn"]
BankDevice = Literal["model", "cpu", "mmap"]

#: retired fields and the only value they ever held: ignored in a saved config that has them
_RETIRED = {"extra": {}}

CONFIG_NAME = "memlong_config.json"


class MemLongConfigError(ValueError):
    """An invalid MemLong configuration value; the message names the field and what to do."""


@dataclass
class MemLongConfig:
    """Everything that defines a MemLong model on top of a base causal LM: validated when built,
    saved as JSON beside a model. One line per field below; what each does and why it has its
    default: docs/CONFIG.md. ``MemLongConfig()`` is the paper's layout; the shipped default model
    (:mod:`memlong.pretrained`) differs (``training_free`` mode, 11 retrieval heads banked, sinks and
    the question options on), as its own ``memlong_config.json`` says.
    """

    # what the memory is and where it sits
    mode: Mode = (
        "memlong"  # "memlong" (the paper: one memory layer, gated) or "training_free" (every retrieval layer banks)
    )
    memory_layer: int = 13  # 1-based: the top of the frozen lower stack; its K/V are banked (memlong mode)
    retrieval_layers: tuple[int, ...] = (14, 18, 22, 26)  # 1-based layers that attend to retrieved chunks
    chunk_size: int = 128  # tokens per chunk: the unit of memory, retrieval and eviction
    top_k: int = 4  # chunks retrieved for each chunk read (and for a question)
    memory_capacity: int = 32768  # bank capacity in tokens (memory_capacity // chunk_size chunks)
    local_window: int = 1024  # tokens of local context, a multiple of chunk_size
    sink_tokens: int = 0  # training_free: the first tokens read stay visible to every query (attention sinks)
    # training_free: (1-based layer, 0-based KV head) pairs the bank keeps; the other heads read sink + window
    bank_heads: tuple[tuple[int, int], ...] | None = None  # None: every KV head of every retrieval layer
    # eviction when the bank is full
    eviction: EvictionPolicy = "counter"  # the paper's retrieval-counter rule, or "fifo"
    evict_keep_newest: float = 0.1  # counter rule: the newest share always kept
    evict_drop_oldest: float = 0.1  # counter rule: the oldest share always dropped
    evict_target: float = 0.5  # counter rule: the share of capacity left after an eviction
    # how memory mixes into attention (memlong mode)
    gate_mode: GateMode = "head"  # one gate per head or per retrieval layer
    gate_activation: GateActivation = "tanh"  # the gate's value: tanh(theta) or theta; theta starts at 0
    fusion: Fusion = "separate"  # paper eq. 2-5 (two softmaxes) or "joint" (one)
    memory_positions: MemoryPositions = "paper"  # RoPE in memory attention: keys at 0 ("paper") or none
    # retrieval while reading
    retrieval_query: QueryMode = "causal"  # chunk j searched with chunk j-1 ("chunk": the paper's, leaks the future)
    retrieval_offsets: tuple[int, ...] = (0,)  # the stored chunks j + o a hit j brings
    search_backend: SearchBackend = "faiss"  # exact faiss, a torch scan, or "auto" (HNSW above approximate_above)
    approximate_above: int = 3000  # "auto": chunks from which the search is approximate
    # question time: how a question searches and reads the bank (QUESTION_FIELDS)
    rerank_candidates: int = 32  # chunks a question re-scores by their best window (0: off)
    rerank_window: int = 32  # tokens per window of that re-scoring
    rerank_index: bool = True  # keep every banked chunk's window embeddings (a question scores them all)
    lexical_weight: float = 0.5  # weight of the question's rarity-weighted words in a chunk's score
    question_offsets: tuple[int, ...] | None = None  # the chunks a question's hits bring (None: retrieval_offsets)
    question_order: QuestionOrder = "stream"  # a question reads its hits in text order or by score (best last)
    question_reread: bool = False  # a question first reads its hits again as text just before it
    question_window: bool = False  # a question's hits may also be chunks still in the local window
    question_tail: int = 0  # tokens of the chunk after each hit a question reads with it (reread)
    question_fresh_window: bool = False  # a question banks the local window's whole chunks first
    question_score_ratio: float = 0.0  # a hit read again scores at least this share of the best hit's
    # bank storage
    bank_dtype: BankDtype | None = None  # stored K/V dtype (None: the model's); int8/float8 compressed
    bank_device: BankDevice = "model"  # the model's device, host memory ("cpu") or a memory-mapped file
    bank_mmap_dir: str | None = None  # "mmap": the folder of the file (None: the system's temporary one)

    #: Fields that only change how a question searches the bank, never what reading stores: a
    #: saved memory loads into a model whose config differs in these alone. (``question_reread``
    #: reads more text at a question, into the memory that answers it, never before.)
    QUESTION_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "rerank_candidates",
            "rerank_window",
            "rerank_index",
            "lexical_weight",
            "question_offsets",
            "question_order",
            "question_reread",
            "question_window",
            "question_tail",
            "question_fresh_window",
            "question_score_ratio",
        }
    )
    #: where the bank lives, not what it holds: a saved memory loads into a model that keeps its bank elsewhere
    STORAGE_FIELDS: ClassVar[frozenset[str]] = frozenset({"bank_device", "bank_mmap_dir"})

    def __post_init__(self) -> None:
        self.retrieval_layers = tuple(int(x) for x in self.retrieval_layers)
        if isinstance(self.retrieval_offsets, (list, tuple)):
            self.retrieval_offsets = tuple(self.retrieval_offsets)
        if isinstance(self.question_offsets, list):
            self.question_offsets = tuple(self.question_offsets)
        if isinstance(self.bank_heads, (list, tuple)):
            self.bank_heads = tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in self.bank_heads)
            if all(isinstance(p, tuple) for p in self.bank_heads):
                self.bank_heads = tuple(sorted(self.bank_heads))  # one order: the bank's head order
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(name: str, msg: str) -> None:
            raise MemLongConfigError(f"MemLongConfig.{name}: {msg}")

        for name in (
            "memory_layer",
            "chunk_size",
            "top_k",
            "memory_capacity",
            "local_window",
            "approximate_above",
            "rerank_candidates",
            "rerank_window",
            "question_tail",
        ):
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
        for name in ("rerank_index", "question_reread", "question_window", "question_fresh_window"):
            if not isinstance(getattr(self, name), bool):
                bad(name, f"must be True or False, got {getattr(self, name)!r}")
        if (
            isinstance(self.lexical_weight, bool)
            or not isinstance(self.lexical_weight, (int, float))
            or not 0 <= self.lexical_weight < float("inf")
        ):
            bad("lexical_weight", f"must be a number >= 0, got {self.lexical_weight!r}")
        if self.rerank_candidates < 0 or self.rerank_window < 1:
            bad(
                "rerank_candidates",
                f"rerank_candidates must be >= 0 and rerank_window >= 1, got "
                f"{self.rerank_candidates} and {self.rerank_window}",
            )
        if (
            isinstance(self.question_score_ratio, bool)
            or not isinstance(self.question_score_ratio, (int, float))
            or not 0 <= self.question_score_ratio <= 1
        ):
            bad("question_score_ratio", f"must be a number in 0..1, got {self.question_score_ratio!r}")
        if not 0 <= self.question_tail <= self.chunk_size:
            bad("question_tail", f"must be in 0..chunk_size={self.chunk_size} tokens, got {self.question_tail}")
        if not 0 <= self.sink_tokens <= self.chunk_size:
            bad("sink_tokens", f"must be in 0..chunk_size={self.chunk_size}, got {self.sink_tokens}")
        if self.sink_tokens and self.mode != "training_free":
            bad(
                "sink_tokens",
                f"is a training_free setting; mode is {self.mode!r}: set sink_tokens=0 or mode='training_free'",
            )
        if self.approximate_above < 1:
            bad("approximate_above", f"must be >= 1 chunk, got {self.approximate_above}")
        if self.memory_capacity < self.top_k * self.chunk_size:
            bad(
                "memory_capacity",
                f"{self.memory_capacity} tokens holds fewer than top_k={self.top_k} chunks of "
                f"{self.chunk_size} tokens; raise it to at least {self.top_k * self.chunk_size}",
            )
        for name, choices in _choices().items():
            v = getattr(self, name)
            if v not in choices:
                bad(
                    name,
                    f"unknown value {v!r}; choose one of {[c for c in choices if c is not None]}"
                    + (" or None" if None in choices else ""),
                )
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
            if (
                not isinstance(offs, tuple)
                or not offs
                or len(set(offs)) != len(offs)
                or any(isinstance(o, bool) or not isinstance(o, int) or abs(o) > 8 for o in offs)
            ):
                bad(name, f"must be distinct ints in [-8, 8], at least one, e.g. (0,) or (0, 1); got {offs!r}")
        if self.bank_heads is not None:
            self._validate_bank_heads(bad)
        if self.bank_mmap_dir is not None and self.bank_device != "mmap":
            bad("bank_mmap_dir", f"is only used with bank_device='mmap' (bank_device is {self.bank_device!r})")

    def _validate_bank_heads(self, bad) -> None:
        heads = self.bank_heads
        if self.mode != "training_free":
            bad("bank_heads", f"is a training_free setting; mode is {self.mode!r}: set bank_heads=None")
        if not isinstance(heads, tuple) or not heads:
            bad("bank_heads", f"must be (layer, kv_head) pairs, at least one, e.g. ((14, 0), (22, 2)); got {heads!r}")
        for pair in heads:
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) for x in pair)
            ):
                bad("bank_heads", f"each entry must be a (1-based layer, 0-based KV head) pair of ints; got {pair!r}")
            layer, head = pair
            if layer not in self.retrieval_layers:
                bad(
                    "bank_heads",
                    f"({layer}, {head}): layer {layer} is not a retrieval layer {list(self.retrieval_layers)} "
                    "(layers are 1-based); bank only heads of retrieval layers",
                )
            if head < 0:
                bad("bank_heads", f"({layer}, {head}): KV heads are 0-based and must be >= 0")
        if len(set(heads)) != len(heads):
            bad("bank_heads", f"has duplicates: {[list(p) for p in heads]}")

    def validate_for_model(
        self, num_layers: int, max_positions: int | None = None, num_kv_heads: int | None = None
    ) -> None:
        """Checks that depend on the base model (raised when wrapping)."""
        if self.bank_heads is not None and num_kv_heads is not None:
            for layer, head in self.bank_heads:
                if head >= num_kv_heads:
                    raise MemLongConfigError(
                        f"MemLongConfig.bank_heads: ({layer}, {head}) names KV head {head}, but the model has "
                        f"{num_kv_heads} KV heads per layer (0-based: 0..{num_kv_heads - 1}); heads are a "
                        "model's own: choose this model's with `memlong heads --retrieval`, or bank every head "
                        "with bank_heads=None (`--set bank_heads=null`)"
                    )
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

    def banked_heads(self, num_kv_heads: int) -> dict[int, tuple[int, ...]]:
        """0-based bank layer -> the KV heads of it the bank stores, in the bank's order (layers
        ascending, heads ascending within a layer; a layer with none maps to ``()``)."""
        if self.bank_heads is None:
            return {layer: tuple(range(num_kv_heads)) for layer in self.bank_layers}
        return {layer: tuple(h for lay, h in self.bank_heads if lay - 1 == layer) for layer in self.bank_layers}

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
        d["bank_heads"] = None if self.bank_heads is None else [list(p) for p in self.bank_heads]
        return d

    def differences(self, saved: dict[str, Any], ignore: frozenset[str] = frozenset()) -> list[str]:
        """The fields, except ``ignore``, in which ``saved`` (a :meth:`to_dict` written earlier,
        perhaps by an older version) differs from this config; a field added since compares as
        its default (what the saving version did)."""
        mine, saved = self.to_dict(), _without_retired(saved)
        default = {f.name: f.default for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        return sorted(k for k in (set(saved) | set(mine)) - ignore if saved.get(k, default.get(k)) != mine.get(k))

    def memory_differences(self, saved: dict[str, Any]) -> list[str]:
        """The fields in which the config a memory was read with (``saved``) differs from this
        one in what reading stores (all but :attr:`QUESTION_FIELDS` and :attr:`STORAGE_FIELDS`): a
        memory may be continued only where this is empty."""
        return self.differences(saved, self.QUESTION_FIELDS | self.STORAGE_FIELDS)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemLongConfig:
        d = _without_retired(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MemLongConfigError(f"unknown MemLongConfig field(s) {unknown}; known fields: {sorted(known)}")
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


# ------------------------------------------------------------------ reading-time overrides (--set)
#: fields whose value shapes the weights (gates, trained layers): not changeable at reading time
WEIGHT_FIELDS = ("mode", "memory_layer", "retrieval_layers", "gate_mode", "gate_activation")


def add_overrides_argument(parser, examples: str, then: str = "") -> None:
    """The ``--set FIELD=VALUE`` flag (repeatable, into ``args.overrides``; :func:`reading_overrides`
    applies it) on an argparse ``parser``; its help gives ``examples`` and ends with ``then``."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        dest="overrides",
        help=f"override a reading-time MemLong config field, VALUE in JSON (repeatable), e.g. {examples}{then}",
    )


def reading_overrides(config: MemLongConfig, overrides: list[str]) -> MemLongConfig:
    """``config`` with ``FIELD=VALUE`` overrides (VALUE in JSON; a bare word is taken as a string)."""
    changes = {}
    for item in overrides:
        field, sep, raw = item.partition("=")
        field = field.strip()
        if not sep or not hasattr(config, field):
            raise MemLongConfigError(f"--set {item!r}: expected FIELD=VALUE with FIELD a MemLongConfig field")
        # training_free mode trains nothing: which layers bank and retrieve may change at reading time
        if field in WEIGHT_FIELDS and not (config.mode == "training_free" and field == "retrieval_layers"):
            raise MemLongConfigError(
                f"--set {field}: the trained weights depend on it; it cannot change at reading time"
            )
        try:
            changes[field] = json.loads(raw)
        except json.JSONDecodeError:
            changes[field] = raw
    return dataclasses.replace(config, **changes)


def apply_overrides(model, overrides: list[str]) -> None:
    """Sets ``--set FIELD=VALUE`` overrides (:func:`reading_overrides`) on a loaded MemLong model's
    config, checked against the model (a MemLongConfigError says what is wrong)."""
    if overrides:
        model.memlong_config = reading_overrides(model.memlong_config, overrides)
        model.memlong_config.validate_for_model(
            model.config.num_hidden_layers,
            getattr(model.config, "max_position_embeddings", None),
            getattr(model.config, "num_key_value_heads", None),
        )


def _without_retired(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` without the retired fields that hold their only value (a config saved by an older version)."""
    return {k: v for k, v in d.items() if not (k in _RETIRED and v == _RETIRED[k])}


@cache
def _choices() -> dict[str, tuple]:
    """field -> its allowed values, from the ``Literal`` types of :class:`MemLongConfig`'s fields."""
    out = {}
    for name, hint in get_type_hints(MemLongConfig).items():
        args = get_args(hint)
        literals = [a for a in args if get_origin(a) is Literal] if get_origin(hint) is not Literal else [hint]
        if literals:
            out[name] = tuple(v for lit in literals for v in get_args(lit)) + ((None,) if type(None) in args else ())
    return out
