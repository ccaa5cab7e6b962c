"""An independent Modbus client (mbpoll) reads what docs/register-map.md documents."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

from drivers.modbus.profile import load_profile
from simstation.charger import SimPack
from simstation.rack import SimRack
from tests.support import REPO

DOC = REPO / "docs" / "register-map.md"


def _documented_example() -> tuple[list[str], dict[int, str]]:
    text = DOC.read_text()
    block = text.split("<!-- mbpoll-example -->", 1)[1].split("<!-- /mbpoll-example -->", 1)[0]
    lines = [ln for ln in block.splitlines() if ln and not ln.startswith("```")]
    command = lines[0].removeprefix("$ ").split()
    expected = {}
    for line in lines[1:]:
        m = re.match(r"\[(\d+)\]:\s+(\S+)", line)
        assert m, line
        expected[int(m.group(1))] = m.group(2)
    return command, expected


async def test_mbpoll_reads_the_documented_values(tmp_path: Path) -> None:
    mbpoll = shutil.which("mbpoll")
    assert mbpoll, "mbpoll is missing (Debian package mbpoll; scripts/bootstrap.sh installs it)"
    command, expected = _documented_example()
    sim = SimRack(load_profile(REPO / "config" / "profiles" / "simrack.toml"), [1, 2, 3, 4])
    sim.insert_pack(2, SimPack("PK-0002", soc=62.5, soh=96.0, temp_c=25.0))
    port = await sim.start_tcp()
    try:
        args = [mbpoll, *command[1:]]
        args[args.index("-p") + 1] = str(port)
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await sim.stop()
    assert proc.returncode == 0, err.decode()
    got = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"^\[(\d+)\]:\s+(-?\d+)", out.decode(), re.MULTILINE)
    }
    assert set(got) == set(expected)
    for address, value in expected.items():
        if value != "(varies)":
            assert got[address] == value, (
                f"register {address}: documented {value}, read {got[address]}"
            )
