"""RULER's tasks (memlong.data.ruler) pinned to RULER's own definitions: the parameters of its
scripts/synthetic.yaml, the templates, answer prefixes and generation lengths of its
scripts/data/synthetic/constants.py and the metrics of scripts/eval/synthetic/constants.py,
written out here, checked on generated samples."""

import json
import math
import random
import re
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from memlong.data import ruler
from memlong.tokenizer import train_and_save

from conftest import stdlib_prose

LIB = Path(sysconfig.get_paths()["stdlib"])

# RULER's scripts/synthetic.yaml, as it is
SYNTHETIC_YAML = {
    "niah_single_1": dict(
        task="niah",
        type_haystack="noise",
        type_needle_k="words",
        type_needle_v="numbers",
        num_needle_k=1,
        num_needle_v=1,
        num_needle_q=1,
    ),
    "niah_single_2": dict(
        task="niah",
        type_haystack="essay",
        type_needle_k="words",
        type_needle_v="numbers",
        num_needle_k=1,
        num_needle_v=1,
        num_needle_q=1,
    ),
    "niah_single_3": dict(
        task="niah",
        type_haystack="essay",
        type_needle_k="words",
        type_needle_v="uuids",
        num_needle_k=1,
        num_needle_v=1,
        num_needle_q=1,
    ),
    "niah_multikey_1": dict(
        task="niah",
        type_haystack="essay",
        type_needle_k="words",
        type_needle_v="numbers",
        num_needle_k=4,
        num_needle_v=1,
        num_needle_q=1,
    ),
    "niah_multikey_2": dict(
        task="niah",
        type_haystack="needle",
        type_needle_k="words",
        type_needle_v="numbers",
        num_needle_k=1,
        num_needle_v=1,
        num_needle_q=1,
    ),
    "niah_multikey_3": dict(
        task="niah",
        type_haystack="needle",
        type_needle_k="uuids",
        type_needle_v="uuids",
        num_needle_k=1,
        num_needle_v=1,
        num_needle_q=1,
    ),
    "niah_multivalue": dict(
        task="niah",
        type_haystack="essay",
        type_needle_k="words",
        type_needle_v="numbers",
        num_needle_k=1,
        num_needle_v=4,
        num_needle_q=1,
    ),
    "niah_multiquery": dict(
        task="niah",
        type_haystack="essay",
        type_needle_k="words",
        type_needle_v="numbers",
        num_needle_k=1,
        num_needle_v=1,
        num_needle_q=4,
    ),
    "vt": dict(task="variable_tracking", type_haystack="noise", num_chains=1, num_hops=4),
    "cwe": dict(task="common_words_extraction", freq_cw=30, freq_ucw=3, num_cw=10),
    "fwe": dict(task="freq_words_extraction", alpha=2.0),
    "qa_1": dict(task="qa", dataset="squad"),
    "qa_2": dict(task="qa", dataset="hotpotqa"),
}
# RULER's scripts/data/synthetic/constants.py: tokens to generate, and the answer prefixes
TOKENS_TO_GENERATE = {
    "niah": 128,
    "variable_tracking": 30,
    "common_words_extraction": 120,
    "freq_words_extraction": 50,
    "qa": 32,
}
KIND = {
    "niah": "niah",
    "variable_tracking": "vt",
    "common_words_extraction": "cwe",
    "freq_words_extraction": "fwe",
    "qa": "qa",
}
NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
    "{type_needle_v} for {query} mentioned in the provided text?"
)
NIAH_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
    "assigned the value {query}, they are: "
)
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for (\S+) is: (\S+)\.")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [(LIB / n).read_text()[:8000] for n in ("argparse.py", "typing.py", "textwrap.py", "shutil.py")]
    tok = train_and_save(texts, 512, tmp_path_factory.mktemp("ruler_tok"))
    tok.model_max_length = 10**9
    return tok


@pytest.fixture(scope="module")
def essay():
    return ruler.essay_words(stdlib_prose(), 10**9)


def sample(tok, essay, task, length, seed=0, chat=False, qa=None):
    gen = ruler.Generator(task, tok, length, chat=chat, essay=essay, qa=qa)
    return gen, gen.sample(random.Random(f"t/{task}/{length}/{seed}"), seed)


