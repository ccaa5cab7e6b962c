"""Stream reassembly: bytes in, whole valid frames out, garbage counted and skipped.

Separate from parsing (`Frame.from_bytes`): this object owns the byte buffer, caps its size,
and on anything invalid skips to the next start-of-frame, so a corrupted frame costs only
itself. A start whose (corrupted) length asks for bytes that are not there is abandoned as soon
as a complete valid frame shows up behind it, or when the line goes quiet (`discard_partial`).
It never raises on input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from drivers.errors import DecodeError
from drivers.robot.protocol import HEADER, MAX_FRAME, MAX_PAYLOAD, MIN_FRAME, SOF, TRAILER, Frame

MAX_BUFFER = 4 * MAX_FRAME


@dataclass
class ReassemblyStats:
    """What was received."""

    frames: int = 0
    bad_frames: int = 0  # a start of frame whose frame failed its length or CRC check
    dropped_bytes: int = 0  # bytes skipped while resynchronising


class Reassembler:
    """Feed bytes; iterate the frames they complete."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats = ReassemblyStats()

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[Frame]:
        """Add bytes; yield every frame now complete, in order."""
        self._buf += data
        while True:
            start = self._buf.find(SOF)
            if start < 0:
                # Keep a trailing first SOF byte: its partner may be in the next chunk.
                keep = 1 if self._buf[-1:] == SOF[:1] else 0
                self._drop(len(self._buf) - keep)
                return
            self._drop(start)
            if len(self._buf) < MIN_FRAME:
                return
            length = self._buf[2]
            if length > MAX_PAYLOAD:
                self._bad()
                continue
            end = HEADER + length + TRAILER
            if len(self._buf) < end:
                if len(self._buf) > MAX_BUFFER or self._whole_frame_later():
                    # A complete, valid frame behind this start: the start was false (a
                    # corrupted length), so do not wait for bytes it only imagines.
                    self._bad()
                    continue
                return
            try:
                frame, _ = Frame.from_bytes(bytes(self._buf[:end]))
            except DecodeError:
                self._bad()
                continue
            del self._buf[:end]
            self.stats.frames += 1
            yield frame

    def _whole_frame_later(self) -> bool:
        """True if a complete frame with a valid CRC starts after the buffer's first byte."""
        at = self._buf.find(SOF, 1)
        while at >= 0:
            if len(self._buf) - at >= MIN_FRAME:
                length = self._buf[at + 2]
                end = at + HEADER + length + TRAILER
                if length <= MAX_PAYLOAD and end <= len(self._buf):
                    try:
                        Frame.from_bytes(bytes(self._buf[at:end]))
                    except DecodeError:
                        pass
                    else:
                        return True
            at = self._buf.find(SOF, at + 1)
        return False

    def discard_partial(self) -> list[Frame]:
        """The line went quiet mid-frame: drop the false start, return frames found behind it."""
        if not self._buf:
            return []
        self._bad()
        return list(self.feed(b""))

    def _bad(self) -> None:
        """The frame at the buffer's start is invalid: skip its start of frame."""
        self.stats.bad_frames += 1
        self._drop(1)

    def _drop(self, n: int) -> None:
        if n > 0:
            del self._buf[:n]
            self.stats.dropped_bytes += n
