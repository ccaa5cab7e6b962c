"""What every part of the station config is built on: the base model, names, paths, numbers.

A section forbids unknown keys and refuses `true`/`false` where a number belongs.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOPIC_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    """Resolve a relative path against the config file's directory."""
    if value is None or value.is_absolute():
        return value
    base = (info.context or {}).get("base_dir")
    return (Path(base) / value) if base is not None else value


def _name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '_', '-' or '.', starting with a letter"
            " or digit (it is used in MQTT topics and file names)"
        )
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve)]

SERIAL_URL_RE = re.compile(r"^(socket|rfc2217)://[A-Za-z0-9_.-]+:[0-9]{1,5}$")


def _device(value: str, info: ValidationInfo) -> str:
    """A serial device: a path (relative to the config file), or a serial device server's URL."""
    if "://" in value:
        if not SERIAL_URL_RE.match(value):
            raise ValueError(
                "a URL must be socket://HOST:PORT or rfc2217://HOST:PORT (a serial device server)"
            )
        return value
    if not value:
        raise ValueError("must not be empty")
    return str(_resolve(Path(value), info))


SerialDevice = Annotated[str, AfterValidator(_device)]
Name = Annotated[str, AfterValidator(_name)]
Seconds = Annotated[float, Field(gt=0, le=86_400)]
UnitId = Annotated[int, Field(ge=1, le=247)]
SlotNumber = Annotated[int, Field(ge=1, le=999)]


def admitted_types(annotation: object) -> list[object]:
    """The types a field's annotation admits, through `Annotated` and unions."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return admitted_types(args[0])
    if origin in (Union, types.UnionType):
        return [leaf for arg in args for leaf in admitted_types(arg)]
    return [annotation]


def is_number_type(leaf: object) -> bool:
    """Whether `leaf` (one of `admitted_types`) is a number type or a literal of numbers."""
    if get_origin(leaf) is Literal:
        return any(type(arg) in (int, float) for arg in get_args(leaf))
    return leaf in (int, float)


def unbool(value: object, annotation: object) -> object:
    """`value` with every true/false where `annotation` wants a number made text.

    The number's own validation then refuses `"true"` / `"false"` at its exact key, at any
    depth (`racks[0].slots[1]: must be an integer (got 'true')`). pydantic reads `true` as 1
    for an int, a float or `Literal[1, 2]`: a key such as `max_current_a = true` would be 1 A.
    TOML says what it means; a boolean is not a number.
    """
    leaves = admitted_types(annotation)
    if isinstance(value, bool):
        if bool not in leaves and any(is_number_type(leaf) for leaf in leaves):
            return "true" if value else "false"
        return value
    for leaf in leaves:
        origin, args = get_origin(leaf), get_args(leaf)
        if isinstance(value, list) and origin in (list, tuple) and args:
            if origin is tuple and args[-1] is not Ellipsis:  # fixed: a type per position
                return [unbool(v, t) for v, t in zip(value, args, strict=False)] + value[
                    len(args) :
                ]
            return [unbool(v, args[0]) for v in value]
        if isinstance(value, dict) and origin is dict and len(args) == 2:
            return {k: unbool(v, args[1]) for k, v in value.items()}
    return value


class NumbersNotBools(BaseModel):
    """A model whose number fields refuse `true`/`false` (pydantic would read 1 or 0)."""

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: object) -> object:
        """A number key given `true`/`false` is refused at its key, not read as 1 or 0."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key in out:
                out[key] = unbool(out[key], field.annotation)
        return out


class Section(NumbersNotBools):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
