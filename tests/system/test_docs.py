"""Generated parts of docs/ match the code they describe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import Field, create_model
from statemachine import State, StateMachine

import tools.gendocs
from controller.mqtt import commands
from controller.swap import interlocks
from controller.swap import machine as swapmachine
from controller.swap import phase as swapphase
from tools.gendocs import GENERATORS, MARKER, REPO, schemas, stale_docs, stale_schemas

SWAP_DOC = REPO / "docs" / "swap-machine.md"


def test_generated_docs_are_up_to_date() -> None:
    assert stale_docs() == [], "run: .venv/bin/python tools/gendocs.py"


def test_every_generated_section_is_in_a_doc() -> None:
    # A section whose markers were deleted would no longer be checked: every generator is used.
    used = [
        m.group("name")
        for p in sorted((REPO / "docs").glob("*.md"))
        for m in MARKER.finditer(p.read_text())
    ]
    assert sorted(set(GENERATORS) - set(used)) == []
    swap = {m.group("name") for m in MARKER.finditer(SWAP_DOC.read_text())}
    assert swap == {"swap-phases", "swap-diagram", "swap-interlocks", "swap-conditions"}


def test_swap_diagram_lists_every_transition() -> None:
    diagram = GENERATORS["swap-diagram"]()
    assert diagram.startswith("```mermaid\nstateDiagram-v2\n") and diagram.endswith("\n```")
    for state in swapmachine.SwapMachine.states:
        assert f" as {state.id}\n" in diagram
        for transition in state.transitions:
            assert transition.target is not None
            assert f"    {state.id} --> {transition.target.id} : " in diagram


class _Changed(StateMachine):
    idle = State(initial=True)
    authorised = State()
    authorise = idle.to(authorised)
    finish = authorised.to(idle)


def test_a_changed_machine_makes_the_doc_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swapmachine, "SwapMachine", _Changed)
    assert SWAP_DOC in stale_docs()


def test_changed_phase_groups_make_the_doc_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    less = swapphase.RESUMABLE - {swapphase.Phase.ABORTING}
    monkeypatch.setattr(swapphase, "RESUMABLE", less)
    assert SWAP_DOC in stale_docs()


def test_changed_interlocks_make_the_doc_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    lowering, releasing = swapphase.Phase.LOWERING, swapphase.Phase.RELEASING
    changed = {**interlocks.INTERLOCKS, lowering: interlocks.INTERLOCKS[releasing]}
    monkeypatch.setattr(interlocks, "INTERLOCKS", changed)
    assert SWAP_DOC in stale_docs()


def test_a_changed_condition_message_makes_the_doc_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interlocks, "DOORS", interlocks.Condition("doors_closed", "door open"))
    assert SWAP_DOC in stale_docs()


# --- docs/schemas/: one JSON Schema per MQTT message, from its model ----------------------------


def test_message_schemas_are_up_to_date() -> None:
    stale = stale_schemas()
    assert stale == [], (
        f"docs/schemas/ differs from the models ({stale}): run python -m tools.gendocs"
    )


def test_there_is_a_schema_for_every_message() -> None:
    names = set(schemas())
    want = {f"cmd.{name}.request.schema.json" for name in commands.COMMANDS}
    want |= {f"{n}.schema.json" for n in ("cmd.reply", "state", "info", "slot", "robot", "event")}
    assert names == want
    for text in schemas().values():
        assert text.endswith("}\n")
        body = json.loads(text)
        assert body["$schema"].endswith("/draft/2020-12/schema")
        assert text == json.dumps(body, indent=2, sort_keys=True) + "\n"


def test_a_changed_model_makes_its_schema_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    changed = create_model(
        "Ping", __base__=commands.Ping, note=(str | None, Field(default=None, max_length=8))
    )
    monkeypatch.setitem(commands.COMMANDS, "ping", changed)
    assert stale_schemas() == ["cmd.ping.request.schema.json"]


def test_a_missing_or_extra_schema_file_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tools.gendocs, "SCHEMAS", tmp_path)
    assert tools.gendocs.write_schemas() == sorted(schemas())
    assert stale_schemas() == []
    (tmp_path / "state.schema.json").unlink()
    (tmp_path / "old.schema.json").write_text("{}\n")
    assert stale_schemas() == ["old.schema.json", "state.schema.json"]
    assert tools.gendocs.write_schemas() == ["old.schema.json", "state.schema.json"]
    assert not (tmp_path / "old.schema.json").exists()
    assert stale_schemas() == []
