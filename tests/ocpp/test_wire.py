"""OCPP-J framing: whatever the CSMS sends, `wire.read` answers it and never raises."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import OcppFrameError
from controller.ocpp import wire

MAX = 65_536

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), json_values.map(json.dumps)))
def test_read_never_raises_on_anything(raw: str | bytes) -> None:
    frame = wire.read(raw, MAX)
    assert isinstance(frame, wire.Frame | wire.Unreadable)
    if isinstance(frame, wire.Unreadable):
        assert frame.code in {
            "RpcFrameworkError", "FormatViolation", "MessageTypeNotSupported",
        }  # fmt: skip
        assert 0 < len(frame.unique_id) <= wire.MAX_ID


@settings(max_examples=100, deadline=None)
@given(
    kind=st.integers(min_value=-5, max_value=10),
    unique_id=st.one_of(st.text(max_size=40), st.integers(), st.none()),
    rest=st.lists(json_values, max_size=4),
)
def test_any_array_is_read_or_refused_with_the_id_when_it_can_be_read(
    kind: int, unique_id: object, rest: list[object]
) -> None:
    frame = wire.read(json.dumps([kind, unique_id, *rest]), MAX)
    good_id = isinstance(unique_id, str) and 0 < len(unique_id) <= wire.MAX_ID
    if isinstance(frame, wire.Unreadable):
        assert frame.unique_id == (unique_id if good_id else "-1")
        if kind not in {2, 3, 4} and good_id:
            assert frame.code == "MessageTypeNotSupported"
    else:
        assert good_id and frame.kind == kind and frame.unique_id == unique_id


@pytest.mark.parametrize("kind", [5, 6])
def test_ocpp_2_1_sends_and_resulterrors_are_not_taken(kind: int) -> None:
    frame = wire.read(json.dumps([kind, "m1", "NotifyPeriodicEventStream", {}]), MAX)
    assert isinstance(frame, wire.Unreadable)
    assert (frame.unique_id, frame.code) == ("m1", "MessageTypeNotSupported")


def test_deep_and_big_frames_are_refused_before_they_are_parsed() -> None:
    deep = "[2," + "[" * 100_000 + "]" * 100_000 + "]"
    frame = wire.read(deep, 10**7)
    assert isinstance(frame, wire.Unreadable) and frame.code == "FormatViolation"
    frame = wire.read('[2,"a","Reset",{"type":"' + "x" * MAX + '"}]', MAX)
    assert isinstance(frame, wire.Unreadable) and "over" in frame.description


def test_payloads_are_checked_against_the_official_schemas() -> None:
    wire.check_request("Reset", {"type": "OnIdle"})
    with pytest.raises(OcppFrameError) as err:
        wire.check_request("Reset", {"type": "Sometimes"})
    assert err.value.code == "FormatViolation"
    assert len(err.value.description) <= wire.DESCRIPTION_MAX
    with pytest.raises(OcppFrameError) as err:
        wire.check_request(
            "RequestBatterySwap", {"requestId": "7", "idToken": {"idToken": "E", "type": "Local"}}
        )
    assert err.value.code == "TypeConstraintViolation"
    with pytest.raises(OcppFrameError) as err:
        wire.check_request("RequestBatterySwap", {"requestId": 7})
    assert err.value.code == "ProtocolError"
    # What the station sends is written in OCPP's own spelling (soC, soH), which passes.
    wire.check_request(
        "BatterySwap",
        {"eventType": "BatteryIn", "requestId": 1, "idToken": {"idToken": "EV", "type": "Local"},
         "batteryData": [{"evseId": 1, "serialNumber": "P", "soC": 50.0, "soH": 99.0}]},
    )  # fmt: skip
    with pytest.raises(OcppFrameError):
        wire.check_request(
            "BatterySwap",
            {"eventType": "BatteryIn", "requestId": 1,
             "idToken": {"idToken": "EV", "type": "Local"},
             "batteryData": [{"evseId": 1, "serialNumber": "P", "SoC": 50.0, "soh": 99.0}]},
        )  # fmt: skip
