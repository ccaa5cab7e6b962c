"""A profile register that nothing reads is a warning, at check-config and at daemon start."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.config.loader import config_warnings, load_config
from tests.support import REPO, DaemonProcess, run_swapctl, station_toml

PROFILES = REPO / "config" / "profiles"
RACK = (
    '[[racks]]\nname = "a"\ntransport = "tcp"\nhost = "127.0.0.1"\nport = 1\nunit_id = 1\n'
    'slots = [1, 2]\nprofile = "{profile}"\n'
)


def _station(tmp_path: Path, profile: str = "extras") -> Path:
    """A station whose rack uses `profile` from tmp_path/profiles (extras: two unused names)."""
    profiles = tmp_path / "profiles"
    profiles.mkdir(exist_ok=True)
    text = (PROFILES / "simrack.toml").read_text()
    text = text.replace('name = "simrack"', 'name = "extras"')
    text = text.replace(
        "\nslot = [\n",
        '\nslot = [\n  { name = "cell_count", table = "input", offset = 29, type = "u16" },\n',
    )
    text = text.replace(
        "\nrack = [\n",
        '\nrack = [\n  { name = "asset_tag", table = "input", offset = 15, type = "string",'
        " length = 4 },\n",
    )
    (profiles / "extras.toml").write_text(text)
    (profiles / "simrack.toml").write_text((PROFILES / "simrack.toml").read_text())
    path = tmp_path / "station.toml"
    path.write_text(
        f'profiles_dir = "{profiles}"\n'
        + station_toml(None, tmp_path / "state")
        + RACK.format(profile=profile)
    )
    return path


def _expected(tmp_path: Path, path: Path) -> list[str]:
    profile = tmp_path / "profiles" / "extras.toml"
    return [
        f"{path}: racks[0].profile: warning: {profile}: slot register 'cell_count' is not read"
        " (nothing uses it)",
        f"{path}: racks[0].profile: warning: {profile}: rack register 'asset_tag' is not read"
        " (nothing uses it)",
    ]


def test_unread_register_names_are_warnings_naming_file_and_register(tmp_path: Path) -> None:
    path = _station(tmp_path)
    config = load_config(path, environ={})  # a warning does not refuse the config
    assert config_warnings(path, config) == _expected(tmp_path, path)


def test_a_profile_of_read_names_only_warns_of_nothing(tmp_path: Path) -> None:
    path = _station(tmp_path, profile="simrack")
    assert config_warnings(path, load_config(path, environ={})) == []


def test_check_config_prints_the_warnings_and_passes(tmp_path: Path) -> None:
    path = _station(tmp_path)
    result = run_swapctl("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == _expected(tmp_path, path)
    assert result.stdout.startswith(f"{path}: valid\n")


@pytest.mark.parametrize("config", ["demo.toml"])
def test_the_shipped_configs_warn_of_nothing(config: str) -> None:
    result = run_swapctl("check-config", str(REPO / "config" / config))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.timeout(30)
def test_the_daemon_logs_the_warnings_at_start(tmp_path: Path) -> None:
    path = _station(tmp_path)
    with DaemonProcess(path) as daemon:
        deadline = time.monotonic() + 15
        while not all(line in daemon.log() for line in _expected(tmp_path, path)):
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)  # polling the log file for a condition, not a fixed wait
        logged = daemon.log().splitlines()
        for line in _expected(tmp_path, path):  # at the warning level, before the start
            assert any(got.endswith(line) and " WARNING " in got for got in logged), logged
