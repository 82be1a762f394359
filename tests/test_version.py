"""One version: ``memlong.__version__``, pyproject.toml's and CHANGELOG.md's newest entry agree, and
so does the installed package's metadata when it was installed from this checkout."""

import importlib.metadata
import json
import re
import tomllib
from pathlib import Path

import memlong

ROOT = Path(__file__).resolve().parents[1]


def test_version_agrees_with_pyproject_and_the_changelog():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert memlong.__version__ == version
    newest = re.search(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M).group(1)
    assert newest == version


def test_installed_metadata_agrees_when_installed_from_this_checkout():
    try:
        dist = importlib.metadata.distribution("memlong")
    except importlib.metadata.PackageNotFoundError:
        return
    url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if url == ROOT.as_uri():  # an editable install of this tree: reinstall after a version change (make test does)
        assert dist.version == memlong.__version__
