"""What several `memlong eval` tasks share: their methods, loading the models, running one
measurement (a skip or failure is reported, never a number), greedy answers, ``--lengths`` and
the JSON report. The tasks themselves are :mod:`memlong.recipes.eval_ppl`,
:mod:`~memlong.recipes.eval_passkey`, :mod:`~memlong.recipes.eval_icl` and
:mod:`~memlong.recipes.eval_ruler`; :mod:`memlong.recipes.eval` builds their sub-commands.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

#: The methods of the tasks that answer a question after a context (passkey, ruler); ``rag`` (the
#: base model on the top-k chunks as text, :mod:`memlong.rag`) needs the context's span in the prompt.
METHODS = ("memlong", "memlong_no_memory", "base_full", "base_truncated", "rag")
#: Methods that need the base model loaded beside the MemLong model.
BASE_METHODS = ("base_full", "base_truncated", "in_context", "rag")
#: ``--data`` of the tasks that read documents.
DATA_HELP = (
    "a corpus folder (its --split), a .jsonl file, a text file (one document), a folder of .txt files, "
    "or a datasets name"
)


def load_models(args, methods):
    """(tokenizer, MemLong model, base model or None, base window, base path). The base model is
    loaded only when one of ``methods`` needs it (:data:`BASE_METHODS`)."""
    import torch
    from transformers import AutoModelForCausalLM

    from memlong.config import apply_overrides
    from memlong.pretrained import base_model_of, load_memlong_model

    dtype = getattr(torch, args.dtype)  # --dtype: float32 or bfloat16, both models alike
    model, tok = load_memlong_model(args.model, retriever=args.retriever, dtype=dtype)
    apply_overrides(model, args.overrides)
    base_path = args.base_model or base_model_of(args.model)
    need_base = any(m in BASE_METHODS for m in methods)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).eval() if need_base else None
    window = int(getattr((base or model).config, "max_position_embeddings", 2048))
    return tok, model, base, window, base_path


def run_by_length(args, methods: list[str], default_lengths: str, measure, plot, cell, same: tuple[str, ...]) -> int:
    """A task measured at ``--lengths`` (default: ``default_lengths``): loads the models, runs
    ``measure(args, tok, model, base, base_window, lengths, methods, have)``, which yields result
    rows, skipping the cells in ``have``, and writes the report (``--json``, rewritten after every
    row: a run cut short keeps what it measured) and ``plot`` (``--plot``). ``cell(row)`` names a
    row's cell and ``same`` the flags a resumed run must share (:func:`resumed_report`)."""
    lengths = parse_lengths(args.lengths or default_lengths)
    done = resumed_report(args, same)
    tok, model, base, base_window, base_path = load_models(args, methods)
    results, have = resumed_results(args, done, model, base_path, cell)
    for row in measure(args, tok, model, base, base_window, lengths, methods, have):
        results.append(row)
        write_report(args, results, model, base_path, base_window, quiet=True)
    write_report(args, results, model, base_path, base_window, plot)
    return 0


def resumed_report(args, same: tuple[str, ...]) -> dict | None:
    """With ``--resume``: the report in ``--json`` to continue (None without ``--resume`` or when
    the file does not exist yet); a MemLongConfigError, before any model loads, when it is not a
    report of this task or was measured with other values of the flags ``same`` (those that
    decide the inputs and how they are read)."""
    from memlong.config import MemLongConfigError

    if not args.resume:
        return None
    if not args.json:
        raise MemLongConfigError("--resume needs --json: the report of the run to continue")
    path = Path(args.json)
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except ValueError as e:
        raise MemLongConfigError(f"--resume: {path} is not JSON ({e}); use a new --json") from None
    if not isinstance(report, dict) or not isinstance(report.get("config"), dict) or "results" not in report:
        raise MemLongConfigError(f"--resume: {path} is not an eval report (no config and results); use a new --json")
    config = report["config"]
    if config.get("task") != args.task:
        raise MemLongConfigError(f"--resume: {path} is an eval {config.get('task')} report, not eval {args.task}")
    for key in (*same, "dtype"):
        theirs = config.get(key, "float32" if key == "dtype" else None)  # (a report from before --dtype: float32)
        if theirs != getattr(args, key):
            flag = {"overrides": "--set", "requery": "requery (--no-requery)"}.get(key, f"--{key.replace('_', '-')}")
            raise MemLongConfigError(
                f"--resume: {path} was measured with {flag} {theirs!r}, this run has "
                f"{getattr(args, key)!r}; give the same or use a new --json"
            )
    return report


