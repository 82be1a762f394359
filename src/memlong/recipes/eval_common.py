"""What several `memlong eval` tasks share: their methods, loading the models, running one
measurement (a skip or failure is reported, never a number), greedy answers, ``--lengths`` and
the JSON report. The tasks themselves are :mod:`memlong.recipes.eval_ppl`,
:mod:`~memlong.recipes.eval_passkey`, :mod:`~memlong.recipes.eval_icl` and
:mod:`~memlong.recipes.eval_ruler`; :mod:`memlong.recipes.eval` builds their sub-commands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

#: The methods of the tasks measured by length (ppl, passkey, ruler).
METHODS = ("memlong", "memlong_no_memory", "base_full", "base_truncated")
#: Methods that need the base model loaded beside the MemLong model.
BASE_METHODS = ("base_full", "base_truncated", "in_context")
#: ``--data`` of the tasks that read documents.
DATA_HELP = ("a corpus folder (its --split), a .jsonl file, a text file (one document), a folder of .txt files, "
             "or a datasets name")


# fields whose value shapes the weights (gates, trained layers): not changeable at reading time
_WEIGHT_FIELDS = ("mode", "memory_layer", "retrieval_layers", "gate_mode", "gate_activation")


def reading_overrides(config, overrides: list[str]):
    """``config`` with ``FIELD=VALUE`` overrides (VALUE in JSON; a bare word is taken as a string)."""
    from memlong.config import MemLongConfigError

    changes = {}
    for item in overrides:
        field, sep, raw = item.partition("=")
        field = field.strip()
        if not sep or not hasattr(config, field):
            raise MemLongConfigError(f"--set {item!r}: expected FIELD=VALUE with FIELD a MemLongConfig field")
        # training_free mode trains nothing: which layers bank and retrieve may change at reading time
        if field in _WEIGHT_FIELDS and not (config.mode == "training_free" and field == "retrieval_layers"):
            raise MemLongConfigError(f"--set {field}: the trained weights depend on it; it cannot change at reading time")
        try:
            changes[field] = json.loads(raw)
        except json.JSONDecodeError:
            changes[field] = raw
    return dataclasses.replace(config, **changes)


def load_models(args, methods):
    """(tokenizer, MemLong model, base model or None, base window, base path). The base model is
    loaded only when one of ``methods`` needs it (:data:`BASE_METHODS`)."""
    import torch
    from transformers import AutoModelForCausalLM

    from memlong.pretrained import base_model_of, load_memlong_model

    model, tok = load_memlong_model(args.model, retriever=args.retriever)
    if args.overrides:
        model.memlong_config = reading_overrides(model.memlong_config, args.overrides)
        model.memlong_config.validate_for_model(model.config.num_hidden_layers,
                                                getattr(model.config, "max_position_embeddings", None))
    base_path = args.base_model or base_model_of(args.model)
    need_base = any(m in BASE_METHODS for m in methods)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval() if need_base else None
    window = int(getattr((base or model).config, "max_position_embeddings", 2048))
    return tok, model, base, window, base_path


def run_by_length(args, methods: list[str], default_lengths: str, measure, plot) -> int:
    """A task measured at ``--lengths`` (default: ``default_lengths``): loads the models, runs
    ``measure(args, tok, model, base, base_window, lengths, methods)``, which yields result rows,
    and writes the report (``--json``, rewritten after every row: a run cut short keeps what it
    measured) and ``plot`` (``--plot``)."""
    lengths = parse_lengths(args.lengths or default_lengths)
    tok, model, base, base_window, base_path = load_models(args, methods)
    results = []
    for row in measure(args, tok, model, base, base_window, lengths, methods):
        results.append(row)
        write_report(args, results, model, base_path, base_window, quiet=True)
    write_report(args, results, model, base_path, base_window, plot)
    return 0


def parse_lengths(text: str) -> list[int]:
    """``--lengths``: comma-separated integers >= 2, sorted."""
    try:
        lengths = sorted(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 2:
        raise SystemExit(f"--lengths must be comma-separated integers >= 2; got {text}")
    return lengths


def write_report(args, results: list[dict], model, base_path, base_window, plot=None, quiet=False) -> dict:
    """The run's JSON (``--json``): its results and config (every flag, the MemLong config as run,
    the base model and the retriever), from which :func:`memlong.recipes.eval.eval_command`
    rebuilds the command; and its plot (``--plot``), drawn by ``plot(results, path)``. ``quiet``: no
    "wrote" line (a partial report, rewritten as a long run goes)."""
    report = {"results": results, "config": {**vars(args), "memlong": model.memlong_config.to_dict(),
                                             "base_model": base_path, "base_window": base_window,
                                             "retriever_info": model.memlong_retriever.describe()}}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        if not quiet:
            print(f"wrote {args.json}")
    if args.plot and plot is not None:
        plot(results, args.plot)
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


def generate_answer(method: str, model, base, tok, ids, new_tokens: int, requery, base_window: int,
                    stop=None, memory=None) -> str:
    """The greedy continuation of ``ids`` ``[1, L]`` by ``method``, decoded: the MemLong model with a
    fresh memory (retrieval on for ``memlong``, off for ``memlong_no_memory``), retrieving again with
    the prompt's last ``requery`` tokens (the question; ``False``: not); or the base model over the
    whole prompt (``base_full``) or its last ``base_window - new_tokens`` tokens (``base_truncated``).
    ``stop``: a stopping criterion factory ``(tok, start) -> StoppingCriteria``. ``memory``: the
    fresh memory the MemLong methods read into (default: a new one), for a caller to look into
    afterwards."""
    import torch
    from transformers import StoppingCriteriaList

    kw = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    if method in ("memlong", "memlong_no_memory"):
        if stop is not None:
            kw["stopping_criteria"] = StoppingCriteriaList([stop(tok, ids.shape[1])])
        if memory is None:
            memory = model.new_memory(1, retrieval=method == "memlong")
        out = model.generate(ids, memory=memory, attention_mask=torch.ones_like(ids), requery=requery, **kw)
    else:
        if method == "base_truncated":
            ids = ids[:, -(base_window - new_tokens):]
        if stop is not None:
            kw["stopping_criteria"] = StoppingCriteriaList([stop(tok, ids.shape[1])])
        with torch.no_grad():
            out = base.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
