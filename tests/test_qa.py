"""Answering questions (memlong.qa): where a plain answer ends, judged as it is generated."""

import pytest
import torch
from transformers import AutoTokenizer


def test_a_plain_answer_ends_at_a_blank_line_or_the_next_question(bpe_tokenizer_dir):
    from memlong.qa import answer_end

    tok = AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir))
    prompt = tok("\n\nQuestion: What is the code?\nAnswer:", add_special_tokens=False)["input_ids"]
    end = answer_end(tok, len(prompt))

    def stops(generated: str) -> bool:
        ids = torch.tensor([prompt + tok(generated, add_special_tokens=False)["input_ids"]])
        return bool(end(ids, None)[0])

    assert not stops("\n\nThe code is 48213.")  # leading blank lines are not an end
    assert stops("\n\nThe code is 48213.\n\nThe code") and stops(" 48213.\nQuestion: and")
    assert not stops(" 48213.\nIt opens the vault.")


def test_a_plain_answer_without_a_start_is_judged_from_the_first_token_generated(bpe_tokenizer_dir):
    # generate(requery=N) runs the criterion on the question alone, not on the whole prompt
    from memlong.qa import answer_end

    tok = AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir))
    prompt = tok("Some text.\n\nQuestion: What is the code?\nAnswer:", add_special_tokens=False)["input_ids"]
    end = answer_end(tok)
    assert not end(torch.tensor([prompt + tok(" 4", add_special_tokens=False)["input_ids"]]), None)[0]
    assert end(torch.tensor([prompt + tok(" 48213.\n\nThe", add_special_tokens=False)["input_ids"]]), None)[0]


@pytest.mark.parametrize(
    "generated, answer, ended",
    [
        (" 48213.\n\nThe code", "48213.", True),
        ("\n\nThe code is 48213.\nQuestion: and", "The code is 48213.", True),
        (":\n\n- 4154693\n- 1552141\n\nMore", ":\n\n- 4154693\n- 1552141", True),  # a list is not cut to ":"
        (":\nQuestion: what", ":", True),  # a new question ends even an answer not begun
        (":\n\n", ":\n\n", False),
        (" 4154693.", "4154693.", False),
    ],
)
def test_a_plain_answer_ends_at_a_new_question_or_a_blank_line_once_begun(generated, answer, ended):
    from memlong.qa import plain_answer

    assert plain_answer(generated) == (answer, ended)


def test_an_answer_may_not_open_with_the_question_label():
    """no_echo: while the answer holds nothing but whitespace, the label a plain prompt gives its
    question ("Question", where it is one token) is banned, so the model gives its next most likely
    start (a newline first does not let the echo through); once the answer has begun, every token is free."""
    from memlong.qa import no_echo

    class Tok:
        text = {0: "", 1: "\n", 2: "The"}

        def encode(self, text, add_special_tokens=False):
            return {"Question": [7], " Question": [8]}.get(text, [1, 2])

        def decode(self, ids):
            return "".join(self.text[int(i)] for i in ids)

    def ids(*tokens):
        return torch.tensor([[0] * 5 + list(tokens)])

    first = no_echo(Tok(), start=5)
    scores = torch.zeros(1, 10)
    out = first(ids(), scores)
    assert out[0, 7] == out[0, 8] == -torch.inf and bool((out[0, :7] == 0).all()) and bool((scores == 0).all())
    assert first(ids(1), torch.zeros(1, 10))[0, 7] == -torch.inf  # after a newline: still not begun
    assert bool((first(ids(1, 2), torch.zeros(1, 10)) == 0).all())  # begun: free
    unknown_start = no_echo(Tok())  # start=None: the first call is the first token
    assert unknown_start(ids(), torch.zeros(1, 10))[0, 8] == -torch.inf
    assert bool((unknown_start(ids(2), torch.zeros(1, 10)) == 0).all())

    class Split(Tok):  # labels of several tokens: nothing is banned (their first token may start an answer)
        def encode(self, text, add_special_tokens=False):
            return [3, 4]

    assert bool((no_echo(Split(), start=5)(ids(), torch.zeros(1, 10)) == 0).all())
