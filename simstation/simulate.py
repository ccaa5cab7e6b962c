"""`swapctl simulate SCENARIO.toml`: a day at a station, on virtual time, with a report.

By default (`--clock virtual`) the real daemon runs in this process with the simulated station,
the cars and an MQTT broker, all on one event loop whose clock jumps to the next timer when
nothing is left to do (`simstation.vloop`): the answer is the same at any machine speed and
load, and a simulated day costs only the CPU of its events. `--clock wall` is the older mode:
the daemon in its own process, a private mosquitto, wall time scaled by the scenario's speed
(its round trips are scaled too: see docs/simulator.md). The cars of the scenario
(`simstation.traffic.Fleet`) queue for the bay and are swapped by the real sequence; faults
are injected at their times and the simulated operator resets what stops a swap. The report
(`simstation.report.Report`) is written as JSON and, when the renderer is there, as HTML.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from controller.charging.tariff import minute_prices
from controller.errors import ConfigError
from controller.store.journal import FILENAME as JOURNAL_FILE
from controller.swap.phase import Phase
from drivers import clock
from drivers.robot.protocol import MsgType
from simstation.broker import Mosquitto
from simstation.charger import CHARGE_V, NOMINAL_V, SimPack
from simstation.children import die_with_parent
from simstation.cli import stop_daemon
from simstation.clock import SimClock
from simstation.dispatch import Dispatch
from simstation.ledger import PackLedger
from simstation.minibroker import MiniBroker
from simstation.paths import scenario as shipped_or_path
from simstation.recorder import OVERRUN_S, Recorder, SitePower, sample_minutes, tick_hook
from simstation.report import (
    FaultEntry,
    GridEventResult,
    LifeSample,
    RecordCheck,
    Report,
)
from simstation.runreport import build_report, merge_bays, summary, write_report
from simstation.scenario import (
    ChargerFault,
    FaultBase,
    FaultRate,
    LoadedScenario,
    RackOffline,
    RobotJam,
    arrival_times,
    car_soc,
    duration_s,
    fault_schedule,
    load_scenario,
)
from simstation.station import CONTACTOR_S, SimRackSpec, SimStation
from simstation.traffic import Car, Fleet, FleetOptions
from simstation.vloop import VirtualClock, VirtualLoop, day_start, run_eagerly

_log = logging.getLogger(__name__)

STATION_ID = "sim"
PROGRESS_EVERY_S = 0.25  # wall
READY_TIMEOUT_S = 60.0  # wall: the daemon up, the racks read, the packs seen
# Poll periods (wall seconds) for the daemon in a simulation: at 720x a 0.05 s poll is 36
# simulated seconds, and every handover in a swap waits for one.
STATION_IO_POLL_S = 0.01
RACK_POLL_S = 0.05
# The simulated PLC's cycle (real seconds; 20 ms by default, 12 simulated seconds at 600x).
# Its limit switches and the vehicle's moves land at their own time and an output write acts at
# once whatever the cycle, but each cycle is a scan the controller's poll may wait for.
PLC_TICK_S = 0.005
# On virtual time, periods are simulated seconds and cost CPU per simulated second, never
# precision: the station I/O is polled every 100 ms (its period bounds how late the daemon sees
# a handover: docs/simulator.md measures its effect on step times), the swap sequencer's own
# timer is 150 ms (every I/O poll is an event of its own: no step moved by more than 0.05 s,
# 9 % less CPU), the racks are polled once a second,
# the PLC scans every 250 ms (its heartbeat; the lift's ends, the vehicle's moves and every
# output write are cycles of their own: the same step times as at 100 ms) and the chargers step
# every 2 s (and at once on a write; measured: the same report as at 1 s, 10 % less CPU).
VIRTUAL_FLEET_POLL_S = 1.0  # the fleet also wakes on every station change and due moment
VIRTUAL = {
    "io_poll_s": 0.1,
    "rack_poll_s": 1.0,
    "plc_tick_s": 0.25,
    "rack_tick_s": 2.0,
    "evaluate_every_s": 0.15,
}
LIFE_EVERY_S = 3600.0  # simulated: the daemon's process and journal sampled every hour
PROGRESS_EVERY_SIM_S = 60.0  # on virtual time: progress (and the daemon's health) per minute
DAEMON_STOP_S = 30.0  # simulated: the daemon's orderly stop at the end
CLOCKS = ("virtual", "wall")

if TYPE_CHECKING:
    from controller.runtime.daemon import Daemon

Write = Callable[[str], None]


class Broker(Protocol):
    """Where the daemon and the fleet meet (mosquitto, or the in-process `MiniBroker`)."""

    host: str
    port: int


def simulate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `swapctl simulate`."""
    p = sub.add_parser(
        "simulate",
        help="run a simulated day (scenario file) against the real daemon and write a report",
    )
    p.add_argument(
        "scenario",
        type=Path,
        help="scenario file (config/scenarios/*.toml), or the name of one that ships (pss13)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="report folder (default ./simulate-NAME-TIME/)"
    )
    p.add_argument(
        "--speed", type=float, default=None, help="override the scenario's speed (--clock wall)"
    )
    p.add_argument("--start-h", type=float, default=None, help="override the start hour")
    p.add_argument(
        "--duration-h", type=float, default=None, help="override how many hours are simulated"
    )
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--no-html", action="store_true", help="write report.json only")
    p.add_argument(
        "--clock",
        choices=CLOCKS,
        default="virtual",
        help="virtual (default): the daemon in this process on virtual time, the same answer"
        " on any machine; wall: the daemon in its own process on wall time scaled by --speed",
    )
    p.add_argument(
        "--seeds", type=int, default=1, help="run this many seeds (the scenario's and the next)"
    )
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a study: run every combination of these scenario values (repeatable), e.g."
        " station.charger_max_a=100,150; with --seeds, means and 95 %% intervals",
    )
    p.add_argument(
        "--jobs", type=int, default=None, help="runs at once in a study (default: cores)"
    )
    p.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    """Load the scenario (exit 2 if it is bad), run it, write the report, print a summary."""
    try:
        loaded = apply_overrides(
            load_scenario(shipped_or_path(args.scenario)),
            speed=args.speed,
            start_h=args.start_h,
            duration_h=args.duration_h,
            seed=args.seed,
        )
    except ConfigError as exc:
        sys.stderr.write("\n".join(exc.lines()) + "\n")
        return 2
    sc = loaded.scenario
    stamp = datetime.now().astimezone().strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or Path(f"simulate-{sc.name}-{stamp}")
    if args.seeds > 1 or args.vary:
        return _study(args, loaded, out)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(sys.stderr)
    try:
        if args.clock == "virtual":
            report = run_virtual(loaded, out, progress=progress)
        else:
            report = asyncio.run(simulate(loaded, out, progress=progress))
    except RuntimeError as exc:  # the daemon or a part of the run ended early (a signal, a bug)
        _err(f"\nsimulate: the run stopped: {exc}")
        return 1
    paths = write_report(report, out, html=not args.no_html, warn=_err)
    sys.stdout.write(summary(report) + "\n" + "".join(f"  {p}\n" for p in paths))
    return 0


