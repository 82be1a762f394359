"""The rag baseline (:mod:`memlong.rag`): the memory's chunks of a context, the top-k by the
retriever's cosine to the question, put back as text in document order; and the ``rag`` method of
:func:`memlong.recipes.eval_common.generate_answer`."""

import pytest
import torch

from memlong.rag import RagPromptTooLong, chunk_spans, embedding_bytes_per_token, rag_prompt, top_k
from memlong.recipes.eval_common import Skip, generate_answer

from conftest import gated_llama

TAU = 8  # gated_llama's chunk_size (top_k 2, 512 positions)


class Tok:
    """The tokenizer generate_answer needs: a pad id and decode."""

    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(t)) for t in ids)


def planted(length=80, plants=None, seed=0):
    """Random low token ids (0..59) with distinctive high ones (60..100) planted at given positions."""
    ids = torch.randint(0, 60, (length,), generator=torch.Generator().manual_seed(seed)).tolist()
    for at, tokens in (plants or {}).items():
        ids[at : at + len(tokens)] = tokens
    return ids


def test_chunks_are_cut_where_the_memory_cuts_them():
    assert chunk_spans(0, 20, 8) == [(0, 8), (8, 16), (16, 20)]
    assert chunk_spans(5, 30, 8) == [(5, 8), (8, 16), (16, 24), (24, 30)]  # a context after a preamble
    assert chunk_spans(8, 16, 8) == [(8, 16)] and chunk_spans(3, 3, 8) == []
    with pytest.raises(ValueError, match="start <= end"):
        chunk_spans(9, 4, 8)


def test_rag_picks_the_chunk_most_like_the_question_and_keeps_document_order():
    model, _ = gated_llama()
    fact = list(range(70, 78))  # chunk 6 of the context holds the question's tokens; chunk 1 half of them
    ids = planted(80, {48: fact, 8: fact[:4]}) + [74, 75, 76, 77, 70, 71]  # context 0..80, then the question
    rag = rag_prompt(model, ids, (0, 80))
    assert rag.ranking[:2] == [6, 1] and rag.chosen == [1, 6]  # best first in the ranking, document order chosen
    assert rag.ids == ids[8:16] + ids[48:56] + ids[80:]
    assert rag.scores[6] > rag.scores[1] > max(s for i, s in enumerate(rag.scores) if i not in (1, 6))
    # the scores are the cosines of the retriever the memory uses, on the chunks' and the question's tokens
    emb = model.memlong_retriever.embed([ids[a:b] for a, b in rag.spans] + [ids[80:]])
    torch.testing.assert_close(torch.tensor(rag.scores), emb[:-1] @ emb[-1])
    assert rag.record() == {
        "rag_chunks": [1, 6],
        "rag_scores": [round(rag.scores[1], 4), round(rag.scores[6], 4)],
        "rag_context_chunks": 10,
    }
    # a preamble before the context stays where it is; chunks are cut at the memory's boundaries
    pre = rag_prompt(model, ids, (5, 80), k=1)
    assert pre.spans[0] == (5, 8) and pre.chosen == [6] and pre.ids == ids[:5] + ids[48:56] + ids[80:]


def test_chunks_are_embedded_in_one_batch():
    model, _ = gated_llama()
    calls = []
    embed = model.memlong_retriever.embed
    model.memlong_retriever.embed = lambda chunks: calls.append(len(chunks)) or embed(chunks)
    rag_prompt(model, planted(80) + [70, 71], (0, 80))
    assert calls == [10 + 1]  # ten chunks and the question


def test_the_prompt_must_fit_the_base_models_context():
    model, _ = gated_llama()
    ids = planted(600) + [70, 71, 72]  # longer than the 512 positions: the rag prompt is what must fit
    rag = rag_prompt(model, ids, (0, 600), new_tokens=5)
    assert len(rag.ids) == 2 * TAU + 3
    assert len(rag_prompt(model, ids, (0, 600), new_tokens=5, window=len(rag.ids) + 5).ids) == len(rag.ids)
    with pytest.raises(RagPromptTooLong, match=r"has 19 tokens .* over the base model's 23-token context"):
        rag_prompt(model, ids, (0, 600), new_tokens=5, window=23)
    with pytest.raises(RagPromptTooLong, match="512-token"):  # the default: the model's max_position_embeddings
        rag_prompt(model, planted(600) + [70] * 500, (0, 600))
    with pytest.raises(ValueError, match="question is empty"):
        rag_prompt(model, ids, (0, len(ids)))


def test_top_k_ranks_items_of_any_length():
    model, _ = gated_llama()
    items = [[1, 2, 3], [70, 71, 72, 73, 74], [5, 6], [70, 71, 9]]
    chosen, ranking, scores = top_k(model.memlong_retriever, items, [70, 71, 72, 73], 2)
    assert ranking[:2] == [1, 3] and chosen == [1, 3] and len(scores) == 4
    assert top_k(model.memlong_retriever, [], [1], 2) == ([], [], [])


def test_embedding_bytes_per_token():
    assert embedding_bytes_per_token(10, 1280, 384) == 10 * 384 * 4 / 1280
    model, _ = gated_llama()
    rag = rag_prompt(model, planted(80) + [70], (0, 80))
    assert rag.bytes_per_token() == 10 * 32 * 4 / 80  # ten chunks, hashing dim 32, 80 context tokens


def test_generate_answer_rag_runs_the_base_model_on_the_rag_prompt():
    model, base = gated_llama()
    tok = Tok()
    ids = torch.tensor([planted(80, {48: list(range(70, 78))}) + [74, 75, 76, 77]])
    got: list = []
    answer = generate_answer("rag", model, base, tok, ids, 4, False, 512, context=(0, 80), retrieved=got)
    assert len(got) == 1 and got[0].chosen == rag_prompt(model, ids[0], (0, 80)).chosen
    prompt = torch.tensor([got[0].ids])
    want = base.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False, pad_token_id=0
    )
    assert answer == tok.decode(want[0, prompt.shape[1] :])
    with pytest.raises(ValueError, match=r"needs context=\(start, end\)"):
        generate_answer("rag", model, base, tok, ids, 4, False, 512)
    with pytest.raises(Skip, match="over the base model's 20-token context"):  # recorded as skipped, not made up
        generate_answer("rag", model, base, tok, ids, 4, False, 20, context=(0, 80))


def test_chunk_embeddings_computed_once_give_the_same_prompt():
    from memlong.rag import embed_context

    model, _ = gated_llama()
    doc = planted(80, {48: list(range(70, 78))})
    emb = embed_context(model, doc, (0, 80))
    for question in ([74, 75, 76, 77], [1, 2, 3]):
        ids = doc + question
        assert rag_prompt(model, ids, (0, 80), embeddings=emb) == rag_prompt(model, ids, (0, 80))
    with pytest.raises(ValueError, match="10 chunk embeddings for the 9 chunks"):
        rag_prompt(model, doc + [1], (8, 80), embeddings=emb)
