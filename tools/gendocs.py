"""Regenerate the generated parts of docs/: marked sections, and the MQTT JSON Schemas.

    .venv/bin/python -m tools.gendocs          # rewrite the docs and docs/schemas/
    .venv/bin/python -m tools.gendocs --check  # exit 1 if anything is out of date

Sections sit between `<!-- generated:NAME -->` markers; docs/schemas/ holds one JSON Schema
per MQTT message, from the pydantic models that build or parse it. tests/system/test_docs.py runs
the check, so a doc cannot drift from the code it describes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.modbus.profile import load_profile, markdown_table

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.json_schema import JsonSchemaMode

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "config" / "profiles"
SCHEMAS = REPO / "docs" / "schemas"
SCHEMA_SUFFIX = ".schema.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
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


def _robot_messages() -> str:
    from drivers.robot.protocol import MESSAGES

    rows = [
        "| code | message | direction | payload | struct (big-endian) | bytes | timeout key |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, spec in MESSAGES.items():
        fields = [f.name for f in dataclasses.fields(spec.payload)]
        size = struct.calcsize(spec.payload.FORMAT)
        direction = "controller -> robot" if kind.is_command else "robot -> controller"
        rows.append(
            f"| 0x{int(kind):02X} | `{kind.name}` | {direction}"
            f" | {spec.payload.__name__}({', '.join(fields)}) | `{spec.payload.FORMAT}` | {size}"
            f" | {spec.timeout or ''} |"
        )
    return "\n".join(rows)


def _robot_codes() -> str:
    from drivers.robot.protocol import FaultCode, NakReason, RobotState, Target

    return "\n\n".join(
        f"`{enum.__name__}`: " + ", ".join(f"{m.value} `{m.name.lower()}`" for m in enum)
        for enum in (Target, RobotState, NakReason, FaultCode)
    )


def _robot_examples() -> str:
    from drivers.robot.protocol import Empty, Message, MoveArgs, MsgType, Outcome, Target

    examples = [
        ("MOVE to slot 7, seq 42", Message(42, MsgType.MOVE, MoveArgs(Target.SLOT, 7))),
        ("ACK of it", Message(42, MsgType.ACK, Empty())),
        (
            "DONE: idle at slot 7, holding nothing",
            Message(42, MsgType.DONE, Outcome(0, int(Target.SLOT), 7, 0, 0, 0, 0)),
        ),
        ("STOP, seq 43", Message(43, MsgType.STOP, Empty())),
    ]
    lines = ["```"]
    for what, msg in examples:
        lines.append(f"{msg.to_bytes().hex(' ').upper():<58}  {what}")
    lines.append("```")
    return "\n".join(lines)


def _swap_diagram() -> str:
    from statemachine.contrib.diagram import formatter

    from controller.swap.machine import SwapMachine

    return f"```mermaid\n{formatter.render(SwapMachine, 'mermaid').rstrip()}\n```"


def _swap_phases() -> str:
    from controller.swap.interlocks import INTERLOCKS
    from controller.swap.phase import MOTION, RESUMABLE, Phase, ordered

    free = tuple(p for p in Phase if p not in INTERLOCKS)
    return "\n".join(
        f"- {what}: " + ", ".join(f"`{phase}`" for phase in phases)
        for what, phases in (
            ("`MOTION` (machinery moves, or a pack is out of its vehicle)", ordered(MOTION)),
            ("`RESUMABLE` (a restart may resume here, on proof)", ordered(RESUMABLE)),
            ("without interlocks (none in `controller/swap/interlocks.py`)", free),
        )
    )


def _swap_interlocks() -> str:
    from controller.swap.interlocks import table

    return table()


def _swap_conditions() -> str:
    from controller.swap import interlocks

    conditions: dict[str, interlocks.Condition] = {}
    for value in vars(interlocks).values():
        if isinstance(value, interlocks.Condition):
            conditions.setdefault(value.name, value)
    rows = ["| condition | blocking cause when it does not hold |", "|---|---|"]
    rows += [f"| `{c.name}` | {c.message} |" for c in conditions.values()]
    return "\n".join(rows)


def _safety_invariants() -> str:
    from controller.safety.invariants import table

    return table()


def _layers() -> list[list[str]]:
    """The controller's rooms, top to bottom, as pyproject's import-linter contract lists them."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "rooms"]
    return [[room.strip() for room in layer.split("|")] for layer in contract["layers"]]