def _study(args: argparse.Namespace, loaded: LoadedScenario, out: Path) -> int:
    from simstation.study import parse_vary, run_study, table

    if args.clock != "virtual" or args.seeds < 1:
        _err("a study (--seeds > 1, --vary) runs on virtual time, with --seeds >= 1")
        return 2
    try:
        vary = parse_vary(args.vary)
        study = run_study(loaded, out, seeds=args.seeds, vary=vary, jobs=args.jobs, say=_err)
    except ConfigError as exc:
        sys.stderr.write("\n".join(exc.lines()) + "\n")
        return 2
    sys.stdout.write(table(study) + f"\n  {out / 'study.md'}\n  {out / 'study.json'}\n")
    return 0


def apply_overrides(
    loaded: LoadedScenario,
    *,
    speed: float | None = None,
    start_h: float | None = None,
    duration_h: float | None = None,
    seed: int | None = None,
) -> LoadedScenario:
    """The scenario with command-line overrides, validated again."""
    update: dict[str, Any] = {}
    if speed is not None:
        update["speed"] = speed
    if start_h is not None:
        update["start_h"] = start_h
    if duration_h is not None:
        update.update(duration_h=duration_h, end_h=None)
    if seed is not None:
        update["seed"] = seed
    if not update:
        return loaded
    data = {**loaded.scenario.model_dump(mode="json", exclude_none=True), **update}
    data = {k: v for k, v in data.items() if v is not None}
    end_h = (data.get("start_h") or 0.0) + (data.get("duration_h") or 24.0)
    if "end_h" in data:
        end_h = data["end_h"]
    # Faults outside a shortened window are left out, not an error.
    data["faults"] = [f for f in data.get("faults", []) if f["at_h"] < end_h]
    from pydantic import ValidationError

    from simstation.scenario import Scenario, _issue

    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("command line", [_issue(e) for e in exc.errors()]) from None
    return LoadedScenario(scenario, loaded.path)


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")


# --- the run -------------------------------------------------------------------------------------


async def simulate(
    loaded: LoadedScenario, workdir: Path, *, progress: Progress | None = None
) -> Report:
    """Run the scenario against the real daemon on wall time (`--clock wall`); the report."""
    # As the user meant it: relative to where they are now (the daemon runs elsewhere).
    workdir = workdir.absolute()  # noqa: ASYNC240 - once, before the run (a getcwd)
    workdir.mkdir(parents=True, exist_ok=True)
    with Mosquitto(workdir / "broker") as broker:
        return await _run(loaded, workdir, broker, progress, virtual=False)


