"""`memlong ask`: read text files into memory, then answer questions about them.

The files are read in order, one blank line between them, into a MemLong memory (a progress
bar counts tokens); each question is then answered from that memory, greedily: it is put to the
model as ``Question: ...`` / ``Answer:`` after the text (``--format chat``: in the tokenizer's chat
template instead; on the default model the plain form answers a planted fact that the chat form
misses) and retrieves the chunks it is about with its own embedding (``generate(requery=True)``),
beside the local window that still holds the end of the text. Every question is answered from
the same memory (the text alone, not earlier questions and answers: each reads into a copy).

    memlong ask book.txt notes.txt --question "Who wrote the letter?"
    memlong ask book.txt                      # interactive: one question per line, empty line or EOF ends
    echo "Who wrote the letter?" | memlong ask book.txt
    memlong ask book.txt --memory runs/book-memory --question "..."   # read once, reuse after

``--memory DIR`` saves the memory after reading, with a manifest (``ask_manifest.json``: each
file's path, size and sha256, the model, its MemLong config, the retriever, the memlong
version). A later call with the same files and model loads it instead of reading again; when a
file changed it says which and reads again, replacing the saved memory only once the new one is
complete. A memory that cannot be loaded (corrupted, or written by another model, config or
retriever) is refused with what was wrong, never used and never deleted. A process killed while
saving leaves the previous memory or the new one, whole: the next call reuses it or reads again.
One process at a time uses DIR (a lock, ``DIR/.memlong.lock``): another waits for it up to
``--lock-timeout`` seconds, then stops saying so.

Nothing is dropped silently. Files longer than the memory holds (``memory_capacity`` tokens of
bank plus the local window) get, by default, a ``memory_capacity`` raised for this call to hold
them all (``--evict`` keeps the model's and evicts instead): the bank stays in RAM when it fits in
half the available memory with a copy for a question; else, with ``--memory DIR``, its keys and
values live in memory-mapped files in DIR (``bank_device="mmap"``; unlinked at once, so nothing
but the saved memory stays there), when the disk holds the bank twice (it and its save; three
times when several questions may each read into a copy). Otherwise eviction drops chunks while
reading: before reading, ``ask`` says how many tokens will be kept and evicted and the ``--set
memory_capacity=N`` that would keep them all (and the bytes that takes); after reading (and when
a saved memory is reused), which token ranges were evicted and where they stand in the files
(also in ``--json``).

The model is the default MemLong model (SmolLM2-135M-Instruct, training-free) unless ``--model``
names another (a MemLong directory or a base model). ``--show-retrieved`` prints the chunks a
question retrieves from memory, with their text as it stands in the files.

``--rag`` answers with the plain retrieval-augmented baseline instead (:mod:`memlong.rag`): the
files are cut into the memory's chunks and embedded with the same retriever, and each question
puts the ``top_k`` chunks most similar to it, as text in their order, before itself; the base
model alone reads that short prompt. Nothing is read into memory (``--memory`` does not apply).

    memlong ask book.txt --rag --show-retrieved --question "Who wrote the letter?"
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from memlong.config import add_overrides_argument
from memlong.qa import BaseModelUnavailable, answer, load_base, question_ids, rag_answer

MANIFEST = "ask_manifest.json"
MANIFEST_FORMAT = "memlong-ask-v1"
SAVED_BY = "memlong ask"  # in memory.json's metadata: a memory whose manifest a killed save did not write
MAX_RANGES_PRINTED = 8
SEPARATOR = "\n\n"  # between files: one blank line
PREVIEW_CHARS = 200


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="text files (UTF-8) to read, in this order")
    p.add_argument(
        "--question",
        "-q",
        action="append",
        default=None,
        help="a question to answer (repeatable); without it, questions are read from stdin, one per "
        "line, until an empty line or EOF",
    )
    p.add_argument(
        "--model",
        default=None,
        help="a MemLong directory (save_pretrained / memlong train) or a base model name or path "
        "(default: the default MemLong model, SmolLM2-135M-Instruct in training-free mode)",
    )
    p.add_argument(
        "--retriever",
        default="minilm",
        help="minilm (default), hashing, embedding, or a sentence-transformers name/path",
    )
    p.add_argument(
        "--memory",
        default=None,
        metavar="DIR",
        help="save the memory here after reading; reuse it on later calls while the files and the model are unchanged",
    )
    p.add_argument(
        "--format",
        choices=["plain", "chat"],
        default="plain",
        help="how a question is put to the model: plain (the default: 'Question: ...' and 'Answer:' as "
        "text after the files; retrieval embeds that prompt) or chat (the tokenizer's chat template, "
        "the question as the user's turn; retrieval embeds the question alone). On the default "
        "model plain answers a planted fact that chat does not",
    )
    p.add_argument(
        "--show-retrieved",
        action="store_true",
        help="also print the chunks each question retrieves (chunk id, token span, score, text)",
    )
    p.add_argument(
        "--rag",
        action="store_true",
        help="answer with plain retrieval-augmented generation instead of memory: the top_k chunks of the "
        "files most similar to the question (the same retriever), as text before it, read by the base "
        "model alone; no memory is read or saved",
    )
    add_overrides_argument(
        p,
        "--set question_order=score --set question_offsets=[0,1] --set top_k=8",
        ". A saved --memory is reused across the fields that only decide how questions search "
        "(MemLongConfig.QUESTION_FIELDS); another field needs a new --memory",
    )
    p.add_argument(
        "--evict",
        action="store_true",
        help="keep the model's memory_capacity for files longer than it holds, evicting chunks while "
        "reading (by default it is raised for this call to hold all of the files: the bank in RAM when "
        "it fits in half the available memory, else in memory-mapped files in --memory DIR when the disk "
        "there holds it); ask says what was evicted",
    )
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="with --memory: how long to wait for another memlong process using the same DIR before "
        "giving up (default 300)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default=None, metavar="OUT", help="write everything printed here, as JSON")


# ---------------------------------------------------------------------------------------------
# input files
# ---------------------------------------------------------------------------------------------


@dataclass
class SourceFile:
    path: Path  # absolute
    given: str  # as given on the command line
    text: str
    size: int  # bytes
    sha256: str
    start: int = 0  # character offset of the file in the joined text

    def record(self) -> dict:
        return {"path": str(self.path), "size": self.size, "sha256": self.sha256}


def read_source(given: str) -> SourceFile:
    """One FILE argument, read and checked; a bad one exits naming the path and what to do."""
    path = Path(given)
    if not path.exists():
        raise SystemExit(f"memlong ask: no such file: {given} (check the path)")
    if path.is_dir():
        raise SystemExit(
            f"memlong ask: {given} is a directory, not a text file; give the files inside it "
            f"(e.g. {os.path.join(given, '*.txt')})"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SystemExit(
            f"memlong ask: cannot read {given} ({e.strerror or e}); check that it is a readable file"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SystemExit(
            f"memlong ask: {given} is not UTF-8 text (invalid byte at offset {e.start}); "
            "convert it to UTF-8 (e.g. iconv -t utf-8) or give another file"
        ) from None
    if not text.strip():
        raise SystemExit(f"memlong ask: {given} is empty: there is nothing to read in it; give a file with text")
    return SourceFile(path.resolve(), given, text, len(data), hashlib.sha256(data).hexdigest())


def join_sources(files: list[SourceFile]) -> str:
    """The text the model reads: the files in order, each followed by one blank line before the
    next; sets each file's ``start``."""
    parts, at = [], 0
    for i, f in enumerate(files):
        body = f.text.rstrip("\n")
        f.start = at
        parts.append(body)
        at += len(body) + (len(SEPARATOR) if i < len(files) - 1 else 0)
    return SEPARATOR.join(parts)


