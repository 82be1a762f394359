"""RULER task generators (memlong.data.ruler): every prompt fits its length and fills it, holds
its answer at the intended depth, and is the same for the same seed."""

import random
import re
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from memlong.data import ruler
from memlong.tokenizer import train_and_save

LIB = Path(sysconfig.get_paths()["stdlib"])
NIAH = [t for t, spec in ruler.TASKS.items() if spec.kind == "niah"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [(LIB / n).read_text()[:8000] for n in ("argparse.py", "typing.py", "textwrap.py", "shutil.py")]
    tok = train_and_save(texts, 512, tmp_path_factory.mktemp("ruler_tok"))
    tok.model_max_length = 10**9
    return tok


@pytest.fixture(scope="module")
def haystacks(tok):
    docs = [(LIB / n).read_text()[:20000] for n in ("inspect.py", "tempfile.py", "pathlib.py")]
    return {"noise": ruler.noise_haystack(tok), "text": ruler.text_haystack(tok, docs, min_tokens=10**9)}


def cases():
    for task in NIAH:
        for hay in ruler.HAYSTACKS:
            yield task, hay
    yield "vt", "noise"
    yield "cwe", None
    yield "fwe", None


@pytest.mark.parametrize("task, hay", list(cases()))
@pytest.mark.parametrize("length", [1500, 6000])
def test_prompt_fits_the_length_and_holds_the_answer(tok, haystacks, task, hay, length):
    s = ruler.make_sample(task, tok, length, random.Random(f"t/{length}"), haystacks.get(hay))
    spec = ruler.TASKS[task]
    budget = length - spec.max_new_tokens
    assert s.max_new_tokens == spec.max_new_tokens and s.haystack == hay
    if spec.kind in ("niah", "vt"):
        assert len(s.ids) == budget  # filled exactly
    else:
        assert budget - 0.03 * length <= len(s.ids) <= budget  # the largest list that fits
    start, end = s.span
    context = tok.decode(s.ids[start:end])
    question = tok.decode(s.ids[-s.question_tokens:])
    assert question.lstrip().startswith("Question:") and "\nAnswer:" in question and end == len(s.ids) - s.question_tokens
    for answer in s.answers:
        assert answer in context
    if spec.kind == "niah":
        keys = re.findall(r"special magic numbers for ([\w-]+) is: (\d+)\.", context)
        assert len(keys) == spec.keys * spec.values
        asked = {k for k, v in keys if v in s.answers}
        assert len(asked) == spec.queries and all(k in question for k in asked)
        assert sorted(v for k, v in keys if k in asked) == sorted(s.answers)
    elif spec.kind == "vt":  # the chain resolves to exactly the expected variables
        value = {}
        for name, rhs in re.findall(r"VAR (\w+) = (VAR \w+|\d+)", context):
            value[name] = value[rhs[4:]] if rhs.startswith("VAR ") else rhs
        target = re.search(r"assigned the value (\d+) in the text", question).group(1)
        assert sorted(n for n, v in value.items() if v == target) == sorted(s.answers) and len(s.answers) == 5
    elif spec.kind == "cwe":
        counts = Counter(re.findall(r"\d+\. (\w+)", context))
        assert sorted(s.answers) == sorted(w for w, _ in counts.most_common(10))
        assert min(counts[w] for w in s.answers) > max(c for w, c in counts.items() if w not in s.answers)
    else:  # fwe
        counts = Counter(w for w in context.split() if w != "...")
        top = counts.most_common(4)
        assert [w for w, _ in top[:3]] == s.answers and top[2][1] > top[3][1]


@pytest.mark.parametrize("task, hay", [(t, h) for t, h in cases() if h is not None])
def test_statements_sit_at_their_depths(tok, haystacks, task, hay):
    for seed in range(3):
        s = ruler.make_sample(task, tok, 4000, random.Random(seed), haystacks[hay])
        start, end = s.span
        assert len(s.positions) == len(s.depths) == len(s.statements) == len({*map(tuple, s.statements)})
        assert s.depths == sorted(s.depths) and set(s.depths) <= set(ruler.DEPTHS)
        # the largest haystack unit and all the statements bound how far a planted one can be from its depth
        slack = max(map(len, haystacks[hay].units)) + sum(map(len, s.statements))
        for pos, stmt, depth in zip(s.positions, s.statements, s.depths):
            assert s.ids[pos : pos + len(stmt)] == stmt
            assert abs((pos - start) - depth * (end - start)) <= slack
        if task == "vt":  # the chain in order: each assignment after the one it reads
            assert s.positions == sorted(s.positions)


@pytest.mark.parametrize("task, hay", list(cases()))
def test_deterministic_for_a_seed(tok, haystacks, task, hay):
    a, b, c = (ruler.make_sample(task, tok, 2500, random.Random(seed), haystacks.get(hay)) for seed in ("x", "x", "y"))
    assert (a.ids, a.answers, a.depths) == (b.ids, b.answers, b.depths)
    assert a.ids != c.ids


@pytest.mark.parametrize("task", list(ruler.TASKS))
def test_minimum_length(tok, haystacks, task):
    least = ruler.minimum_length(task, tok, haystacks["noise"])
    for seed in range(4):  # the minimum holds every draw ...
        s = ruler.make_sample(task, tok, least, random.Random(seed), haystacks["noise"])
        assert len(s.ids) + s.max_new_tokens <= least
    short = int(least * 0.8)
    with pytest.raises(ruler.PromptTooShort) as e:  # ... and below it the task does not fit
        ruler.make_sample(task, tok, short, random.Random(0), haystacks["noise"])
    assert short < e.value.minimum <= least


def test_haystacks_and_score(tok):
    text = "First sentence. Second one! A third?\nA line\n\nAnd the end"
    pieces = ruler.sentences(text, min_chars=1)
    assert "".join(pieces) == text and all(p[-1] in ".!?\n" for p in pieces[:-1]) and len(pieces) == 7
    assert ruler.sentences(text, min_chars=20) == ["First sentence. Second one!", " A third?\nA line\n\nAnd the end"]
    hay = ruler.text_haystack(tok, ["Alpha beta. Gamma delta.", "Epsilon."], min_tokens=1)
    assert hay.tokens == sum(map(len, hay.units))  # stopped after the first document
    assert tok.decode([t for u in hay.units for t in u]).startswith("Alpha beta.")
    taken = hay.take(3 * hay.tokens + 1, start=1)  # wraps around, the last unit cut
    assert sum(map(len, taken)) == 3 * hay.tokens + 1
    with pytest.raises(ValueError, match="empty"):
        ruler.text_haystack(tok, [], min_tokens=10)
    assert ruler.score("The numbers are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert ruler.score("ABCDE abcde", ["abcde"]) == 1.0
    with pytest.raises(ValueError, match="haystack"):
        ruler.make_sample("niah_single", tok, 1000, random.Random(0))