def run_virtual(
    loaded: LoadedScenario, workdir: Path, *, progress: Progress | None = None
) -> Report:
    """Run the scenario on virtual time, the daemon in this process (blocking); the report."""
    workdir = workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    loop = VirtualLoop()
    # The daemon's wall clock: the scenario's day, a minute before it starts (its start-up).
    wall0 = day_start(loaded.scenario.start_s - 60.0)
    handler = logging.FileHandler(workdir / "daemon.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(os.environ.get("SWAPCTL_SIMULATE_LOG", "WARNING"))
    try:
        with clock.use(VirtualClock(loop, wall0)), modbus_requests_on_the_loop():
            return loop.run_until_complete(_virtual(loaded, workdir, progress))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


@contextlib.contextmanager
def modbus_requests_on_the_loop() -> Iterator[None]:
    """The simulated devices' pymodbus servers handle a request as a task on their loop.

    pymodbus hands each request from its protocol to its handler through
    `run_coroutine_threadsafe` on its own loop: a write to the loop's self-pipe, a wake-up and a
    read per request, about 7 % of a virtual day's CPU. The servers are the simulator's (the
    daemon's clients are untouched) and run on the loop's thread; a task does the same.
    """
    from pymodbus.server.requesthandler import ServerRequestHandler

    running: set[asyncio.Task[None]] = set()

    def handle_now(self: ServerRequestHandler) -> None:
        # Most requests are answered without waiting for anything: run to the end here,
        # rather than as a task a turn later (three callbacks a request saved).
        task = run_eagerly(self.loop, self.handle_request())  # type: ignore[no-untyped-call]
        if task is not None:
            running.add(task)
            task.add_done_callback(running.discard)

    before = ServerRequestHandler.handle_later
    ServerRequestHandler.handle_later = handle_now  # type: ignore[method-assign]
    try:
        yield
    finally:
        ServerRequestHandler.handle_later = before  # type: ignore[method-assign]


async def _virtual(loaded: LoadedScenario, workdir: Path, progress: Progress | None) -> Report:
    async with MiniBroker() as broker:
        return await _run(loaded, workdir, broker, progress, virtual=True)


class _Daemon:
    """The daemon under test: in this process (virtual time) or in its own (wall time)."""

    def __init__(self, config_path: Path, work: Path, *, virtual: bool) -> None:
        self.config_path = config_path
        self.work = work
        self.virtual = virtual
        # Its own (wall time); on virtual time every daemon logs to the run's (`run_virtual`).
        self.log_path = work / "daemon.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._daemon: Daemon | None = None
        self._task: asyncio.Task[int] | None = None

    async def start(self) -> None:
        if self.virtual:
            from controller.config.loader import load_config
            from controller.runtime.daemon import Daemon

            daemon = Daemon(load_config(self.config_path, environ={}))
            self._daemon = daemon
            self._task = asyncio.create_task(daemon.run(), name="daemon")
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
        with self.log_path.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller", "run", "--config", str(self.config_path),
                env=env, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=die_with_parent,  # killed with us, whatever kills us
            )  # fmt: skip

    @property
    def pid(self) -> int | None:
        """The daemon's process: this one on virtual time."""
        if self.virtual:
            return os.getpid()
        return None if self._proc is None else self._proc.pid

    def exited(self) -> str | None:
        """Why the daemon is gone, or None while it runs."""
        if self._proc is not None and self._proc.returncode is not None:
            return f"the daemon exited with code {self._proc.returncode}"
        if self._task is not None and self._task.done():
            if self._task.cancelled():
                return "the daemon was cancelled"
            exc = self._task.exception()
            if exc is not None:
                return f"the daemon ended: {exc!r}"
            return f"the daemon stopped with exit code {self._task.result()} (a signal?)"
        return None

    async def stop(self) -> None:
        if self._proc is not None:
            await stop_daemon(self._proc)
        if self._task is not None and not self._task.done() and self._daemon is not None:
            self._daemon.request_stop("the simulated day is over")
            try:
                await asyncio.wait_for(asyncio.shield(self._task), DAEMON_STOP_S)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)


def rack_specs(
    loaded: LoadedScenario, rng: random.Random, poll_s: float = RACK_POLL_S
) -> list[SimRackSpec]:
    """The station's racks, its packs in the first slots (shuffled types), the rest free."""
    st = loaded.scenario.station
    types = [t for t, n in sorted(st.packs.items()) for _ in range(n)]
    rng.shuffle(types)
    packs: dict[int, SimPack] = {}
    for i, pack_type in enumerate(types, 1):
        soc = round(rng.uniform(*st.initial_soc), 1)
        kwh = loaded.scenario.station.kwh(pack_type)
        packs[i] = SimPack(f"PK-{i:05d}", pack_type=pack_type, soc=soc, capacity_kwh=kwh)
    slots = list(range(1, st.slots + 1))
    specs = []
    for n, first in enumerate(range(0, len(slots), st.rack_slots), 1):
        mine = slots[first : first + st.rack_slots]
        specs.append(
            SimRackSpec(
                f"rack-{n}",
                mine,
                packs={s: p for s, p in packs.items() if s in mine},
                charger_max_a=st.charger_max_a,
                poll_period_s=poll_s,
            )
        )
    return specs


