"""Regenerate the generated parts of docs/ (between `<!-- generated:NAME -->` markers).

    .venv/bin/python tools/gendocs.py          # rewrite the docs
    .venv/bin/python tools/gendocs.py --check  # exit 1 if a doc is out of date

tests/test_docs.py runs the check, so a doc cannot drift from the code it describes.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from drivers.modbus.profile import load_profile, markdown_table

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "config" / "profiles"
MARKER = re.compile(
    r"(<!-- generated:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.DOTALL
)


def _profile_slot(name: str) -> str:
    profile = load_profile(PROFILES / f"{name}.toml")
    return markdown_table(profile.slot, absolute=False)


def _profile_rack(name: str) -> str:
    profile = load_profile(PROFILES / f"{name}.toml")
    return markdown_table(profile.rack, absolute=True)


def _status_codes(name: str) -> str:
    profile = load_profile(PROFILES / f"{name}.toml")
    rows = ["| code | status |", "|---|---|"]
    rows += [
        f"| {code} | `{status}` |"
        for status, code in sorted(profile.status_codes.items(), key=lambda kv: kv[1])
    ]
    return "\n".join(rows)


GENERATORS: dict[str, Callable[[], str]] = {
    "simrack-slot": lambda: _profile_slot("simrack"),
    "simrack-rack": lambda: _profile_rack("simrack"),
    "simrack-status": lambda: _status_codes("simrack"),
}


def render(text: str) -> str:
    """The document with every generated section brought up to date."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in GENERATORS:
            raise KeyError(f"no generator for section {name!r}")
        return f"{match.group(1)}{GENERATORS[name]()}\n{match.group(4)}"

    return MARKER.sub(replace, text)


def stale_docs() -> list[Path]:
    """Docs whose generated sections differ from what the code says."""
    return [
        p for p in sorted((REPO / "docs").glob("*.md")) if render(p.read_text()) != p.read_text()
    ]


def main() -> int:
    """Rewrite or check."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = stale_docs()
    if args.check:
        for path in stale:
            print(f"{path.relative_to(REPO)} is out of date: run tools/gendocs.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(render(path.read_text()))
        print(f"rewrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
