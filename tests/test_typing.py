"""The package type-checks under ``mypy --strict`` and keeps user signatures visible.

tests/typing/check_signatures.py holds the ``assert_type`` checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(600)


def run_mypy(*targets: str) -> tuple[str, int]:
    stdout, stderr, status = mypy_api.run(
        ["--strict", "--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary",
         "--show-error-codes", *targets])
    return stdout + stderr, status


def test_decorated_methods_keep_their_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)

    output, status = run_mypy("tests/typing/check_signatures.py")

    assert status == 0, output


def test_the_package_passes_mypy_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)

    output, status = run_mypy("sagadsl")

    assert status == 0, output


def test_the_package_ships_py_typed() -> None:
    assert (ROOT / "sagadsl" / "py.typed").is_file()
