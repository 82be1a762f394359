"""RULER-style synthetic tasks (Hsieh et al. 2024, arXiv 2404.06654), generated locally.

Each task turns (tokenizer, rng, haystack) into one prompt of token ids and the strings its
answer must contain; a prompt and its answer fit ``length`` tokens (RULER's rule: prompt tokens
+ the task's ``max_new_tokens`` <= length), filled as close to it as the task allows. The
question comes last, in the plain ``Question: ...`` / ``Answer: ...`` form of ``memlong ask``,
the answer's first words already written (RULER's answer prefix):

* ``niah_single``: one needle, "One of the special magic numbers for {key} is: {value}.",
  the key an adjective-noun word, the value 7 digits (RULER's niah_single);
* ``niah_multikey``: the needle among 3 distractor needles with other keys;
* ``niah_multivalue``: 4 needles with the same key: every value is asked for;
* ``niah_multiquery``: 4 needles with distinct keys, all 4 asked for at once;
* ``vt``: variable tracking: a chain "VAR ABCDE = 12345", "VAR FGHIJ = VAR ABCDE", ... (4 hops)
  scattered through noise: name every variable equal to the value (one worked example first);
* ``cwe``: common words: a numbered list where 10 words recur often (30 times; 6 below 4,096
  tokens) and the rest rarely (3 times; 1): name the 10 (one worked example first);
* ``fwe``: frequent words: coded words drawn from a Zipf law (alpha 2, the commonest one
  being "..." as noise): name the 3 most frequent.

The needle tasks read a :class:`Haystack`: repeated noise sentences (:func:`noise_haystack`,
"The grass is green. The sky is blue. ...") or real text (:func:`text_haystack`, sentences of
held-out documents); needles go between its sentences, at depths drawn from 40 evenly spaced
ones (as RULER). ``vt`` always uses the noise; ``cwe`` and ``fwe`` are all list and no haystack.
The prompt is built from separately tokenized pieces (as the passkey prompt), so token counts
and the planted statements' positions are exact. Scoring (:func:`score`): the fraction of the
expected strings found in the output, case-insensitive (RULER's string_match_all).
"""

from __future__ import annotations

import bisect
import math
import random
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

NOISE = ("The grass is green.", " The sky is blue.", " The sun is yellow.", " Here we go.", " There and back again.\n")
DEPTHS = tuple(round(i / 39, 4) for i in range(40))  # where needles may go: 40 evenly spaced fractions
MIN_FILL = 64  # fewest haystack tokens a needle task accepts: below that there is nothing to search
HAYSTACKS = ("noise", "text")

# keys of the needles: adjective-noun words (RULER draws them from a word list)
_ADJECTIVES = ("ancient", "bitter", "brave", "calm", "clever", "crooked", "curious", "dusty", "eager", "elegant",
               "fancy", "fierce", "fragile", "gentle", "gloomy", "golden", "grumpy", "hollow", "humble", "icy",
               "jolly", "lazy", "lively", "lonely", "lucky", "mighty", "misty", "noisy", "odd", "polite", "proud",
               "quiet", "rapid", "rusty", "shiny", "silent", "sleepy", "sticky", "stormy", "tender", "tidy",
               "vivid", "wary", "wicked", "witty", "wooden", "young", "zealous")
_NOUNS = ("anchor", "badger", "banjo", "beacon", "blanket", "candle", "canyon", "castle", "cherry", "compass",
          "dolphin", "dragon", "falcon", "feather", "garden", "glacier", "hammer", "harbor", "helmet", "island",
          "jacket", "kettle", "ladder", "lantern", "meadow", "mirror", "monkey", "needle", "orchard", "otter",
          "parrot", "pepper", "pillow", "pirate", "pocket", "rabbit", "river", "saddle", "spider", "teapot",
          "thistle", "tiger", "tunnel", "turtle", "violin", "walrus", "whistle", "window")
