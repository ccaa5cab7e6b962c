"""GetLog's upload: where it may go, and that it goes where it was judged to go."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from controller.errors import UploadRefusedError
from controller.ocpp import logs


class _Sink(http.server.BaseHTTPRequestHandler):
    got: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        type(self).got.append((self.headers.get("Host", ""), self.path, self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        del format, args


@pytest.fixture
def sink() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/x", "http://localhost/x", "https://10.1.2.3/x", "http://169.254.1.1/",
     "http://[::1]:8080/x", "http://192.168.0.10/x", "http://0.0.0.0/x"],
)  # fmt: skip
def test_the_station_s_own_networks_are_refused(url: str) -> None:
    with pytest.raises(UploadRefusedError, match="not a public address"):
        logs.check_host(url, [])


def test_an_allowed_host_is_connected_to_by_its_name() -> None:
    assert logs.check_host("http://127.0.0.1:9/x", ["127.0.0.1"]) is None


def test_the_upload_goes_to_the_address_judged_not_a_second_lookup(
    sink: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name's check answered 127.0.0.1 (as if public): the PUT connects there, by address,
    # whatever the name would resolve to later (it resolves to nothing here), with its Host.
    monkeypatch.setattr(logs, "check_host", lambda url, allowed: "127.0.0.1")
    status = logs._put(f"http://logs.example.invalid:{sink}/up?k=1", b"lines\n", 5.0, [], [])
    assert status == 204
    assert _Sink.got[-1] == (f"logs.example.invalid:{sink}", "/up?k=1", b"lines\n")
