"""What a config must satisfy beyond its schema: profiles that fit, files that exist, sense.

Each check returns every problem it finds as a `ConfigIssue` (key path, rule, value), so that
a commissioning engineer fixes a config in one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from controller.config.model import StationConfig
from controller.errors import ConfigIssue
from drivers.errors import SpecError
from drivers.modbus.codec import encode
from drivers.modbus.ioprofile import load_io_profile
from drivers.modbus.profile import find_profile, load_profile

_P = TypeVar("_P")


def _load_named_profile(
    config: StationConfig,
    key: str,
    name: str,
    load: Callable[[Path], _P],
    issues: list[ConfigIssue],
) -> _P | None:
    """Profile `name` from `profiles_dir`, loaded; None (and `issues` added) if it cannot be."""
    path = find_profile(name, [config.profiles_dir])
    if path is None:
        issues.append(ConfigIssue(key, f"no such profile in {config.profiles_dir}", got=repr(name)))
        return None
    try:
        return load(path)
    except SpecError as exc:
        issues += [
            ConfigIssue(key, f"{exc.file}: {where + ': ' if where else ''}{message}")
            for where, message in exc.issues
        ]
        return None


def profile_issues(config: StationConfig) -> list[ConfigIssue]:
    """Every rack's register profile must exist, be valid and fit the rack's addressing.

    The station I/O profile too must exist and be valid.
    """
    issues: list[ConfigIssue] = []
    for i, rack in enumerate(config.racks):
        profile = _load_named_profile(
            config, f"racks[{i}].profile", rack.profile, load_profile, issues
        )
        if profile is None:
            continue
        if profile.layout == "block" and rack.unit_id is None:
            issues.append(
                ConfigIssue(
                    f"racks[{i}].unit_ids",
                    f"profile {profile.name!r} has one unit per rack (layout block): give unit_id",
                )
            )
        if profile.layout == "unit" and rack.unit_ids is None:
            issues.append(
                ConfigIssue(
                    f"racks[{i}].unit_id",
                    f"profile {profile.name!r} has one unit per slot (layout unit): give unit_ids",
                )
            )
        limit = profile.slot_registers["current_limit"]
        try:
            encode(limit, config.charging.max_current_a, profile.word_order)
        except (ValueError, TypeError) as exc:
            issues.append(
                ConfigIssue(
                    "charging.max_current_a",
                    f"rack {rack.name!r} (profile {profile.name!r}) cannot take it: {exc}",
                    got=repr(config.charging.max_current_a),
                )
            )
        if limit.max is not None and config.charging.max_current_a > limit.max:
            issues.append(
                ConfigIssue(
                    "charging.max_current_a",
                    f"above what rack {rack.name!r} accepts ({limit.max:g} A, profile"
                    f" {profile.name!r})",
                    got=repr(config.charging.max_current_a),
                )
            )
        if len(rack.slots) > profile.max_slots():
            issues.append(
                ConfigIssue(
                    f"racks[{i}].slots",
                    f"profile {profile.name!r} addresses at most {profile.max_slots()} slots",
                )
            )
    if config.station_io is not None:
        _load_named_profile(
            config, "station_io.profile", config.station_io.profile, load_io_profile, issues
        )
    return issues


def profile_warnings(config: StationConfig) -> list[ConfigIssue]:
    """Register names of the racks' profiles that nothing reads: allowed, but not read.

    A slot register is read when a reading carries it, a rack register when `swapctl probe`
    shows it; any other name (a typo, or a value the controller has no use for) is never read.
    One warning per profile file and name; a profile that does not load is left to
    `profile_issues`.
    """
    warnings: list[ConfigIssue] = []
    seen: set[Path] = set()
    for i, rack in enumerate(config.racks):
        path = find_profile(rack.profile, [config.profiles_dir])
        if path is None or path in seen:
            continue
        seen.add(path)
        try:
            profile = load_profile(path)
        except SpecError:
            continue
        warnings += [
            ConfigIssue(
                f"racks[{i}].profile",
                f"warning: {path}: {section} register {name!r} is not read (nothing uses it)",
            )
            for section, name in profile.unread_registers()
        ]
    return warnings


def semantic_issues(config: StationConfig) -> list[ConfigIssue]:
    """Rules that span sections: unique names and slots, one owner per serial line."""
    issues: list[ConfigIssue] = []
    seen_names: dict[str, int] = {}
    seen_slots: dict[int, str] = {}
    lines: dict[str, tuple[str, Any]] = {}
    for i, rack in enumerate(config.racks):
        if rack.name in seen_names:
            issues.append(
                ConfigIssue(
                    f"racks[{i}].name",
                    f"rack names must be unique, also used by racks[{seen_names[rack.name]}]",
                    got=repr(rack.name),
                )
            )
        seen_names.setdefault(rack.name, i)
        for slot in rack.slots:
            if slot in seen_slots:
                issues.append(
                    ConfigIssue(
                        f"racks[{i}].slots",
                        f"slot {slot} is already served by rack {seen_slots[slot]!r}",
                    )
                )
            seen_slots.setdefault(slot, rack.name)
        if rack.serial is not None:
            key = rack.serial.device
            # One line is one link: its timing must be the same for everything on it.
            params = {
                **rack.serial.model_dump(exclude={"device"}),
                **rack.model_dump(include={"timeout_min_s", "timeout_max_s", "retries"}),
            }
            if key in lines and lines[key][1] != params:
                issues.append(
                    ConfigIssue(
                        f"racks[{i}].serial",
                        f"racks sharing {key} must use the same baudrate, parity, stopbits,"
                        f" bytesize, timeouts and retries as {lines[key][0]}",
                    )
                )
            lines.setdefault(key, (f"racks[{i}]", params))
    if config.station_io is not None and config.station_io.serial is not None:
        io_dev = config.station_io.serial.device
        if io_dev in lines:
            # Sharing an RS-485 line with racks is legitimate when parameters agree.
            params = {
                **config.station_io.serial.model_dump(exclude={"device"}),
                **config.station_io.model_dump(
                    include={"timeout_min_s", "timeout_max_s", "retries"}
                ),
            }
            if lines[io_dev][1] != params:
                issues.append(
                    ConfigIssue(
                        "station_io.serial",
                        f"{io_dev} is shared with {lines[io_dev][0]} but its line parameters"
                        " differ",
                    )
                )
        lines.setdefault(io_dev, ("station_io", {}))
    issues += circuit_issues(config)
    if config.robot is not None and config.robot.serial.device in lines:
        dev = config.robot.serial.device
        issues.append(
            ConfigIssue(
                "robot.serial.device",
                f"the robot needs a serial port of its own; {dev} is used by {lines[dev][0]}",
            )
        )
    return issues


def circuit_issues(config: StationConfig) -> list[ConfigIssue]:
    """The circuit tree must close: unique names, known parents, no cycle, every rack on one."""
    circuits = config.power.circuits
    if not circuits:
        return [
            ConfigIssue(
                f"racks[{i}].circuit", "no power.circuits are configured", got=repr(r.circuit)
            )
            for i, r in enumerate(config.racks)
            if r.circuit is not None
        ]
    issues: list[ConfigIssue] = []
    index: dict[str, int] = {}
    for i, c in enumerate(circuits):
        if c.name in index:
            issues.append(
                ConfigIssue(
                    f"power.circuits[{i}].name",
                    f"circuit names must be unique, also used by power.circuits[{index[c.name]}]",
                    got=repr(c.name),
                )
            )
        index.setdefault(c.name, i)
    for i, c in enumerate(circuits):
        if c.parent is not None and c.parent not in index:
            issues.append(
                ConfigIssue(
                    f"power.circuits[{i}].parent", "no circuit of that name", got=repr(c.parent)
                )
            )
            continue
        seen, node = {c.name}, c.parent
        while node is not None and node in index:
            if node in seen:
                issues.append(
                    ConfigIssue(
                        f"power.circuits[{i}].parent",
                        f"a cycle: {c.name} hangs (through its parents) on itself",
                        got=repr(c.parent),
                    )
                )
                break
            seen.add(node)
            node = circuits[index[node]].parent
    for i, rack in enumerate(config.racks):
        if rack.circuit is None:
            issues.append(
                ConfigIssue(
                    f"racks[{i}].circuit", "with power.circuits, every rack names its circuit"
                )
            )
        elif rack.circuit not in index:
            known = ", ".join(sorted(index))
            issues.append(
                ConfigIssue(
                    f"racks[{i}].circuit",
                    f"no circuit of that name (known: {known})",
                    got=repr(rack.circuit),
                )
            )
    return issues


def file_issues(config: StationConfig) -> list[ConfigIssue]:
    """Files the daemon will need at run time must be readable now."""
    issues: list[ConfigIssue] = []
    tls = config.mqtt.tls
    if tls is not None:
        for key in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(tls, key)
            if path is None:
                continue
            try:
                with path.open("rb"):
                    pass
            except OSError as exc:
                issues.append(
                    ConfigIssue(
                        f"mqtt.tls.{key}", f"cannot read: {exc.strerror}", got=repr(str(path))
                    )
                )
    return issues
