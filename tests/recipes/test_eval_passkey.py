"""`memlong eval passkey` on the tiny eval model: the ``rag`` method and every row's cost fields.
(The verb end to end on a trained model: tests/recipes/test_train.py.)"""

import json

from memlong.cli import main
from memlong.cost import bytes_per_token
from memlong.pretrained import load_memlong_model
from memlong.recipes.eval_passkey import passkey_question_ids

from conftest import assert_markdown_beside


def test_rag_rows_record_what_they_retrieved_and_every_row_its_cost(eval_setup, tmp_path):
    out = tmp_path / "pk.json"
    assert (
        main(
            [
                "eval",
                "passkey",
                "--model",
                str(eval_setup / "model"),
                "--retriever",
                "hashing",
                "--threads",
                "1",
                "--data",
                str(eval_setup / "corpus"),
                "--lengths",
                "700",
                "--depths",
                "0.3",
                "--trials",
                "2",
                "--methods",
                "memlong,memlong_no_memory,base_truncated,rag",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert "| 700 | rag |" in assert_markdown_beside(out)
    assert list(rows) == ["memlong", "memlong_no_memory", "base_truncated", "rag"]
    model, tok = load_memlong_model(str(eval_setup / "model"), retriever="hashing")
    for method, r in rows.items():
        assert 0 <= r["accuracy"] <= 1 and r["tokens_per_second"] == round(700 * 2 / r["seconds"], 1)
        if method != "rag":
            assert r["bytes_per_token"] == bytes_per_token(method, model, model)  # (the base is the model's own)
    rag = rows["rag"]
    # an embedding per chunk of 16 context tokens (the prompt but its question), float32
    context = 700 - len(passkey_question_ids(tok))
    chunks = -(-context // 16)
    assert rag["bytes_per_token"] == round(chunks * model.memlong_retriever.dim * 4 / context, 2)
    assert rag["key_retrieved"] == sum(a["key_retrieved"] for a in rag["answers"]) / 2
    for a in rag["answers"]:
        assert (
            len(a["rag_chunks"]) == 2
            and a["rag_chunks"] == sorted(a["rag_chunks"])
            and a["rag_context_chunks"] == chunks
        )
        assert a["key_chunk_rank"] is None or 1 <= a["key_chunk_rank"] <= chunks
        assert a["key_retrieved"] == (a["key_chunk_rank"] is not None and a["key_chunk_rank"] <= 2)
    # the hashing retriever matches the question's words "pass key" in the key's statement
    assert rag["key_retrieved"] == 1.0


def test_a_trials_prompts_are_read_once_where_they_agree_and_answered_as_alone(eval_setup, tmp_path):
    """The MemLong methods read what one trial's prompts share (the haystack up to the shallowest
    needle) once: every answer is the one a fresh memory reading that prompt whole gives, and the
    model reads fewer tokens than the prompts hold."""
    import argparse

    from memlong.recipes.eval_common import generate_answer
    from memlong.recipes.eval_passkey import passkey_cases

    out = tmp_path / "pk.json"
    argv = ["--lengths", "700", "--depths", "0.2,0.5,0.8", "--trials", "2", "--seed", "3"]
    model, tok = load_memlong_model(str(eval_setup / "model"), retriever="hashing")
    read = []
    real = type(model).ingest
    type(model).ingest = lambda self, ids, *a, **k: read.append(ids.shape[1]) or real(self, ids, *a, **k)
    try:
        assert (
            main(
                ["eval", "passkey", "--model", str(eval_setup / "model"), "--retriever", "hashing", "--threads", "1"]
                + ["--data", str(eval_setup / "corpus"), *argv, "--methods", "memlong,memlong_no_memory"]
                + ["--json", str(out)]
            )
            == 0
        )
    finally:
        type(model).ingest = real
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 2 * 3 and all(len(r["answers"]) == 2 for r in rows)
    q = len(passkey_question_ids(tok))
    alone_total = 2 * 2 * 3 * (700 - q)  # 2 methods x 2 trials x 3 depths, each prompt but its question
    assert 0 < sum(read) < 0.85 * alone_total  # shared beginnings read once
    args = argparse.Namespace(data=str(eval_setup / "corpus"), split="test", seed=3, depths="0.2,0.5,0.8", trials=2)
    cases = {depth: trials for _, depth, trials in passkey_cases(args, tok, [700])}
    for r in rows:
        for (key, ids), a in zip(cases[r["depth"]], r["answers"]):
            alone = generate_answer(r["method"], model, None, tok, ids, 8, q, 512, context=(0, 700 - q))
            assert a["key"] == key and a["answer"] == alone
