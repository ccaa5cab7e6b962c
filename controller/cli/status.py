"""`swapctl status`: the station live from its retained MQTT topics, or once with `--once`.

Live: a table redrawn in place (plain ANSI) when something changes, at most ten times a
second; the broker is reconnected to if it drops. `--once`: one table as soon as the state is
in (the other retained topics get a short grace), exit 3 if no state came within the timeout.
Everything shown comes from the broker, which may be another machine's: it is never trusted
to be well formed, and control characters are stripped before they reach the terminal.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

import aiomqtt

from controller.cli.cmd import EXIT_NO_REPLY, Remote, broker_name, remote_client
from controller.config.model import StationConfig
from drivers.backoff import Backoff

TOPICS = ("status", "info", "state", "slots/+", "robot")
GRACE_S = 0.5  # after the state: the other retained messages come right behind it
REDRAW_MIN_S = 0.1
CONNECT_TIMEOUT_S = 10.0
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 10.0
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class StationView:
    """The latest retained message of each of a station's topics."""

    station_id: str
    status: str | None = None
    info: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    robot: dict[str, Any] | None = None
    slots: dict[int, dict[str, Any]] = field(default_factory=dict)
    broker_problem: str | None = None  # the live view's connection, when it is down

    def update(self, topic: str, payload: bytes) -> bool:
        """Take the message of `<root>/<topic>`; True when the view changed."""
        text = payload.decode(errors="replace")
        if topic == "status":
            new_status = text or None
            changed = new_status != self.status
            self.status = new_status
            return changed
        # An empty payload clears a retained message; one that is not a JSON object is shown
        # as unknown.
        obj = (_object(text) or {}) if text else None
        if topic.startswith("slots/"):
            try:
                slot = int(topic.removeprefix("slots/"))
            except ValueError:
                return False
            if obj is None:
                return self.slots.pop(slot, None) is not None
            changed = self.slots.get(slot) != obj
            self.slots[slot] = obj
            return changed
        if topic == "info":
            changed, self.info = self.info != obj, obj
        elif topic == "state":
            changed, self.state = self.state != obj, obj
        elif topic == "robot":
            changed, self.robot = self.robot != obj, obj
        else:
            changed = False
        return changed

    def complete(self, expect: Expected) -> bool:
        """Every expected topic is in."""
        return (
            self.status is not None
            and self.state is not None
            and (self.robot is not None or not expect.robot)
            and all(s in self.slots for s in expect.slots)
        )


def _object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


@dataclass(frozen=True, slots=True)
class Expected:
    """What `--once` waits for beyond the state (from the config; nothing if unknown)."""

    slots: frozenset[int] = frozenset()
    robot: bool = False


def expected(config: StationConfig, remote: Remote) -> Expected:
    """The slots and robot of the config's station; nothing for another station."""
    if remote.station_id != config.station_id:
        return Expected()
    slots = frozenset(s for rack in config.racks for s in rack.slots)
    return Expected(slots, config.robot is not None)


# --- rendering --------------------------------------------------------------------------------


def render(view: StationView) -> list[str]:
    """The screen: header, swap, blocking causes, alarms, slot table, robot."""
    state = view.state or {}
    lines = [_header(view)]
    if view.broker_problem:
        lines.append(f"broker    {view.broker_problem} (showing what was last seen)")
    if view.state is None:
        lines.append("state     not published yet")
    else:
        lines.append(f"swap      {_swap(state.get('swap'))}")
        lines.extend(_listed("blocking", _strings(state.get("blocking"))))
        lines.extend(_listed("alarms", [_alarm(a) for a in _dicts(state.get("alarms"))]))
        ready = state.get("packs_ready")
        ready_text = (
            ", ".join(f"{k} {v}" for k, v in sorted(ready.items()))
            if isinstance(ready, dict)
            else ""
        )
        lines.append(f"ready     {ready_text or 'none'}")
        lines.append(f"power     {_power(state.get('power'))}")
    lines.append(f"robot     {_robot(view.robot)}")
    lines.append("")
    lines.extend(_slot_table(view.slots))
    return [_clean(line) for line in lines]


