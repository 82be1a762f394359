"""Local document sources: real files in a temp folder, bad input counted and skipped."""

import gzip
import shutil
import zipfile

import pytest

from memlong.data.sources import (
    SkipCounter,
    find_jdk_src_zip,
    iter_source,
    jdk_documents,
    man_documents,
    man_page_paths,
    stdlib_documents,
    stdlib_root,
)


def test_stdlib_root_is_found_through_sysconfig():
    assert (stdlib_root() / "argparse.py").is_file()


def test_stdlib_documents_skip_bad_files(tmp_path):
    (tmp_path / "good.py").write_text("def f():\n    return 'héllo'\n", encoding="utf-8")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not python")
    (tmp_path / "bad.py").write_bytes(b"s = '\xff\xfe latin junk'\n")
    (tmp_path / "empty.py").write_text("  \n")
    (tmp_path / "dangling.py").symlink_to(tmp_path / "missing-target.py")
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "site-packages" / "third_party.py").write_text("y = 2\n")

    skipped = SkipCounter()
    docs = list(stdlib_documents(tmp_path, skipped))

    assert [d.id for d in docs] == ["stdlib/good.py", "stdlib/pkg/mod.py"]
    assert docs[0].text == "def f():\n    return 'héllo'\n"
    assert all(d.source == "stdlib" for d in docs)
    assert skipped.counts == {"invalid-utf8": 1, "empty": 1, "unreadable": 1}
    assert skipped.as_dict()["total"] == 3


def test_stdlib_documents_bad_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="stdlib"):
        list(stdlib_documents(tmp_path / "nope"))


MAN_PAGE = b""".TH FROB 1
.SH NAME
frob \\- frobnicate the widgets
.SH DESCRIPTION
.B frob
turns every widget into a gadget.
"""


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_man_documents_render_english_pages_only(tmp_path):
    root = tmp_path / "man"
    (root / "man1").mkdir(parents=True)
    (root / "man1" / "frob.1").write_bytes(MAN_PAGE)
    (root / "man1" / "zipped.1.gz").write_bytes(gzip.compress(MAN_PAGE.replace(b"frob", b"zapp")))
    (root / "man1" / "alias.1").write_bytes(b".so man1/frob.1\n")
    (root / "man1" / "link.1").symlink_to(root / "man1" / "frob.1")
    (root / "man1" / "gcloud_thing.1").write_bytes(MAN_PAGE)  # excluded by default
    (root / "man1" / "broken.1.gz").write_bytes(b"not gzip at all")
    (root / "de" / "man1").mkdir(parents=True)
    (root / "de" / "man1" / "frob.1").write_bytes(MAN_PAGE)

    assert [p.name for p in man_page_paths(root)] == ["alias.1", "broken.1.gz", "frob.1", "zipped.1.gz"]
    skipped = SkipCounter()
    docs = list(man_documents(root, skipped, cache_dir=tmp_path / "cache", workers=1))

    assert [d.id for d in docs] == ["man/man1/frob.1", "man/man1/zipped.1"]
    assert "frobnicate the widgets" in docs[0].text
    assert "\x1b[" not in docs[0].text and "\b" not in docs[0].text  # plain text, no escapes
    assert "zapp" in docs[1].text
    assert skipped.counts == {"alias": 1, "bad-gzip": 1}
    # Second pass comes from the cache and gives the same text.
    again = list(man_documents(root, SkipCounter(), cache_dir=tmp_path / "cache", workers=2))
    assert [d.text for d in again] == [d.text for d in docs]


def test_jdk_documents_from_zip(tmp_path):
    zpath = tmp_path / "src.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("java.base/java/lang/Thing.java", "/** A thing. */\nclass Thing {}\n")
        z.writestr("java.base/java/lang/Bad.java", b'class Bad { String s = "\xc3\x28"; }')
        z.writestr("java.base/java/lang/Empty.java", "")
        z.writestr("java.base/module-info.class", b"\xca\xfe\xba\xbe")
    skipped = SkipCounter()
    docs = list(jdk_documents(zpath, skipped))
    assert [d.id for d in docs] == ["jdk/java.base/java/lang/Thing.java"]
    assert skipped.counts == {"invalid-utf8": 1, "empty": 1}


def test_jdk_documents_corrupt_zip_is_counted(tmp_path):
    bad = tmp_path / "src.zip"
    bad.write_bytes(b"this is not a zip")
    skipped = SkipCounter()
    assert list(jdk_documents(bad, skipped)) == []
    assert skipped.counts == {"unreadable": 1}


def test_jdk_source_is_optional(monkeypatch):
    monkeypatch.setattr("memlong.data.sources.find_jdk_src_zip", lambda: None)
    assert list(jdk_documents()) == []


def test_find_jdk_src_zip_returns_a_real_file_or_none():
    found = find_jdk_src_zip()
    assert found is None or found.is_file()


def test_unknown_source_name():
    with pytest.raises(ValueError, match="unknown source"):
        iter_source("wikipedia")
