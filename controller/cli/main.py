"""`swapctl`: the daemon and the commissioning tools behind one command.

Commands of the simulator (demo, sim, simulate) plug in through the `swapctl.commands`
entry-point group, so this package never imports the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from controller import __version__
from controller.config.loader import config_warnings, load_config
from controller.config.model import ModbusEndpoint, SerialLine, StationConfig
from controller.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from controller.cli.cmd import Remote

EXIT_USAGE = 2
DEFAULT_CONFIG = Path("/etc/swapstation/station.toml")

_log = logging.getLogger("swapctl")
Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `swapctl`; returns the exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    return func(args)


def build_parser() -> argparse.ArgumentParser:
    """The full command tree, plugins included."""
    parser = argparse.ArgumentParser(
        prog="swapctl", description="swapstation: battery-swap station controller"
    )
    parser.add_argument("--version", action="version", version=f"swapctl {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (what the systemd unit starts)")
    add_config_arg(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check-config", help="validate a station config and summarise it")
    p.add_argument("path", type=Path)
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser(
        "robot", help="talk to the swap robot (commissioning): status, home, stop, reset"
    )
    add_config_arg(p)
    p.add_argument(
        "action",
        choices=["status", "home", "stop", "reset"],
        help="reset: clear a STOP or fault latch (no motion; refused while the E-stop chain is"
        " open or cannot be read); exit 4 when refused",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to reach the robot")
    p.set_defaults(func=_cmd_robot)

    p = sub.add_parser(
        "records", help="the swap records and the motion log: verify their hash chains, export"
    )
    actions = p.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    r = actions.add_parser("verify", help="check every record's hash and link (exit 1 if broken)")
    add_config_arg(r)
    r.set_defaults(func=_cmd_records)
    r = actions.add_parser("export", help="write the records as CSV or JSON Lines")
    add_config_arg(r)
    r.add_argument(
        "--format",
        dest="fmt",
        choices=["csv", "jsonl"],
        required=True,
        help="csv: a header and flat rows; jsonl: one full record per line",
    )
    r.add_argument("--output", type=Path, help="file to write (default: stdout)")
    r.add_argument("--since", type=int, default=0, metavar="SEQ", help="only the records after SEQ")
    r.set_defaults(func=_cmd_records)
    r = actions.add_parser(
        "motion",
        help="the motion log (every command to machinery, its facts and the safety verdict)"
        " as JSON Lines, or --verify its hash chain",
    )
    add_config_arg(r)
    r.add_argument("--swap", metavar="SWAP_ID", help="only the commands of this swap")
    r.add_argument("--verify", action="store_true", help="check the chain (exit 1 if broken)")
    r.set_defaults(func=_cmd_records)

    _add_remote_commands(sub)

    p = sub.add_parser("config-schema", help="print the JSON Schema of station.toml")
    p.set_defaults(func=_cmd_config_schema)

    p = sub.add_parser("probe", help="check that every configured device answers, with latency")
    add_config_arg(p)
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per device (default 3)")
    p.set_defaults(func=_cmd_probe)

    for ep in sorted(entry_points(group="swapctl.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # an optional plugin whose dependencies are absent
            _unavailable(sub, ep.name, exc)
            continue
        register(sub)
    return parser


def _unavailable(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, exc: ImportError
) -> None:
    """A plugin command that cannot load still answers, saying what to install."""
    missing = exc.name or str(exc)

    def refuse(_args: argparse.Namespace) -> int:
        print(
            f"swapctl {name}: needs the simulator's extra (missing: {missing});"
            " install it with: pip install 'swapstation[sim]'",
            file=sys.stderr,
        )
        return EXIT_USAGE

    p = sub.add_parser(name, help="(not installed: pip install 'swapstation[sim]')")
    p.set_defaults(func=refuse, any_arguments=True)  # its own options are unknown here


def _add_remote_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`status` and `cmd`: the station over MQTT, as the back end sees it."""
    p = sub.add_parser(
        "status", help="show the station live over MQTT (slots, robot, swap), or --once"
    )
    add_remote_args(p)
    p.add_argument("--once", action="store_true", help="print the station once and exit")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="--once: seconds to wait for the station's state (default 10; exit 3 after)",
    )
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "cmd",
        help="send a command to the station over MQTT and print its reply",
        description=(
            "Send NAME with key=value arguments (typed by the command: slot=3 enabled=false)."
            " Exit 0 when the reply is ok, 1 when it is not, 2 on a usage error, 3 when no"
            " reply came within the timeout. The commands and their arguments are in"
            " docs/mqtt-api.md (an unknown NAME lists them); any command takes by= (who asks,"
            " default user@host)."
        ),
    )
    add_remote_args(p)
    p.add_argument("name", metavar="NAME", help="the command (ping, set_slot, start_swap, ...)")
    p.add_argument("words", nargs="*", metavar="key=value", help="the command's arguments")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the reply (default 10); the request expires then",
    )
    p.add_argument("--id", dest="ident", help="the request id (default: a fresh UUID)")
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    p.set_defaults(func=_cmd_cmd)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """`--config PATH`, defaulting to $SWAPSTATION_CONFIG or /etc/swapstation/station.toml."""
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("SWAPSTATION_CONFIG", DEFAULT_CONFIG)),
        help="station config (default: $SWAPSTATION_CONFIG or %(default)s)",
    )


def add_remote_args(parser: argparse.ArgumentParser) -> None:
    """`--config` for the broker and the station, and overrides of both."""
    add_config_arg(parser)
    parser.add_argument("--host", help="broker host (default: the config's mqtt.host)")
    parser.add_argument("--port", type=int, help="broker port (default: the config's mqtt.port)")
    parser.add_argument("--station", help="station id (default: the config's station_id)")


