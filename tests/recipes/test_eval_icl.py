"""`memlong eval icl`: demonstrations in memory, classification by scoring, on a tiny model."""

import json
import sysconfig
from pathlib import Path

import pytest
import torch

from memlong.cli import main
from memlong.data.icl import (
    ICL_TASKS,
    Example,
    corpus_source_examples,
    demo_text,
    find_task,
    hub_examples,
    jsonl_examples,
    query_text,
)
from memlong.evaluation import continuation_logprobs

from conftest import assert_markdown_beside, save_tiny_memlong_model

LIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny MemLong model (open gates, chunk 16, window 64) and a two-source corpus."""
    root = tmp_path_factory.mktemp("icl")
    sources = {"stdlib": ["argparse.py", "textwrap.py"], "man": ["typing.py", "shutil.py"]}
    texts = {s: [(LIB / n).read_text()[:6000] for n in names] for s, names in sources.items()}
    corpus = root / "corpus"
    corpus.mkdir()
    for split, part in (("validation", slice(0, 3000)), ("test", slice(3000, 6000))):
        with open(corpus / f"{split}.jsonl", "w") as f:
            for s, docs in texts.items():
                for i, t in enumerate(docs):
                    f.write(json.dumps({"id": f"{s}/{i}", "source": s, "text": t[part]}) + "\n")
    save_tiny_memlong_model([t for docs in texts.values() for t in docs], root / "model", max_position_embeddings=1024)
    return root


def icl(setup, *extra):
    return main(
        [
            "eval",
            "icl",
            "--model",
            str(setup / "model"),
            "--data",
            f"corpus-source:{setup / 'corpus'}",
            "--retriever",
            "hashing",
            "--max-examples",
            "2",
            *extra,
        ]
    )


def test_end_to_end_json_plot_and_skipped_in_context(setup, tmp_path, capsys):
    out = tmp_path / "icl.json"
    assert (
        icl(
            setup,
            "--shots-context",
            "1",
            "--shots-memory",
            "4",
            "--set",
            "local_window=48",
            "--trials",
            "2",
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "icl.png"),
        )
        == 0
    )
    report = json.loads(out.read_text())
    rows = {r["method"]: r for r in report["results"]}
    assert set(rows) == {"memlong", "memlong_no_memory", "in_context", "base_truncated", "rag"}
    for r in rows.values():
        assert {"method", "task", "shots_context", "shots_memory", "accuracy", "examples"} <= set(r)
        assert r["tokens_per_second"] > 0 and r["bytes_per_token"] > 0
        assert r["task"] == "corpus-source" and (r["shots_context"], r["shots_memory"], r["examples"]) == (1, 4, 2)
        assert 0 <= r["accuracy"] <= 1 and len(r["accuracy_per_trial"]) == 2
        assert sum(r["predicted"].values()) == 2 * 2 and set(r["predicted"]) <= {"manual", "python"}
    assert rows["memlong"]["memory_tokens_banked"] > 0.5
    assert rows["base_truncated"]["demonstration_tokens_in_window"] == 1  # all fit: it reads what in_context does
    assert rows["base_truncated"]["accuracy_per_trial"] == rows["in_context"]["accuracy_per_trial"]
    assert report["config"]["memlong"]["local_window"] == 48
    assert (tmp_path / "icl.png").stat().st_size > 1000
    assert assert_markdown_beside(out).endswith("\n\n![icl](icl.png)\n")  # linked from beside the JSON
    assert "memlong_no_memory" in capsys.readouterr().out  # the table

    # More demonstrations than the base model's 1024 positions: in_context is skipped, not made up.
    assert icl(setup, "--shots-context", "1", "--shots-memory", "9", "--trials", "1", "--json", str(out)) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["in_context"]["accuracy"] is None and "skipped" in rows["in_context"]["note"]
    assert rows["in_context"]["tokens_per_second"] is None and rows["rag"]["accuracy"] is not None  # rag fits
    assert "1024" in rows["in_context"]["note"] and rows["memlong"]["accuracy"] is not None
    assert rows["base_truncated"]["accuracy"] is not None  # the demonstrations' last tokens that fit
    assert 0 < rows["base_truncated"]["demonstration_tokens_in_window"] < 1


def test_memory_demonstrations_reach_the_bank_and_change_scores(memlong_model):
    model, _ = memlong_model  # chunk 8, window 32, gates open
    cfg = model.memlong_config
    prompt = torch.randint(0, 101, (60,)).tolist()  # 4 chunks leave the window; the bank holds 6
    memory = model.ingest(torch.tensor([prompt]))
    expected_chunks = (len(prompt) - 1) // cfg.chunk_size - cfg.window_chunks  # the recipe's "banked" rule
    assert len(memory.bank(0)) == expected_chunks > 0
    cands = [[5], [17], [42, 3]]
    with_mem = continuation_logprobs(model, prompt, cands, use_memory=True)
    without = continuation_logprobs(model, prompt, cands, use_memory=False)
    assert max(abs(a - b) for a, b in zip(with_mem, without)) > 1e-4


def test_requery_scores_the_input_with_what_it_retrieves(memlong_model):
    model, _ = memlong_model
    prompt = torch.randint(0, 101, (60,), generator=torch.Generator().manual_seed(3)).tolist()
    cands, n = [[5], [17], [42, 3]], 6
    got = continuation_logprobs(model, prompt, cands, use_memory=True, requery=n)
    for c, score in zip(cands, got):  # read what precedes the input, then the input retrieving with itself
        memory = model.ingest(torch.tensor([prompt[:-n]]))
        memory.focus_on(model.memlong_retriever, [prompt[-n:]])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt[-n:] + c]), cache=memory).logits[0].float(), -1)
        assert score == pytest.approx(sum(float(logp[n - 1 + t, tok]) for t, tok in enumerate(c)), abs=1e-4)
    for bad in (dict(use_memory=None, requery=n), dict(use_memory=True, requery=61)):
        with pytest.raises(ValueError, match="requery"):
            continuation_logprobs(model, prompt, cands, **bad)


def test_requery_with_question_reread_scores_after_the_hits_read_as_text(memlong_model):
    """``question_reread``: the input's hits are read as text before it, in scoring as in generate."""
    import dataclasses

    model, _ = memlong_model
    prompt = torch.randint(0, 101, (60,), generator=torch.Generator().manual_seed(3)).tolist()
    cands, n = [[5], [17], [42, 3]], 6
    plain = continuation_logprobs(model, prompt, cands, use_memory=True, requery=n)
    config = model.memlong_config
    model.memlong_config = dataclasses.replace(config, question_reread=True)  # new memories take it
    try:
        got = continuation_logprobs(model, prompt, cands, use_memory=True, requery=n)
        hits = model.ingest(torch.tensor([prompt[:-n]])).question_tokens(model.memlong_retriever, [prompt[-n:]])[0]
    finally:
        model.memlong_config = config
    assert hits and max(abs(a - b) for a, b in zip(got, plain)) > 1e-4
    for c, score in zip(cands, got):  # by hand: a plain model reads the hits as text, then as above
        memory = model.ingest(torch.tensor([prompt[:-n] + hits]))
        memory.focus_on(model.memlong_retriever, [prompt[-n:]])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt[-n:] + c]), cache=memory).logits[0].float(), -1)
        assert score == pytest.approx(sum(float(logp[n - 1 + t, tok]) for t, tok in enumerate(c)), abs=1e-4)