def _grid_sections(
    loaded: LoadedScenario, power: dict[str, Any], racks: list[dict[str, Any]]
) -> None:
    """The scenario's tariff, circuits and arrival profile, into the daemon's `[power]`."""
    sc = loaded.scenario
    st = sc.station
    if st.tariff is not None:
        power["tariff"] = st.tariff.model_dump(exclude_none=True, mode="json")
    if st.demand_profile:
        mix = sc.mix()
        total = sum(mix.values())
        power["demand"] = {
            "arrivals_per_hour": loaded.expected_per_hour(),
            "pack_mix": {k: round(v / total, 4) for k, v in mix.items()},
            "swap_s": st.swap_s,
            "max_wait_min": sc.max_wait_min,
        }
    if st.circuits:
        power["circuits"] = [
            {"name": c.name, "limit_kw": c.limit_kw} | ({"parent": c.parent} if c.parent else {})
            for c in st.circuits
        ]
        for c in st.circuits:
            for n in c.racks:
                if n <= len(racks):
                    racks[n - 1]["circuit"] = c.name


def daemon_config(
    loaded: LoadedScenario,
    sim: SimStation,
    broker: Broker,
    work: Path,
    *,
    speed: float | None = None,
    io_poll_s: float = STATION_IO_POLL_S,
    evaluate_every_s: float | None = None,
    station_id: str = STATION_ID,
) -> str:
    """The daemon's config: the simulated devices, the scenario's power settings, the polls.

    `speed` is how many simulated seconds a second of the daemon's clock is (the scenario's
    on wall time; 1 on virtual time).
    """
    sc = loaded.scenario
    speed = sc.speed if speed is None else speed
    st = sc.station
    power = [
        f"policy = {_toml(st.policy)}",
        f"charger_max_kw = {st.charger_max_a * CHARGE_V / 1000:.1f}",
    ]
    if st.grid_limit_kw is not None:
        power.append(f"grid_limit_kw = {st.grid_limit_kw}")
    power.append(f"safety_margin_kw = {st.safety_margin_kw}")
    if st.min_ready:
        power.append(
            "min_ready = {" + ", ".join(f"{k} = {v}" for k, v in st.min_ready.items()) + "}"
        )
    pack_types = "".join(
        f"[power.pack_types.{t}]\ncapacity_ah = {st.kwh(t) * 1000 / NOMINAL_V:.0f}\n"
        for t in sorted(st.packs)
    )
    sections = (
        f'[logging]\nlevel = "warning"\n'
        f"[swap]\nmin_dispense_soc = {st.min_dispense_soc}\n"
        # A rate measured in wall seconds sees simulated rates times the speed.
        f"[supervision]\nfast_rise_c_per_min = {min(100_000.0, 2.0 * speed)}\n"
        f"[charging]\nmax_current_a = {st.charger_max_a}\n"
        # The contactors' 30 s minimum on and off times are simulated seconds.
        f"min_on_s = {max(0.01, round(CONTACTOR_S / speed, 3))}\n"
        f"min_off_s = {max(0.01, round(CONTACTOR_S / speed, 3))}\n"
        "[power]\n" + "\n".join(power) + "\n" + pack_types
    )
    text = sim.controller_toml(
        station_id=station_id,
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        storage=work / "state",
        sections=sections,
    )
    data = tomllib.loads(text)
    io = data["station_io"]
    # Every handover of the swap (vehicle in position, lift up, lift down) waits for a poll.
    io.update(poll_period_s=io_poll_s, timeout_max_s=0.05, heartbeat_timeout_s=0.5)
    if evaluate_every_s is not None:
        data.setdefault("swap", {})["evaluate_every_s"] = evaluate_every_s
    _grid_sections(loaded, data["power"], data.get("racks", []))
    sim.write_toml(data, work / "station.toml")
    return str(work / "station.toml")


def _toml(value: str) -> str:
    return '"' + value.replace('"', '\\"') + '"'


def _station_id(bay: int, bays: int) -> str:
    """A bay's daemon's station id: `sim`, or `sim-bN` at a site of several bays."""
    return STATION_ID if bays == 1 else f"{STATION_ID}-b{bay}"


@dataclass
class _Lane:
    """One bay of the site: its simulated station, its daemon, its queue, what was seen there."""

    bay: int
    station_id: str
    work: Path  # its folder: the run's own for a single bay, `bay-N/` of it for several
    sim: SimStation
    daemon: _Daemon
    fleet: Fleet
    rec: Recorder

    async def stop(self) -> None:
        """Stop its daemon, then its devices."""
        try:
            await self.daemon.stop()
        finally:
            await self.sim.stop()


@dataclass(frozen=True)
class _Site:
    """What every bay of a run shares."""

    loaded: LoadedScenario
    work: Path
    broker: Broker
    virtual: bool
    clock: SimClock
    cars: list[Car]
    dispatch: Dispatch | None
    log: list[str]
    power: SitePower = field(default_factory=SitePower)


