"""The systemd unit and sysusers snippet: required settings, `verify` and `security` verdicts.

Acceptance criteria of the unit:
- `systemd-analyze verify systemd/swapstation.service` prints nothing. It exits 0 on unknown
  keys and unparsable values, so the output itself is checked. verify also insists that
  ExecStart's binary exists; it is run against a scratch root (`--root=`) that holds this unit,
  the host's own systemd units (for the targets the unit is ordered against) and an executable
  stub at the ExecStart path: the unit file is checked byte for byte, nothing in it is patched.
  A canary test proves that this set-up still reports bad keys, bad values and a missing binary.
- `systemd-analyze security --offline=true --threshold=30 systemd/swapstation.service` passes:
  exposure <= 3.0 (the threshold is on a 0-100 scale), with a canary for the threshold too.

systemd-analyze and systemd-sysusers come with the systemd package, which the project's
bootstrap script installs; a missing tool fails these tests instead of skipping them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT_REL = Path("systemd") / "swapstation.service"
UNIT = REPO / UNIT_REL
SYSUSERS = REPO / "systemd" / "swapstation.sysusers"
UNIT_NAME = "swapstation.service"

EXEC_START = "/opt/swapstation/venv/bin/swapctl run --config /etc/swapstation/station.toml"
MAX_EXPOSURE = 3.0
THRESHOLD = "30"  # systemd-analyze's scale: exposure x 10
SHUTDOWN_BUDGET_S = 5.0  # the daemon's orderly shutdown takes at most this long
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
TOOL_TIMEOUT_S = 20

# A setting that takes a list accumulates over repeated lines; an empty assignment resets it.
Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Parse systemd's ini dialect: repeated keys, `#`/`;` comments, `\\` continuations."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped[0] in "#;"):
            continue
        if pending and stripped[:1] in ("#", ";"):
            continue  # comment lines inside a continuation are skipped
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        assert current is not None, f"assignment outside a section: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    assert not pending, "file ends inside a line continuation"
    return sections


def assignments(unit: Unit, section: str, key: str) -> list[str]:
    """Every value assigned to `key`, in order; fails if the key is absent."""
    values = unit.get(section, {}).get(key)
    assert values is not None, f"[{section}] {key}= is missing"
    return values


def last(unit: Unit, section: str, key: str) -> str:
    """The effective value of a single-valued setting (the last assignment wins)."""
    return assignments(unit, section, key)[-1]


def effective_values(unit: Unit, section: str, key: str) -> list[str]:
    """The assignments of a list setting that count: those after the last empty one."""
    values: list[str] = []
    for value in assignments(unit, section, key):
        values = [*values, value] if value else []
    return values


def effective_list(unit: Unit, section: str, key: str) -> list[str]:
    """The effective words of a space-separated list setting."""
    return [word for value in effective_values(unit, section, key) for word in value.split()]


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH. It ships with the systemd package, which the project's"
            " bootstrap script installs (Debian: apt-get install systemd); these tests must not"
            " be skipped.",
            pytrace=False,
        )
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=TOOL_TIMEOUT_S,
        cwd=cwd,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"$ {' '.join(map(str, result.args))}\n-> exit {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def timespan_us(analyze: str, span: str) -> int:
    """Microseconds of a systemd time span, as systemd itself parses it."""
    result = run(analyze, "timespan", span)
    assert result.returncode == 0, describe(result)
    match = re.search(r"(?:μs|us):\s*(\d+)", result.stdout)  # "us" outside UTF-8 locales
    assert match is not None, describe(result)
    return int(match.group(1))


def exposure(result: subprocess.CompletedProcess[str]) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match is not None, describe(result)
    return float(match.group(1))


def read_db(path: Path) -> dict[str, list[str]]:
    """/etc/passwd or /etc/group, by name."""
    rows = (line.split(":") for line in path.read_text(encoding="utf-8").splitlines() if line)
    return {row[0]: row for row in rows}


@pytest.fixture
def analyze() -> str:
    return require_tool("systemd-analyze")


@pytest.fixture
def unit_text() -> str:
    return UNIT.read_text(encoding="utf-8")


@pytest.fixture
def unit(unit_text: str) -> Unit:
    return parse_unit(unit_text)


@pytest.fixture
def verify_root(tmp_path: Path, unit: Unit, unit_text: str) -> Path:
    """A scratch root for `systemd-analyze verify --root=`: host units, stub binary, our unit."""
    host_units = next((d for d in HOST_UNIT_DIRS if (d / "multi-user.target").is_file()), None)
    if host_units is None:
        pytest.fail(f"no systemd unit directory among {HOST_UNIT_DIRS}", pytrace=False)
    root = tmp_path / "root"
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    binary = last(unit, "Service", "ExecStart").split()[0]
    assert binary.startswith("/"), f"ExecStart must name an absolute path: {binary}"
    stub = root / binary.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stub.chmod(0o755)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / UNIT_NAME).write_text(unit_text, encoding="utf-8")
    return root


@pytest.mark.timeout(30)
def test_unit_has_required_settings(unit: Unit) -> None:
    assert last(unit, "Service", "Type") == "notify"
    assert last(unit, "Service", "NotifyAccess") == "main"
    assert last(unit, "Service", "ExecStart") == EXEC_START
    assert last(unit, "Service", "WatchdogSec") not in ("", "0", "infinity")
    assert last(unit, "Service", "Restart") == "on-failure"
    assert "78" in effective_list(unit, "Service", "RestartPreventExitStatus")
    assert last(unit, "Service", "User") == "swapstation"
    assert "dialout" in effective_list(unit, "Service", "SupplementaryGroups")
    assert effective_list(unit, "Service", "StateDirectory") == ["swapstation"]
    assert effective_list(unit, "Service", "ConfigurationDirectory") == ["swapstation"]
    assert last(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.timeout(30)
def test_unit_keeps_its_hardening(unit: Unit) -> None:
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "DevicePolicy": "closed",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert last(unit, "Service", key) == value, key
    # Present and empty: no capability at all.
    assert assignments(unit, "Service", "CapabilityBoundingSet")
    assert effective_list(unit, "Service", "CapabilityBoundingSet") == []
    filters = assignments(unit, "Service", "SystemCallFilter")
    assert "@system-service" in filters
    denied = {word for f in filters if f.startswith("~") for word in f[1:].split()}
    assert {"@privileged", "@resources"} <= denied, f"SystemCallFilter=~ denies only {denied}"
    families = effective_list(unit, "Service", "RestrictAddressFamilies")
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    # DeviceAllow= takes one `specifier access` pair per assignment.
    devices = {tuple(v.split()) for v in effective_values(unit, "Service", "DeviceAllow")}
    for group in ("ttyS", "ttyUSB", "ttyACM", "ttyAMA"):
        assert ("char-" + group, "rw") in devices, group
    # PrivateDevices=yes would hide the serial ports the daemon drives.
    assert unit["Service"].get("PrivateDevices", ["no"])[-1] in ("no", "false", "0")


@pytest.mark.timeout(30)
def test_unit_timeouts_fit_the_daemon(analyze: str, unit: Unit) -> None:
    watchdog = timespan_us(analyze, last(unit, "Service", "WatchdogSec"))
    # The daemon pings every WatchdogSec/2 and only after a live control-loop tick (100 ms).
    assert 2_000_000 <= watchdog <= 60_000_000
    stop = timespan_us(analyze, last(unit, "Service", "TimeoutStopSec"))
    assert stop >= 2 * SHUTDOWN_BUDGET_S * 1_000_000, "no margin over the 5 s orderly shutdown"


@pytest.mark.timeout(30)
def test_systemd_analyze_verify_prints_nothing(analyze: str, verify_root: Path) -> None:
    result = run(analyze, "verify", f"--root={verify_root}", UNIT_NAME)
    assert result.returncode == 0, describe(result)
    assert result.stdout == "", describe(result)
    assert result.stderr == "", describe(result)


@pytest.mark.timeout(30)
def test_verify_set_up_still_reports_problems(
    analyze: str, verify_root: Path, unit_text: str, unit: Unit
) -> None:
    """The scratch root must not hide what verify checks: bad keys, bad values, the binary."""
    target = verify_root / "etc/systemd/system" / UNIT_NAME
    broken = unit_text.replace("\nRestart=on-failure\n", "\nRestart=sometimes\nWatchdogSecs=5\n", 1)
    assert broken != unit_text
    target.write_text(broken, encoding="utf-8")
    result = run(analyze, "verify", f"--root={verify_root}", UNIT_NAME)
    output = result.stdout + result.stderr
    assert "sometimes" in output, describe(result)
    assert "WatchdogSecs" in output, describe(result)

    target.write_text(unit_text, encoding="utf-8")
    binary = last(unit, "Service", "ExecStart").split()[0]
    (verify_root / binary.lstrip("/")).unlink()
    result = run(analyze, "verify", f"--root={verify_root}", UNIT_NAME)
    assert binary in result.stdout + result.stderr, describe(result)
    assert result.returncode != 0, describe(result)


@pytest.mark.timeout(30)
def test_security_exposure_within_threshold(analyze: str) -> None:
    result = run(
        analyze, "security", "--offline=true", f"--threshold={THRESHOLD}", str(UNIT_REL), cwd=REPO
    )
    assert result.returncode == 0, describe(result)
    assert exposure(result) <= MAX_EXPOSURE, describe(result)


@pytest.mark.timeout(30)
def test_security_threshold_rejects_an_unhardened_unit(analyze: str, tmp_path: Path) -> None:
    """Canary: the same command fails a unit without hardening, so a pass above means something."""
    bare = tmp_path / UNIT_NAME
    bare.write_text(
        f"[Service]\nType=notify\nUser=swapstation\nExecStart={EXEC_START}\n", encoding="utf-8"
    )
    result = run(analyze, "security", "--offline=true", f"--threshold={THRESHOLD}", str(bare))
    assert exposure(result) > MAX_EXPOSURE, describe(result)
    assert result.returncode != 0, describe(result)


@pytest.mark.timeout(30)
def test_sysusers_creates_the_user_in_dialout(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n", encoding="utf-8")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\n", encoding="utf-8")
    result = run(sysusers, f"--root={root}", str(SYSUSERS))
    assert result.returncode == 0, describe(result)

    users = read_db(root / "etc/passwd")
    groups = read_db(root / "etc/group")
    assert "swapstation" in users, describe(result)
    user = users["swapstation"]
    assert 0 < int(user[2]) < 1000, "not a system user"
    assert user[6].endswith("nologin")
    assert groups["swapstation"][2] == user[3], "primary group is not swapstation"
    assert "swapstation" in groups["dialout"][3].split(","), "swapstation is not in dialout"