def test_a_shared_prefix_read_once_scores_as_the_whole_prompt(memlong_model):
    """eval icl reads a trial's demonstrations once and continues each test input from a copy:
    the scores equal reading each whole prompt afresh (with and without memory, requery or not,
    one-token or multi-token label words); a memory that read anything else is refused."""
    import copy

    from memlong.evaluation import continuation_rows

    model, _ = memlong_model
    g = torch.Generator().manual_seed(5)
    prefix = torch.randint(0, 101, (53,), generator=g).tolist()  # chunks leave the window into the bank
    inputs = [torch.randint(0, 101, (n,), generator=g).tolist() for n in (6, 11)]
    for cands in ([[5], [17]], [[5], [42, 3]]):
        rows = continuation_rows(cands)
        for use, requery in ((True, True), (True, False), (False, False)):
            shared = model.ingest(torch.tensor([prefix] * rows), model.new_memory(rows, use))
            for x in inputs:
                n = len(x) if requery else 0
                want = continuation_logprobs(model, prefix + x, cands, use_memory=use, requery=n)
                got = continuation_logprobs(
                    model, prefix + x, cands, use_memory=use, requery=n, memory=copy.deepcopy(shared), read=len(prefix)
                )
                assert got == pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="read the same first"):
        continuation_logprobs(
            model, prefix + inputs[0], [[5], [17]], use_memory=True, memory=copy.deepcopy(shared), read=len(prefix) - 1
        )