def _power(power: object) -> str:
    """The limit in force and its source, the budget, the policy and the price now."""
    if not isinstance(power, dict):
        return "unknown"
    limit, binding = power.get("limit_kw"), power.get("binding")
    parts = [
        f"limit {limit:g} kW ({binding})"
        if isinstance(limit, int | float) and not isinstance(limit, bool)
        else "no limit"
    ]
    budget = power.get("budget_kw")
    if isinstance(budget, int | float) and not isinstance(budget, bool):
        parts.append(f"budget {budget:g} kW")
    parts.append(f"policy {power.get('policy', '?')}")
    price = power.get("price")
    if isinstance(price, int | float) and not isinstance(price, bool):
        parts.append(f"{price:g} {power.get('currency') or ''}/kWh".replace(" /", "/"))
    return ", ".join(parts)


def _header(view: StationView) -> str:
    state = view.state or {}
    parts = [f"station {view.station_id}", (view.status or "status unknown").upper()]
    if view.state is not None:
        parts += [f"mode {state.get('mode', '?')}", f"phase {state.get('phase', '?')}"]
        parts.append(f"io {state.get('io', '?')}")
        if state.get("recovering"):
            parts.append("RECOVERING")
        parts.append(f"at {_clock(state.get('updated_at'))}")
    info = view.info or {}
    if "version" in info:
        parts.append(f"(swapstation {info['version']}, boot {info.get('boot_count', '?')})")
    return "  ".join(parts)


def _swap(swap: Any) -> str:
    if not isinstance(swap, dict):
        return "none"
    text = (
        f"{swap.get('vehicle_id', '?')} {swap.get('pack_type', '?')}, {swap.get('phase', '?')}"
        f" since {_clock(swap.get('phase_since'))}; pack out {swap.get('pack_out') or '-'},"
        f" in {swap.get('pack_in') or '-'}"
        f"{' (locked)' if swap.get('pack_locked') else ''}; reserved slot"
        f" {swap.get('reserved_slot', '?')} ({swap.get('reserved_serial') or '-'}),"
        f" free slot {swap.get('free_slot', '?')}"
    )
    if swap.get("reason"):
        text += f"; {swap['reason']}"
    return text


def _alarm(alarm: dict[str, Any]) -> str:
    return (
        f"{alarm.get('severity', '?')} {alarm.get('code', '?')} {alarm.get('scope', '')}:"
        f" {alarm.get('message', '')}"
    )


def _robot(robot: dict[str, Any] | None) -> str:
    if robot is None:
        return "not published"
    where = robot.get("position") or "?"
    if robot.get("slot") is not None:
        where = f"slot {robot['slot']}"
    text = (
        f"link {robot.get('link', '?')}, {robot.get('state', '?')} at {where}, holding"
        f" {robot.get('holding') or 'nothing'}"
    )
    if robot.get("fault"):
        text += f", fault {robot['fault']}"
    if robot.get("link") != "ready":
        text += " (last known)"
    return text


def _listed(title: str, items: Sequence[str]) -> list[str]:
    if not items:
        return [f"{title:<10}none"]
    return [f"{title if i == 0 else '':<10}{item}" for i, item in enumerate(items)]


SLOT_HEADERS = ("slot", "status", "pack", "type", "SoC %", "kW", "max C", "alarms / notes")
RIGHT = frozenset({0, 4, 5, 6})


def _slot_table(slots: dict[int, dict[str, Any]]) -> list[str]:
    if not slots:
        return ["no slots published yet"]
    rows = [_slot_row(n, slots[n]) for n in sorted(slots)]
    lines = _table(SLOT_HEADERS, rows)
    if any(s.get("stale") for s in slots.values()):
        lines.append("* stale: the data is not relied on")
    return lines