async def _start_lane(site: _Site, bay: int, specs: list[SimRackSpec]) -> _Lane:
    """Bay `bay`'s devices, daemon and queue, started (all stopped again if one fails)."""
    sc = site.loaded.scenario
    periods = VIRTUAL if site.virtual else {}
    bays = sc.station.bays
    work = site.work if bays == 1 else site.work / f"bay-{bay}"
    (work / "sim").mkdir(parents=True, exist_ok=True)
    sim = SimStation(
        work / "sim", specs, clock=site.clock, robot=not site.virtual, robot_tcp=site.virtual,
        plc=True, plc_tick_s=periods.get("plc_tick_s", PLC_TICK_S),
        rack_tick_s=periods.get("rack_tick_s"),
    )  # fmt: skip
    daemon: _Daemon | None = None
    try:
        await sim.start()
        station_id = _station_id(bay, bays)
        config_path = daemon_config(
            site.loaded, sim, site.broker, work,
            speed=1.0 if site.virtual else sc.speed,
            io_poll_s=periods.get("io_poll_s", STATION_IO_POLL_S),
            evaluate_every_s=periods.get("evaluate_every_s"),
            station_id=station_id,
        )  # fmt: skip
        daemon = _Daemon(Path(config_path), work, virtual=site.virtual)
        if site.virtual:
            daemon.log_path = site.work / "daemon.log"
        await daemon.start()
    except BaseException:
        try:
            if daemon is not None:
                await daemon.stop()
        finally:
            await sim.stop()
        raise
    log = site.log
    fleet = Fleet(
        sim, site.cars if site.dispatch is None else [],
        host=site.broker.host, port=site.broker.port, root=f"swapstation/{station_id}",
        say=log.append if bays == 1 else lambda line: log.append(f"bay {bay}: {line}"),
        fleet=FleetOptions(
            max_wait_s=sc.max_wait_min * 60.0,
            reset_after_s=sc.operator.reset_after_min * 60.0,
            poll_s=VIRTUAL_FLEET_POLL_S if site.virtual else FleetOptions.poll_s,
            pack_kwh={t: sc.station.kwh(t) for t in sc.mix()},
        ),
        dispatch=site.dispatch, bay=bay,
    )  # fmt: skip
    tariff = sc.station.tariff
    prices = None if tariff is None else minute_prices(tariff)
    rec = Recorder(fleet, log=log, prices=prices, ledger=PackLedger(prices))
    fleet.on_event.append(rec.on_event)
    for name, rack in sim.racks.items():
        rack.on_tick.append(tick_hook(rec, name, rack, site.power if bays > 1 else None))
    return _Lane(bay, station_id, work, sim, daemon, fleet, rec)


