"""`memlong train`: MemLong adaptation training (the paper's stage 2).

The layers up to the memory layer, the embeddings and the LM head stay frozen; the layers above
it (fully, or LoRA with ``--lora-r``) and the gates learn to use retrieved chunks. Long
documents are read in order, one per batch row, in segments of the local window; each segment
retrieves from the memory its document's earlier segments built; memory is reset at every
document boundary.

One process (without ``--model``: the default base model, SmolLM2-135M-Instruct):
    memlong train --data runs/corpus --output runs/memlong --steps 400
Several processes (each reads its own share of the documents; gloo on CPUs, NCCL on GPUs):
    torchrun --nproc_per_node 2 -m memlong train --data runs/corpus --output runs/memlong
    accelerate launch --config_file configs/accelerate/ddp.yaml -m memlong train ...
configs/accelerate/ holds ddp.yaml, zero2.yaml (DeepSpeed ZeRO-2) and fsdp.yaml for GPUs
(written for accelerate 1.x; not run on GPUs yet). On CPUs use torchrun: accelerate's
MULTI_CPU launcher needs MPI.
Resume: the same command with ``--resume`` continues from the newest checkpoint in --output.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
import warnings
from pathlib import Path


def int_tuple(text: str) -> tuple[int, ...]:
    """argparse type for comma-separated integers (``"0,1"`` -> ``(0, 1)``)."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1; got {text!r}") from None


def _save_what_trains(models, weights, output_dir) -> None:
    """accelerate's save-state hook: each model's checkpoint keeps only the parameters that train
    (LoRA, gates, trained layers), a few MB where the whole model is hundreds: the frozen rest is
    the base's, loaded again on resume (:func:`_load_what_trains`)."""
    for i, model in enumerate(models):
        trains = {name for name, p in model.named_parameters() if p.requires_grad}
        weights[i] = {k: v for k, v in weights[i].items() if k in trains}


