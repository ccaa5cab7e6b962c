"""Alarms: raised when a cause appears, cleared (and reported cleared) when it goes away.

An alarm is keyed by (scope, code): a scope is `slot:<n>`, `rack:<name>` or `station`. The
book reconciles, per scope, the set of causes the rules see now against what is active, so an
alarm can never outlive its cause nor be raised twice.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


class Severity(enum.StrEnum):
    """How urgent an alarm is."""

    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Cause:
    """What a rule found: how bad and in words."""

    severity: Severity
    message: str


class Alarm(BaseModel):
    """An active alarm, as published."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scope: str
    code: str
    severity: Severity
    message: str
    since: float  # wall clock, seconds
    slot: int | None = None
    rack: str | None = None


class AlarmBook:
    """The active alarms of the station."""

    def __init__(self) -> None:
        self._active: dict[tuple[str, str], Alarm] = {}

    def reconcile(
        self,
        scope: str,
        causes: Mapping[str, Cause],
        *,
        slot: int | None = None,
        rack: str | None = None,
        now: float | None = None,
    ) -> tuple[list[Alarm], list[Alarm]]:
        """Make the scope's alarms exactly `causes`; return (raised, cleared)."""
        wall = time.time() if now is None else now
        raised: list[Alarm] = []
        cleared: list[Alarm] = []
        for s, code in list(self._active):
            if s == scope and code not in causes:
                cleared.append(self._active.pop((s, code)))
        for code, cause in causes.items():
            key = (scope, code)
            current = self._active.get(key)
            if current is None:
                alarm = Alarm(
                    scope=scope,
                    code=code,
                    severity=cause.severity,
                    message=cause.message,
                    since=wall,
                    slot=slot,
                    rack=rack,
                )
                self._active[key] = alarm
                raised.append(alarm)
            elif current.message != cause.message or current.severity != cause.severity:
                # Same cause, new figures: update in place, not a new alarm.
                self._active[key] = current.model_copy(
                    update={"message": cause.message, "severity": cause.severity}
                )
        return raised, cleared

    def restore(self, alarms: Iterable[Alarm]) -> None:
        """Take alarms that were active before a restart (from the journal)."""
        for alarm in alarms:
            self._active[(alarm.scope, alarm.code)] = alarm

    def active(self, scope: str | None = None) -> list[Alarm]:
        """Active alarms, of one scope or all, oldest first."""
        alarms = [a for (s, _), a in self._active.items() if scope is None or s == scope]
        return sorted(alarms, key=lambda a: (a.since, a.scope, a.code))

    def codes(self, scope: str) -> set[str]:
        """Codes active in a scope."""
        return {code for (s, code) in self._active if s == scope}


def slot_scope(slot: int) -> str:
    """Scope name of a slot."""
    return f"slot:{slot}"


def rack_scope(rack: str) -> str:
    """Scope name of a rack."""
    return f"rack:{rack}"
