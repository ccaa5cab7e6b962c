"""`swapctl sim`: the simulated station alone, serving what a station config describes.

For a hardware bench: the controller runs on the station PC with its station.toml; this
serves the same endpoints from another machine (racks on Modbus TCP or on serial ports, the
station I/O on Modbus TCP, the robot on a serial port or a pty). Faults are injected with a
small line protocol on stdin (or `--do`); a one-line status is printed periodically. Runs
until Ctrl-C or SIGTERM, then stops every device and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from controller.config.loader import load_config
from controller.config.model import SerialLine, StationConfig
from controller.errors import ConfigError
from drivers.robot.protocol import FaultCode, MsgType
from simstation.cli import positive_number
from simstation.plc import SimPlc
from simstation.ptypair import PtyPairError
from simstation.rack import SimRack
from simstation.station import SimStation

EXIT_CONFIG = 2  # the config cannot be served as it is
EXIT_START = 1  # an endpoint could not be opened
REOPEN_S = 0.2  # the bridge looks for the robot's pty again this often
READ_CHUNK = 4096


def sim_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `swapctl sim`."""
    p = sub.add_parser(
        "sim",
        help="serve the simulated station a station config describes (a hardware bench)",
        description="Serve the racks, the station I/O and the robot that a station config"
        " describes, so that a controller with the same config talks to them. Commands on"
        " stdin inject faults ('help' lists them).",
    )
    p.add_argument("--config", type=Path, required=True, help="the station config (station.toml)")
    p.add_argument(
        "--speed", type=positive_number, default=1.0, help="simulated time per real second"
    )
    p.add_argument(
        "--bind",
        metavar="HOST",
        default=None,
        help="listen on HOST for every TCP device (0.0.0.0: all interfaces; default: each"
        " device's configured host)",
    )
    p.add_argument(
        "--serial",
        metavar="NAME=DEVICE",
        action="append",
        default=[],
        type=_assignment,
        help="serve rack NAME (or 'robot') on DEVICE instead of the configured device; a"
        " serial port there is used as it is, else a pty is linked there",
    )
    p.add_argument("--fill", type=_share, default=0.75, help="share of slots with a pack")
    p.add_argument("--seed", type=int, default=1, help="random seed of the packs' SoC")
    p.add_argument(
        "--do",
        metavar="COMMAND",
        action="append",
        default=[],
        help="a stdin command to run once everything serves (repeatable)",
    )
    p.add_argument("--no-stdin", action="store_true", help="do not read commands from stdin")
    p.add_argument(
        "--status-every",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between status lines (0: none; default %(default)g)",
    )
    p.set_defaults(func=run_sim)


def _say(text: str, *, err: bool = False) -> None:
    """A line to the operator (flushed: the output is often a pipe)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(f"{text}\n")
    stream.flush()


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: must be between 0 and 1")
    return value


def _assignment(text: str) -> tuple[str, Path]:
    name, sep, device = text.partition("=")
    if not sep or not name or not device:
        raise argparse.ArgumentTypeError(f"{text}: expected NAME=DEVICE")
    return name, Path(device)


def run_sim(args: argparse.Namespace) -> int:
    """Serve the station until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, environ={})
    except ConfigError as exc:
        _say("\n".join(exc.lines()), err=True)
        return EXIT_CONFIG
    problems = _unservable(config, dict(args.serial))
    if problems:
        for problem in problems:
            _say(f"swapctl sim: {problem}", err=True)
        return EXIT_CONFIG
    with tempfile.TemporaryDirectory(prefix="swapstation-sim-") as tmp:
        return asyncio.run(_serve(config, Path(tmp), args))


