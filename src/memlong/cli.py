"""`memlong <verb>`: one command line, each verb a recipe module.

A verb module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Verbs are imported
lazily so that ``memlong --help`` stays fast and a verb's heavy imports cost only its own users.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("memlong.recipes.demo", "end-to-end run: ingest a long input, retrieve, generate"),
    "ask": ("memlong.recipes.ask", "read text files into memory, then answer questions about them (default model)"),
    "data": ("memlong.recipes.data", "build the local corpus, train the BPE tokenizer, list long documents"),
    "pretrain": ("memlong.recipes.pretrain", "train a small base LM from scratch, or evaluate its perplexity"),
    "train": ("memlong.recipes.train", "MemLong adaptation training: frozen lower stack, trained upper layers + gates"),
    "eval": (
        "memlong.recipes.eval",
        "evaluation: `memlong eval ppl|passkey|icl|ruler` (perplexity by length, passkey retrieval, in-context learning, RULER's synthetic tasks)",
    ),
    "bench": (
        "memlong.recipes.bench",
        "benchmarks: `memlong bench ingest|search|retriever` (tokens/s and peak memory of reading, search latency and recall, the retrievers' cost and quality)",
    ),
    "heads": (
        "memlong.recipes.heads",
        "previous-token and induction heads of a base model, and the memory layer they suggest",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memlong", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module_name, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # Arguments are added only for the verb actually invoked (lazy import).
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown verb {argv[0]!r}; choose one of: {', '.join(VERBS)}")
        parser.print_help()
        return 0
    verb = argv[0]
    module = importlib.import_module(VERBS[verb][0])
    verb_parser = argparse.ArgumentParser(prog=f"memlong {verb}", description=VERBS[verb][1])
    module.add_arguments(verb_parser)
    args = verb_parser.parse_args(argv[1:])
    from memlong.config import MemLongConfigError

    try:
        return int(module.run(args) or 0)
    except MemLongConfigError as e:
        _invoked(verb_parser, args).error(str(e))


def _invoked(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The sub-command's parser when the verb has sub-commands (``memlong eval ppl``), else ``parser``:
    a usage error shows the usage of what was run."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(args, action.dest, None), parser)
    return parser


if __name__ == "__main__":
    sys.exit(main())
