"""Simulated traffic: a fleet back end and its drivers, sending vehicles to swap, one by one.

As the drivers, it drives a vehicle with a low pack of a type the station stocks into the
simulated station's bay (`SimStation.arrive`, a fresh vehicle id and pack serial each time).
As the fleet back end, it authorises the swap over MQTT v5: `start_swap` on
`<root>/cmd/start_swap` with a Response Topic and Correlation Data, the reply reported. It then
waits for the swap to end (its `swap_<outcome>` event on `<root>/events`, or the swap gone from
the retained `<root>/state`) and the vehicle to drive out, pauses, and sends the next one.

Nothing stops it: a refused request is reported and sent again later (the vehicle waits in the
bay); an unanswered one (the daemon not connected yet) is sent again; a broker that is not up
yet, or goes away, is reconnected to with backoff, and the vehicle in the bay is taken up
again where it was (a swap already running for it is adopted from the station state). A swap
that stops in fault, E-stop or recovery is reported and waited out: that is an operator's call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import random
import socket
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.swap.phase import STOPPED as SWAP_STOPPED
from controller.swap.phase import Phase
from drivers import clock
from drivers.backoff import Backoff
from simstation.plc import SimPlc, SimVehicle
from simstation.station import SimStation

if TYPE_CHECKING:
    from simstation.dispatch import Dispatch

ENDINGS = ("swap_completed", "swap_aborted", "swap_failed")  # events that end a swap
STOPPED = frozenset(phase.value for phase in SWAP_STOPPED)  # an operator decides
POLL_S = 0.05  # the bay is looked at this often (the vehicle is simulated in-process)
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 2.0
REMEMBERED_ENDINGS = 100
# A car gives up once its wait is past `max_wait_s`: it is looked at this much after.
GIVE_UP_AFTER_S = 0.001
EVENT_GRACE_S = 2.0  # a swap gone from the state is taken as ended if its event is this late

Say = Callable[[str], None]


@dataclass(frozen=True)
class TrafficOptions:
    """How the traffic behaves; times in real seconds."""

    interval_s: float = 3.0  # from a vehicle leaving the bay to the next one arriving
    retry_s: float = 3.0  # after a refused or unanswered start_swap, before asking again
    reply_timeout_s: float = 5.0  # a start_swap not answered by then counts as unanswered
    leave_grace_s: float = 10.0  # after its swap ended, a vehicle still parked drives off
    soc_min: float = 5.0  # the arriving vehicles' packs, SoC in %
    soc_max: float = 25.0
    seed: int = 2

    def __post_init__(self) -> None:
        if min(self.interval_s, self.retry_s) < 0 or self.reply_timeout_s <= 0:
            raise ValueError("traffic times must be >= 0 (the reply timeout > 0)")
        if not 0 <= self.soc_min <= self.soc_max <= 100:
            raise ValueError("traffic SoC range must be 0 <= soc_min <= soc_max <= 100")


@dataclass
class TrafficStats:
    """What the traffic has done so far."""

    vehicles: int = 0
    requests: int = 0
    refused: int = 0
    unanswered: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


def stocked_types(sim: SimStation) -> list[str]:
    """The pack types in the simulated station's racks (a station stocks what it holds)."""
    types = {
        pack.pack_type
        for rack in sim.racks.values()
        for slot in rack.slots
        if (pack := rack.pack_in(slot)) is not None
    }
    return sorted(types)