def _unservable(config: StationConfig, serial: dict[str, Path]) -> list[str]:
    """Why this config cannot be served (empty: it can)."""
    problems = []
    names = {r.name for r in config.racks} | ({"robot"} if config.robot is not None else set())
    problems += [f"--serial {n}=...: no rack or robot named {n}" for n in serial if n not in names]
    io = config.station_io
    if io is not None and io.transport != "tcp":
        problems.append("[station_io]: the simulated PLC serves Modbus TCP only")
    seen: dict[Path, str] = {}
    for rack in config.racks:
        if rack.serial is None:
            continue
        device = serial.get(rack.name, Path(rack.serial.device))
        if device in seen:
            problems.append(
                f"racks {seen[device]} and {rack.name} share {device}: the simulator serves"
                " one rack per serial line"
            )
        seen[device] = rack.name
    return problems


def is_serial_port(path: Path) -> bool:
    """A device to serve on as it is: it exists and is a character device."""
    try:
        return stat.S_ISCHR(path.stat().st_mode)
    except OSError:  # missing, or a dangling link left by an earlier run: a pty goes there
        return False


async def _serve(config: StationConfig, work: Path, args: argparse.Namespace) -> int:
    sim = SimStation.from_config(
        config, work, speed=args.speed, fill=args.fill, seed=args.seed, bind=args.bind
    )
    bridge = _place_serial(sim, config, work, dict(args.serial))
    problem = _listen_problem(sim)
    if problem is not None:
        _say(f"swapctl sim: {problem}", err=True)
        return EXIT_START
    try:
        await sim.start()
        if bridge is not None:
            await bridge.start()
    except (OSError, RuntimeError, PtyPairError) as exc:
        _say(f"swapctl sim: cannot serve: {exc}", err=True)
        if bridge is not None:
            await bridge.stop()
        await sim.stop()
        return EXIT_START
    try:
        return await _run(sim, config, bridge, args)
    finally:
        if bridge is not None:
            await bridge.stop()
        await sim.stop()
        _say("stopped")


def _place_serial(
    sim: SimStation, config: StationConfig, work: Path, serial: dict[str, Path]
) -> PortBridge | None:
    """Serial devices: a serial port is served as it is, elsewhere a pty is linked.

    The robot on a serial port gets a bridge from it to its own pty (returned).
    """
    for spec, rack in zip(sim.specs, config.racks, strict=True):
        if rack.serial is not None:
            device = serial.get(rack.name, Path(rack.serial.device))
            if is_serial_port(device):
                spec.line = rack.serial.model_copy(update={"device": str(device)})
                spec.device = None
            else:
                spec.device = device
    if config.robot is None:
        return None
    line = config.robot.serial
    device = serial.get("robot", Path(line.device))
    if not is_serial_port(device):
        sim.robot_path = device
        return None
    sim.robot_path = work / "robot"  # the robot's own pty, relayed to the port
    return PortBridge(line.model_copy(update={"device": str(device)}), sim.robot_path)


def _listen_problem(sim: SimStation) -> str | None:
    """A TCP endpoint that cannot be listened on (said plainly, before anything starts)."""
    wanted = [(f"rack {s.name}", s.host, s.port) for s in sim.specs if s.transport == "tcp"]
    if sim.plc is not None:
        wanted.append(("station I/O", sim.plc_host, sim.plc_port))
    for what, host, port in wanted:
        try:
            with socket.create_server((host, port), reuse_port=False):
                pass
        except OSError as exc:
            hint = " (try --bind 0.0.0.0)" if exc.errno == errno.EADDRNOTAVAIL else ""
            return f"{what}: cannot listen on {host}:{port}: {exc.strerror}{hint}"
    return None