async def _run(
    loaded: LoadedScenario,
    work: Path,
    broker: Broker,
    progress: Progress | None,
    *,
    virtual: bool,
) -> Report:
    sc = loaded.scenario
    rng = random.Random(sc.seed)  # noqa: S311 - simulation
    poll_s = (VIRTUAL if virtual else {}).get("rack_poll_s", RACK_POLL_S)
    # Bay 1 draws its packs from the scenario's generator, then the cars: the same cars
    # whatever the number of bays; the other bays' packs come from their own generators.
    specs = [
        rack_specs(loaded, rng if bay == 1 else random.Random(f"{sc.seed}-bay-{bay}"), poll_s)  # noqa: S311
        for bay in range(1, sc.station.bays + 1)
    ]
    cars = plan_cars(loaded, rng)
    # Real time until the day starts: the packs do not charge while the daemons start up.
    site = _Site(
        loaded, work, broker, virtual, SimClock(1.0), cars,
        Dispatch(cars) if sc.station.bays > 1 else None, [],
    )  # fmt: skip
    lanes: list[_Lane] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        for bay, bay_specs in enumerate(specs, 1):
            lanes.append(await _start_lane(site, bay, bay_specs))
        tasks += [asyncio.create_task(ln.fleet.run(), name=f"fleet-{ln.bay}") for ln in lanes]
        for lane in lanes:
            await _until_ready(lane.fleet, lane.sim, loaded, lane.daemon)
        # The day starts now, at the scenario's speed (on virtual time: 1, the loop's own).
        site.clock.speed = 1.0 if virtual else sc.speed
        t0 = site.clock.now()
        start_s, end_s = sc.start_s, sc.start_s + sc.run_s
        daemons_clock = clock.current()
        if isinstance(daemons_clock, VirtualClock):
            # The daemons' clock started a minute early for their start-up: it now reads the
            # time of day the run starts at, so that their hours (tariffs, time windows,
            # the arrival profile) are the report's.
            daemons_clock.set_wall(day_start(start_s))

        def now() -> float:
            return start_s + (site.clock.now() - t0)

        tasks += [
            asyncio.create_task(
                sample_minutes(ln.rec, ln.fleet, ln.sim, end_s), name=f"sampler-{ln.bay}"
            )
            for ln in lanes
        ]
        # The scenario's faults and grid events happen at the first bay.
        first = lanes[0]
        tasks.append(
            asyncio.create_task(
                _inject(loaded, first.rec, first.fleet, first.sim, rng), name="faults"
            )
        )
        if sc.grid_events:
            tasks.append(
                asyncio.create_task(
                    _grid_events(loaded, first.rec, first.fleet, first.sim), name="grid-events"
                )
            )
        site.power.counting = True
        for lane in lanes:
            lane.rec.counting = True
            lane.fleet.begin(now)
        wall_s = await _play(
            lanes, tasks=tasks, progress=progress,
            window=(start_s, end_s), every_s=PROGRESS_EVERY_SIM_S if virtual else None,
        )  # fmt: skip
        # The day is over: nothing moves on the fleets' side while the report is made.
        await _cancel(tasks)
        if site.dispatch is not None:
            site.dispatch.admit(end_s, before=True)  # arrived, not yet handed to a bay
        return await _report(site, lanes, wall_s)
    finally:
        await _cancel(tasks)
        # Every bay is stopped, whatever one of them raises on the way.
        stopped = await asyncio.gather(*(lane.stop() for lane in lanes), return_exceptions=True)
        for failure in stopped:
            if isinstance(failure, BaseException):
                _log.warning("stopping a bay: %r", failure)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _report(site: _Site, lanes: Sequence[_Lane], wall_s: float) -> Report:
    """The run's report, once the day is over: each bay's, merged for a site of several."""
    site.power.counting = False
    for lane in lanes:
        lane.rec.counting = False
    lanes[0].rec.life.append(life_sample(lanes, fleet_now(lanes)))
    reports = []
    for lane in lanes:
        rec = lane.rec
        rec.ledger.close_all(lane.fleet.now())
        rec.records = await check_records(lane.work / "state")
        rec.sim_kib = rec.held_kib()
        for t, what in lane.fleet.operator_log:
            rec.faults.append(FaultEntry(t_s=round(t, 1), what=what))
        mode = "virtual" if site.virtual else "wall"
        reports.append(build_report(site.loaded, lane.fleet, rec, wall_s, clock_mode=mode))
    (site.work / "fleet.log").write_text("\n".join(site.log) + "\n")
    if len(lanes) == 1:
        return reports[0]
    merged = merge_bays(site.loaded, reports, lanes)
    return merged.model_copy(update={"peak_grid_kw": round(site.power.peak_w / 1000.0, 1)})


def fleet_now(lanes: Sequence[_Lane]) -> float:
    """The simulated time of day (the lanes share one clock)."""
    return lanes[0].fleet.now()


async def _play(
    lanes: Sequence[_Lane],
    *,
    tasks: list[asyncio.Task[Any]],
    progress: Progress | None,
    window: tuple[float, float],
    every_s: float | None = None,
) -> float:
    """Until the end of the day, watching the daemons and the tasks; the wall time it took.

    `every_s`: simulated seconds between looks (virtual time), else `PROGRESS_EVERY_S` of wall.
    """
    start_s, end_s = window
    run_s = end_s - start_s
    wall0 = time.monotonic()
    first = lanes[0]
    rec = first.rec
    rec.load = [os.getloadavg()[0]] * 3
    life_at = start_s + LIFE_EVERY_S
    while (now := fleet_now(lanes)) < end_s:
        rec.load[1] = max(rec.load[1], os.getloadavg()[0])
        if now >= life_at:
            rec.life.append(life_sample(lanes, now))
            life_at += LIFE_EVERY_S
        for lane in lanes:
            if (why := lane.daemon.exited()) is not None:
                raise RuntimeError(f"{why}; see {lane.daemon.log_path}")
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"{task.get_name()} failed") from task.exception()
        if progress is not None:
            progress.update(_counts(lanes), now, now - start_s, run_s, time.monotonic() - wall0)
        left = first.sim.clock.real(end_s - now)
        pause = min(PROGRESS_EVERY_S if every_s is None else every_s, max(0.0, left))
        asked = time.monotonic()
        await asyncio.sleep(pause)
        if every_s is None:
            # Wall time: a wake-up this late means the loop could not keep up (an overrun);
            # on virtual time the clock waits for the work instead.
            late = time.monotonic() - asked - pause
            rec.overrun_max_s = max(rec.overrun_max_s, late)
            rec.overruns += late > OVERRUN_S
    wall_s = time.monotonic() - wall0
    rec.load[2] = os.getloadavg()[0]
    rec.load[1] = max(rec.load[1], rec.load[2])
    for lane in lanes[1:]:
        lane.rec.load = rec.load
    if progress is not None:
        progress.update(_counts(lanes), fleet_now(lanes), run_s, run_s, wall_s)
        progress.done()
    return wall_s


