"""`memlong eval TASK`: evaluation of a MemLong model beside its base, one sub-command per task.

* ``ppl``: perplexity by input length (the paper's Table 1), :mod:`memlong.recipes.eval_ppl`;
* ``passkey``: passkey retrieval by length and depth, :mod:`memlong.recipes.eval_passkey`;
* ``icl``: in-context learning with demonstrations in memory (the paper's Table 2),
  :mod:`memlong.recipes.eval_icl`;
* ``ruler``: RULER's 13 tasks as RULER defines them (needles in a haystack, variable tracking,
  common and frequent words, question answering) by length, :mod:`memlong.recipes.eval_ruler`.

Each task's module docstring is its ``--help``. Without ``--model`` every task evaluates the
default MemLong model (SmolLM2-135M-Instruct in training-free mode,
:func:`memlong.pretrained.load_memlong_model`); its base methods run its base. The flags the
tasks share (``--model``, ``--data``, ``--methods``, ``--seed``, ``--json``, ``--plot``, ...) come from
one parent parser, so they are spelled and mean the same in all; what several tasks share in
code is in :mod:`memlong.recipes.eval_common`.

    memlong eval ppl --data runs/corpus --lengths 4096,16384 --json ppl.json --plot ppl.png
"""

from __future__ import annotations

import argparse

from memlong.config import add_overrides_argument
from memlong.recipes import eval_icl, eval_passkey, eval_ppl, eval_ruler

# task -> (module, one-line help, the shared flag groups it takes beside the common ones: "lengths"
# for the tasks measured at input lengths, "requery" for those that answer a question or score a
# test input after reading). A module has add_arguments(parser), METHODS and run(args, methods) -> int.
TASKS = {
    "ppl": (eval_ppl, "perplexity by input length (the paper's Table 1)", ("lengths",)),
    "passkey": (eval_passkey, "passkey retrieval by length and depth", ("lengths", "requery")),
    "icl": (eval_icl, "in-context learning, demonstrations in memory (the paper's Table 2)", ("requery",)),
    "ruler": (
        eval_ruler,
        "RULER's synthetic tasks by length: needles, variable tracking, common and frequent words",
        ("lengths", "requery"),
    ),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One sub-command per task (``memlong eval ppl|passkey|icl|ruler``), each with its own flags;
    the flags they share come from one parent parser, so they are spelled the same everywhere."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--model",
        default=None,
        help="a MemLong directory (memlong train / save_pretrained) or a base LM (default: the default "
        "MemLong model, SmolLM2-135M-Instruct in training-free mode)",
    )
    shared.add_argument(
        "--base-model",
        default=None,
        help="base LM for the base methods (default: the model's base, from its memlong_base.json; "
        "for the default model, SmolLM2-135M-Instruct)",
    )
    shared.add_argument("--split", default="test", help="the split of --data to evaluate on")
    shared.add_argument("--seed", type=int, default=0)
    shared.add_argument("--methods", default=None, help="comma-separated methods (default: all of the task's)")
    shared.add_argument(
        "--retriever",
        default="minilm",
        help="minilm, hashing, embedding (the LM's own pooled input embeddings), or a sentence-transformers name/path",
    )
    add_overrides_argument(
        shared, "--set bank_dtype=int8 --set retrieval_offsets=[0,1] --set top_k=8", " (a bare word is a string)"
    )
    shared.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    shared.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the models' weights and computation: float32 (default), or bfloat16, faster on a CPU with "
        "AVX-512 bf16 instructions and on GPUs (answers may differ a little; the report records it)",
    )
    shared.add_argument("--json", default=None, metavar="OUT", help="write the results and the config here")
    shared.add_argument("--plot", default=None, metavar="PNG", help="write a plot of the results here")
    by_length = argparse.ArgumentParser(add_help=False)  # the tasks measured at input lengths
    by_length.add_argument("--lengths", default=None, help="comma-separated input lengths in tokens")
    by_length.add_argument(
        "--max-base-length",
        type=int,
        default=16384,
        help="base_full is not attempted above this length (reported as skipped)",
    )
    by_length.add_argument(
        "--resume",
        action="store_true",
        help="continue a run cut short: keep the cells already in --json (ppl: method and "
        "length; passkey: method, length and depth; ruler: task, length and method) and "
        "measure only the others; a report measured with other inputs, another model or "
        "MemLong config is refused",
    )

    requery = argparse.ArgumentParser(add_help=False)  # the tasks that ask after reading
    requery.add_argument(
        "--no-requery",
        dest="requery",
        action="store_false",
        help="answer (icl: score the test input) with the memory retrieved before the question "
        "instead of retrieving again with the question itself (generate(requery=N), the "
        "default)",
    )
    groups = {"lengths": by_length, "requery": requery}

    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for name, (module, summary, extra) in TASKS.items():
        parents = [shared, *(groups[g] for g in extra)]
        module.add_arguments(
            tasks.add_parser(
                name,
                parents=parents,
                help=summary,
                description=module.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )


def run(args) -> int:
    import torch

    module = TASKS[args.task][0]
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m for m in (args.methods or ",".join(module.METHODS)).split(",") if m]
    bad = [m for m in methods if m not in module.METHODS]
    if bad:
        raise SystemExit(f"--methods must be among {module.METHODS} for eval {args.task}; got {bad}")
    return module.run(args, methods)
