"""Station I/O profiles: the station PLC's Modbus map as data.

A profile names every discrete input (function 2), coil (functions 1 and 5) and register the
controller uses, and gives its address; it never holds a value. The names are the contract
with the swap sequencer; the addresses (and the register types, within limits) are the PLC's.
The station I/O driver plans one read per table from it, and the simulated PLC serves the same
file. A profile may name more inputs, coils or registers than the controller requires: they
are read and reported too.
"""

from __future__ import annotations

import itertools
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.errors import SpecError, format_loc
from drivers.modbus.profile import IDENT_RE, MAX_READ, RegisterSpec

# What the sequencer needs, by name, in address order of the reference map.
REQUIRED_INPUTS = (
    "vehicle_present",
    "vehicle_in_position",
    "vehicle_hv_off",
    "doors_closed",
    "brake_gear_ok",
    "lift_up",
    "lift_down",
    "estop_ok",
    "light_curtain_clear",
    "gate_open",
    "plc_ok",
)
REQUIRED_COILS = ("lift_raise", "lift_lower", "gate_open", "signal_go")
REQUIRED_REGISTERS = ("vehicle_id", "heartbeat")
MAX_READ_BITS = 2000  # Modbus: at most 2000 coils or discrete inputs per read
BitTable = Literal["discrete", "coil"]

Address = Annotated[int, Field(ge=0, le=65535)]


class IoProfile(BaseModel):
    """A station PLC's I/O map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    word_order: Literal["big", "little"] = "big"
    discrete_inputs: dict[str, Address] = Field(description="input name -> address (function 2)")
    coils: dict[str, Address] = Field(description="coil name -> address (functions 1, 5)")
    registers: list[RegisterSpec] = Field(min_length=1)

    @field_validator("discrete_inputs", "coils")
    @classmethod
    def _names(cls, value: dict[str, int]) -> dict[str, int]:
        bad = sorted(name for name in value if not IDENT_RE.match(name))
        if bad:
            raise ValueError(
                f"names must be lower-case identifiers (a-z, 0-9, _; at most 32): {bad}"
            )
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        problems: list[str] = []
        for section, named, required in (
            ("discrete_inputs", self.discrete_inputs, REQUIRED_INPUTS),
            ("coils", self.coils, REQUIRED_COILS),
        ):
            missing = [name for name in required if name not in named]
            if missing:
                problems.append(f"{section}: missing {missing}")
            by_address: dict[int, list[str]] = {}
            for name, address in named.items():
                by_address.setdefault(address, []).append(name)
            problems += [
                f"{section}: {' and '.join(names)} share address {address}"
                for address, names in sorted(by_address.items())
                if len(names) > 1
            ]
            if named and max(named.values()) - min(named.values()) + 1 > MAX_READ_BITS:
                problems.append(
                    f"{section}: addresses span more than {MAX_READ_BITS} bits (one read)"
                )
        names = [r.name for r in self.registers]
        if len(set(names)) != len(names):
            problems.append("registers: names must be unique")
        missing = [name for name in REQUIRED_REGISTERS if name not in names]
        if missing:
            problems.append(f"registers: missing {missing}")
        regs = {r.name: r for r in self.registers}
        if "vehicle_id" in regs and regs["vehicle_id"].type != "string":
            problems.append('registers: vehicle_id must be type = "string"')
        if "heartbeat" in regs and regs["heartbeat"].type not in {"u16", "u32"}:
            problems.append('registers: heartbeat must be type = "u16" or "u32"')
        problems += [
            f'registers: {r.name} must be read-only (access = "r")'
            for r in self.registers
            if r.access != "r"
        ]
        for table in ("input", "holding"):
            spans = sorted(
                (r.offset, r.offset + r.words, r.name) for r in self.registers if r.table == table
            )
            problems += [
                f"registers: {name} overlaps {other} in the {table} table"
                for (_, end, name), (start, _, other) in itertools.pairwise(spans)
                if start < end
            ]
            if spans and max(end for _, end, _ in spans) - spans[0][0] > MAX_READ:
                problems.append(
                    f"registers: the {table} table spans more than {MAX_READ} registers (one read)"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @cached_property
    def register_specs(self) -> dict[str, RegisterSpec]:
        """Registers by name."""
        return {r.name: r for r in self.registers}

    def bits(self, table: BitTable) -> dict[str, int]:
        """Discrete inputs or coils: name -> address."""
        return self.discrete_inputs if table == "discrete" else self.coils


def load_io_profile(path: Path) -> IoProfile:
    """Load and validate an I/O profile; raise `SpecError` listing every problem."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(str(path), [("", f"cannot read: {exc.strerror}")]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [("", f"not valid TOML: {exc}")]) from None
    try:
        return IoProfile.model_validate(data)
    except ValidationError as exc:
        issues = [
            (format_loc(err["loc"]), err["msg"].removeprefix("Value error, "))
            for err in exc.errors()
        ]
        raise SpecError(str(path), issues) from None
