"""Read `station.toml`, apply `SWAPSTATION_...` environment overrides, validate, explain errors.

Every problem is reported as one line `FILE: key.path: message (got VALUE)`, and all of them
are reported at once, so a commissioning engineer fixes a config in one pass.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from controller.config.checks import (
    file_issues,
    profile_issues,
    profile_warnings,
    semantic_issues,
)
from controller.config.model import StationConfig
from controller.config.toml import read_toml
from controller.errors import ConfigError, ConfigIssue
from drivers.errors import format_loc

ENV_PREFIX = "SWAPSTATION_"
ENV_NESTED = "__"
# Environment variables of ours that are not config keys.
ENV_NOT_CONFIG = frozenset({"SWAPSTATION_CONFIG"})
SECRET_KEYS = frozenset({"password"})
MAX_GOT = 60


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

    for section in ("mqtt", "ocpp"):
        if isinstance(data.get(section), dict) and "password" in data[section]:
            issues.append(
                ConfigIssue(
                    f"{section}.password",
                    f"a password is never written in the config file: use {section}.password_file"
                    f" or the {ENV_PREFIX}{section.upper()}{ENV_NESTED}PASSWORD environment"
                    " variable",
                    got="***",
                )
            )
            data = {**data, section: {k: v for k, v in data[section].items() if k != "password"}}

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
    issues += file_issues(config)
    config, password_issues = _with_password(config)
    issues += password_issues
    config, ocpp_issues = _with_ocpp_password(config)
    issues += ocpp_issues
    if issues:
        raise ConfigError(path, issues)
    return config


def config_warnings(path: Path | str, config: StationConfig) -> list[str]:
    """One `FILE: key: warning: ...` line per thing a valid config says but likely not means.

    `swapctl check-config` prints them and the daemon logs them at start; neither refuses.
    """
    return [issue.line(str(path)) for issue in profile_warnings(config)]


def _with_password(config: StationConfig) -> tuple[StationConfig, list[ConfigIssue]]:
    """Read `mqtt.password_file` into `mqtt.password`, after checking the pair is coherent."""
    mqtt = config.mqtt
    # (Both given: _secret says so.)
    one_given = (mqtt.password is None) != (mqtt.password_file is None)
    if one_given and mqtt.username is None:
        return config, [ConfigIssue("mqtt.username", "required when a password is set")]
    secret, issues = _secret("mqtt", mqtt.password, mqtt.password_file)
    if secret is None:
        return config, issues
    new_mqtt = mqtt.model_copy(update={"password": secret})
    return config.model_copy(update={"mqtt": new_mqtt}), []


def _with_ocpp_password(config: StationConfig) -> tuple[StationConfig, list[ConfigIssue]]:
    """Read `ocpp.password_file` into `ocpp.password`; security profiles 1 and 2 need one."""
    ocpp = config.ocpp
    if ocpp is None:
        return config, []
    if ocpp.password is None and ocpp.password_file is None:
        return config, [
            ConfigIssue(
                "ocpp.password_file",
                f"security profile {ocpp.security_profile} needs a password: a"
                f" password_file or the {ENV_PREFIX}OCPP{ENV_NESTED}PASSWORD environment"
                " variable",
            )
        ]
    secret, issues = _secret("ocpp", ocpp.password, ocpp.password_file)
    if secret is None:
        return config, issues
    return config.model_copy(update={"ocpp": ocpp.model_copy(update={"password": secret})}), []


def _secret(
    section: str, given: SecretStr | None, path: Path | None
) -> tuple[SecretStr | None, list[ConfigIssue]]:
    """A section's password: from the environment (`given`) or read from `path`, not both.

    None with no issue: there is none (or the environment's stands as it is).
    """
    if given is not None and path is not None:
        return None, [
            ConfigIssue(
                f"{section}.password_file",
                "give the password either in password_file or in the environment, not both",
            )
        ]
    if path is None:
        return None, []
    try:
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        return None, [
            ConfigIssue(
                f"{section}.password_file", f"cannot read: {exc.strerror}", got=repr(str(path))
            )
        ]
    if not text:
        return None, [ConfigIssue(f"{section}.password_file", "the file is empty")]
    return SecretStr(text), []


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
