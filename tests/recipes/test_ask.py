"""`memlong ask`: files read into memory, questions answered from it, the memory saved and reused
while the files are unchanged; on a tiny MemLong model (training-free mode, hashing retriever)
saved as a directory with a small BPE tokenizer (conftest), so `--model DIR` loads it as a user would."""

import io
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import memlong
from memlong.cli import main
from memlong.recipes.ask import MANIFEST

from conftest import small_memlong_config

LIB = Path(sysconfig.get_paths()["stdlib"])
QUESTION = "What does the parser do with the arguments?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bpe_tokenizer_dir):
    root = tmp_path_factory.mktemp("ask_model")
    tok = AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir))
    torch.manual_seed(0)
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=512,
        )
    )
    cfg = small_memlong_config(
        mode="training_free",
        memory_layer=1,
        retrieval_layers=(1, 2, 3, 4),
        chunk_size=16,
        top_k=2,
        memory_capacity=4096,
        local_window=64,
    )
    m = memlong.wrap(lm, cfg, retriever=memlong.HashingRetriever())
    m.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture
def files(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text((LIB / "argparse.py").read_text()[:2500])
    b.write_text((LIB / "textwrap.py").read_text()[:2000])
    return a, b


def ask(model_dir, *argv):
    return main(
        [
            "ask",
            *map(str, argv),
            "--model",
            str(model_dir),
            "--retriever",
            "hashing",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
        ]
    )


def report(path) -> dict:
    return json.loads(Path(path).read_text())


def test_answer_printed_and_json(model_dir, files, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert ask(model_dir, *files, "--question", QUESTION, "--json", out) == 0
    printed = capsys.readouterr().out
    r = report(out)
    assert r["tokens_read"] > 500 and r["tokens_read"] == r["tokens_in_memory"] and r["tokens_per_s"] > 0
    assert f"tokens read: {r['tokens_read']:,} in" in printed and "tokens/s" in printed
    (q,) = r["questions"]
    assert q["question"] == QUESTION and isinstance(q["answer"], str)
    assert f"Q: {QUESTION}\nA: {q['answer']}" in printed
    assert r["question_format"] == "plain" and r["memory"]["reused"] is False
    assert [f["path"] for f in r["files"]] == [str(f.resolve()) for f in files]


def test_memory_saved_then_reused_then_reread_when_a_file_changes(model_dir, files, tmp_path, capsys):
    mem = tmp_path / "mem"
    first, second, third = (tmp_path / f"{n}.json" for n in ("first", "second", "third"))
    assert ask(model_dir, *files, "-q", QUESTION, "--memory", mem, "--json", first) == 0
    assert f"saved the memory to {mem}" in capsys.readouterr().out
    manifest = json.loads((mem / MANIFEST).read_text())
    assert [f["path"] for f in manifest["files"]] == [str(f.resolve()) for f in files]
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in manifest["files"])
    assert manifest["model"] == str(model_dir.resolve()) and manifest["memlong_version"] == memlong.__version__
    assert (
        manifest["retriever"]["class"] == "HashingRetriever" and manifest["memlong_config"]["mode"] == "training_free"
    )

    # Unchanged files: the memory is loaded, nothing is read, and the answer is the same.
    from memlong.modeling import MemLongMixin

    calls, real = [], MemLongMixin.ingest_text

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MemLongMixin, "ingest_text", counting)
        assert ask(model_dir, *files, "-q", QUESTION, "--memory", mem, "--show-retrieved", "--json", second) == 0
    printed = capsys.readouterr().out
    assert calls == [] and "nothing read" in printed and "tokens read: 0" in printed
    texts = {str(f): f.read_text() for f in files}  # the loaded bank still maps chunks to the files' text
    assert all(c["text"] in texts[c["file"]] for c in report(second)["questions"][0]["retrieved"])
    assert report(second)["memory"]["reused"] is True and report(second)["tokens_read"] == 0
    assert report(second)["tokens_in_memory"] == report(first)["tokens_read"]
    assert report(second)["questions"][0]["answer"] == report(first)["questions"][0]["answer"]
    # the window index was built once after reading, before saving: the reused memory has it
    assert report(first)["window_index_seconds"] >= 0 and "window_index_seconds" not in report(second)

    # A changed file: named, read again, the saved memory and manifest replaced.
    files[1].write_text(files[1].read_text() + "\nOne more line at the end.\n")
    assert ask(model_dir, *files, "-q", QUESTION, "--memory", mem, "--json", third) == 0
    printed = capsys.readouterr().out
    assert "out of date" in printed and f"{files[1]}: content changed" in printed and str(files[0]) + ":" not in printed
    assert report(third)["tokens_read"] > report(first)["tokens_read"]
    new = json.loads((mem / MANIFEST).read_text())
    assert new["files"][0] == manifest["files"][0] and new["files"][1]["sha256"] != manifest["files"][1]["sha256"]
    assert len([p for p in mem.iterdir() if p.name.startswith("v-")]) == 1  # the old version was replaced
    # ... and reused after that.
    assert ask(model_dir, *files, "-q", QUESTION, "--memory", mem) == 0
    assert "nothing read" in capsys.readouterr().out
    # A save interrupted between memory.json and the manifest: that memory is not trusted, it is read again.
    (mem / MANIFEST).write_text(json.dumps({**new, "memory_version": "v-interrupted"}))
    assert ask(model_dir, *files, "-q", QUESTION, "--memory", mem) == 0
    assert "an interrupted save" in capsys.readouterr().out
    assert (
        json.loads((mem / MANIFEST).read_text())["memory_version"]
        == json.loads((mem / "memory.json").read_text())["version"]
    )


