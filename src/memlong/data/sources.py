"""Local sources of real human-written text, each yielding :class:`Document` records.

Three sources make the training corpus (``memlong data``, for ``memlong pretrain`` and
``memlong train``), and only these three:

* ``stdlib``: the Python standard library sources (``*.py``), found through ``sysconfig`` so the
  same code works on any Python installation; ``site-packages`` is excluded (third-party code).
* ``man``: the English manual pages (``/usr/share/man/man[1-9]``, not the translated trees such
  as ``/usr/share/man/de``), rendered to plain text with ``groff``.
* ``jdk``: the JDK sources (``lib/src.zip``) where a JDK with sources is installed.

Other local text (documentation trees, C headers, ...) is kept out of training on purpose: it is
reserved for independent evaluation.

Bad input never crashes a source: unreadable files, invalid UTF-8 and empty documents are
skipped and counted in a :class:`SkipCounter`, which the corpus builder reports in its summary.
"""

from __future__ import annotations

import collections
import fnmatch
import glob
import gzip
import hashlib
import os
import shutil
import subprocess
import sysconfig
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SOURCE_NAMES = ("stdlib", "man", "jdk")

# Machine-generated, near-identical pages (16k templated `gcloud_*` pages on the reference
# machine): they would outnumber all other man pages 5:1 and teach the model one template.
DEFAULT_MAN_EXCLUDE = ("gcloud*",)

DEFAULT_MAN_ROOT = "/usr/share/man"
# Where rendered man pages are cached: groff costs ~25 ms a page.
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "memlong")


@dataclass(frozen=True)
class Document:
    """One document: a stable id (used for the split), its source name, and its text."""

    id: str
    source: str
    text: str


class SkipCounter:
    """Counts skipped inputs by reason (``unreadable``, ``invalid-utf8``, ``empty``, ...)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = {}

    def skip(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}


def decode_utf8(data: bytes, where: str, skipped: SkipCounter) -> str | None:
    """Strict UTF-8 decode; on failure or empty text, count the skip and return ``None``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        skipped.skip("invalid-utf8", where)
        return None
    if not text.strip():
        skipped.skip("empty", where)
        return None
    return text


def read_text_file(path: Path, where: str, skipped: SkipCounter) -> str | None:
    """Read one file as strict UTF-8; unreadable/invalid/empty files are counted, not raised."""
    try:
        data = path.read_bytes()
    except OSError:
        skipped.skip("unreadable", where)
        return None
    return decode_utf8(data, where, skipped)


# --------------------------------------------------------------------------------------------
# Python standard library
# --------------------------------------------------------------------------------------------