class Traffic:
    """Vehicles for the simulated station, each authorised over MQTT; `run()` until cancelled."""

    def __init__(
        self,
        sim: SimStation,
        *,
        host: str,
        port: int,
        root: str,
        say: Say,
        pack_types: Iterable[str] | None = None,
        options: TrafficOptions | None = None,
    ) -> None:
        if sim.plc is None:
            raise ValueError("traffic needs a simulated station with a PLC (a bay)")
        self.sim = sim
        self.plc: SimPlc = sim.plc
        self.host, self.port, self.root = host, port, root
        self.say = say
        self.options = options or TrafficOptions()
        self.pack_types = sorted(pack_types) if pack_types is not None else stocked_types(sim)
        if not self.pack_types:
            raise ValueError("the station stocks no packs: no pack type to send vehicles with")
        self.stats = TrafficStats()
        self.client_id = f"demo-fleet-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.reply_topic = f"fleet/{self.client_id}/replies"
        self._rng = random.Random(self.options.seed)  # noqa: S311 - simulation
        self._status = "?"
        self._state: dict[str, Any] | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ended: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self._vehicle: SimVehicle | None = None  # the vehicle being served
        self._swap_id: str | None = None  # its swap, once authorised
        self._asked_at = 0.0
        self._next_at = 0.0  # monotonic time the next vehicle may arrive
        # Called with every event (`<root>/events`, parsed) and every new state, as they come.
        self.on_event: list[Callable[[dict[str, Any]], None]] = []
        self.on_state: list[Callable[[dict[str, Any]], None]] = []
        self._session_client: aiomqtt.Client | None = None  # while connected

    # --- the connection ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (again and again), and send vehicles for ever."""
        backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S, rng=self._rng)
        failures = 0
        while True:
            connected = False
            try:
                async with self._client() as client:
                    connected = True
                    if failures:
                        self.say(f"fleet: connected to the broker {self.host}:{self.port}")
                    failures = 0
                    backoff.reset()
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                failures += 1
                if connected:
                    self.say(f"fleet: lost the broker ({exc}); reconnecting")
                elif failures == 1 or failures % 20 == 0:
                    self.say(
                        f"fleet: broker {self.host}:{self.port} not reachable ({exc});"
                        f" retrying (attempt {failures})"
                    )
            await asyncio.sleep(backoff.next())

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=10,
            timeout=5.0,
            # Without TCP_NODELAY a QoS 1 round trip stalls on Nagle.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def command(self, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Send a command over the fleet's connection; its reply (None: not connected, none)."""
        client = self._session_client
        if client is None:
            return None
        return await self._request(client, name, body)

    async def _session(self, client: aiomqtt.Client) -> None:
        self._session_client = client
        for topic in (self.reply_topic, *(f"{self.root}/{t}" for t in ("status", "state"))):
            await client.subscribe(topic, qos=1)
        await client.subscribe(f"{self.root}/events", qos=1)
        reader = asyncio.create_task(self._read(client), name="fleet-reader")
        driver = asyncio.create_task(self._drive(client), name="fleet-driver")
        try:
            done, _ = await asyncio.wait({reader, driver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._session_client = None
            for task in (reader, driver):
                task.cancel()
            await asyncio.gather(reader, driver, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        raise aiomqtt.MqttError("the connection ended")

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic == f"{self.root}/status":
                self._status = payload.decode(errors="replace")
                continue
            try:
                body = json.loads(payload) if payload else None
            except ValueError:
                continue
            if not isinstance(body, dict):
                continue
            if topic == self.reply_topic:
                props = message.properties
                correlation = getattr(props, "CorrelationData", None) if props else None
                key = correlation.decode(errors="replace") if correlation else body.get("id")
                future = self._replies.get(str(key))
                if future is not None and not future.done():
                    future.set_result(body)
            elif topic == f"{self.root}/state":
                self._state = body
                for hook in self.on_state:
                    hook(body)
            elif topic == f"{self.root}/events":
                for hook in self.on_event:
                    hook(body)
                if body.get("kind") in ENDINGS:
                    data = body.get("data") or {}
                    self._ended[str(data.get("swap_id"))] = (str(body["kind"]), data)
                    while len(self._ended) > REMEMBERED_ENDINGS:
                        self._ended.popitem(last=False)

    # --- the vehicles --------------------------------------------------------------------------

    async def _drive(self, client: aiomqtt.Client) -> None:
        while True:
            vehicle = self._vehicle
            if vehicle is not None and self._swap_id is None and self.plc.vehicle is not vehicle:
                vehicle = self._vehicle = None  # it left unauthorised (fault injection)
            if vehicle is None:
                await self._bay_free()
                vehicle = self._vehicle = self._arrive()
            if self._swap_id is None:
                self._swap_id = await self._authorise(client, vehicle)
            await self._until_done(vehicle, self._swap_id)
            self._vehicle = self._swap_id = None
            self._next_at = clock.monotonic() + self.options.interval_s

    async def _bay_free(self) -> None:
        """Until the bay is empty and the pause since the last vehicle is over."""
        said = False
        while clock.monotonic() < self._next_at or self.plc.vehicle is not None:
            other = self.plc.vehicle
            if other is not None and not said and clock.monotonic() >= self._next_at:
                self.say(f"fleet: the bay is taken by {other.vehicle_id}; waiting")
                said = True
            await asyncio.sleep(POLL_S)

    def _arrive(self) -> SimVehicle:
        self.stats.vehicles += 1
        n = self.stats.vehicles
        pack_type = self._rng.choice(self.pack_types)
        soc = round(self._rng.uniform(self.options.soc_min, self.options.soc_max), 1)
        vehicle = self.sim.arrive(f"EV-{n:04d}", serial=f"VP-{n:05d}", pack_type=pack_type, soc=soc)
        self.say(
            f"fleet: {vehicle.vehicle_id} drives into the bay with pack VP-{n:05d}"
            f" ({pack_type}, {soc:.0f} %)"
        )
        return vehicle

    async def _authorise(self, client: aiomqtt.Client, vehicle: SimVehicle) -> str:
        """Ask for the vehicle's swap until the station takes it; the swap id."""
        pack = vehicle.pack
        pack_type = pack.pack_type if pack is not None else self.pack_types[0]
        attempt = 0
        while True:
            adopted = self._running_for(vehicle.vehicle_id)
            if adopted is not None:
                return adopted
            await self._station_ready(self.options.retry_s)
            attempt += 1
            request_id = f"{vehicle.vehicle_id}-{attempt}-{uuid.uuid4().hex[:8]}"
            if attempt == 1:
                self._asked_at = clock.monotonic()
            reply = await self._request(
                client,
                "start_swap",
                {"id": request_id, "vehicle_id": vehicle.vehicle_id, "pack_type": pack_type},
            )
            what = f"fleet: start_swap {vehicle.vehicle_id} ({pack_type})"
            if reply is None:
                self.stats.unanswered += 1
                self.say(
                    f"{what}: no answer in {self.options.reply_timeout_s:g} s (station"
                    f" {self._status}); asking again"
                )
                continue
            code, message = reply.get("code"), reply.get("message")
            result = reply.get("result")
            if reply.get("ok") and isinstance(result, dict) and "swap_id" in result:
                self.say(f"{what}: {code}: {message}")
                return str(result["swap_id"])
            self.stats.refused += 1
            self.say(f"{what}: {code}: {message}; asking again in {self.options.retry_s:g} s")
            await asyncio.sleep(self.options.retry_s)

    def _running_for(self, vehicle_id: str) -> str | None:
        """The swap the station is running for this vehicle, if any (an answer lost)."""
        swap = (self._state or {}).get("swap")
        if isinstance(swap, dict) and swap.get("vehicle_id") == vehicle_id:
            return str(swap.get("swap_id"))
        return None

    async def _station_ready(self, timeout: float) -> None:  # noqa: ASYNC109 - a polled wait
        """Until the station is online, idle and unblocked (or `timeout`: ask anyway)."""
        deadline = clock.monotonic() + timeout
        while clock.monotonic() < deadline:
            state = self._state or {}
            if (
                self._status == "online"
                and state.get("phase") == Phase.IDLE
                and not state.get("blocking")
            ):
                return
            await asyncio.sleep(POLL_S)

    async def _request(
        self, client: aiomqtt.Client, name: str, body: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Publish a command with a Response Topic; its reply, or None if none came in time."""
        request_id = str(body["id"])
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = request_id.encode()
        self.stats.requests += 1
        try:
            await client.publish(
                f"{self.root}/cmd/{name}", json.dumps(body), qos=1, properties=props
            )
            async with asyncio.timeout(self.options.reply_timeout_s):
                return await future
        except TimeoutError:
            return None
        finally:
            self._replies.pop(request_id, None)

    async def _until_done(self, vehicle: SimVehicle, swap_id: str) -> None:
        """Until the swap has ended and the vehicle has left the bay."""
        seen = False  # the state has shown this swap: its disappearance ends it too
        said_phase: str | None = None
        ended_at: float | None = None
        left_state_at: float | None = None  # when the state stopped showing it
        outcome: tuple[str, dict[str, Any]] | None = None
        while True:
            swap = (self._state or {}).get("swap")
            ours = isinstance(swap, dict) and swap.get("swap_id") == swap_id
            if ours:
                assert isinstance(swap, dict)
                seen = True
                phase = str(swap.get("phase"))
                if phase in STOPPED and phase != said_phase:
                    causes = "; ".join((self._state or {}).get("blocking") or [])
                    self.say(
                        f"fleet: {vehicle.vehicle_id}'s swap stopped ({phase}): {causes};"
                        " waiting for an operator"
                    )
                said_phase = phase
            if seen and not ours and left_state_at is None:
                left_state_at = clock.monotonic()
            if outcome is None:
                outcome = self._ended.get(swap_id)
                # Gone from the state and no event after a while: the event was missed (a
                # reconnect). The two are published independently: the event may come second.
                late = (
                    left_state_at is not None and clock.monotonic() - left_state_at > EVENT_GRACE_S
                )
                if outcome is None and late:
                    outcome = ("swap_ended", {})
                if outcome is not None:
                    ended_at = clock.monotonic()
            gone = self.plc.vehicle is not vehicle
            if outcome is not None and gone:
                self._report(vehicle, swap_id, outcome)
                return
            waited = clock.monotonic() - (ended_at or clock.monotonic())
            if outcome is not None and waited > self.options.leave_grace_s and self.plc.lift.down:
                # Never released (a swap cleared by an operator): on the ground, it drives off.
                self.say(
                    f"fleet: {vehicle.vehicle_id} was not released after its swap ended;"
                    " the driver leaves"
                )
                self.plc.leave_early()
            await asyncio.sleep(POLL_S)

    def _report(
        self, vehicle: SimVehicle, swap_id: str, outcome: tuple[str, dict[str, Any]]
    ) -> None:
        kind, data = outcome
        name = kind.removeprefix("swap_")
        self.stats.outcomes[name] = self.stats.outcomes.get(name, 0) + 1
        took = clock.monotonic() - self._asked_at
        packs = ""
        if data.get("pack_out") or data.get("pack_in"):
            packs = f": pack {data.get('pack_out') or '-'} out, {data.get('pack_in') or '-'} in"
        reason = f" ({data['reason']})" if data.get("reason") else ""
        left = vehicle.pack.serial if vehicle.pack is not None else "no pack"
        self.say(
            f"fleet: {vehicle.vehicle_id} swap {swap_id[:8]} {name}{packs}{reason};"
            f" left with {left}, {took:.1f} s after asking"
        )


# --- a scenario's cars: arrivals at given times, a queue, an operator ---------------------------


@dataclass
class Car:
    """A car of a simulated day: when it comes, what it brings, and what became of it.

    Times are simulated seconds since the simulated day's midnight.
    """

    vehicle_id: str
    arrive_s: float
    pack_type: str
    soc: float
    outcome: str | None = None  # served, failed, turned_away; None: still waiting or in the bay
    accepted_s: float | None = None  # start_swap accepted
    ended_s: float | None = None  # its swap's end event
    swap_id: str | None = None
    reason: str | None = None  # the latest refusal, or why its swap failed
    refusals: int = 0
    next_ask_s: float = 0.0
    left_s: float | None = None  # when it gave up (turned away)
    ready_when_refused: int | None = None  # its type's ready packs when it was last refused
    bay: int = 1  # the bay whose queue it joined (a site of several: `simstation.dispatch`)


@dataclass(frozen=True)
class FleetOptions:
    """How a scenario's cars and operator behave; times in simulated seconds."""

    max_wait_s: float = 900.0  # a car not started by then leaves (turned away)
    retry_s: float = 60.0  # a refused start_swap is asked again this much later
    # ... or as soon as the station's state shows more ready packs of its type than when it was
    # refused (a back end watching `state`, or a driver watching the station's screen).
    ask_when_ready: bool = True
    pack_kwh: Mapping[str, float] = field(default_factory=dict)  # by type (else 75 kWh)
    reset_after_s: float = 300.0  # the operator resets a stopped swap this long after it stopped
    leave_grace_s: float = 120.0  # a vehicle still parked this long after its swap drives off
    poll_s: float = 0.005  # real seconds: how often the bay and the queue are looked at


class Fleet(Traffic):
    """The cars of a scenario, FIFO to the one bay, and an operator who resets faults.

    The head of the queue asks for its swap (`start_swap`) when the station is idle; accepted,
    it drives into the bay and the real swap runs; refused, it asks again `retry_s` later (or
    once the station's state shows a pack of its type come ready since). A car
    that has waited `max_wait_s` without its swap starting gives up. A swap that stops in
    `fault` or `estop` is reset by the operator `reset_after_s` after it stopped (the swap then
    aborts, the car leaves with its own pack: `failed`). `begin(now)` starts the day: `now()`
    is the simulated time of day.
    """

    def __init__(
        self,
        sim: SimStation,
        cars: Iterable[Car],
        *,
        host: str,
        port: int,
        root: str,
        say: Say,
        fleet: FleetOptions | None = None,
        dispatch: Dispatch | None = None,
        bay: int = 1,
    ) -> None:
        """`dispatch`: the cars come from a site's dispatch (several bays), not from `cars`."""
        every = dispatch.cars if dispatch is not None else cars
        types = sorted({c.pack_type for c in every}) or None
        self.cars = [] if dispatch is not None else sorted(cars, key=lambda c: c.arrive_s)
        self.dispatch, self.bay = dispatch, bay
        super().__init__(sim, host=host, port=port, root=root, say=say, pack_types=types)
        self.fleet = fleet or FleetOptions()
        self.client_id = f"sim-fleet-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.reply_topic = f"fleet/{self.client_id}/replies"
        self.queue: collections.deque[Car] = collections.deque()
        self.operator_log: list[tuple[float, str]] = []  # (time of day, what the operator did)
        self.serving: Car | None = None
        self._pending = list(reversed(self.cars))  # not arrived yet, next one last
        self._vehicle_of: SimVehicle | None = None
        self._now: Callable[[], float] | None = None
        self._started = asyncio.Event()
        self._changed = asyncio.Event()
        self._end_at: dict[str, float] = {}  # swap id -> time of day of its end event
        self.on_event.append(self._on_fleet_event)
        self.on_state.append(lambda _: self._changed.set())
        if dispatch is not None:
            dispatch.join(self)

    # --- the clock ------------------------------------------------------------------------------

    def begin(self, now: Callable[[], float]) -> None:
        """The day starts: `now()` gives the simulated time of day (seconds since midnight)."""
        self._now = now
        self._started.set()

    def now(self) -> float:
        """Simulated seconds since midnight (0 before `begin`)."""
        return self._now() if self._now is not None else 0.0

    def time_of(self, at: object) -> float | None:
        """The simulated time of day of a station timestamp (ISO 8601), or None."""
        if not isinstance(at, str):
            return None
        try:
            stamp = datetime.fromisoformat(at).timestamp()
        except ValueError:
            return None
        return self.now() - (clock.wall() - stamp) * self.sim.clock.speed

    @property
    def counts(self) -> dict[str, int]:
        """Cars per outcome so far (`waiting`: in the queue or in the bay)."""
        out = {"arrived": len(self.cars) - len(self._pending)}
        for name in ("served", "failed", "turned_away"):
            out[name] = sum(1 for c in self.cars if c.outcome == name)
        out["waiting"] = out["arrived"] - out["served"] - out["failed"] - out["turned_away"]
        return out

    def _on_fleet_event(self, event: dict[str, Any]) -> None:
        if event.get("kind") in ENDINGS:
            swap_id = str((event.get("data") or {}).get("swap_id"))
            at = self.time_of(event.get("at"))
            if at is not None:
                self._end_at.setdefault(swap_id, at)
        self._changed.set()

    async def _pause(self, seconds: float | None = None) -> None:
        """Until something changes on the station, the queue's next moment, or one poll.

        The queue's moments (a car arriving, one giving up, the head's next ask) are woken for
        exactly: a car's wait does not depend on how often the fleet looks.
        """
        self._changed.clear()
        if seconds is None:
            seconds = min(self.fleet.poll_s, self.sim.clock.real(self._due_in()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()

    def _due_in(self) -> float:
        """Simulated seconds until the queue changes by itself (inf: not before news)."""
        if self._now is None:
            return math.inf
        times = [car.arrive_s + self.fleet.max_wait_s + GIVE_UP_AFTER_S for car in self.queue]
        if self._pending:
            times.append(self._pending[-1].arrive_s)
        if self.dispatch is not None and (next_s := self.dispatch.next_arrival_s()) is not None:
            times.append(next_s)
        if self.queue:
            times.append(self.queue[0].next_ask_s)
        # A moment passed is not due again: a head that may ask waits for the bay (news).
        now = self.now()
        return min((t for t in times if t > now), default=math.inf) - now

    # --- the queue ------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Cars that have arrived join the queue; those that waited too long leave it."""
        now = self.now()
        if self.dispatch is not None:
            self.dispatch.admit(now)
        while self._pending and self._pending[-1].arrive_s <= now:
            self.queue.append(self._pending.pop())
        for car in list(self.queue):
            if now - car.arrive_s > self.fleet.max_wait_s:
                self.queue.remove(car)
                car.outcome, car.left_s = "turned_away", now
                car.reason = car.reason or "the station was busy"
                self.say(f"fleet: {car.vehicle_id} gave up after {now - car.arrive_s:.0f} s")

    def _idle(self) -> bool:
        state = self._state or {}
        return (
            self._status == "online"
            and state.get("phase") == Phase.IDLE
            and self.plc.vehicle is None
        )

    async def _drive(self, client: aiomqtt.Client) -> None:
        await self._started.wait()
        while True:
            if self.serving is not None:
                await self._serve(client, self.serving)
                self.serving = self._vehicle_of = None
                continue
            self._admit()
            head = self.queue[0] if self.queue else None
            if head is None or not self._idle() or not self._may_ask(head):
                await self._pause()
                continue
            await self._ask(client, head)

    def ahead(self) -> list[Car]:
        """The cars queued before a newcomer (not the one in the bay)."""
        return list(self.queue)

    def busy(self) -> bool:
        """Whether a car is in the bay (its swap under way)."""
        return self.serving is not None

    def take(self, car: Car) -> None:
        """`car` joins this bay's queue (from the site's dispatch)."""
        self.cars.append(car)
        self.queue.append(car)
        self._changed.set()

    def ready_of(self, pack_type: str) -> int:
        """Dispensable packs of a type, as the station last said."""
        ready = (self._state or {}).get("packs_ready") or {}
        count = ready.get(pack_type, 0) if isinstance(ready, dict) else 0
        return count if isinstance(count, int) else 0

    def _may_ask(self, car: Car) -> bool:
        if self.now() >= car.next_ask_s:
            return True
        return (
            self.fleet.ask_when_ready
            and car.ready_when_refused is not None
            and self.ready_of(car.pack_type) > car.ready_when_refused
        )

    async def _ask(self, client: aiomqtt.Client, car: Car) -> None:
        request_id = f"{car.vehicle_id}-{car.refusals + 1}-{uuid.uuid4().hex[:8]}"
        reply = await self._request(
            client,
            "start_swap",
            {"id": request_id, "vehicle_id": car.vehicle_id, "pack_type": car.pack_type},
        )
        if reply is None:
            self.stats.unanswered += 1
            return
        result = reply.get("result")
        if reply.get("ok") and isinstance(result, dict) and "swap_id" in result:
            if self.now() - car.arrive_s > self.fleet.max_wait_s:
                await self._gave_up_meanwhile(client, car, str(result["swap_id"]))
                return
            car.accepted_s = self.now()
            car.swap_id = str(result["swap_id"])
            self.queue.remove(car)
            self.stats.vehicles += 1
            n = self.stats.vehicles
            self._vehicle_of = self.sim.arrive(
                car.vehicle_id,
                serial=f"VP-{n:05d}",
                pack_type=car.pack_type,
                soc=car.soc,
                capacity_kwh=self.fleet.pack_kwh.get(car.pack_type, 75.0),
            )
            self.serving = car
            return
        self.stats.refused += 1
        car.refusals += 1
        car.reason = str(reply.get("message") or reply.get("code"))
        # Busy: the last swap is ending; anything else (no pack, blocked): a minute later.
        car.next_ask_s = self.now() + (0.0 if reply.get("code") == "busy" else self.fleet.retry_s)
        car.ready_when_refused = self.ready_of(car.pack_type)

    async def _gave_up_meanwhile(self, client: aiomqtt.Client, car: Car, swap_id: str) -> None:
        """The car's patience ran out while its start_swap was answered: it has left.

        Never served after its give-up time; the swap started for nobody is cancelled.
        """
        self.queue.remove(car)
        car.outcome, car.reason = "turned_away", "gave up while its request was answered"
        car.left_s = self.now()
        self.say(f"fleet: {car.vehicle_id} left before its swap {swap_id} could start")
        await self._request(
            client, "abort", {"id": f"{swap_id}-left-{uuid.uuid4().hex[:6]}",
                              "reason": "the driver left"},
        )  # fmt: skip

    async def _serve(self, client: aiomqtt.Client, car: Car) -> None:
        """Until the car's swap has ended and the car has left; the operator acts meanwhile."""
        vehicle = self._vehicle_of
        assert car.swap_id is not None
        stopped_since: float | None = None
        next_try = 0.0
        ended_at: float | None = None
        while True:
            self._admit()
            now = self.now()
            swap = (self._state or {}).get("swap")
            phase = swap.get("phase") if isinstance(swap, dict) else None
            ours = isinstance(swap, dict) and swap.get("swap_id") == car.swap_id
            if ours and phase in STOPPED:
                stopped_since = now if stopped_since is None else stopped_since
                if now - stopped_since >= self.fleet.reset_after_s and now >= next_try:
                    next_try = now + 60.0
                    await self._operate(client, str(phase))
            else:
                stopped_since = None
            outcome = self._ended.get(car.swap_id)
            gone = vehicle is None or self.plc.vehicle is not vehicle
            if outcome is not None:
                ended_at = now if ended_at is None else ended_at
                if gone:
                    self._finish(car, outcome)
                    return
                if now - ended_at > self.fleet.leave_grace_s and self.plc.lift.down:
                    self.say(f"fleet: {car.vehicle_id} was not released; the driver leaves")
                    self.plc.leave_early()
            await self._pause()

    async def _operate(self, client: aiomqtt.Client, phase: str) -> None:
        name, body = ("recover", {"decision": "abort"}) if phase == Phase.RECOVERY_REQUIRED else (
            "reset_fault", {})  # fmt: skip
        request = {"id": f"op-{uuid.uuid4().hex[:12]}", "by": "simulated operator", **body}
        reply = await self._request(client, name, request)
        what = "no answer" if reply is None else f"{reply.get('code')}: {reply.get('message')}"
        self.operator_log.append((self.now(), f"operator: {name} ({phase}): {what}"))
        self.say(f"fleet: operator {name} ({phase}): {what}")

    def _finish(self, car: Car, outcome: tuple[str, dict[str, Any]]) -> None:
        kind, data = outcome
        name = kind.removeprefix("swap_")
        self.stats.outcomes[name] = self.stats.outcomes.get(name, 0) + 1
        car.outcome = "served" if kind == "swap_completed" else "failed"
        car.ended_s = self._end_at.get(str(car.swap_id), self.now())
        if car.outcome == "failed":
            car.reason = str(data.get("reason") or name)
