"""`memlong pretrain`: train a small Llama (grouped-query attention) from scratch, or score one.

A tool for a base model that plays OpenLLaMA's role in the paper when no pretrained model can be
downloaded: a causal LM trained at a fixed context (``--seq-len``) and never beyond it, so its
perplexity degrades past that window, the gap MemLong's memory is meant to close. The default
model (SmolLM2-135M-Instruct, :mod:`memlong.pretrained`) needs none of this.

Train::

    memlong data --out runs/corpus                    # corpus + tokenizer, once
    memlong pretrain --corpus runs/corpus --out runs/base --max-steps 1600 --threads 1

Re-running the same command resumes from ``runs/base/checkpoint``. Outputs in ``--out``:
``checkpoint/`` (weights + optimizer + data-stream position), ``metrics.jsonl``, ``loss.png``,
and ``final/``, a ``from_pretrained`` folder with the tokenizer and ``train_summary.json``.
``--init-from FOLDER`` continues from a model folder's weights (a new stage: fresh optimizer and
schedule; the summary keeps the earlier stages' records); ``--finish`` ends a stopped run at its
checkpoint.

Evaluate perplexity at several context lengths (prints a table, writes JSON)::

    memlong pretrain --eval-only --model runs/base/final --corpus runs/corpus \\
        --split test --lengths 256,512,1024,2048,4096 --json runs/base/ppl_test.json

Tiny smoke run (seconds)::

    memlong pretrain --corpus runs/corpus --out /tmp/tiny --layers 2 --hidden 64 --heads 4 \\
        --kv-heads 2 --seq-len 64 --batch-size 2 --max-steps 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--corpus", required=True, help="corpus directory written by `memlong data`")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder (default: CORPUS/tokenizer)")
    g.add_argument(
        "--source-weights", default=None, help="e.g. stdlib=1,man=1,jdk=1 (default: equal weight per source)"
    )
    g.add_argument(
        "--streams",
        type=int,
        default=32,
        help="open document streams each batch's rows are drawn from (decorrelates steps)",
    )
    g = p.add_argument_group("model (LlamaConfig)")
    g.add_argument(
        "--init-from",
        default=None,
        help="start from this model folder's weights (continued pretraining, fresh optimizer and "
        "schedule); its architecture replaces the model flags",
    )
    g.add_argument("--layers", type=int, default=8)
    g.add_argument("--hidden", type=int, default=256)
    g.add_argument("--intermediate", type=int, default=None, help="MLP width (default: ~8/3 * hidden, multiple of 16)")
    g.add_argument("--heads", type=int, default=8)
    g.add_argument("--kv-heads", type=int, default=2, help="grouped-query attention: KV heads")
    g.add_argument("--rope-theta", type=float, default=10000.0)
    g.add_argument("--seq-len", type=int, default=1024, help="pretraining context")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=2, help="windows of seq-len tokens per step")
    g.add_argument("--lr", type=float, default=1.5e-3)
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of --lr")
    g.add_argument("--warmup", type=int, default=60, help="linear warm-up steps")
    g.add_argument("--max-steps", type=int, default=1500, help="length of the cosine schedule")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast for the forward pass (weights and optimizer stay float32); "
        "measured 1.4x faster per step on an AVX512-BF16 CPU; on CPUs without AVX-512 it is "
        "10-20x slower and warns",
    )
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/base")
    g.add_argument("--eval-every", type=int, default=100)
    g.add_argument(
        "--eval-windows-per-source", type=int, default=8, help="validation windows per source scored at each evaluation"
    )
    g.add_argument("--save-every", type=int, default=50)
    g.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop (after saving) when this much wall time has passed in this process",
    )
    g.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop (after saving) once this process has run this many steps; re-run to resume",
    )
    g.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    g.add_argument(
        "--finish",
        action="store_true",
        help="end the run at its checkpoint: validate it and write final/ without training further, so a "
        "run stopped before --max-steps becomes a finished stage (the card says it stopped early)",
    )
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("evaluation only")
    g.add_argument("--eval-only", action="store_true", help="score --model; no training")
    g.add_argument("--model", default=None, help="model folder to evaluate (from_pretrained)")
    g.add_argument("--split", default="test", choices=("validation", "test"))
    g.add_argument("--lengths", default="256,512,1024,2048,4096")
    g.add_argument(
        "--docs-per-source", type=int, default=8, help="cap: documents per source scored (each >= max(lengths) tokens)"
    )
    g.add_argument("--json", default=None, help="write the perplexity table here")


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def build_config(args: argparse.Namespace, tokenizer):
    from transformers import LlamaConfig

    if args.hidden % args.heads:
        raise SystemExit(f"--hidden {args.hidden} must be divisible by --heads {args.heads}")
    if args.heads % args.kv_heads:
        raise SystemExit(f"--heads {args.heads} must be divisible by --kv-heads {args.kv_heads}")
    inter = args.intermediate or int(args.hidden * 8 / 3 // 16 * 16)
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=inter,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.seq_len,
        rope_theta=args.rope_theta,
        # Tied embeddings: the output layer is the biggest matrix of a small model.
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )


def lr_lambda(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``max_steps`` (and flat after)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def validation_windows(corpus: str | os.PathLike, tokenizer, seq_len: int, per_source: int):
    """The first ``seq_len`` tokens of the first ``per_source`` long-enough validation documents
    of each source (file order), as ``LongTensor[N, seq_len]``: a fixed set scored during training."""
    import torch

    from memlong.data.corpus import iter_split

    taken: dict[str, int] = {}
    rows = []
    for doc in iter_split(corpus, "validation"):
        if taken.get(doc.source, 0) >= per_source or len(doc.text.encode("utf-8")) < seq_len:
            continue
        ids = tokenizer.encode(doc.text, add_special_tokens=False)
        if len(ids) >= seq_len:
            rows.append(ids[:seq_len])
            taken[doc.source] = taken.get(doc.source, 0) + 1
    if not rows:
        raise SystemExit(f"no validation document has {seq_len} tokens; use a smaller --seq-len")
    return torch.tensor(rows, dtype=torch.long)


def mean_nll(model, windows, batch_size: int = 1) -> tuple[float, int]:
    """Mean next-token NLL (nats) over ``windows`` ``LongTensor[N, L]``; returns (nll, tokens).

    Each window is scored on its own, from position 0: ``L - 1`` predicted tokens per window.
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            x = windows[i : i + batch_size]
            logits = model(input_ids=x).logits  # [B, L, V]
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1), reduction="sum"
            )
            total += loss.item()
            count += x[:, 1:].numel()
    return total / count, count