def test_a_file_given_or_dropped_counts_as_a_change(model_dir, files, tmp_path, capsys):
    mem = tmp_path / "mem"
    assert ask(model_dir, files[0], "-q", QUESTION, "--memory", mem) == 0
    capsys.readouterr()
    assert ask(model_dir, *files, "-q", QUESTION, "--memory", mem) == 0
    assert f"{files[1]}: not in the saved memory" in capsys.readouterr().out


def test_set_changes_how_questions_search_on_a_reused_memory_and_other_fields_need_a_new_one(
    model_dir, files, tmp_path, capsys
):
    mem, out = tmp_path / "mem", tmp_path / "out.json"
    assert ask(model_dir, *files, "-q", QUESTION, "--memory", mem) == 0
    capsys.readouterr()
    assert (
        ask(
            model_dir,
            *files,
            "-q",
            QUESTION,
            "--memory",
            mem,
            "--set",
            "question_order=score",
            "--set",
            "question_offsets=[0,1]",
            "--json",
            out,
        )
        == 0
    )
    assert "nothing read" in capsys.readouterr().out
    config = report(out)["memlong_config"]
    assert config["question_order"] == "score" and config["question_offsets"] == [0, 1]
    saved = sorted(p.relative_to(mem) for p in mem.rglob("*"))
    with pytest.raises(SystemExit, match=r"another MemLong config \(differs in .*top_k"):
        ask(model_dir, *files, "-q", QUESTION, "--memory", mem, "--set", "top_k=3")
    assert sorted(p.relative_to(mem) for p in mem.rglob("*")) == saved  # refused, kept


