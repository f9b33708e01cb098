"""The docs site: every error code documented, examples included from their files, a strict build."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sagadsl.errors
from sagadsl import SagaError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"


def _error_classes() -> list[type[SagaError]]:
    found: list[type[SagaError]] = []
    pending: list[type[SagaError]] = [SagaError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted({c for c in found if c.__module__.startswith("sagadsl")}, key=lambda c: c.__name__)


def _all_pages() -> str:
    return "\n".join(p.read_text() for p in DOCS.rglob("*.md"))


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_code_has_its_own_anchor(cls: type[SagaError]) -> None:
    errors_page = (DOCS / "errors.md").read_text()
    assert f"## {cls.code} {{#{cls.code}}}" in errors_page, f"docs/errors.md lacks a section for {cls.code}"
    section = errors_page.split(f"{{#{cls.code}}}", 1)[1].split("\n## ", 1)[0]
    assert f"`{cls.__name__}`" in section


def test_every_public_error_class_is_found() -> None:
    public = {getattr(sagadsl.errors, name) for name in sagadsl.errors.__all__}
    assert public <= set(_error_classes())


def test_error_codes_are_unique() -> None:
    codes = [c.code for c in _error_classes()]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_is_included_in_the_docs_from_its_file(example: str) -> None:
    assert f'--8<-- "examples/{example}"' in _all_pages()


def _included() -> set[str]:
    return set(re.findall(r'--8<-- "([^"]+)"', _all_pages()))


def test_every_included_file_exists() -> None:
    included = _included()
    assert "docs/snippets/place_order.py" in included
    for path in included:
        assert (ROOT / path).is_file(), f"a page includes {path}, which does not exist"


@pytest.mark.parametrize("snippet", sorted(p for p in _included() if p.startswith("docs/snippets/")
                                           and p.endswith(".py")))
def test_python_snippets_included_in_the_docs_run(snippet: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / snippet)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _console_block(page: str, command: str) -> list[str]:
    text = (DOCS / page).read_text()
    block = text.split(f"```console\n$ {command}\n", 1)[1].split("```", 1)[0]
    return block.splitlines()


@pytest.mark.parametrize(("page", "example"), [
    ("getting-started.md", "quickstart.py"),
    ("how-to/dead-letter.md", "dead_letter.py"),
    ("concepts/pivot.md", "order_pivot.py"),
    ("concepts/locks.md", "transfer.py"),
    ("how-to/transactional-steps.md", "outbox.py"),
])
def test_shown_output_is_what_the_example_prints(page: str, example: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / example)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.splitlines() == _console_block(page, f"python examples/{example}")


def test_nav_lists_every_page() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s+([\w/.-]+\.md)\s*$", config, flags=re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages - listed == set()


def test_readme_test_command_is_the_one_ci_runs() -> None:
    command = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/pytest"
    assert command in (ROOT / ".ci" / "run").read_text()
    assert command in (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_mkdocs_build_strict_passes(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("the docs extra is not installed: pip install -e '.[docs]' to build the site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    index = (tmp_path / "site" / "errors" / "index.html").read_text()
    assert 'id="DEAD_LETTER"' in index