def select_eval_documents(corpus, split: str, tokenizer, min_tokens: int, per_source: int):
    """First ``per_source`` documents of each source (file order) with >= ``min_tokens`` tokens.

    Returns ``{source: [(doc_id, ids[:min_tokens]), ...]}``.
    """
    from memlong.data.corpus import iter_split

    chosen: dict[str, list] = {}
    for doc in iter_split(corpus, split):
        lst = chosen.setdefault(doc.source, [])
        if len(lst) >= per_source or len(doc.text.encode("utf-8")) < min_tokens:
            continue
        ids = tokenizer.encode(doc.text, add_special_tokens=False)
        if len(ids) >= min_tokens:
            lst.append((doc.id, ids[:min_tokens]))
    return {k: v for k, v in chosen.items() if v}


def perplexity_by_length(model, docs_by_source: dict, lengths: list[int], progress: bool = True) -> dict:
    """Perplexity at each context length L on the same tokens.

    Every selected document contributes its first ``max(lengths)`` tokens, cut into
    non-overlapping windows of L, each scored on its own: the scored text is identical across
    lengths and only the context available to each prediction changes.
    """
    import torch

    results = {}
    for L in lengths:
        t0 = time.perf_counter()
        per_source = {}
        total, count = 0.0, 0
        for source, docs in docs_by_source.items():
            windows = torch.tensor(
                [ids[i : i + L] for _, ids in docs for i in range(0, len(ids) - L + 1, L)], dtype=torch.long
            )
            nll, n = mean_nll(model, windows)
            per_source[source] = {"ppl": math.exp(nll), "nll": nll, "tokens": n, "windows": len(windows)}
            total += nll * n
            count += n
        results[str(L)] = {
            "ppl": math.exp(total / count),
            "nll": total / count,
            "tokens": count,
            "seconds": round(time.perf_counter() - t0, 1),
            "by_source": per_source,
        }
        if progress:
            print(
                f"  L={L:>5}: ppl {results[str(L)]['ppl']:8.2f} over {count} tokens ({results[str(L)]['seconds']}s)",
                flush=True,
            )
    return results


