"""`memlong eval ppl`: perplexity by input length (the paper's protocol, section 4.2, Table 1).

For each test document and each length L, the first L tokens form a window; only its last
``--score`` tokens (2048 by default; all of them when L is shorter) are scored, the prefix goes
to memory. Methods, side by side in one run:

* ``memlong``: the MemLong model with memory (fresh for every window);
* ``memlong_no_memory``: the same model and local window with retrieval off;
* ``base_full``: the base model over the whole window (where it fits: a failure or
  out-of-memory is reported as such, never a number);
* ``base_truncated``: the base model over the last ``max_position_embeddings`` tokens only.

    memlong eval ppl --model PATH --data PATH_OR_NAME --lengths 4096,16384 --json OUT.json

Without ``--model`` every task evaluates the default MemLong model (SmolLM2-135M-Instruct in
training-free mode, :func:`memlong.pretrained.load_memlong_model`); its base methods run its base.
``--data`` may also be a single text file (one document).

`memlong eval passkey`: a passkey (random digits) is stated once inside a haystack of real text
(held-out documents) at a given depth and asked for at the end; accuracy is the exact match of
the greedily generated digits, over several trials per length and depth, for the same methods.

    memlong eval passkey --model PATH --data PATH --lengths 4096,65536 --depths 0.1,0.5,0.9 --trials 3

`memlong eval icl`: in-context learning with demonstrations held in memory (section 4.3,
Table 2). Each test input follows ``--shots-memory`` M demonstrations, then ``--shots-context``
K more; the prediction is the label word with the highest log-probability after the input
(classification by scoring; multi-token words: the sum over their tokens). Every method reads
the same token stream, M demonstrations first, and differs only in what it can see:

* ``memlong``: the MemLong model, fresh memory per test input; the M demonstrations leave the
  local window (``--set local_window=N``) into the memory bank before the input is read;
* ``memlong_no_memory``: the same model and local window with retrieval off;
* ``in_context``: the base model with all K+M demonstrations in its context, only where every
  prompt fits its window (otherwise reported as skipped, with the reason).

The demonstrations are sampled once per trial (``--trials``, seeds ``--seed`` + t) and shared
by all test inputs of that trial; accuracy is the mean over trials. The run stops with an error
when no memory demonstration would reach the bank (memory would measure nothing) and says
which share of the memory demonstrations' tokens did (``memory_tokens_banked``): the rest is
still in the local window, seen by both MemLong methods. ``--data``: ``sst2``, ``mr``,
``subj``, ``sst5``, ``mpqa`` (through ``datasets``: SetFit/sst2, rotten_tomatoes, SetFit/subj,
SetFit/sst5, SetFit/mpqa), a ``.jsonl`` file or folder of ``{"text", "label"}`` lines
(``--labels``), or ``corpus-source:CORPUS_DIR``: short passages of a ``memlong data`` corpus
labelled ``python`` / ``manual`` / ``java`` by their source (see :mod:`memlong.data.icl`).

    memlong eval icl --model PATH --data corpus-source:runs/corpus --shots-context 4 --shots-memory 18 \
        --set local_window=512 --max-examples 60 --trials 3 --json icl.json --plot icl.png

`memlong eval ruler`: RULER's synthetic tasks (needles in a haystack, variable tracking, common
and frequent words) by length, for the same methods as ppl: see :mod:`memlong.recipes.eval_ruler`.

Each task is a sub-command with its own flags and ``--help``; the flags they share
(``--model``, ``--data``, ``--methods``, ``--seed``, ``--json``, ``--plot``, ...) mean the same in all.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path


METHODS = ("memlong", "memlong_no_memory", "base_full", "base_truncated")
ICL_METHODS = ("memlong", "memlong_no_memory", "in_context")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One sub-command per task (``memlong eval ppl|passkey|icl|ruler``), each with its own flags;
    the flags they share come from one parent parser, so they are spelled the same everywhere."""
    from memlong.recipes import eval_ruler

    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--model", default=None,
                        help="a MemLong directory (memlong train / save_pretrained) or a base LM (default: the default "
                             "MemLong model, SmolLM2-135M-Instruct in training-free mode)")
    shared.add_argument("--base-model", default=None,
                        help="base LM for the base methods (default: the model's base, from its memlong_base.json; "
                             "for the default model, SmolLM2-135M-Instruct)")
    shared.add_argument("--split", default="test", help="the split of --data to evaluate on")
    shared.add_argument("--seed", type=int, default=0)
    shared.add_argument("--methods", default=None, help="comma-separated methods (default: all of the task's)")
    shared.add_argument("--retriever", default="minilm",
                        help="minilm, hashing, embedding (the LM's own pooled input embeddings), or a "
                             "sentence-transformers name/path")
    shared.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                        help="override a reading-time MemLong config field, VALUE in JSON (repeatable), e.g. "
                             "--set bank_dtype=int8 --set retrieval_offsets=[0,1] --set top_k=8 (a bare word is a string)")
    shared.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    shared.add_argument("--json", default=None, metavar="OUT", help="write the results and the config here")
    shared.add_argument("--plot", default=None, metavar="PNG", help="write a plot of the results here")
    by_length = argparse.ArgumentParser(add_help=False)  # the tasks measured at input lengths
    by_length.add_argument("--lengths", default=None, help="comma-separated input lengths in tokens")
    by_length.add_argument("--max-base-length", type=int, default=16384,
                           help="base_full is not attempted above this length (reported as skipped)")

    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    data_help = ("a corpus folder (its --split), a .jsonl file, a text file (one document), a folder of .txt files, "
                 "or a datasets name")

    def task(name: str, summary: str, doc: str, *parents):
        return tasks.add_parser(name, parents=[shared, *parents], help=summary, description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    ppl = task("ppl", "perplexity by input length (the paper's Table 1)", _section("ppl"), by_length)
    ppl.add_argument("--data", required=True, help=data_help)
    ppl.add_argument("--score", type=int, default=2048, help="score the last N tokens of each window")
    ppl.add_argument("--repeat", type=int, default=0,
                     help="copy probe: each window ends with a copy of its own first N tokens and only the copy is "
                          "scored: with memory the copy's source is retrievable, without it (and for the base "
                          "truncated to its window) it is out of reach; base_full sees both copies. Measures whether "
                          "a model can use what it reads, apart from how often real text repeats itself")
    ppl.add_argument("--max-documents", type=int, default=8, help="documents per length (the longest first)")

    passkey = task("passkey", "passkey retrieval by length and depth", _section("passkey"), by_length)
    passkey.add_argument("--data", required=True, help=f"the haystack's text: {data_help}")
    passkey.add_argument("--depths", default="0.1,0.5,0.9", help="where the key is stated (fractions)")
    passkey.add_argument("--trials", type=int, default=3, help="trials per length and depth")
    passkey.add_argument("--no-requery", dest="requery", action="store_false",
                         help="answer with the memory retrieved before the question instead of retrieving again "
                              "with it (generate(requery=N), the default)")

    icl = task("icl", "in-context learning, demonstrations in memory (the paper's Table 2)", _section("icl"))
    icl.add_argument("--data", required=True,
                     help="sst2, mr, subj, sst5, mpqa (datasets), a .jsonl file / folder of {text, label} lines, or "
                          "corpus-source:CORPUS_DIR (passages labelled by source)")
    icl.add_argument("--shots-context", type=int, default=4, help="K demonstrations right before the test input")
    icl.add_argument("--shots-memory", type=int, default=18, help="M demonstrations read first, into memory")
    icl.add_argument("--trials", type=int, default=3, help="demonstration samples (accuracy is their mean)")
    icl.add_argument("--max-examples", type=int, default=100, help="test examples per trial")
    icl.add_argument("--labels", default=None, help="comma-separated label words (local data; replaces a task's own)")
    icl.add_argument("--demo-split", default=None,
                     help="split the demonstrations come from (default: train; corpus-source: validation)")

    eval_ruler.add_arguments(task("ruler", "RULER's synthetic tasks by length: needles, variable tracking, common and "
                                           "frequent words", eval_ruler.__doc__, by_length))


def _section(name: str) -> str:
    """The part of this module's docstring about ``memlong eval NAME`` (its --help description)."""
    parts = __doc__.split("`memlong eval ")
    return "`memlong eval " + next(part for part in parts if part.startswith(f"{name}`")).strip()


def eval_command(c: dict, json_path) -> str:
    """The ``memlong eval`` command line that wrote a result JSON, from its ``config`` record."""
    keys = {"ppl": ("split", "lengths", "score", "methods", "max_documents", "retriever"),
            "passkey": ("split", "lengths", "depths", "trials", "methods", "retriever"),
            "icl": ("shots_context", "shots_memory", "trials", "max_examples", "methods", "retriever"),
            "ruler": ("split", "lengths", "tasks", "haystacks", "samples", "seed", "methods", "retriever")}[c["task"]]
    args = "".join(f" --{k.replace('_', '-')} {c[k]}" for k in keys if c.get(k) is not None)
    if c["task"] == "ppl" and c.get("repeat"):
        args += f" --repeat {c['repeat']}"
    if c["task"] in ("passkey", "ruler") and c.get("requery") is False:
        args += " --no-requery"
    sets = "".join(f" --set {o}" for o in c.get("overrides") or [])
    # the default model is what a command without --model evaluates
    model = "" if c.get("model") in (None, "default") else f" --model {c['model']}"
    data = "" if c.get("data") is None else f" --data {c['data']}"  # ruler on noise alone reads no data
    return f"memlong eval {c['task']}{model}{data}{args}{sets} --json {json_path}"


def _nll_plain(model, ids, score: int) -> tuple[float, int]:
    """Stock forward over ``ids`` ``[1, L]``; NLL of the last ``score`` tokens."""
    import torch

    L = ids.shape[1]
    n = min(score, L - 1)
    with torch.no_grad():
        logits = model(ids, logits_to_keep=n + 1, use_cache=False).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits[0], ids[0, L - n :], reduction="sum")
    return float(nll), n


