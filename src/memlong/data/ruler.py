"""RULER's synthetic tasks (Hsieh et al. 2024, arXiv 2404.06654) as RULER defines them.

The 13 tasks of RULER's ``scripts/synthetic.yaml`` with the templates, answer prefixes and
generation lengths of its ``scripts/data/synthetic/constants.py``, generated the way its
``niah.py``, ``variable_tracking.py``, ``common_words_extraction.py``, ``freq_words_extraction.py``
and ``qa.py`` do, and scored by its ``scripts/eval/synthetic/constants.py`` metrics:

============== ========= ============ ======= ======= ============================================
task           haystack  keys/values  k/v/q   tokens  what is asked
============== ========= ============ ======= ======= ============================================
niah_single_1  noise     words/numbers 1/1/1  128     the value of one needle
niah_single_2  essay     words/numbers 1/1/1  128     the same, in real text
niah_single_3  essay     words/uuids   1/1/1  128     a uuid value
niah_multikey_1 essay    words/numbers 4/1/1  128     one needle among 3 with other keys
niah_multikey_2 needle   words/numbers 1/1/1  128     a haystack made of needles with other keys
niah_multikey_3 needle   uuids/uuids   1/1/1  128     the same with uuid keys and values
niah_multivalue essay    words/numbers 1/4/1  128     the 4 values of one key
niah_multiquery essay    words/numbers 4/1/4  128     the values of 4 keys at once
vt             noise     1 chain, 4 hops      30      every variable bound to a value (one example)
cwe            -         10 words x 30, others x 3 120 the 10 most common words (one example)
fwe            -         Zipf alpha 2         50      the 3 most frequent coded words
qa_1           SQuAD     documents            32      a SQuAD question (``qa_files``)
qa_2           HotpotQA  documents            32      a HotpotQA question (``qa_files``)
============== ========= ============ ======= ======= ============================================

Each prompt is the task's template around its context, wrapped in the model's chat template when
``chat`` is given (RULER wraps instruct models in theirs), then the answer prefix; prompt tokens
+ the task's generation length <= ``length``, the haystack as large as fits (RULER's binary
search). Where RULER downloads material we use our own, as documented here: the ``essay``
haystack is the text of the held-out documents that read as prose (:func:`is_prose`; RULER: Paul
Graham's essays), whitespace-collapsed and cut into sentences by :func:`sentences` (RULER: NLTK's
punkt), so that a needle's depth, counted in sentences, lands where it says; keys and cwe's words come from
the word lists of the ``wonderwords`` package, as in RULER (cwe beyond those words: pronounceable
made-up words, where RULER reads an English word list); qa reads SQuAD / HotpotQA files given by
the caller. The randomness is Python's ``random`` seeded per sample (RULER also shuffles some
lists with its fixed global seed; here each sample draws its own order).

Extra variants of ours (:data:`EXTRA`) use RULER's generator with the noise haystack in place of
the essay; they are reported apart, never in RULER's mean (:data:`RULER_TASKS`).
"""

from __future__ import annotations

import bisect
import json
import math
import random
import re
import string
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

#: RULER's noise haystack: one "sentence" repeated, one per line
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
#: needle depths (percent), RULER's np.round(np.linspace(0, 100, 40)).astype(int)
DEPTHS = tuple(int(math.floor(100 * i / 39 + 0.5)) for i in range(40))
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."

TEMPLATES = {  # RULER's scripts/data/synthetic/constants.py: (template, answer prefix, tokens to generate)
    "niah": (
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
        "{type_needle_v} for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
        128,
    ),
    "vt": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
        "assigned the value {query}, they are: ",
        30,
    ),
    "cwe": (
        "Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
        "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
        120,
    ),
    "fwe": (
        "Read the following coded text and track the frequency of each coded word. Find the three most "
        "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
        "the dots '....'. What are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
        50,
    ),
    "qa": (
        "Answer the question based on the given documents. Only give me the answer and do not output any other "
        "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
        "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
        " Answer:",
        32,
    ),
}