def _slot_row(n: int, slot: dict[str, Any]) -> list[str]:
    pack = slot.get("pack") if isinstance(slot.get("pack"), dict) else {}
    assert isinstance(pack, dict)
    notes = [str(a.get("code", "?")) for a in _dicts(slot.get("alarms"))]
    if slot.get("stale"):
        notes.append(f"stale: {slot.get('stale_reason') or 'no data'}")
    if slot.get("tripped"):
        notes.append(f"tripped: {slot['tripped']}")
    if slot.get("quarantined"):
        notes.append(f"quarantined: {slot['quarantined']}")
    if slot.get("enabled") is False and slot.get("status") != "disabled":
        notes.append("disabled")
    power = slot.get("power_w")
    return [
        str(n),
        f"{slot.get('status', '?')}{'*' if slot.get('stale') else ''}",
        str(pack.get("serial") or "-"),
        str(pack.get("type") or "-"),
        _number(pack.get("soc"), "{:.1f}"),
        _number(power / 1000 if isinstance(power, int | float) else None, "{:.1f}"),
        _number(slot.get("temp_max_c"), "{:.1f}"),
        ", ".join(notes) or "-",
    ]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i in RIGHT else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _number(value: Any, fmt: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return fmt.format(value)


def _clock(value: Any) -> str:
    """An RFC 3339 time as local HH:MM:SS."""
    try:
        return datetime.fromisoformat(str(value)).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return "?"


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _clean(line: str) -> str:
    """No control characters from the broker reach the terminal."""
    return CONTROL.sub("?", line)


# --- the MQTT side ----------------------------------------------------------------------------


async def _subscribe(client: aiomqtt.Client, remote: Remote) -> None:
    await client.subscribe([(f"{remote.topic_root}/{t}", 1) for t in TOPICS])


def _take(view: StationView, remote: Remote, message: aiomqtt.Message) -> bool:
    payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
    topic = str(message.topic).removeprefix(f"{remote.topic_root}/")
    return view.update(topic, bytes(payload))


async def status_once(
    remote: Remote,
    expect: Expected,
    timeout_s: float,
    out: TextIO,
) -> int:
    """Print the station once; 0, or 3 when its state did not come within `timeout_s`."""
    view = StationView(remote.station_id)
    try:
        async with asyncio.timeout(timeout_s) as deadline:
            async with remote_client(remote, timeout_s) as client:
                await _subscribe(client, remote)
                async for message in client.messages:
                    _take(view, remote, message)
                    if view.complete(expect):
                        break
                    if view.state is not None:
                        loop = asyncio.get_running_loop()
                        when = deadline.when()
                        grace_end = loop.time() + GRACE_S
                        deadline.reschedule(grace_end if when is None else min(when, grace_end))
    except TimeoutError:
        if view.state is None:
            sys.stderr.write(
                f"swapctl status: no state from {remote.topic_root} on {broker_name(remote)}"
                f" within {timeout_s:g} s\n"
            )
            return EXIT_NO_REPLY
    except aiomqtt.MqttError as exc:
        if view.state is None:
            sys.stderr.write(f"swapctl status: broker {broker_name(remote)}: {exc}\n")
            return EXIT_NO_REPLY
    out.write("\n".join(render(view)) + "\n")
    return 0


class Screen:
    """Draws frames in place on a terminal, or one after another on a pipe."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.drawn = 0

    def draw(self, lines: Sequence[str]) -> None:
        """Replace the previous frame."""
        if self.tty:
            width = shutil.get_terminal_size().columns
            body = "".join(f"{line[:width]}\x1b[K\n" for line in lines)
            prefix = "\x1b[?25l\x1b[H\x1b[2J" if self.drawn == 0 else "\x1b[H"
            self.out.write(f"{prefix}{body}\x1b[J")
        else:
            self.out.write(("\n" if self.drawn else "") + "\n".join(lines) + "\n")
        self.out.flush()
        self.drawn += 1

    def close(self) -> None:
        """Give the cursor back."""
        if self.tty and self.drawn:
            self.out.write("\x1b[?25h")
            self.out.flush()


async def status_live(remote: Remote, out: TextIO) -> int:
    """Show the station until interrupted."""
    view = StationView(remote.station_id)
    screen = Screen(out)
    dirty = asyncio.Event()
    dirty.set()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_draw(view, screen, dirty), name="draw")
            await _follow(remote, view, dirty)
    finally:
        screen.close()
    return 0


async def _draw(view: StationView, screen: Screen, dirty: asyncio.Event) -> None:
    while True:
        await dirty.wait()
        dirty.clear()
        screen.draw(render(view))
        await asyncio.sleep(REDRAW_MIN_S)  # at most ten redraws a second


async def _follow(remote: Remote, view: StationView, dirty: asyncio.Event) -> None:
    """Keep the view up to date, reconnecting with a capped backoff."""
    backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S, jitter=0.0)
    while True:
        connected_at = None
        try:
            async with remote_client(remote, CONNECT_TIMEOUT_S) as client:
                await _subscribe(client, remote)
                connected_at = time.monotonic()
                view.broker_problem = None
                dirty.set()
                async for message in client.messages:
                    if _take(view, remote, message):
                        dirty.set()
        except aiomqtt.MqttError as exc:
            view.broker_problem = f"{broker_name(remote)}: {exc}; reconnecting"
            dirty.set()
        if connected_at is not None and time.monotonic() - connected_at > RECONNECT_MAX_S:
            backoff.reset()
        await asyncio.sleep(backoff.next())
