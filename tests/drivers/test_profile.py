"""Register profiles: the shipped ones load; a broken one names every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.errors import SpecError
from drivers.modbus.profile import REQUIRED_SLOT_REGISTERS, find_profile, load_profile
from tests.support import REPO

PROFILES = REPO / "config" / "profiles"


@pytest.mark.parametrize("name", ["simrack", "simrack-unit"])
def test_shipped_profiles_load(name: str) -> None:
    profile = load_profile(PROFILES / f"{name}.toml")
    assert set(profile.slot_registers) >= REQUIRED_SLOT_REGISTERS
    assert {r.type for r in profile.slot} == {"u16", "i16", "u32", "i32", "f32", "string"}


def test_find_profile_by_name_or_path(tmp_path: Path) -> None:
    assert find_profile("simrack", [tmp_path, PROFILES]) == PROFILES / "simrack.toml"
    assert find_profile(str(PROFILES / "simrack.toml"), []) == PROFILES / "simrack.toml"
    assert find_profile("nope", [PROFILES]) is None


def test_broken_profile_lists_its_problems(tmp_path: Path) -> None:
    text = (PROFILES / "simrack.toml").read_text()
    text = text.replace("stride = 32", "stride = 10")
    text = text.replace('offset = 15, type = "u16"', 'offset = 14, type = "u16"')  # soh onto soc
    text = text.replace(
        'name = "charge_enable",   table = "holding"', 'name = "charge_enable",   table = "input"'
    )
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_profile(path)
    message = str(info.value)
    assert "slot[16]: charge_enable: a writable register must be in the holding table" in message


def test_overlaps_and_stride(tmp_path: Path) -> None:
    text = (PROFILES / "simrack.toml").read_text()
    text = text.replace("stride = 32", "stride = 10")
    text = text.replace('offset = 15, type = "u16"', 'offset = 14, type = "u16"')
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_profile(path)
    message = str(info.value)
    assert "slot: soc overlaps soh in the input table" in message
    assert "stride (10) is smaller than a slot's block (29 registers)" in message


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text("layout = = 1")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_profile(path)