@dataclass(frozen=True)
class RulerTask:
    """One task of RULER's ``synthetic.yaml`` (or an extra variant of ours)."""

    name: str
    kind: str  # "niah", "vt", "cwe", "fwe" or "qa"
    haystack: str | None = None  # niah: "noise", "essay" or "needle"; vt: "noise"
    type_k: str = "words"  # niah: the keys' kind ("words", "numbers", "uuids")
    type_v: str = "numbers"  # niah: the values' kind
    num_k: int = 1  # niah: needles with distinct keys
    num_v: int = 1  # niah: values (needles) per key
    num_q: int = 1  # niah: keys asked about
    num_chains: int = 1  # vt
    num_hops: int = 4  # vt
    freq_cw: int = 30  # cwe: repeats of each common word (6 below 4,096 tokens)
    freq_ucw: int = 3  # cwe: repeats of each other word (1 below 4,096 tokens)
    num_cw: int = 10  # cwe: common words asked for
    alpha: float = 2.0  # fwe: the Zipf law's exponent
    dataset: str | None = None  # qa: "squad" or "hotpotqa"
    metric: str = "all"  # "all": RULER's string_match_all; "part": string_match_part (qa)

    @property
    def tokens_to_generate(self) -> int:
        return TEMPLATES[self.kind][2]

    @property
    def needs_essay(self) -> bool:
        return self.haystack == "essay"


def _niah(name, haystack, type_k="words", type_v="numbers", k=1, v=1, q=1) -> RulerTask:
    return RulerTask(name, "niah", haystack, type_k, type_v, max(k, q), v, q)  # RULER: num_k = max(num_k, num_q)


#: RULER's 13 tasks, in its order (scripts/config_tasks.sh)
TASKS: dict[str, RulerTask] = {
    t.name: t
    for t in (
        _niah("niah_single_1", "noise"),
        _niah("niah_single_2", "essay"),
        _niah("niah_single_3", "essay", type_v="uuids"),
        _niah("niah_multikey_1", "essay", k=4),
        _niah("niah_multikey_2", "needle"),
        _niah("niah_multikey_3", "needle", type_k="uuids", type_v="uuids"),
        _niah("niah_multivalue", "essay", v=4),
        _niah("niah_multiquery", "essay", q=4),
        RulerTask("vt", "vt", "noise"),
        RulerTask("cwe", "cwe"),
        RulerTask("fwe", "fwe"),
        RulerTask("qa_1", "qa", dataset="squad", metric="part"),
        RulerTask("qa_2", "qa", dataset="hotpotqa", metric="part"),
    )
}
RULER_TASKS = tuple(TASKS)
#: our variants: RULER's generator over the noise haystack; reported apart, never in RULER's mean
EXTRA: dict[str, RulerTask] = {
    t.name: t
    for t in (
        replace(TASKS["niah_multikey_1"], name="niah_multikey_1_noise", haystack="noise"),
        replace(TASKS["niah_multivalue"], name="niah_multivalue_noise", haystack="noise"),
        replace(TASKS["niah_multiquery"], name="niah_multiquery_noise", haystack="noise"),
    )
}
ALL_TASKS: dict[str, RulerTask] = {**TASKS, **EXTRA}


class PromptTooShort(ValueError):
    """``length`` leaves no room for the task's fixed parts; ``minimum`` is about the least that does."""

    def __init__(self, task: str, length: int, minimum: int):
        super().__init__(f"{task}: a {length}-token prompt is too short; it needs at least {minimum} tokens")
        self.task, self.length, self.minimum = task, length, minimum


@dataclass
class RulerSample:
    task: str
    ids: list[int]  # the prompt: [chat start] instructions, context, query [chat end] answer prefix
    answers: list[str]  # the references RULER scores against
    question_tokens: int  # the prompt's last tokens after the context (query and answer prefix)
    max_new_tokens: int  # RULER's tokens to generate
    span: tuple[int, int] = (0, 0)  # where the context is in ``ids``
    positions: list[int] = field(default_factory=list)  # token offset in ``ids`` of each needle answered
    text: str = ""  # the prompt as text


def score(output: str, answers: list[str], metric: str = "all") -> float:
    """RULER's score of one generation, in [0, 1]: ``all`` (string_match_all), the fraction of
    ``answers`` found in it; ``part`` (string_match_part), 1 if any is found. Case-insensitive,
    after RULER's postprocessing (stripped, control characters made newlines)."""
    out = postprocess(output).lower()
    found = [a.lower() in out for a in answers]
    return (sum(found) / len(found)) if metric == "all" else float(any(found))