# pronounceable words for cwe, as many as a long list needs (RULER: an English word list)
_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class RulerTask:
    name: str
    kind: str  # "niah", "vt", "cwe" or "fwe"
    max_new_tokens: int  # the answer's budget, part of ``length``
    keys: int = 1  # niah: needles with distinct keys (distractors included)
    values: int = 1  # niah: needles (values) per key
    queries: int = 1  # niah: keys asked about
    about: str = ""


TASKS: dict[str, RulerTask] = {t.name: t for t in (
    RulerTask("niah_single", "niah", 24, about="one needle"),
    RulerTask("niah_multikey", "niah", 24, keys=4, about="one needle among 3 with other keys"),
    RulerTask("niah_multivalue", "niah", 64, values=4, about="4 values for one key, all asked for"),
    RulerTask("niah_multiquery", "niah", 64, keys=4, queries=4, about="4 keys asked for at once"),
    RulerTask("vt", "vt", 32, about="variable tracking: a chain of 4 hops in noise"),
    RulerTask("cwe", "cwe", 120, about="the 10 most common words of a list"),
    RulerTask("fwe", "fwe", 50, about="the 3 most frequent coded words"),
)}


class PromptTooShort(ValueError):
    """``length`` leaves no room for the task's fixed parts; ``minimum`` is the least that does."""

    def __init__(self, task: str, length: int, minimum: int):
        super().__init__(f"{task}: a {length}-token prompt is too short; it needs at least {minimum} tokens")
        self.task, self.length, self.minimum = task, length, minimum


@dataclass
class RulerSample:
    task: str
    haystack: str | None  # "noise", "text", or None (cwe, fwe)
    ids: list[int]  # the prompt, the question last
    answers: list[str]  # strings the answer must contain
    question_tokens: int  # the prompt's last tokens that are the question (generate(requery=N))
    max_new_tokens: int
    span: tuple[int, int] = (0, 0)  # where the context (haystack and statements, or the list) is in ``ids``
    depths: list[float] = field(default_factory=list)  # intended depth of each planted statement
    positions: list[int] = field(default_factory=list)  # token offset of each planted statement in ``ids``
    statements: list[list[int]] = field(default_factory=list)  # their tokens


class Haystack:
    """Filler text as sentence-sized units of token ids, read cyclically from any start unit."""

    def __init__(self, kind: str, units: list[list[int]]):
        if not units or not any(units):
            raise ValueError(f"the {kind} haystack is empty")
        self.kind, self.units = kind, [u for u in units if u]
        self.tokens = sum(len(u) for u in self.units)

    def take(self, n: int, start: int) -> list[list[int]]:
        """Units from ``start`` on (wrapping around) holding exactly ``n`` tokens (the last one cut)."""
        out, i = [], start % len(self.units)
        while n > 0:
            u = self.units[i][:n]
            out.append(u)
            n -= len(u)
            i = (i + 1) % len(self.units)
        return out


def encoder(tok) -> Callable[[str], list[int]]:
    return lambda text: tok(text, add_special_tokens=False)["input_ids"] if text else []


def noise_haystack(tok) -> Haystack:
    return Haystack("noise", [encoder(tok)(s) for s in NOISE])


def sentences(text: str, min_chars: int = 40) -> list[str]:
    """``text`` cut after sentence ends and newlines, short pieces merged into the next; joined
    back they give ``text``."""
    out, cur = [], ""
    for piece in re.split(r"(?<=[.!?\n])", text):
        cur += piece
        if len(cur) >= min_chars:
            out.append(cur)
            cur = ""
    if cur:
        out.append(cur)
    return out


