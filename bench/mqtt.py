"""Command round trip over MQTT: `ping` to a running daemon, MQTT v5 request/response.

A private mosquitto; the simulated station in one child process; the daemon in another, run
as systemd runs it (`python -m controller run`); the back end is this process, an aiomqtt v5
client. A round trip is one `cmd/ping` request (QoS 1, Response Topic and Correlation Data)
until its reply arrives: broker, the daemon's command queue and reply, broker again.

    .venv/bin/python bench/mqtt.py [--pings 500]

The last line is one JSON object (target: `rtt_ms_p99 <= 5`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STATION = "bench"
TARGET_P99_MS = 5.0
WARMUP = 50


async def serve(workdir: Path, mqtt_port: int) -> None:
    """Child process: the simulated station (racks, robot, PLC); writes the daemon's config."""
    from simstation.charger import SimPack
    from simstation.station import SimRackSpec, SimStation

    spec = SimRackSpec("r1", [1, 2, 3, 4], packs={1: SimPack("PK-1", soc=95.0)})
    sim = SimStation(workdir, [spec], speed=60.0, robot=True, plc=True)
    await sim.start()
    toml = sim.controller_toml(
        station_id=STATION,
        mqtt_host="127.0.0.1",
        mqtt_port=mqtt_port,
        storage=workdir / "state",
        sections='[logging]\nlevel = "warning"\n',
    )
    (workdir / "station.toml").write_text(toml)
    print("ready", flush=True)
    await asyncio.Event().wait()


def pct(values: list[float], q: float) -> float:
    """The q-quantile of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Pinger:
    """One back-end connection that sends pings and waits for each reply."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.reply_topic = f"bench/replies/{uuid.uuid4().hex[:8]}"
        self._n = 0

    async def ping(self, timeout_s: float) -> float:
        """One round trip in ms (TimeoutError when no reply came)."""
        self._n += 1
        ident = f"bench-{uuid.uuid4().hex[:8]}-{self._n}"
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = ident.encode()
        body = json.dumps({"id": ident})
        started = time.perf_counter()
        await self.client.publish(f"swapstation/{STATION}/cmd/ping", body, qos=1, properties=props)
        async with asyncio.timeout(timeout_s):
            async for message in self.client.messages:
                if message.properties is None:
                    continue
                if getattr(message.properties, "CorrelationData", None) != ident.encode():
                    continue  # a late reply to an earlier attempt
                elapsed = (time.perf_counter() - started) * 1000
                assert isinstance(message.payload, bytes)
                reply = json.loads(message.payload)
                if reply["code"] != "done":
                    raise SystemExit(f"ping answered {reply}")
                return elapsed
        raise TimeoutError


async def measure(port: int, pings: int) -> dict[str, object]:
    """Ping until the daemon answers, warm up, then time `pings` round trips."""
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        protocol=aiomqtt.ProtocolVersion.V5,
        identifier="bench-backend",
        # As the daemon and the broker do: without it a QoS 1 round trip stalls on Nagle.
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    ) as client:
        pinger = Pinger(client)
        await client.subscribe(pinger.reply_topic, qos=1)
        deadline = time.monotonic() + 30
        while True:  # the daemon is starting: until it answers
            try:
                await pinger.ping(0.5)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise SystemExit("the daemon did not answer a ping within 30 s") from None
        for _ in range(WARMUP):
            await pinger.ping(5.0)
        rtts = [await pinger.ping(5.0) for _ in range(pings)]
    return {
        "n": pings,
        "rtt_ms_p50": round(statistics.median(rtts), 3),
        "rtt_ms_p99": round(pct(rtts, 0.99), 3),
        "rtt_ms_max": round(max(rtts), 3),
        "target_rtt_ms_p99": TARGET_P99_MS,
        "ok": pct(rtts, 0.99) <= TARGET_P99_MS,
    }


def main() -> None:
    """Run the benchmark, or (with --serve) the simulated station."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mqtt-port", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        from controller.runtime import eventloop  # the daemon's loop

        eventloop.run(serve(args.serve, args.mqtt_port))
        return
    logging.basicConfig(level=logging.WARNING)
    from simstation.broker import Mosquitto

    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        workdir = Path(tmp)
        sim = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(workdir), "--mqtt-port", str(broker.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        daemon: subprocess.Popen[bytes] | None = None
        try:
            assert sim.stdout is not None
            if sim.stdout.readline().strip() != "ready":
                raise SystemExit("the simulated station did not start")
            env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
                env.pop(key, None)
            config = str(workdir / "station.toml")
            with (workdir / "daemon.log").open("wb") as log:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "controller", "run", "--config", config],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            result = asyncio.run(measure(broker.port, args.pings))
        finally:
            for child in (daemon, sim):
                if child is not None:
                    child.terminate()
                    child.wait(10)
    print(
        f"{result['n']} pings over MQTT v5 to the daemon: p50 {result['rtt_ms_p50']} ms,"
        f" p99 {result['rtt_ms_p99']} ms (target p99 <= {TARGET_P99_MS} ms)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