def postprocess(output: str) -> str:
    """RULER's ``postprocess_pred``: strip, control characters to newlines, strip."""
    return re.sub(r"[\x00-\x1f]", "\n", output.strip()).strip()


# ---------------------------------------------------------------------------------------------
# word lists and haystack text
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _wordlist(name: str) -> tuple[str, ...]:
    """A word list of the ``wonderwords`` package (RULER's source of keys and cwe's words)."""
    from importlib.resources import files

    return tuple(w.rstrip() for w in files("wonderwords.assets").joinpath(name).read_text().splitlines())


@lru_cache(maxsize=None)
def _key_parts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(sorted(set(_wordlist("adjectivelist.txt")))), tuple(sorted(set(_wordlist("nounlist.txt"))))


def key_word(rng: random.Random) -> str:
    """A needle key as RULER draws it: one of every adjective-noun pair of wonderwords' lists, uniformly
    (an adjective and a noun drawn apart: the same law, without building the 6 million pairs)."""
    adjectives, nouns = _key_parts()
    return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"


@lru_cache(maxsize=None)
def cwe_words() -> tuple[str, ...]:
    """cwe's words: wonderwords' nouns, adjectives and verbs, deduplicated and sorted (RULER then
    shuffles them once with its seed; a sample's random.sample makes that order irrelevant)."""
    return tuple(sorted(set(_wordlist("nounlist.txt") + _wordlist("adjectivelist.txt") + _wordlist("verblist.txt"))))


def _made_up_words(rng: random.Random, n: int, avoid: set[str]) -> list[str]:
    out: list[str] = []
    seen = set(avoid)
    while len(out) < n:
        w = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.choice((3, 4))))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


#: a plain word of prose: letters (an apostrophe or hyphen inside), perhaps quoted or bracketed,
#: perhaps followed by punctuation
_PROSE_WORD = re.compile(r"^[(\"'“‘]?[A-Za-z][A-Za-z’'-]*[.,;:!?\"'”’)]*$")
#: what :func:`is_prose` asks of a text: the share of its words that are plain words, and the most
#: words its sentences hold on average (measured on the default corpus: manual pages 0.84 and 22
#: at the median, Python and Java sources 0.56-0.69 and over 100)
PROSE_WORD_SHARE, PROSE_SENTENCE_WORDS = 0.75, 40


def is_prose(text: str) -> bool:
    """Whether ``text`` reads as prose, as RULER's essays do: at least :data:`PROSE_WORD_SHARE` of
    its words plain words and at most :data:`PROSE_SENTENCE_WORDS` words a sentence on average.
    Source code fails both; its lines hold few sentence ends, so a needle's depth, counted in
    sentences, could not fall inside it."""
    words = re.sub(r"\s+", " ", text).strip().split(" ")
    if not words or not words[0]:
        return False
    plain = sum(1 for w in words if _PROSE_WORD.match(w)) / len(words)
    return plain >= PROSE_WORD_SHARE and len(words) <= PROSE_SENTENCE_WORDS * len(sentences(" ".join(words)))


