"""A CA and a server certificate for the CSMS of the TLS test (security profile 2)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import make_ca, make_cert


@dataclass(frozen=True)
class OcppPki:
    ca: Path
    server: tuple[Path, Path]

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.server[0]), str(self.server[1]))
        return ctx


@pytest.fixture(scope="module")
def ocpp_pki(tmp_path_factory: pytest.TempPathFactory) -> OcppPki:
    d = tmp_path_factory.mktemp("ocpp-pki")
    ca = make_ca(d, "csms-ca")
    server = make_cert(
        d, ca, "csms", "subjectAltName=IP:127.0.0.1,DNS:localhost", "extendedKeyUsage=serverAuth"
    )
    return OcppPki(ca[0], server)