def locate(files: list[SourceFile], char: int) -> tuple[SourceFile, int]:
    """(file, 1-based line) of character ``char`` of the joined text."""
    where = files[0]
    for f in files:
        if f.start <= char:
            where = f
    return where, where.text.count("\n", 0, max(0, char - where.start)) + 1


def check_memory_dir(memory: str | None) -> Path | None:
    if memory is None:
        return None
    d = Path(memory)
    if d.exists() and not d.is_dir():
        raise SystemExit(
            f"memlong ask: --memory {memory} is a file, not a directory; pass a folder for the memory "
            "(it is created if needed)"
        )
    return d


# ---------------------------------------------------------------------------------------------
# manifest: what a saved memory was read from, by which model
# ---------------------------------------------------------------------------------------------


def model_identity(name: str | None) -> str:
    """The model as the manifest records it: ``default``, an absolute local path, or a hub name."""
    if name in (None, "default"):
        return "default"
    return str(Path(name).resolve()) if Path(name).exists() else str(name)


def _memory_json(directory: Path) -> dict:
    """The saved memory's ``memory.json`` ({} when missing or unreadable: loading it says why)."""
    from memlong.memory.persistence import MEMORY_JSON

    try:
        meta = json.loads((directory / MEMORY_JSON).read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def _memory_version(directory: Path) -> str | None:
    return _memory_json(directory).get("version")


def _ours(name: str) -> bool:
    """Whether a file in a --memory folder without a memory is ours to ignore (and replace): the lock,
    what a killed save leaves."""
    from memlong.memory.bank import MMAP_PREFIX
    from memlong.memory.lock import LOCK_NAME
    from memlong.memory.persistence import is_save_leftover

    # a K/V page file is unlinked as soon as it is mapped: one is left only by a kill in between
    return name in (LOCK_NAME, MANIFEST + ".tmp") or is_save_leftover(name) or name.startswith(MMAP_PREFIX)


def manifest_for(files: list[SourceFile], model, args, tokens: int, directory: Path) -> dict:
    import memlong

    return {
        "format": MANIFEST_FORMAT,
        "files": [f.record() for f in files],
        "separator": SEPARATOR,
        "model": model_identity(args.model),
        "memlong_config": model.memlong_config.to_dict(),
        "retriever": model.memlong_retriever.describe(),
        "memlong_version": memlong.__version__,
        "memory_version": _memory_version(directory),  # which save of memory.json this manifest describes
        "tokens": tokens,
    }


def write_manifest(directory: Path, manifest: dict) -> None:
    """Atomic: a temporary file, flushed to disk, then renamed over the old manifest."""
    path = directory / MANIFEST
    tmp = directory / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _refuse(directory: Path, what: str) -> SystemExit:
    return SystemExit(
        f"memlong ask: the memory in {directory} cannot be used: {what}. It was left as it is. To read the files "
        f"again into it, delete it (rm -r {directory}); or pass another --memory DIR"
    )


def changed_files(saved: list[dict], files: list[SourceFile]) -> list[str]:
    """What differs between the manifest's files and these (empty: unchanged), one line each."""
    old = {r["path"]: r for r in saved}
    new = {str(f.path): f for f in files}
    out = []
    for f in files:
        r = old.get(str(f.path))
        if r is None:
            out.append(f"{f.given}: not in the saved memory")
        elif r.get("sha256") != f.sha256:
            out.append(f"{f.given}: content changed ({r.get('size')} -> {f.size} bytes)")
    out += [f"{p}: in the saved memory, not given now" for p in old if p not in new]
    if not out and [r["path"] for r in saved] != [str(f.path) for f in files]:
        out.append("the same files in another order")
    return out


def plan_reuse(directory: Path | None, files: list[SourceFile], model, args) -> tuple[str, list[str]]:
    """What to do with ``--memory``: ``("read", [])`` (nothing saved yet), ``("reuse", [])``, or
    ``("reread", reasons)``. Exits (refuses) when the folder holds a memory this call must not use
    or replace: not written by ``memlong ask``, written by another model, config or retriever, or
    with an unreadable manifest."""
    import memlong
    from memlong.memory.persistence import MEMORY_JSON, BankFileError, check_retriever

    if directory is None or not directory.exists():
        return "read", []
    manifest_path = directory / MANIFEST
    has_memory = (directory / MEMORY_JSON).exists()
    if not manifest_path.exists():
        if has_memory:
            if (_memory_json(directory).get("metadata") or {}).get("saved_by") == SAVED_BY:
                return "reread", [f"a save was interrupted before its {MANIFEST} was written"]
            raise _refuse(
                directory,
                f"it holds a memory but no {MANIFEST}, so which files it was read from is "
                "unknown (it was not saved by `memlong ask`)",
            )
        if any(not _ours(p.name) for p in directory.iterdir()):
            raise _refuse(directory, "it is a folder with other files in it, not a memory saved by `memlong ask`")
        return "read", []  # empty, or what a save killed before its memory.json left (removed by the next save)
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        saved_files = list(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _refuse(directory, f"its {MANIFEST} is unreadable or corrupted ({e})") from None
    if not has_memory:
        raise _refuse(directory, f"it has {MANIFEST} but no {MEMORY_JSON}: the memory itself is missing")
    mine = model_identity(args.model)
    if manifest.get("model") != mine:
        raise _refuse(directory, f"it was read by the model {manifest.get('model')!r}, and this call uses {mine!r}")
    saved_config = manifest.get("memlong_config") or {}
    diff = model.memlong_config.memory_differences(saved_config)
    capacity_changed = diff == ["memory_capacity"]  # ask sets it to hold the files: changed files change it
    if diff and not capacity_changed:
        raise _refuse(directory, f"it was read with another MemLong config (differs in {diff})")
    try:
        check_retriever(manifest.get("retriever"), model.memlong_retriever.describe(), directory)
    except BankFileError as e:
        raise _refuse(directory, str(e).split(";")[0]) from None
    reasons = changed_files(saved_files, files)
    if capacity_changed:
        reasons.append(
            f"memory_capacity {saved_config.get('memory_capacity')} -> {model.memlong_config.memory_capacity}"
        )
    if manifest.get("memlong_version") != memlong.__version__:
        reasons.append(f"saved by memlong {manifest.get('memlong_version')}, this is {memlong.__version__}")
    saved_version = _memory_version(directory)  # None when memory.json is unreadable: loading it says why
    if not reasons and saved_version is not None and manifest.get("memory_version") != saved_version:
        reasons.append("the memory is not the one its manifest describes (an interrupted save)")
    return ("reread", reasons) if reasons else ("reuse", [])


# ---------------------------------------------------------------------------------------------
# questions
# ---------------------------------------------------------------------------------------------


def uses_chat(tok, fmt: str) -> bool:
    if fmt == "chat" and not getattr(tok, "chat_template", None):
        raise SystemExit("memlong ask: --format chat: this model's tokenizer has no chat template; use --format plain")
    return fmt == "chat"


def retrieved_chunks(model, memory, query_ids: list[int], text: str, files: list[SourceFile]) -> list[dict]:
    """The chunks a question reads for its answer (the search and re-ranking the model runs,
    :meth:`MemLongCache.question_reads`: the bank's, and with ``question_window`` the local
    window's), best first; their text from the files via their text spans."""
    bank = memory.bank(0)
    tau = model.memlong_config.chunk_size
    out = []
    for chunk, score, slot in memory.question_reads(model.memlong_retriever, query_ids[-tau:]):
        if slot is None:  # still in the local window
            ids, (a, b) = memory.chunk_tokens[0][chunk], memory.chunk_chars[0].get(chunk, (-1, -1))
            tokens = [chunk * tau, (chunk + 1) * tau]
        else:
            ids, (a, b) = bank.token_ids[slot].tolist(), (int(x) for x in bank.text_spans[slot].tolist())
            tokens = [int(x) for x in bank.spans[slot].tolist()]
        row = {"chunk_id": chunk, "tokens": tokens, "score": round(score, 4), "in_window": slot is None}
        if 0 <= a < b:
            f, line = locate(files, a)
            row.update(file=f.given, line=line, chars=[a, b], text=text[a:b][:PREVIEW_CHARS])
        else:  # no text span recorded: the chunk's tokens, decoded
            row["text"] = model.memlong_tokenizer.decode(list(ids))[:PREVIEW_CHARS]
        out.append(row)
    return out


def _index_windows(model, memory, report: dict) -> None:
    """Builds the bank's window index once (``rerank_index``), before questions read into copies of
    the memory: otherwise every copy would build it again."""
    t0 = time.perf_counter()
    n = memory.index_windows(model.memlong_retriever)
    if n:
        report["window_index_seconds"] = round(report.get("window_index_seconds", 0) + time.perf_counter() - t0, 3)
        print(f"window index: {n:,} chunks in {time.perf_counter() - t0:.1f} s", flush=True)


def stdin_questions(stream=None):
    """Questions from stdin, one per line, until an empty line or EOF (a TTY gets a prompt)."""
    stream = stream or sys.stdin
    tty = stream.isatty()
    while True:
        if tty:
            print("question> ", end="", flush=True, file=sys.stderr)
        try:
            line = stream.readline()
        except KeyboardInterrupt:
            return
        if not line.strip():
            return
        yield line.strip()


# ---------------------------------------------------------------------------------------------


def _load_model(args):
    """(model, tokenizer): the one place ``ask`` loads a model."""
    from memlong.config import MemLongConfigError, apply_overrides
    from memlong.pretrained import DefaultModelUnavailable, load_memlong_model

    try:
        model, tok = load_memlong_model(args.model, retriever=args.retriever)
        apply_overrides(model, args.overrides)
        return model, tok
    except (MemLongConfigError, DefaultModelUnavailable) as e:
        raise SystemExit(f"memlong ask: {e}") from None
    except (OSError, ValueError) as e:
        raise SystemExit(
            f"memlong ask: cannot load the model {args.model!r} ({e}); pass --model with a MemLong "
            "directory or a base model name or path"
        ) from None


@contextlib.contextmanager
def _locked(memory_dir: Path | None, timeout: float):
    """Holds ``--memory DIR``'s lock (:func:`memlong.memory.lock.folder_lock`) inside the ``with``;
    exits saying who holds it when another process keeps it past ``timeout``."""
    if memory_dir is None:
        yield
        return
    from memlong.memory.lock import FolderBusy, describe_holder, folder_lock

    def waiting(holder: dict) -> None:
        print(
            f"memory: {memory_dir} is in use by another memlong process ({describe_holder(holder)}); waiting for "
            f"it, up to {timeout:.0f} s (--lock-timeout)",
            flush=True,
        )

    try:
        with folder_lock(memory_dir, timeout, on_wait=waiting):
            yield
    except FolderBusy as e:
        raise SystemExit(
            f"memlong ask: another memlong process is using --memory {memory_dir} ({describe_holder(e.holder)}); "
            f"waited {e.waited:.1f} s for it. Let it finish and run this again (it saves its memory there, which "
            "this call then reuses if the files are the same), wait longer with --lock-timeout SECONDS, or pass "
            "another --memory DIR"
        ) from None
    except OSError as e:
        raise SystemExit(
            f"memlong ask: cannot use --memory {memory_dir} ({e.strerror or e}); pass a folder you can write to"
        ) from None


def evicted_in_files(files: list[SourceFile], text_spans: list[list[int]]) -> list[dict]:
    """Where evicted character ranges of the joined text stand in the files: ``{file, chars,
    lines}`` per piece (characters ``[start, end)`` of that file, lines 1-based, inclusive)."""
    import bisect

    newlines = {}
    out = []
    for a, b in text_spans:
        for f in files:
            lo, hi = max(a, f.start), min(b, f.start + len(f.text.rstrip("\n")))  # as join_sources joined it
            if lo >= hi:
                continue
            if f.given not in newlines:
                newlines[f.given] = [i for i, c in enumerate(f.text) if c == "\n"]
            nl = newlines[f.given]
            first, last = bisect.bisect_left(nl, lo - f.start) + 1, bisect.bisect_left(nl, hi - 1 - f.start) + 1
            out.append({"file": f.given, "chars": [lo - f.start, hi - f.start], "lines": [first, last]})
    return out


def eviction_report(memory, files: list[SourceFile], reused: bool) -> dict:
    """What eviction dropped from the memory (:meth:`MemoryBank.evicted_report`, with the pieces of
    the files it was), printed when anything was; for ``--json``."""
    report = memory.bank(0).evicted_report()
    report["files"] = evicted_in_files(files, report["text_spans"])
    if not report["chunks"]:
        return report
    when = "when this memory was read" if reused else "while reading"
    print(
        f"evicted {when}: {report['chunks']:,} chunks ({report['tokens']:,} tokens) did not fit in the memory "
        f"(memory_capacity {memory.bank(0).capacity * memory.config.chunk_size:,} tokens); questions cannot see "
        f"them. Token ranges: " + _ranges(f"{a:,}-{b:,}" for a, b in report["spans"]),
        flush=True,
    )
    print(
        "  in the files: "
        + _ranges(
            f"{r['file']} characters {r['chars'][0]:,}-{r['chars'][1]:,} ({_lines(r['lines'])})"
            for r in report["files"]
        ),
        flush=True,
    )
    return report


def _lines(lines: list[int]) -> str:
    return f"line {lines[0]:,}" if lines[0] == lines[1] else f"lines {lines[0]:,}-{lines[1]:,}"


def _ranges(items) -> str:
    items = list(items)
    more = len(items) - MAX_RANGES_PRINTED
    return "; ".join(items[:MAX_RANGES_PRINTED]) + (f"; and {more:,} more (all in --json)" if more > 0 else "")


def _reuse(model, memory_dir: Path, files: list[SourceFile], report: dict):
    """The saved memory, loaded (refused with what was wrong when it cannot be)."""
    from memlong.memory import BankFileError

    t0 = time.perf_counter()
    try:
        memory = model.load_memory(memory_dir)
    except (BankFileError, OSError, ValueError, KeyError, RuntimeError) as e:
        raise _refuse(memory_dir, f"loading it failed: {e}") from None
    tokens, load_s = memory.seen[0], time.perf_counter() - t0
    print(
        f"memory: {memory_dir} holds these files, unchanged: loaded {tokens:,} tokens in {load_s:.1f} s; nothing read",
        flush=True,
    )
    report.update(
        memory={"dir": str(memory_dir), "reused": True, "load_seconds": round(load_s, 3)},
        tokens_in_memory=tokens,
        tokens_read=0,
        seconds=0.0,
        tokens_per_s=None,
    )
    print("tokens read: 0", flush=True)
    report["evicted"] = eviction_report(memory, files, reused=True)
    return memory


def fit_capacity(model, tok, text: str, args, report: dict, memory_dir: Path | None = None):
    """The :class:`~memlong.memory.budget.ReadingPlan` of reading ``text``; when it would evict,
    ``memory_capacity`` is first raised (for this call) to hold all of it, unless ``--evict`` or a
    ``--set memory_capacity``. A bank that would take more than half the available memory with one
    copy for a question (:func:`answer` reads into a copy) is kept in memory-mapped files in
    ``memory_dir`` (``bank_device="mmap"``) when the disk there holds the bank, its save and, when
    several questions may come, a question's copy; without ``--memory``, or without the disk space,
    nothing is raised and the plan says what will be evicted."""
    import dataclasses

    from memlong.memory.budget import available_memory, human_bytes, plan_reading

    plan = plan_reading(model.new_memory(), len(tok(text, add_special_tokens=False)["input_ids"]))
    chosen = any(o.partition("=")[0].strip() == "memory_capacity" for o in args.overrides)
    if not plan.evicts or args.evict or chosen:
        return plan
    available = available_memory()
    old = model.memlong_config.memory_capacity
    changes: dict = {"memory_capacity": plan.capacity_needed}
    where = "in memory"
    if available is None or 2 * plan.bytes_needed > available / 2:
        have = "unknown" if available is None else human_bytes(available)
        bank = (
            f"the bank would take {human_bytes(plan.bytes_needed)} (twice that with a question's copy), "
            f"and {have} of memory is available"
        )
        free = _free_disk(memory_dir)
        # on disk: the bank, its save, and a copy for each question but the last (one at a time)
        copies = 2 if args.question is not None and len(args.question) == 1 else 3
        on_disk = "the bank and its save" if copies == 2 else "the bank, its save and a question's copy"
        placed = any(o.partition("=")[0].strip() == "bank_device" for o in args.overrides)
        if memory_dir is None or placed or free < copies * plan.bytes_needed:
            why = (
                "pass --memory DIR to keep it on disk there"
                if memory_dir is None
                else "--set bank_device chose where the bank lives"
                if placed
                else f"keeping it on disk needs {human_bytes(copies * plan.bytes_needed)} ({on_disk}), "
                f"{human_bytes(free)} is free in {memory_dir}"
            )
            report["capacity"] = {"raised": False, "available_bytes": available, "disk_free_bytes": free}
            print(f"memory: not raising memory_capacity to hold the files: {bank}; {why}", flush=True)
            return plan
        memory_dir.mkdir(parents=True, exist_ok=True)
        changes.update(bank_device="mmap", bank_mmap_dir=str(memory_dir.resolve()))
        where = f"in memory-mapped files in {memory_dir}: {have} of memory is available"
    model.memlong_config = dataclasses.replace(model.memlong_config, **changes)
    report["capacity"] = {"raised": True, "from": old, "to": plan.capacity_needed, "available_bytes": available}
    if "bank_device" in changes:
        report["capacity"]["bank_device"] = "mmap"
    report["memlong_config"] = model.memlong_config.to_dict()
    print(
        f"memory: the files ({plan.tokens:,} tokens) are more than memory_capacity {old:,} holds: raised to "
        f"{plan.capacity_needed:,} for this call, so that nothing is evicted (a bank of about "
        f"{human_bytes(plan.bytes_needed)}, kept {where}; --evict keeps {old:,} and evicts instead)",
        flush=True,
    )
    return plan_reading(model.new_memory(), plan.tokens)


def _free_disk(directory: Path | None) -> int:
    """Bytes free on the disk that holds ``directory`` (or would: its nearest existing parent); 0 without one."""
    import shutil

    if directory is None:
        return 0
    d = directory.resolve()
    while not d.exists() and d != d.parent:
        d = d.parent
    return shutil.disk_usage(d).free


def _read(
    model, text: str, files: list[SourceFile], memory_dir: Path | None, reasons: list[str], plan, args, report: dict
):
    """Reads the files into a new memory (``plan``, :func:`fit_capacity`: saying first what will not
    fit; after, what did not) and saves it to ``memory_dir``."""
    if reasons:
        print(f"memory: {memory_dir} is out of date, reading again:", flush=True)
        for r in reasons:
            print(f"  {r}", flush=True)
    names = ", ".join(f.given for f in files)
    report["reading_plan"] = plan.to_dict()
    print(f"reading {len(files)} file(s) ({names}): {len(text):,} characters, {plan.tokens:,} tokens", flush=True)
    if plan.evicts:
        print(f"warning: {plan.warning('--set memory_capacity=N')}", flush=True)
    t0 = time.perf_counter()
    memory = model.ingest_text(text, model.new_memory(), progress=True, warn_eviction=False)
    seconds = time.perf_counter() - t0
    tokens = memory.seen[0]
    print(f"tokens read: {tokens:,} in {seconds:.1f} s ({tokens / seconds:,.0f} tokens/s)", flush=True)
    report.update(
        tokens_in_memory=tokens, tokens_read=tokens, seconds=round(seconds, 3), tokens_per_s=round(tokens / seconds, 1)
    )
    report["memory"] = {"dir": str(memory_dir) if memory_dir else None, "reused": False, "changed": reasons}
    report["evicted"] = eviction_report(memory, files, reused=False)
    _index_windows(model, memory, report)  # before saving: a reused memory has it too
    if memory_dir is not None:
        try:
            # atomic: the previous memory stays loadable until this completes; a memory.json marked as ours
            # without a manifest after it (a kill in between) is read again, not refused
            memory.save(memory_dir, metadata={"saved_by": SAVED_BY})
            write_manifest(memory_dir, manifest_for(files, model, args, tokens, memory_dir))
        except OSError as e:
            raise SystemExit(
                f"memlong ask: could not save the memory to {memory_dir} ({e}); a memory saved "
                "there before is unchanged"
            ) from None
        print(f"saved the memory to {memory_dir}", flush=True)
    return memory


def run(args) -> int:
    import torch

    if args.max_new_tokens < 1:
        raise SystemExit(f"--max-new-tokens must be >= 1; got {args.max_new_tokens}")
    if args.question is not None and not all(q.strip() for q in args.question):
        raise SystemExit("--question must not be empty")
    if args.lock_timeout < 0:
        raise SystemExit(f"--lock-timeout must be >= 0 seconds; got {args.lock_timeout}")
    files = [read_source(f) for f in args.files]  # bad input fails before any model is loaded
    memory_dir = check_memory_dir(args.memory)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {"files": [{**f.record(), "given": f.given} for f in files], "model": model_identity(args.model)}
    text = join_sources(files)
    if args.rag and memory_dir is not None:
        raise SystemExit("memlong ask: --rag reads no memory, so --memory does not apply; drop one of them")
    model, tok = _load_model(args)
    report.update(
        retriever=model.memlong_retriever.describe(),
        memlong_config=model.memlong_config.to_dict(),
        method="rag" if args.rag else "memlong",
    )
    if args.rag:
        return _run_rag(args, model, tok, text, files, report)
    plan = fit_capacity(
        model, tok, text, args, report, memory_dir
    )  # the capacity reading uses, before a saved one is judged

    with _locked(memory_dir, args.lock_timeout):  # deciding, reading and saving: one process at a time
        action, reasons = plan_reuse(memory_dir, files, model, args)
        if action == "reuse":
            memory = _reuse(model, memory_dir, files, report)
        else:
            memory = _read(model, text, files, memory_dir, reasons, plan, args, report)

    _index_windows(model, memory, report)  # a memory saved without it (nothing to do after a fresh read)

    def respond(question: str, chat: bool, last: bool) -> dict:
        row: dict = {"question": question}
        # Each question reads into its own copy, so every answer comes from the text alone.
        work = memory if last else memory.clone()
        if model.memlong_config.question_fresh_window:
            work.flush_window()  # as the answer will: --show-retrieved lists what it reads
        if args.show_retrieved:
            row["retrieved"] = retrieved_chunks(model, work, question_ids(tok, question, chat)[1], text, files)
        row["answer"], secs = answer(model, tok, work, question, chat, args.max_new_tokens)
        row["seconds"] = round(secs, 3)
        return row

    return _answer_questions(args, tok, report, respond)


def _answer_questions(args, tok, report: dict, respond) -> int:
    """Asks each question (``--question``, else stdin) with ``respond(question, chat, last)``, a
    row with its answer (and ``retrieved`` with ``--show-retrieved``); prints them and writes
    ``--json``."""
    chat = uses_chat(tok, args.format)
    report["question_format"] = "chat" if chat else "plain"
    report["questions"] = []
    questions = list(args.question) if args.question is not None else None
    source = questions if questions is not None else stdin_questions()
    for i, question in enumerate(source):
        row = respond(question, chat, questions is not None and i == len(questions) - 1)
        report["questions"].append(row)
        print(f"\nQ: {question}\nA: {row['answer']}", flush=True)
        for r in row.get("retrieved", []):
            where = f"{r['file']}:{r['line']}" if "file" in r else "(no text span)"
            where += "  (local window)" if r.get("in_window") else ""
            snippet = r["text"].replace("\n", " ")
            print(
                f"   chunk {r['chunk_id']:>5}  tokens {r['tokens'][0]:,}-{r['tokens'][1]:,}  score {r['score']:.3f}  "
                f"{where}  {snippet!r}",
                flush=True,
            )
    if not report["questions"]:
        print("no question asked", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}", flush=True)
    return 0


def _run_rag(args, model, tok, text: str, files: list[SourceFile], report: dict) -> int:
    """``--rag``: the files' chunks embedded once, each question answered by the base model on the
    chunks most similar to it (:func:`rag_answer`)."""
    from memlong.pretrained import base_model_of
    from memlong.rag import RagPromptTooLong, embed_context

    try:
        base = load_base(base_model_of(args.model))
    except BaseModelUnavailable as e:
        raise SystemExit(f"memlong ask: --rag: {e}") from None
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    doc, offsets = enc["input_ids"], enc["offset_mapping"]
    t0 = time.perf_counter()
    embeddings = embed_context(model, doc, (0, len(doc)))
    seconds = time.perf_counter() - t0
    print(
        f"rag: {len(doc):,} tokens in {len(embeddings):,} chunks embedded in {seconds:.1f} s; each question reads "
        f"the top {model.memlong_config.top_k} as text with the base model",
        flush=True,
    )
    report.update(tokens_read=len(doc), seconds=round(seconds, 3), tokens_per_s=round(len(doc) / max(seconds, 1e-9), 1))

    def respond(question: str, chat: bool, last: bool) -> dict:
        try:
            reply, rag, secs = rag_answer(model, base, tok, doc, embeddings, question, chat, args.max_new_tokens)
        except RagPromptTooLong as e:
            raise SystemExit(f"memlong ask: --rag: {e}") from None
        row: dict = {"question": question, "answer": reply, "seconds": round(secs, 3), **rag.record()}
        if args.show_retrieved:
            row["retrieved"] = [_rag_chunk(rag, i, doc, offsets, text, files) for i in rag.ranking[: len(rag.chosen)]]
        return row

    return _answer_questions(args, tok, report, respond)


def _rag_chunk(rag, i: int, doc: list[int], offsets, text: str, files: list[SourceFile]) -> dict:
    """Chunk ``i`` of a rag prompt as ``--show-retrieved`` shows it (as :func:`retrieved_chunks`)."""
    a, b = rag.spans[i]
    lo, hi = offsets[a][0], offsets[b - 1][1]
    f, line = locate(files, lo)
    return {
        "chunk_id": i,
        "tokens": [a, b],
        "score": round(rag.scores[i], 4),
        "file": f.given,
        "line": line,
        "chars": [lo, hi],
        "text": text[lo:hi][:PREVIEW_CHARS],
    }