def _counts(lanes: Sequence[_Lane]) -> dict[str, int]:
    """Cars per outcome so far, over every bay."""
    out: dict[str, int] = {}
    for lane in lanes:
        for key, n in lane.fleet.counts.items():
            out[key] = out.get(key, 0) + n
    return out


def life_sample(lanes: Sequence[_Lane], t_s: float) -> LifeSample:
    """The daemons' processes (resident memory, files, threads) and journals now.

    On virtual time every bay's daemon is this process: counted once.
    """
    rss = fds = threads = journal = 0
    for pid in {lane.daemon.pid for lane in lanes} - {None}:
        status: dict[str, str] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                status[key] = value.strip()
            fds += sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
        rss += int(status.get("VmRSS", "0 kB").split()[0])
        threads += int(status.get("Threads", "0"))
    for lane in lanes:
        # The database, its -wal and -shm.
        for path in (lane.work / "state").glob(f"{JOURNAL_FILE}*"):
            with contextlib.suppress(OSError):
                journal += path.stat().st_size
    return LifeSample(
        t_s=round(t_s, 1),
        served=_counts(lanes).get("served", 0),
        rss_kib=rss,
        fds=fds,
        threads=threads,
        journal_kib=journal // 1024,
        sim_kib=sum(lane.rec.held_kib() for lane in lanes),
    )


async def check_records(state: Path) -> RecordCheck:
    """Verify the swap records' hash chain, read-only beside the daemon (as `records verify`)."""
    from controller.store.journal import Journal
    from controller.store.records import RecordStore

    try:
        journal = await Journal.open(state, read_only=True)
    except Exception as exc:  # noqa: BLE001 - the report says why, the run is not lost
        return RecordCheck(ok=False, count=0, problem=f"cannot open the journal: {exc}")
    try:
        result = await RecordStore(journal).verify()
    finally:
        await journal.close()
    return RecordCheck(ok=result.ok, count=result.count, problem=result.problem)


def plan_cars(loaded: LoadedScenario, rng: random.Random) -> list[Car]:
    """The scenario's cars: arrival times, pack types by the mix, SoC by the distribution."""
    sc = loaded.scenario
    mix = sc.mix()
    types, weights = list(mix), list(mix.values())
    return [
        Car(
            vehicle_id=f"EV-{n:04d}",
            arrive_s=t,
            pack_type=rng.choices(types, weights)[0],
            soc=car_soc(sc, rng),
        )
        for n, t in enumerate(arrival_times(loaded, rng), 1)
    ]


async def _until_ready(
    fleet: Fleet, sim: SimStation, loaded: LoadedScenario, daemon: _Daemon
) -> None:
    """Until the station is online, idle and unblocked with every charged pack seen ready."""
    st = loaded.scenario.station
    want = sum(
        1
        for rack in sim.racks.values()
        for slot in rack.slots
        if (pack := rack.pack_in(slot)) is not None and pack.soc >= st.min_dispense_soc
    )
    deadline = clock.monotonic() + READY_TIMEOUT_S
    while True:
        state = fleet._state or {}  # noqa: SLF001 - the fleet's view of the station
        ready = sum((state.get("packs_ready") or {}).values())
        if (
            fleet._status == "online"  # noqa: SLF001
            and state.get("phase") == Phase.IDLE
            and not state.get("blocking")
            and ready >= want
        ):
            return
        if (why := daemon.exited()) is not None:
            raise RuntimeError(f"{why} at start")
        if clock.monotonic() > deadline:
            raise RuntimeError(
                f"the station was not ready in {READY_TIMEOUT_S:g} s: status"
                f" {fleet._status}, state {state}"  # noqa: SLF001
            )
        await asyncio.sleep(0.05)


# --- grid events ---------------------------------------------------------------------------------


async def _grid_events(
    loaded: LoadedScenario, rec: Recorder, fleet: Fleet, sim: SimStation
) -> None:
    """Each grid event at its time: `set_power_limit` over MQTT, as a grid operator would."""
    sc = loaded.scenario
    grid = sc.station.grid_limit_kw or 0.0
    for n, event in enumerate(sorted(sc.grid_events, key=lambda e: e.at_h), 1):
        at = event.at_h * 3600.0
        if at < sc.start_s:
            continue
        await asyncio.sleep(max(0.0, sim.clock.real(at - fleet.now())))
        kw = event.kw if event.kw is not None else round(grid * (event.share or 0.0), 1)
        body = {
            "id": f"grid-{n}-{int(at)}",
            "source": event.source,
            "kw": kw,
            # The daemon's seconds: on wall time a simulated minute is 60 / speed of them.
            "duration_s": event.duration_min * 60.0 / sim.clock.speed,
            "by": "simulated grid operator",
        }
        reply = await fleet.command("set_power_limit", body)
        result = (reply or {}).get("result") or {}
        predicted = result.get("predicted") or {}
        rec.grid_events.append(
            GridEventResult(
                t_s=round(fleet.now(), 1),
                limit_kw=kw,
                duration_min=event.duration_min,
                code=None if reply is None else str(reply.get("code")),
                message=str((reply or {}).get("message", "")),
                predicted_turned_away=predicted.get("turned_away"),
                predicted_below_floor=predicted.get("below_floor"),
            )
        )
        rec.faults.append(
            FaultEntry(t_s=round(fleet.now(), 1), what=f"grid: {event.source} limit {kw:g} kW")
        )


