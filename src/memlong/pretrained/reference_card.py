"""Ship a `memlong train` run as the reference MemLong model and write its card from the records.

    python -m memlong.pretrained.reference_card --run runs/memlong-ref --out src/memlong/pretrained/memlong
    # then the evaluations its card reports (commands in runs/eval_ref.sh / the README), and:
    python -m memlong.pretrained.reference_card --out src/memlong/pretrained/memlong --card-only

Shipping copies ``RUN/final`` (the trained tensors or adapter, gates, MemLong config, tokenizer,
``train_summary.json``) and ``RUN/loss.png`` into ``--out`` and rewrites ``memlong_base.json`` so
the local base it was trained on is found relative to the new place. The card (``README.md``)
uses only numbers read from ``train_summary.json`` and the ``memlong eval ppl`` JSONs in
``--results`` (``reference_ppl_validation.json``, ``reference_ppl_test.json``); nothing is typed
by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

PPL_SPLITS = ("validation", "test")
METHOD_NAMES = {"memlong": "MemLong, with memory", "memlong_no_memory": "MemLong, memory off (same local window)",
                "base_truncated": "base model, its own 1024-token window", "base_full": "base model, whole window"}


def train_command(args: dict) -> str:
    """The ``memlong train`` command of a run, from its recorded arguments (flags off their default)."""
    from memlong.recipes.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parts = ["memlong train"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help" or action.dest not in args:
            continue
        value, default = args[action.dest], action.default
        if isinstance(default, tuple):
            default = list(default)
        if value == default and not action.required:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts.append(f"{flag} {','.join(map(str, value))}")
        else:
            parts.append(f"{flag} {_shown_path(value)}")
    return " ".join(parts)


def _shown_path(value) -> str:
    """A path under the working directory is shown relative to it (absolute paths are machine-specific)."""
    if isinstance(value, str) and os.path.isabs(value):
        try:
            return os.path.relpath(value)
        except ValueError:
            return value
    return str(value)


def ship(run: Path, out: Path) -> None:
    from memlong.modeling import BASE_NAME

    final = run / "final"
    for need in (BASE_NAME, "train_summary.json"):
        if not (final / need).is_file():
            raise SystemExit(f"{final} has no {need}: not a finished `memlong train` run (re-run it to the end, or "
                             "with --max-minutes, so that it writes final/)")
    info = json.loads((final / BASE_NAME).read_text())
    base = (final / info["base_model"]).resolve() if info.get("local") else None
    out.mkdir(parents=True, exist_ok=True)
    for f in final.iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    if (run / "loss.png").is_file():
        shutil.copy2(run / "loss.png", out / "loss.png")
    if base is not None:  # keep the base reachable from the new place
        info["base_model"] = os.path.relpath(base, out.resolve())
        (out / BASE_NAME).write_text(json.dumps(info, indent=2) + "\n")
    print(f"shipped {final} to {out} (base: {info['base_model']})")


def _ppl_table(data: dict) -> str:
    rows = ["| method | perplexity of the last tokens | tokens scored | documents |", "|---|---:|---:|---:|"]
    for r in data["results"]:
        ppl = f"{r['ppl']:.3f}" if r.get("ppl") is not None else r.get("note", r.get("error", "-"))
        rows.append(f"| {METHOD_NAMES.get(r['method'], r['method'])} (`{r['method']}`) | {ppl} | "
                    f"{r['tokens_scored']:,} | {r['documents']} |")
    return "\n".join(rows)


def _gain(data: dict) -> str:
    by = {r["method"]: r.get("ppl") for r in data["results"]}
    if by.get("memlong") is None or by.get("memlong_no_memory") is None:
        return ""
    change = 100 * (by["memlong"] / by["memlong_no_memory"] - 1)
    verdict = "lower (better)" if change < 0 else "higher (worse)"
    return f"With memory, perplexity is {abs(change):.3g}% {verdict} than the same model with its memory off."


def render(out: Path, results: Path) -> str:
    from memlong.recipes.eval import eval_command

    ts = json.loads((out / "train_summary.json").read_text())
    cfg = json.loads((out / "memlong_config.json").read_text())
    base_info = json.loads((out / "memlong_base.json").read_text())
    a = ts["args"]
    added = sum(f.stat().st_size for f in out.iterdir() if f.is_file() and f.name != "README.md") / 2**20
    evals = []
    for split in PPL_SPLITS:
        path = results / f"reference_ppl_{split}.json"
        if not path.is_file():
            raise SystemExit(f"{path} not found: run the evaluation first (`memlong eval ppl --model {out} ... "
                             f"--split {split} --json {path}`), then --card-only")
        data = json.loads(path.read_text())
        c = data["config"]
        shown = os.path.relpath(path)
        evals.append(f"**{split.capitalize()} split** (`{eval_command(c, shown)}`):\n\n{_ppl_table(data)}\n\n{_gain(data)}")
    lv = ts.get("last_validation") or {}
    val = ts["validation"]
    last = (f"At the last validation (step {int(lv['step'])}), on {val['windows']} validation windows of "
            f"{val['length']:,} tokens scored on their last {val['scored']:,}: perplexity "
            f"{lv['val_ppl_memory']:.3f} with memory, {lv['val_ppl_no_memory']:.3f} without."
            if lv else "The run logged no validation.")
    load = ("model, tok = load_reference_model()   # offline; retriever all-MiniLM-L6-v2 (bundled), as in training"
            if a["retriever"] == "minilm" else
            f"model, tok = load_reference_model(retriever={a['retriever']!r})   # the retriever it was trained with")
    what = ("LoRA adapters on the layers above the memory layer, and the memory gates" if a.get("lora_r") else
            "every weight of the layers above the memory layer, the final norm, and the memory gates")
    c0 = json.loads((results / f"reference_ppl_{PPL_SPLITS[0]}.json").read_text())["config"]
    return f"""# memlong reference: the shipped base model with MemLong