def test_a_stock_models_shared_prefix_cache_scores_as_the_whole_prompt(memlong_model):
    """The base model's methods read a trial's demonstrations once (:func:`prefix_cache`) and
    score each input from a copy of that cache: the same scores as the whole prompt, one-token or
    multi-token label words; a cache of another length is refused."""
    import copy

    from memlong.evaluation import continuation_rows, prefix_cache

    _, ref = memlong_model  # the stock model
    g = torch.Generator().manual_seed(7)
    prefix = torch.randint(0, 101, (41,), generator=g).tolist()
    inputs = [torch.randint(0, 101, (n,), generator=g).tolist() for n in (5, 9)]
    for cands in ([[5], [17]], [[5], [42, 3], [8]]):
        shared = prefix_cache(ref, prefix, continuation_rows(cands))
        for x in inputs:
            want = continuation_logprobs(ref, prefix + x, cands)
            got = continuation_logprobs(ref, prefix + x, cands, memory=copy.deepcopy(shared), read=len(prefix))
            assert got == pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="holds 41 tokens"):
        continuation_logprobs(ref, prefix + inputs[0], [[5]], memory=copy.deepcopy(shared), read=40)


def test_scores_are_continuation_log_probabilities(memlong_model):
    _, ref = memlong_model  # the stock model
    prompt = [3, 14, 15, 92, 65, 35]
    for cands in ([[7], [8], [9]], [[7, 1], [8], [9, 9, 2]]):
        scores = continuation_logprobs(ref, prompt, cands)
        for c, s in zip(cands, scores):
            with torch.no_grad():
                logp = torch.log_softmax(ref(torch.tensor([prompt + c])).logits[0].float(), -1)
            manual = sum(float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(c))
            assert s == pytest.approx(manual, abs=1e-4)
    # the prediction is the argmax: make one label word far more likely than the others
    with torch.no_grad():
        ref.lm_head.weight[8] += 5 * ref.model.norm.weight.sign()
    scores = continuation_logprobs(ref, prompt, [[7], [8], [9]])
    assert max(range(3), key=scores.__getitem__) == 1


def test_memory_that_never_leaves_the_window_is_an_error(setup):
    with pytest.raises(SystemExit, match="never leave the local window"):
        icl(setup, "--shots-context", "0", "--shots-memory", "1", "--set", "local_window=512")


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--data", "not-a-task"], "--data"),
        (["--shots-context", "-1"], "--shots-context"),
        (["--shots-memory", "-2"], "--shots-memory"),
        (["--methods", "memlong,base_full"], "--methods"),
    ],
)
def test_bad_options_name_the_option(setup, extra, option):
    argv = ["eval", "icl", "--model", str(setup / "model"), "--data", f"corpus-source:{setup / 'corpus'}", *extra]
    with pytest.raises(SystemExit, match=option):
        main(argv)


