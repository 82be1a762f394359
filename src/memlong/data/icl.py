"""Labelled examples and prompts for in-context learning (the paper's section 4.3, Table 2).

Three ways to get labelled examples (:class:`Example`: text and label index into the task's
label words):

* :func:`hub_examples`: the paper's five tasks through ``datasets`` (:data:`ICL_TASKS`: SST-2,
  MR, Subj, SST-5, MPQA), each with its hub name, the dataset's own class names (checked
  against the data's ``label_text`` column or ``ClassLabel`` names when present) and the label
  words the model is scored on;
* :func:`jsonl_examples`: local ``{"text": ..., "label": ...}`` lines; a label is a word, or an
  index into label words given by the caller;
* :func:`corpus_source_examples`: a labelled set made from a local corpus (``memlong data``):
  short passages labelled by the source they come from (``python`` / ``manual`` / ``java``),
  balanced over sources and deterministic for a seed.

:func:`demo_text` / :func:`query_text` render an example with the task's template
(``"Review: {text}\\nSentiment: {label}\\n\\n"``); the model's prediction is the label word
with the highest log-probability after the query.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # index into the task's label words


@dataclass(frozen=True)
class IclTask:
    """A classification task: where it lives, how it is prompted, and what the model says.

    ``label_names[i]`` is what the dataset calls class ``i`` (checked against the data);
    ``label_words[i]`` is the word the model is scored on for it.
    """

    name: str
    label_words: tuple[str, ...]
    input_prefix: str = "Input:"
    answer_prefix: str = "Label:"
    hub_path: str | None = None
    hub_config: str | None = None
    label_names: tuple[str, ...] | None = None
    text_field: str = "text"
    label_field: str = "label"


# The paper's five tasks (Table 2), with the templates and label words of LongMem / kNN prompting.
ICL_TASKS: dict[str, IclTask] = {
    "sst2": IclTask(
        "sst2", ("negative", "positive"), "Review:", "Sentiment:", "SetFit/sst2", label_names=("negative", "positive")
    ),
    "mr": IclTask(
        "mr", ("negative", "positive"), "Review:", "Sentiment:", "rotten_tomatoes", label_names=("neg", "pos")
    ),
    "subj": IclTask(
        "subj", ("objective", "subjective"), "Input:", "Type:", "SetFit/subj", label_names=("objective", "subjective")
    ),
    "sst5": IclTask(
        "sst5",
        ("terrible", "bad", "okay", "good", "great"),
        "Review:",
        "Sentiment:",
        "SetFit/sst5",
        label_names=("very negative", "negative", "neutral", "positive", "very positive"),
    ),
    "mpqa": IclTask(
        "mpqa", ("negative", "positive"), "Review:", "Sentiment:", "SetFit/mpqa", label_names=("negative", "positive")
    ),
}

# corpus-source task: label word of each corpus source (`memlong data`); other sources keep their name.
SOURCE_WORDS = {"stdlib": "python", "man": "manual", "jdk": "java"}
CORPUS_SOURCE_PREFIX = "corpus-source:"


def find_task(name: str) -> IclTask | None:
    """A task of :data:`ICL_TASKS` by short name (``sst2``) or hub name (``SetFit/sst2``)."""
    key = name.lower()
    for task in ICL_TASKS.values():
        if key in (task.name, (task.hub_path or "").lower()):
            return task
    return None


def demo_text(task: IclTask, ex: Example) -> str:
    return f"{task.input_prefix} {_one_line(ex.text)}\n{task.answer_prefix} {task.label_words[ex.label]}\n\n"


def query_text(task: IclTask, ex: Example) -> str:
    """The test input, ending where the label word is to follow (scored with a leading space)."""
    return f"{task.input_prefix} {_one_line(ex.text)}\n{task.answer_prefix}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def hub_examples(task: IclTask, split: str, dataset=None) -> list[Example]:
    """The ``split`` of ``task`` from the hub (``datasets.load_dataset(task.hub_path)``), or from
    ``dataset`` (any iterable of rows with the task's text/label fields, e.g. a ``datasets.Dataset``).

    Raises ``ValueError`` when the data's own class names disagree with ``task.label_names``.
    """
    if dataset is None:
        import datasets  # heavy; only users of the hub tasks pay for it

        args = (task.hub_path, task.hub_config) if task.hub_config else (task.hub_path,)
        try:
            dataset = datasets.load_dataset(*args, split=split)
        except Exception as e:  # offline, unknown split, ...: say which dataset and what else works
            raise ValueError(
                f"could not load {task.hub_path} ({split}) with datasets: {type(e).__name__}: "
                f"{str(e)[:300]}; without a hub, give a local .jsonl file of text/label lines"
            ) from e
    names = [n.lower() for n in task.label_names or task.label_words]
    feature = (getattr(dataset, "features", None) or {}).get(task.label_field)
    if getattr(feature, "names", None) and [n.lower() for n in feature.names] != names:
        raise ValueError(f"{task.hub_path}: class names {feature.names} differ from the expected {list(names)}")
    out = []
    for i, row in enumerate(dataset):
        label = int(row[task.label_field])
        if not 0 <= label < len(names):
            raise ValueError(f"{task.hub_path} row {i}: label {label} outside 0..{len(names) - 1}")
        given = row.get("label_text")
        if isinstance(given, str) and given.lower() != names[label]:
            raise ValueError(
                f"{task.hub_path} row {i}: label {label} is {given!r} in the data, expected {names[label]!r}"
            )
        text = row[task.text_field]
        if isinstance(text, str) and text.strip():
            out.append(Example(text, label))
    return out


def jsonl_examples(
    path: str | os.PathLike, label_words: Sequence[str] | None = None
) -> tuple[list[Example], tuple[str, ...]]:
    """Examples of a JSONL file of ``{"text": ..., "label": ...}`` lines, and the label words.

    A label is a word (then ``label_words`` defaults to the sorted words of the file, and must
    contain every one of them when given) or an integer index into ``label_words`` (required).
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "label" not in row:
                raise ValueError(f"{path}:{lineno}: expected an object with a string 'text' and a 'label'")
            rows.append((lineno, row["text"], row["label"]))
    if not rows:
        raise ValueError(f"{path}: no examples")
    numeric = [isinstance(lab, int) and not isinstance(lab, bool) for _, _, lab in rows]
    if any(numeric) and not all(numeric):
        raise ValueError(f"{path}: labels mix integers and words; use one kind")
    if all(numeric):
        if not label_words:
            raise ValueError(f"{path}: integer labels need the label words (--labels word0,word1,...)")
        bad = [(n, lab) for n, _, lab in rows if not 0 <= lab < len(label_words)]
        if bad:
            raise ValueError(f"{path}:{bad[0][0]}: label {bad[0][1]} has no word in --labels {list(label_words)}")
        return [Example(t, lab) for _, t, lab in rows], tuple(label_words)
    words = tuple(label_words) if label_words else tuple(sorted({str(lab) for _, _, lab in rows}))
    missing = sorted({str(lab) for _, _, lab in rows} - set(words))
    if missing:
        raise ValueError(f"{path}: labels {missing} are missing from the label words {list(words)} (--labels)")
    return [Example(t, words.index(str(lab))) for _, t, lab in rows], words


def corpus_source_examples(
    corpus: str | os.PathLike, split: str, per_source: int, seed: int = 0, words: int = 24
) -> tuple[list[Example], tuple[str, ...]]:
    """Short passages from a ``memlong data`` corpus split, labelled by their source.

    ``per_source`` passages of ``words`` whitespace-separated words from each source (a random
    document, a random line start within it), interleaved over sources so any prefix is
    balanced; deterministic for ``seed``. Label words: :data:`SOURCE_WORDS` (``python`` /
    ``manual`` / ``java``), in the sorted order of the sources.
    """
    from memlong.data.corpus import iter_split

    if per_source < 1 or words < 1:
        raise ValueError(f"per_source and words must be >= 1, got {per_source}, {words}")
    by_source: dict[str, list[str]] = {}
    for doc in iter_split(corpus, split):
        by_source.setdefault(doc.source, []).append(doc.text)
    sources = sorted(by_source)
    if len(sources) < 2:
        raise ValueError(f"{corpus} ({split}) holds documents of {len(sources)} source(s); a task needs two or more")
    rng = random.Random(f"{seed}/{split}")
    per: list[list[Example]] = []
    for label, source in enumerate(sources):
        docs, got, tries = by_source[source], [], 0
        while len(got) < per_source and tries < 50 * per_source:
            tries += 1
            lines = rng.choice(docs).split("\n")
            start = rng.randrange(len(lines))
            passage = " ".join(" ".join(lines[start:]).split()[:words])
            if len(passage.split()) == words:
                got.append(Example(passage, label))
        if len(got) < per_source:
            raise ValueError(f"{corpus} ({split}): only {len(got)} passages of {words} words from source {source!r}")
        per.append(got)
    interleaved = [ex for group in zip(*per) for ex in group]
    return interleaved, tuple(SOURCE_WORDS.get(s, s) for s in sources)


def load_icl_data(
    spec: str,
    split: str = "test",
    demo_split: str | None = None,
    label_words: Sequence[str] | None = None,
    max_examples: int = 100,
    pool: int = 64,
    seed: int = 0,
) -> tuple[IclTask, list[Example], list[Example]]:
    """``(task, demonstration pool, test examples)`` for ``--data`` ``spec``:

    * a name of :data:`ICL_TASKS` or its hub name: test examples from ``split``,
      demonstrations from ``demo_split`` (default ``train``);
    * ``corpus-source:DIR``: passages of a ``memlong data`` corpus labelled by source; test
      examples from ``split``, demonstrations from ``demo_split`` (default ``validation``);
      ``pool`` passages per source;
    * a folder with ``{split}.jsonl`` and ``{demo_split}.jsonl`` (default ``train``), or one
      ``.jsonl`` file: its examples shuffled with ``seed``, the first ``max_examples`` the test
      set, the rest the demonstrations.

    At most ``max_examples`` test examples (the first ones; hub and file sets are shuffled
    with ``seed`` first). Raises ``ValueError`` naming what is wrong.
    """
    rng = random.Random(seed)
    if spec.startswith(CORPUS_SOURCE_PREFIX):
        corpus = spec[len(CORPUS_SOURCE_PREFIX) :]
        if not Path(corpus).is_dir():
            raise ValueError(f"--data {spec}: {corpus!r} is not a corpus folder (from `memlong data`)")
        demos, words = corpus_source_examples(corpus, demo_split or "validation", pool, seed)
        n_sources = len(words)
        tests, _ = corpus_source_examples(corpus, split, -(-max_examples // n_sources), seed)
        task = IclTask("corpus-source", words, "Passage:", "Source:")
        return task, demos, tests[:max_examples]
    task = find_task(spec)
    if task is not None:
        if label_words:
            task = dataclasses.replace(task, label_words=tuple(label_words))
            if len(task.label_words) != len(task.label_names):
                raise ValueError(
                    f"--labels gives {len(label_words)} words; {task.name} has {len(task.label_names)} classes"
                )
        tests, demos = hub_examples(task, split), hub_examples(task, demo_split or "train")
        rng.shuffle(tests)
        return task, demos, tests[:max_examples]
    p = Path(spec)
    if p.is_dir():
        files = [p / f"{split}.jsonl", p / f"{demo_split or 'train'}.jsonl"]
        for f in files:
            if not f.is_file():
                raise ValueError(
                    f"--data {spec}: a folder needs {files[0].name} and {files[1].name}; {f.name} is missing"
                )
        tests, words = jsonl_examples(files[0], label_words)
        demos, _ = jsonl_examples(files[1], words)
        rng.shuffle(tests)
        tests = tests[:max_examples]
    elif p.is_file():
        examples, words = jsonl_examples(p, label_words)
        rng.shuffle(examples)
        tests, demos = examples[:max_examples], examples[max_examples:]
    else:
        raise ValueError(
            f"--data {spec!r} is not a known task ({', '.join(ICL_TASKS)}, or their hub names), "
            f"a .jsonl file, a folder, or {CORPUS_SOURCE_PREFIX}CORPUS_DIR"
        )
    return IclTask(p.stem, words), demos, tests
