"""`swapctl demo`, plugged in through the `swapctl.commands` entry points.

A private broker, the simulated station, the daemon as a child process and a simulated fleet;
the station shown live from what the daemon publishes over MQTT (never from the simulator),
until Ctrl-C, `--duration` or `--swaps N`; then a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiomqtt

from controller.cli.status import (
    SLOT_HEADERS,
    Screen,
    StationView,
    _alarm,
    _clean,
    _dicts,
    _listed,
    _robot,
    _slot_row,
    _strings,
    _table,
)
from controller.config.loader import load_config
from controller.errors import ConfigError
from controller.swap.phase import BEFORE_MOTION, MOTION, Phase, ordered
from simstation.broker import Mosquitto
from simstation.children import die_with_parent
from simstation.csms import SimCsms
from simstation.paths import config_dir
from simstation.station import SimStation
from simstation.traffic import Traffic, TrafficOptions, TrafficStats, stocked_types

REPO_CONFIG = config_dir() / "demo.toml"
DAEMON_STOP_TIMEOUT_S = 10.0
VIEW_PERIOD_S = 1.0  # the view is redrawn at least this often (elapsed times move on) ...
RENDER_MIN_S = 0.2  # ... and on a change of the station, at most this often
# The swap's steps in order (docs/swap-machine.md): timed, and shown as its progress.
STEPS = ordered(BEFORE_MOTION | MOTION | {Phase.RELEASING})
ENDINGS = {"swap_completed": "completed", "swap_aborted": "aborted", "swap_failed": "failed"}
TOPICS = ("status", "info", "state", "slots/+", "robot", "events")
REMEMBERED_SWAPS = 50
BAR = 20  # characters of a SoC bar
STEP_CELL = 34  # characters of one step in the progress grid


def demo_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `swapctl demo`."""
    p = sub.add_parser(
        "demo", help="run the daemon against the simulated station with a private broker"
    )
    p.add_argument("--config", type=Path, default=REPO_CONFIG, help="demo station config")
    p.add_argument(
        "--mqtt-port", type=int, default=None, help="private broker port (default: free)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: Ctrl-C)",
    )
    p.add_argument("--speed", type=float, default=120.0, help="simulated time per real second")
    p.add_argument(
        "--no-traffic",
        action="store_true",
        help="send no vehicles (by default a simulated fleet sends one after another to swap)",
    )
    p.add_argument(
        "--traffic-interval",
        type=_seconds,
        default=TrafficOptions.interval_s,
        metavar="S",
        help="real seconds from a vehicle leaving the bay to the next one (default: %(default)g)",
    )
    p.add_argument(
        "--traffic-retry",
        type=positive_number,
        default=TrafficOptions.retry_s,
        metavar="S",
        help="real seconds before a refused start_swap is asked again (default: %(default)g)",
    )
    p.add_argument(
        "--ocpp",
        action="store_true",
        help="also connect the daemon to a simulated OCPP 2.1 CSMS and show its messages",
    )
    p.add_argument(
        "--swaps",
        "--stop-after-swaps",
        dest="stop_after_swaps",
        type=_count,
        default=None,
        metavar="N",
        help="stop once N swaps have completed (exit 1 if --duration ends first)",
    )
    p.set_defaults(func=run_demo)


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 0")
    return value


