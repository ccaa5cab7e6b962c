"""A saturated station's capacity on paper: the bay's ceiling and the charged packs' ceiling.

With cars always waiting, swaps an hour are bounded by two things (docs/simulator.md, "Capacity
on paper", explains each term):

- **the bay**: one swap at a time, `3600 / t_bay`, `t_bay` the sum of a swap's steps at the
  simulated devices' nominal timings (robot moves at the mean distance of a slot);
- **charged packs**: a pack is dispensed once charged from its arrival SoC to
  `min_dispense_soc`. Two limits, the lower binds:
  - *the chargers' current*: each of a type's `N` packs charges at the current the controller
    allows (`min(charger_max_a, the BMS's limit)`, then the CC-CV taper of the charger model),
    and between two charges spends `t_dead` in the station not charging (ready until fetched:
    the next car drives in, the lift rises, its pack is removed and stored; stored until its
    charger starts). `N / (t_charge + t_dead)` packs an hour, with `t_charge` the mean over the
    arrival SoC distribution;
  - *the grid*: the controller budgets a charger's watts as its amps times the pack's BMS
    voltage limit (never more than the limit, whatever the voltage does: power-management.md),
    so the grid lets `(grid_limit_kw - safety_margin_kw) / V_bms_max` amps into packs, and a pack
    takes `capacity_ah x (dispense - arrival SoC)` ampere-hours, plus what it tops up while it
    waits, ready, for the swap that takes it (the demand policy's last step: at most its
    current for the part of `t_dead` before it is fetched).

With several pack types in the cars' mix (first come, first served), a type's share of the cars
sets how fast its packs must come: each bound is taken over the mix.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from simstation.charger import CELL_OCV_FULL, SimCharger, SimPack
from simstation.plc import SimVehicle
from simstation.robot import Timing
from simstation.scenario import LoadedScenario, car_soc

LIFT_S = 8.0  # SimStation's lift_time_s
SOC_DRAWS = 20_000  # arrival SoCs drawn for the mean charge time (a fixed seed)
STEP_S = 1.0  # the charge curve's integration step (the charger model's own is 10 s at most)


@dataclass(frozen=True)
class Ceiling:
    """Swaps an hour a saturated station can do, by what limits it."""

    bay_per_h: float
    current_per_h: float  # charged packs, at the chargers' current
    grid_per_h: float  # charged packs, at the grid limit (inf without one)
    bay_s: float  # one swap, car in to car out
    charge_s: dict[str, float]  # mean time to charge an arriving pack, per type
    dead_s: float  # per pack and cycle, in the station but not charging
    charge_ah: dict[str, float]  # mean charge a pack takes, per type

    @property
    def charge_per_h(self) -> float:
        """The charged packs' ceiling: the lower of current and grid."""
        return min(self.current_per_h, self.grid_per_h)

    @property
    def lower(self) -> float:
        """The ceiling: the lower of bay and charged packs."""
        return min(self.bay_per_h, self.charge_per_h)

    @property
    def binding(self) -> str:
        """Which limit the ceiling is (the names of `HourStat.binding`)."""
        if self.bay_per_h <= self.charge_per_h:
            return "bay"
        if self.grid_per_h < self.current_per_h:
            return "charged packs: grid"
        return "charged packs: chargers"


def charge_curve(kwh: float, limit_a: float) -> list[float]:
    """Seconds from 0 % until each whole SoC percent is reached (index: percent), CC-CV."""
    pack = SimPack("paper", capacity_kwh=kwh, soc=0.0)
    charger = SimCharger(max_current_a=limit_a, target_soc=100.0)
    charger.insert(pack)
    charger.enabled, charger.limit_a = True, limit_a
    at, t = [0.0], 0.0
    while len(at) <= 100 and not charger.full and t < 7 * 24 * 3600:
        charger.step(STEP_S, 25.0)
        t += STEP_S
        while len(at) <= 100 and pack.soc >= len(at):
            at.append(t)
    at += [math.inf] * (101 - len(at))  # a pack that never gets there (taper cut-off)
    return at


def _time_between(curve: list[float], soc0: float, soc1: float) -> float:
    def when(soc: float) -> float:
        lo = min(int(soc), 99)
        return curve[lo] + (curve[lo + 1] - curve[lo]) * (soc - lo)

    return max(0.0, when(min(soc1, 100.0)) - when(min(soc0, soc1)))


def ceiling(
    loaded: LoadedScenario, *, rack_poll_s: float = 1.0, rack_tick_s: float = 2.0
) -> Ceiling:
    """The ceilings of the scenario's station, saturated (see the module's docstring)."""
    sc = loaded.scenario
    st = sc.station
    robot = Timing()
    car = SimVehicle("paper", None)  # the simulated car's timings
    vehicle_in, leave = car.positioning_s + car.power_down_s, car.leave_s
    # The robot between the bay (1 m) and the slots (1 + n m): a slot at the mean distance.
    to_slot = (st.slots + 1) / 2.0 / robot.speed_m_s + robot.settle_s
    to_bay = 1.0 / robot.speed_m_s + robot.settle_s
    removed = to_bay + robot.unlock_s + robot.remove_s
    stored = to_slot + robot.store_s
    # A pack's ready noticed: half a charger step and half a poll late; stored: one poll until
    # its charger is seen with it and switched on.
    noticed = rack_tick_s / 2.0 + rack_poll_s / 2.0
    waiting = noticed + vehicle_in + LIFT_S + removed + stored  # ready, until taken
    dead = waiting + rack_poll_s
    fetched = to_slot + robot.fetch_s
    installed = to_slot + robot.install_s
    bay = noticed + vehicle_in + LIFT_S + removed + stored + fetched + installed
    bay += robot.lock_s + LIFT_S + leave
    mix = sc.mix()
    total = sum(mix.values())
    share = {t: w / total for t, w in mix.items() if w > 0}
    rng = random.Random(0)  # noqa: S311 - a fixed sample of the distribution
    socs = [car_soc(sc, rng) for _ in range(SOC_DRAWS)]
    limit_a = min(st.charger_max_a, SimPack("paper").bms_current_max)
    dispense = st.min_dispense_soc
    charge_s: dict[str, float] = {}
    charge_ah: dict[str, float] = {}
    current = math.inf
    for pack_type, part in share.items():
        kwh = st.kwh(pack_type)
        curve = charge_curve(kwh, limit_a)
        charge_s[pack_type] = sum(_time_between(curve, s, dispense) for s in socs) / len(socs)
        ah = SimPack("paper", capacity_kwh=kwh).capacity_ah
        charge_ah[pack_type] = ah * sum(max(0.0, dispense - s) for s in socs) / len(socs) / 100
        packs = st.packs.get(pack_type, 0)
        per_h = packs * 3600.0 / (charge_s[pack_type] + dead)
        current = min(current, per_h / part)  # this type's cars are `part` of all cars
    grid = math.inf
    if st.grid_limit_kw is not None:
        v_bound = SimPack("paper").cells_series * CELL_OCV_FULL
        amps = (st.grid_limit_kw - st.safety_margin_kw) * 1000.0 / v_bound
        topped_up = limit_a * waiting / 3600.0  # Ah a ready pack takes while it waits
        grid = amps / sum(part * (charge_ah[t] + topped_up) for t, part in share.items())
    return Ceiling(
        bay_per_h=3600.0 / bay,
        current_per_h=current,
        grid_per_h=grid,
        bay_s=bay,
        charge_s=charge_s,
        dead_s=dead,
        charge_ah=charge_ah,
    )