The reference MemLong model of `memlong`: the shipped base model (`{base_info['base_model']}`) adapted with
`memlong train` (the paper's stage 2). The lower stack up to the memory layer, the embeddings and the LM head are
the base model's, unchanged; what training added is in this folder ({added:.1f} MiB): {what}.

```python
from memlong.pretrained.reference import load_reference_model
{load}
```

MemLong: memory layer {cfg['memory_layer']}, retrieval layers {cfg['retrieval_layers']}, chunks of
{cfg['chunk_size']} tokens, top-{cfg['top_k']} retrieval bringing chunks at offsets {cfg['retrieval_offsets']} of
each hit, local window {cfg['local_window']:,} tokens, memory positions `{cfg['memory_positions']}`, gates per head
(`{cfg['gate_activation']}`), retriever `{a['retriever']}`.

## Training

```
{train_command(a)}
```

| | |
|---|---|
| steps | {ts['steps']:,}{f" of {a['steps']:,} (stopped by --max-minutes)" if ts['steps'] < a['steps'] else ''} |
| tokens | {ts['tokens']:,} ({a['batch_size']} documents x {a['window']:,}-token segments per step and process) |
| wall time | {ts['train_seconds']:,.0f} s ({ts['train_seconds'] / 60:.1f} min) |
| hardware | {ts['hardware']}; {ts['processes']} process(es) x {ts['threads_per_process']} torch thread(s); mixed precision: {ts['mixed_precision']} |
| software | torch {ts['torch']}, transformers {ts['transformers']} ({ts['platform']}) |

{last} Per-step log: the run's `log.csv`; loss curve:

![training loss and validation perplexity](loss.png)

## Held-out evaluation

The paper's protocol (`memlong eval ppl`): the first L tokens (L = {c0['lengths']}) of each held-out document at least
that long form a window; only its last {c0['score']:,} tokens are scored; the tokens before them were read into memory
(MemLong) or fall outside the model's local window. Memory is reset for every document.

{(chr(10) + chr(10)).join(evals)}

## Limitations

- A small model trained briefly on a CPU (see Training): it demonstrates MemLong's machinery and measures what
  memory changes; it is not a capable language model. The gain from memory above is what a short adaptation
  gives it; the paper adapts for far more tokens.
- The memory layer is where `memlong heads` finds the base's induction heads: memory can only be copied from
  when the stored keys say which token came before each position.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="a `memlong train --output` directory with final/")
    p.add_argument("--out", required=True, help="where to ship (e.g. src/memlong/pretrained/memlong)")
    p.add_argument("--results", default="docs/results", help="folder of the reference_ppl_*.json evaluations")
    p.add_argument("--card-only", action="store_true", help="only (re)write README.md from the records")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.card_only:
        if not args.run:
            raise SystemExit("--run is required unless --card-only")
        ship(Path(args.run), out)
        print("now run the evaluations, then rerun with --card-only")
        return 0
    (out / "README.md").write_text(render(out, Path(args.results)))
    print(f"wrote {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
