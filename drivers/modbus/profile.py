"""Register profiles: a charger rack's Modbus map as data, one line per register.

A profile is loaded from `profiles/<name>.toml` and never holds a live value. Two layouts:

- `block`: one Modbus unit for the whole rack; slot i's registers start at `base + i * stride`;
- `unit`: one Modbus unit per slot (typical on RS-485); every slot's registers start at `base`.

Rack-level registers (identity, rack heartbeat) have absolute addresses on the rack's first unit.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from enum import StrEnum, auto
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.errors import SpecError, format_loc

RegisterType = Literal["u16", "i16", "u32", "i32", "f32", "string"]
Table = Literal["input", "holding"]
WORDS = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2}
MAX_READ = 125  # Modbus: at most 125 registers per read


class SlotStatus(StrEnum):
    """A charger's status, as its register reports it through the profile's status codes."""

    EMPTY = auto()
    IDLE = auto()
    CHARGING = auto()
    FULL = auto()
    FAULT = auto()
    DISABLED = auto()


SLOT_STATUSES: tuple[str, ...] = tuple(SlotStatus)
# What the controller needs of every slot, by name.
REQUIRED_SLOT_REGISTERS = frozenset(
    {
        "status",
        "pack_present",
        "pack_serial",
        "pack_type",
        "soc",
        "soh",
        "voltage",
        "current",
        "temp_max",
        "temp_min",
        "fault_code",
        "energy_wh",
        "charge_enable",
        "current_limit",
        "bms_voltage_max",
        "bms_current_max",
        "heartbeat",
    }
)
WRITABLE_SLOT_REGISTERS = frozenset({"charge_enable", "current_limit"})
# Every slot register a reading carries (`drivers.rack.SlotReading`); `power_w` is optional.
# The poller reads these and nothing else of a slot.
READ_SLOT_REGISTERS = REQUIRED_SLOT_REGISTERS | {"power_w"}
# Of those, what stays put while a pack stays in its slot: read when a pack comes and slowly
# after (unless they ride in a read that is made anyway, where they cost nothing).
STATIC_SLOT_REGISTERS = frozenset({"pack_serial", "pack_type", "soh"})
# Rack registers that `swapctl probe` reads on demand (identity, liveness); never polled.
IDENTITY_REGISTERS = frozenset({"vendor", "model", "firmware", "slot_count", "rack_heartbeat"})
DEFAULT_STATIC_PERIOD_S = 10.0
IDENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

Address = Annotated[int, Field(ge=0, le=65535)]


class RegisterSpec(BaseModel):
    """One register (or run of registers for 32-bit values and strings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=IDENT_RE.pattern)
    table: Table
    offset: Address
    type: RegisterType
    length: int | None = Field(default=None, ge=1, le=64, description="string: registers")
    scale: float = Field(default=1.0, gt=0)
    unit: str = ""
    access: Literal["r", "rw"] = "r"
    min: float | None = Field(default=None, description="plausible minimum, engineering units")
    max: float | None = Field(default=None, description="plausible maximum, engineering units")
    description: str = ""

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        if self.type == "string" and self.length is None:
            raise ValueError(f"{self.name}: a string needs length (in registers)")
        if self.type != "string" and self.length is not None:
            raise ValueError(f"{self.name}: length is only for strings")
        if self.access == "rw" and self.table != "holding":
            raise ValueError(f"{self.name}: a writable register must be in the holding table")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"{self.name}: min ({self.min}) > max ({self.max})")
        return self

    @property
    def words(self) -> int:
        """Registers this value occupies."""
        return self.length if self.type == "string" and self.length else WORDS[self.type]


