"""LeanTransport over real sockets: keep-alive, connections the server dropped, chunked and
compressed answers, and the transport errors httpx's own transport would raise."""

from __future__ import annotations

import gzip
import http.server
import json
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from sync_worker.recur import transport as transport_module
from sync_worker.recur.transport import LeanTransport
from tests.fixtures.redis_server import free_port
from tests.fixtures.stack import wait_for

BODY = {"id": "cus_1", "name": "Ann"}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers `BODY`, noting each request's client port; the path picks how it answers."""

    protocol_version = "HTTP/1.1"
    ports: ClassVar[list[int]] = []
    finished: ClassVar[list[int]] = []

    def do_PATCH(self) -> None:
        self.ports.append(self.client_address[1])
        sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({**BODY, **sent}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path == "/chunked-gzip":
            packed = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(packed), 7):
                chunk = packed[start : start + 7]
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/close-announced":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        # `/drop`: close the connection without saying so, as a server ending idle keep-alives
        # does between requests.
        self.close_connection = self.path in ("/drop", "/close-announced")

    def log_message(self, format: str, *args: object) -> None:
        return


class _Server(http.server.ThreadingHTTPServer):
    """Notes in `_Handler.finished` each connection it has closed. A handler's `finish()` runs
    before the server closes the socket, so a client told then could still find it open."""

    def shutdown_request(self, request: socket.socket) -> None:
        port = request.getpeername()[1]
        super().shutdown_request(request)
        _Handler.finished.append(port)


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.ports.clear()
    _Handler.finished.clear()
    with _Server(("127.0.0.1", 0), _Handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()


@pytest.fixture
def transport() -> Iterator[LeanTransport]:
    lean = LeanTransport(ssl_context=ssl.create_default_context())
    yield lean
    lean.close()


def patch(transport: LeanTransport, url: str, name: str = "Bo") -> httpx.Response:
    request = httpx.Request("PATCH", url, json={"name": name})
    return transport.handle_request(request)


def test_requests_share_one_kept_alive_connection(server: str, transport: LeanTransport) -> None:
    for name in ("a", "b", "c"):
        response = patch(transport, server + "/customers", name)
        assert response.status_code == 200
        assert response.json() == {**BODY, "name": name}
    assert len(_Handler.ports) == 3
    assert len(set(_Handler.ports)) == 1


def test_a_connection_the_server_dropped_is_not_used_again(
    server: str, transport: LeanTransport
) -> None:
    assert patch(transport, server + "/drop").status_code == 200
    wait_for(lambda: _Handler.finished)  # the server has closed its end
    # Sent down the dropped connection, the request would fail (and, after it may have been
    # sent, fence the user): it goes on a new one.
    assert patch(transport, server + "/customers").status_code == 200
    assert len(set(_Handler.ports)) == 2


def test_an_answer_that_announces_the_close_ends_the_connection(
    server: str, transport: LeanTransport
) -> None:
    assert patch(transport, server + "/close-announced").status_code == 200
    assert patch(transport, server + "/customers").status_code == 200
    assert len(set(_Handler.ports)) == 2


def test_a_connection_idle_past_the_keep_alive_is_not_used_again(
    server: str, transport: LeanTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "KEEPALIVE_SECONDS", 0.0)
    patch(transport, server + "/customers")
    patch(transport, server + "/customers")
    assert len(set(_Handler.ports)) == 2


def test_a_chunked_compressed_answer_is_decoded(server: str, transport: LeanTransport) -> None:
    response = patch(transport, server + "/chunked-gzip", "Cy")
    assert response.json() == {**BODY, "name": "Cy"}
    assert patch(transport, server + "/customers").status_code == 200
    assert len(set(_Handler.ports)) == 1  # the chunked answer was read to its end


def test_nobody_listening_is_a_connect_error(transport: LeanTransport) -> None:
    # A request that never left: not ambiguous (sync.py does not fence the user for it).
    with pytest.raises(httpx.ConnectError):
        patch(transport, f"http://127.0.0.1:{free_port()}/customers")


def test_a_connection_reset_mid_answer_is_a_read_error(transport: LeanTransport) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def reset() -> None:
            peer, _ = listener.accept()
            peer.recv(65536)
            peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            peer.close()

        threading.Thread(target=reset, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/customers"
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            patch(transport, url)


def test_a_garbled_answer_is_a_protocol_error(transport: LeanTransport) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def garble() -> None:
            peer, _ = listener.accept()
            peer.recv(65536)
            peer.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            peer.close()

        threading.Thread(target=garble, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/customers"
        with pytest.raises(httpx.RemoteProtocolError):
            patch(transport, url)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The same server over TLS, with a self-signed certificate for localhost."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    _Handler.ports.clear()
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as httpd:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            yield f"https://localhost:{httpd.server_address[1]}", cert
        finally:
            httpd.shutdown()


def test_https_with_the_servers_certificate_verified(tls_server: tuple[str, Path]) -> None:
    url, cert = tls_server
    trusting = LeanTransport(ssl_context=ssl.create_default_context(cafile=str(cert)))
    try:
        assert patch(trusting, url + "/customers", "Di").json() == {**BODY, "name": "Di"}
        assert patch(trusting, url + "/customers").status_code == 200
    finally:
        trusting.close()
    assert len(set(_Handler.ports)) == 1
    stranger = LeanTransport(ssl_context=ssl.create_default_context())
    with pytest.raises(httpx.ConnectError):  # not a CA it trusts: nothing is sent
        patch(stranger, url + "/customers")
    assert len(_Handler.ports) == 2
