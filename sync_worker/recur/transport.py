"""The transport under RecurClient: HTTP/1.1 over the standard library, bounded by the deadline.

httpx builds the request (URL, headers, body) and reads the answer (decoding, status); this
carries the bytes in between. httpx's own transport does it through httpcore and h11, which cost
a PATCH 420 µs of CPU against 230 µs here (measured, one thread, local sandbox): in the worker,
where every thread's GIL turn counts, that is the largest share of a synced user's CPU.
`http.client` parses the answer (status line, headers, `Content-Length` or chunked body); the
request's head is written from httpx's headers as they are (httpx has validated them).

Each socket operation waits at most what is left of the call's deadline (deadline.py), so an
answer trickling in cannot outlast it. One keep-alive connection per origin, for one thread: the
client gives every thread its own transport. A kept connection is not used again after it sat
idle for `KEEPALIVE_SECONDS` (httpx's default) or once the server closed it (it reads as
readable), so a request is not sent down a connection the server is dropping.
"""

from __future__ import annotations

import http.client
import io
import select
import socket
import ssl
import time
from typing import Any

import httpx

from sync_worker.recur.deadline import remaining

KEEPALIVE_SECONDS = 5.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _DeadlineReader(io.RawIOBase):
    """The socket as a raw stream for http.client, each read bounded by the deadline."""

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self._sock = sock
        self._timeout = timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(remaining(self._timeout, httpx.ReadTimeout))
        return self._sock.recv_into(buffer)


class _SocketFile:
    """What http.client.HTTPResponse reads from: a socket whose `makefile` is deadline-bound."""

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self._sock = sock
        self._timeout = timeout

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._timeout))


class _Connection:
    __slots__ = ("idle_since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.idle_since = time.monotonic()

    def reusable(self) -> bool:
        """Not idle too long, and nothing to read: data or EOF before a request means the
        server closed it (or broke the protocol)."""
        if time.monotonic() - self.idle_since > KEEPALIVE_SECONDS:
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)


Origin = tuple[str, str, int]
"""Scheme, host and port: what a kept connection is for."""


class LeanTransport(httpx.BaseTransport):
    """HTTP/1.1 requests through `http.client`, for one thread at a time.

    `send` takes the request as bytes (RecurClient's hot path builds them itself: httpx's
    request building parses the URL twice, a third of a call's CPU); `handle_request` is the
    same for an `httpx.Request`."""

    def __init__(self, *, ssl_context: ssl.SSLContext) -> None:
        self._ssl_context = ssl_context
        self._connections: dict[Origin, _Connection] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` and read its whole answer (RecurClient reads every body anyway)."""
        url = request.url
        origin = (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme, 80))
        head = b"".join(name + b": " + value + b"\r\n" for name, value in request.headers.raw)
        answer = self.send(
            request.method,
            origin,
            url.raw_path,
            head,
            request.read(),
            request.extensions.get("timeout", {}),
        )
        return answer.response(request)

    def send(
        self,
        method: str,
        origin: Origin,
        target: bytes,
        head: bytes,
        body: bytes,
        timeouts: dict[str, float | None],
    ) -> Answer:
        """Send one request (`head`: its header lines, each ending in CRLF, Host among them)
        to `target` (path and query) at `origin`, and read the whole answer."""
        connection = self._connections.pop(origin, None)
        if connection is not None and not connection.reusable():
            connection.sock.close()
            connection = None
        if connection is None:
            connection = _Connection(self._connect(origin, timeouts.get("connect")))
        try:
            answer = self._exchange(
                connection.sock, method, target, head + b"\r\n" + body, timeouts
            )
        except BaseException:
            connection.sock.close()
            raise
        if answer.will_close:
            connection.sock.close()
        else:
            connection.idle_since = time.monotonic()
            self._connections[origin] = connection
        return answer

    def _connect(self, origin: Origin, timeout: float | None) -> socket.socket:
        scheme, host, port = origin
        try:
            sock = socket.create_connection(
                (host, port), timeout=remaining(timeout, httpx.ConnectTimeout)
            )
        except TimeoutError as error:
            raise httpx.ConnectTimeout(str(error) or "connect timed out") from error
        except OSError as error:
            raise httpx.ConnectError(str(error)) from error
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock.settimeout(remaining(timeout, httpx.ConnectTimeout))
                sock = self._ssl_context.wrap_socket(sock, server_hostname=host)
        except TimeoutError as error:
            sock.close()
            raise httpx.ConnectTimeout(str(error) or "TLS handshake timed out") from error
        except OSError as error:  # ssl.SSLError among them
            sock.close()
            raise httpx.ConnectError(str(error)) from error
        except BaseException:
            sock.close()
            raise
        return sock

    def _exchange(
        self,
        sock: socket.socket,
        method: str,
        target: bytes,
        rest: bytes,
        timeouts: dict[str, float | None],
    ) -> Answer:
        try:
            sock.settimeout(remaining(timeouts.get("write"), httpx.WriteTimeout))
            sock.sendall(method.encode() + b" " + target + b" HTTP/1.1\r\n" + rest)
        except TimeoutError as error:
            raise httpx.WriteTimeout(str(error) or "write timed out") from error
        except OSError as error:
            raise httpx.WriteError(str(error)) from error
        answer = http.client.HTTPResponse(
            _SocketFile(sock, timeouts.get("read")),  # type: ignore[arg-type]
            method=method,
        )
        try:
            answer.begin()
            body = answer.read()
        except TimeoutError as error:
            raise httpx.ReadTimeout(str(error) or "read timed out") from error
        except http.client.HTTPException as error:
            raise httpx.RemoteProtocolError(f"{type(error).__name__}: {error}") from error
        except OSError as error:
            raise httpx.ReadError(str(error)) from error
        finally:
            answer.close()
        return Answer(answer, body)

    def close(self) -> None:
        """Close every kept connection."""
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            connection.sock.close()


class Answer:
    """What was read of one response."""

    __slots__ = ("body", "headers", "reason", "status", "will_close")

    def __init__(self, response: http.client.HTTPResponse, body: bytes) -> None:
        self.status = response.status
        self.reason = response.reason
        self.will_close = bool(response.will_close)
        self.headers = response.getheaders()
        self.body = body

    @property
    def plain(self) -> bool:
        """True when `body` is the content as sent, with no content coding to undo."""
        return all(
            name.lower() != "content-encoding" or value.strip().lower() in ("", "identity")
            for name, value in self.headers
        )

    def response(self, request: httpx.Request) -> httpx.Response:
        """The answer as an httpx response to `request` (its content decoded)."""
        return httpx.Response(
            self.status,
            headers=self.headers,
            content=self.body,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": self.reason.encode()},
        )
