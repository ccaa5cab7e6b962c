"""Alarms: raised when a cause appears, cleared (and reported cleared) when it goes away.

An alarm is keyed by (scope, code): a scope is `slot:<n>`, `rack:<name>` or `station`. The
book reconciles, per scope, the set of causes the rules see now against what is active, so an
alarm can never outlive its cause nor be raised twice.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from drivers import clock


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
    """The active alarms of the station, by scope (a slot's are found without the others)."""

    def __init__(self) -> None:
        self._by_scope: dict[str, dict[str, Alarm]] = {}
        self.generation = 0  # counts raises, clears and updates: a reader sees that one came

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
        active = self._by_scope.get(scope)
        if not active and not causes:
            return [], []  # the common case: nothing was wrong and nothing is
        if active is None:
            active = self._by_scope[scope] = {}
        wall = clock.wall() if now is None else now
        raised: list[Alarm] = []
        cleared = [active.pop(code) for code in list(active) if code not in causes]
        for code, cause in causes.items():
            current = active.get(code)
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
                active[code] = alarm
                raised.append(alarm)
            elif current.message != cause.message or current.severity != cause.severity:
                # Same cause, new figures: update in place, not a new alarm.
                active[code] = current.model_copy(
                    update={"message": cause.message, "severity": cause.severity}
                )
                self.generation += 1
        if not active:
            del self._by_scope[scope]
        if raised or cleared:
            self.generation += 1
        return raised, cleared

    def restore(self, alarms: Iterable[Alarm]) -> None:
        """Take alarms that were active before a restart (from the journal)."""
        for alarm in alarms:
            self._by_scope.setdefault(alarm.scope, {})[alarm.code] = alarm
        self.generation += 1

    def active(self, scope: str | None = None) -> list[Alarm]:
        """Active alarms, of one scope or all, oldest first."""
        if scope is not None:
            alarms = list(self._by_scope.get(scope, {}).values())
        else:
            alarms = [a for active in self._by_scope.values() for a in active.values()]
        return sorted(alarms, key=lambda a: (a.since, a.scope, a.code))

    def codes(self, scope: str) -> set[str]:
        """Codes active in a scope."""
        return set(self._by_scope.get(scope, ()))


def slot_scope(slot: int) -> str:
    """Scope name of a slot."""
    return f"slot:{slot}"


def rack_scope(rack: str) -> str:
    """Scope name of a rack."""
    return f"rack:{rack}"
