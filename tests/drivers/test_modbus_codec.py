"""Register codec: every type round-trips, known words decode to known values."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import compile_decoder, decode, encode, plausible
from drivers.modbus.profile import RegisterSpec

ORDERS = st.sampled_from(["big", "little"])


def spec(kind: str, **kw: Any) -> RegisterSpec:
    return RegisterSpec(name="x", table="input", offset=0, type=kind, **kw)


@given(st.integers(0, 0xFFFF), ORDERS)
def test_u16_round_trip(value: int, order: str) -> None:
    s = spec("u16")
    assert decode(s, encode(s, value, order), order) == value  # type: ignore[arg-type]


@given(st.integers(-0x8000, 0x7FFF))
def test_i16_round_trip(value: int) -> None:
    s = spec("i16")
    assert decode(s, encode(s, value)) == value


@given(st.integers(0, 0xFFFF_FFFF), ORDERS)
def test_u32_round_trip(value: int, order: str) -> None:
    s = spec("u32")
    assert decode(s, encode(s, value, order), order) == value  # type: ignore[arg-type]


@given(st.integers(-0x8000_0000, 0x7FFF_FFFF), ORDERS)
def test_i32_round_trip(value: int, order: str) -> None:
    s = spec("i32")
    assert decode(s, encode(s, value, order), order) == value  # type: ignore[arg-type]


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), ORDERS)
def test_f32_round_trip(value: float, order: str) -> None:
    s = spec("f32")
    assert decode(s, encode(s, value, order), order) == value  # type: ignore[arg-type]


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=16))
def test_string_round_trip(value: str) -> None:
    s = spec("string", length=8)
    assert decode(s, encode(s, value)) == value


@given(st.integers(0, 10000))
def test_scaled_round_trip(raw: int) -> None:
    s = spec("u16", scale=0.1)
    value = raw / 10
    assert encode(s, value) == [raw]
    assert math.isclose(float(decode(s, [raw])), value)


@pytest.mark.parametrize(
    ("kind", "kw", "words", "value"),
    [
        ("u16", {}, [0xFFFF], 65535),
        ("i16", {}, [0xFFFF], -1),
        ("i16", {"scale": 0.1}, [0xFF9C], -10.0),
        ("u32", {}, [0x0001, 0x0002], 65538),
        ("i32", {"scale": 0.001}, [0xFFFF, 0xFB2E], -1.234),
        ("f32", {}, [0x4148, 0x0000], 12.5),
        ("string", {"length": 3}, [0x504B, 0x2D31, 0x0000], "PK-1"),
    ],
)
def test_known_words(kind: str, kw: dict[str, Any], words: list[int], value: object) -> None:
    assert decode(spec(kind, **kw), words) == value


def test_little_word_order_swaps_words() -> None:
    assert decode(spec("u32"), [0x0002, 0x0001], "little") == 65538


def test_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        encode(spec("u16", scale=0.1), 7000)


def test_plausibility_bounds() -> None:
    s = spec("u16", scale=0.1, min=0, max=100)
    assert plausible(s, 55.0)
    assert not plausible(s, 250.0)
    assert not plausible(spec("string", length=2), "a\x01")


@given(
    st.sampled_from(["u16", "i16", "u32", "i32", "f32"]),
    st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2),
    st.sampled_from([1.0, 0.1, 0.001]),
    ORDERS,
)
def test_compiled_decoder_matches_decode_and_plausible(
    kind: str, words: list[int], scale: float, order: str
) -> None:
    s = spec(kind, scale=scale, min=-100, max=100)
    n = s.words
    fast = compile_decoder(s, order)(words, 0)  # type: ignore[arg-type]
    value = decode(s, words[:n], order)  # type: ignore[arg-type]
    if isinstance(value, float) and math.isnan(value):
        assert fast is None
    else:
        assert fast == (value if plausible(s, value) else None)