# --- faults --------------------------------------------------------------------------------------


async def _inject(
    loaded: LoadedScenario, rec: Recorder, fleet: Fleet, sim: SimStation, rng: random.Random
) -> None:
    """Every fault of the scenario at its time; each cleared after its duration."""
    sc = loaded.scenario
    clearing: list[asyncio.Task[None]] = []
    try:
        for at, fault in fault_schedule(sc, rng):
            await asyncio.sleep(max(0.0, sim.clock.real(at - fleet.now())))
            clearing.append(
                asyncio.create_task(_one_fault(fault, rec, fleet, sim, rng), name=fault.kind)
            )
        await asyncio.gather(*clearing)
    finally:
        for task in clearing:
            task.cancel()
        await asyncio.gather(*clearing, return_exceptions=True)


async def _one_fault(
    fault: FaultBase | FaultRate, rec: Recorder, fleet: Fleet, sim: SimStation, rng: random.Random
) -> None:
    """Inject one fault, wait its duration (simulated), clear it; note both."""
    plc, robot = sim.plc, sim.robot
    assert plc is not None
    assert robot is not None
    racks = list(sim.racks.values())
    lasts = duration_s(fault)

    def note(what: str) -> None:
        rec.faults.append(FaultEntry(t_s=round(fleet.now(), 1), what=what))

    async def hold() -> None:
        await asyncio.sleep(sim.clock.real(lasts))

    if fault.kind == "robot_jam":
        command = fault.command if isinstance(fault, RobotJam) else "REMOVE"
        robot.faults.jam_on = MsgType[command]
        note(f"robot jam: the next {command} jams half-way")
    elif fault.kind == "rack_offline":
        n = fault.rack if isinstance(fault, RackOffline) else rng.randint(1, len(racks))
        name = list(sim.racks)[n - 1]
        await sim.racks[name].go_offline()
        note(f"rack {name} offline for {lasts / 60:g} min")
        await hold()
        await sim.racks[name].come_back()
        note(f"rack {name} back")
    elif fault.kind == "charger_fault":
        slots = [s for r in racks for s in r.slots]
        slot = fault.slot if isinstance(fault, ChargerFault) else rng.choice(slots)
        code = fault.code if isinstance(fault, ChargerFault) else 7
        rack = next(r for r in racks if slot in r.slots)
        rack.set_fault(slot, code)
        note(f"slot {slot}: charger fault {code} for {lasts / 60:g} min")
        await hold()
        rack.set_fault(slot, 0)
        note(f"slot {slot}: charger fault cleared")
    elif fault.kind == "estop":
        plc.estop_ok = False
        note(f"E-stop pressed for {lasts / 60:g} min")
        await hold()
        plc.estop_ok = True
        note("E-stop released")
    elif fault.kind == "door_open":
        # Mid-swap: the next car in the bay once it is lifted.
        while plc.vehicle is None or not plc.lift.up:  # noqa: ASYNC110 - simulated state
            await asyncio.sleep(0.002)
        vehicle = plc.vehicle
        plc.open_door()
        note(f"{vehicle.vehicle_id}: a door opened mid-swap for {lasts / 60:g} min")
        await hold()
        if plc.vehicle is vehicle:
            plc.close_door()
        note(f"{vehicle.vehicle_id}: door closed")


# --- progress ------------------------------------------------------------------------------------


class Progress:
    """One line on a terminal, redrawn; without a terminal, a line every tenth of the run."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._tenth = -1

    def update(
        self, c: Mapping[str, int], t: float, done_s: float, total_s: float, wall_s: float
    ) -> None:
        """Show where the run is: `c` cars per outcome, `t` the simulated time of day."""
        frac = min(1.0, done_s / total_s) if total_s > 0 else 1.0
        eta = wall_s / frac - wall_s if frac > 0 else 0.0
        bar = "#" * int(frac * 20) + "." * (20 - int(frac * 20))
        line = (
            f"[{bar}] {int(t // 3600) % 24:02d}:{int(t % 3600 // 60):02d} {frac:4.0%}"
            f"  served {c['served']}  away {c['turned_away']}  failed {c['failed']}"
            f"  waiting {c['waiting']}  ETA {eta:.0f} s"
        )
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
        elif int(frac * 10) != self._tenth:
            self._tenth = int(frac * 10)
            self.stream.write(line + "\n")
            self.stream.flush()

    def done(self) -> None:
        """End the line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    """`python -m simstation.simulate SCENARIO.toml ...`."""
    parser = argparse.ArgumentParser(prog="swapctl")
    sub = parser.add_subparsers(dest="command", required=True)
    simulate_command(sub)
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
