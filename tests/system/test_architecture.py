"""Layering rules that keep the product deployable without its test rig."""

from __future__ import annotations

import ast
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import controller.errors
import drivers.errors
from controller.swap.phase import Phase
from tests.support import REPO

SIMULATOR = "simstation"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_controller_and_drivers_never_import_the_simulator() -> None:
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for package in ("controller", "drivers")
        for path in sorted((REPO / package).rglob("*.py"))
        for name in _imports(path)
        if name == SIMULATOR or name.startswith(SIMULATOR + ".")
    ]
    assert offenders == []


def test_drivers_do_not_import_the_controller() -> None:
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / "drivers").rglob("*.py"))
        for name in _imports(path)
        if name == "controller" or name.startswith("controller.")
    ]
    assert offenders == []


def test_simulator_commands_plug_in_by_entry_point() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert '[project.entry-points."swapctl.commands"]' in text


DEVICE_WRITES = {"write_limit", "write_enable", "set_coils", "set_coil", "write_registers",
                 "write_coil"}  # fmt: skip
ROBOT_MOTION = {"command", "stop"}
# The gate itself, and the in-person commissioning tool (run with the daemon stopped; the
# person at the robot is the safety function, docs/operations.md).
MAY_COMMAND = {"actuators.py", "robotcli.py"}


def test_only_the_actuators_command_machinery() -> None:
    """Every command to a charger, an output or the robot passes the safety supervisor."""
    offenders = []
    for path in sorted((REPO / "controller").rglob("*.py")):
        if path.name in MAY_COMMAND:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name, receiver = node.func.attr, ast.unparse(node.func.value)
            if name in DEVICE_WRITES or (name in ROBOT_MOTION and "robot" in receiver.lower()):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {receiver}.{name}()")
    assert offenders == []


def _classes(path: Path) -> list[ast.ClassDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]


# Raised inside aiomqtt's own machinery (an aiomqtt error by contract), never past the link.
FOREIGN_ROOTED = {"PublishRefusedError"}


def test_the_controller_s_errors_live_in_one_module() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name}"
        for path in sorted((REPO / "controller").rglob("*.py"))
        if path.name != "errors.py"
        for node in _classes(path)
        if (node.name.endswith("Error") or node.name.endswith("Requested"))
        and node.name not in FOREIGN_ROOTED
    ]
    assert offenders == []


def test_every_deliberate_error_has_one_root() -> None:
    root = controller.errors.SwapstationError
    assert root is drivers.errors.SwapstationError
    errors = [
        cls
        for module in (controller.errors, drivers.errors)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseException)
    ]
    assert len(errors) >= 30
    assert [cls.__name__ for cls in errors if not issubclass(cls, root)] == []
    # One name for "refused, the message says why": every refusal is one of these.
    refused = controller.errors.RefusedError
    for cls in (controller.errors.BusyError, controller.errors.SafetyRefusedError,
                controller.errors.NoPackError, controller.errors.BrokerRefusedError):  # fmt: skip
        assert issubclass(cls, refused), cls


PHASES = {phase.value for phase in Phase}
# The same words meaning something else, each named here with what it is.
NOT_A_PHASE = {
    ("controller/cli/status.py", "fault"): "the robot message's `fault` field",
    ("controller/swap/bay.py", "lowering"): "the verb, in 'while lowering the lift'",
    ("simstation/scenario.py", "estop"): "a scenario's fault kind (docs/simulator.md)",
    ("simstation/simcli.py", "fault"): "a fault-injection menu entry",
    ("simstation/simcli.py", "estop"): "a fault-injection menu entry",
    ("simstation/simulate.py", "estop"): "a scenario's fault kind",
}


def _enum_member_values(tree: ast.AST) -> set[int]:
    """ids of the string constants that are members of an enum (`IDLE = "idle"`)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any("Enum" in ast.unparse(b) for b in node.bases):
            for item in node.body:
                if isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant):
                    found.add(id(item.value))
    return found


def _phase_literals(name: str, source: str) -> list[str]:
    tree = ast.parse(source, filename=name)
    members = _enum_member_values(tree)
    return [
        f"{name}:{node.lineno} {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and node.value in PHASES
        and id(node) not in members
        and (name, node.value) not in NOT_A_PHASE
    ]


def test_no_swap_phase_is_spelled_outside_its_enum() -> None:
    offenders = [
        literal
        for package in ("controller", "simstation")
        for path in sorted((REPO / package).rglob("*.py"))
        if path.relative_to(REPO) != Path("controller/swap/phase.py")
        for literal in _phase_literals(str(path.relative_to(REPO)), path.read_text())
    ]
    assert offenders == []


def test_the_phase_literal_check_finds_one() -> None:
    source = (
        'class Link(Enum):\n    IDLE = "idle"\n\nif ctx.state in {"lifting", "fault"}:\n    pass\n'
    )
    assert _phase_literals("controller/x.py", source) == [
        "controller/x.py:4 'lifting'",
        "controller/x.py:4 'fault'",
    ]
    assert _phase_literals("controller/cli/status.py", 'robot.get("fault")') == []


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(180)
def test_the_rooms_keep_their_allowed_imports() -> None:
    """pyproject's import-linter contracts: docs/architecture.md's rooms, checked."""
    out = _lint_imports(REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


@pytest.mark.timeout(180)
def test_a_room_importing_upwards_breaks_the_contract(tmp_path: Path) -> None:
    for part in ("controller", "drivers", "simstation", "pyproject.toml"):
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / part)
    supervisor = tmp_path / "controller" / "safety" / "supervisor.py"
    supervisor.write_text(supervisor.read_text() + "\nfrom controller.swap import sequencer\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    assert "controller.safety.supervisor -> controller.swap.sequencer" in out.stdout, out.stdout


def _clock_reads(name: str, source: str) -> list[str]:
    """`time.monotonic`, `time.time` and `datetime.now` read directly (not via drivers.clock)."""
    reads = {("time", "monotonic"), ("time", "time"), ("datetime", "now")}
    return [
        f"{name}:{node.lineno}: {node.value.id}.{node.attr}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and (node.value.id, node.attr) in reads
    ]


@pytest.mark.timeout(30)
def test_the_daemon_reads_time_only_from_its_given_clock() -> None:
    """docs/architecture.md: every time the daemon reads comes from drivers/clock.py."""
    offenders = [
        read
        for package in ("controller", "drivers")
        for path in sorted((REPO / package).rglob("*.py"))
        if path.relative_to(REPO).parts[:2] != ("controller", "cli")
        and path.relative_to(REPO) != Path("drivers/clock.py")
        for read in _clock_reads(str(path.relative_to(REPO)), path.read_text())
    ]
    assert offenders == []
    assert _clock_reads("x.py", "import time\nt = time.monotonic()\n") == ["x.py:2: time.monotonic"]
