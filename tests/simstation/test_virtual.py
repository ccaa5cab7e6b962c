"""Virtual time (issue 16): the loop, the in-process broker, and the same answer under load."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers import clock
from simstation.minibroker import MiniBroker, matches, varint
from simstation.report import Report
from simstation.scenario import load_scenario
from simstation.simulate import apply_overrides, run_virtual
from simstation.vloop import TIMER_SLACK_S, VirtualClock, VirtualLoop, day_start, run_eagerly
from tests.support import REPO

SCENARIOS = REPO / "config" / "scenarios"
T = TypeVar("T")


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]], start: float = 0.0) -> T:
    loop = VirtualLoop(start)
    try:
        with clock.use(VirtualClock(loop, day_start(8 * 3600.0))):
            return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


# --- the loop ------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_an_hour_of_sleep_costs_no_wall_time_and_the_clock_is_the_loops() -> None:
    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        t0, w0 = clock.monotonic(), clock.wall()
        await asyncio.sleep(3600.0)
        return loop.time() - t0, clock.monotonic() - t0, clock.wall() - w0

    wall = __import__("time").monotonic()
    looped, mono, walled = run(main)
    assert 3600.0 <= looped < 3600.0 + 1e-3
    assert mono == looped and abs(walled - looped) < 1e-6
    assert __import__("time").monotonic() - wall < 5.0


@pytest.mark.timeout(20)
def test_the_wall_clock_starts_at_the_days_hour() -> None:
    async def main() -> int:
        return clock.localnow().hour

    assert run(main) == 8


@pytest.mark.timeout(20)
def test_executor_work_runs_at_once_on_the_loops_thread() -> None:
    async def main() -> tuple[int, int, float]:
        before = asyncio.get_running_loop().time()
        ident = await asyncio.to_thread(threading.get_ident)
        with pytest.raises(ZeroDivisionError):
            await asyncio.to_thread(lambda: 1 / 0)
        return ident, threading.get_ident(), asyncio.get_running_loop().time() - before

    worker, me, took = run(main)
    assert worker == me and took == 0.0


@pytest.mark.timeout(20)
def test_a_deadline_one_rounding_error_ahead_is_reached_while_others_keep_busy() -> None:
    """`sleep(due - now)` with `due` one float step ahead, beside a task that wakes often.

    asyncio runs a timer up to its clock's resolution early; on a clock that does not move by
    itself the sleeper then woke before its deadline, slept one float step again, and so on:
    found as a sweep run spinning for ever (the charging control's next deadline 4.5e-13 s on).
    """

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(2074.5)
        due = math.nextafter(loop.time(), math.inf)
        woke = asyncio.Event()

        async def busy() -> None:  # a neighbour with work every turn for a while
            for _ in range(10_000):
                if woke.is_set():
                    return
                await asyncio.sleep(0)

        neighbour = asyncio.create_task(busy())
        spins = 0
        while (now := loop.time()) < due:
            spins += 1
            assert spins < 100, "the clock never reached the deadline"
            await asyncio.sleep(due - now)
        woke.set()
        await neighbour
        return due, loop.time()

    due, now = run(main)
    assert due <= now <= due + 2 * TIMER_SLACK_S


@pytest.mark.timeout(20)
def test_a_coroutine_run_eagerly_is_a_task_from_its_first_wait() -> None:
    """What finishes at once leaves no task; what waits goes on as one, results and errors too."""

    async def at_once(trail: list[str]) -> int:
        trail.append("ran")
        return 1

    async def waits(trail: list[str], fail: bool) -> int:
        trail.append("before")
        await asyncio.sleep(1.0)
        trail.append("after")
        await asyncio.sleep(0)
        if fail:
            raise ValueError("late")
        return 2

    async def cancelled(trail: list[str]) -> None:
        try:
            await asyncio.sleep(10.0)
        except asyncio.CancelledError:
            trail.append("cancelled")
            raise

    async def main() -> list[str]:
        loop, trail = asyncio.get_running_loop(), list[str]()
        assert run_eagerly(loop, at_once(trail)) is None
        assert trail == ["ran"]  # before this coroutine went on: no loop turn
        task = run_eagerly(loop, waits(trail, fail=False))
        assert task is not None and trail == ["ran", "before"]
        assert await task == 2 and trail[-1] == "after"
        failing = run_eagerly(loop, waits(trail, fail=True))
        assert failing is not None
        with pytest.raises(ValueError, match="late"):
            await failing
        victim = run_eagerly(loop, cancelled(trail))
        assert victim is not None
        await asyncio.sleep(0)
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        assert trail[-1] == "cancelled"
        return trail

    assert run(main)[:2] == ["ran", "before"]


@pytest.mark.timeout(20)
def test_a_deadline_slept_for_is_due_on_waking() -> None:
    """`sleep(due - now)` then `due <= now`: never a rounding error early (the spin it caused)."""

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        late = []
        due = loop.time()
        for _ in range(2000):
            due += 0.1 / 3
            await asyncio.sleep(max(0.0, due - loop.time()))
            assert due <= loop.time(), (due, loop.time())
            late.append(loop.time() - due)
        return late

    late = run(main, start=12345.678)
    assert max(late) <= 2 * TIMER_SLACK_S


@pytest.mark.timeout(30)
def test_bytes_on_loopback_are_never_overtaken_by_a_jump() -> None:
    """A reply within a 1 ms (virtual) timeout, 2,000 times: the clock waits for the socket."""

    async def main() -> int:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(100):
                w.write(data)
                await w.drain()
            w.close()
            await w.wait_closed()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        for _ in range(2000):
            await asyncio.sleep(0.7)  # the clock jumps between round trips
            w.write(b"0123456789")
            await asyncio.wait_for(r.readexactly(10), 0.001)
            n += 1
        w.close()
        await w.wait_closed()
        await asyncio.sleep(0.01)  # the echo sees the end and closes its side
        server.close()
        await server.wait_closed()
        return n

    with hogs(2):
        assert run(main) == 2000


# --- the broker ----------------------------------------------------------------------------------


@pytest.mark.timeout(10)
@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "+", "#", "$s", ""]), min_size=1, max_size=5),
    st.lists(st.sampled_from(["a", "b", "$s", ""]), min_size=1, max_size=5),
)
def test_topic_filters_match_as_paho_says(
    filter_levels: list[str], topic_levels: list[str]
) -> None:
    topic_filter, topic = "/".join(filter_levels), "/".join(topic_levels)
    if "#" in filter_levels[:-1]:
        return  # not a valid filter: `#` only last
    assert matches(topic_filter, topic) == topic_matches_sub(topic_filter, topic)


def _client(port: int, name: str, **kw: object) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=name,
        protocol=aiomqtt.ProtocolVersion.V5,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_the_broker_passes_properties_keeps_retained_and_honours_no_local() -> None:
    async with (
        MiniBroker() as broker,
        _client(broker.port, "a") as a,
        _client(broker.port, "b") as b,
    ):
        await a.publish("st/status", "online", qos=1, retain=True)
        await b.subscribe("st/#", qos=1)
        await a.subscribe("st/cmd/#", qos=1, options=None)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "fleet/replies"
        props.CorrelationData = b"req-1"
        await a.publish("st/cmd/ping", "{}", qos=1, properties=props)
        got = []
        async with asyncio.timeout(5):
            async for m in b.messages:
                got.append(m)
                if len(got) == 2:
                    break
        retained, cmd = got
        assert (str(retained.topic), retained.payload, retained.retain) == (
            "st/status",
            b"online",
            True,
        )
        assert str(cmd.topic) == "st/cmd/ping" and not cmd.retain
        assert cmd.properties is not None
        assert getattr(cmd.properties, "ResponseTopic", None) == "fleet/replies"
        assert getattr(cmd.properties, "CorrelationData", None) == b"req-1"
        assert broker.retained.keys() == {"st/status"}
        await a.publish("st/status", b"", qos=1, retain=True)  # an empty retained clears it
        async with asyncio.timeout(5):
            while "st/status" in broker.retained:  # noqa: ASYNC110 - the broker is on this loop
                await asyncio.sleep(0)


def _raw_connect(port: int, client_id: str, will_topic: str, will: bytes) -> socket.socket:
    """A CONNECT with a retained QoS 1 will, by hand (MQTT 5.0, section 3.1)."""
    cid, topic = client_id.encode(), will_topic.encode()
    var = b"\x00\x04MQTT\x05" + bytes([0x02 | 0x04 | 0x08 | 0x20]) + b"\x00\x3c" + b"\x00"
    payload = (
        len(cid).to_bytes(2, "big") + cid + b"\x00" + len(topic).to_bytes(2, "big") + topic
        + len(will).to_bytes(2, "big") + will
    )  # fmt: skip
    body = var + payload
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"\x10" + varint(len(body)) + body)
    assert sock.recv(5)[:1] == b"\x20"  # CONNACK
    return sock


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_a_lost_client_s_will_is_published_and_a_normal_disconnect_drops_it() -> None:
    async with MiniBroker() as broker, _client(broker.port, "watcher") as w:
        await w.subscribe("dev/+/status", qos=1)
        loop = asyncio.get_running_loop()
        lost = await loop.run_in_executor(
            None, _raw_connect, broker.port, "d1", "dev/d1/status", b"offline"
        )
        lost.close()  # no DISCONNECT: the will goes out
        polite = await loop.run_in_executor(
            None, _raw_connect, broker.port, "d2", "dev/d2/status", b"gone"
        )
        polite.sendall(b"\xe0\x00")  # DISCONNECT, normal: no will
        polite.close()
        async with asyncio.timeout(5):
            message = await anext(aiter(w.messages))
        assert (str(message.topic), message.payload) == ("dev/d1/status", b"offline")
        assert broker.retained["dev/d1/status"].payload == b"offline"
        await asyncio.sleep(0.05)
        assert "dev/d2/status" not in broker.retained


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_a_packet_it_does_not_take_closes_only_that_connection() -> None:
    async with MiniBroker() as broker, _client(broker.port, "ok") as ok:
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(
            None, socket.create_connection, ("127.0.0.1", broker.port)
        )
        sock.sendall(b"\x30\x02\x00\x00")  # PUBLISH before CONNECT
        assert await loop.run_in_executor(None, sock.recv, 10) == b""  # closed
        sock.close()
        await ok.publish("still/up", "1", qos=1)


# --- the same answer at any load -----------------------------------------------------------------


@contextlib.contextmanager
def hogs(n: int) -> Iterator[None]:
    """`n` processes that keep a core busy each."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _cars(report: Report) -> list[tuple[object, ...]]:
    # Swap ids are random UUIDs by design; everything else must be the same.
    return [
        (c.vehicle_id, c.pack_type, c.soc, c.arrived_s, c.outcome, c.wait_s, c.swap_s, c.reason)
        for c in report.cars
    ]


@pytest.mark.timeout(240)
def test_the_same_scenario_gives_the_same_report_car_by_car_with_the_cpu_busy(
    tmp_path: Path,
) -> None:
    loaded = apply_overrides(load_scenario(SCENARIOS / "pss13.toml"), start_h=8, duration_h=0.25)
    quiet = run_virtual(loaded, tmp_path / "quiet")
    with hogs(2):
        busy = run_virtual(loaded, tmp_path / "busy")
    fast = run_virtual(apply_overrides(loaded, speed=5000), tmp_path / "fast")
    assert quiet.clock == "virtual" and quiet.served >= 3
    assert _cars(quiet) == _cars(busy) == _cars(fast)
    assert quiet.step_s == busy.step_s == fast.step_s
    assert quiet.samples == busy.samples
    assert (quiet.energy_kwh, quiet.peak_grid_kw) == (busy.energy_kwh, busy.peak_grid_kw)
    assert not any(a.code == "station_io_stale" for a in busy.alarms)
    # One bay: no site's merge, every car at bay 1.
    assert quiet.station.bays == 1 and quiet.bays == []
    assert {c.bay for c in quiet.cars} == {1}


# --- a study: variants x seeds ------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_intervals_are_students_t() -> None:
    from simstation.study import interval

    assert interval([5.0]) == interval([5.0]).model_copy(update={"half": None})
    iv = interval([10.0, 12.0, 14.0])  # mean 12, s = 2, t(2) = 4.303: 4.303 * 2 / sqrt(3)
    assert iv.mean == 12.0 and iv.half == pytest.approx(4.969, abs=1e-3)
    assert interval([3.0, 3.0, 3.0]).half == 0.0


@pytest.mark.timeout(10)
def test_vary_takes_toml_values_and_names_what_is_wrong() -> None:
    from controller.errors import ConfigError
    from simstation.study import parse_vary, variants, with_changes

    vary = parse_vary(["station.charger_max_a=100,150", "station.packs.STD75=11,13"])
    assert vary == {"station.charger_max_a": [100, 150], "station.packs.STD75": [11, 13]}
    assert len(variants(vary)) == 4
    for bad, says in [
        (["station.slots"], "must be KEY=V1,V2"),
        (["station.slots=1,,"], "values are not TOML"),
        (["a=1", "a=2"], "given twice"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_vary(bad)
        assert says in "\n".join(err.value.lines()), bad
    loaded = load_scenario(SCENARIOS / "pss13.toml")
    assert with_changes(loaded, {"station.charger_max_a": 100}, 7).scenario.seed == 7
    with pytest.raises(ConfigError) as err:
        with_changes(loaded, {"station.slots": 3}, 1)  # 13 packs need 14 slots
    assert "station" in "\n".join(err.value.lines())


@pytest.mark.timeout(240)
def test_a_study_runs_every_variant_with_every_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from simstation.simulate import main

    args = ["--start-h", "8", "--duration-h", "0.05", "--seeds", "2", "--jobs", "2"]
    code = main(["pss13", "--out", str(tmp_path), *args, "--vary", "station.charger_max_a=100,150"])
    assert code == 0
    study = json.loads((tmp_path / "study.json").read_text())
    assert [v["name"] for v in study["variants"]] == ["charger_max_a-100", "charger_max_a-150"]
    for v in study["variants"]:
        assert v["seeds"] == [13, 14] and len(v["runs"]) == 2
        assert v["figures"]["served"]["half"] is not None
    for name in ("charger_max_a-100", "charger_max_a-150"):
        for seed in (13, 14):
            assert (tmp_path / name / f"seed-{seed}" / "report.json").is_file()
    assert "| charger_max_a-150 |" in capsys.readouterr().out
    page = (tmp_path / "study.html").read_text()
    assert page.count("<svg") == 2 and "charger_max_a-100" in page and "<script" not in page
    assert main(["pss13", "--out", str(tmp_path), "--clock", "wall", "--seeds", "2"]) == 2


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("busy", "waiting", "grid_kw", "usable_kw", "binding"),
    [
        (0.95, 0.0, 100.0, 740.0, "bay"),
        (0.5, 0.3, 730.0, 740.0, "charged packs: grid"),
        (0.5, 0.3, 400.0, 740.0, "charged packs: chargers"),
        (0.5, 0.3, 400.0, None, "charged packs: chargers"),
        (0.3, 0.05, 700.0, 740.0, "none"),
    ],
)
def test_the_binding_limit_of_an_hour(
    busy: float, waiting: float, grid_kw: float, usable_kw: float | None, binding: str
) -> None:
    from simstation.runreport import binding_limit

    assert binding_limit(busy, waiting, grid_kw, usable_kw) == binding


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_no_local_and_unsubscribe_are_honoured() -> None:
    from paho.mqtt.subscribeoptions import SubscribeOptions

    async with (
        MiniBroker() as broker,
        _client(broker.port, "a") as a,
        _client(broker.port, "b") as b,
    ):
        await a.subscribe("st/#", options=SubscribeOptions(qos=1, noLocal=True))
        await b.subscribe("gone/#", qos=1)
        await b.subscribe("mark", qos=1)
        await b.unsubscribe("gone/#")
        await a.publish("st/mine", "1", qos=1)  # not back to its sender
        await a.publish("gone/x", "1", qos=1)  # nobody subscribes any more
        await a.publish("mark", "1", qos=1)
        await b.publish("st/theirs", "2", qos=1)
        async with asyncio.timeout(5):
            first_a = await anext(aiter(a.messages))
            first_b = await anext(aiter(b.messages))
        assert str(first_a.topic) == "st/theirs"
        assert str(first_b.topic) == "mark"


@pytest.mark.timeout(60)
def test_sigterm_ends_a_virtual_run_with_one_line_and_exit_1(tmp_path: Path) -> None:
    """SIGTERM reaches the in-process daemon, which stops; the run says so and exits 1."""
    import signal
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simstation.simulate",
            "pss13",
            "--out",
            str(tmp_path),
            "--duration-h",
            "2",
            "--no-html",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 40
    while not (tmp_path / "fleet.log").exists() and not (tmp_path / "state").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # the daemon's signal handlers are in place once it runs
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=40)
    assert proc.returncode == 1, err
    assert "simulate: the run stopped:" in err and "Traceback" not in err, err


@pytest.mark.timeout(60)
def test_a_study_killed_leaves_no_worker_running(tmp_path: Path) -> None:
    """SIGKILL to `simulate --vary` (nothing can catch it): its worker processes die with it."""
    import signal
    import time

    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "simstation.simulate", "pss13", "--out", str(tmp_path)),
            *("--duration-h", "2", "--no-html", "--jobs", "2"),
            *("--vary", "station.charger_max_a=100,150"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def children() -> list[int]:
        pids = []
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                fields = dict(
                    line.split(":\t", 1)
                    for line in status.read_text().splitlines()
                    if ":\t" in line
                )
                if fields.get("PPid", "").strip() == str(proc.pid):
                    pids.append(int(status.parent.name))
        return pids

    deadline = time.monotonic() + 40
    while len(workers := children()) < 2:  # the pool's workers (and its resource tracker)
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    while alive := [p for p in workers if Path(f"/proc/{p}").exists()]:
        # A zombie is dead (reaped by init once it adopts it).
        if all(
            "\tZ" in Path(f"/proc/{p}/status").read_text()
            for p in alive
            if Path(f"/proc/{p}/status").exists()
        ):
            break
        assert time.monotonic() < deadline + 10, f"still running: {alive}"
        time.sleep(0.05)


@pytest.mark.timeout(10)
def test_the_brokers_packet_ids_wrap_without_zero_and_hold_nothing() -> None:
    """1..65535, then 1 again (0 is not a packet id); the session keeps one int, not a pass."""
    from simstation.minibroker import _Session

    session = _Session(MiniBroker())
    ids = [session.next_id() for _ in range(65535 * 2 + 1)]
    assert ids[0] == 1 and ids[65534] == 65535 and ids[65535] == 1 and ids[-1] == 1
    assert min(ids) == 1 and max(ids) == 65535
    assert session.last_id == 1
