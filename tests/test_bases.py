"""Named base models (memlong.bases): the loader resolves memlong:NAME through a registry the
pretrained package fills, and imports nothing of that package."""

import ast
from pathlib import Path

import pytest

import memlong
from memlong.bases import register_base, resolve_base

SRC = Path(memlong.__file__).parent


def test_the_default_base_is_registered_and_other_names_pass_through(monkeypatch):
    from memlong import pretrained

    monkeypatch.setenv(pretrained.ENV_VAR, "/some/base")
    assert resolve_base(pretrained.DEFAULT_BASE) == "/some/base"  # registered when memlong is imported
    assert resolve_base("org/model") == "org/model" and resolve_base("/a/path") == "/a/path"
    register_base("memlong:test-only", lambda: "/tmp/test-base")
    assert resolve_base("memlong:test-only") == "/tmp/test-base"
    with pytest.raises(ValueError, match="unknown base model 'memlong:nothing'.*--base-model"):
        resolve_base("memlong:nothing")
    with pytest.raises(ValueError, match="starts with"):
        register_base("default", lambda: "x")


def test_no_component_imports_the_pretrained_package():
    """Only the package's __init__ (to register the default base) and the recipes may import
    memlong.pretrained; the components (modeling, cache, ...) do not: no import circle."""
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("pretrained", "recipes") or rel.name in ("__init__.py", "__main__.py", "cli.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            assert not any(n == "memlong.pretrained" or n.startswith("memlong.pretrained.") for n in names), rel