def resumed_results(args, done: dict | None, model, base_path, cell) -> tuple[list[dict], set]:
    """The rows of a resumed report (:func:`resumed_report`) and their cells (``cell(row)``), after
    checking that it was measured with this MemLong config and base model."""
    from memlong.config import MemLongConfigError

    if done is None:
        return [], set()
    diff = model.memlong_config.differences(done["config"].get("memlong") or {})
    if diff:
        raise MemLongConfigError(
            f"--resume: {args.json} was measured with another MemLong config (differs in {diff}); use a new --json"
        )
    if done["config"].get("base_model") != base_path:
        raise MemLongConfigError(
            f"--resume: {args.json} was measured with the base model "
            f"{done['config'].get('base_model')!r}, this run has {base_path!r}; use a new --json"
        )
    results = list(done["results"])
    have = {cell(r) for r in results}
    print(f"--resume: {len(have)} cells already in {args.json}", flush=True)
    return results, have


def parse_lengths(text: str) -> list[int]:
    """``--lengths``: comma-separated integers >= 2, sorted."""
    try:
        lengths = sorted(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 2:
        raise SystemExit(f"--lengths must be comma-separated integers >= 2; got {text}")
    return lengths


def methods_reported(given: str | None, results: list[dict]) -> str | None:
    """``--methods`` as a report records it: every method it has rows of (a resumed report keeps
    what an earlier run measured with other methods), then those given, so that its command
    rebuilds every row; None (all of the task's) stays None."""
    if not given:
        return given
    return ",".join(dict.fromkeys([r["method"] for r in results if r.get("method")] + given.split(",")))


def write_report(
    args, results: list[dict], model, base_path, base_window, plot=None, quiet=False, extra: dict | None = None
) -> dict:
    """The run's JSON (``--json``): its results and config (every flag, the MemLong config as run,
    the base model and the retriever), from which :func:`memlong.report.eval_command` rebuilds the
    command; its plot (``--plot``), drawn by ``plot(results, path)``; and its Markdown beside the
    JSON (:func:`memlong.report.write_markdown`). ``quiet``: a partial report, rewritten as a long
    run goes (no "wrote" line, no Markdown). ``extra``: more top-level entries (summaries of the
    results)."""
    report = {
        "results": results,
        **(extra or {}),
        "config": {
            **vars(args),
            "methods": methods_reported(args.methods, results),
            "memlong": model.memlong_config.to_dict(),
            "base_model": base_path,
            "base_window": base_window,
            "retriever_info": model.memlong_retriever.describe(),
        },
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        if not quiet:
            print(f"wrote {args.json}")
    if args.plot and plot is not None:
        plot(results, args.plot)
    if args.json and not quiet:  # after the plot, which it links
        from memlong.report import write_markdown

        print(f"wrote {write_markdown(report, args.json)}")
    return report


class Skip(Exception):
    """Raised inside :func:`measured`: this measurement is not attempted (the message says why)."""


@contextlib.contextmanager
def measured(row: dict, key: str, **on_failure):
    """Runs one measurement of ``row``: a skip or a failure (out of memory, a runtime error)
    becomes ``row[key] = None`` with a note saying why, never a made-up number; records seconds."""
    import torch

    t0 = time.perf_counter()
    try:
        yield
    except Skip as e:
        row.update({key: None, "note": f"skipped: {e}", **on_failure})
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        row.update({key: None, "note": f"failed: {type(e).__name__}: {str(e)[:200]}", **on_failure})
    row["seconds"] = round(time.perf_counter() - t0, 2)


def generate_answer(
    method: str,
    model,
    base,
    tok,
    ids,
    new_tokens: int,
    requery,
    base_window: int,
    stop=None,
    memory=None,
    read: int = 0,
    context: tuple[int, int] | None = None,
    retrieved: list | None = None,
) -> str:
    """The greedy continuation of ``ids`` ``[1, L]`` by ``method``, decoded: the MemLong model with a
    fresh memory (retrieval on for ``memlong``, off for ``memlong_no_memory``), retrieving again with
    the prompt's last ``requery`` tokens (the question; ``False``: not); or the base model over the
    whole prompt (``base_full``) or its last ``base_window - new_tokens`` tokens (``base_truncated``);
    or the base model on the retrieval-augmented prompt (``rag``, :func:`memlong.rag.rag_prompt`:
    the ``top_k`` chunks of the context ``ids[0, start:end]`` most similar to the question
    ``ids[0, end:]``, as text; ``context=(start, end)`` is required; a prompt over ``base_window``
    is a :class:`Skip`; ``retrieved``: a list the :class:`~memlong.rag.RagPrompt` is appended to,
    for a caller to look into afterwards).
    ``stop``: a stopping criterion factory ``tok -> StoppingCriteria``, judging the text from the
    first token generated (with ``requery`` the prompt that ``generate`` runs on is the question
    alone, not ``ids``; :func:`memlong.qa.answer_end` is one). ``memory``: the
    fresh memory the MemLong methods read into (default: a new one), for a caller to look into
    afterwards; ``read``: how many of ``ids``' first tokens that memory has read already
    (:func:`memlong.evaluation.shared_reading`), so only the rest is given to ``generate``."""
    import torch
    from transformers import StoppingCriteriaList

    kw = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    if method in ("memlong", "memlong_no_memory"):
        if stop is not None:
            kw["stopping_criteria"] = StoppingCriteriaList([stop(tok)])
        if memory is None:
            memory = model.new_memory(1, retrieval=method == "memlong")
        if read and requery is False:
            raise ValueError("read= needs requery: a memory that has read text continues with the new tokens")
        ids = ids[:, read:]
        out = model.generate(ids, memory=memory, attention_mask=torch.ones_like(ids), requery=requery, **kw)
    else:
        if method == "base_truncated":
            ids = ids[:, -(base_window - new_tokens) :]
        elif method == "rag":
            ids = _rag_ids(model, ids, context, new_tokens, base_window, retrieved)
        if stop is not None:
            kw["stopping_criteria"] = StoppingCriteriaList([stop(tok)])
        with torch.no_grad():
            out = base.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _rag_ids(model, ids, context, new_tokens: int, base_window: int, retrieved: list | None):
    """The ``rag`` prompt ``[1, L']`` of ``ids`` ``[1, L]`` (see :func:`generate_answer`)."""
    import torch

    from memlong.rag import RagPromptTooLong, rag_prompt

    if context is None:
        raise ValueError(
            "generate_answer(method='rag') needs context=(start, end): the span of the context in "
            "ids, the question being ids[end:]; pass it, or use another method"
        )
    if ids.shape[0] != 1:
        raise ValueError(f"generate_answer(method='rag') answers one prompt at a time; got {ids.shape[0]} rows")
    try:
        prompt = rag_prompt(model, ids[0], context, new_tokens, base_window)
    except RagPromptTooLong as e:
        raise Skip(str(e)) from None
    if retrieved is not None:
        retrieved.append(prompt)
    return torch.tensor([prompt.ids], dtype=ids.dtype, device=ids.device)
