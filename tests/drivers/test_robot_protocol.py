"""Robot frames and stream reassembly, property-tested: never raises, never invents a frame."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import DecodeError
from drivers.robot.protocol import (
    MAX_PAYLOAD,
    MESSAGES,
    SERIAL_LEN,
    SOF,
    Empty,
    ErrorArgs,
    Frame,
    HeartbeatArgs,
    Message,
    MoveArgs,
    MsgType,
    NakArgs,
    NakReason,
    Outcome,
    Payload,
    RobotState,
    RobotStatus,
    SlotArgs,
    SyncArgs,
    Target,
    crc16,
)
from drivers.robot.reassembler import Reassembler

u16 = st.integers(0, 0xFFFF)
slots = st.integers(1, 999)

PAYLOADS: dict[type[Payload], st.SearchStrategy[Payload]] = {
    Empty: st.just(Empty()),
    MoveArgs: st.one_of(
        st.builds(MoveArgs, st.sampled_from([Target.HOME, Target.BAY]), st.just(0)),
        st.builds(MoveArgs, st.just(Target.SLOT), slots),
    ),
    SlotArgs: st.builds(SlotArgs, slots),
    SyncArgs: st.builds(SyncArgs, u16),
    NakArgs: st.builds(NakArgs, st.sampled_from(list(NakReason))),
    ErrorArgs: st.builds(ErrorArgs, u16),
    HeartbeatArgs: st.builds(HeartbeatArgs, u16, u16),
    Outcome: st.builds(
        Outcome,
        st.sampled_from(list(RobotState)),
        st.sampled_from(list(Target)),
        u16,
        st.integers(0, 1),
        st.integers(0, 1),
        u16,
        u16,
    ),
    RobotStatus: st.builds(
        RobotStatus,
        st.sampled_from(list(RobotState)),
        st.sampled_from(list(Target)),
        u16,
        st.integers(0, 1),
        st.binary(min_size=SERIAL_LEN, max_size=SERIAL_LEN),
        u16,
        st.integers(0, 1),
        u16,
        u16,
        st.integers(0, 255),
    ),
}


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(st.sampled_from(list(MsgType)))
    body = draw(PAYLOADS[MESSAGES[kind].payload])
    return Message(draw(st.integers(0, 255)), kind, body)


frames = st.builds(Frame, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=MAX_PAYLOAD))


def test_crc_is_the_named_standard() -> None:
    assert crc16(b"123456789") == 0x29B1  # CRC-16/IBM-3740 check value


@given(messages())
def test_every_message_round_trips(msg: Message) -> None:
    frame, rest = Frame.from_bytes(msg.to_bytes())
    assert rest == b""
    assert Message.from_frame(frame) == msg


@given(frames, st.binary(max_size=20))
def test_frame_round_trips_and_leaves_the_rest(frame: Frame, tail: bytes) -> None:
    parsed, rest = Frame.from_bytes(frame.to_bytes() + tail)
    assert parsed == frame
    assert rest == tail


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\xa5\x5a\x00\x01", "shorter than a frame"),
        (b"\x00\x5a\x00\x01\x80\x00\x00", "no start of frame"),
        (b"\xa5\x5a\xff\x01\x80" + b"\0" * 300, "length 255 > 64"),
        (Frame(1, 0x80).to_bytes()[:-1] + b"\0", "CRC mismatch"),
    ],
)
def test_bad_frames_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        Frame.from_bytes(data)


def test_unknown_type_and_wrong_payload_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="unknown message type 0x7f"):
        Message.from_frame(Frame(1, 0x7F))
    with pytest.raises(DecodeError, match="MoveArgs"):
        Message.from_frame(Frame(1, MsgType.MOVE, b"\x01"))
    with pytest.raises(DecodeError, match="NakArgs"):
        Message.from_frame(Frame(1, MsgType.NAK, b"\xee"))  # no such reason


def _feed(chunks: list[bytes]) -> tuple[list[Frame], Reassembler]:
    r = Reassembler()
    out: list[Frame] = []
    for chunk in chunks:
        out.extend(r.feed(chunk))
    return out, r


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


no_sof_garbage = st.binary(max_size=40).map(lambda b: b.replace(b"\xa5", b"\x00"))


@settings(max_examples=300)
@given(
    st.lists(st.tuples(no_sof_garbage, frames), max_size=8),
    no_sof_garbage,
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_yields_exactly_the_frames_embedded_in_garbage(
    parts: list[tuple[bytes, Frame]], tail: bytes, cuts: list[int]
) -> None:
    stream = b"".join(g + f.to_bytes() for g, f in parts) + tail
    expected = [f for _, f in parts]
    got, r = _feed(_chunked(stream, cuts))
    assert got == expected
    one_by_one, _ = _feed([bytes([b]) for b in stream])
    assert one_by_one == expected
    assert r.stats.frames == len(expected)


@settings(max_examples=300)
@given(
    st.lists(st.one_of(st.binary(max_size=30), frames.map(Frame.to_bytes)), max_size=10),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_any_stream_never_raises_and_keeps_embedded_frames_in_order(
    pieces: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(pieces)
    got, r = _feed(_chunked(stream, cuts))
    got += r.discard_partial()
    assert r.pending <= 4 * (MAX_PAYLOAD + 7)
    # Every frame we put in whole comes out, in order (garbage may only add valid frames).
    embedded = [Frame.from_bytes(p)[0] for p in pieces if p[:2] == SOF and _valid(p)]
    it = iter(got)
    assert all(any(f == g for g in it) for f in embedded)


def _valid(data: bytes) -> bool:
    try:
        _, rest = Frame.from_bytes(data)
    except DecodeError:
        return False
    return rest == b""


def test_hostile_length_is_skipped_without_waiting() -> None:
    good = Frame(7, MsgType.ACK).to_bytes()
    got, r = _feed([b"\xa5\x5a\xff\x00\x00" + good])
    assert got == [Frame(7, MsgType.ACK)]
    assert r.stats.bad_frames == 1


def test_truncated_frame_then_silence_then_good_frame() -> None:
    good = Frame(9, MsgType.ACK).to_bytes()
    r = Reassembler()
    assert list(r.feed(good[:5])) == []
    # The line goes quiet: the link abandons the partial frame.
    assert r.discard_partial() == []
    assert list(r.feed(good)) == [Frame(9, MsgType.ACK)]


def test_false_start_with_valid_length_hides_nothing() -> None:
    # A stray "A5 5A 10" claims 16 payload bytes; the real frame is inside them. It comes
    # out at once, without waiting for bytes the false start only imagines.
    good = Frame(3, MsgType.DONE, b"").to_bytes()
    r = Reassembler()
    assert list(r.feed(b"\xa5\x5a\x10" + good)) == [Frame(3, MsgType.DONE)]
    assert r.stats.bad_frames == 1
    # A false start with nothing valid behind it waits until the line goes quiet.
    assert list(r.feed(b"\xa5\x5a\x10\x01\x02")) == []
    assert r.discard_partial() == []


def test_payload_validation_on_construction() -> None:
    with pytest.raises(ValueError, match="slot 0 out of range"):
        SlotArgs(0)
    with pytest.raises(ValueError, match="slot 1000 out of range"):
        MoveArgs(Target.SLOT, 1000)
    with pytest.raises(ValueError, match="payload of 65 bytes"):
        Frame(1, 1, b"x" * 65)