def essay_words(texts: Iterable[str], min_words: int) -> list[str]:
    """The essay haystack as RULER keeps it: the texts that read as prose (:func:`is_prose`; RULER
    reads essays), joined, whitespace collapsed, split at spaces; read until ``min_words`` words (or
    the texts run out)."""
    words: list[str] = []
    for text in texts:
        if not is_prose(text):
            continue
        words.extend(re.sub(r"\s+", " ", text).strip().split(" "))
        if len(words) >= min_words:
            break
    return [w for w in words if w]


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def sentences(text: str) -> list[str]:
    """``text`` (whitespace-collapsed) cut into sentences: after ``.``, ``!`` or ``?`` (and any
    closing quote or bracket) before a capital or a digit. Our stand-in for NLTK's punkt, which
    RULER uses and which needs a download."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start : m.start()].strip() + text[m.start() : m.end()].strip())
        start = m.end()
    if start < len(text):
        out.append(text[start:].strip())
    return [s for s in out if s]


# ---------------------------------------------------------------------------------------------
# the generators: each returns (context text, query, answers) for a haystack size n
# ---------------------------------------------------------------------------------------------


def _random(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return key_word(rng)
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle kind {kind!r}")


def _niah(spec: RulerTask, n: int, rng: random.Random, essay: list[str] | None):
    keys, values, needles = [], [], []
    for _ in range(spec.num_k):
        keys.append(_random(rng, spec.type_k))
        values.append([_random(rng, spec.type_v) for _ in range(spec.num_v)])
        needles.extend(NEEDLE.format(type_v=spec.type_v, key=keys[-1], value=v) for v in values[-1])
    rng.shuffle(needles)
    if spec.haystack == "essay":
        words = (essay * (n // len(essay) + 1))[:n]
        sents = sentences(" ".join(words))
        cuts = [0] + sorted(int(len(sents) * d / 100) for d in rng.sample(DEPTHS, len(needles))) + [len(sents)]
        parts = []
        for i in range(1, len(cuts)):
            parts.append(" ".join(sents[cuts[i - 1] : cuts[i]]))
            if i - 1 < len(needles):
                parts.append(needles[i - 1])
        context = " ".join(parts)
    else:
        if spec.haystack == "noise":
            lines = [NOISE] * n
        else:  # "needle": every line a needle with another random key and value
            lines = [
                NEEDLE.format(type_v=spec.type_v, key=_random(rng, spec.type_k), value=_random(rng, spec.type_v))
                for _ in range(n)
            ]
        for index, needle in zip(sorted(rng.sample(range(n), len(needles)), reverse=True), needles):
            lines.insert(index, needle)
        context = "\n".join(lines)
    asked = rng.sample(range(spec.num_k), spec.num_q)
    queries = [keys[i] for i in asked]
    answers = [a for i in asked for a in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    answered = [NEEDLE.format(type_v=spec.type_v, key=keys[i], value=v) for i in asked for v in values[i]]
    return context, query, answers, answered


def niah_template(spec: RulerTask) -> tuple[str, str, str]:
    """(template, answer prefix, the values' kind as the template says it) of a needle task, in
    the singular when one value is asked (RULER's replacements)."""
    template, prefix, _ = TEMPLATES["niah"]
    type_v = spec.type_v
    if spec.num_q * spec.num_v == 1:

        def one(t: str) -> str:
            return t.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")

        template, prefix, type_v = one(template), one(prefix), type_v[:-1]
    return template, prefix, type_v


def _vt_chain(rng: random.Random, hops: int, letters: int, value: str) -> tuple[list[str], list[str]]:
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    return names, [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]


def _vt(spec: RulerTask, n: int, rng: random.Random, letters: int = 5, value: str | None = None):
    value = value or str(rng.randint(10000, 99998))  # RULER: np.random.randint(10000, 99999)
    names, chain = _vt_chain(rng, spec.num_hops, letters, value)
    lines = [NOISE] * n
    for i, j in zip(sorted(rng.sample(range(n), len(chain))), range(len(chain))):
        lines.insert(i + j, chain[j])
    return "\n".join(lines).replace(". \n", ".\n"), value, names


def _cwe_list(rng: random.Random, num_words: int, common: int, uncommon: int, num_cw: int) -> tuple[str, list[str]]:
    pool = cwe_words()
    if num_words <= len(pool):
        chosen = rng.sample(pool, num_words)
    else:  # beyond the word lists: made-up words (RULER: an English word list)
        chosen = list(pool) + _made_up_words(rng, num_words - len(pool), set(pool))
        rng.shuffle(chosen)
    items = chosen[:num_cw] * common + chosen[num_cw:] * uncommon
    rng.shuffle(items)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items)), chosen[:num_cw]


def _fwe(spec: RulerTask, n: int, vocab: list[str]):
    counts = [int(n * k**-spec.alpha / _zeta(spec.alpha)) for k in range(1, len(vocab) + 1)]
    return [w for w, c in zip(vocab, counts) for _ in range(c)]


def _zeta(s: float) -> float:
    if s == 2.0:
        return math.pi**2 / 6
    return sum(k**-s for k in range(1, 200_000)) + 200_000 ** (1 - s) / (s - 1)  # the tail's integral


# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------


def encoder(tok) -> Callable[[str], list[int]]:
    return lambda text: tok(text, add_special_tokens=False)["input_ids"] if text else []


