"""The release as docs/operations.md installs it: a wheel, not a checkout.

The built wheel is installed into a fresh virtualenv (its dependencies taken from the test
environment, never the checkout's own code), and `swapctl demo --swaps 1` runs from another
directory: the demo station's config, profiles and scenarios must ship inside the package.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.support import REPO

OURS = ("controller", "drivers", "simstation", "swapstation", "__editable__")


def _packages_in_folders() -> list[str]:
    return sorted(
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("controller", "drivers", "simstation")
        for init in (REPO / top).rglob("__init__.py")
    )


def test_the_package_list_matches_the_folders() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == sorted([*_packages_in_folders(), "simstation.bundled"])
    assert setuptools["package-dir"] == {"simstation.bundled": "config"}


def _run(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SWAP")}
    out = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"{args}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def _dependencies_only(into: Path) -> Path:
    """The test environment's installed packages, without this project's (links to them)."""
    site = Path(sysconfig.get_paths()["purelib"])
    into.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith(OURS) and entry.suffix != ".pth":
            (into / entry.name).symlink_to(entry)
    return into


@pytest.mark.timeout(300)
def test_a_release_runs_the_demo_from_another_directory(tmp_path: Path) -> None:
    # Build from a copy of the tracked files (the checkout stays clean of build output).
    source = tmp_path / "source"
    files = _run("git", "ls-files", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", dist, source, cwd=tmp_path)  # fmt: skip
    (wheel,) = dist.glob("swapstation-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin" / "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    deps = _dependencies_only(tmp_path / "deps")
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    (site / "test-dependencies.pth").write_text(f"{deps}\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(venv / "bin" / "python", "-c",
                 "import controller, simstation.paths as p; print(controller.__file__);"
                 " print(p.config_dir())", cwd=elsewhere)  # fmt: skip
    installed, config = where.stdout.split()
    assert installed.startswith(str(site)), installed  # the wheel's code, not the checkout's
    assert config.startswith(str(site)) and config.endswith("simstation/bundled"), config

    result = _run(venv / "bin" / "swapctl", "demo", "--swaps", "1", cwd=elsewhere, timeout=120)
    assert re.search(r"^  swaps completed +1$", result.stdout, re.MULTILINE), result.stdout
    assert not (elsewhere / "config").exists()


def test_without_the_sim_extra_the_demo_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['tomli_w'] = None\n"
        "from controller.cli.main import main\n"
        "sys.exit(main(['demo', '--swaps', '1']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "pip install 'swapstation[sim]'" in out.stderr
    assert "tomli_w" in out.stderr