async def _run(
    sim: SimStation, config: StationConfig, bridge: PortBridge | None, args: argparse.Namespace
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal closed
        loop.add_signal_handler(sig, stop.set)
    console = Console(sim, stop)
    _say(f"station {config.station_id} ({args.config}), {args.speed:g}x real time:")
    for line in _endpoints(sim, config, bridge):
        _say(f"  {line}")
    _say("commands on stdin: 'help' lists them")
    _say("ready")
    for line in args.do:
        await _answer(console, line)
    tasks = []
    if not args.no_stdin:
        tasks.append(asyncio.create_task(_read_commands(console), name="sim-stdin"))
    if args.status_every > 0:
        tasks.append(asyncio.create_task(_status_lines(console, args.status_every), name="status"))
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    _say("stopping...")
    return 0


def _endpoints(sim: SimStation, config: StationConfig, bridge: PortBridge | None) -> list[str]:
    """What is served where, one line per device."""
    lines = []
    for spec, rack in zip(sim.specs, config.racks, strict=True):
        ids = rack.unit_ids
        units = f"unit {spec.unit_id}" if ids is None else f"units {_ranges(ids)}"
        what = f"{units}, slots {_ranges(spec.slots)}, {len(spec.packs)} packs ({spec.profile})"
        if spec.transport == "tcp":
            where = f"Modbus TCP {spec.host}:{sim.racks[spec.name].port}"
        elif spec.line is not None:
            where = f"Modbus RTU on serial port {spec.line.device} ({_framing(spec.line)})"
        else:
            assert rack.serial is not None
            where = f"Modbus RTU on a pty at {sim.ptys[spec.name].controller_end} (8N1)"
            if rack.serial.parity != "N":
                where += ': a pty takes no parity, give the controller parity = "N"'
        lines.append(f"rack {spec.name:<10} {where}; {what}")
    if sim.plc is not None:
        lines.append(
            f"station I/O     Modbus TCP {sim.plc_host}:{sim.plc.port}, unit {sim.plc.unit_id}"
        )
    if bridge is not None:
        lines.append(f"robot           serial port {bridge.line.device} ({_framing(bridge.line)})")
    elif sim.robot_path is not None:
        lines.append(f"robot           a pty at {sim.robot_path}: the controller's robot device")
    return lines


def _framing(line: SerialLine) -> str:
    return f"{line.baudrate} {line.bytesize}{line.parity}{line.stopbits}"


def _ranges(numbers: Sequence[int]) -> str:
    """1, 2, 3, 5 as '1-3, 5'."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


async def _read_commands(console: Console) -> None:
    """Run each line of stdin as a command, until end of file."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):  # no stdin at all
        return
    if stat.S_ISREG(mode):  # a script: run it at once
        for line in sys.stdin:
            await _answer(console, line)
        return
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or sys.stdin.isatty()):
        return  # /dev/null (a service) or another device: no commands
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while raw := await reader.readline():
            await _answer(console, raw.decode(errors="replace"))
    finally:
        transport.close()
        with contextlib.suppress(OSError, ValueError):
            os.set_blocking(sys.stdin.fileno(), True)  # the terminal is shared with the shell


async def _answer(console: Console, line: str) -> None:
    answer = await console.run(line)
    if answer:
        _say(answer)


