"""Generated parts of docs/ match the code they describe."""

from __future__ import annotations

from tools.gendocs import stale_docs


def test_generated_docs_are_up_to_date() -> None:
    assert stale_docs() == [], "run: .venv/bin/python tools/gendocs.py"