def chat_parts(tok) -> tuple[str, str]:
    """(what comes before a user's text, what comes after it) in the tokenizer's chat template: one
    user turn and the assistant's opening, as RULER's model templates wrap a task. Raises ValueError
    for a tokenizer without a chat template."""
    if not getattr(tok, "chat_template", None):
        raise ValueError("this tokenizer has no chat template")
    marker = "\x00RULER\x00"
    full = tok.apply_chat_template([{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True)
    before, _, after = full.partition(marker)
    return before, after


@dataclass
class _Parts:
    """A prompt as text pieces: ``head`` + ``context`` + ``tail`` (``tail`` holds the query, the
    chat template's end and the answer prefix)."""

    head: str
    context: str
    tail: str
    answers: list[str]
    needles: list[str] = field(default_factory=list)  # the context's answered statements

    @property
    def text(self) -> str:
        return self.head + self.context + self.tail


class Generator:
    """Prompts of one task at one length for one tokenizer: the haystack size found once by binary
    search (RULER's), then each sample drawn with it (smaller by RULER's increment while a draw is too
    long)."""

    def __init__(
        self,
        task: str,
        tok,
        length: int,
        *,
        chat: bool = False,
        essay: list[str] | None = None,
        qa: QaSet | None = None,
        probe_seed: str = "probe",
    ):
        if task not in ALL_TASKS:
            raise ValueError(f"unknown RULER task {task!r}; choose among {', '.join(ALL_TASKS)}")
        self.spec, self.tok, self.length, self.essay, self.qa = ALL_TASKS[task], tok, length, essay, qa
        if self.spec.needs_essay and not essay:
            raise ValueError(f"{task} reads an essay haystack: give its text (essay_words)")
        if self.spec.kind == "qa" and not qa:
            raise ValueError(f"{task} needs {self.spec.dataset} questions (read_qa)")
        self.enc = encoder(tok)
        self.chat = chat_parts(tok) if chat else ("", "")
        self.budget = length - self.spec.tokens_to_generate
        # fwe's size search steps by this many words (RULER's linear search)
        self.increment = max(self.budget // 32, 1)
        # the least haystack: noise and needle lines to put every statement between
        self.floor = {"niah": self.spec.num_k * self.spec.num_v, "vt": self.spec.num_hops + 1}.get(self.spec.kind, 1)
        self._vt_example = self._vt_icl() if self.spec.kind == "vt" else None
        self.size = self._search(probe_seed)

    # -- one draw -------------------------------------------------------------------------------

    def parts(self, n: int, rng: random.Random, index: int = 0) -> _Parts:
        spec = self.spec
        before, after = self.chat
        if spec.kind == "niah":
            context, query, answers, needles = _niah(spec, n, rng, self.essay)
            template, prefix, type_v = niah_template(spec)
            return self._split(
                before,
                template.format(type_needle_v=type_v, context="\x00", query=query),
                context,
                after + prefix.format(type_needle_v=type_v, query=query),
                answers,
                needles,
            )
        if spec.kind == "vt":
            context, value, names = _vt(spec, n, rng)
            template, prefix, _ = TEMPLATES["vt"]
            example = self._randomized_vt_example(rng)
            needles = [ln for ln in context.split("\n") if ln.startswith("VAR ")]
            return self._split(
                before + example + "\n",
                template.format(context="\x00", query=value),
                context,
                after + prefix.format(num_v=spec.num_hops + 1, query=value),
                names,
                needles,
            )
        if spec.kind == "cwe":
            template, prefix, _ = TEMPLATES["cwe"]
            if self.length < 4096:
                (ex_n, ex_c, ex_u), (common, uncommon) = (20, 3, 1), (6, 1)
            else:
                (ex_n, ex_c, ex_u), (common, uncommon) = (40, 10, 3), (spec.freq_cw, spec.freq_ucw)
            ex_list, ex_answer = _cwe_list(rng, ex_n, ex_c, ex_u, spec.num_cw)
            context, answers = _cwe_list(rng, n, common, uncommon, spec.num_cw)
            # RULER's few-shot example: the whole wrapped prompt with its answer, then a newline
            example = (
                before
                + template.format(context=ex_list)
                + after
                + prefix
                + " "
                + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_answer))
                + "\n"
            )
            return self._split(example + before, template.format(context="\x00"), context, after + prefix, answers)
        if spec.kind == "fwe":
            template, prefix, _ = TEMPLATES["fwe"]
            vocab_size = self.budget // 50
            vocab: list[str] = []
            while len(set(vocab)) < vocab_size:
                vocab.append("".join(rng.choices(string.ascii_lowercase, k=6)))
            vocab = sorted(set(vocab))
            rng.shuffle(vocab)
            vocab[0] = "..."  # the top-ranked word is noise
            words = _fwe(spec, n, vocab)
            rng.shuffle(words)
            return self._split(before, template.format(context="\x00"), " ".join(words), after + prefix, vocab[1:4])
        # qa
        template, prefix, _ = TEMPLATES["qa"]
        q = self.qa.questions[index % len(self.qa.questions)]
        context = _qa_context(q, n, self.qa.docs, rng)
        return self._split(
            before, template.format(context="\x00", query=q["query"]), context, after + prefix, list(q["outputs"])
        )

    @staticmethod
    def _split(before: str, filled: str, context: str, end: str, answers, needles=()) -> _Parts:
        head, _, rest = filled.partition("\x00")
        return _Parts(before + head, context, rest + end, list(answers), list(needles))

    def encode(self, p: _Parts) -> tuple[list[int], list[int], list[int]]:
        """The token ids of a prompt's head, context and tail, each tokenized on its own."""
        return self.enc(p.head), self.enc(p.context), self.enc(p.tail)

    def tokens(self, p: _Parts) -> int:
        return sum(map(len, self.encode(p)))

    # -- the size search ------------------------------------------------------------------------

    def _search(self, seed: str) -> int:
        """The largest haystack size (essay words, noise or needle lines, cwe words, fwe words, qa
        documents) whose prompt fits ``length`` with the answer, by RULER's search."""
        if self.spec.kind == "fwe":
            return self._fwe_size(seed)
        lo = self.floor  # RULER starts at its increment (and loops forever when even that is too long)
        if self.tokens(self.parts(lo, random.Random(f"{seed}/lo"))) > self.budget:
            raise PromptTooShort(self.spec.name, self.length, self._minimum(seed))
        hi = lo * 2
        while self.tokens(self.parts(hi, random.Random(f"{seed}/{hi}"))) <= self.budget:
            lo, hi = hi, hi * 2
            if self.spec.kind == "qa" and lo >= len(self.qa.docs):
                return len(self.qa.docs)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            fits = self.tokens(self.parts(mid, random.Random(f"{seed}/{mid}"))) <= self.budget
            lo, hi = (mid, hi) if fits else (lo, mid)
        return lo

    def _fwe_size(self, seed: str) -> int:
        """RULER's linear search for fwe: from budget // 6 words up by budget // 32 while the text is
        shorter than the budget, then one step back."""
        step = self.increment
        n = self.budget // 6
        rng = random.Random(seed)
        while self.tokens(self.parts(n, rng)) < self.budget:
            n += step
        return n - step

    def _minimum(self, seed: str) -> int:
        p = self.parts(self.floor, random.Random(f"{seed}/min"))
        return self.tokens(p) + self.spec.tokens_to_generate

    # -- vt's worked example --------------------------------------------------------------------

    def _vt_icl(self) -> str:
        """RULER's vt example: the task (no chat template) over as much noise as fits 500 tokens, a
        chain of 3-letter names from 12345, answered."""
        template, prefix, _ = TEMPLATES["vt"]

        def text(n: int) -> tuple[str, list[str]]:
            context, value, names = _vt(self.spec, n, random.Random(f"icl/{n}"), letters=3, value="12345")
            return template.format(context=context, query=value) + prefix.format(num_v=len(names), query=value), names

        n = 5
        while len(self.enc(text(n + 1)[0])) <= 500:
            n += 1
        body, names = text(n)
        return body + " " + " ".join(names) + "\n"

    def _randomized_vt_example(self, rng: random.Random) -> str:
        """RULER's randomize_icl: new names for the example's variables and a new value."""
        example = self._vt_example
        for item in example.strip().split()[-(self.spec.num_hops + 1) :]:
            example = example.replace(item, "".join(rng.choices(string.ascii_uppercase, k=len(item))))
        return example.replace("12345", str(rng.randint(10000, 99998)))

    # -- samples -------------------------------------------------------------------------------

    def sample(self, rng: random.Random, index: int = 0) -> RulerSample:
        """One prompt (``index``: qa's question number). A draw too long at the searched size is drawn
        again, with the same keys and values, at the largest size that fits (RULER steps down by a
        fixed increment, up to 500 essay words, which leaves some prompts well short of ``length``)."""
        seed = rng.random()
        n = self.size
        p = self.parts(n, random.Random(seed), index)
        h, c, t = self.encode(p)
        if len(h) + len(c) + len(t) > self.budget and n > self.floor:
            lo, hi = self.floor, n  # lo fits (or is the least there is), hi does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (
                    (mid, hi) if self.tokens(self.parts(mid, random.Random(seed), index)) <= self.budget else (lo, mid)
                )
            p = self.parts(lo, random.Random(seed), index)
            h, c, t = self.encode(p)
        if len(h) + len(c) + len(t) > self.budget:
            raise PromptTooShort(self.spec.name, self.length, len(h) + len(c) + len(t) + self.spec.tokens_to_generate)
        return RulerSample(
            self.spec.name,
            h + c + t,
            p.answers,
            len(t),
            self.spec.tokens_to_generate,
            span=(len(h), len(h) + len(c)),
            positions=self._positions(p, len(h)),
            text=p.text,
        )

    def _positions(self, p: _Parts, offset: int) -> list[int]:
        """Token offsets in the prompt of the context's answered statements."""
        if not p.needles:
            return []
        try:
            enc = self.tok(p.context, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, TypeError):
            return []
        starts = [s for s, _ in enc["offset_mapping"]]
        out = []
        for needle in p.needles:  # in the order asked, not the context's: each found on its own
            char = p.context.find(needle)
            if char >= 0:
                out.append(offset + max(0, bisect.bisect_right(starts, char) - 1))
        return out


