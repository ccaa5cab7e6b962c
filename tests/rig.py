"""The daemon in-process against a simulated station over real transports and a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.config.loader import load_config
from controller.runtime.daemon import Daemon
from controller.runtime.station import Station
from simstation.broker import Mosquitto
from simstation.charger import SimPack
from simstation.station import SimRackSpec, SimStation

# The station most tests run: one rack of four slots, a charged pack in 1, a half one in 2.
SECTIONS = "[swap]\nmin_dispense_soc = 80\n"


def rack() -> SimRackSpec:
    """Rack `r1`: slots 1-4, PK-A (95 %) in 1, PK-B (60 %) in 2, polled every 50 ms."""
    packs = {1: SimPack("PK-A", soc=95.0), 2: SimPack("PK-B", soc=60.0)}
    return SimRackSpec("r1", [1, 2, 3, 4], packs=packs, poll_period_s=0.05)


def arrive(sim: SimStation) -> None:
    """EV-1 drives in with PK-OLD (12 %) and leaves 30 s after its swap."""
    sim.arrive("EV-1", serial="PK-OLD", soc=12.0, leave_s=30.0)


POLL_S = 0.01


@dataclass
class Rig:
    """A running daemon and the simulated station it controls."""

    daemon: Daemon
    sim: SimStation
    task: asyncio.Task[int]
    config_path: Path

    @property
    def station(self) -> Station:
        assert self.daemon.station is not None
        return self.daemon.station

    def alarm_codes(self, scope: str | None = None) -> set[str]:
        return {a.code for a in self.station.control.alarms.active(scope)}

    async def stop(self) -> int:
        self.daemon.request_stop("test")
        return await asyncio.wait_for(self.task, 10)


async def until(
    predicate: Callable[[], bool],
    timeout: float = 10.0,  # noqa: ASYNC109 - a deadline for a polled condition
    what: str | Callable[[], str] = "",
) -> float:
    """Wait for a condition (checked every 10 ms); return the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {said or predicate}")
        await asyncio.sleep(POLL_S)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    broker: Mosquitto | None,
    racks: Sequence[SimRackSpec],
    *,
    speed: float = 60.0,
    sections: str = "",
    station_id: str = "t1",
    wait_online: bool = True,
    mqtt: str = "",
    environ: Mapping[str, str] | None = None,
    **sim_options: Any,
) -> AsyncIterator[Rig]:
    """Start the simulated station and the daemon; stop both on exit.

    `mqtt`: extra TOML for the daemon's `[mqtt]` (credentials, `[mqtt.tls]`); `environ`: the
    environment its config is loaded with (`SWAPSTATION_...` overrides).

    `sim_options` go to `SimStation` (robot=True, plc=True, robot_timing=..., lift_time_s=...).
    """
    sim = SimStation(tmp_path / "sim", racks, speed=speed, **sim_options)
    (tmp_path / "sim").mkdir(parents=True, exist_ok=True)
    await sim.start()
    path = tmp_path / "station.toml"
    path.write_text(
        sim.controller_toml(
            station_id=station_id,
            mqtt_host=broker.host if broker else "127.0.0.1",
            mqtt_port=broker.port if broker else 1,
            storage=tmp_path / "state",
            sections=sections,
            mqtt=mqtt,
        )
    )
    try:
        async with daemon_in_process(path, environ) as (daemon, task):
            rig = Rig(daemon, sim, task, path)
            if wait_online:
                await until(
                    lambda: task.done() or all(p.online for p in rig.station.pollers.values()),
                    what="racks online",
                )
                if broker is not None:
                    # Subscribed to its commands: a request sent before would be lost.
                    await until(
                        lambda: task.done() or daemon.link.connected.is_set(),
                        what="the daemon on the broker",
                    )
            if task.done():
                raise AssertionError(f"daemon exited with {task.result()}")
            yield rig
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def daemon_in_process(
    path: Path, environ: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[Daemon, asyncio.Task[int]]]:
    """The daemon of the config at `path`, in this process, its station built; stopped on exit."""
    daemon = Daemon(load_config(path, environ=dict(environ or {})))
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.station is not None or task.done(), what="daemon start")
        if task.done():
            raise AssertionError(f"daemon exited with {task.result()}")
        yield daemon, task
    finally:
        if not task.done():
            daemon.request_stop("test")
            # A daemon that does not stop in time is a failure, never hidden.
            async with asyncio.timeout(10):
                await task
