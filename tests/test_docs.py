"""The documentation: the site builds strictly, the docstrings carry runnable examples, and
the front page stays a front page."""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import ddplug

ROOT = Path(__file__).resolve().parents[1]
# What the docs must not speak of: how the product was made rather than what it is.
# mkdocs --quiet hides warnings from --strict, which then passes: the builds log at INFO.
QUIET_MKDOCS = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
PROCESS_WORDS = re.compile(r"\b(session|issue \d|this task|lent|alone on the machine)\b", re.IGNORECASE)


@pytest.mark.subprocess
def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                            str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, env=QUIET_MKDOCS)
    assert built.returncode == 0, built.stderr[-3000:]
    reference = (tmp_path / "site" / "python" / "index.html").read_text()
    assert "budget_bytes" in reference and "DistillResult" in reference  # generated from the docstrings


@pytest.mark.subprocess
def test_a_broken_reference_fails_the_build(tmp_path):
    pytest.importorskip("mkdocs")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\nSee [the missing page](missing.md).\n")
    config = (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    config = re.sub(r"nav:\n(  - .*\n)+", "nav:\n  - Home: index.md\n", config)
    (tmp_path / "mkdocs.yml").write_text(config)
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                            str(tmp_path / "site")], cwd=tmp_path, capture_output=True, text=True, env=QUIET_MKDOCS)
    assert built.returncode != 0 and "missing.md" in built.stderr


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    found = []
    for module in pkgutil.walk_packages(ddplug.__path__, "ddplug."):
        if module.name != "ddplug.__main__":
            found += [test for test in finder.find(importlib.import_module(module.name)) if test.examples]
    return found


def test_public_names_carry_runnable_examples():
    tests = _doctests()
    assert len(tests) >= 15, [test.name for test in tests]
    names = {test.name for test in tests}
    assert {"ddplug.api", "ddplug.api.evaluate", "ddplug.presets"} <= names


def undocumented_names(namespace) -> list[str]:
    """The names of ``namespace.__all__`` whose docstring lacks its sections: a function's
    Args (when it takes any) and Returns; a class's Args or Attributes."""
    missing = []
    for name in namespace.__all__:
        value = getattr(namespace, name)
        doc = inspect.getdoc(value) or ""
        if inspect.isclass(value):
            complete = issubclass(value, Exception) or "Args:" in doc or "Attributes:" in doc
        elif callable(value):
            complete = "Returns:" in doc and ("Args:" in doc or not inspect.signature(value).parameters)
        else:
            continue
        if not complete:
            missing.append(name)
    return missing


def test_every_public_name_documents_its_arguments_and_result():
    assert undocumented_names(ddplug) == []
    bare = types.SimpleNamespace(__all__=["bare", "Bare"], bare=lambda x: x, Bare=type("Bare", (), {"__doc__": "A."}))
    assert undocumented_names(bare) == ["bare", "Bare"]


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert readme.startswith("# ddplug")
    assert "./dev.sh run" in readme.split("\n## ")[0] and "./dev.sh test" in readme.split("\n## ")[0]
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        words = PROCESS_WORDS.findall(page.read_text())
        assert not words, (page.name, words)