def load_or_report(path: Path) -> StationConfig | None:
    """Load a config, or print every problem to stderr and return None."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    from controller.runtime import eventloop
    from controller.runtime.daemon import EXIT_CONFIG, Daemon
    from controller.runtime.logsetup import setup_logging

    config = load_or_report(args.config)
    if config is None:
        return EXIT_CONFIG
    secrets = [config.mqtt.password.get_secret_value()] if config.mqtt.password else []
    setup_logging(config.logging.format, config.logging.level, secrets)
    for line in config_warnings(args.config, config):
        _log.warning("%s", line)
    return eventloop.run(Daemon(config).run())


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_or_report(args.path)
    if config is None:
        return EXIT_USAGE
    for line in config_warnings(args.path, config):
        print(line, file=sys.stderr)
    print(f"{args.path}: valid")
    print(summarise(config))
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from controller.cli.probe import probe_station, render

    config = load_or_report(args.config)
    if config is None:
        return EXIT_USAGE
    results = asyncio.run(probe_station(config, args.timeout))
    print(render(results))
    return 0 if all(r.ok for r in results) else 1


def _cmd_robot(args: argparse.Namespace) -> int:
    from controller.cli.robot import robot_command

    config = load_or_report(args.config)
    if config is None:
        return EXIT_USAGE
    return asyncio.run(robot_command(config, args.action, args.timeout))


def _cmd_records(args: argparse.Namespace) -> int:
    from controller.cli.records import export_command, motion_command, verify_command

    config = load_or_report(args.config)
    if config is None:
        return EXIT_USAGE
    if args.action == "verify":
        return verify_command(config)
    if args.action == "motion":
        return motion_command(config, args.swap, verify=args.verify)
    return export_command(config, args.fmt, args.output, args.since)


def _remote(args: argparse.Namespace) -> tuple[StationConfig, Remote] | None:
    from controller.cli.cmd import remote_target

    config = load_or_report(args.config)
    if config is None:
        return None
    try:
        return config, remote_target(config, host=args.host, port=args.port, station=args.station)
    except UsageError as exc:
        print(f"swapctl: {exc}", file=sys.stderr)
        return None


def _cmd_status(args: argparse.Namespace) -> int:
    from controller.cli.status import expected, status_live, status_once

    found = _remote(args)
    if found is None:
        return EXIT_USAGE
    config, remote = found
    if args.once:
        return asyncio.run(status_once(remote, expected(config, remote), args.timeout, sys.stdout))
    try:
        return asyncio.run(status_live(remote, sys.stdout))
    except KeyboardInterrupt:
        return 0


def _cmd_cmd(args: argparse.Namespace) -> int:
    from controller.cli.cmd import cmd_command

    found = _remote(args)
    if found is None:
        return EXIT_USAGE
    _, remote = found
    return asyncio.run(
        cmd_command(
            remote,
            args.name,
            args.words,
            ident=args.ident,
            timeout_s=args.timeout,
            as_json=args.json,
        )
    )


def _cmd_config_schema(_: argparse.Namespace) -> int:
    print(json.dumps(StationConfig.model_json_schema(), indent=2))
    return 0


def summarise(config: StationConfig) -> str:
    """A one-screen description of what the daemon will talk to."""
    m = config.mqtt
    auth = (
        f"user {m.username!r} with password"
        if m.password
        else (f"user {m.username!r}" if m.username else "anonymous")
    )
    lines = [
        f"station     {config.station_id}",
        (
            f"mqtt        {m.host}:{m.port} as {config.client_id}, topics"
            f" {config.topic_root}/..., tls {'on' if m.tls else 'off'}, {auth}"
        ),
        f"storage     {config.storage.dir}",
        f"logging     {config.logging.format}, {config.logging.level}",
        f"racks       {len(config.racks)} rack(s), {config.slot_count} slot(s)",
    ]
    for rack in config.racks:
        units = (
            f"unit {rack.unit_id}"
            if rack.unit_id is not None
            else (f"units {_ranges(rack.unit_ids or [])}")
        )
        lines.append(
            f"  {rack.name:<10}{_endpoint(rack)} {units}, profile {rack.profile},"
            f" slots {_ranges(rack.slots)}, poll {rack.poll_period_s:g} s"
        )
    if config.station_io is not None:
        io = config.station_io
        lines.append(f"station_io  {_endpoint(io)} unit {io.unit_id}, poll {io.poll_period_s:g} s")
    else:
        lines.append("station_io  not configured")
    if config.robot is not None:
        lines.append(f"robot       {_serial(config.robot.serial)}")
    else:
        lines.append("robot       not configured")
    lines.append(f"swap        dispense at SoC >= {config.swap.min_dispense_soc:g} %")
    return "\n".join(lines)


def _endpoint(ep: ModbusEndpoint) -> str:
    if ep.serial is not None:
        return f"rtu {_serial(ep.serial)}"
    return f"tcp {ep.host}:{ep.port}"


def _serial(line: SerialLine) -> str:
    return f"{line.device} {line.baudrate} {line.bytesize}{line.parity}{line.stopbits}"


def _ranges(numbers: Sequence[int]) -> str:
    """[1,2,3,5] -> '1-3,5'."""
    out: list[str] = []
    nums = sorted(numbers)
    start = prev = nums[0] if nums else 0
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(out) if nums else "-"


if __name__ == "__main__":
    sys.exit(main())
