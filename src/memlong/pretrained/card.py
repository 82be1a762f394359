"""Export a trained run into a shipped model folder and write its model card from the records.

    python -m memlong.pretrained.card --run runs/base --corpus runs/corpus \\
        --vocab-sweep runs/vocab_sweep.json --out src/memlong/pretrained/base

Copies ``RUN/final`` (weights, config, tokenizer, generation config, loss plot, train summary),
``RUN/metrics.jsonl`` and the corpus records into ``--out``, then renders ``README.md`` using only
numbers read from those JSON files and the ``ppl_validation.json`` / ``ppl_test.json`` written
by ``memlong pretrain --eval-only`` (run those first, with ``--json`` into ``--out``). No number in
the card is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
from pathlib import Path

COPY_FROM_FINAL = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json", "loss.png", "train_summary.json")


# Written by `memlong pretrain` when a run is resumed with different flags: what each phase ran with.
PHASES = "run_args_history.json"


def train_command(a: dict) -> str:
    """The `memlong pretrain` command of a run, from its recorded arguments."""
    cmd = f"memlong pretrain --corpus {a['corpus']} --out {a['out']}"
    if a.get("init_from"):
        cmd += f" --init-from {a['init_from']}" + (f" --tokenizer {a['tokenizer']}" if a.get("tokenizer") else "")
    else:
        cmd += (f" --layers {a['layers']} --hidden {a['hidden']} --heads {a['heads']} --kv-heads {a['kv_heads']}")
    if a.get("copy_rate"):
        cmd += f" --copy-rate {a['copy_rate']} --copy-span {a['copy_span']}"
        if a.get("copy_random"):
            cmd += f" --copy-random {a['copy_random']}"
    if a.get("repeat_rate"):
        cmd += f" --repeat-rate {a['repeat_rate']} --repeat-span {a['repeat_span']}"
    if a.get("induction_rate"):
        cmd += f" --induction-rate {a['induction_rate']} --induction-span {a['induction_span']} --induction-pool {a['induction_pool']}"
    return (cmd + f" --seq-len {a['seq_len']} --batch-size {a['batch_size']} --lr {a['lr']} --warmup {a['warmup']} "
            f"--max-steps {a['max_steps']} --eval-every {a['eval_every']} --save-every {a['save_every']} --threads {a['threads']}"
            + (" --bf16" if a.get("bf16") else ""))


def _stages_md(ts: dict, phases: list[dict]) -> str:
    """A table of the training stages (earlier runs this one continued from, then this run)."""
    stages = ts.get("previous_stages", []) + [ts]
    if len(stages) == 1 and len(phases) <= 1:
        return ""
    rows = ["| stage | steps | tokens | wall time | final validation loss | copy-probe loss | induction-probe loss |",
            "|---|---:|---:|---:|---:|---:|---:|"]

    def num(v) -> str:
        return "" if v is None else f"{v:.4f}"

    for i, st in enumerate(stages, 1):
        stopped = f" of {st['args']['max_steps']:,}" if st["steps"] < st["args"]["max_steps"] else ""
        rows.append(f"| {i}{' (from scratch)' if not st['args'].get('init_from') else ' (continued)'} | {st['steps']:,}{stopped} | "
                    f"{st['tokens_seen']:,} | {st['train_seconds'] / 60:.1f} min | {st['final_val_loss']:.4f} | "
                    f"{num(st.get('final_val_copy_loss'))} | {num(st.get('final_induction_loss'))} |")
    cmds = []
    for i, st in enumerate(stages, 1):
        ph_list = phases if i == len(stages) else st.get("phases", [])
        if len(ph_list) > 1:
            for j, ph in enumerate(ph_list):
                end = ph_list[j + 1]["from_step"] if j + 1 < len(ph_list) else st["steps"]
                cmds.append(f"stage {i}, steps {ph['from_step'] + 1}-{end}: `{train_command(ph['args'])}`")
        else:
            cmds.append(f"stage {i}: `{train_command(st['args'])}`")
    return ("\nTraining ran in stages, each continuing from the weights of the one before (fresh optimizer and "
            "schedule; a run resumed with different flags is listed by phase; \"N of M\" steps: stopped before its schedule ended). The copy-probe loss is the loss on "
            "planted verbatim copies of earlier passages in the same validation windows, the induction-probe loss "
            "the loss on random token sequences repeated once (blank where the stage did not measure them); a model "
            "that copies from its context drives both far down (the induction probe from about log(vocab)).\n\n"
            + "\n".join(rows) + "\n\n" + "\n".join(f"- {c}" for c in cmds) + "\n")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def export(run: Path, corpus: Path, vocab_sweep: Path | None, out: Path) -> None:
    from memlong.recipes.pretrain import training_stages

    final = run / "final"
    if not (final / "model.safetensors").is_file():
        raise SystemExit(f"{final} has no model.safetensors: the run has not finished")
    ts = json.loads((final / "train_summary.json").read_text())
    init = ts["args"].get("init_from")
    earlier = None
    if init and "previous_stages" not in ts:  # a run from before pretrain recorded its earlier stages itself:
        # read them from the folder it continued from now (``init`` may be ``out`` itself)
        earlier = training_stages(init)
        if earlier is None:
            raise SystemExit(f"the run continued from {init}, which has no train_summary.json to record its earlier training")
    out.mkdir(parents=True, exist_ok=True)
    for name in COPY_FROM_FINAL:
        if (final / name).is_file():
            shutil.copy2(final / name, out / name)
    if earlier is not None:
        ts["previous_stages"] = earlier
        (out / "train_summary.json").write_text(json.dumps(ts, indent=2) + "\n")
    if (run / PHASES).is_file():
        shutil.copy2(run / PHASES, out / PHASES)
    shutil.copy2(run / "metrics.jsonl", out / "metrics.jsonl")
    shutil.copy2(corpus / "summary.json", out / "corpus_summary.json")
    shutil.copy2(corpus / "long_documents.json", out / "long_documents.json")
    if vocab_sweep is not None:
        shutil.copy2(vocab_sweep, out / "vocab_sweep.json")


def write_token_counts(corpus: Path, out: Path, n: int) -> None:
    """Counts the first ``n / len(sources)`` tokens of each source's train documents (file order)
    with the tokenizer in ``out``; writes ``out/token_counts.json``."""
    from memlong.data.corpus import iter_split
    from memlong.retriever import count_tokens, save_token_counts
    from memlong.tokenizer import load_tokenizer

    if n < 1:
        raise SystemExit(f"--token-counts must be >= 1, got {n}")
    tok = load_tokenizer(out)
    sources = list(json.loads((corpus / "summary.json").read_text())["splits"]["train"]["by_source"])
    per = n // len(sources)
    taken = {s: 0 for s in sources}
    seqs = []
    for doc in iter_split(corpus, "train"):
        left = per - taken.get(doc.source, per)
        if left <= 0:
            if all(v >= per for v in taken.values()):
                break
            continue
        ids = tok.encode(doc.text, add_special_tokens=False)[:left]
        taken[doc.source] += len(ids)
        seqs.append(ids)
    counts = count_tokens(seqs, len(tok))
    path = save_token_counts(out, counts, {"split": "train", "tokens_per_source": taken,
                                           "command": f"python -m memlong.pretrained.card --corpus {corpus} --out {out} "
                                                      f"--card-only --token-counts {n}"})
    print(f"wrote {path}: {int(counts.sum()):,} tokens ({taken})")


def _ppl_table(ppl: dict, train_ctx: int) -> str:
    sources = list(ppl["documents"])
    head = "| context L | perplexity | tokens scored | " + " | ".join(f"{s} ppl" for s in sources) + " |"
    sep = "|---:|---:|---:|" + "---:|" * len(sources)
    rows = [head, sep]
    for L in ppl["lengths"]:
        r = ppl["results"][str(L)]
        mark = " (past training context)" if L > train_ctx else ""
        rows.append(f"| {L}{mark} | {r['ppl']:.2f} | {r['tokens']:,} | "
                    + " | ".join(f"{r['by_source'][s]['ppl']:.2f}" for s in sources) + " |")
    return "\n".join(rows)


def _eval_command(ppl: dict) -> str:
    return (f"memlong pretrain --eval-only --model src/memlong/pretrained/base --corpus {ppl['corpus']} "
            f"--split {ppl['split']} --lengths {','.join(map(str, ppl['lengths']))} "
            f"--docs-per-source {ppl['docs_per_source_cap']} --json src/memlong/pretrained/base/ppl_{ppl['split']}.json")


def render(out: Path) -> str:
    cfg = json.loads((out / "config.json").read_text())
    ts = json.loads((out / "train_summary.json").read_text())
    corpus = json.loads((out / "corpus_summary.json").read_text())
    longd = json.loads((out / "long_documents.json").read_text())
    ppl = {s: json.loads((out / f"ppl_{s}.json").read_text()) for s in ("validation", "test")}
    sweep = json.loads((out / "vocab_sweep.json").read_text()) if (out / "vocab_sweep.json").is_file() else None
    a = ts["args"]
    ctx = cfg["max_position_embeddings"]
    size_mb = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 2**20
    weights_mb = (out / "model.safetensors").stat().st_size / 2**20
    finished = ts["steps"] >= a["max_steps"]

    phases = json.loads((out / PHASES).read_text()) if (out / PHASES).is_file() else []
    stages = ts.get("previous_stages", []) + [ts]
    train_cmd = "\n".join(train_command(ph["args"]) for st in stages[:-1] for ph in st.get("phases") or [st])
    train_cmd += ("\n" if train_cmd else "") + ("\n".join(train_command(ph["args"]) for ph in phases) if phases
                                                 else train_command(a))
    total_tokens = sum(st["tokens_seen"] for st in stages)
    total_seconds = sum(st["train_seconds"] for st in stages)
    stages_md = _stages_md(ts, phases)
    counts_md = ""
    if (out / "token_counts.json").is_file():
        tc = json.loads((out / "token_counts.json").read_text())
        per = ", ".join(f"{k} {v:,}" for k, v in tc["tokens_per_source"].items())
        counts_md = (f"\n`token_counts.json`: unigram counts of {tc['tokens']:,} tokens of the train split ({per}; "
                     f"`{tc['command']}`). The `embedding` retriever (`retriever=\"embedding\"`) weighs tokens by "
                     "SIF, `a / (a + p(t))`, from these counts.\n")
    data_rows = []
    for split, st in corpus["splits"].items():
        by = ", ".join(f"{k} {v['documents']:,} docs / {v['bytes'] / 1e6:.1f} MB" for k, v in st["by_source"].items())
        data_rows.append(f"| {split} | {st['documents']:,} | {st['bytes'] / 1e6:.1f} | {by} |")
    long_rows = [f"| {split} | " + ", ".join(f"{k}: {len(v)}" for k, v in longd[split].items()) + " |"
                 for split in ("validation", "test")]
    sweep_md = ""
    if sweep:
        sweep_md = ("\nVocabulary size was chosen by measurement (`" + sweep["command"] + "`, "
                    f"{sweep['model']['layers']} layers, hidden {sweep['model']['hidden']}, one training step of "
                    f"{sweep['model']['seq']} tokens, 1 thread; bytes/token on the validation split):\n\n"
                    "| vocab | bytes/token | step (s) | text trained per second (bytes) |\n|---:|---:|---:|---:|\n"
                    + "\n".join(f"| {r['vocab_size']} | {r['bytes_per_token']:.3f} | {r['step_seconds']:.3f} | {r['bytes_per_second']:.0f} |"
                                for r in sweep["rows"])
                    + f"\n\n{cfg['vocab_size']} was kept: within a few percent of the best text/second, while fitting "
                    "more text into each 1024-token window than the smaller vocabulary.\n")
    m = re.search(r"--tokenizer-mb-per-source (\S+)", sweep["command"]) if sweep else None
    tok_cap = f"at most {float(m.group(1)):g} MB per source" if m else "capped per source (`--tokenizer-mb-per-source`)"
    by_src = corpus["splits"]["train"]["by_source"]
    others = [v["bytes"] for k, v in by_src.items() if k != "jdk"]
    jdk_ratio = by_src["jdk"]["bytes"] / (sum(others) / len(others)) if "jdk" in by_src and others else None
    mix_note = (f" (the JDK alone is {jdk_ratio:.0f}x each of the others)" if jdk_ratio else "")
    def _degrade(split: str) -> str:
        res = ppl[split]["results"]
        base = res.get(str(ctx))
        past = [L for L in ppl[split]["lengths"] if L > ctx]
        if base is None or not past:
            return ""
        parts = [f"{res[str(L)]['ppl'] / base['ppl']:.2f}x at {L}" for L in past]
        return f"On the {split} split, perplexity relative to {ctx} tokens is " + ", ".join(parts) + "."

    degrade = " ".join(d for d in (_degrade("test"), _degrade("validation")) if d)
    status = ("The run completed its full cosine schedule." if finished else
              f"**The run was stopped at step {ts['steps']} of {a['max_steps']} (time budget or `--finish`); these weights "
              "are that checkpoint, before the learning rate finished decaying.**")

    return f"""# memlong base: a {ts['parameters'] / 1e6:.1f}M-parameter Llama trained from scratch at a {ctx}-token context