def test_local_jsonl_labels(tmp_path):
    words = tmp_path / "words.jsonl"
    words.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": lab}) + "\n" for i, lab in enumerate(["spam", "ham", "spam"]))
    )
    examples, labels = jsonl_examples(words)
    assert labels == ("ham", "spam") and [e.label for e in examples] == [1, 0, 1]
    with pytest.raises(ValueError, match="--labels"):
        jsonl_examples(words, ["spam"])  # "ham" has no word
    ints = tmp_path / "ints.jsonl"
    ints.write_text(json.dumps({"text": "a", "label": 1}) + "\n")
    with pytest.raises(ValueError, match="--labels"):
        jsonl_examples(ints)
    assert jsonl_examples(ints, ["no", "yes"]) == ([Example("a", 1)], ("no", "yes"))
    with pytest.raises(SystemExit, match="--labels"):
        main(["eval", "icl", "--model", "unused", "--data", str(ints)])


def test_hub_tasks_map_labels_to_words():
    import datasets

    assert find_task("SetFit/sst5") is ICL_TASKS["sst5"] and find_task("rotten_tomatoes") is ICL_TASKS["mr"]
    assert {t.hub_path for t in ICL_TASKS.values()} == {
        "SetFit/sst2",
        "rotten_tomatoes",
        "SetFit/subj",
        "SetFit/sst5",
        "SetFit/mpqa",
    }
    sst5 = datasets.Dataset.from_dict(
        {
            "text": ["awful", "fine", "superb"],
            "label": [0, 2, 4],
            "label_text": ["very negative", "neutral", "very positive"],
        }
    )
    examples = hub_examples(ICL_TASKS["sst5"], "test", sst5)
    assert [ICL_TASKS["sst5"].label_words[e.label] for e in examples] == ["terrible", "okay", "great"]
    assert query_text(ICL_TASKS["sst5"], examples[0]) == "Review: awful\nSentiment:"
    assert demo_text(ICL_TASKS["sst5"], examples[2]) == "Review: superb\nSentiment: great\n\n"
    swapped = datasets.Dataset.from_dict({"text": ["x"], "label": [0], "label_text": ["subjective"]})
    with pytest.raises(ValueError, match="expected 'objective'"):
        hub_examples(ICL_TASKS["subj"], "test", swapped)
    mr = datasets.Dataset.from_dict(
        {"text": ["good film"], "label": [1]},
        features=datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
        ),
    )
    assert hub_examples(ICL_TASKS["mr"], "test", mr) == [Example("good film", 1)]


def test_corpus_source_set_is_balanced_and_deterministic(setup):
    a, words = corpus_source_examples(setup / "corpus", "test", 5, seed=3)
    b, _ = corpus_source_examples(setup / "corpus", "test", 5, seed=3)
    assert a == b and words == ("manual", "python")  # sorted sources: man, stdlib
    assert [e.label for e in a] == [0, 1] * 5 and all(len(e.text.split()) == 24 for e in a)
    assert corpus_source_examples(setup / "corpus", "test", 5, seed=4)[0] != a


def test_rag_puts_the_memory_demonstrations_most_like_the_input_before_the_context_ones(memlong_model):
    from memlong.recipes.eval_icl import _rag_prompts

    model, _ = memlong_model  # top_k 2, hashing retriever
    demos = [[70, 71, 9], [1, 2, 3], [70, 71, 72], [5, 6, 7]]  # the best match (2) after the second best (0)
    ctx, queries = [40, 41], [[70, 71, 72, 73], [5, 6, 7, 1, 2]]
    assert _rag_prompts(model, demos, ctx, queries) == [
        [70, 71, 9, 70, 71, 72] + ctx + queries[0],  # in the order they were drawn, not by score
        [1, 2, 3, 5, 6, 7] + ctx + queries[1],
    ]
    assert _rag_prompts(model, [], ctx, queries) == [ctx + q for q in queries]  # no memory demonstrations
