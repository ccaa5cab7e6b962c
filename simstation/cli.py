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
from pathlib import Path
from typing import Any

import aiomqtt

from controller.configload import ConfigError, load_config
from simstation.broker import Mosquitto
from simstation.station import SimStation

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.toml"
DAEMON_STOP_TIMEOUT_S = 10.0
VIEW_PERIOD_S = 1.0


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
    p.set_defaults(func=run_demo)


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
        print(
            f"simulated station: {len(sim.racks)} racks, {config.slot_count} slots,"
            f" {args.speed:g}x real time; config {path}"
        )
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
        try:
            return await _watch(broker, daemon, config.topic_root, args.duration)
        finally:
            await _stop_daemon(daemon)
    finally:
        await sim.stop()


async def _watch(
    broker: Mosquitto, daemon: asyncio.subprocess.Process, root: str, duration: float | None
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    deadline = None if duration is None else time.monotonic() + duration
    print("daemon started; Ctrl-C stops the demo")
    view = _View(root)
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        for topic in ("status", "slots/+", "events"):
            await c.subscribe(f"{root}/{topic}", qos=1)
        reader = asyncio.create_task(view.consume(c), name="demo-reader")
        try:
            while not stop.is_set():
                if daemon.returncode is not None:
                    print(f"daemon exited with code {daemon.returncode}")
                    return 1
                if deadline is not None and time.monotonic() >= deadline:
                    break
                view.render()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(VIEW_PERIOD_S):
                        await stop.wait()
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
    return 0 if daemon.returncode == 0 else 1


class _View:
    """What the demo shows: presence, every slot, the latest events."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.status = "?"
        self.slots: dict[int, dict[str, Any]] = {}
        self.events: list[str] = []
        self._status_changed = asyncio.Event()
        self._tty = sys.stdout.isatty()

    async def consume(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic.endswith("/status"):
                self.status = payload.decode()
                self._status_changed.set()
                print(f"{time.strftime('%H:%M:%S')}  {topic}  {self.status}")
            elif "/slots/" in topic:
                self.slots[int(topic.rsplit("/", 1)[1])] = json.loads(payload)
            elif topic.endswith("/events"):
                event = json.loads(payload)
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
        lines = [f"\x1b[H\x1b[2J{self.root}: {self.status}", ""]
        lines.append(
            f"{'slot':>4}  {'rack':<7} {'status':<9} {'pack':<9} {'SoC':<27} {'kW':>6}  notes"
        )
        for slot in sorted(self.slots):
            s = self.slots[slot]
            pack = s.get("pack") or {}
            soc = pack.get("soc")
            bar = "" if soc is None else "#" * int(soc / 5) + "." * (20 - int(soc / 5))
            soc_text = "" if soc is None else f"{bar} {soc:5.1f}%"
            kw = (s.get("power_w") or 0) / 1000
            notes = "; ".join(
                [a["code"] for a in s.get("alarms", [])]
                + (["STALE: " + s["stale_reason"]] if s.get("stale") else [])
            )
            lines.append(
                f"{slot:>4}  {s['rack']:<7} {s['status']:<9} {pack.get('serial') or '-':<9}"
                f" {soc_text:<27} {kw:6.1f}  {notes}"
            )
        lines += ["", "events:", *self.events]
        print("\n".join(lines), flush=True)


def _event_line(event: dict[str, Any]) -> str:
    data = event.get("data", {})
    what = data.get("message") or data.get("reason") or ""
    where = data.get("scope") or (f"slot:{data['slot']}" if "slot" in data else "")
    return f"#{event['seq']:<5} {event['kind']:<16} {where:<10} {data.get('code', '')} {what}"


async def _stop_daemon(daemon: asyncio.subprocess.Process) -> None:
    if daemon.returncode is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(DAEMON_STOP_TIMEOUT_S):
                await daemon.wait()
        except TimeoutError:
            daemon.kill()
            await daemon.wait()