# fields whose value shapes the weights (gates, trained layers): not changeable at reading time
_WEIGHT_FIELDS = ("memory_layer", "retrieval_layers", "gate_mode", "gate_activation")


def reading_overrides(config, overrides: list[str]):
    """``config`` with ``FIELD=VALUE`` overrides (VALUE in JSON; a bare word is taken as a string)."""
    from memlong.config import MemLongConfigError

    changes = {}
    for item in overrides:
        field, sep, raw = item.partition("=")
        field = field.strip()
        if not sep or not hasattr(config, field):
            raise MemLongConfigError(f"--set {item!r}: expected FIELD=VALUE with FIELD a MemLongConfig field")
        if field in _WEIGHT_FIELDS:
            raise MemLongConfigError(f"--set {field}: the trained weights depend on it; it cannot change at reading time")
        try:
            changes[field] = json.loads(raw)
        except json.JSONDecodeError:
            changes[field] = raw
    return dataclasses.replace(config, **changes)


def base_model_of(model_path) -> str:
    """The base LM of a MemLong model (``--model``; ``None``/``"default"``: the default model): the
    base named in its ``memlong_base.json`` (a local one relative to the directory;
    ``memlong:default`` resolved to the default base's path), else the model itself (a
    ``save_pretrained`` directory or a base model)."""
    from memlong.modeling import BASE_NAME
    from memlong.pretrained import DEFAULT_MEMLONG_MODEL, resolve_base

    model_dir = DEFAULT_MEMLONG_MODEL if model_path in (None, "default") else Path(model_path)
    if (model_dir / BASE_NAME).is_file():
        info = json.loads((model_dir / BASE_NAME).read_text())
        if info.get("local"):
            return str((model_dir / info["base_model"]).resolve())
        return resolve_base(info["base_model"])
    return str(model_dir)


