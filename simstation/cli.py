"""The simulator's `swapctl` commands, plugged in through the `swapctl.commands` entry points."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from controller.configload import ConfigError, load_config
from simstation.broker import Mosquitto
from simstation.station import SimStation
from simstation.traffic import Traffic, TrafficOptions

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.toml"
DAEMON_STOP_TIMEOUT_S = 10.0
VIEW_PERIOD_S = 1.0  # the view is redrawn at least this often ...
RENDER_MIN_S = 0.2  # ... and on a change of the station, at most this often


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
        type=_pause,
        default=TrafficOptions.retry_s,
        metavar="S",
        help="real seconds before a refused start_swap is asked again (default: %(default)g)",
    )
    p.add_argument(
        "--stop-after-swaps",
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


def _pause(text: str) -> float:
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
        path = work / "station.toml"
        sim.write_toml(data, path)
        parts = [f"{len(sim.racks)} racks, {config.slot_count} slots"]
        parts += ["the PLC"] if sim.plc is not None else []
        parts += ["the robot"] if sim.robot is not None else []
        print(f"simulated station: {', '.join(parts)}, {args.speed:g}x real time; config {path}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "controller",
            "run",
            "--config",
            str(path),
            env=env,
            start_new_session=True,  # Ctrl-C reaches us; we stop the daemon in order
        )
        view = _View(config.topic_root)
        traffic = _traffic(sim, config, broker, args, view)
        fleet = None if traffic is None else asyncio.create_task(_run_traffic(traffic, view))
        try:
            return await _watch(broker, daemon, view, args)
        finally:
            if fleet is not None:
                fleet.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fleet
            await _stop_daemon(daemon)
    finally:
        await sim.stop()


def _traffic(
    sim: SimStation, config: Any, broker: Mosquitto, args: argparse.Namespace, view: _View
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
    return traffic


async def _run_traffic(traffic: Traffic, view: _View) -> None:
    try:
        await traffic.run()
    except Exception as exc:  # noqa: BLE001 - the demo goes on without its fleet, saying why
        view.note(f"fleet: stopped: {type(exc).__name__}: {exc}")


async def _watch(
    broker: Mosquitto, daemon: asyncio.subprocess.Process, view: _View, args: argparse.Namespace
) -> int:
    stop = asyncio.Event()

    def on_signal() -> None:
        stop.set()
        view.changed.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    duration: float | None = args.duration
    target: int | None = args.stop_after_swaps
    deadline = None if duration is None else time.monotonic() + duration
    root = view.root
    missed = False
    print("daemon started; Ctrl-C stops the demo")
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        for topic in ("status", "state", "slots/+", "events"):
            await c.subscribe(f"{root}/{topic}", qos=1)
        reader = asyncio.create_task(view.consume(c), name="demo-reader")
        try:
            while not stop.is_set():
                if daemon.returncode is not None:
                    print(f"daemon exited with code {daemon.returncode}")
                    return 1
                if target is not None and view.completed >= target:
                    print(f"{view.completed} swap(s) completed: stopping")
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    missed = target is not None
                    if missed:
                        print(f"{view.completed} of {target} swap(s) completed in {duration:g} s")
                    break
                view.render()
                view.changed.clear()
                await asyncio.sleep(RENDER_MIN_S)  # a swap moves fast: redrawn on change
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(VIEW_PERIOD_S):
                        await view.changed.wait()
            print("stopping the daemon (SIGTERM)...")
            daemon.send_signal(signal.SIGTERM)
            async with asyncio.timeout(DAEMON_STOP_TIMEOUT_S):
                await daemon.wait()
            await view.seen_status("offline", timeout=2.0)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    print(f"daemon stopped with exit code {daemon.returncode}")
    return 0 if daemon.returncode == 0 and not missed else 1


class _View:
    """What the demo shows: presence, the swap, every slot, the latest events and fleet lines."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.status = "?"
        self.state: dict[str, Any] | None = None
        self.slots: dict[int, dict[str, Any]] = {}
        self.events: list[str] = []
        self.fleet: list[str] = []
        self._completed: set[str] = set()  # swaps seen completed (events come at least once)
        self._state_line = ""
        self.changed = asyncio.Event()  # something shown changed
        self._status_changed = asyncio.Event()
        self._tty = sys.stdout.isatty()

    @property
    def completed(self) -> int:
        """Swaps seen completed on the events topic."""
        return len(self._completed)

    def note(self, line: str) -> None:
        """A line from the fleet: printed, or kept for the live view on a terminal."""
        if self._tty:
            line = line.removeprefix("fleet: ")
            self.fleet = [*self.fleet[-5:], f"{time.strftime('%H:%M:%S')}  {line}"]
            self.changed.set()
        else:
            print(line, flush=True)

    async def consume(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic.endswith("/status"):
                self.status = payload.decode()
                self._status_changed.set()
                print(f"{time.strftime('%H:%M:%S')}  {topic}  {self.status}")
            elif topic.endswith("/state"):
                self.state = json.loads(payload) if payload else None
                self.changed.set()
                line = _state_line(self.state)
                if line != self._state_line:
                    self._state_line = line
                    if not self._tty:
                        print(f"state: {line}")
            elif "/slots/" in topic:
                self.slots[int(topic.rsplit("/", 1)[1])] = json.loads(payload)
            elif topic.endswith("/events"):
                event = json.loads(payload)
                if event.get("kind") == "swap_completed":
                    self._completed.add(str(event.get("data", {}).get("swap_id")))
                line = _event_line(event)
                self.events = [*self.events[-7:], line]
                if not self._tty:
                    print(line)

    async def seen_status(self, status: str, timeout: float) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while self.status != status and time.monotonic() < deadline:
            self._status_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._status_changed.wait()

    def render(self) -> None:
        if not self._tty:
            return
        lines = [f"\x1b[H\x1b[2J{self.root}: {self.status}", *self._swap_lines(), ""]
        lines.append(
            f"{'slot':>4}  {'rack':<7} {'status':<9} {'pack':<9} {'SoC':<27} {'kW':>6}  notes"
        )
        swap = (self.state or {}).get("swap") or {}
        for slot in sorted(self.slots):
            s = self.slots[slot]
            pack = s.get("pack") or {}
            soc = pack.get("soc")
            bar = "" if soc is None else "#" * int(soc / 5) + "." * (20 - int(soc / 5))
            soc_text = "" if soc is None else f"{bar} {soc:5.1f}%"
            kw = (s.get("power_w") or 0) / 1000
            role = []
            if swap.get("reserved_slot") == slot:
                role.append(f"for {swap.get('vehicle_id')}")
            if swap.get("free_slot") == slot:
                role.append(f"takes {swap.get('vehicle_id')}'s pack")
            notes = "; ".join(
                role
                + [a["code"] for a in s.get("alarms", [])]
                + (["STALE: " + s["stale_reason"]] if s.get("stale") else [])
            )
            lines.append(
                f"{slot:>4}  {s['rack']:<7} {s['status']:<9} {pack.get('serial') or '-':<9}"
                f" {soc_text:<27} {kw:6.1f}  {notes}"
            )
        lines += ["", "events:", *self.events]
        if self.fleet:
            lines += ["", "fleet:", *self.fleet]
        print("\n".join(lines), flush=True)

    def _swap_lines(self) -> list[str]:
        """The station state: mode, the swap and its phase, what blocks it, packs ready."""
        st = self.state
        if st is None:
            return ["swap:     (no station state yet)"]
        ready = ", ".join(f"{t} {n}" for t, n in sorted((st.get("packs_ready") or {}).items()))
        head = (
            f"mode:     {st.get('mode')}   station I/O {st.get('io')}   packs ready:"
            f" {ready or 'none'}   swaps completed: {self.completed}"
        )
        lines = [head]
        swap = st.get("swap")
        if swap:
            since = _age(swap.get("phase_since"))
            packs = f"pack {swap.get('reserved_serial')} (slot {swap.get('reserved_slot')})"
            if swap.get("pack_out"):
                packs += f", out {swap['pack_out']} -> slot {swap.get('free_slot')}"
            lines.append(
                f"swap:     {st.get('phase')} ({since})  vehicle {swap.get('vehicle_id')}"
                f" ({swap.get('pack_type')}): {packs}"
            )
            if swap.get("reason"):
                lines.append(f"          reason: {swap['reason']}")
        else:
            lines.append(
                f"swap:     {st.get('phase')}" + (" (recovering)" if st.get("recovering") else "")
            )
        blocking = st.get("blocking") or []
        lines += [f"blocking: {b}" for b in blocking] or ["blocking: -"]
        lines += [
            f"alarm:    {a.get('scope')} {a.get('code')}: {a.get('message')}"
            for a in st.get("alarms") or []
        ]
        return lines


def _state_line(state: dict[str, Any] | None) -> str:
    """The station state in one line (printed when it changes, without a terminal)."""
    if state is None:
        return "none"
    swap = state.get("swap") or {}
    vehicle = f" vehicle {swap['vehicle_id']}" if swap.get("vehicle_id") else ""
    ready = ",".join(f"{t}:{n}" for t, n in sorted((state.get("packs_ready") or {}).items()))
    blocking = "; ".join(state.get("blocking") or []) or "-"
    return (
        f"{state.get('mode')} phase {state.get('phase')}{vehicle} packs_ready {ready or '-'}"
        f" blocking: {blocking}"
    )


def _age(iso: object) -> str:
    """How long ago an ISO 8601 time was, as text."""
    if not isinstance(iso, str):
        return "?"
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return "?"
    return f"{max(0.0, (datetime.now(UTC) - then).total_seconds()):.1f} s"


def _event_line(event: dict[str, Any]) -> str:
    data = event.get("data", {})
    kind = event["kind"]
    if kind == "swap_phase":
        what = f"{data.get('vehicle_id')}: {data.get('from')} -> {data.get('to')}"
        what += f" ({data['reason']})" if data.get("reason") else ""
        return f"#{event['seq']:<5} {kind:<16} {what}"
    if kind == "swap_step":
        return f"#{event['seq']:<5} {kind:<16} {data.get('phase')}: {data.get('what')}"
    if kind.startswith("swap_"):
        parts = [str(data.get("vehicle_id") or ""), str(data.get("swap_id") or "")[:8]]
        if "pack_out" in data or "pack_in" in data:
            parts.append(f"out {data.get('pack_out') or '-'}, in {data.get('pack_in') or '-'}")
        if data.get("reason"):
            parts.append(str(data["reason"]))
        return f"#{event['seq']:<5} {kind:<16} " + " ".join(p for p in parts if p)
    if kind in {"pack_moved", "pack_left"}:
        where = f"{data.get('from') or 'new'} -> {data.get('to') or 'gone'}"
        return f"#{event['seq']:<5} {kind:<16} {data.get('serial')}: {where} ({data.get('why')})"
    what = data.get("message") or data.get("reason") or ""
    where = data.get("scope") or (f"slot:{data['slot']}" if "slot" in data else "")
    return f"#{event['seq']:<5} {kind:<16} {where:<10} {data.get('code', '')} {what}"


async def _stop_daemon(daemon: asyncio.subprocess.Process) -> None:
    if daemon.returncode is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(DAEMON_STOP_TIMEOUT_S):
                await daemon.wait()
        except TimeoutError:
            daemon.kill()
            await daemon.wait()