async def _status_lines(console: Console, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        _say(console.status())


# --- commands ---------------------------------------------------------------------------------


class CommandError(ValueError):
    """A command line that cannot be run: the message says why."""


Handler = Callable[[list[str]], Awaitable[str]]


class Console:
    """The stdin line protocol: one command per line, one answer line each."""

    def __init__(self, sim: SimStation, stop: asyncio.Event) -> None:
        self.sim = sim
        self.stop = stop
        self.offline: set[str] = set()  # racks (and 'plc') taken offline by a command
        self.started = time.monotonic()
        # word -> (usage, handler); 'help' prints the usages in this order.
        self.commands: dict[str, tuple[str, Handler]] = {
            "fault": (
                (
                    "fault robot [JAM|TORQUE|...] | fault robot-next MOVE|REMOVE|... |"
                    " fault slot N CODE (0 clears)"
                ),
                self._fault,
            ),
            "rack": ("rack NAME offline|online|silent|answer", self._rack),
            "temp": ("temp SLOT C|off (hold a pack's temperature)", self._temp),
            "plc": ("plc offline|online", self._plc),
            "robot": ("robot disconnect|reconnect|power-cycle|silent|talk", self._robot),
            "vehicle": (
                "vehicle arrive ID [TYPE [SOC [SERIAL]]] | vehicle leave | vehicle door open|close",
                self._vehicle,
            ),
            "estop": ("estop (the E-stop chain opens)", self._estop),
            "release": ("release (the E-stop chain closes)", self._release),
            "curtain": ("curtain blocked|clear", self._curtain),
            "speed": ("speed X (simulated seconds per real second)", self._speed),
            "status": ("status", self._status),
            "help": ("help", self._help),
            "quit": ("quit (stop, as SIGTERM)", self._quit),
        }

    async def run(self, line: str) -> str:
        """Run one command line; its answer ('error: ...' when refused)."""
        words = line.split()
        if not words or words[0].startswith("#"):
            return ""
        entry = self.commands.get(words[0].lower())
        if entry is None:
            return f"error: unknown command {words[0]!r}; 'help' lists them"
        try:
            return await entry[1](words[1:])
        except CommandError as exc:
            return f"error: {exc}; usage: {entry[0]}"
        except (RuntimeError, ValueError, KeyError) as exc:  # the simulator refused it
            return f"error: {exc}"

    def status(self) -> str:
        """The station in one line."""
        sim = self.sim
        up = _clock(time.monotonic() - self.started)
        parts = [f"{time.strftime('%H:%M:%S')} up {up}, sim {_clock(sim.clock.now())}"]
        for name, rack in sim.racks.items():
            packs = [c for c in rack.chargers.values() if c.pack is not None]
            charging = sum(1 for c in packs if c.status == "charging")
            kw = sum(c.power_w for c in rack.chargers.values()) / 1000
            state = "OFFLINE" if name in self.offline else "up"
            parts.append(
                f"{name} {state} {rack.requests} req, {len(packs)} packs, {charging} charging"
                f" {kw:.0f} kW"
            )
        plc = sim.plc
        if plc is not None:
            bay = plc.vehicle.vehicle_id if plc.vehicle is not None else "bay empty"
            lift = "up" if plc.lift.up else "down" if plc.lift.down else f"{plc.lift.position:.0%}"
            estop = "estop ok" if plc.estop_ok else "ESTOP"
            parts.append(f"plc {plc.requests} req, {bay}, lift {lift}, {estop}")
        robot = sim.robot
        if robot is not None:
            where = f"slot {robot.slot}" if robot.position.name == "SLOT" else robot.position.name
            holding = robot.holding.serial if robot.holding is not None else "empty"
            fault = f" fault {robot.fault}" if robot.fault else ""
            parts.append(f"robot {robot.state.name.lower()}{fault} at {where.lower()}, {holding}")
        return " | ".join(parts)

    # --- handlers ------------------------------------------------------------------------------

    async def _fault(self, words: list[str]) -> str:
        robot = self.sim.robot
        match words:
            case ["robot", *code] if robot is not None and len(code) <= 1:
                fault = _fault_code(code[0] if code else "JAM")
                robot.inject_fault(fault)
                return f"robot: fault {fault.name}"
            case ["robot-next", kind] if robot is not None:
                jam = robot.faults.jam_on = _command_kind(kind)
                return f"robot: the next {jam.name} jams"
            case ["slot", slot, code]:
                rack, n = self._slot(slot)
                rack.set_fault(n, _int(code))
                return f"slot {n}: fault code {_int(code)}"
        raise CommandError("what fault?")

    async def _rack(self, words: list[str]) -> str:
        if len(words) != 2 or words[0] not in self.sim.racks:
            raise CommandError(f"a rack of {', '.join(self.sim.racks)} and a state")
        name, what = words
        rack = self.sim.racks[name]
        if what == "offline":
            await rack.go_offline()
            self.offline.add(name)
        elif what == "online":
            await rack.come_back()
            self.offline.discard(name)
        elif what in {"silent", "answer"}:
            rack.silent = what == "silent"
        else:
            raise CommandError(f"{what}?")
        return f"rack {name}: {what}"

    async def _temp(self, words: list[str]) -> str:
        if len(words) != 2:
            raise CommandError("a slot and a temperature")
        rack, n = self._slot(words[0])
        temp = None if words[1] == "off" else _float(words[1])
        rack.set_temperature(n, temp)
        return f"slot {n}: temperature {'from physics' if temp is None else f'held at {temp:g} C'}"

    async def _plc(self, words: list[str]) -> str:
        plc = self._plc_or_fail()
        if words == ["offline"]:
            await plc.go_offline()
        elif words == ["online"]:
            await plc.come_back()
        else:
            raise CommandError("offline or online")
        return f"plc: {words[0]}"

    async def _robot(self, words: list[str]) -> str:
        robot = self.sim.robot
        if robot is None:
            raise CommandError("no robot in this config")
        match words:
            case ["disconnect"]:
                await robot.disconnect()
            case ["reconnect"]:
                await robot.reconnect()
            case ["power-cycle"]:
                robot.power_cycle()
            case ["silent" | "talk" as what]:
                robot.faults.silent = what == "silent"
            case _:
                raise CommandError("what?")
        return f"robot: {words[0]}"

    async def _vehicle(self, words: list[str]) -> str:
        plc = self._plc_or_fail()
        match words:
            case ["arrive", vehicle_id, *rest] if len(rest) <= 3:
                pack_type = rest[0] if rest else "STD75"
                soc = _float(rest[1]) if len(rest) > 1 else 15.0
                serial = rest[2] if len(rest) > 2 else f"VP-{vehicle_id}"[:16]
                self.sim.arrive(vehicle_id, serial=serial, pack_type=pack_type, soc=soc)
                return f"vehicle {vehicle_id} drives in with {serial} ({pack_type}, {soc:g} %)"
            case ["leave"]:
                plc.leave_early()
                return "vehicle: drives off"
            case ["door", "open"]:
                plc.open_door()
                return "vehicle: a door opens"
            case ["door", "close"]:
                plc.close_door()
                return "vehicle: doors closed"
        raise CommandError("what does the vehicle do?")

    async def _estop(self, _words: list[str]) -> str:
        self._plc_or_fail().estop_ok = False
        return "E-stop pressed: the chain is open"

    async def _release(self, _words: list[str]) -> str:
        self._plc_or_fail().estop_ok = True
        return "E-stop released: the chain is closed"

    async def _curtain(self, words: list[str]) -> str:
        if words not in (["blocked"], ["clear"]):
            raise CommandError("blocked or clear")
        self._plc_or_fail().light_curtain_clear = words == ["clear"]
        return f"light curtain: {words[0]}"

    async def _speed(self, words: list[str]) -> str:
        if len(words) != 1:
            raise CommandError("one number")
        self.sim.clock.speed = _float(words[0])
        return f"speed: {self.sim.clock.speed:g}x"

    async def _status(self, _words: list[str]) -> str:
        return self.status()

    async def _help(self, _words: list[str]) -> str:
        return "\n".join(f"  {usage}" for usage, _ in self.commands.values())

    async def _quit(self, _words: list[str]) -> str:
        self.stop.set()
        return "quitting"

    def _plc_or_fail(self) -> SimPlc:
        if self.sim.plc is None:
            raise CommandError("no station I/O in this config")
        return self.sim.plc

    def _slot(self, text: str) -> tuple[SimRack, int]:
        n = _int(text)
        for rack in self.sim.racks.values():
            if n in rack.slots:
                return rack, n
        raise CommandError(f"no slot {n}")


def _fault_code(text: str) -> FaultCode:
    try:
        return FaultCode[text.upper()]
    except KeyError:
        raise CommandError(f"{text}: one of {', '.join(m.name for m in FaultCode)}") from None


def _command_kind(text: str) -> MsgType:
    kinds = [m for m in MsgType if m.is_command]
    try:
        kind = MsgType[text.upper()]
    except KeyError:
        kind = None
    if kind not in kinds:
        raise CommandError(f"{text}: one of {', '.join(m.name for m in kinds)}")
    assert kind is not None
    return kind


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CommandError(f"{text}: not a whole number") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CommandError(f"{text}: not a number") from None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


# --- a real serial port for the robot ---------------------------------------------------------


class PortBridge:
    """A real serial port relayed byte for byte to the simulated robot's pty.

    The robot serves a pty; this opens the port with the configured line settings and copies
    bytes both ways. The robot's pty may vanish (`robot disconnect`): it is opened again when
    it is back, and what arrives on the port meanwhile is lost, as on a pulled cable.
    """

    def __init__(self, line: SerialLine, pty: Path) -> None:
        self.line = line
        self.pty = pty
        self._port: int | None = None
        self._device: int | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the port and start relaying."""
        self._port = open_serial(Path(self.line.device), self.line)
        asyncio.get_running_loop().add_reader(self._port, self._from_port)
        self._keeper = asyncio.create_task(self._keep_device(), name="robot-port-bridge")

    async def stop(self) -> None:
        """Stop relaying and close both ends; idempotent."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        self._close_device()
        if self._port is not None:
            asyncio.get_running_loop().remove_reader(self._port)
            os.close(self._port)
            self._port = None

    async def _keep_device(self) -> None:
        while True:
            if self._device is None:
                with contextlib.suppress(OSError):
                    self._device = open_serial(self.pty, None)
                    asyncio.get_running_loop().add_reader(self._device, self._from_device)
            await asyncio.sleep(REOPEN_S)

    def _close_device(self) -> None:
        fd, self._device = self._device, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _from_port(self) -> None:
        data = _read(self._port)
        if data and self._device is not None:
            _write(self._device, data)

    def _from_device(self) -> None:
        try:
            data = os.read(self._device, READ_CHUNK) if self._device is not None else b""
        except BlockingIOError:
            return
        except OSError:  # the robot's pty is gone
            data = b""
        if not data:
            self._close_device()
        elif self._port is not None:
            _write(self._port, data)


def open_serial(path: Path, line: SerialLine | None) -> int:
    """A raw, non-blocking file descriptor on a tty; with `line`, its speed and framing set."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        if line is not None:
            attrs = termios.tcgetattr(fd)
            speed = getattr(termios, f"B{line.baudrate}")
            cflag = attrs[2] & ~(termios.PARENB | termios.PARODD | termios.CSTOPB | termios.CSIZE)
            cflag |= termios.CLOCAL | termios.CREAD
            cflag |= termios.CS8 if line.bytesize == 8 else termios.CS7
            cflag |= {"N": 0, "E": termios.PARENB, "O": termios.PARENB | termios.PARODD}[
                line.parity
            ]
            cflag |= termios.CSTOPB if line.stopbits == 2 else 0
            attrs[2], attrs[4], attrs[5] = cflag, speed, speed
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read(fd: int | None) -> bytes:
    if fd is None:
        return b""
    try:
        return os.read(fd, READ_CHUNK)
    except (BlockingIOError, OSError):
        return b""


def _write(fd: int, data: bytes) -> None:
    """Write what the line takes; a full buffer loses the rest, as an overrun line would."""
    with contextlib.suppress(BlockingIOError, OSError):
        while data:
            data = data[os.write(fd, data) :]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m simstation.simcli ARGS`: the same as `swapctl sim ARGS`."""
    parser = argparse.ArgumentParser(prog="swapctl")
    sim_command(parser.add_subparsers())
    args = parser.parse_args(["sim", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