def test_corrupted_or_foreign_memory_is_refused_and_kept(model_dir, files, tmp_path, capsys):
    mem = tmp_path / "mem"
    assert ask(model_dir, *files, "-q", QUESTION, "--memory", mem) == 0
    before = sorted(p.relative_to(mem) for p in mem.rglob("*"))

    # memory.json truncated: the load error is shown with what to do; nothing is deleted.
    good = (mem / "memory.json").read_text()
    (mem / "memory.json").write_text(good[: len(good) // 2])
    with pytest.raises(SystemExit) as e:
        ask(model_dir, *files, "-q", QUESTION, "--memory", mem)
    msg = str(e.value)
    assert f"the memory in {mem} cannot be used" in msg and "memory.json" in msg and "not valid JSON" in msg
    assert f"rm -r {mem}" in msg and "another --memory" in msg
    assert sorted(p.relative_to(mem) for p in mem.rglob("*")) == before and all(f.is_file() for f in files)
    (mem / "memory.json").write_text(good)

    # the window file corrupted
    (window,) = mem.glob("v-*/window.safetensors")
    data = window.read_bytes()
    window.write_bytes(data[:-10])
    with pytest.raises(SystemExit, match="truncated or corrupted"):
        ask(model_dir, *files, "-q", QUESTION, "--memory", mem)
    window.write_bytes(data)

    # a manifest saying another model read it
    manifest = json.loads((mem / MANIFEST).read_text())
    (mem / MANIFEST).write_text(json.dumps({**manifest, "model": "someone/else"}))
    with pytest.raises(SystemExit, match="read by the model 'someone/else'"):
        ask(model_dir, *files, "-q", QUESTION, "--memory", mem)
    (mem / MANIFEST).write_text("{")
    with pytest.raises(SystemExit, match="ask_manifest.json is unreadable or corrupted"):
        ask(model_dir, *files, "-q", QUESTION, "--memory", mem)

    # a memory saved without `memlong ask` (no manifest, memory.json not marked as ask's): which files it
    # holds is unknown
    (mem / MANIFEST).unlink()
    (mem / "memory.json").write_text(json.dumps({**json.loads(good), "metadata": {}}))
    with pytest.raises(SystemExit, match="not saved by `memlong ask`"):
        ask(model_dir, *files, "-q", QUESTION, "--memory", mem)
    (mem / "memory.json").write_text(good)

    (mem / MANIFEST).write_text(json.dumps(manifest))  # restored: usable again
    assert ask(model_dir, *files, "-q", QUESTION, "--memory", mem) == 0
    assert "nothing read" in capsys.readouterr().out


def test_interactive_mode_answers_piped_questions_independently(model_dir, files, tmp_path, monkeypatch, capsys):
    out, alone = tmp_path / "out.json", tmp_path / "alone.json"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\nWhat is wrapped?\n\nnot asked: after the empty line\n"))
    assert ask(model_dir, *files, "--json", out) == 0
    printed = capsys.readouterr().out
    qs = report(out)["questions"]
    assert [q["question"] for q in qs] == [QUESTION, "What is wrapped?"]
    assert all(f"Q: {q['question']}\nA: {q['answer']}" in printed for q in qs)
    # each answer comes from the text alone: the second is what it is when asked on its own
    assert ask(model_dir, *files, "-q", "What is wrapped?", "--json", alone) == 0
    assert report(alone)["questions"][0]["answer"] == qs[1]["answer"]
    # the same two questions given with --question
    assert ask(model_dir, *files, "-q", QUESTION, "-q", "What is wrapped?", "--json", alone) == 0
    assert [q["answer"] for q in report(alone)["questions"]] == [q["answer"] for q in qs]


def test_show_retrieved_prints_chunk_text_from_the_files(model_dir, files, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert ask(model_dir, *files, "-q", "How is the text wrapped into lines?", "--show-retrieved", "--json", out) == 0
    printed = capsys.readouterr().out
    (q,) = report(out)["questions"]
    assert len(q["retrieved"]) == 2  # top_k
    texts = {str(f): f.read_text() for f in files}
    for r in q["retrieved"]:
        assert r["file"] in texts and r["text"] and r["text"] in texts[r["file"]]
        assert len(r["text"]) <= 200 and r["tokens"][1] - r["tokens"][0] == 16
        line = texts[r["file"]].count("\n", 0, texts[r["file"]].index(r["text"])) + 1
        assert r["line"] == line
        assert (
            f"chunk {r['chunk_id']:>5}  tokens {r['tokens'][0]:,}-{r['tokens'][1]:,}  score {r['score']:.3f}"
            f"  {r['file']}:{r['line']}" in printed
        )
        assert repr(r["text"].replace("\n", " ")) in printed


def test_show_retrieved_lists_a_hit_still_in_the_local_window(model_dir, files, tmp_path, capsys):
    """With ``question_window`` a question reads the window's chunks too: ``--show-retrieved`` lists
    such a hit (``in_window``) with its text from the file, as it lists the bank's."""
    fact = "\nThe zebra quokka marmot ledger sits in vault 7731.\n"
    files[1].write_text(files[1].read_text() + fact + "# end of the module\n# nothing more here\n")  # a whole chunk
    out = tmp_path / "out.json"
    question = "Where does the zebra quokka marmot ledger sit?"
    argv = ["-q", question, "--show-retrieved", "--json", out]
    assert ask(model_dir, *files, *argv, "--set", "question_window=true") == 0
    printed = capsys.readouterr().out
    (q,) = report(out)["questions"]
    hit = next(r for r in q["retrieved"] if "quokka" in r["text"])
    assert hit["in_window"] and hit["file"] == str(files[1]) and hit["text"] in files[1].read_text()
    assert f"chunk {hit['chunk_id']:>5}" in printed and "(local window)" in printed
    assert ask(model_dir, *files, *argv, "--set", "question_window=false") == 0
    assert not any(r["in_window"] for r in report(out)["questions"][0]["retrieved"])
    # question_fresh_window: the window is banked before the question, so the fact is a bank hit
    assert ask(model_dir, *files, *argv, "--set", "question_window=false", "--set", "question_fresh_window=true") == 0
    hit = next(r for r in report(out)["questions"][0]["retrieved"] if "quokka" in r["text"])
    assert not hit["in_window"] and hit["text"] in files[1].read_text()


def test_bad_inputs_give_clear_errors(model_dir, files, tmp_path):
    empty, folder, latin = tmp_path / "empty.txt", tmp_path / "folder", tmp_path / "latin1.txt"
    empty.write_text("  \n")
    folder.mkdir()
    latin.write_bytes("caf\xe9".encode("latin-1"))
    cases = [
        ([tmp_path / "missing.txt"], f"no such file: {tmp_path / 'missing.txt'}"),
        ([files[0], empty], f"{empty} is empty"),
        ([folder], f"{folder} is a directory, not a text file"),
        ([latin], f"{latin} is not UTF-8 text"),
        ([*files, "--memory", files[0]], f"--memory {files[0]} is a file, not a directory"),
        ([*files, "--question", " "], "--question must not be empty"),
        ([*files, "--format", "chat", "-q", QUESTION], "no chat template"),
        ([*files, "-q", QUESTION, "--set", "no_such_field=1"], "--set 'no_such_field=1': expected FIELD=VALUE"),
        ([*files, "-q", QUESTION, "--set", "question_order=best"], "question_order"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            ask(model_dir, *argv)
        assert message in str(e.value), (argv, str(e.value))
    with pytest.raises(SystemExit, match="cannot load the model"):
        main(["ask", str(files[0]), "--model", str(tmp_path / "no-model-here"), "-q", QUESTION])
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="other files in it"):
        ask(model_dir, *files, "-q", QUESTION, "--memory", other)
    assert (other / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_default_model_finds_a_fact_planted_near_the_start_of_32k_tokens(tmp_path):
    """The real default model (SmolLM2-135M-Instruct, training-free, MiniLM retriever) reads more
    than 32k tokens of stdlib sources and answers a question about a fact stated near the start."""
    from memlong.pretrained import default_base_model_path

    tok = AutoTokenizer.from_pretrained(default_base_model_path())
    parts, chars = [], 0
    for path in sorted(LIB.glob("*.py")):
        parts.append(path.read_text(encoding="utf-8", errors="replace"))
        chars += len(parts[-1])
        if chars > 200_000:
            break
    text = "\n\n".join(parts)
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    text = text[: offsets[34_000][0]]  # 34k tokens: past 32k, and the run stays a few minutes
    cut = text.index("\n", 3000) + 1  # about 1k tokens in: long gone from the 1024-token window at the end
    doc = tmp_path / "long.txt"
    doc.write_text(text[:cut] + "The secret code of the vault is 48213.\n" + text[cut:])
    out = tmp_path / "ask.json"
    t0 = time.perf_counter()
    assert (
        main(
            [
                "ask",
                str(doc),
                "--question",
                "What is the secret code of the vault?",
                "--max-new-tokens",
                "20",
                "--show-retrieved",
                "--threads",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = report(out)
    print(
        f"{r['tokens_read']} tokens, {r['tokens_per_s']} tokens/s, {time.perf_counter() - t0:.0f} s in all; "
        f"answer {r['questions'][0]['answer']!r}; retrieved {[(c['chunk_id'], c['score']) for c in r['questions'][0]['retrieved']]}"
    )
    assert r["tokens_read"] > 32_768
    assert "48213" in r["questions"][0]["answer"]


def test_rag_answers_with_the_base_model_on_the_chunks_most_like_the_question(model_dir, files, tmp_path, capsys):
    from memlong.pretrained import load_memlong_model
    from memlong.qa import load_base, plain_answer, question_ids
    from memlong.rag import rag_prompt
    from memlong.recipes.ask import join_sources, read_source

    out = tmp_path / "out.json"
    question = "How is the text wrapped into lines?"
    assert ask(model_dir, *files, "--rag", "-q", question, "--show-retrieved", "--json", out) == 0
    printed = capsys.readouterr().out
    r = report(out)
    assert r["method"] == "rag" and "memory" not in r and r["tokens_read"] > 500
    (q,) = r["questions"]
    assert len(q["rag_chunks"]) == 2 and q["rag_chunks"] == sorted(q["rag_chunks"])  # top_k, in document order
    # --show-retrieved: the same chunks, best first, with their text from the files
    assert sorted(c["chunk_id"] for c in q["retrieved"]) == q["rag_chunks"]
    assert q["retrieved"][0]["score"] >= q["retrieved"][1]["score"]
    texts = {str(f): f.read_text() for f in files}
    for c in q["retrieved"]:
        assert c["text"] in texts[c["file"]] and c["tokens"][1] - c["tokens"][0] <= 16
        assert f"chunk {c['chunk_id']:>5}  tokens {c['tokens'][0]:,}-{c['tokens'][1]:,}" in printed
    # the answer is the base model's, greedy, on the rag prompt (the chunks as text, then the question)
    model, tok = load_memlong_model(str(model_dir), retriever="hashing")
    doc = tok(join_sources([read_source(str(f)) for f in files]), add_special_tokens=False)["input_ids"]
    prompt = question_ids(tok, question, chat=False)[0]
    rag = rag_prompt(model, doc + prompt, (0, len(doc)))
    assert rag.chosen == q["rag_chunks"] and rag.ids[-len(prompt) :] == prompt
    base = load_base(str(model_dir))
    ids = torch.tensor([rag.ids])
    want = base.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    assert q["answer"] == plain_answer(tok.decode(want[0, ids.shape[1] :], skip_special_tokens=True))[0].strip()
    assert f"Q: {question}\nA: {q['answer']}" in printed
    # no memory is read with --rag: --memory does not apply
    with pytest.raises(SystemExit, match="--rag reads no memory"):
        ask(model_dir, *files, "--rag", "-q", question, "--memory", tmp_path / "mem")


def test_eviction_is_announced_before_reading_and_reported_after(model_dir, files, tmp_path, capsys):
    out, mem = tmp_path / "out.json", tmp_path / "mem"
    assert ask(model_dir, *files, "-q", QUESTION, "--set", "memory_capacity=512", "--memory", mem, "--json", out) == 0
    printed = capsys.readouterr().out
    r = report(out)
    plan, evicted = r["reading_plan"], r["evicted"]
    assert plan["tokens"] == r["tokens_read"] and plan["evicted_chunks"] > 0 and plan["capacity_tokens"] == 512
    needed = plan["capacity_needed"]
    warning = printed[printed.index("warning: ") : printed.index("tokens read:")]
    assert printed.index("warning: ") < printed.index("tokens read:")  # before reading
    assert f"{plan['tokens']:,} tokens to read" in warning and f"{plan['kept_tokens']:,} tokens will be kept" in warning
    assert f"{plan['evicted_tokens']:,} ({plan['evicted_chunks']:,} chunks of 16) evicted" in warning
    assert f"--set memory_capacity={needed}" in warning and "MiB of bank" in warning or "KiB of bank" in warning
    # after reading: what went, as planned, in tokens and in the files
    assert evicted["chunks"] == plan["evicted_chunks"] and evicted["tokens"] == plan["evicted_tokens"]
    assert f"evicted while reading: {evicted['chunks']:,} chunks ({evicted['tokens']:,} tokens)" in printed
    assert sum(b - a for a, b in evicted["spans"]) == evicted["tokens"]
    texts = {str(f): f.read_text() for f in files}
    pieces = evicted["files"]
    assert pieces and {p["file"] for p in pieces} <= set(texts)
    for p in pieces:
        a, b = p["chars"]
        body = texts[p["file"]]
        assert 0 <= a < b <= len(body)
        assert p["lines"] == [body.count("\n", 0, a) + 1, body.count("\n", 0, b - 1) + 1]
    first = pieces[0]
    assert f"{first['file']} characters {first['chars'][0]:,}-{first['chars'][1]:,}" in printed
    # a reused memory says what was evicted when it was read
    assert ask(model_dir, *files, "-q", QUESTION, "--set", "memory_capacity=512", "--memory", mem, "--json", out) == 0
    assert f"evicted when this memory was read: {evicted['chunks']:,} chunks" in capsys.readouterr().out
    assert report(out)["evicted"] == evicted
    # the capacity the warning names keeps everything: no warning, nothing evicted
    assert ask(model_dir, *files, "-q", QUESTION, "--set", f"memory_capacity={needed}", "--json", out) == 0
    printed = capsys.readouterr().out
    assert "warning:" not in printed and "evicted" not in printed
    assert report(out)["evicted"]["chunks"] == 0 and not report(out)["reading_plan"]["evicted_chunks"]


# ------------------------------------------------------------------ killed and concurrent processes
def jobs(model_dir: str) -> dict:
    """In the killing helper (:mod:`killing`): ``ask`` runs ``memlong ask FILES --memory DIR`` on a
    model loaded once, returning when its save and its manifest began and ended."""
    import argparse

    import memlong.recipes.ask as verb
    from memlong.cache import MemLongCache

    loaded = verb._load_model(argparse.Namespace(model=model_dir, retriever="hashing", overrides=[]))
    verb._load_model = lambda args: loaded  # a forked child reads and saves; loading was done once, here
    marks = {}

    def timed(name, f):
        def wrapper(*a, **k):
            marks[f"{name}_start"] = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                marks[f"{name}_end"] = time.perf_counter()

        return wrapper

    MemLongCache.save = timed("save", MemLongCache.save)
    verb.write_manifest = timed("manifest", verb.write_manifest)

    def run(files, memory, timeout=30):
        main(
            [
                "ask",
                *files,
                "--memory",
                memory,
                "-q",
                QUESTION,
                "--model",
                model_dir,
                "--retriever",
                "hashing",
                "--max-new-tokens",
                "1",
                "--threads",
                "1",
                "--lock-timeout",
                str(timeout),
            ]
        )
        return marks

    return {"ask": run}


@pytest.fixture(scope="module")
def killer(model_dir):
    from killing import Killer

    with Killer("recipes/test_ask:jobs", model_dir=str(model_dir)) as k:
        yield k


@pytest.fixture
def small_files(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text((LIB / "argparse.py").read_text()[:700])
    b.write_text((LIB / "textwrap.py").read_text()[:600])
    return a, b


def _decide(model, model_dir, directory, sources):
    """What `ask` would do with DIR for these sources, and, when it reuses it, the tokens it loads."""
    import argparse

    from memlong.recipes.ask import plan_reuse

    action, _ = plan_reuse(directory, sources, model, argparse.Namespace(model=str(model_dir)))
    return action, (model.load_memory(directory).seen[0] if action == "reuse" else None)


def test_ask_killed_while_saving_leaves_a_memory_it_reuses_or_reads_again(model_dir, small_files, tmp_path, killer):
    import argparse
    import random
    import shutil

    from memlong.recipes.ask import _load_model, read_source

    mem, pristine = tmp_path / "mem", tmp_path / "pristine"
    files = [str(f) for f in small_files]
    killer.run(None, "ask", files=files, memory=str(pristine))  # the memory of the files as they are
    old = [read_source(f) for f in files]
    old_tokens = json.loads((pristine / MANIFEST).read_text())["tokens"]
    small_files[1].write_text(small_files[1].read_text() + "\nOne more line at the end.\n")
    new = [read_source(f) for f in files]
    shutil.copytree(pristine, mem)
    marks = killer.run(None, "ask", files=files, memory=str(mem))["marks"]  # reads the changed files, saves
    new_tokens = json.loads((mem / MANIFEST).read_text())["tokens"]
    assert new_tokens > old_tokens
    model, _ = _load_model(argparse.Namespace(model=str(model_dir), retriever="hashing", overrides=[]))
    rng = random.Random(0)
    times = sorted(rng.uniform(marks["save_start"] - 0.02, marks["manifest_end"] + 0.01) for _ in range(6))
    outcomes = []

    def kill_at(i: int, seconds: float) -> None:
        shutil.rmtree(mem)
        if i % 2 == 0:
            shutil.copytree(pristine, mem)  # a save over the old memory; odd kills: the first save into DIR
        killed = killer.run(seconds, "ask", files=files, memory=str(mem))["killed"]
        # never refused, never a half-written memory: the old one whole, the new one whole, or read again
        with_old = _decide(model, model_dir, mem, old) if i % 2 == 0 else ("read", None)
        with_new = _decide(model, model_dir, mem, new)
        assert with_old in (("reuse", old_tokens), ("reread", None), ("read", None)), (seconds, with_old)
        assert with_new in (("reuse", new_tokens), ("reread", None), ("read", None)), (seconds, with_new)
        assert not (with_old[0] == with_new[0] == "reuse")
        outcomes.append((killed, with_old[0], with_new[0]))

    def interrupted() -> bool:
        return any(killed and n != "reuse" for killed, _, n in outcomes)

    for i, seconds in enumerate(times):
        kill_at(i, seconds)
    # a loaded machine moves the save in time: measure it again and kill inside it until one kill lands there
    for extra in range(12):
        if interrupted():
            break
        marks = killer.run(None, "ask", files=files, memory=str(tmp_path / f"measure{extra}"))["marks"]
        kill_at(extra, rng.uniform(marks["save_start"], marks["manifest_end"]))
    assert interrupted(), outcomes
    # ... and the verb itself carries on from whatever a kill left
    assert (
        main(
            [
                "ask",
                *files,
                "--memory",
                str(mem),
                "-q",
                QUESTION,
                "--model",
                str(model_dir),
                "--retriever",
                "hashing",
                "--max-new-tokens",
                "1",
            ]
        )
        == 0
    )
    assert _decide(model, model_dir, mem, new) == ("reuse", new_tokens)
    assert not [p.name for p in mem.iterdir() if p.name.endswith(".tmp")]
    assert len([p for p in mem.iterdir() if p.name.startswith("v-")]) == 1


def test_two_asks_on_one_memory_one_reads_and_saves_the_other_waits_and_reuses(
    model_dir, small_files, tmp_path, killer, capsys
):
    import threading

    mem, files = tmp_path / "mem", [str(f) for f in small_files]
    child = {}
    other = threading.Thread(target=lambda: child.update(killer.run(None, "ask", files=files, memory=str(mem))))
    other.start()
    time.sleep(0.05)
    assert (
        main(
            [
                "ask",
                *files,
                "--memory",
                str(mem),
                "-q",
                QUESTION,
                "--model",
                str(model_dir),
                "--retriever",
                "hashing",
                "--max-new-tokens",
                "1",
            ]
        )
        == 0
    )
    other.join(timeout=60)
    printed = capsys.readouterr().out
    child_saved = "save_start" in child["marks"]
    we_saved = "saved the memory to" in printed
    assert child_saved != we_saved, (child, printed)  # exactly one process read and saved; the other reused
    if child_saved:
        assert "nothing read" in printed
    assert len([p for p in mem.iterdir() if p.name.startswith("v-")]) == 1


def test_a_second_ask_gives_up_on_a_memory_another_process_holds(model_dir, small_files, tmp_path, killer, capsys):
    from memlong.memory.lock import folder_lock

    mem, files = tmp_path / "mem", [str(f) for f in small_files]
    with folder_lock(mem, timeout=0):  # this process holds DIR, as a first `memlong ask` reading would
        with pytest.raises(
            AssertionError,
            match=r"(?s)another memlong process is using --memory .*"
            rf"pid {os.getpid()}.*waited 0\.\d s .*--lock-timeout.*another "
            r"--memory DIR",
        ):
            killer.run(None, "ask", files=files, memory=str(mem), timeout=0.5)
    assert sorted(p.name for p in mem.iterdir()) == [".memlong.lock"]  # nothing read, nothing saved


@pytest.fixture(scope="module")
def small_capacity_model(model_dir, tmp_path_factory):
    """The test model with a bank of 512 tokens: the files (about 2,200 tokens) do not fit."""
    import shutil

    from memlong.config import CONFIG_NAME

    d = tmp_path_factory.mktemp("small_capacity") / "model"
    shutil.copytree(model_dir, d)
    config = json.loads((d / CONFIG_NAME).read_text())
    (d / CONFIG_NAME).write_text(json.dumps({**config, "memory_capacity": 512}))
    return d


def test_capacity_is_raised_to_hold_the_files_unless_evict(small_capacity_model, files, tmp_path, capsys):
    out, mem = tmp_path / "out.json", tmp_path / "mem"
    assert ask(small_capacity_model, *files, "-q", QUESTION, "--memory", mem, "--json", out) == 0
    printed = capsys.readouterr().out
    r = report(out)
    needed = r["capacity"]["to"]
    assert r["capacity"]["raised"] and r["capacity"]["from"] == 512 and needed > 512
    assert f"raised to {needed:,} for this call" in printed and "--evict keeps 512" in printed
    assert r["memlong_config"]["memory_capacity"] == needed and r["evicted"]["chunks"] == 0
    assert "warning:" not in printed and not r["reading_plan"]["evicted_chunks"]
    # the same files: the saved memory (read with that capacity) is reused
    assert ask(small_capacity_model, *files, "-q", QUESTION, "--memory", mem) == 0
    assert "nothing read" in capsys.readouterr().out
    # --evict: the model's capacity, evicting, said before and after; the saved memory is read again, not refused
    assert ask(small_capacity_model, *files, "-q", QUESTION, "--memory", mem, "--evict", "--json", out) == 0
    printed = capsys.readouterr().out
    assert (
        f"memory_capacity {needed} -> 512" in printed and "warning:" in printed and "evicted while reading" in printed
    )
    assert report(out)["memlong_config"]["memory_capacity"] == 512 and report(out)["evicted"]["chunks"] > 0


def test_capacity_is_not_raised_past_the_available_memory(small_capacity_model, files, tmp_path, capsys, monkeypatch):
    import memlong.memory.budget as budget

    out = tmp_path / "out.json"
    monkeypatch.setattr(budget, "available_memory", lambda: 100_000)
    assert ask(small_capacity_model, *files, "-q", QUESTION, "--json", out) == 0
    printed = capsys.readouterr().out
    assert "not raising memory_capacity" in printed and "97.7 KiB of memory is available" in printed
    assert "warning:" in printed and report(out)["evicted"]["chunks"] > 0 and not report(out)["capacity"]["raised"]


def test_what_a_killed_first_save_leaves_is_read_over_and_cleaned(model_dir, files, tmp_path, capsys):
    mem = tmp_path / "mem"
    (mem / "v-0123456789ab").mkdir(parents=True)  # a version folder a kill left before memory.json
    (mem / "v-0123456789ab" / "window.safetensors").write_bytes(b"half")
    (mem / "memory.json.tmp").write_text("{")
    (mem / ".memlong.lock").write_text("")
    assert ask(model_dir, *files, "-q", QUESTION, "--memory", mem) == 0
    assert f"saved the memory to {mem}" in capsys.readouterr().out
    assert not (mem / "v-0123456789ab").exists()
    assert ask(model_dir, *files, "-q", QUESTION, "--memory", mem) == 0
    assert "nothing read" in capsys.readouterr().out
    # a folder of the user's that merely looks like one is not ours: refused, kept
    other = tmp_path / "other"
    (other / "v-notes").mkdir(parents=True)
    with pytest.raises(SystemExit, match="other files in it"):
        ask(model_dir, *files, "-q", QUESTION, "--memory", other)
    assert (other / "v-notes").is_dir()


def test_a_bank_larger_than_memory_is_kept_in_memory_mapped_files_in_the_memory_folder(
    small_capacity_model, files, tmp_path, capsys, monkeypatch
):
    import memlong.memory.budget as budget

    in_ram, on_disk, mem = tmp_path / "ram.json", tmp_path / "disk.json", tmp_path / "mem"
    two = ["-q", QUESTION, "-q", "What does the parser do?"]  # the first question reads into a copy
    assert ask(small_capacity_model, *files, *two, "--json", in_ram) == 0
    capsys.readouterr()
    monkeypatch.setattr(budget, "available_memory", lambda: 100_000)
    assert ask(small_capacity_model, *files, *two, "--memory", mem, "--json", on_disk) == 0
    printed = capsys.readouterr().out
    r = report(on_disk)
    assert r["capacity"]["raised"] and r["capacity"]["bank_device"] == "mmap" and r["evicted"]["chunks"] == 0
    assert f"kept in memory-mapped files in {mem}" in printed and "warning:" not in printed
    assert r["memlong_config"]["bank_device"] == "mmap" and r["memlong_config"]["bank_mmap_dir"] == str(mem.resolve())
    # the same answers as with the bank in RAM; nothing of the mapped pages left in the folder
    assert [q["answer"] for q in r["questions"]] == [q["answer"] for q in report(in_ram)["questions"]]
    assert not [p for p in mem.iterdir() if p.name.startswith("memlong-kv-")]
    # the saved memory loads back into memory-mapped files and is reused, with the same answers
    assert ask(small_capacity_model, *files, *two, "--memory", mem, "--json", on_disk) == 0
    assert "nothing read" in capsys.readouterr().out
    assert [q["answer"] for q in report(on_disk)["questions"]] == [q["answer"] for q in report(in_ram)["questions"]]


def test_a_bank_larger_than_memory_and_disk_is_not_raised_and_says_why(
    small_capacity_model, files, tmp_path, capsys, monkeypatch
):
    import memlong.memory.budget as budget
    import memlong.recipes.ask as ask_verb

    out, mem = tmp_path / "out.json", tmp_path / "mem"
    monkeypatch.setattr(budget, "available_memory", lambda: 100_000)
    monkeypatch.setattr(ask_verb, "_free_disk", lambda d: 1000)
    assert ask(small_capacity_model, *files, "-q", QUESTION, "--memory", mem, "--json", out) == 0
    printed = capsys.readouterr().out
    assert "not raising memory_capacity" in printed and "(the bank and its save), 1,000 bytes is free in" in printed
    assert "warning:" in printed and report(out)["evicted"]["chunks"] > 0 and not report(out)["capacity"]["raised"]
    assert report(out)["memlong_config"]["bank_device"] == "model"
    # without --memory the message names it
    assert ask(small_capacity_model, *files, "-q", QUESTION) == 0
    assert "pass --memory DIR to keep it on disk there" in capsys.readouterr().out