def _load_what_trains(models, input_dir) -> None:
    """accelerate's load-state hook for :func:`_save_what_trains`' checkpoints: loads the trained
    parameters into each model, checks that the file held every one of them and nothing else,
    and takes the model off accelerate's list (a whole-model checkpoint is left to accelerate)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    for i, model in enumerate(list(models)):
        path = Path(input_dir) / f"model{f'_{i}' if i else ''}.safetensors"
        if not path.exists():
            continue
        with safe_open(str(path), framework="pt") as f:
            held = set(f.keys())
        trains = {name for name, p in model.named_parameters() if p.requires_grad}
        if trains < held:
            continue  # the whole model (a checkpoint from before these hooks): accelerate loads it
        if held != trains:
            raise SystemExit(
                f"--resume: {path} holds other parameters than this run trains "
                f"({len(held ^ trains)} differ, e.g. {sorted(held ^ trains)[:3]}); "
                "resume with the flags it was trained with (--lora-r, --train-layers, the layers)"
            )
        model.load_state_dict(load_file(path, device="cpu"), strict=False)
        models.remove(model)


def _forward_tokens_per_second(model, batch: int, window: int, device) -> float:
    """Tokens per second of the model's plain forward (no gradient, a fresh memory) over one random
    batch of ``batch`` x ``window`` tokens, after one warm-up segment: what a training step's speed is
    measured against."""
    import torch

    ids = torch.randint(0, model.config.vocab_size, (batch, window), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(ids[:, : min(window, 64)], cache=model.new_memory(batch))
        t0 = time.perf_counter()
        model(ids, cache=model.new_memory(batch), logits_to_keep=1)
        seconds = time.perf_counter() - t0
    model.train(was_training)
    return batch * window / max(seconds, 1e-9)


def sampled_labels(ids, share: float, seed: int, step: int):
    """``ids`` as labels with all but a random ``share`` of the positions masked (-100); drawn from
    (seed, step), so a resumed run draws what the uninterrupted one would. ``share`` 1: ``ids``."""
    import torch

    if share >= 1:
        return ids
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    drop = torch.rand(ids.shape, generator=g) >= share
    return ids.masked_fill(drop.to(ids.device), -100)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="base causal LM name or path (default: the default base model, SmolLM2-135M-Instruct, "
        "converted once into the memlong cache; $MEMLONG_BASE_MODEL replaces it)",
    )
    g.add_argument("--tokenizer", default=None, help="tokenizer name or path (default: --model)")
    g.add_argument("--memlong-config", default=None, help="memlong_config.json to use (else the flags below)")
    g.add_argument("--memory-layer", type=int, default=None, help="1-based (default: the paper's layout scaled)")
    g.add_argument("--retrieval-layers", default=None, help="comma-separated, 1-based")
    g.add_argument("--chunk-size", type=int, default=128)
    g.add_argument("--top-k", type=int, default=4)
    g.add_argument("--capacity", type=int, default=32768, help="memory capacity in tokens")
    g.add_argument(
        "--memory-positions",
        choices=["paper", "none"],
        default="paper",
        help="RoPE in memory attention: paper (query at its window position, keys at 0) or none",
    )
    g.add_argument(
        "--retrieval-offsets",
        type=int_tuple,
        default=(0,),
        help="chunks each hit brings, relative to it: 0 (the paper), 0,1 (hit and continuation)",
    )
    g.add_argument("--window", type=int, default=1024, help="local window (and training segment) in tokens")
    g.add_argument(
        "--retriever",
        default="minilm",
        help="minilm (offline default), hashing, embedding (the LM's own pooled input embeddings), "
        "or a sentence-transformers name/path",
    )
    g = p.add_argument_group("what trains")
    g.add_argument(
        "--train-layers",
        choices=["upper", "retrieval"],
        default="upper",
        help="upper: every layer above the memory layer (the paper); retrieval: only the retrieval "
        "layers (the layers between stay frozen)",
    )
    g.add_argument("--lora-r", type=int, default=0, help="LoRA rank on the trained layers; 0 trains them fully")
    g.add_argument("--lora-alpha", type=int, default=32)
    g.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=True,
        help="a corpus folder from `memlong data` (train/validation splits), a .jsonl file, a folder "
        "of .txt files, or a datasets name",
    )
    g.add_argument("--val-data", default=None, help="validation documents (default: the corpus' validation split)")
    g.add_argument("--min-doc-tokens", type=int, default=None, help="skip shorter documents (default: 2 windows)")
    g.add_argument(
        "--passkey-rate",
        type=float,
        default=0.0,
        help="fraction of documents with a planted passkey asked for later (synthetic retrieval task)",
    )
    g.add_argument(
        "--recall-rate",
        type=float,
        default=0.0,
        help="fraction of documents that get copies of their own earlier passages (a dense retrieval signal)",
    )
    g.add_argument("--recall-span", type=int, default=512, help="tokens per copied passage")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=400)
    g.add_argument("--batch-size", type=int, default=4, help="documents read in parallel per process")
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument(
        "--gate-lr",
        type=float,
        default=None,
        help="learning rate of the gates (default: --lr); gates start at 0 and Adam moves them "
        "about one lr per step, so a larger value lets memory in sooner",
    )
    g.add_argument("--warmup", type=int, default=20)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--loss-sample",
        type=float,
        default=1.0,
        help="the share of each segment's positions the loss is taken on, drawn at random per step (1: all); "
        "the LM head (a 49k-word vocabulary on the default model) runs only there, forward and backward",
    )
    g.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default="no",
        help="accelerate's mixed precision (autocast; trained weights and optimizer stay float32); bf16 "
        "on a CPU needs AVX-512 to be fast (without it, 10-20x slower than float32: a warning "
        "says so)",
    )
    g.add_argument("--threads", type=int, default=0, help="torch threads per process (0: default)")
    g.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop (validate, checkpoint, save) after this much wall time, whatever --steps says",
    )
    g = p.add_argument_group("evaluation, checkpoints, logs")
    g.add_argument("--output", required=True)
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    g.add_argument("--eval-every", type=int, default=100)
    g.add_argument("--eval-windows", type=int, default=8)
    g.add_argument("--eval-length", type=int, default=8192, help="validation window (tokens)")
    g.add_argument("--eval-score", type=int, default=1024, help="score the last N tokens of each window")
    g.add_argument("--save-every", type=int, default=100)
    g.add_argument("--log-every", type=int, default=10)


def _check_args(args) -> None:
    for name in ("passkey_rate", "recall_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise SystemExit(f"--{name.replace('_', '-')} is a probability in [0, 1], got {getattr(args, name)}")
    if args.recall_rate and args.recall_span < 1:
        raise SystemExit(f"--recall-span must be >= 1, got {args.recall_span}")
    if not 0.0 < args.loss_sample <= 1.0:
        raise SystemExit(
            f"--loss-sample is the share of positions the loss is taken on, in (0, 1]; got {args.loss_sample}"
        )


def _build(args):
    """(MemLong model, tokenizer, the base's name for memlong_base.json). Without ``--model``: the
    default base (:func:`memlong.pretrained.default_base_model_path`), recorded as
    ``memlong:default`` so the trained directory finds it on any machine (its converted path is
    per machine); with ``$MEMLONG_BASE_MODEL`` set, that model's name or path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import memlong

    base_name = args.model
    if args.model is None:
        from memlong.pretrained import DEFAULT_BASE, ENV_VAR, default_base_model_path

        args.model = default_base_model_path()
        base_name = args.model if os.environ.get(ENV_VAR) else DEFAULT_BASE
    tok = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    tok.model_max_length = 10**9
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.memlong_config:
        cfg = memlong.MemLongConfig.from_pretrained(os.path.dirname(os.path.abspath(args.memlong_config)))
    else:
        kw = dict(
            chunk_size=args.chunk_size,
            top_k=args.top_k,
            memory_capacity=args.capacity,
            local_window=args.window,
            retrieval_offsets=args.retrieval_offsets,
            memory_positions=args.memory_positions,
        )
        if args.memory_layer is not None:
            layers = tuple(int(x) for x in (args.retrieval_layers or "").split(",") if x)
            if not layers:
                raise SystemExit("--memory-layer needs --retrieval-layers too (comma-separated, 1-based)")
            cfg = memlong.MemLongConfig(memory_layer=args.memory_layer, retrieval_layers=layers, **kw)
        else:
            cfg = memlong.MemLongConfig.for_num_layers(model.config.num_hidden_layers, **kw)
    model = memlong.wrap(model, cfg, retriever=args.retriever, tokenizer=tok)
    return model, tok, base_name


def _summary(args, rows: list[dict], step: int, tokens: int, seconds: float, accelerator) -> dict:
    """What the run was: the record a model card is written from (``final/train_summary.json``)."""
    import platform

    import torch
    import transformers

    from memlong.profiling import cpu_name

    last_val = next((r for r in reversed(rows) if r.get("val_loss_memory") not in (None, "")), None)
    return {
        "steps": step,
        "tokens": tokens,
        "train_seconds": seconds,
        "processes": accelerator.num_processes,
        "threads_per_process": torch.get_num_threads(),
        "device": str(accelerator.device),
        "mixed_precision": args.mixed_precision,
        "hardware": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"{cpu_name()} ({os.cpu_count()} cores)",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "last_validation": {k: float(v) for k, v in last_val.items() if k == "step" or k.startswith("val_")}
        if last_val
        else None,
        "validation": {"windows": args.eval_windows, "length": args.eval_length, "scored": args.eval_score},
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items()},
    }