class RackProfile(BaseModel):
    """A rack's register map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    layout: Literal["block", "unit"]
    base: Address = 0
    stride: int = Field(default=0, ge=0, le=65535)
    word_order: Literal["big", "little"] = "big"
    max_read: int = Field(default=MAX_READ, ge=1, le=MAX_READ)
    readable_gaps: bool = Field(
        default=False,
        description="true if any address between two registers of a table may be read, so"
        " that the poller may bridge gaps (many devices answer 'illegal address' instead)",
    )
    static_period_s: float = Field(
        default=DEFAULT_STATIC_PERIOD_S,
        gt=0,
        le=3600,
        description="seconds between reads of the static pack values (serial, type, SoH) that"
        " do not ride in the every-poll reads; they are also read as soon as a pack comes",
    )
    status_codes: dict[str, int]
    rack: list[RegisterSpec] = Field(default_factory=list)
    slot: list[RegisterSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        problems: list[str] = []
        missing = sorted(set(SLOT_STATUSES) - set(self.status_codes))
        if missing:
            problems.append(f"status_codes: missing {missing}")
        if len(set(self.status_codes.values())) != len(self.status_codes):
            problems.append("status_codes: two statuses share a code")
        names = [r.name for r in self.slot]
        if len(set(names)) != len(names):
            problems.append("slot: register names must be unique")
        missing = sorted(REQUIRED_SLOT_REGISTERS - set(names))
        if missing:
            problems.append(f"slot: missing required registers {missing}")
        problems += [
            f'slot: {reg.name} must be access = "rw"'
            for reg in self.slot
            if reg.name in WRITABLE_SLOT_REGISTERS and reg.access != "rw"
        ]
        problems += _overlaps("slot", self.slot) + _overlaps("rack", self.rack)
        widest = max(r.words for r in [*self.slot, *self.rack])
        if widest > self.max_read:
            problems.append(f"max_read ({self.max_read}) is smaller than a value ({widest} words)")
        if self.layout == "block":
            span = self.block_span
            if self.stride < span:
                problems.append(
                    f"stride ({self.stride}) is smaller than a slot's block ({span} registers)"
                )
            if any(r.offset + r.words > self.base for r in self.rack):
                problems.append(f"rack registers must lie below base ({self.base})")
        else:
            shifted = [r.model_copy(update={"offset": self.base + r.offset}) for r in self.slot]
            problems += _overlaps("rack and slot", [*self.rack, *shifted])
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @cached_property
    def slot_registers(self) -> dict[str, RegisterSpec]:
        """Slot registers by name."""
        return {r.name: r for r in self.slot}

    def unread_registers(self) -> list[tuple[str, str]]:
        """(section, name) of every register nothing reads: neither polled nor probed."""
        return [("slot", r.name) for r in self.slot if r.name not in READ_SLOT_REGISTERS] + [
            ("rack", r.name) for r in self.rack if r.name not in IDENTITY_REGISTERS
        ]

    @cached_property
    def status_names(self) -> dict[int, str]:
        """Status code -> status name."""
        return {code: name for name, code in self.status_codes.items()}

    @property
    def block_span(self) -> int:
        """Registers from a slot's first to its last register, over both tables."""
        return max(r.offset + r.words for r in self.slot) - min(r.offset for r in self.slot)

    def slot_address(self, reg: RegisterSpec, index: int) -> int:
        """Absolute address of `reg` for the slot at position `index` in the rack."""
        if self.layout == "block":
            return self.base + index * self.stride + reg.offset
        return self.base + reg.offset

    def max_slots(self) -> int:
        """How many slots fit in the 16-bit address space with this layout."""
        if self.layout == "unit":
            return 247
        top = max(r.offset + r.words for r in self.slot)
        return (65536 - self.base - top) // self.stride + 1 if self.stride else 1


def markdown_table(registers: list[RegisterSpec], *, absolute: bool) -> str:
    """The registers as a Markdown table (docs/register-map.md is generated from this)."""
    head = "address" if absolute else "offset"
    rows = [
        f"| {head} | name | table | type | words | scale | unit | access | plausible | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(registers, key=lambda r: (r.table, r.offset)):
        bounds = f"{_num(r.min)}..{_num(r.max)}" if r.min is not None or r.max is not None else ""
        rows.append(
            f"| {r.offset} | `{r.name}` | {r.table} | {r.type} | {r.words} | {_num(r.scale)} |"
            f" {r.unit} | {r.access} | {bounds} | {r.description} |"
        )
    return "\n".join(rows)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _overlaps(section: str, regs: list[RegisterSpec]) -> list[str]:
    out: list[str] = []
    for table in ("input", "holding"):
        spans = sorted((r.offset, r.offset + r.words, r.name) for r in regs if r.table == table)
        for (_, end, name), (start, _, other) in itertools.pairwise(spans):
            if start < end:
                out.append(f"{section}: {name} overlaps {other} in the {table} table")
    return out


def find_profile(name: str, search: list[Path]) -> Path | None:
    """Resolve a profile name (or a path ending in .toml) against the search folders."""
    if name.endswith(".toml"):
        path = Path(name)
        if path.is_absolute():
            return path if path.exists() else None
        candidates = [d / path for d in search]
    else:
        candidates = [d / f"{name}.toml" for d in search]
    return next((p for p in candidates if p.is_file()), None)


def load_profile(path: Path) -> RackProfile:
    """Load and validate a profile; raise `SpecError` listing every problem."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(str(path), [("", f"cannot read: {exc.strerror}")]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [("", f"not valid TOML: {exc}")]) from None
    try:
        return RackProfile.model_validate(data)
    except ValidationError as exc:
        issues = [
            (format_loc(err["loc"]), err["msg"].removeprefix("Value error, "))
            for err in exc.errors()
        ]
        raise SpecError(str(path), issues) from None
