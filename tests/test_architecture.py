"""Layering rules that keep the product deployable without its test rig."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import controller.errors
import drivers.errors
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
