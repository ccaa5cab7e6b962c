"""Register values <-> 16-bit words, by a register's spec (type, scale, word order)."""

from __future__ import annotations

import decimal
import math
import struct
from collections.abc import Callable, Sequence
from typing import Literal

from drivers.errors import DecodeError
from drivers.modbus.profile import RegisterSpec

WordOrder = Literal["big", "little"]
Value = int | float | str

RAW_RANGE = {
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "i32": (-0x8000_0000, 0x7FFF_FFFF),
}
_STRUCT32 = {"u32": ">I", "i32": ">i", "f32": ">f"}


def decode(spec: RegisterSpec, words: Sequence[int], word_order: WordOrder = "big") -> Value:
    """Engineering value of `spec` from its raw words (scaled; strings stripped)."""
    if len(words) != spec.words:
        raise DecodeError(f"{spec.name}: expected {spec.words} register(s), got {len(words)}")
    kind = spec.type
    if kind == "string":
        raw = b"".join(w.to_bytes(2, "big") for w in words)
        # Not ASCII: replaced by U+FFFD, which `plausible` rejects (it is not printable ASCII).
        return raw.rstrip(b"\x00 ").decode("ascii", errors="replace")
    if kind == "u16":
        value: float = words[0]
    elif kind == "i16":
        value = words[0] - 0x10000 if words[0] & 0x8000 else words[0]
    else:
        hi, lo = (words[0], words[1]) if word_order == "big" else (words[1], words[0])
        value = struct.unpack(_STRUCT32[kind], struct.pack(">HH", hi, lo))[0]
    if spec.scale == 1.0:
        return value if kind == "f32" else int(value)
    # Round to the scale's resolution so 269 * 0.1 reads 26.9, not 26.900000000000002.
    return round(value * spec.scale, scale_digits(spec.scale))


def scale_digits(scale: float) -> int:
    """Decimal places of a scale: 0.1 -> 1, 0.125 -> 3, 10 -> 0."""
    exponent = decimal.Decimal(repr(scale)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 6


def encode(spec: RegisterSpec, value: Value, word_order: WordOrder = "big") -> list[int]:
    """Raw words for an engineering value; `ValueError` when it does not fit the type."""
    kind = spec.type
    if kind == "string":
        if not isinstance(value, str):
            raise TypeError(f"{spec.name}: expects a string")
        raw = value.encode("ascii")
        size = spec.words * 2
        if len(raw) > size:
            raise ValueError(f"{spec.name}: at most {size} characters")
        raw = raw.ljust(size, b"\x00")
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, size, 2)]
    if isinstance(value, str):
        raise TypeError(f"{spec.name}: expects a number")
    scaled = value / spec.scale
    if not math.isfinite(scaled):
        raise ValueError(f"{spec.name}: not a finite number")
    if kind == "f32":
        try:
            hi, lo = struct.unpack(">HH", struct.pack(">f", scaled))
        except OverflowError:
            raise ValueError(f"{spec.name}: {value} does not fit a 32-bit float") from None
    else:
        raw_int = round(scaled)
        low, high = RAW_RANGE[kind]
        if not low <= raw_int <= high:
            raise ValueError(
                f"{spec.name}: {value} is outside {low * spec.scale:g}..{high * spec.scale:g}"
            )
        if kind in {"u16", "i16"}:
            return [raw_int & 0xFFFF]
        hi, lo = struct.unpack(">HH", struct.pack(_STRUCT32[kind], raw_int))
    return [hi, lo] if word_order == "big" else [lo, hi]


def plausible(spec: RegisterSpec, value: Value) -> bool:
    """False when a value is outside the spec's plausible range (a sensor fault)."""
    if isinstance(value, str):
        return value.isascii() and value.isprintable()
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if spec.min is not None and value < spec.min:
        return False
    return spec.max is None or value <= spec.max


Decoder = Callable[[Sequence[int], int], Value | None]


def compile_decoder(spec: RegisterSpec, word_order: WordOrder = "big") -> Decoder:
    """A fast decoder for the poll path: `fn(words, start)` -> value, or None if implausible.

    Equivalent to `decode` then `plausible` (tests check that), without per-call dispatch.
    """
    kind, scale = spec.type, spec.scale
    lo = -math.inf if spec.min is None else spec.min
    hi = math.inf if spec.max is None else spec.max
    digits = None if scale == 1.0 else scale_digits(scale)
    n = spec.words
    if kind == "string":

        def string(words: Sequence[int], i: int) -> Value | None:
            raw = b"".join(w.to_bytes(2, "big") for w in words[i : i + n])
            text = raw.rstrip(b"\x00 ").decode("ascii", errors="replace")
            return text if text.isascii() and text.isprintable() else None

        return string
    if kind in {"u16", "i16"}:
        signed = kind == "i16"

        def word(words: Sequence[int], i: int) -> Value | None:
            raw = words[i]
            if signed and raw & 0x8000:
                raw -= 0x10000
            value: float = raw if digits is None else round(raw * scale, digits)
            return value if lo <= value <= hi else None

        return word
    fmt = struct.Struct(_STRUCT32[kind])
    pack = struct.Struct(">HH").pack
    big = word_order == "big"
    is_float = kind == "f32"

    def dword(words: Sequence[int], i: int) -> Value | None:
        a, b = words[i], words[i + 1]
        raw = fmt.unpack(pack(a, b) if big else pack(b, a))[0]
        if is_float and not math.isfinite(raw):
            return None
        value = raw if digits is None else round(raw * scale, digits)
        return value if lo <= value <= hi else None

    return dword