def run_eval(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from memlong.tokenizer import load_tokenizer

    if not args.model:
        raise SystemExit("--eval-only needs --model PATH (a from_pretrained folder)")
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir} is not a model folder (no config.json)")
    lengths = sorted({int(x) for x in args.lengths.split(",") if x.strip()})
    if not lengths or lengths[0] < 2:
        raise SystemExit(f"--lengths must be integers >= 2; got {args.lengths!r}")
    tokenizer = load_tokenizer(args.tokenizer or model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    t0 = time.perf_counter()
    docs = select_eval_documents(args.corpus, args.split, tokenizer, max(lengths), args.docs_per_source)
    if not docs:
        raise SystemExit(f"no {args.split} document has {max(lengths)} tokens")
    print(
        f"{args.split}: {sum(len(v) for v in docs.values())} documents of >= {max(lengths)} tokens "
        f"({', '.join(f'{k}: {len(v)}' for k, v in docs.items())}), first {max(lengths)} tokens each"
    )
    results = perplexity_by_length(model, docs, lengths)
    print(f"\n{'length':>7} {'ppl':>9} {'tokens':>8}  " + "  ".join(f"{s:>8}" for s in docs))
    for L in lengths:
        r = results[str(L)]
        print(
            f"{L:>7} {r['ppl']:9.2f} {r['tokens']:>8}  " + "  ".join(f"{r['by_source'][s]['ppl']:8.2f}" for s in docs)
        )
    out = {
        "model": str(model_dir),
        "corpus": str(args.corpus),
        "split": args.split,
        "lengths": lengths,
        "docs_per_source_cap": args.docs_per_source,
        "documents": {k: [d for d, _ in v] for k, v in docs.items()},
        "tokens_per_document": max(lengths),
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t0, 1),
        "results": results,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def plot_metrics(metrics_path: Path, png_path: Path) -> None:
    """Training loss (raw and smoothed) and validation loss against tokens seen."""
    from memlong.plotting import finish, pyplot, save

    train, val = [], []
    for line in metrics_path.read_text().splitlines():
        m = json.loads(line)
        (val if "val_loss" in m else train).append(m)
    if not train:
        return
    fig, ax = pyplot().subplots(figsize=(7, 4))
    xs = [m["tokens"] / 1e6 for m in train]
    ys = [m["loss"] for m in train]
    ax.plot(xs, ys, color="tab:blue", alpha=0.25, lw=0.8, label="train loss (per step)")
    k = max(1, len(ys) // 50)
    smooth = [sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))]
    ax.plot(xs, smooth, color="tab:blue", lw=1.5, label=f"train loss ({k}-step mean)")
    if val:
        ax.plot(
            [m["tokens"] / 1e6 for m in val],
            [m["val_loss"] for m in val],
            "o-",
            color="tab:orange",
            label="validation loss",
        )
    ax.set_ylim(top=min(max(ys), 10.0))
    finish(ax, "tokens seen (millions)", "cross-entropy (nats/token)")
    save(fig, png_path, dpi=100)


def _save_checkpoint(out: Path, model, optimizer, scheduler, stream, state: dict, summary: dict) -> None:
    """Atomically replace ``out/checkpoint`` (weights, optimizer, schedule, data position, and the
    run's ``train_summary.json`` so far, so another run can continue from the checkpoint as a stage)."""
    import torch

    tmp = out / "checkpoint.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "stream": stream.state_dict(),
            "rng": torch.get_rng_state(),
            **state,
        },
        tmp / "trainer_state.pt",
    )
    final = out / "checkpoint"
    old = out / "checkpoint.old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


# Flags that do not change what is trained (how a process runs or stops).
_RUN_ONLY = ("no_progress", "stop_after", "max_minutes", "no_resume", "finish", "threads")


def training_stages(folder) -> list[dict] | None:
    """The training record of the model in ``folder``: its earlier stages, then the run that wrote
    it (``train_summary.json``, in a ``final/`` or a checkpoint); None when it has no record."""
    path = Path(folder) / "train_summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary.pop("previous_stages", []) + [summary]


