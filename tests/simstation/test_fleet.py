"""The simulated fleet: a car is never served after its give-up time."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from simstation.traffic import Car, Fleet, FleetOptions


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_car_whose_patience_ran_out_during_its_request_is_not_served() -> None:
    """The station accepts `start_swap` only after the car's give-up time (a slow round trip):
    the car has left, nobody drives in, and the swap started for nobody is aborted."""
    clock = [0.0]
    arrived: list[str] = []
    sim: Any = SimpleNamespace(plc=object(), arrive=lambda vid, **_kw: arrived.append(vid))
    car = Car("EV-1", arrive_s=0.0, pack_type="STD75", soc=20.0)
    fleet = Fleet(sim, [car], host="x", port=1, root="r", say=lambda _s: None,
                  fleet=FleetOptions(max_wait_s=900.0))  # fmt: skip
    fleet.begin(lambda: clock[0])
    fleet.queue.append(car)
    sent: list[tuple[str, dict[str, Any]]] = []

    async def request(_client: Any, name: str, body: dict[str, Any]) -> dict[str, Any]:
        sent.append((name, body))
        if name == "start_swap":
            clock[0] = 901.0  # the answer came after the car's patience ran out
            return {"ok": True, "result": {"swap_id": "S-1"}}
        return {"ok": True, "result": {}}

    fleet._request = request  # type: ignore[method-assign,assignment]
    await fleet._ask(None, car)  # type: ignore[arg-type]
    assert car.outcome == "turned_away" and car.swap_id is None and car.accepted_s is None
    assert arrived == [] and fleet.serving is None and car not in fleet.queue
    assert [name for name, _ in sent] == ["start_swap", "abort"]
    assert sent[1][1]["reason"] == "the driver left"


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_car_accepted_within_its_patience_drives_in() -> None:
    clock = [0.0]
    arrived: list[str] = []
    sim: Any = SimpleNamespace(plc=object(), arrive=lambda vid, **_kw: arrived.append(vid))
    car = Car("EV-1", arrive_s=0.0, pack_type="STD75", soc=20.0)
    fleet = Fleet(sim, [car], host="x", port=1, root="r", say=lambda _s: None)
    fleet.begin(lambda: clock[0])
    fleet.queue.append(car)

    async def request(_client: Any, name: str, body: dict[str, Any]) -> dict[str, Any]:
        clock[0] = 899.0
        return {"ok": True, "result": {"swap_id": "S-1"}}

    fleet._request = request  # type: ignore[method-assign,assignment]
    await fleet._ask(None, car)  # type: ignore[arg-type]
    assert car.swap_id == "S-1" and car.accepted_s == 899.0
    assert arrived == ["EV-1"] and fleet.serving is car
