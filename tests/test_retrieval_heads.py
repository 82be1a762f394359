"""The retrieval-head probe (:mod:`memlong.retrieval_heads`): needle cases from real text, Wu et al.'s
retrieval score read from the right attention entries, per KV head, and the heads it suggests."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from memlong.retrieval_heads import NeedleCase, kv_head_bytes, needle_cases, retrieval_scores, top_heads

from conftest import save_tiny_lm


def test_needle_cases_plant_the_key_and_end_with_its_answer(bpe_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir))
    texts = [open(torch.__file__.replace("__init__.py", "functional.py")).read()[:20000]]
    cases = needle_cases(tok, texts, 3, 300, seed=1)
    assert len({c.key for c in cases}) == 3
    for case in cases:
        lo, hi = case.needle
        assert len(case.ids) == 300
        assert case.key in tok.decode(case.ids[lo:hi]) and case.key not in tok.decode(case.ids[:lo])
        assert tok.decode(case.ids[case.answer :]).strip() == case.key
        assert "What is the pass key?" in tok.decode(case.ids[hi : case.answer])
    assert 0 < cases[0].needle[0] < cases[1].needle[0] < cases[2].needle[0]  # depths spread evenly


class FakeLM(torch.nn.Module):
    """A causal LM whose attention maps over the answer are given: reads the context, then returns
    ``att`` ``[L, H, A, T]`` as its attentions and logits predicting ``predict``."""

    def __init__(self, att, predict, vocab=50):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.att, self.predict, self.vocab = att, predict, vocab
        self.calls = []

    def forward(self, input_ids, use_cache=False, cache=None, output_attentions=False):
        self.calls.append((input_ids.shape[1], cache, output_attentions))
        logits = torch.zeros(1, input_ids.shape[1], self.vocab)
        logits[0, torch.arange(len(self.predict)), self.predict] = 1.0
        return type("Out", (), {"cache": "cache", "attentions": tuple(self.att[:, None]), "logits": logits})()


def test_scores_read_the_right_attention_entries():
    """Needle at 4..9 holding 7 1 3; answer 7 1 3 at 13..15. Query head 0 attends to the needle
    token being copied, 1 to the haystack, 2 to a needle token that is not the one copied, 3 to
    everything alike; two KV heads of two query heads each."""
    ids = [20, 21, 22, 23, 30, 7, 1, 3, 31, 32, 40, 41, 42, 7, 1, 3]
    case = NeedleCase(ids, (4, 10), 13, "713")
    A, T = 3, 15  # queries 12..14 predict the answer; keys 0..14
    att = torch.zeros(2, 4, A, T)
    for i, pos in enumerate([5, 6, 7]):
        att[:, 0, i, pos] = 1.0
        att[:, 1, i, 0] = 1.0
        att[:, 2, i, 8] = 1.0
    att[:, 3] = 1.0 / T
    att[1, 0, 2] = 0  # layer 2's head 0 misses the last token: it looks at the haystack
    att[1, 0, 2, 1] = 1.0
    model = FakeLM(att, torch.tensor([7, 1, 9]))
    s = retrieval_scores(model, case)
    assert model.calls == [(12, None, False), (3, "cache", True)]  # the context once, then the answer's queries
    assert s.tokens == 3 and s.correct == 2
    assert s.hits.tolist() == [[3, 0, 0, 0], [2, 0, 0, 0]]
    torch.testing.assert_close(s.mass[0], torch.tensor([3.0, 0.0, 3.0, 3 * 6 / T]))
    score, mass = s.per_kv_head(2)
    torch.testing.assert_close(score, torch.tensor([[1.0, 0.0], [2 / 3, 0.0]]))
    torch.testing.assert_close(mass, torch.tensor([[1.0, 1.0], [2 / 3, 1.0]]))
    both = s + s
    assert both.tokens == 6 and torch.equal(both.per_kv_head(2)[0], score)


def test_top_heads_rank_by_score_then_needle_mass():
    score = torch.tensor([[0.0, 0.5, 0.0], [1.0, 0.0, 0.5]])
    mass = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.0, 0.3]])
    assert top_heads(score, mass, 1) == ((2, 0),)
    assert top_heads(score, mass, 2) == ((2, 0), (2, 2))  # a tie at 0.5: the larger needle mass wins
    assert top_heads(score, mass, 4) == ((1, 0), (1, 1), (2, 0), (2, 2))  # then the best needle mass
    assert kv_head_bytes(64, torch.bfloat16) == 256 and kv_head_bytes(64, torch.int8) == 128 + 8


@torch.no_grad()
def test_on_a_real_model_the_cache_split_reads_what_full_attention_does(tmp_path, bpe_tokenizer_dir):
    folder = save_tiny_lm(tmp_path / "lm", bpe_tokenizer_dir, layers=2)
    model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    (case,) = needle_cases(tok, [open(torch.__file__).read()[:30000]], 1, 200)
    s = retrieval_scores(model, case)
    full = model(input_ids=torch.tensor([case.ids]), output_attentions=True).attentions
    lo, hi = case.needle
    q = torch.arange(case.answer - 1, len(case.ids) - 1)
    mass = torch.stack([a[0][:, q, lo:hi].sum((-1, -2)) for a in full])
    torch.testing.assert_close(s.mass, mass, atol=1e-5, rtol=0)
    assert s.hits.shape == (2, 8) and s.tokens == len(case.ids) - case.answer