def _record_phase(out: Path, run_args: dict, step: int, resume: bool) -> list[dict]:
    """Keeps ``run_args_history.json``: ``[{"from_step", "args"}, ...]``, a new entry whenever a
    run is resumed with flags that change training, so the record says what every step ran with."""
    path = out / "run_args_history.json"
    history = json.loads(path.read_text()) if resume and path.is_file() else []
    if resume and not history and (out / "run_args.json").is_file():
        history = [{"from_step": 0, "args": json.loads((out / "run_args.json").read_text())}]

    # A record written before a flag existed lacks it: it ran with that flag's default.
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def trained(a: dict) -> dict:
        keys = set(run_args) | set(history[-1]["args"])
        return {k: a.get(k, parser.get_default(k)) for k in keys if k not in _RUN_ONLY}

    if history and history[-1]["from_step"] == step:  # a phase no step ran in: this one replaces it
        history.pop()
    if not history or trained(history[-1]["args"]) != trained(run_args):
        history.append({"from_step": step, "args": run_args})
    path.write_text(json.dumps(history, indent=2) + "\n")
    return history


def run_train(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig, LlamaForCausalLM

    from memlong.data.corpus import corpus_file
    from memlong.data.packing import PackedStream
    from memlong.profiling import slow_bfloat16
    from memlong.tokenizer import load_tokenizer

    slow = slow_bfloat16("cpu") if args.bf16 and not torch.cuda.is_available() else None
    if slow:
        warnings.warn(f"--bf16: {slow}", stacklevel=2)
    corpus = Path(args.corpus)
    if not corpus_file(corpus, "train").is_file():
        raise SystemExit(f"{corpus}/train.jsonl not found: run `memlong data --out {corpus}` first")
    if args.max_steps < 1 or args.warmup < 0 or args.batch_size < 1:
        raise SystemExit("--max-steps and --batch-size must be >= 1, --warmup >= 0")
    tokenizer = load_tokenizer(args.tokenizer or corpus / "tokenizer")
    weights = None
    if args.source_weights:
        weights = {k: float(v) for k, v in (kv.split("=") for kv in args.source_weights.split(","))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    resume = ckpt.is_dir() and not args.no_resume
    if args.finish and not resume:
        raise SystemExit(f"--finish ends a run at its checkpoint, and {ckpt} does not exist (or --no-resume was given)")

    torch.manual_seed(args.seed)
    stream = PackedStream(
        corpus_file(corpus, "train"),
        tokenizer,
        args.seq_len,
        args.batch_size,
        args.seed,
        weights,
        streams=max(args.streams, args.batch_size),
    )
    if resume:
        model = LlamaForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
    elif args.init_from:
        model = LlamaForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
        if model.config.vocab_size != len(tokenizer):
            raise SystemExit(
                f"--init-from {args.init_from} has a vocabulary of {model.config.vocab_size}, "
                f"the tokenizer {len(tokenizer)}: use the tokenizer it was trained with (--tokenizer)"
            )
    else:
        model = LlamaForCausalLM(build_config(args, tokenizer))
    cfg = model.config
    same_shape = args.init_from or (cfg.num_hidden_layers == args.layers and cfg.hidden_size == args.hidden)
    if cfg.max_position_embeddings != args.seq_len or not same_shape:
        what = args.init_from if args.init_from and not resume else f"checkpoint in {ckpt}"
        raise SystemExit(
            f"{what} has a different model/context than the flags (context "
            f"{cfg.max_position_embeddings} vs --seq-len {args.seq_len}); use matching flags or a new --out"
        )
    n_params = sum(p.numel() for p in model.parameters())
    # No weight decay on norms (1-D tensors): decaying a gain towards 0 only hurts.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, args.warmup, args.max_steps, args.min_lr_ratio)
    )
    step, tokens_seen, elapsed_before = 0, 0, 0.0
    if resume:
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["stream"])
        torch.set_rng_state(state["rng"])
        step, tokens_seen, elapsed_before = state["step"], state["tokens_seen"], state["train_seconds"]
        print(f"resumed from {ckpt} at step {step} ({tokens_seen} tokens, {elapsed_before:.0f}s)")
    metrics_path = out / "metrics.jsonl"
    if not resume and metrics_path.exists():
        metrics_path.unlink()
    else:
        # Drop metrics logged after the checkpoint we resume from (a crash mid-interval).
        kept = [
            l
            for l in (metrics_path.read_text().splitlines() if metrics_path.exists() else [])
            if json.loads(l)["step"] <= step
        ]
        metrics_path.write_text("".join(l + "\n" for l in kept))
    val = validation_windows(corpus, tokenizer, args.seq_len, args.eval_windows_per_source)
    print(
        f"model: {n_params / 1e6:.2f}M parameters, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads, vocab {cfg.vocab_size}, "
        f"context {args.seq_len}; threads {torch.get_num_threads()}; {len(val)} validation windows"
    )
    run_args = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    phases = _record_phase(out, run_args, step, resume)
    (out / "run_args.json").write_text(json.dumps(run_args, indent=2) + "\n")

    def state() -> dict:
        return {
            "step": step,
            "tokens_seen": tokens_seen,
            "train_seconds": elapsed_before + (time.perf_counter() - t_start),
        }

    # The stages the model went through before this run (its --init-from folder's record), if recorded.
    previous_stages = (training_stages(args.init_from) if args.init_from else None) or []

    def summary() -> dict:
        st = state()
        return {
            "steps": step,
            "tokens_seen": tokens_seen,
            "train_seconds": round(st["train_seconds"], 1),
            "parameters": n_params,
            "final_val_loss": last_val,
            "final_val_ppl": math.exp(last_val) if last_val is not None else None,
            "validated_at_step": validated_at,
            "validation_windows": len(val),
            "threads": torch.get_num_threads(),
            "args": run_args,
            "phases": phases,
            "previous_stages": previous_stages,
        }

    def evaluate() -> float:
        nll, _ = mean_nll(model, val)
        model.train()
        return nll

    t_start = time.perf_counter()
    start_step = step
    last_val = validated_at = None
    bar = tqdm(total=args.max_steps, initial=step, disable=args.no_progress, dynamic_ncols=True, mininterval=5)
    model.train()
    with metrics_path.open("a") as log:
        while step < args.max_steps and not args.finish:
            x = stream.next_batch()  # [B, seq_len]
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += x.numel()
            st = state()
            log.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": round(loss.item(), 5),
                        "lr": scheduler.get_last_lr()[0],
                        "tokens": tokens_seen,
                        "seconds": round(st["train_seconds"], 1),
                    }
                )
                + "\n"
            )
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss.item():.3f}",
                val=f"{last_val:.3f}" if last_val else "-",
                tok_s=f"{tokens_seen / st['train_seconds']:.0f}",
            )
            timed_out = (args.max_minutes is not None and time.perf_counter() - t_start > args.max_minutes * 60) or (
                args.stop_after is not None and step - start_step >= args.stop_after
            )
            if step % args.eval_every == 0 or step == args.max_steps or timed_out:
                last_val = evaluate()
                validated_at = step
                log.write(
                    json.dumps(
                        {
                            "step": step,
                            "val_loss": round(last_val, 5),
                            "val_ppl": round(math.exp(last_val), 3),
                            "tokens": tokens_seen,
                            "seconds": round(state()["train_seconds"], 1),
                        }
                    )
                    + "\n"
                )
                print(f"\nstep {step}: val loss {last_val:.4f} (ppl {math.exp(last_val):.2f})", flush=True)
            if step % args.save_every == 0 or step == args.max_steps or timed_out:
                log.flush()
                _save_checkpoint(out, model, optimizer, scheduler, stream, state(), summary())
                plot_metrics(metrics_path, out / "loss.png")
            if timed_out:
                print(f"stopping at step {step} (--max-minutes/--stop-after); re-run the same command to resume")
                break
    bar.close()
    stream.close()
    if step < args.max_steps and not args.finish:
        return 0
    if validated_at != step:  # --finish: validate the checkpoint as it stands, and record it there too
        last_val = evaluate()
        validated_at = step
        _save_checkpoint(out, model, optimizer, scheduler, stream, state(), summary())

    final = out / "final"
    model.save_pretrained(str(final))
    tokenizer.save_pretrained(str(final))
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=128,
        do_sample=False,
    ).save_pretrained(str(final))
    plot_metrics(metrics_path, final / "loss.png")
    st = state()
    (final / "train_summary.json").write_text(json.dumps(summary(), indent=2) + "\n")
    print(f"done: {step} steps, {tokens_seen} tokens, {st['train_seconds'] / 60:.1f} min; final model in {final}")
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    return run_eval(args) if args.eval_only else run_train(args)
