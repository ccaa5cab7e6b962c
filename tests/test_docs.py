"""Generated parts of docs/ match the code they describe."""

from __future__ import annotations

import pytest
from statemachine import State, StateMachine

from controller import interlocks, swapmachine
from tools.gendocs import GENERATORS, MARKER, REPO, stale_docs

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
    monkeypatch.setattr(swapmachine, "RESUMABLE", swapmachine.RESUMABLE[:-1])
    assert SWAP_DOC in stale_docs()


def test_changed_interlocks_make_the_doc_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    changed = {**interlocks.INTERLOCKS, "lowering": interlocks.INTERLOCKS["releasing"]}
    monkeypatch.setattr(interlocks, "INTERLOCKS", changed)
    assert SWAP_DOC in stale_docs()


def test_a_changed_condition_message_makes_the_doc_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interlocks, "DOORS", interlocks.Condition("doors_closed", "door open"))
    assert SWAP_DOC in stale_docs()