def test_the_tasks_are_rulers():
    assert tuple(ruler.TASKS) == tuple(SYNTHETIC_YAML) == ruler.RULER_TASKS
    for name, cfg in SYNTHETIC_YAML.items():
        spec = ruler.TASKS[name]
        assert spec.kind == KIND[cfg["task"]] and spec.tokens_to_generate == TOKENS_TO_GENERATE[cfg["task"]]
        if spec.kind == "niah":
            assert (spec.haystack, spec.type_k, spec.type_v, spec.num_v, spec.num_q) == (
                cfg["type_haystack"],
                cfg["type_needle_k"],
                cfg["type_needle_v"],
                cfg["num_needle_v"],
                cfg["num_needle_q"],
            )
            assert spec.num_k == max(cfg["num_needle_k"], cfg["num_needle_q"])  # niah.py: num_k = max(num_k, num_q)
        elif spec.kind == "vt":
            assert (spec.haystack, spec.num_chains, spec.num_hops) == (cfg["type_haystack"], 1, 4)
        elif spec.kind == "cwe":
            assert (spec.freq_cw, spec.freq_ucw, spec.num_cw) == (30, 3, 10)
        elif spec.kind == "fwe":
            assert spec.alpha == 2.0
        else:
            assert spec.dataset == cfg["dataset"] and spec.metric == "part"
    assert not set(ruler.EXTRA) & set(ruler.TASKS) and all(t.endswith("_noise") for t in ruler.EXTRA)
    assert ruler.DEPTHS[:4] == (0, 3, 5, 8) and ruler.DEPTHS[-1] == 100 and len(ruler.DEPTHS) == 40


NIAH = [t for t in ruler.ALL_TASKS if ruler.ALL_TASKS[t].kind == "niah"]


@pytest.mark.parametrize("task", NIAH)
def test_needle_tasks(tok, essay, task):
    spec = ruler.ALL_TASKS[task]
    gen, s = sample(tok, essay, task, 3000)
    head, context, tail = tok.decode(s.ids[: s.span[0]]), s.text, tok.decode(s.ids[-s.question_tokens :])
    one = spec.num_q * spec.num_v == 1
    type_v = spec.type_v[:-1] if one else spec.type_v
    needles = NEEDLE.findall(context)
    keys_of = {}
    for kind, key, value in needles:
        assert kind == spec.type_v  # the needle keeps the plural, as niah.py's needle.format does
        keys_of.setdefault(key, []).append(value)
    # the answered keys carry num_v values each; the answers are their values
    asked = [k for k in keys_of if all(v in s.answers for v in keys_of[k])]
    assert len(asked) == spec.num_q and sorted(s.answers) == sorted(v for k in asked for v in keys_of[k])
    assert all(len(keys_of[k]) == spec.num_v for k in asked)
    if spec.haystack == "needle":  # a haystack made of needles: every line but the planted one
        lines = s.text[len(head) : len(s.text) - len(tail)].strip("\n").split("\n")
        assert all(NEEDLE.fullmatch(line) for line in lines) and len(keys_of) == len(lines)
    else:
        assert len(keys_of) == spec.num_k and len(needles) == spec.num_k * spec.num_v
    for key in keys_of:
        assert UUID.match(key) if spec.type_k == "uuids" else re.fullmatch(r"[\w'.]+(?: [\w'.]+)*-[\w'.\- ]+", key)
    for value in s.answers:
        assert UUID.match(value) if spec.type_v == "uuids" else re.fullmatch(r"\d{7}", value)
    # the template, in the singular when one value is asked (niah.py's replacements), and the answer prefix
    query = re.search(r"for (.+) mentioned in the provided text\?", s.text).group(1)  # in the order asked
    order = re.split(r", and |, ", query)
    assert sorted(order) == sorted(asked) and query == (
        ", ".join(order[:-1]) + ", and " + order[-1] if len(order) > 1 else order[0]
    )
    intro, question = NIAH_TEMPLATE.split("{context}")
    prefix = NIAH_PREFIX
    if one:
        intro, question, prefix = (
            t.replace("Some", "A").replace("are all", "is").replace("are", "is") for t in (intro, question, prefix)
        )
    assert s.text.startswith(intro.format(type_needle_v=type_v))
    assert s.text.endswith(
        question.format(type_needle_v=type_v, query=query) + prefix.format(type_needle_v=type_v, query=query)
    )
    # placement: noise and needle haystacks one sentence a line; the essay whitespace-collapsed, needles inline
    body = s.text[
        len(intro.format(type_needle_v=type_v)) : -len(
            question.format(type_needle_v=type_v, query=query) + prefix.format(type_needle_v=type_v, query=query)
        )
    ]
    if spec.haystack == "noise":
        assert set(NEEDLE.sub("", body).split("\n")) == {NOISE, ""}
    elif spec.haystack == "essay":
        assert "\n" not in body  # (two needles at one depth leave two spaces between them, as in niah.py)
        text = NEEDLE.sub("", body).split()
        assert text == essay[: len(text)]  # the essay from its start, needles between sentences
    # the needles' token positions point at them, one for each answered statement
    assert len(s.positions) == spec.num_q * spec.num_v
    for p in s.positions:
        assert tok.decode(s.ids[p : p + 12]).lstrip().startswith("One")