def stdlib_root() -> Path:
    """The running Python's standard library directory (``sysconfig`` ``stdlib`` path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_documents(
    root: str | os.PathLike | None = None,
    skipped: SkipCounter | None = None,
    exclude_dirs: tuple[str, ...] = ("site-packages", "__pycache__"),
) -> Iterator[Document]:
    """Yield every ``*.py`` file under the stdlib (or ``root``) as a document ``stdlib/<relpath>``.

    The stdlib's own ``test`` package is kept: it is human-written code and docstrings too.
    """
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"stdlib source directory not found: {root}")
    skipped = skipped if skipped is not None else SkipCounter()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in exclude_dirs)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            doc_id = f"stdlib/{rel}"
            text = read_text_file(path, doc_id, skipped)
            if text is not None:
                yield Document(doc_id, "stdlib", text)


# --------------------------------------------------------------------------------------------
# Man pages
# --------------------------------------------------------------------------------------------


def man_page_paths(
    root: str | os.PathLike = DEFAULT_MAN_ROOT, exclude: tuple[str, ...] = DEFAULT_MAN_EXCLUDE
) -> list[Path]:
    """English man page files: ``root/man<N>/*``, regular files only (symlinks are aliases)."""
    root = Path(root)
    paths = []
    for section in sorted(glob.glob(str(root / "man[1-9]*"))):
        sec = Path(section)
        if not sec.is_dir():
            continue
        for p in sorted(sec.iterdir()):
            if p.is_symlink() or not p.is_file():
                continue
            if any(fnmatch.fnmatch(p.name, pat) for pat in exclude):
                continue
            paths.append(p)
    return paths


def render_man_page(source: bytes, timeout: float = 30.0) -> bytes:
    """Render roff man source to plain UTF-8 text with ``groff`` (no bold/underline escapes).

    ``-mandoc`` handles both ``man`` and BSD ``mdoc`` pages; ``-t`` runs ``tbl`` for tables;
    ``-P-cbou`` asks grotty for plain text without overstrike or SGR sequences.
    """
    if shutil.which("groff") is None:
        raise FileNotFoundError("groff is needed to render man pages; install groff")
    proc = subprocess.run(
        ["groff", "-t", "-mandoc", "-Tutf8", "-P-cbou", "-rLL=78n"],
        input=source,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    return proc.stdout


def _man_doc_id(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return "man/" + (rel[:-3] if rel.endswith(".gz") else rel)


def _render_cached(path: Path, root: Path, cache_dir: Path | None) -> tuple[str, bytes | None]:
    """Returns (reason or "", rendered bytes). Reads raw, gunzips, skips ``.so`` alias pages."""
    try:
        raw = path.read_bytes()
    except OSError:
        return "unreadable", None
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            return "bad-gzip", None
    if raw.lstrip().startswith(b".so "):
        return "alias", None  # `.so other.1` pages only include another page
    key = hashlib.sha1(raw).hexdigest()
    cached = cache_dir / key[:2] / key if cache_dir is not None else None
    if cached is not None and cached.exists():
        return "", cached.read_bytes()
    try:
        out = render_man_page(raw)
    except subprocess.TimeoutExpired:
        return "render-timeout", None
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_bytes(out)
        tmp.replace(cached)
    return "", out


def man_documents(
    root: str | os.PathLike = DEFAULT_MAN_ROOT,
    skipped: SkipCounter | None = None,
    exclude: tuple[str, ...] = DEFAULT_MAN_EXCLUDE,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    workers: int = 2,
) -> Iterator[Document]:
    """Yield rendered English man pages as documents ``man/man<N>/<name>``.

    Rendering runs ``groff`` in ``workers`` threads (subprocesses, so the GIL is no limit) and
    caches the output under ``cache_dir/man`` keyed by the page's content hash.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"man page directory not found: {root}")
    skipped = skipped if skipped is not None else SkipCounter()
    cache = Path(cache_dir) / "man" if cache_dir is not None else None
    paths = man_page_paths(root, exclude)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda p: _render_cached(p, root, cache), paths)
        for path, (reason, rendered) in zip(paths, results):
            doc_id = _man_doc_id(path, root)
            if rendered is None:
                skipped.skip(reason, doc_id)
                continue
            text = decode_utf8(rendered, doc_id, skipped)
            if text is not None:
                yield Document(doc_id, "man", text)


# --------------------------------------------------------------------------------------------
# JDK sources
# --------------------------------------------------------------------------------------------


def find_jdk_src_zip() -> Path | None:
    """First existing ``src.zip`` of an installed JDK (``$JAVA_HOME`` first), or ``None``."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "lib" / "src.zip")
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/jvm/*/lib/src.zip"))]
    for c in candidates:
        if c.is_file():  # follows symlinks; a dangling link (no source package) is not a file
            return c
    return None


def jdk_documents(path: str | os.PathLike | None = None, skipped: SkipCounter | None = None) -> Iterator[Document]:
    """Yield the ``*.java`` files of a JDK ``src.zip`` as documents ``jdk/<member>``.

    With ``path=None`` the zip is searched for; if no JDK sources are installed, nothing is
    yielded (the source is optional by design).
    """
    skipped = skipped if skipped is not None else SkipCounter()
    zpath = Path(path) if path is not None else find_jdk_src_zip()
    if zpath is None:
        return
    try:
        zf = zipfile.ZipFile(zpath)
    except (OSError, zipfile.BadZipFile):
        skipped.skip("unreadable", str(zpath))
        return
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir() or not info.filename.endswith(".java"):
                continue
            doc_id = f"jdk/{info.filename}"
            try:
                data = zf.read(info)
            except (OSError, zipfile.BadZipFile, RuntimeError):
                skipped.skip("unreadable", doc_id)
                continue
            text = decode_utf8(data, doc_id, skipped)
            if text is not None:
                yield Document(doc_id, "jdk", text)


def iter_source(name: str, skipped: SkipCounter | None = None, **kwargs) -> Iterator[Document]:
    """Documents of one named source (``stdlib``, ``man`` or ``jdk``)."""
    if name == "stdlib":
        return stdlib_documents(skipped=skipped, **kwargs)
    if name == "man":
        return man_documents(skipped=skipped, **kwargs)
    if name == "jdk":
        return jdk_documents(skipped=skipped, **kwargs)
    raise ValueError(f"unknown source {name!r}; choose from {', '.join(SOURCE_NAMES)}")