The offline default base model of `memlong`. MemLong extends a *pretrained* decoder; no pretrained
causal LM can be downloaded on the machines this project is built on, so the project trains its own:
a small Llama-architecture model with grouped-query attention, trained with `memlong pretrain` on real
human-written text at a {ctx}-token context and never beyond it. It plays the role OpenLLaMA-3B plays in
the MemLong paper (Table 1): a model whose perplexity degrades past its training window. Users with a
model hub pass any Hugging Face causal LM name instead.

It is a tiny model trained on a CPU for about {total_seconds / 60:.0f} minutes: useful to exercise
and measure MemLong end to end, not as a general-purpose language model.

```python
from memlong.pretrained import load_default_base_model, default_base_model_path
model, tokenizer = load_default_base_model()            # offline, one call
# or: AutoModelForCausalLM.from_pretrained(default_base_model_path())
```

## Architecture

| | |
|---|---|
| architecture | `LlamaForCausalLM` (transformers), RoPE theta {cfg['rope_theta'] if 'rope_theta' in cfg else cfg.get('rope_parameters', {}).get('rope_theta')} |
| layers | {cfg['num_hidden_layers']} |
| hidden size / MLP size | {cfg['hidden_size']} / {cfg['intermediate_size']} |
| attention heads / KV heads | {cfg['num_attention_heads']} / {cfg['num_key_value_heads']} (grouped-query attention) |
| vocabulary | {cfg['vocab_size']} (byte-level BPE, tied input/output embeddings) |
| parameters | {ts['parameters']:,} |
| training context | {ctx} tokens (`max_position_embeddings`) |
| weights | fp32 safetensors, {weights_mb:.1f} MiB (whole folder {size_mb:.1f} MiB) |