def positive_number(text: str) -> float:
    """An argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 1")
    return value


def run_demo(args: argparse.Namespace) -> int:
    """Start a broker, the simulated station and the daemon; show the station until stopped."""
    try:
        config = load_config(args.config, environ={})
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="swapstation-demo-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker", port=args.mqtt_port) as broker:
            print(f"private broker: mqtt://{broker.host}:{broker.port}")
            watch = f"mosquitto_sub -h {broker.host} -p {broker.port} -t 'swapstation/#' -v"
            print(f"  watch it:  {watch}")
            return asyncio.run(_demo(config, work, broker, args))


async def _demo(config: Any, work: Path, broker: Mosquitto, args: argparse.Namespace) -> int:
    sim = SimStation.from_config(config, work / "sim", speed=args.speed, free_endpoints=True)
    (work / "sim").mkdir()
    await sim.start()
    try:
        data = sim.endpoints_for(config)
        data["mqtt"].update(host=broker.host, port=broker.port)
        data["storage"] = {"dir": str(work / "state")}
        view = DemoView(config.station_id, config.topic_root, tty=sys.stdout.isatty())
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
        csms = None
        if args.ocpp:
            csms = SimCsms(config.station_id, view.ocpp_note)
            await csms.start()
            types = stocked_types(sim)
            data["ocpp"] = {**csms.toml(), **({"default_pack_type": types[0]} if types else {})}
            env["SWAPSTATION_OCPP__PASSWORD"] = csms.password
            print(f"simulated CSMS: {csms.url} (OCPP 2.1, basic auth)")
        path = work / "station.toml"
        sim.write_toml(data, path)
        parts = [f"{len(sim.racks)} racks, {config.slot_count} slots"]
        parts += ["the PLC"] if sim.plc is not None else []
        parts += ["the robot"] if sim.robot is not None else []
        print(f"simulated station: {', '.join(parts)}, {args.speed:g}x real time; config {path}")
        # On a terminal the daemon's log would scribble over the view: it goes to a file.
        log_path = work / "daemon.log"
        with contextlib.ExitStack() as files:
            log: IO[bytes] | None = files.enter_context(log_path.open("wb")) if view.tty else None
            daemon = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "controller",
                "run",
                "--config",
                str(path),
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches us; we stop the daemon in order
                preexec_fn=die_with_parent,  # ... and if we are killed, it is too
            )
            traffic = _traffic(sim, config, broker, args, view)
            fleet = None if traffic is None else asyncio.create_task(_run_traffic(traffic, view))
            started = time.monotonic()
            try:
                code = await _watch(broker, daemon, view, args)
            finally:
                if fleet is not None:
                    fleet.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await fleet
                await stop_daemon(daemon)
            if view.tty and daemon.returncode not in (0, None):
                _print_tail(log_path)
        stats = traffic.stats if traffic is not None else None
        print("\n".join(summary(view.tally, stats, time.monotonic() - started)))
        if csms is not None:
            print(f"OCPP: {view.ocpp_frames} message(s) between the station and the CSMS")
        return code
    finally:
        if csms is not None:
            await csms.stop()
        await sim.stop()


def _traffic(
    sim: SimStation, config: Any, broker: Mosquitto, args: argparse.Namespace, view: DemoView
) -> Traffic | None:
    """The simulated fleet, unless turned off or the station cannot swap."""
    if args.no_traffic:
        print("traffic: off (--no-traffic)")
        return None
    if sim.plc is None or sim.robot is None:
        print("traffic: off (the demo config has no [station_io] or no [robot]: no swaps)")
        return None
    try:
        traffic = Traffic(
            sim,
            host=broker.host,
            port=broker.port,
            root=config.topic_root,
            say=view.note,
            options=TrafficOptions(interval_s=args.traffic_interval, retry_s=args.traffic_retry),
        )
    except ValueError as exc:
        print(f"traffic: off ({exc})")
        return None
    print(
        f"traffic: vehicles with {', '.join(traffic.pack_types)} packs, one every"
        f" {args.traffic_interval:g} s after the last left; start_swap from {traffic.client_id}"
    )
    view.fleet_stats = traffic.stats
    return traffic


async def _run_traffic(traffic: Traffic, view: DemoView) -> None:
    try:
        await traffic.run()
    except Exception as exc:  # noqa: BLE001 - the demo goes on without its fleet, saying why
        view.note(f"fleet: stopped: {type(exc).__name__}: {exc}")


async def _watch(
    broker: Mosquitto,
    daemon: asyncio.subprocess.Process,
    view: DemoView,
    args: argparse.Namespace,
) -> int:
    stop = asyncio.Event()

    def on_signal() -> None:
        stop.set()
        view.changed.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal closed
        loop.add_signal_handler(sig, on_signal)
    duration: float | None = args.duration
    target: int | None = args.stop_after_swaps
    view.target = target
    deadline = None if duration is None else time.monotonic() + duration
    missed = False
    screen = Screen(sys.stdout)
    print("daemon started; Ctrl-C stops the demo")
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe([(f"{view.root}/{topic}", 1) for topic in TOPICS])
        reader = asyncio.create_task(view.consume(c), name="demo-reader")
        try:
            while not stop.is_set():
                if daemon.returncode is not None:
                    screen.close()
                    print(f"daemon exited with code {daemon.returncode}")
                    return 1
                if target is not None and view.completed >= target:
                    if view.tty:  # the last swap's end, before the summary
                        screen.draw(view.frame(shutil.get_terminal_size().columns))
                    screen.close()
                    print(f"{view.completed} swap(s) completed: stopping")
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    screen.close()
                    missed = target is not None
                    if missed:
                        print(f"{view.completed} of {target} swap(s) completed in {duration:g} s")
                    break
                if view.tty:
                    screen.draw(view.frame(shutil.get_terminal_size().columns))
                view.changed.clear()
                await asyncio.sleep(RENDER_MIN_S)  # a swap moves fast: redrawn on change
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(VIEW_PERIOD_S):
                        await view.changed.wait()
            screen.close()
            await _stop_in_order(daemon, view)
        finally:
            screen.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
    print(f"daemon stopped with exit code {daemon.returncode}")
    return 0 if daemon.returncode == 0 and not missed else 1


async def _stop_in_order(daemon: asyncio.subprocess.Process, view: DemoView) -> None:
    """SIGTERM to the daemon; wait for it to stop and for its `offline` to be seen."""
    print("stopping the daemon (SIGTERM)...")
    daemon.send_signal(signal.SIGTERM)
    async with asyncio.timeout(DAEMON_STOP_TIMEOUT_S):
        await daemon.wait()
    await view.seen_status("offline", timeout=2.0)


def _print_tail(log_path: Path, lines: int = 20) -> None:
    text = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    print(f"the daemon's last log lines ({log_path}):")
    print("\n".join(f"  {line}" for line in text[-lines:]))


# --- what the events say ----------------------------------------------------------------------


@dataclass
class SwapRun:
    """One swap as its events tell it."""

    vehicle_id: str
    started: datetime | None = None
    phase: str | None = None
    since: datetime | None = None
    steps: dict[str, float] = field(default_factory=dict)  # phase -> seconds spent in it


@dataclass
class Tally:
    """Swaps, step times and alarms, counted from the events topic (each event once)."""

    runs: dict[str, SwapRun] = field(default_factory=dict)
    outcomes: dict[str, set[str]] = field(
        default_factory=lambda: {name: set() for name in ENDINGS.values()}
    )
    swap_times: list[float] = field(default_factory=list)  # of completed swaps, seconds
    step_times: dict[str, list[float]] = field(default_factory=dict)  # of completed swaps
    alarms: Counter[str] = field(default_factory=Counter)
    last_seq: int = -1

    def take(self, event: dict[str, Any]) -> bool:
        """Count an event; False for a repeat (delivery is at least once)."""
        seq, at = event.get("seq"), _when(event.get("at"))
        if not isinstance(seq, int) or seq <= self.last_seq:
            return False
        self.last_seq = seq
        kind, data = event.get("kind"), event.get("data")
        if not isinstance(data, dict) or at is None:
            return True
        swap_id = str(data.get("swap_id"))
        if kind == "swap_started":
            self._run(swap_id, data).started = at
        elif kind == "swap_phase":
            run = self._run(swap_id, data)
            before, after = data.get("from"), str(data.get("to"))
            if run.phase is not None and run.phase == before and run.since is not None:
                spent = (at - run.since).total_seconds()
                run.steps[run.phase] = run.steps.get(run.phase, 0.0) + spent
            run.phase, run.since = after, at
            if after == Phase.IDLE:
                self.runs.pop(swap_id, None)
        elif kind in ENDINGS:
            self._ended(swap_id, ENDINGS[str(kind)], at)
        elif kind == "alarm_raised":
            self.alarms[str(data.get("code"))] += 1
        return True

    def _run(self, swap_id: str, data: dict[str, Any]) -> SwapRun:
        run = self.runs.get(swap_id)
        if run is None:
            run = self.runs[swap_id] = SwapRun(str(data.get("vehicle_id") or "?"))
            while len(self.runs) > REMEMBERED_SWAPS:
                self.runs.pop(next(iter(self.runs)))
        return run

    def _ended(self, swap_id: str, outcome: str, at: datetime) -> None:
        if any(swap_id in ids for ids in self.outcomes.values()):
            return
        self.outcomes[outcome].add(swap_id)
        run = self.runs.get(swap_id)
        if outcome != "completed" or run is None or run.started is None:
            return
        self.swap_times.append((at - run.started).total_seconds())
        for step, spent in run.steps.items():
            self.step_times.setdefault(step, []).append(spent)

    def count(self, outcome: str) -> int:
        """Swaps that ended so."""
        return len(self.outcomes[outcome])

    def swap_time_text(self) -> str:
        """Mean and max of the completed swaps' times."""
        times = self.swap_times
        if not times:
            return "-"
        return f"mean {sum(times) / len(times):.2f} s, max {max(times):.2f} s"