# ---------------------------------------------------------------------------------------------
# qa: SQuAD and HotpotQA files as RULER reads them
# ---------------------------------------------------------------------------------------------


@dataclass
class QaSet:
    """A qa task's questions (each ``{"query", "outputs", "context": [doc index], "more_context":
    [doc index]}``, in file order) and documents (sorted, deduplicated), as RULER reads them."""

    questions: list[dict]
    docs: list[str]


def read_qa(path: str | Path, dataset: str) -> QaSet:
    """The questions of a SQuAD (v2.0 json: ``data[].paragraphs[].qas[]``) or HotpotQA (a json list
    of ``question``, ``answer``, ``context``: [[title, sentences]]) file, as RULER reads them.
    Raises ValueError for a file of another shape."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read a {dataset} json file ({e})") from None
    try:
        if dataset == "squad":
            docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
            index = {c: i for i, c in enumerate(docs)}
            qas = []
            for d in data["data"]:
                more = [index[p["context"]] for p in d["paragraphs"]]
                for p in d["paragraphs"]:
                    for qa in p["qas"]:
                        if not qa.get("is_impossible", False):
                            qas.append(
                                {
                                    "query": qa["question"],
                                    "outputs": [a["text"] for a in qa["answers"]],
                                    "context": [index[p["context"]]],
                                    "more_context": [i for i in more if i != index[p["context"]]],
                                }
                            )
        elif dataset == "hotpotqa":
            docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
            index = {c: i for i, c in enumerate(docs)}
            qas = [
                {
                    "query": d["question"],
                    "outputs": [d["answer"]],
                    "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]],
                    "more_context": [],
                }
                for d in data
            ]
        else:
            raise ValueError(f"unknown qa dataset {dataset!r}; choose squad or hotpotqa")
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a {dataset} file (missing {e})") from None
    if not qas:
        raise ValueError(f"{path}: no answerable {dataset} question")
    return QaSet(qas, docs)


def _qa_context(q: dict, n: int, docs: list[str], rng: random.Random) -> str:
    """RULER's qa context: the question's documents, then its article's others, then random ones,
    ``n`` in all, shuffled, each "Document i:\\n..."."""
    gold, more = q["context"], q.get("more_context", [])
    if n < len(docs):
        if n - len(gold) > len(more):
            others = [i for i in range(len(docs)) if i not in set(gold + more)]
            chosen = gold + more + rng.sample(others, max(0, n - len(gold) - len(more)))
        else:
            chosen = gold + rng.sample(more, max(0, n - len(gold)))
        chosen_docs = [docs[i] for i in chosen]
    else:
        chosen_docs = (docs * (n // len(docs) + 1))[:n]
    rng.shuffle(chosen_docs)
    return "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(chosen_docs))