## Data

Three local sources of human-written text, and only these (`memlong data`, `src/memlong/data/`):
the Python standard library sources (`*.py` under `sysconfig`'s stdlib, `site-packages` excluded),
the English man pages (`/usr/share/man/man[1-9]`, rendered to plain text with groff; the thousands of
machine-generated, near-identical `gcloud*` pages excluded), and the JDK sources (`lib/src.zip`). Other local text
is kept out on purpose, for independent evaluation. Documents are split by a SHA-256 hash of their id
(5% validation, 5% test), so no held-out document is seen in training. Training draws the three
sources with equal probability{mix_note}.

| split | documents | MB | by source |
|---|---:|---:|---|
{chr(10).join(data_rows)}

Skipped while reading: {corpus['skipped']['total']} ({', '.join(f'{k}: {v}' for k, v in corpus['skipped']['by_reason'].items())}).
Held-out documents of at least {longd['min_tokens']:,} tokens (for long-context evaluation, `long_documents.json`):

| split | documents >= {longd['min_tokens']:,} tokens, by source |
|---|---|
{chr(10).join(long_rows)}

## Tokenizer

Byte-level BPE trained with `tokenizers` on the train split ({tok_cap}, so the
JDK does not own the merges); lossless: `memlong data` checks `decode(encode(text)) == text` on
every validation and test document.
{counts_md}{sweep_md}
## Training

```
memlong data --out {a['corpus']}
{train_cmd}
```

| | |
|---|---|
| steps | {ts['steps']:,} of a {a['max_steps']:,}-step schedule{' (last stage)' if len(stages) > 1 else ''} |
| tokens seen | {total_tokens:,} ({a['batch_size']} windows x {a['seq_len']} tokens per step) |
| wall time (training loop) | {total_seconds:,.0f} s ({total_seconds / 60:.1f} min) |
| hardware | {cpu_name()} ({os.cpu_count()} cores visible), no GPU; torch threads: {ts['threads']}{' (the other core ran other work)' if ts['threads'] == 1 else ''} |
| optimiser | AdamW (betas 0.9/0.95, weight decay {a['weight_decay']}, no decay on norms), peak lr {a['lr']}, {a['warmup']} warm-up steps, cosine to {a['min_lr_ratio']} x peak, grad clip {a['grad_clip']}, {'bfloat16 autocast (float32 weights and optimizer)' if a.get('bf16') else 'fp32'} |
| final validation loss | {ts['final_val_loss']:.4f} nats/token (perplexity {ts['final_val_ppl']:.2f}) on {ts['validation_windows']} fixed validation windows of {a['seq_len']} tokens |

{status} Per-step records: `metrics.jsonl`{' (last stage)' if len(stages) > 1 else ''}; the run's summary: `train_summary.json`.
{stages_md}
![training and validation loss](loss.png)

## Perplexity by context length

Each scored document contributes its first {ppl['test']['tokens_per_document']:,} tokens, cut into non-overlapping windows of L
tokens, each scored on its own from its first token: every length scores the same text and only the
context available to each prediction changes. Cap: the first {ppl['test']['docs_per_source_cap']} documents per source (corpus file
order) with at least {ppl['test']['tokens_per_document']:,} tokens. Past {ctx} tokens the model sees positions it was never trained
on and perplexity rises, as OpenLLaMA-3B's does past 2k in the paper's Table 1: this is the gap
MemLong's retrieval memory is meant to close. {degrade}

**Test split** (`{_eval_command(ppl['test'])}`, {ppl['test']['seconds']:.0f} s on {ppl['test']['threads']} thread(s)):

{_ppl_table(ppl['test'], ctx)}

**Validation split** (`{_eval_command(ppl['validation'])}`, {ppl['validation']['seconds']:.0f} s on {ppl['validation']['threads']} thread(s)):

{_ppl_table(ppl['validation'], ctx)}

The per-document ids are listed in `ppl_test.json` / `ppl_validation.json`.

## Reproduce

```
memlong data --out {a['corpus']} --sweep 4096,8192,16384 --json runs/vocab_sweep.json
{train_cmd}
python -m memlong.pretrained.card --run {a['out']} --corpus {a['corpus']} --vocab-sweep runs/vocab_sweep.json --out src/memlong/pretrained/base
{_eval_command(ppl['validation'])} --threads {ppl['validation']['threads']}
{_eval_command(ppl['test'])} --threads {ppl['test']['threads']}
python -m memlong.pretrained.card --run {a['out']} --corpus {a['corpus']} --out src/memlong/pretrained/base --card-only
```

The two evaluation commands rerun on the shipped folder alone (plus the corpus) and give the numbers
in the tables (fp32 on CPU; the last digits may move with the thread count). Training is
deterministic for a given seed and thread count, but wall time depends on the machine.

## Limitations

- {ts['parameters'] / 1e6:.1f}M parameters and {total_tokens / 1e6:.1f}M training tokens: far below any useful general LM; its text is
  mostly code and manual-page English.
- Trained at {ctx} tokens only; beyond that its perplexity degrades by design (see above).
- No safety tuning, no instruction following.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="`memlong pretrain --out` directory (not needed with --card-only)")
    p.add_argument("--corpus", required=True, help="`memlong data --out` directory")
    p.add_argument("--vocab-sweep", default=None, help="JSON from `memlong data --sweep ... --json`")
    p.add_argument("--out", required=True, help="shipped model folder")
    p.add_argument("--card-only", action="store_true", help="only re-render README.md in --out")
    p.add_argument("--token-counts", type=int, default=None, metavar="N",
                   help="also write token_counts.json (unigram counts of the first N/sources tokens of each "
                        "source's train split, the `embedding` retriever's SIF weights)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.card_only and not args.run:
        p.error("--run is required unless --card-only")
    if args.token_counts is not None:
        write_token_counts(Path(args.corpus), out, args.token_counts)
    if not args.card_only:
        export(Path(args.run), Path(args.corpus), Path(args.vocab_sweep) if args.vocab_sweep else None, out)
    missing = [f"ppl_{s}.json" for s in ("validation", "test") if not (out / f"ppl_{s}.json").is_file()]
    if missing:
        print(f"exported to {out}; now run the evaluations to write {missing}, then rerun with --card-only")
        return 0
    (out / "README.md").write_text(render(out))
    print(f"wrote {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
