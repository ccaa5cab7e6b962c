"""Where the demo station's files are: the checkout's config/, or the copy in the package.

A checkout runs from its own `config/` (edit a profile, run the demo: it is used). An
installed release has no checkout: the same files ship as `simstation.bundled` (pyproject maps
the user's `config/` folder into the package), so `swapctl demo` runs from any directory.
"""

from __future__ import annotations

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent / "config"
INSTALLED = Path(__file__).resolve().parent / "bundled"  # the wheel's copy of config/


def config_dir() -> Path:
    """The folder holding demo.toml, profiles/ and scenarios/."""
    if (CHECKOUT / "demo.toml").is_file():
        return CHECKOUT
    return INSTALLED


def scenario(path: Path) -> Path:
    """A scenario by path, or by the name of one that ships (`pss13` for scenarios/pss13.toml)."""
    if path.exists() or path.parent != Path():
        return path
    shipped = config_dir() / "scenarios" / f"{path.stem}.toml"
    return shipped if shipped.is_file() else path
