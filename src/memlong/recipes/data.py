"""`memlong data`: build the local corpus, train the BPE tokenizer, list long held-out documents.

    memlong data --out runs/corpus                       # corpus + 8k tokenizer
    memlong data --out runs/corpus --sweep 4096,8192,16384 --json runs/vocab_sweep.json

Writes into ``--out``: ``{train,validation,test}.jsonl``, ``summary.json``, ``tokenizer/`` and
``long_documents.json`` (validation/test documents of >= 16k tokens, by source).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from memlong.data.sources import DEFAULT_CACHE_DIR, DEFAULT_MAN_ROOT, SOURCE_NAMES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="corpus directory to create")
    p.add_argument("--sources", default=",".join(SOURCE_NAMES), help="comma list of: stdlib,man,jdk")
    p.add_argument("--stdlib-root", default=None, help="stdlib folder (default: sysconfig's)")
    p.add_argument("--man-root", default=DEFAULT_MAN_ROOT)
    p.add_argument("--jdk-src-zip", default=None, help="JDK src.zip (default: searched for)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="rendered man page cache")
    p.add_argument("--workers", type=int, default=2, help="parallel groff renderers")
    p.add_argument("--rebuild", action="store_true", help="rebuild the corpus files if present")
    p.add_argument("--vocab-size", type=int, default=8192)
    # Why a cap: the JDK alone is ~210 MB against ~30 MB each for stdlib and man pages; an
    # uncapped BPE would spend its merges on Java. Same budget per source = balanced vocabulary.
    p.add_argument(
        "--tokenizer-mb-per-source",
        type=float,
        default=30.0,
        help="train the BPE on at most this many MB of each source's train split",
    )
    p.add_argument(
        "--sweep",
        default=None,
        help="comma list of vocab sizes to measure (no training of the final tokenizer unless --vocab-size)",
    )
    p.add_argument("--sweep-hidden", type=int, default=256, help="model width for the sweep's step timing")
    p.add_argument("--sweep-layers", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--long-min-tokens", type=int, default=16384)
    p.add_argument("--json", default=None, help="write the sweep table here")


def _step_timer(hidden: int, layers: int, seq: int = 1024):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def step_seconds(vocab: int) -> float:
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=int(hidden * 8 / 3 // 16 * 16),
            num_hidden_layers=layers,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=seq,
            tie_word_embeddings=True,
        )
        m = LlamaForCausalLM(cfg)
        opt = torch.optim.AdamW(m.parameters(), 1e-3)
        x = torch.randint(0, vocab, (1, seq))
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            m(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        return sorted(times[1:])[1]  # median of 3 after a warm-up step

    return step_seconds


def _capped_texts(docs, mb_per_source: float) -> list[str]:
    """Train-split texts in file order, at most ``mb_per_source`` MB from each source."""
    budget: dict[str, float] = {}
    texts = []
    for d in docs:
        used = budget.get(d.source, 0.0)
        if used >= mb_per_source * 1e6:
            continue
        budget[d.source] = used + len(d.text.encode("utf-8"))
        texts.append(d.text)
    return texts


def run(args: argparse.Namespace) -> int:
    from memlong.data.corpus import build_corpus, iter_split, long_documents
    from memlong.tokenizer import is_lossless, load_tokenizer, train_and_save, vocab_sweep

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    bad = [s for s in sources if s not in SOURCE_NAMES]
    if bad:
        raise SystemExit(f"unknown source(s) {bad}; choose from {', '.join(SOURCE_NAMES)}")

    if args.rebuild or not (out / "summary.json").is_file():
        t0 = time.perf_counter()
        kw = {
            "stdlib": {"root": args.stdlib_root},
            "man": {"root": args.man_root, "cache_dir": args.cache_dir, "workers": args.workers},
            "jdk": {"path": args.jdk_src_zip},
        }
        summary = build_corpus(out, sources, kw)
        print(f"corpus built in {time.perf_counter() - t0:.1f}s -> {out}")
    else:
        summary = json.loads((out / "summary.json").read_text())
        print(f"corpus exists at {out} (use --rebuild to rebuild)")
    for split, st in summary["splits"].items():
        srcs = ", ".join(f"{k}: {v['documents']} docs / {v['bytes'] / 1e6:.1f} MB" for k, v in st["by_source"].items())
        print(f"  {split:<10} {st['documents']:>6} docs {st['bytes'] / 1e6:7.1f} MB  ({srcs})")
    print(f"  skipped: {summary['skipped']['total']} {summary['skipped']['by_reason']}")

    train_texts = _capped_texts(iter_split(out, "train"), args.tokenizer_mb_per_source)
    if args.sweep:
        import torch  # noqa: F401  (threads set above)

        sizes = [int(v) for v in args.sweep.split(",")]
        eval_texts = [d.text for d in iter_split(out, "validation")]
        rows = vocab_sweep(train_texts, eval_texts, sizes, _step_timer(args.sweep_hidden, args.sweep_layers))
        print(f"{'vocab':>7} {'bytes/token':>11} {'step s':>7} {'bytes/s':>8}")
        for r in rows:
            print(
                f"{r['vocab_size']:>7} {r['bytes_per_token']:>11.3f} {r['step_seconds']:>7.3f} {r['bytes_per_second']:>8.0f}"
            )
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(
                json.dumps(
                    {
                        "command": "memlong data "
                        + " ".join(
                            f"--{k.replace('_', '-')} {v}"
                            for k, v in vars(args).items()
                            if v not in (None, False) and not k.startswith("_")
                        ),
                        "model": {"hidden": args.sweep_hidden, "layers": args.sweep_layers, "seq": 1024},
                        "rows": rows,
                    },
                    indent=2,
                )
                + "\n"
            )

    t0 = time.perf_counter()
    tok = train_and_save(train_texts, args.vocab_size, out / "tokenizer")
    del train_texts
    print(
        f"tokenizer: byte-level BPE, vocab {len(tok)}, trained in {time.perf_counter() - t0:.1f}s -> {out / 'tokenizer'}"
    )
    tok = load_tokenizer(out / "tokenizer")  # check the saved files, not the in-memory object
    held_out = [d for s in ("validation", "test") for d in iter_split(out, s)]
    test_docs = held_out
    n_bad = sum(not is_lossless(tok, d.text) for d in test_docs)
    print(f"lossless round trip on {len(test_docs) - n_bad}/{len(test_docs)} held-out documents")
    listing = {}
    for split in ("validation", "test"):
        listing[split] = long_documents(iter_split(out, split), tok, args.long_min_tokens)
        counts = {k: len(v) for k, v in listing[split].items()}
        print(f"  {split}: documents >= {args.long_min_tokens} tokens by source: {counts}")
    (out / "long_documents.json").write_text(
        json.dumps({"min_tokens": args.long_min_tokens, **listing}, indent=2) + "\n"
    )
    return 0 if n_bad == 0 else 1
