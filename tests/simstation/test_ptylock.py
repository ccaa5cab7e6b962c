"""A pty another program holds: the simulator says why and comes up on a fresh one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from simstation.ptypair import FRESH_TRIES, PtyPair, PtyPairError, busy
from simstation.robot import SimRobot

# Another program that opens the port and locks it, as a serial driver (ours, pyserial's
# `exclusive=True`) does, then holds it until its stdin closes.
LOCKER = """
import fcntl, os, sys
fds = [os.open(path, os.O_RDWR | os.O_NOCTTY) for path in sys.argv[1:]]
for fd in fds:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.read()
"""


def held_ptys(monkeypatch: pytest.MonkeyPatch, count: int) -> Iterator[list[str]]:
    """`count` ptys locked by another process, handed out first by `os.openpty`."""
    pairs = [os.openpty() for _ in range(count)]
    nodes = [os.ttyname(slave) for _, slave in pairs]
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, *nodes], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert locker.stdout is not None
    assert locker.stdout.readline() == b"locked\n"
    real = os.openpty
    given = iter(pairs)
    monkeypatch.setattr(os, "openpty", lambda: next(given, None) or real())
    try:
        yield nodes
    finally:
        assert locker.stdin is not None
        locker.stdin.close()
        locker.wait(timeout=5)
        assert locker.stdout is not None
        locker.stdout.close()


@pytest.fixture
def one_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """One pty held by another process."""
    yield from held_ptys(monkeypatch, 1)


@pytest.fixture
def all_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """As many held ptys as the simulator tries."""
    yield from held_ptys(monkeypatch, FRESH_TRIES)


def test_busy_names_a_lock_and_an_unopenable_node(one_held: list[str], tmp_path: Path) -> None:
    """A held pty is "locked by another process"; a node that is not there cannot be opened."""
    assert busy(one_held[0]) == "is locked by another process"
    assert busy(str(tmp_path / "absent")) == "cannot be opened (No such file or directory)"


@pytest.mark.timeout(20)
async def test_the_robot_comes_up_on_a_fresh_pty_and_says_why(
    one_held: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The held pty is skipped with a printed reason; the driver can then lock the port it got."""
    robot = SimRobot()
    await robot.start(tmp_path / "robot")
    try:
        said = f"robot: the pty {one_held[0]} is locked by another process; trying a fresh one\n"
        assert capsys.readouterr().err == said
        assert (tmp_path / "robot").readlink() != Path(one_held[0])
        port = await asyncio.to_thread(serial.Serial, str(tmp_path / "robot"), exclusive=True)
        port.close()
    finally:
        await robot.stop()


@pytest.mark.timeout(20)
async def test_when_every_pty_is_held_the_robot_gives_up_naming_why(
    all_held: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After FRESH_TRIES held ptys, start fails with the reason, each pty's line printed."""
    robot = SimRobot()
    with pytest.raises(PtyPairError, match=r"ptys in a row could not be had \(the last is locked"):
        await robot.start(tmp_path / "robot")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"robot: the pty {node} is locked by another process"
        + ("; trying a fresh one" if i < FRESH_TRIES - 1 else "")
        for i, node in enumerate(all_held)
    ]


@pytest.mark.timeout(20)
def test_a_socat_pair_another_program_holds_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """socat makes its ptys itself, so no other process can be made to lock the first pair
    before the check: the check's answer stands in for it, once (the lock itself is tested
    above); the pair comes up on fresh ptys and says why."""
    import simstation.ptypair as ptypair

    answers = iter(["is locked by another process"])
    real = ptypair.busy
    monkeypatch.setattr(ptypair, "busy", lambda node: next(answers, None) or real(node))
    with PtyPair(tmp_path, "rack-a") as pair:
        line = capsys.readouterr().err
        assert line.startswith("rack-a: the pty /dev/pts/")
        assert line.endswith(" is locked by another process; trying a fresh one\n")
        assert busy(str(pair.controller_end.resolve())) is None