def _summary(path: Path) -> str:
    """A module's one-line contract: the first line of its docstring."""
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.splitlines()[0].replace("|", "\\|") if doc else ""


def _rooms() -> str:
    layers = _layers()
    rows = ["| room | holds | may import |", "|---|---|---|"]
    for i, layer in enumerate(layers):
        below = [room for lower in layers[i + 1 :] for room in lower]
        may = ", ".join(f"`{r}`" for r in below) or "nothing of the controller"
        for room in layer:
            path = REPO / "controller" / room
            path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            rows.append(f"| `{room}` | {_summary(path)} | {may}; `drivers` |")
    return "\n".join(rows)


def _modules() -> str:
    rows = ["| module | holds |", "|---|---|"]
    for layer in _layers():
        for room in layer:
            folder = REPO / "controller" / room
            paths = sorted(folder.glob("*.py")) if folder.is_dir() else [folder.with_suffix(".py")]
            for path in paths:
                if path.name == "__init__.py":
                    continue
                rows.append(f"| `{path.relative_to(REPO)}` | {_summary(path)} |")
    return "\n".join(rows)


GENERATORS: dict[str, Callable[[], str]] = {
    "rooms": _rooms,
    "modules": _modules,
    "safety-invariants": _safety_invariants,
    "robot-messages": _robot_messages,
    "robot-codes": _robot_codes,
    "robot-examples": _robot_examples,
    "simrack-slot": lambda: _profile_slot("simrack"),
    "simrack-rack": lambda: _profile_rack("simrack"),
    "simrack-status": lambda: _status_codes("simrack"),
    "swap-diagram": _swap_diagram,
    "swap-phases": _swap_phases,
    "swap-interlocks": _swap_interlocks,
    "swap-conditions": _swap_conditions,
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


def message_models() -> dict[str, tuple[type[BaseModel], JsonSchemaMode]]:
    """Every MQTT message by schema name: its model, and whether it is parsed or built."""
    from controller.mqtt.commands import COMMANDS, CommandReply
    from controller.mqtt.infopub import StationInfo
    from controller.mqtt.robotpub import RobotStateMessage
    from controller.mqtt.slotpub import SlotState
    from controller.mqtt.statepub import StationState
    from controller.store.events import EventEnvelope

    models: dict[str, tuple[type[BaseModel], JsonSchemaMode]] = {
        f"cmd.{name}.request": (model, "validation") for name, model in COMMANDS.items()
    }
    models["cmd.reply"] = (CommandReply, "serialization")
    models["state"] = (StationState, "serialization")
    models["info"] = (StationInfo, "serialization")
    models["slot"] = (SlotState, "serialization")
    models["robot"] = (RobotStateMessage, "serialization")
    models["event"] = (EventEnvelope, "serialization")
    return models


def schemas() -> dict[str, str]:
    """The text of every docs/schemas/ file, by file name (sorted keys, indent 2)."""
    out: dict[str, str] = {}
    for name, (model, mode) in message_models().items():
        schema = model.model_json_schema(mode=mode)
        schema = {"$schema": JSON_SCHEMA_DIALECT, "$id": f"{name}{SCHEMA_SUFFIX}", **schema}
        out[f"{name}{SCHEMA_SUFFIX}"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def stale_schemas() -> list[str]:
    """docs/schemas/ files that differ from the models, are missing, or are extra."""
    want = schemas()
    have = {p.name: p.read_text() for p in SCHEMAS.glob(f"*{SCHEMA_SUFFIX}")}
    return sorted(name for name in want.keys() | have.keys() if want.get(name) != have.get(name))


def write_schemas() -> list[str]:
    """Bring docs/schemas/ up to date; the names of the files written or removed."""
    want = schemas()
    SCHEMAS.mkdir(exist_ok=True)
    changed = stale_schemas()
    for name in changed:
        path = SCHEMAS / name
        if name in want:
            path.write_text(want[name])
        else:
            path.unlink()
    return changed


def main() -> int:
    """Rewrite or check."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = [str(p.relative_to(REPO)) for p in stale_docs()]
    stale += [f"docs/schemas/{name}" for name in stale_schemas()]
    if args.check:
        for name in stale:
            print(f"{name} is out of date: run python -m tools.gendocs", file=sys.stderr)
        return 1 if stale else 0
    for path in stale_docs():
        path.write_text(render(path.read_text()))
        print(f"rewrote {path.relative_to(REPO)}")
    for name in write_schemas():
        print(f"rewrote docs/schemas/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