def _plot(rows: list[dict], path: Path) -> None:
    from memlong.plotting import figure

    with figure(path, "step", "loss (nats/token)") as ax:
        train = [r for r in rows if r.get("loss") not in (None, "")]
        ax.plot([r["step"] for r in train], [float(r["loss"]) for r in train], label="train loss", lw=1)
        val = [r for r in rows if r.get("val_loss_memory") not in (None, "")]
        if val:
            steps = [r["step"] for r in val]
            ax.plot(steps, [float(r["val_loss_memory"]) for r in val], "o-", label="val loss, memory")
            ax.plot(steps, [float(r["val_loss_no_memory"]) for r in val], "s--", label="val loss, no memory")


def run(args) -> int:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from tqdm.auto import tqdm

    from memlong.evaluation import token_windows, window_nll
    from memlong.modeling import save_trained
    from memlong.profiling import slow_bfloat16
    from memlong.training import LoraSpec, SegmentStream, document_texts, freeze_for_memlong, gate_parameters

    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Gates of a row without memory yet get no gradient in that step: DDP must allow it.
    # cpu=True on a machine without CUDA: accelerate then treats torchrun/accelerate-launch
    # processes as MULTI_CPU (gloo) instead of independent single processes.
    # A second run in the same process (a notebook, tests) may ask for another mixed precision:
    # forget the previous run's settings (the distributed state itself is kept).
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=args.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    slow = slow_bfloat16(accelerator.device.type) if args.mixed_precision == "bf16" else None
    if slow:
        warnings.warn(f"--mixed-precision bf16: {slow}", stacklevel=2)
    set_seed(args.seed)
    out = Path(args.output)
    model, tok, base_name = _build(args)
    memlong_model = model
    lora = (
        LoraSpec(r=args.lora_r, alpha=args.lora_alpha, targets=tuple(args.lora_targets.split(",")))
        if args.lora_r
        else None
    )
    trained = freeze_for_memlong(model, lora, layers=args.train_layers)
    params = [p for p in trained.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in trained.parameters())
    gates = {id(p) for p in gate_parameters(memlong_model)}
    groups = [
        {"params": [p for p in params if id(p) not in gates]},
        {"params": [p for p in params if id(p) in gates], "lr": args.gate_lr or args.lr, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)

    def lr_lambda(step):
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    trained, optimizer, scheduler = accelerator.prepare(trained, optimizer, scheduler)
    # checkpoints keep what trains (LoRA, gates, trained layers): the frozen rest is the base's
    accelerator.register_save_state_pre_hook(_save_what_trains)
    accelerator.register_load_state_pre_hook(_load_what_trains)

    cfg = memlong_model.memlong_config
    stream = SegmentStream(
        documents=document_texts(args.data, "train"),
        tokenize=lambda text: tok(text, add_special_tokens=False)["input_ids"],
        batch_size=args.batch_size,
        segment=cfg.local_window,
        min_tokens=args.min_doc_tokens if args.min_doc_tokens is not None else 2 * cfg.local_window,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
        passkey_rate=args.passkey_rate,
        recall_rate=args.recall_rate,
        recall_span=args.recall_span,
        seed=args.seed,
    )
    step, tokens_before, seconds_before = 0, 0, 0.0
    ckpt_root = out / "checkpoints"
    if args.resume:
        # trainer_state.json is written last: a checkpoint without it was cut short while saving
        ckpts = sorted(
            (p for p in ckpt_root.glob("step-*") if (p / "trainer_state.json").is_file()),
            key=lambda p: int(p.name.split("-")[1]),
        )
        if not ckpts:
            raise SystemExit(f"--resume: no complete checkpoint in {ckpt_root}")
        accelerator.load_state(str(ckpts[-1]))
        state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
        step = state["step"]
        tokens_before, seconds_before = state.get("tokens", 0), state.get("seconds", 0.0)
        saved_memory = ckpts[-1] / f"memory_{accelerator.process_index}"
        own = state["streams"][accelerator.process_index]
        # the documents in progress go on only with the memory their earlier segments built
        stream.load_state_dict(own if saved_memory.is_dir() else {**own, "rows": []})
        accelerator.print(f"resumed from {ckpts[-1]} at step {step}")

    val_windows = None
    if args.eval_every and accelerator.is_main_process:
        val_spec = args.val_data or args.data
        texts = document_texts(val_spec, "validation")()
        lists = []
        for text in texts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) >= args.eval_length:
                lists.append(ids)
            if len(lists) >= args.eval_windows:
                break
        val_windows = token_windows(lists, args.eval_length, args.eval_windows)
        if not val_windows:
            accelerator.print(f"no validation document has {args.eval_length} tokens: validation skipped")

    def validate() -> dict:
        if not val_windows:
            return {}
        memlong_model.eval()
        res = {}
        for name, use in (("memory", True), ("no_memory", False)):
            s, n = window_nll(memlong_model, val_windows, args.eval_score, use_memory=use)
            res[f"val_loss_{name}"] = round(s / n, 5)
            res[f"val_ppl_{name}"] = round(math.exp(s / n), 4)
        memlong_model.train()
        return res

    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.csv"
    fields = [
        "step",
        "loss",
        "lr",
        "tokens",
        "seconds",
        "tokens_per_second",
        "forward_ratio",
        "val_loss_memory",
        "val_ppl_memory",
        "val_loss_no_memory",
        "val_ppl_no_memory",
    ]
    rows: list[dict] = []
    if args.resume and log_path.exists():
        with open(log_path) as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    # the yardstick for the training speed: the plain forward (no gradient) over a batch like the training ones
    forward_tps = _forward_tokens_per_second(memlong_model, args.batch_size, args.window, accelerator.device)
    if accelerator.is_main_process:
        (out / "args.json").write_text(json.dumps(vars(args), indent=2))
        accelerator.print(f"plain forward: {forward_tps:,.0f} tokens/s on this process's threads")
        accelerator.print(
            f"trainable {n_train:,} of {n_all:,} parameters "
            f"({'LoRA r=%d on' % args.lora_r if args.lora_r else 'fully:'} {args.train_layers} layers + gates); "
            f"{accelerator.num_processes} process(es)"
        )
    memory = memlong_model.new_memory(args.batch_size)
    if args.resume and saved_memory.is_dir():  # the documents in progress go on with their memory
        memory = memlong_model.load_memory(saved_memory)
    trained.train()
    t0, tokens = time.perf_counter(), tokens_before  # tokens and seconds count from the start of the run

    def seconds() -> float:
        return round(seconds_before + time.perf_counter() - t0, 1)

    bar = tqdm(total=args.steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")

    def time_up() -> bool:
        """Main process decides (others follow), so collective saves stay in step."""
        up = torch.tensor(
            [
                int(
                    accelerator.is_main_process
                    and args.max_minutes is not None
                    and time.perf_counter() - t0 > 60 * args.max_minutes
                )
            ]
        )
        if accelerator.num_processes > 1:
            up = accelerator.reduce(up.to(accelerator.device), reduction="sum").cpu()
        return bool(up.item())

    while step < args.steps:
        batch = stream.next_batch()
        if batch.new_document:
            memory.reset(rows=batch.new_document)
        ids = batch.input_ids.to(accelerator.device)
        mask = batch.attention_mask.to(accelerator.device)
        outp = trained(
            input_ids=ids,
            attention_mask=mask,
            labels=sampled_labels(ids, args.loss_sample, args.seed, step),
            cache=memory,
        )
        accelerator.backward(outp.loss)
        if args.grad_clip:
            accelerator.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += batch.tokens * accelerator.num_processes
        loss = accelerator.gather(outp.loss.detach()[None]).mean().item()
        bar.update(1)
        row = {
            "step": step,
            "loss": round(loss, 5),
            "lr": scheduler.get_last_lr()[0],
            "tokens": tokens,
            "seconds": seconds(),
        }
        run_tps = (tokens - tokens_before) / max(time.perf_counter() - t0, 1e-9) / accelerator.num_processes
        row.update(tokens_per_second=round(run_tps, 1), forward_ratio=round(run_tps / forward_tps, 3))
        bar.set_postfix(loss=f"{loss:.3f}", speed=f"{row['forward_ratio']:.2f}x forward")
        stopping = time_up()
        at_end = step == args.steps or stopping
        if args.eval_every and (step % args.eval_every == 0 or at_end) and accelerator.is_main_process:
            row.update(validate())
            accelerator.print(f"step {step}: {json.dumps({k: v for k, v in row.items() if k.startswith('val')})}")
        if step % args.log_every == 0 or "val_loss_memory" in row or at_end:
            rows.append(row)
            if accelerator.is_main_process:
                with open(log_path, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=fields)
                    w.writeheader()
                    w.writerows(rows)
        if args.save_every and (step % args.save_every == 0 or at_end):
            ckpt = ckpt_root / f"step-{step}"
            accelerator.save_state(str(ckpt))
            memory.save(ckpt / f"memory_{accelerator.process_index}")  # each process's rows
            streams = (
                accelerator.gather_for_metrics([stream.state_dict()], use_gather_object=True)
                if accelerator.num_processes > 1
                else [stream.state_dict()]
            )
            if accelerator.is_main_process:
                (ckpt / "trainer_state.json").write_text(
                    json.dumps({"step": step, "tokens": tokens, "seconds": seconds(), "streams": streams})
                )
        accelerator.wait_for_everyone()
        if stopping:
            accelerator.print(f"--max-minutes={args.max_minutes} reached at step {step}")
            break
    bar.close()
    if accelerator.is_main_process:
        final = out / "final"
        save_trained(accelerator.unwrap_model(trained), memlong_model, final, base_model=base_name)
        tok.save_pretrained(final)
        (final / "train_summary.json").write_text(
            json.dumps(_summary(args, rows, step, tokens, seconds(), accelerator), indent=2) + "\n"
        )
        _plot(rows, out / "loss.png")
        accelerator.print(f"saved {final} (log {log_path}, plot {out / 'loss.png'})")
    accelerator.end_training()
    return 0