def _load(args, need_base: bool = True):
    """(tokenizer, MemLong model, base model or None, base window, base path). The base model is
    loaded only when a base_*/in_context method needs it (``need_base``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from memlong.pretrained import load_memlong_model

    model, tok = load_memlong_model(args.model, retriever=args.retriever)
    if args.overrides:
        model.memlong_config = reading_overrides(model.memlong_config, args.overrides)
        model.memlong_config.validate_for_model(model.config.num_hidden_layers,
                                                getattr(model.config, "max_position_embeddings", None))
    base_path = args.base_model or base_model_of(args.model)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval() if need_base else None
    window = int(getattr((base or model).config, "max_position_embeddings", 2048))
    return tok, model, base, window, base_path


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    allowed = ICL_METHODS if args.task == "icl" else METHODS
    methods = [m for m in (args.methods or ",".join(allowed)).split(",") if m]
    bad = [m for m in methods if m not in allowed]
    if bad:
        raise SystemExit(f"--methods must be among {allowed} for eval {args.task}; got {bad}")
    if args.task == "ruler":
        from memlong.recipes.eval_ruler import run_ruler

        return run_ruler(args, methods)
    if args.task == "icl":
        data = _icl_data(args)  # bad options and data fail before any model is loaded
        tok, model, base, base_window, base_path = _load(args, need_base="in_context" in methods)
        results = _run_icl(args, data, tok, model, base, base_window, methods)
    else:
        default = "1024,2048,4096,8192,16384,32768" if args.task == "ppl" else "4096,8192,16384,32768,65536"
        lengths = parse_lengths(args.lengths or default)
        tok, model, base, base_window, base_path = _load(args, need_base=any(m.startswith("base_") for m in methods))
        task = _run_ppl if args.task == "ppl" else _run_passkey
        results = task(args, tok, model, base, base_window, lengths, methods)
    write_report(args, results, model, base_path, base_window)
    if args.plot:
        {"ppl": _plot, "passkey": _plot_passkey, "icl": _plot_icl}[args.task](results, args.plot)
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


def write_report(args, results: list[dict], model, base_path, base_window) -> dict:
    """The run's JSON (``--json``): its results and config (every flag, the MemLong config as run,
    the base model and the retriever), from which :func:`eval_command` rebuilds the command."""
    report = {"results": results, "config": {**vars(args), "memlong": model.memlong_config.to_dict(),
                                             "base_model": base_path, "base_window": base_window,
                                             "retriever_info": model.memlong_retriever.describe()}}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


def _run_ppl(args, tok, model, base, base_window, lengths, methods) -> list[dict]:
    import torch

    from memlong.evaluation import window_nll
    from memlong.training import document_texts

    docs = []
    for text in document_texts(args.data, args.split)():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= min(lengths):
            docs.append(ids)
    docs.sort(key=len, reverse=True)
    results = []
    score = min(args.score, args.repeat) if args.repeat else args.score
    for L in lengths:
        windows = [torch.tensor(d[:L]) for d in docs if len(d) >= L][: args.max_documents]
        if args.repeat:  # copy probe: the window ends with a copy of its own first `repeat` tokens
            if not 0 < args.repeat < L:
                raise SystemExit(f"--repeat must be in (0, length); got {args.repeat} for length {L}")
            windows = [torch.cat([w[: L - args.repeat], w[: args.repeat]]) for w in windows]
        for method in methods:
            row = {"method": method, "length": L, "documents": len(windows)}
            if not windows:
                row.update(ppl=None, tokens_scored=0, note=f"no document has {L} tokens")
                results.append(row)
                print(_fmt(row), flush=True)
                continue
            with _measured(row, "ppl", tokens_scored=0):
                if method in ("memlong", "memlong_no_memory"):
                    s, n = window_nll(model, windows, score, use_memory=method == "memlong")
                elif method == "base_full" and L > args.max_base_length:
                    raise _Skip(f"not attempted above --max-base-length={args.max_base_length}")
                else:
                    s = n = 0
                    for w in windows:
                        ids = w[None]
                        if method == "base_truncated":
                            ids = ids[:, -base_window:]
                        a, b = _nll_plain(base, ids, score)
                        s, n = s + a, n + b
                row.update(ppl=round(math.exp(s / n), 4), tokens_scored=n)
            results.append(row)
            print(_fmt(row), flush=True)
    return results


class _Skip(Exception):
    pass


@contextlib.contextmanager
def _measured(row: dict, key: str, **on_failure):
    """Runs one measurement of ``row``: a skip or a failure (out of memory, a runtime error)
    becomes ``row[key] = None`` with a note saying why, never a made-up number; records seconds."""
    import torch

    t0 = time.perf_counter()
    try:
        yield
    except _Skip as e:
        row.update({key: None, "note": f"skipped: {e}", **on_failure})
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        row.update({key: None, "note": f"failed: {type(e).__name__}: {str(e)[:200]}", **on_failure})
    row["seconds"] = round(time.perf_counter() - t0, 2)


def passkey_question_ids(tok) -> list[int]:
    """The tokens that end every passkey prompt: the question, "What is the pass key? The pass key is"."""
    from memlong.training import PASSKEY_QUESTION

    return tok("\n" + PASSKEY_QUESTION.split("{key}")[0].rstrip(), add_special_tokens=False)["input_ids"]


def passkey_prompt(tok, pool: list[int], key: str, length: int, depth: float, offset: int = 0) -> list[int]:
    """``length`` tokens: haystack from ``pool`` (starting at ``offset``) with the passkey statement
    at ``depth`` of it, ending with the question whose answer is ``key``."""
    from memlong.training import PASSKEY_STATEMENT

    q_ids = passkey_question_ids(tok)
    s_ids = tok("\n" + PASSKEY_STATEMENT.format(key=key) + "\n", add_special_tokens=False)["input_ids"]
    budget = length - len(s_ids) - len(q_ids)
    if budget < 0 or len(pool) < budget:
        raise ValueError(f"cannot build a {length}-token passkey prompt from {len(pool)} haystack tokens")
    start = offset % max(1, len(pool) - budget + 1)
    hay = pool[start : start + budget]
    at = int(depth * budget)
    return hay[:at] + s_ids + hay[at:] + q_ids


def passkey_digits(answer: str, n: int = 5) -> str:
    """The first ``n`` digits of a generated answer (compared with the key for exact match)."""
    import re

    return "".join(re.findall(r"\d", answer))[:n]


def generate_answer(method: str, model, base, tok, ids, new_tokens: int, requery, base_window: int,
                    stop=None) -> str:
    """The greedy continuation of ``ids`` ``[1, L]`` by ``method``, decoded: the MemLong model with a
    fresh memory (retrieval on for ``memlong``, off for ``memlong_no_memory``), retrieving again with
    the prompt's last ``requery`` tokens (the question; ``False``: not); or the base model over the
    whole prompt (``base_full``) or its last ``base_window - new_tokens`` tokens (``base_truncated``).
    ``stop``: a stopping criterion factory ``(tok, start) -> StoppingCriteria``."""
    import torch
    from transformers import StoppingCriteriaList

    kw = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    if method in ("memlong", "memlong_no_memory"):
        if stop is not None:
            kw["stopping_criteria"] = StoppingCriteriaList([stop(tok, ids.shape[1])])
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


def _run_passkey(args, tok, model, base, base_window, lengths, methods) -> list[dict]:
    import random

    import torch

    from memlong.training import document_texts

    pool: list[int] = []  # haystack: held-out documents back to back
    for text in document_texts(args.data, args.split)():
        pool.extend(tok(text + "\n\n", add_special_tokens=False)["input_ids"])
        if len(pool) >= max(lengths) + args.trials * 997:
            break
    if len(pool) < max(lengths):
        raise SystemExit(f"--data holds {len(pool)} tokens, fewer than the longest --lengths {max(lengths)}")
    depths = [float(x) for x in args.depths.split(",") if x]
    rng = random.Random(args.seed)
    new_tokens = 8
    results = []
    for L in lengths:
        for depth in depths:
            cases = []
            for t in range(args.trials):
                key = str(rng.randrange(10_000, 100_000))
                cases.append((key, torch.tensor([passkey_prompt(tok, pool, key, L, depth, offset=t * 997)])))
            for method in methods:
                row = {"method": method, "length": L, "depth": depth, "trials": len(cases)}
                with _measured(row, "accuracy"):
                    if method == "base_full" and L > args.max_base_length:
                        raise _Skip(f"not attempted above --max-base-length={args.max_base_length}")
                    hits = 0
                    for key, ids in cases:
                        q = len(passkey_question_ids(tok)) if args.requery else False
                        answer = generate_answer(method, model, base, tok, ids, new_tokens, q, base_window)
                        hits += int(passkey_digits(answer) == key)
                    row.update(accuracy=hits / len(cases))
                results.append(row)
                acc = f"{row['accuracy']:.2f}" if row.get("accuracy") is not None else "-"
                print(f"{method:>18} L={L:>7} depth={depth:.2f}  accuracy {acc}  ({row['trials']} trials) "
                      f"{row.get('note', '')}", flush=True)
    return results


def _plot_passkey(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    lengths = sorted({r["length"] for r in results})
    depths = sorted({r["depth"] for r in results})
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for r in results:
            if r["method"] == method and r.get("accuracy") is not None:
                grid[depths.index(r["depth"])][lengths.index(r["length"])] = r["accuracy"]
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_title(method, fontsize=9)
        ax.set_xticks(range(len(lengths)), [f"{n // 1024}k" if n >= 1024 else str(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
        ax.set_xlabel("length")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, "-" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=7)
    axes[0][0].set_ylabel("depth")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(r: dict) -> str:
    ppl = f"{r['ppl']:10.3f}" if r.get("ppl") is not None else f"{'-':>10}"
    return f"{r['method']:>18} L={r['length']:>6}  ppl {ppl}  tokens {r['tokens_scored']:>7}  docs {r['documents']}  {r.get('note', '')}"


def _plot(results: list[dict], path: str) -> None:
    from memlong.plotting import figure

    with figure(path, "input length (tokens)", "perplexity of the last tokens") as ax:
        for method in METHODS:
            pts = [(r["length"], r["ppl"]) for r in results if r["method"] == method and r.get("ppl") is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")


def _icl_data(args):
    """(task, demonstration pool, test examples) for ``eval icl``; bad options exit naming the option."""
    from memlong.data.icl import load_icl_data

    for name in ("shots_context", "shots_memory"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0; got {getattr(args, name)}")
    for name in ("max_examples", "trials"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    shots = args.shots_context + args.shots_memory
    labels = [w.strip() for w in args.labels.split(",") if w.strip()] if args.labels else None
    try:
        task, pool, tests = load_icl_data(args.data, args.split, args.demo_split, labels, args.max_examples,
                                          pool=max(64, 2 * shots), seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"eval icl: {e}") from None
    if len(pool) < shots:
        raise SystemExit(f"--shots-context + --shots-memory = {shots} demonstrations, but --data has only "
                         f"{len(pool)} to draw them from")
    if not tests:
        raise SystemExit(f"--data {args.data}: no test examples in split {args.split!r}")
    return task, pool, tests


def _run_icl(args, data, tok, model, base, base_window, methods) -> list[dict]:
    import random
    from collections import Counter

    from memlong.data.icl import demo_text, query_text
    from memlong.evaluation import continuation_logprobs

    task, pool, tests = data
    K, M = args.shots_context, args.shots_memory
    cfg = model.memlong_config
    tau, w = cfg.chunk_size, cfg.window_chunks

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"] if text else []

    cands = [ids(" " + word) for word in task.label_words]
    if len({tuple(c) for c in cands}) < len(cands):
        raise SystemExit(f"label words {list(task.label_words)} do not tokenize to distinct sequences (--labels)")
    trials = []  # per trial: token ids of every test prompt
    share, local = [], []  # per prompt: memory-demonstration tokens banked, context ones in the window (shares)
    for t in range(args.trials):
        demos = random.Random(args.seed + t).sample(pool, K + M)
        # each part tokenized on its own, so the boundaries between them are exact
        mem = ids("".join(demo_text(task, d) for d in demos[:M]))
        ctx = ids("".join(demo_text(task, d) for d in demos[M:]))
        prompts = [mem + ctx + ids(query_text(task, ex)) for ex in tests]
        for p in prompts:
            # the prompt's last token (chunk J) sees chunks J-w..J; chunks 0..J-w-1 are in the bank
            gone = max(0, ((len(p) - 1) // tau - w) * tau)
            share.append(min(len(mem), gone) / max(1, len(mem)))
            local.append(1 - min(len(ctx), max(0, gone - len(mem))) / max(1, len(ctx)))
        trials.append(prompts)
    if M and max(share) == 0:
        raise SystemExit(
            f"the {M} memory demonstrations never leave the local window ({cfg.local_window} tokens) before a test "
            f"input is read, so memlong would equal memlong_no_memory by construction; raise --shots-memory or "
            f"lower the local window (--set local_window=N)")
    if M and min(share) < 1:
        print(f"note: {sum(share) / len(share):.0%} of the memory demonstrations' tokens reach the bank on average "
              f"(the rest stay in the {cfg.local_window}-token local window, seen by both MemLong methods)")
    if K and min(local) < 1:
        print(f"note: only {sum(local) / len(local):.0%} of the context demonstrations' tokens are in the "
              f"{cfg.local_window}-token local window at the test input on average (the rest left it: into memory for memlong, dropped without)")
    longest = max(len(p) for prompts in trials for p in prompts) + max(len(c) for c in cands)
    majority = Counter(ex.label for ex in tests).most_common(1)[0][1] / len(tests)
    print(f"{'method':>18} {'task':>14}   K   M  accuracy  per trial  examples  banked  predicted / note")
    results = []
    for method in methods:
        row = {"method": method, "task": task.name, "shots_context": K, "shots_memory": M, "examples": len(tests),
               "trials": args.trials, "label_words": list(task.label_words), "majority_accuracy": majority,
               "prompt_tokens_max": longest}
        if method == "memlong":  # (memlong_no_memory drops what leaves its window)
            row["memory_tokens_banked"] = round(sum(share) / len(share), 4) if M else None
        if method != "in_context":
            row["context_tokens_in_window"] = round(sum(local) / len(local), 4) if K else None
        with _measured(row, "accuracy"):
            if method == "in_context" and longest > base_window:
                raise _Skip(f"prompts of up to {longest} tokens do not fit the base model's window ({base_window})")
            per_trial, predicted = [], Counter()
            for prompts in trials:
                hits = 0
                for prompt, ex in zip(prompts, tests):
                    if method == "in_context":
                        scores = continuation_logprobs(base, prompt, cands)
                    else:
                        scores = continuation_logprobs(model, prompt, cands, use_memory=method == "memlong")
                    guess = max(range(len(scores)), key=scores.__getitem__)
                    predicted[task.label_words[guess]] += 1
                    hits += int(guess == ex.label)
                per_trial.append(hits / len(tests))
            row.update(accuracy=sum(per_trial) / len(per_trial), accuracy_per_trial=per_trial,
                       predicted=dict(sorted(predicted.items())))  # a model stuck on one label shows here
        results.append(row)
        acc = f"{row['accuracy']:.3f}" if row["accuracy"] is not None else "-"
        per = ",".join(f"{a:.2f}" for a in row.get("accuracy_per_trial", [])) or "-"
        banked = f"{row['memory_tokens_banked']:.0%}" if row.get("memory_tokens_banked") is not None else "-"
        pred = " ".join(f"{k}:{v}" for k, v in row.get("predicted", {}).items())
        print(f"{method:>18} {task.name:>14} {K:>3} {M:>3}  {acc:>8}  {per:>9}  {len(tests):>8}  {banked:>6}  "
              f"{pred or row.get('note', '')}", flush=True)
    print(f"(majority-class accuracy of the test examples: {majority:.3f}; label words: {', '.join(task.label_words)})")
    return results


def _plot_icl(results: list[dict], path: str) -> None:
    from memlong.plotting import figure

    with figure(path, "method", "accuracy", size=(5, 3.5)) as ax:
        names = [r["method"] for r in results]
        ax.bar(names, [r["accuracy"] or 0 for r in results], color="tab:blue")
        for i, r in enumerate(results):
            ax.text(i, (r["accuracy"] or 0) + 0.01, "skipped" if r["accuracy"] is None else f"{r['accuracy']:.2f}",
                    ha="center", fontsize=8)
        if results:
            ax.axhline(results[0]["majority_accuracy"], ls="--", color="gray", label="majority class")
            r = results[0]
            ax.set_title(f"{r['task']}: {r['shots_context']} in context + {r['shots_memory']} in memory", fontsize=9)
        ax.set_ylim(0, 1.05)
