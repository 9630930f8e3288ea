"""The documentation site builds in strict mode (a broken link or a missing reference fails) and documents every
public name."""
import os
import subprocess
import sys

import pytest

import hf_prune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_public_name_has_a_docstring_and_an_api_entry():
    api = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    missing = [name for name in hf_prune.__all__ if f"::: hf_prune.{name}\n" not in api]
    assert not missing, f"not in docs/api.md: {missing}"
    undocumented = [name for name in hf_prune.__all__ if callable(getattr(hf_prune, name))
                    and not (getattr(hf_prune, name).__doc__ or "").strip()]
    assert not undocumented, undocumented


def test_the_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocstrings", reason="docs tooling is in the dev and docs extras")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8").count("doc-heading") > 20
