"""The simulator's `swapctl` commands, plugged in through the `swapctl.commands` entry points."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from simstation.broker import Mosquitto

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.toml"
DAEMON_STOP_TIMEOUT_S = 10.0


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
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Start a private broker and the daemon, show presence until Ctrl-C, then stop both."""
    with tempfile.TemporaryDirectory(prefix="swapstation-demo-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker", port=args.mqtt_port) as broker:
            print(f"private broker: mqtt://{broker.host}:{broker.port}")
            watch = f"mosquitto_sub -h {broker.host} -p {broker.port} -t 'swapstation/#' -v"
            print(f"  watch it:  {watch}")
            env = {
                **os.environ,
                "SWAPSTATION_MQTT__HOST": broker.host,
                "SWAPSTATION_MQTT__PORT": str(broker.port),
                "SWAPSTATION_STORAGE__DIR": str(work / "state"),
            }
            daemon = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "controller", "run", "--config", str(args.config)],
                env=env,
                start_new_session=True,  # Ctrl-C reaches us; we stop the daemon in order
            )
            try:
                return asyncio.run(_watch(broker, daemon, args.duration))
            finally:
                _stop_daemon(daemon)


async def _watch(broker: Mosquitto, daemon: subprocess.Popen[bytes], duration: float | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    deadline = None if duration is None else time.monotonic() + duration
    print("daemon started; Ctrl-C stops the demo")
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe("swapstation/+/status", qos=1)
        reader = asyncio.create_task(_print_messages(client), name="demo-reader")
        try:
            while not stop.is_set():
                if daemon.poll() is not None:
                    print(f"daemon exited with code {daemon.returncode}")
                    return 1
                if deadline is not None and time.monotonic() >= deadline:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
            print("stopping the daemon (SIGTERM)...")
            daemon.send_signal(signal.SIGTERM)
            await loop.run_in_executor(None, daemon.wait)
            # Give the broker a moment to deliver the final `offline` before we disconnect.
            await asyncio.sleep(0.2)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    print(f"daemon stopped with exit code {daemon.returncode}")
    return 0 if daemon.returncode == 0 else 1


async def _print_messages(client: aiomqtt.Client) -> None:
    async for message in client.messages:
        payload = (
            message.payload.decode() if isinstance(message.payload, bytes) else message.payload
        )
        print(f"{time.strftime('%H:%M:%S')}  {message.topic}  {payload}")


def _stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=DAEMON_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