def text_haystack(tok, texts: Iterable[str], min_tokens: int) -> Haystack:
    """Sentences of ``texts`` (documents one blank line apart), read until ``min_tokens`` tokens
    (or the texts run out: check ``.tokens``)."""
    units, n = [], 0
    for text in texts:
        pieces = sentences(text.strip() + "\n\n")
        ids = tok(pieces, add_special_tokens=False)["input_ids"]
        units.extend(ids)
        n += sum(len(u) for u in ids)
        if n >= min_tokens:
            break
    return Haystack("text", units)


def score(output: str, answers: list[str]) -> float:
    """The fraction of ``answers`` found in ``output`` (case-insensitive), RULER's string_match_all."""
    low = output.lower()
    return sum(a.lower() in low for a in answers) / len(answers)


# ---------------------------------------------------------------------------------------------
# needle tasks and variable tracking: fixed parts, then haystack around planted statements
# ---------------------------------------------------------------------------------------------


def _number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _niah_parts(spec: RulerTask, rng: random.Random):
    """(prefix, statements, question, answers) of a needle task."""
    pairs = [f"{a}-{n}" for a in _ADJECTIVES for n in _NOUNS]
    keys = rng.sample(pairs, spec.keys)
    values = [[_number(rng) for _ in range(spec.values)] for _ in keys]
    needles = [f"One of the special magic numbers for {k} is: {v}." for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    asked = keys[: spec.queries]
    answers = [v for vs in values[: spec.queries] for v in vs]
    what = " and ".join([", ".join(asked[:-1]), asked[-1]]) if len(asked) > 1 else asked[0]
    if len(answers) == 1:
        prefix = ("A special magic number is hidden within the following text. Make sure to memorize it. "
                  "I will quiz you about the number afterwards.\n")
        question = (f"\nQuestion: What is the special magic number for {what} mentioned in the provided text?\n"
                    f"Answer: The special magic number for {what} mentioned in the provided text is")
    else:
        prefix = ("Some special magic numbers are hidden within the following text. Make sure to memorize them. "
                  "I will quiz you about the numbers afterwards.\n")
        question = (f"\nQuestion: What are all the special magic numbers for {what} mentioned in the provided "
                    f"text?\nAnswer: The special magic numbers for {what} mentioned in the provided text are")
    return prefix, [f"\n{n}\n" for n in needles], question, answers


def _variables(rng: random.Random, n: int, letters: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    return names


def _vt_question(value: str, n: int) -> str:
    return (f"\nQuestion: Find all variables that are assigned the value {value} in the text above.\n"
            f"Answer: According to the chain(s) of variable assignment in the text above, {n} variables are "
            f"assigned the value {value}, they are:")


_VT_INSTRUCTION = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"


def _vt_parts(rng: random.Random, hops: int = 4):
    """(prefix with one worked example, statements, question, answers) of variable tracking."""
    ex_vars, ex_value = _variables(rng, 3, 3), _number(rng, 5)
    ex_chain = [f"VAR {ex_vars[0]} = {ex_value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(ex_vars, ex_vars[1:])]
    noise = "".join(NOISE)
    example = (_VT_INSTRUCTION + noise + "\n" + f"\n{noise}".join(ex_chain) + "\n" + noise
               + _vt_question(ex_value, len(ex_vars)) + " " + " ".join(ex_vars) + "\n\n")
    names, value = _variables(rng, hops + 1, 5), _number(rng, 5)
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(names, names[1:])]
    return example + _VT_INSTRUCTION, [f"\n{c}\n" for c in chain], _vt_question(value, len(names)), names


def _plant(units: list[list[int]], statements: list[list[int]], depths: list[float]) -> tuple[list[int], list[int]]:
    """``units`` joined with ``statements[i]`` at the unit boundary nearest to ``depths[i]`` of
    their tokens (``depths`` ascending); returns (ids, each statement's offset in them)."""
    total = sum(len(u) for u in units)
    bounds, at = [0], 0
    for u in units:
        at += len(u)
        bounds.append(at)
    where = []
    for d in depths:  # the boundary whose token offset is nearest to the target
        t = d * total
        b = bisect.bisect_left(bounds, t)  # bounds[b - 1] < t <= bounds[b]
        if b > 0 and t - bounds[b - 1] < bounds[b] - t:
            b -= 1
        where.append(b)
    ids: list[int] = []
    positions: list[int] = []
    k = 0
    for b in range(len(units) + 1):
        while k < len(statements) and where[k] == b:
            positions.append(len(ids))
            ids.extend(statements[k])
            k += 1
        if b < len(units):
            ids.extend(units[b])
    return ids, positions


def _planted(spec: RulerTask, tok, length: int, rng: random.Random, haystack: Haystack) -> RulerSample:
    enc = encoder(tok)
    prefix, statements, question, answers = _niah_parts(spec, rng) if spec.kind == "niah" else _vt_parts(rng)
    depths = sorted(rng.sample(DEPTHS, len(statements)))  # ascending: vt's chain stays in order
    p_ids, q_ids = enc(prefix), enc(question)
    s_ids = [enc(s) for s in statements]
    fixed = len(p_ids) + len(q_ids) + sum(map(len, s_ids))
    fill = length - spec.max_new_tokens - fixed
    if fill < MIN_FILL:
        raise PromptTooShort(spec.name, length, fixed + MIN_FILL + spec.max_new_tokens)
    units = haystack.take(fill, start=rng.randrange(len(haystack.units)))
    body, positions = _plant(units, s_ids, depths)
    return RulerSample(spec.name, haystack.kind, p_ids + body + q_ids, answers, len(q_ids), spec.max_new_tokens,
                       span=(len(p_ids), len(p_ids) + len(body)), depths=depths,
                       positions=[len(p_ids) + p for p in positions], statements=s_ids)


# ---------------------------------------------------------------------------------------------
# aggregation: a list whose size is the largest that fits
# ---------------------------------------------------------------------------------------------


def _words(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct pronounceable words of 2-3 syllables."""
    out: set[str] = set()
    words = []
    while len(words) < n:
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 3, 3))))
        if w not in out:
            out.add(w)
            words.append(w)
    return words


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


_CWE_INSTRUCTION = ("Below is a numbered list of words. In these words, some appear more often than others. "
                    "Memorize the ones that appear most often.\n")
_CWE_QUESTION = ("\nQuestion: What are the 10 most common words in the above list?\n"
                 "Answer: The top 10 words that appear most often in the list are:")


def _cwe_list(rng: random.Random, words: list[str], common: int, rare: int) -> tuple[str, list[str]]:
    """The numbered list of ``words``, the first 10 ``common`` times each, the rest ``rare`` times."""
    items = words[:10] * common + words[10:] * rare
    rng.shuffle(items)
    return _numbered(items), words[:10]


def _cwe(length: int, seed: str) -> Callable[[int], tuple[str, str, list[str]]]:
    """n (rare words) -> (prefix with one worked example, list, answers), deterministic for ``seed``."""
    common, rare = (30, 3) if length >= 4096 else (6, 1)
    ex_common, ex_rare, ex_words = (10, 3, 30) if length >= 4096 else (3, 1, 10)

    def build(n: int):
        rng = random.Random(seed)
        words = _words(rng, 10 + ex_words + 10 + n)  # one draw: the example's words are not the list's
        ex_list, ex_answer = _cwe_list(rng, words[: 10 + ex_words], ex_common, ex_rare)
        example = _CWE_INSTRUCTION + ex_list + _CWE_QUESTION + " " + _numbered(ex_answer) + "\n\n"
        lst, answers = _cwe_list(rng, words[10 + ex_words :], common, rare)
        return example + _CWE_INSTRUCTION, lst, answers

    return build


_FWE_INSTRUCTION = ("Read the following coded text and track the frequency of each coded word. "
                    "Find the three most frequently appeared coded words. ")
_FWE_QUESTION = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
                 "frequently appeared words in the above coded text?\n"
                 "Answer: According to the coded text above, the three most frequently appeared words are:")
_ZETA2 = math.pi**2 / 6


def _fwe(length: int, seed: str) -> Callable[[int], tuple[str, str, list[str]]]:
    """n (words in the text) -> (prefix, text, answers): word k of a coded vocabulary appears
    int(n k^-2 / zeta(2)) times; word 1 is "..." (noise); the answer is words 2-4."""
    vocab_size = max(length // 50, 10)

    def build(n: int):
        rng = random.Random(seed)
        vocab: list[str] = []
        seen: set[str] = set()
        while len(vocab) < vocab_size:
            w = "".join(rng.choices(string.ascii_lowercase, k=6))
            if w not in seen:
                seen.add(w)
                vocab.append(w)
        vocab[0] = "..."
        items = [w for k, w in enumerate(vocab, 1) for _ in range(int(n * k**-2 / _ZETA2))]
        rng.shuffle(items)
        return _FWE_INSTRUCTION, " ".join(items), vocab[1:4]

    return build


# fewest rare words (cwe) / words (fwe): below, the counts do not single out the answer
_MIN_N = {"cwe": 10, "fwe": 120}


def _listed(spec: RulerTask, tok, length: int, rng: random.Random) -> RulerSample:
    enc = encoder(tok)
    seed = f"{rng.random()}"
    build = (_cwe if spec.kind == "cwe" else _fwe)(length, seed)
    budget = length - spec.max_new_tokens
    q_ids = enc(_CWE_QUESTION if spec.kind == "cwe" else _FWE_QUESTION)

    def size(n: int) -> tuple[int, list[int], list[int], list[str]]:
        prefix, body, answers = build(n)
        p_ids, b_ids = enc(prefix), enc(body)
        return len(p_ids) + len(b_ids) + len(q_ids), p_ids, b_ids, answers

    lo = _MIN_N[spec.kind]
    if size(lo)[0] > budget:
        raise PromptTooShort(spec.name, length, size(lo)[0] + spec.max_new_tokens)
    hi = lo * 2
    while size(hi)[0] <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # largest n that fits (token counts grow with n, up to tokenizer noise)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid)[0] <= budget else (lo, mid)
    _, p_ids, b_ids, answers = size(lo)
    return RulerSample(spec.name, None, p_ids + b_ids + q_ids, answers, len(q_ids), spec.max_new_tokens,
                       span=(len(p_ids), len(p_ids) + len(b_ids)))


# ---------------------------------------------------------------------------------------------


def make_sample(task: str, tok, length: int, rng: random.Random, haystack: Haystack | None = None) -> RulerSample:
    """One prompt of ``task`` in at most ``length - max_new_tokens`` tokens (as close as the task
    allows: exactly, for the needle tasks and vt). ``haystack``: for the niah tasks (vt makes its
    own noise). Raises :class:`PromptTooShort` when ``length`` cannot hold the task."""
    spec = TASKS[task]
    if spec.kind == "niah":
        if haystack is None:
            raise ValueError(f"{task} needs a haystack (noise_haystack or text_haystack)")
        return _planted(spec, tok, length, rng, haystack)
    if spec.kind == "vt":
        return _planted(spec, tok, length, rng, noise_haystack(tok))
    return _listed(spec, tok, length, rng)


def minimum_length(task: str, tok, haystack: Haystack | None = None, probes: int = 8) -> int:
    """The least ``length`` that holds ``task``: the most over a few draws of keys and words, plus a
    margin for other draws (3% and 8 tokens)."""
    least = 0
    haystack = haystack or noise_haystack(tok)  # the fixed parts do not depend on the haystack's text
    for i in range(probes):
        try:
            make_sample(task, tok, 1, random.Random(f"probe{i}"), haystack)
        except PromptTooShort as e:
            least = max(least, e.minimum)
    return least + least // 32 + 8