def test_variable_tracking(tok, essay):
    gen, s = sample(tok, essay, "vt", 3000)
    value = re.search(r"assigned the value (\d{5}) in the text above\.", s.text[-400:]).group(1)
    assert s.text.endswith(VT_PREFIX.format(num_v=5, query=value))
    assert "Question: Find all variables that are assigned the value " + value + " in the text above." in s.text
    # RULER's worked example first: a chain of 3-letter names over noise, answered, then the task
    example, _, task = s.text.partition(
        "\nMemorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    )
    assert example.startswith("Memorize and track the chain(s)") and "they are:  " in example
    ex_names = example.strip().split()[-5:]
    assert all(re.fullmatch(r"[A-Z]{3}", n) for n in ex_names)
    # the chain: VAR A = value, then VAR B = VAR A (with RULER's trailing space), in order, among noise lines
    lines = task.split("\nQuestion:")[0].split("\n")
    chain = [ln for ln in lines if ln.startswith("VAR ")]
    assert set(lines) - set(chain) == {NOISE}
    names = [re.match(r"VAR ([A-Z]{5}) =", ln).group(1) for ln in chain]
    assert chain[0] == f"VAR {names[0]} = {value}" and len(chain) == 5
    assert chain[1:] == [f"VAR {b} = VAR {a} " for a, b in zip(names, names[1:])]
    assert s.answers == names


@pytest.mark.parametrize("length", [3000, 6000])
def test_common_words(tok, essay, length):
    gen, s = sample(tok, essay, "cwe", length)
    parts = s.text.split("\nQuestion: What are the 10 most common words in the above list?" + CWE_PREFIX)
    assert len(parts) == 3 and parts[2] == ""  # one worked example, then the task, each with its answer prefix
    common, rare = (30, 3) if length >= 4096 else (6, 1)
    ex_common, ex_rare, ex_words = (10, 3, 40) if length >= 4096 else (3, 1, 20)

    def counts(listing):
        items = re.findall(r"(\d+)\. (\S+)", listing)
        assert [int(i) for i, _ in items] == list(range(1, len(items) + 1))
        return Counter(w for _, w in items)

    ex = counts(parts[0].split("Memorize the ones that appear most often.\n")[1])
    assert len(ex) == ex_words and sorted(ex.values()) == [ex_rare] * (ex_words - 10) + [ex_common] * 10
    answer = re.findall(r"\d+\. (\S+)", parts[1].split("\n")[0])
    assert sorted(answer) == sorted(w for w, c in ex.items() if c == ex_common)
    c = counts(parts[1].split("Memorize the ones that appear most often.\n")[1])
    assert sorted(w for w, n in c.items() if n == common) == sorted(s.answers) and len(s.answers) == 10
    assert set(c.values()) == {common, rare}
    assert set(c) <= set(ruler.cwe_words())  # RULER's wonderwords lists


def test_frequent_words(tok, essay):
    gen, s = sample(tok, essay, "fwe", 3000)
    assert s.text.startswith(
        "Read the following coded text and track the frequency of each coded word. Find the "
        "three most frequently appeared coded words. "
    )
    assert s.text.endswith("?" + FWE_PREFIX)
    words = s.text.split("coded words. ")[1].split("\nQuestion:")[0].split(" ")
    counts = Counter(words)
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "..." and ranked[1:4] == s.answers
    n = gen.size
    zeta = math.pi**2 / 6
    assert counts["..."] == int(n / zeta) and counts[s.answers[0]] == int(n * 2**-2 / zeta)
    assert len(counts) <= (3000 - 50) // 50  # the coded vocabulary: budget // 50 words


def test_question_answering(tok, tmp_path):
    squad = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": f"Paragraph {i} says the river {i} is called Name{i}.",
                        "qas": [
                            {
                                "question": f"What is river {i} called?",
                                "answers": [{"text": f"Name{i}"}],
                                "is_impossible": False,
                            }
                        ],
                    }
                    for i in range(40)
                ]
            }
        ]
    }
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    qa = ruler.read_qa(tmp_path / "squad.json", "squad")
    gen, s = sample(tok, None, "qa_1", 800, seed=3, qa=qa)
    assert s.answers == ["Name3"] and "Name3" in s.text and s.text.endswith("Question: What is river 3 called? Answer:")
    assert s.text.startswith(
        "Answer the question based on the given documents. Only give me the answer and do not "
        "output any other words.\n\nThe following are given documents.\n\nDocument 1:\n"
    )
    assert len(s.ids) + 32 <= 800
    assert ruler.score("it is name3, I think", s.answers, "part") == 1.0
    with pytest.raises(ValueError, match="not a squad file"):
        (tmp_path / "bad.json").write_text(json.dumps({"data": [{"x": 1}]}))
        ruler.read_qa(tmp_path / "bad.json", "squad")


