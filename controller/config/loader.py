"""Read `station.toml`, apply `SWAPSTATION_...` environment overrides, validate, explain errors.

Every problem is reported as one line `FILE: key.path: message (got VALUE)`, and all of them
are reported at once, so a commissioning engineer fixes a config in one pass.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from controller.config.model import StationConfig
from controller.errors import ConfigError, ConfigIssue
from drivers.errors import SpecError, format_loc
from drivers.modbus.codec import encode
from drivers.modbus.ioprofile import load_io_profile
from drivers.modbus.profile import find_profile, load_profile

ENV_PREFIX = "SWAPSTATION_"
ENV_NESTED = "__"
# Environment variables of ours that are not config keys.
ENV_NOT_CONFIG = frozenset({"SWAPSTATION_CONFIG"})
SECRET_KEYS = frozenset({"password"})
MAX_GOT = 60
MAX_CONFIG_CHARS = 1_000_000  # a station config is a few kB
MAX_DEPTH = 16  # tables and arrays in a station config nest 3 deep
_P = TypeVar("_P")


class _EnvView(BaseSettings, StationConfig):
    """The config's fields as pydantic-settings sees them in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED, extra="forbid", frozen=True
    )


class _EnvSource(EnvSettingsSource):
    """The environment source of pydantic-settings, reading a given mapping (tests pass one)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_EnvView, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items()}


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> StationConfig:
    """Load and validate a station config; raise `ConfigError` listing every problem."""
    path = Path(path)
    env = dict(os.environ if environ is None else environ)
    data = read_toml(path)
    issues: list[ConfigIssue] = []

    if isinstance(data.get("mqtt"), dict) and "password" in data["mqtt"]:
        issues.append(
            ConfigIssue(
                "mqtt.password",
                "a password is never written in the config file: use mqtt.password_file or"
                f" the {ENV_PREFIX}MQTT{ENV_NESTED}PASSWORD environment variable",
                got="***",
            )
        )
        data = {**data, "mqtt": {k: v for k, v in data["mqtt"].items() if k != "password"}}

    overrides, env_issues = _env_overrides(env)
    issues += env_issues
    merged = _deep_merge(data, overrides)
    env_paths = dict(_flatten_env(overrides))

    try:
        config = StationConfig.model_validate(merged, context={"base_dir": path.parent})
    except ValidationError as exc:
        issues += [_issue_from_error(err, env_paths) for err in exc.errors()]
        raise ConfigError(path, issues) from None
    issues += semantic_issues(config)
    issues += profile_issues(config)
    issues += _file_issues(config)
    config, password_issues = _with_password(config)
    issues += password_issues
    if issues:
        raise ConfigError(path, issues)
    return config


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; any failure is one `ConfigError` line, never a traceback."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [ConfigIssue("", "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError(path, [ConfigIssue("", "is a directory, not a config file")]) from None
    except PermissionError:
        raise ConfigError(
            path, [ConfigIssue("", "permission denied: the daemon's user cannot read it")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            path, [ConfigIssue("", f"not UTF-8 text (bad byte at offset {exc.start})")]
        ) from None
    except OSError as exc:
        raise ConfigError(path, [ConfigIssue("", f"cannot read: {exc.strerror}")]) from None
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(
            path, [ConfigIssue("", f"{len(text)} characters: at most {MAX_CONFIG_CHARS}")]
        )
    depth = _toml_depth(text)
    if depth > MAX_DEPTH:
        raise ConfigError(
            path, [ConfigIssue("", f"arrays or tables nested {depth} deep: at most {MAX_DEPTH}")]
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [ConfigIssue("", f"not valid TOML: {exc}")]) from None
    except RecursionError:  # what the bracket scan cannot see (it is the parser's own limit)
        raise ConfigError(path, [ConfigIssue("", "nested too deeply to read")]) from None
    depth = _data_depth(data)
    if depth > MAX_DEPTH:  # dotted keys nest without brackets
        raise ConfigError(path, [ConfigIssue("", f"keys nested {depth} deep: at most {MAX_DEPTH}")])
    return data


def _toml_depth(text: str) -> int:
    """The deepest nesting of `[`/`{` in TOML text, strings and comments skipped; iterative."""
    depth = deepest = 0
    quote: str | None = None  # the string delimiter we are in: ", ', \"\"\" or \'\'\'
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if quote is not None:
            if ch == "\\" and quote[0] == '"':
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
            if len(quote) == 1 and ch == "\n":
                quote = None  # an unterminated one-line string: the parser says so
        elif ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            i += len(quote)
            continue
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return deepest


def _data_depth(data: object) -> int:
    """The deepest nesting of tables and arrays in parsed TOML; iterative."""
    deepest = 0
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


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


def semantic_issues(config: StationConfig) -> list[ConfigIssue]:
    """Rules that span sections: unique names and slots, one owner per serial line."""
    issues: list[ConfigIssue] = []
    seen_names: dict[str, int] = {}
    seen_slots: dict[int, str] = {}
    lines: dict[Path, tuple[str, Any]] = {}
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
    if config.robot is not None and config.robot.serial.device in lines:
        dev = config.robot.serial.device
        issues.append(
            ConfigIssue(
                "robot.serial.device",
                f"the robot needs a serial port of its own; {dev} is used by {lines[dev][0]}",
            )
        )
    return issues


def _file_issues(config: StationConfig) -> list[ConfigIssue]:
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


def _with_password(config: StationConfig) -> tuple[StationConfig, list[ConfigIssue]]:
    """Read `mqtt.password_file` into `mqtt.password`, after checking the pair is coherent."""
    mqtt = config.mqtt
    if mqtt.password is not None and mqtt.password_file is not None:
        return config, [
            ConfigIssue(
                "mqtt.password_file",
                "give the password either in password_file or in the environment, not both",
            )
        ]
    if (mqtt.password is not None or mqtt.password_file is not None) and mqtt.username is None:
        return config, [ConfigIssue("mqtt.username", "required when a password is set")]
    if mqtt.password_file is None:
        return config, []
    try:
        secret = mqtt.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        return config, [
            ConfigIssue(
                "mqtt.password_file",
                f"cannot read: {exc.strerror}",
                got=repr(str(mqtt.password_file)),
            )
        ]
    if not secret:
        return config, [ConfigIssue("mqtt.password_file", "the file is empty")]
    new_mqtt = mqtt.model_copy(update={"password": SecretStr(secret)})
    return config.model_copy(update={"mqtt": new_mqtt}), []


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], list[ConfigIssue]]:
    issues: list[ConfigIssue] = []
    top = set(StationConfig.model_fields)
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_CONFIG:
            continue
        first = name[len(ENV_PREFIX) :].split(ENV_NESTED, 1)[0].lower()
        if first not in top:
            hint = _suggest(first, top)
            issues.append(ConfigIssue(first, "unknown setting" + hint, env_var=name))
    source = _EnvSource(env)
    return source(), issues


def _flatten_env(
    tree: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> Iterable[tuple[tuple[str, ...], str]]:
    for key, value in tree.items():
        path = (*prefix, key)
        if isinstance(value, Mapping):
            yield from _flatten_env(value, path)
        else:
            yield path, ENV_PREFIX + ENV_NESTED.join(p.upper() for p in path)


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _issue_from_error(
    err: Mapping[str, Any], env_paths: Mapping[tuple[str, ...], str]
) -> ConfigIssue:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    kind: str = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    message = _message(kind, err["msg"], ctx)
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        message += _suggest(str(loc[-1]), allowed)
    got = None
    if (
        kind != "missing"
        and not isinstance(err.get("input"), Mapping)
        and err.get("input") is not None
    ):
        got = "***" if any(str(p) in SECRET_KEYS for p in loc) else _show(err["input"])
    str_loc = tuple(str(p) for p in loc)
    env_var = next((v for p, v in env_paths.items() if str_loc[: len(p)] == p), None)
    return ConfigIssue(format_loc(loc), message, got=got, env_var=env_var)


def _message(kind: str, msg: str, ctx: Mapping[str, Any]) -> str:  # noqa: PLR0911 - a table
    simple = {
        "missing": "required key is missing",
        "extra_forbidden": "unknown key",
        "int_parsing": "must be an integer",
        "int_type": "must be an integer",
        "int_from_float": "must be an integer",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "model_type": "must be a table",
        "model_attributes_type": "must be a table",
        "dict_type": "must be a table",
        "list_type": "must be an array",
        "path_type": "must be a path string",
    }
    if kind in simple:
        return simple[kind]
    bounds = {
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        limit = ctx.get(key)
        return f"must be {op} {limit:g}" if isinstance(limit, float) else f"must be {op} {limit}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind in {"too_short", "too_long"}:
        what = "at least" if kind == "too_short" else "at most"
        n = ctx.get("min_length" if kind == "too_short" else "max_length")
        return f"must have {what} {n} item(s)"
    if kind in {"string_too_short", "string_too_long"}:
        return msg[0].lower() + msg[1:]
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else kind


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_GOT else text[: MAX_GOT - 3] + "..."


def _suggest(word: str, allowed: Iterable[str]) -> str:
    names = sorted(allowed)
    if not names:
        return ""
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed: {', '.join(names)})"


def _fields_at(loc: tuple[int | str, ...]) -> set[str]:
    """Field names of the config section at `loc`, to suggest the intended key."""
    annotation: Any = StationConfig
    for part in loc:
        model = _model_in(annotation)
        if isinstance(part, int):
            annotation = _list_item(annotation)
            continue
        if model is None or part not in model.model_fields:
            return set()
        annotation = model.model_fields[part].annotation
    model = _model_in(annotation)
    return set(model.model_fields) if model is not None else set()


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _list_item(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is list:
        return typing.get_args(annotation)[0]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is list:
                return typing.get_args(arg)[0]
    return annotation
