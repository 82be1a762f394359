"""Answering questions about what a model read: the question's prompt, where a plain answer ends
(and that it does not open by echoing the question), a greedy answer from a memory (retrieval
focused on the question) and the rag baseline's answer from the same text. `memlong ask` and
`memlong demo` share them.
"""

from __future__ import annotations

import time

QUESTION_SEPARATOR = "\n\n"  # a question starts after a blank line
#: where a plain answer ends: a new "Question:" (the model asking itself the next one) or a blank
#: line once the answer has begun (a list may open with ":" and a blank line): :func:`plain_answer`
STOPS = ("\nQuestion:", "\n\n")


class BaseModelUnavailable(ValueError):
    """The base model a rag answer needs could not be loaded; the message says which and what to do."""


def question_ids(tok, question: str, chat: bool) -> tuple[list[int], list[int]]:
    """(prompt ids, the ids retrieval embeds). plain: the prompt ``Question: ...`` / ``Answer:``
    after a blank line, embedded whole (``generate(requery=True)``); chat: the chat template
    around the question, retrieval on the question alone (the template's system prompt would
    blur its embedding)."""
    if chat:
        text = tok.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        prompt = tok(QUESTION_SEPARATOR + text, add_special_tokens=False)["input_ids"]
        return prompt, tok(question, add_special_tokens=False)["input_ids"]
    prompt = tok(f"{QUESTION_SEPARATOR}Question: {question}\nAnswer:", add_special_tokens=False)["input_ids"]
    return prompt, prompt


def plain_answer(text: str) -> tuple[str, bool]:
    """The plain answer in generated ``text`` and whether it has ended: from its first non-blank
    character to the first of :data:`STOPS`, a blank line counting only after the answer's first
    letter or digit (as RULER scores a whole generation, a list opening ":\\n\\n- 4154693" is not cut
    to ":")."""
    text = text.lstrip()
    begun = next((i for i, c in enumerate(text) if c.isalnum()), len(text))
    ends = [j for stop in STOPS if (j := text.find(stop, begun if stop.isspace() else 0)) >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


#: how a plain prompt labels its question: an answer that opens with it echoes the question
QUESTION_LABELS = ("Question", " Question")


def no_echo(tok, start: int | None = None):
    """A logits processor: a plain answer (generated from column ``start`` on; None: from the first
    token generated) may not open with the question's label (:data:`QUESTION_LABELS`, where the
    tokenizer holds one as a single token): while it has generated nothing but whitespace, the label
    is banned, so the model gives its next most likely start instead of repeating ``Question: ...``
    (after a newline, too). Once the answer has begun, every token is free (a blank line and a new
    ``Question:`` end it, :func:`plain_answer`). One processor per ``generate`` call."""
    import torch
    from transformers import LogitsProcessor

    banned = sorted(
        {ids[0] for label in QUESTION_LABELS if len(ids := tok.encode(label, add_special_tokens=False)) == 1}
    )

    class NoEcho(LogitsProcessor):
        begin = start

        def __call__(self, input_ids, scores):
            if self.begin is None:  # first call: nothing generated yet
                self.begin = input_ids.shape[1]
            rows = [b for b in range(input_ids.shape[0]) if not tok.decode(input_ids[b, self.begin :]).strip()]
            if rows and banned:
                scores = scores.clone()
                scores[torch.tensor(rows)[:, None], torch.tensor(banned)[None, :]] = -torch.inf
            return scores

    return NoEcho()


def answer_end(tok, start: int | None = None):
    """A stopping criterion: a plain answer (generated from column ``start`` on; None: from the first
    token generated, whatever prompt the ``generate`` call running it was given) ends where
    :func:`plain_answer` says. One criterion per ``generate`` call."""
    import torch
    from transformers import StoppingCriteria

    class AnswerEnd(StoppingCriteria):
        begin = start

        def __call__(self, input_ids, scores, **kwargs):
            if self.begin is None:  # first call: one token generated
                self.begin = input_ids.shape[1] - 1
            done = plain_answer(tok.decode(input_ids[0, self.begin :], skip_special_tokens=True))[1]
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return AnswerEnd()


def answer(model, tok, memory, question: str, chat: bool, max_new_tokens: int) -> tuple[str, float]:
    """Greedy answer to ``question`` from ``memory`` (which the answer reads into: pass a copy to
    keep it), and its seconds. Retrieval is focused on the question (``generate(requery=True)``;
    with the chat template, on the question without the template around it)."""
    import torch

    prompt, query = question_ids(tok, question, chat)
    ids = torch.tensor([prompt], device=model.device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    t0 = time.perf_counter()
    if chat:
        model.focus_question(memory, [query[-model.memlong_config.chunk_size :]])
        try:
            out = model.generate(ids, memory=memory, **kw)
        finally:
            memory.unfocus()
    else:  # one paragraph, not opening with "Question": stop at a blank line or another "Question:"
        from transformers import LogitsProcessorList, StoppingCriteriaList

        out = model.generate(
            ids,
            memory=memory,
            requery=True,
            stopping_criteria=StoppingCriteriaList([answer_end(tok, len(prompt))]),
            logits_processor=LogitsProcessorList([no_echo(tok, len(prompt))]),
            **kw,
        )
    seconds = time.perf_counter() - t0
    text = tok.decode(out[0, len(prompt) :], skip_special_tokens=True)
    if not chat:
        text = plain_answer(text)[0]
    return text.strip(), seconds


def rag_answer(model, base, tok, doc: list[int], embeddings, question: str, chat: bool, max_new_tokens: int):
    """The rag baseline's answer to ``question`` about ``doc`` (the files' token ids; ``embeddings``
    their chunks' from :func:`memlong.rag.embed_context`), put as :func:`answer` puts it: (the
    answer, the :class:`~memlong.rag.RagPrompt`, seconds)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    from memlong.rag import rag_generate

    prompt, _ = question_ids(tok, question, chat)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stop = (
        {}
        if chat
        else {
            "stopping_criteria": StoppingCriteriaList([answer_end(tok)]),
            "logits_processor": LogitsProcessorList([no_echo(tok)]),
        }
    )
    t0 = time.perf_counter()
    rag, out = rag_generate(
        model, base, doc + prompt, (0, len(doc)), max_new_tokens, embeddings=embeddings, pad_token_id=pad, **stop
    )
    text = tok.decode(out, skip_special_tokens=True)
    if not chat:
        text = plain_answer(text)[0]
    return text.strip(), rag, time.perf_counter() - t0


def load_base(path: str):
    """The base model at ``path`` (for a MemLong model, :func:`memlong.pretrained.base_model_of`
    names it), float32, eval mode: what the rag baseline answers with. Raises
    :class:`BaseModelUnavailable` saying which base could not be loaded."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    except (OSError, ValueError) as e:
        raise BaseModelUnavailable(
            f"cannot load the base model {path!r} that rag answers with ({e}); pass --model "
            "with a MemLong directory whose base is available"
        ) from None
