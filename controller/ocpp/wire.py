"""OCPP-J framing (OCPP 2.1 Part 4): CALL, CALLRESULT, CALLERROR, read strictly, never raising.

A frame is a JSON array: `[2, id, action, payload]`, `[3, id, payload]`,
`[4, id, code, description, details]`. Text from the CSMS is bounded (size, nesting) before it
is parsed; what cannot be read is answered with a CALLERROR (`RpcFrameworkError`, or
`FormatViolation`), with the message id if one could be read and `-1` otherwise, and harms
nothing. Payloads are checked against the official OCPP 2.1 JSON schemas, which the `ocpp`
package ships (`ocpp.messages`); the error codes are OCPP's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from ocpp.exceptions import OCPPError
from ocpp.messages import Call as LibCall
from ocpp.messages import CallResult as LibCallResult
from ocpp.messages import _validate_payload

from controller.errors import OcppFrameError as FrameError
from controller.jsontext import depth as json_depth

VERSION: Final = "2.1"
SUBPROTOCOL: Final = "ocpp2.1"
CALL, CALLRESULT, CALLERROR = 2, 3, 4
MAX_DEPTH = 24  # the deepest 2.1 message we take (SetChargingProfile) nests about 12
MAX_ID = 36  # OCPP: a message id is at most 36 characters
DESCRIPTION_MAX = 255

ErrorCode = Literal[
    "FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported",
    "NotImplemented", "NotSupported", "OccurrenceConstraintViolation",
    "PropertyConstraintViolation", "ProtocolError", "RpcFrameworkError", "SecurityError",
    "TypeConstraintViolation",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame read from the peer."""

    kind: int
    unique_id: str
    action: str = ""
    payload: Any = None
    error_code: str = ""
    error_description: str = ""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A frame that could not be read: answered with `code`, to `unique_id` (`-1`: unknown)."""

    unique_id: str
    code: ErrorCode
    description: str
    answer: bool = True  # not to a broken CALLRESULT or CALLERROR: there is nobody to tell


def read(text: str | bytes, max_bytes: int) -> Frame | Unreadable:
    """Read one frame strictly; never raises."""
    size = len(text)
    if isinstance(text, str) and 4 * size > max_bytes:  # a character is 1-4 bytes in UTF-8
        size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return Unreadable("-1", "FormatViolation", f"message of {size} B over {max_bytes} B")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return Unreadable("-1", "RpcFrameworkError", "not UTF-8 text")
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        return Unreadable("-1", "FormatViolation", f"nested {depth} levels (at most {MAX_DEPTH})")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        return Unreadable("-1", "RpcFrameworkError", f"not JSON: {str(exc)[:80]}")
    return _frame(raw)


def _frame(raw: object) -> Frame | Unreadable:  # noqa: PLR0911 - one return per shape
    if not isinstance(raw, list) or len(raw) < 2:
        # A broken answer ([3], [4]) is not answered: an error to an error could bounce for ever.
        answer = not (isinstance(raw, list) and raw and raw[0] in (CALLRESULT, CALLERROR))
        return Unreadable("-1", "RpcFrameworkError", "not an OCPP-J array", answer=answer)
    kind, unique_id = raw[0], raw[1]
    if not isinstance(unique_id, str) or not 0 < len(unique_id) <= MAX_ID:
        return Unreadable("-1", "RpcFrameworkError", "the message id is not a string of 1-36")
    if type(kind) is not int:
        return Unreadable(unique_id, "RpcFrameworkError", "the message type is not an integer")
    if kind not in {CALL, CALLRESULT, CALLERROR}:
        return Unreadable(unique_id, "MessageTypeNotSupported", f"message type {kind}")
    if kind == CALL:
        if len(raw) != 4 or not isinstance(raw[2], str) or not isinstance(raw[3], dict):
            return Unreadable(unique_id, "RpcFrameworkError", "a CALL is [2, id, action, {}]")
        return Frame(CALL, unique_id, action=raw[2], payload=raw[3])
    if kind == CALLRESULT:
        if len(raw) != 3 or not isinstance(raw[2], dict):
            return Unreadable(unique_id, "RpcFrameworkError", "bad CALLRESULT", answer=False)
        return Frame(CALLRESULT, unique_id, payload=raw[2])
    if len(raw) != 5 or not isinstance(raw[2], str) or not isinstance(raw[3], str):
        return Unreadable(unique_id, "RpcFrameworkError", "bad CALLERROR", answer=False)
    return Frame(CALLERROR, unique_id, error_code=raw[2][:50], error_description=raw[3][:255])


def call(unique_id: str, action: str, payload: dict[str, Any]) -> str:
    """A CALL frame."""
    return json.dumps([CALL, unique_id, action, payload], separators=(",", ":"))


def result(unique_id: str, payload: dict[str, Any]) -> str:
    """A CALLRESULT frame."""
    return json.dumps([CALLRESULT, unique_id, payload], separators=(",", ":"))


def error(unique_id: str, code: str, description: str) -> str:
    """A CALLERROR frame."""
    return json.dumps(
        [CALLERROR, unique_id, code, description[:DESCRIPTION_MAX], {}], separators=(",", ":")
    )


def check_request(action: str, payload: dict[str, Any]) -> None:
    """A request (either way) against its official schema; `FrameError` naming the rule."""
    _check(LibCall(unique_id="-", action=action, payload=payload))


def check_response(action: str, payload: dict[str, Any]) -> None:
    """A response (either way) against its official schema; `FrameError` naming the rule."""
    _check(LibCallResult(unique_id="-", action=action, payload=payload))


def _check(message: LibCall | LibCallResult) -> None:
    try:
        _validate_payload(message, VERSION)
    except OCPPError as exc:
        code = str(getattr(exc, "code", "FormatViolation"))
        details = getattr(exc, "details", None)
        cause = details.get("cause") if isinstance(details, dict) else None
        # The library's cause quotes the whole payload: the first line says enough.
        text = str(cause or exc).split("\n", 1)[0]
        raise FrameError(_code(code), text) from None


def _code(code: str) -> ErrorCode:
    known: tuple[ErrorCode, ...] = (
        "FormatViolation", "GenericError", "InternalError", "NotImplemented", "NotSupported",
        "OccurrenceConstraintViolation", "PropertyConstraintViolation", "ProtocolError",
        "SecurityError", "TypeConstraintViolation",
    )  # fmt: skip
    return next((k for k in known if k == code), "FormatViolation")