def _when(value: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def summary(tally: Tally, fleet: TrafficStats | None, run_s: float) -> list[str]:
    """What the demo did, printed when it ends."""
    lines = [
        "",
        "summary",
        f"  swaps completed      {tally.count('completed')}",
        f"  swaps aborted        {tally.count('aborted')}",
        f"  swaps failed         {tally.count('failed')}",
        f"  swap time            {tally.swap_time_text()}",
        "  step times (mean of the completed swaps):",
    ]
    steps = [*STEPS, *sorted(set(tally.step_times) - set(STEPS))]
    timed = [(s, tally.step_times[s]) for s in steps if tally.step_times.get(s)]
    lines += [f"    {step:<20} {sum(t) / len(t):6.2f} s" for step, t in timed] or ["    -"]
    if fleet is None:
        lines.append("  vehicles sent        0 (no traffic)")
    else:
        lines.append(f"  vehicles sent        {fleet.vehicles}")
        lines.append(f"  requests refused     {fleet.refused} ({fleet.unanswered} unanswered)")
    seen = ", ".join(f"{code} x{n}" for code, n in sorted(tally.alarms.items()))
    alarms = f"{sum(tally.alarms.values())}{f': {seen}' if seen else ''}"
    lines.append(f"  alarms seen          {alarms}")
    lines.append(f"  run time             {run_s:.1f} s")
    return lines


# --- the view ---------------------------------------------------------------------------------


class DemoView:
    """The station as the daemon publishes it, the fleet's lines, and the running tally."""

    def __init__(self, station_id: str, root: str, *, tty: bool) -> None:
        self.root = root
        self.tty = tty
        self.station = StationView(station_id)
        self.tally = Tally()
        self.fleet_stats: TrafficStats | None = None
        self.target: int | None = None
        self.events: list[str] = []
        self.fleet: list[str] = []
        self.ocpp: list[str] = []
        self.ocpp_frames = 0
        self.started = time.monotonic()
        self.changed = asyncio.Event()  # something shown changed
        self._status_changed = asyncio.Event()
        self._state_line = ""
        self._robot_line = ""

    @property
    def completed(self) -> int:
        """Swaps seen completed on the events topic."""
        return self.tally.count("completed")

    def note(self, line: str) -> None:
        """A line from the fleet: kept for the live view on a terminal, else printed."""
        if self.tty:
            line = line.removeprefix("fleet: ")
            self.fleet = [*self.fleet[-3:], f"{time.strftime('%H:%M:%S')}  {line}"]
            self.changed.set()
        else:
            print(line, flush=True)

    def ocpp_note(self, line: str) -> None:
        """A line from the simulated CSMS: the last few on a terminal, else printed."""
        self.ocpp_frames += line.startswith(("OCPP station>", "OCPP <csms"))
        if self.tty:
            self.ocpp = [*self.ocpp[-5:], f"{time.strftime('%H:%M:%S')}  {line}"]
            self.changed.set()
        else:
            print(line, flush=True)

    async def consume(self, client: aiomqtt.Client) -> None:
        """Take every message; without a terminal, print a line per change."""
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            topic = str(message.topic).removeprefix(f"{self.root}/")
            if topic == "events":
                self._event(bytes(payload))
            elif self.station.update(topic, bytes(payload)):
                self._changed(topic)
            self.changed.set()

    def _event(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict) or not self.tally.take(event):
            return
        line = _clean(_event_line(event))
        self.events = [*self.events[-4:], line]
        if not self.tty:
            print(line, flush=True)

    def _changed(self, topic: str) -> None:
        if topic == "status":
            self._status_changed.set()
            if not self.tty:
                print(f"{time.strftime('%H:%M:%S')}  {self.root}/status  {self.station.status}")
        elif topic == "state":
            line = _clean(_state_line(self.station.state))
            if line != self._state_line:
                self._state_line = line
                if not self.tty:
                    print(f"state: {line}", flush=True)
        elif topic == "robot":
            line = _clean(_robot(self.station.robot))
            if line != self._robot_line:
                self._robot_line = line
                if not self.tty:
                    print(f"robot: {line}", flush=True)

    async def seen_status(self, status: str, timeout: float) -> None:  # noqa: ASYNC109
        """Until the station's presence is `status`, or `timeout`."""
        deadline = time.monotonic() + timeout
        while self.station.status != status and time.monotonic() < deadline:
            self._status_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._status_changed.wait()

    def frame(self, width: int = 100) -> list[str]:
        """The live view: station, swaps, the swap's steps, causes, robot, slots, events."""
        st = self.station
        state = st.state or {}
        run_s = time.monotonic() - self.started
        head = [f"{self.root}", (st.status or "status unknown").upper()]
        if st.state is not None:
            head += [f"mode {state.get('mode', '?')}", f"io {state.get('io', '?')}"]
            head += ["RECOVERING"] if state.get("recovering") else []
        head.append(f"run {_duration(run_s)}   Ctrl-C stops")
        t = self.tally
        target = f" of {self.target}" if self.target is not None else ""
        swaps = (
            f"swaps     {t.count('completed')}{target} completed, {t.count('aborted')} aborted,"
            f" {t.count('failed')} failed; swap time {t.swap_time_text()}"
        )
        lines = ["  ".join(head), swaps]
        fleet = self.fleet_stats
        if fleet is not None:
            lines.append(
                f"fleet     {fleet.vehicles} vehicles sent, {fleet.requests} start_swap,"
                f" {fleet.refused} refused, {fleet.unanswered} unanswered"
            )
        lines.append("")
        lines += self._swap_lines(width)
        if st.state is not None:
            lines += _listed("blocking", _strings(state.get("blocking")))
            lines += _listed("alarms", [_alarm(a) for a in _dicts(state.get("alarms"))])
            text = _ready(state.get("packs_ready"))
            lines.append(f"ready     {text or 'none'}")
        lines.append(f"robot     {_robot(st.robot)}")
        lines.append(f"          {_track(st.robot, sorted(st.slots))}")
        lines.append("")
        lines += self._slot_lines()
        lines += ["", "events", *[f"  {e}" for e in self.events]]
        if self.fleet:
            lines += ["fleet", *[f"  {f}" for f in self.fleet]]
        if self.ocpp:
            lines += ["ocpp", *[f"  {o[: width - 2]}" for o in self.ocpp]]
        return [_clean(line) for line in lines]

    def _swap_lines(self, width: int) -> list[str]:
        """The swap in progress: who, which packs, and its steps done / current / pending."""
        state = self.station.state
        if state is None:
            return ["swap      (no station state yet)"]
        swap = state.get("swap")
        if not isinstance(swap, dict):
            return [f"swap      none ({state.get('phase', '?')})"]
        phase = str(swap.get("phase") or state.get("phase"))
        packs = f"pack {swap.get('reserved_serial') or '-'} from slot {swap.get('reserved_slot')}"
        packs += f", {swap.get('pack_out') or 'its pack'} to slot {swap.get('free_slot')}"
        who = (
            f"swap      {swap.get('vehicle_id', '?')} {swap.get('pack_type', '?')}"
            f" (swap {str(swap.get('swap_id'))[:8]}, {_ago(swap.get('started_at'))}): {packs}"
        )
        lines = [who]
        if swap.get("reason"):
            lines.append(f"          reason: {swap['reason']}")
        run = self.tally.runs.get(str(swap.get("swap_id")))
        cells = _step_cells(phase, _ago(swap.get("phase_since")), run)
        per_row = max(1, (width - 10) // STEP_CELL)
        for i in range(0, len(cells), per_row):
            row = "".join(c.ljust(STEP_CELL) for c in cells[i : i + per_row]).rstrip()
            lines.append(f"{'steps' if i == 0 else '':<10}{row}")
        return lines

    def _slot_lines(self) -> list[str]:
        slots = self.station.slots
        if not slots:
            return ["no slots published yet"]
        swap = (self.station.state or {}).get("swap")
        swap = swap if isinstance(swap, dict) else {}
        rows = []
        for n in sorted(slots):
            row = _slot_row(n, slots[n])
            pack = slots[n].get("pack")
            soc = pack.get("soc") if isinstance(pack, dict) else None
            row[4] = _bar(soc)
            role = []
            if swap.get("reserved_slot") == n:
                role.append(f"for {swap.get('vehicle_id')}")
            if swap.get("free_slot") == n:
                role.append(f"takes {swap.get('vehicle_id')}'s pack")
            if role:
                row[7] = ", ".join(role) if row[7] == "-" else ", ".join([*role, row[7]])
            rows.append(row)
        lines = _table(SLOT_HEADERS, rows)
        if any(s.get("stale") for s in slots.values()):
            lines.append("* stale: the data is not relied on")
        return lines


def _step_cells(phase: str, elapsed: str, run: SwapRun | None) -> list[str]:
    """Each step: [x] done (time spent), [>] current (elapsed), [-] skipped, [ ] pending."""
    current = STEPS.index(phase) if phase in STEPS else None
    cells = []
    for i, step in enumerate(STEPS):
        if step == phase:
            cells.append(f"[>] {step} {elapsed}")
        elif run is not None and step in run.steps:
            cells.append(f"[x] {step} {run.steps[step]:.2f} s")
        elif current is not None and i < current:
            cells.append(f"[{'-' if run is not None else 'x'}] {step}")
        else:
            cells.append(f"[ ] {step}")
    if current is None:
        cells.append(f"[{'x' if phase == Phase.COMPLETE else '!'}] {phase} {elapsed}")
    return cells


def _bar(soc: Any) -> str:
    if isinstance(soc, bool) or not isinstance(soc, int | float):
        return "-"
    filled = round(max(0.0, min(100.0, float(soc))) * BAR / 100)
    return f"{'#' * filled}{'.' * (BAR - filled)} {soc:5.1f}"


def _track(robot: dict[str, Any] | None, slots: list[int]) -> str:
    """The robot's line, home to the last slot, its place in brackets ('*': holding a pack)."""
    places = ["home", "bay", *(str(n) for n in slots)]
    if robot is None:
        return " ".join(places)
    here = str(robot.get("position"))
    if here == "slot":
        here = str(robot.get("slot"))
    mark = "*" if robot.get("holding") else ""
    line = " ".join(f"[{p}{mark}]" if p == here else p for p in places)
    return line + ("   (between places)" if here == "between" else "")


def _ready(value: Any, *, sep: str = ", ", pair: str = "{} {}") -> str:
    """Packs ready per type, as text ('' when none or not an object)."""
    if not isinstance(value, dict):
        return ""
    return sep.join(pair.format(k, v) for k, v in sorted(value.items()))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def _ago(iso: object) -> str:
    """How long ago an RFC 3339 time was, as text."""
    then = _when(iso)
    if then is None:
        return "?"
    return f"{max(0.0, (datetime.now(UTC) - then).total_seconds()):.1f} s"


def _state_line(state: dict[str, Any] | None) -> str:
    """The station state in one line (printed when it changes, without a terminal)."""
    if state is None:
        return "none"
    swap = state.get("swap")
    swap = swap if isinstance(swap, dict) else {}
    vehicle = f" vehicle {swap['vehicle_id']}" if swap.get("vehicle_id") else ""
    ready = _ready(state.get("packs_ready"), sep=",", pair="{}:{}")
    blocking = "; ".join(_strings(state.get("blocking"))) or "-"
    return (
        f"{state.get('mode')} phase {state.get('phase')}{vehicle} packs_ready {ready or '-'}"
        f" blocking: {blocking}"
    )


def _event_line(event: dict[str, Any]) -> str:
    data = event.get("data")
    data = data if isinstance(data, dict) else {}
    kind = str(event.get("kind"))
    seq = event.get("seq")
    if kind == "swap_phase":
        what = f"{data.get('vehicle_id')}: {data.get('from')} -> {data.get('to')}"
        what += f" ({data['reason']})" if data.get("reason") else ""
        return f"#{seq:<5} {kind:<16} {what}"
    if kind == "swap_step":
        return f"#{seq:<5} {kind:<16} {data.get('phase')}: {data.get('what')}"
    if kind.startswith("swap_"):
        parts = [str(data.get("vehicle_id") or ""), str(data.get("swap_id") or "")[:8]]
        if "pack_out" in data or "pack_in" in data:
            parts.append(f"out {data.get('pack_out') or '-'}, in {data.get('pack_in') or '-'}")
        if data.get("reason"):
            parts.append(str(data["reason"]))
        return f"#{seq:<5} {kind:<16} " + " ".join(p for p in parts if p)
    if kind in {"pack_moved", "pack_left"}:
        where = f"{data.get('from') or 'new'} -> {data.get('to') or 'gone'}"
        return f"#{seq:<5} {kind:<16} {data.get('serial')}: {where} ({data.get('why')})"
    what = data.get("message") or data.get("reason") or ""
    where = data.get("scope") or (f"slot:{data['slot']}" if "slot" in data else "")
    return f"#{seq:<5} {kind:<16} {where:<10} {data.get('code', '')} {what}"


async def stop_daemon(daemon: asyncio.subprocess.Process) -> None:
    """SIGTERM the daemon's process and wait for it; SIGKILL it if it does not stop in time."""
    if daemon.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            daemon.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(DAEMON_STOP_TIMEOUT_S):
                await daemon.wait()
        except TimeoutError:
            daemon.kill()
            await daemon.wait()