@pytest.mark.parametrize("task", [t for t in ruler.ALL_TASKS if not t.startswith("qa")])
@pytest.mark.parametrize("length", [2500, 7000])
def test_prompt_fits_its_length(tok, essay, task, length):
    gen, s = sample(tok, essay, task, length)
    budget = length - ruler.ALL_TASKS[task].tokens_to_generate
    assert len(s.ids) <= budget and s.max_new_tokens == ruler.ALL_TASKS[task].tokens_to_generate
    assert len(s.ids) >= 0.6 * budget  # the haystack as large as fits (less RULER's step when a draw overflows)
    assert s.span[1] == len(s.ids) - s.question_tokens and 0 < s.span[0] < s.span[1]
    assert tok.decode(s.ids) == tok.decode(tok(s.text, add_special_tokens=False)["input_ids"])


def test_chat_template_wraps_the_task_and_the_answer_prefix_follows(tok, essay):
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    try:
        _, s = sample(tok, essay, "niah_single_1", 2500, chat=True)
    finally:
        tok.chat_template = None
    assert s.text.startswith("<|im_start|>user\nA special magic number is hidden")
    assert re.search(
        r"mentioned in the provided text\?<\|im_end\|>\n<\|im_start\|>assistant\n The special magic "
        r"number for \S+ mentioned in the provided text is$",
        s.text,
    )
    with pytest.raises(ValueError, match="no chat template"):
        ruler.Generator("niah_single_1", tok, 2500, chat=True)


def test_deterministic_for_a_seed(tok, essay):
    for task in ("niah_multikey_1", "vt", "cwe", "fwe"):
        assert sample(tok, essay, task, 2500)[1].ids == sample(tok, essay, task, 2500)[1].ids
        assert sample(tok, essay, task, 2500)[1].ids != sample(tok, essay, task, 2500, seed=1)[1].ids


def test_too_short_and_missing_inputs(tok, essay):
    with pytest.raises(ruler.PromptTooShort) as e:
        ruler.Generator("vt", tok, 300)
    assert e.value.minimum > 300
    with pytest.raises(ValueError, match="essay"):
        ruler.Generator("niah_single_2", tok, 3000)
    with pytest.raises(ValueError, match="squad"):
        ruler.Generator("qa_1", tok, 3000)


def test_rulers_metrics():
    # string_match_all: the fraction found; string_match_part: any; case-insensitive, after postprocessing
    assert ruler.score(" 123 and 456.", ["123", "456", "789", "000"]) == 0.5
    assert ruler.score("ABC\x01def", ["abc", "DEF"]) == 1.0
    assert ruler.score("nothing", ["x", "y"], "part") == 0.0 and ruler.score("y!", ["x", "y"], "part") == 1.0
    assert ruler.postprocess("  a\tb\x00c \n") == "a\nb\nc"


def test_sentences_cut_after_ends_before_capitals():
    assert ruler.sentences("It rained. Then it stopped! Was it 3 p.m. or so? Yes. e.g. this") == [
        "It rained.",
        "Then it stopped!",
        "Was it 3 p.m. or so?",
        "Yes. e.g. this",
    ]


def test_the_essay_is_made_of_prose_and_skips_source_code():
    prose, code = stdlib_prose(400), (LIB / "inspect.py").read_text()[:20000]
    assert all(ruler.is_prose(t) for t in prose) and not ruler.is_prose(code) and not ruler.is_prose("")
    assert not ruler.is_prose("build_time_vars = {'ABIFLAGS': '', 'AR': 'ar', 'ARFLAGS': 'rcs'}")
    words = ruler.essay_words([code, *prose, code], 10**9)
    assert words == " ".join(prose).split()  # the code before and after is left out
    assert ruler.essay_words([code], 10**9) == []


@pytest.mark.parametrize("task", ["niah_multikey_1", "niah_multivalue"])
def test_essay_needles_land_at_their_depths_across_the_haystack(tok, essay, task):
    """RULER draws each needle's depth from 0-100% of the essay's sentences: over a few samples the
    needles spread over the context, never bunched at its start (as they were when the haystack was
    source code, one long "sentence")."""
    depths = []
    for seed in range(6):
        _, s = sample(tok, essay, task, 3000, seed=seed)
        for m in NEEDLE.finditer(s.text):
            depths.append(len(tok(s.text[: m.start()])["input_ids"]) / len(s.ids))
    assert min(depths) < 0.3 and max(depths) > 0.7 and sum(0.3 <= d <= 0.7 for d in depths) >= 3
