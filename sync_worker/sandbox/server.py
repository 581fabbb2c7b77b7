"""Run an ASGI app with uvicorn on a background thread: for tests, benchmarks and `dev`."""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from dataclasses import dataclass
from typing import Literal

import uvicorn
from starlette.types import ASGIApp


def fast_loop() -> Literal["uvloop", "asyncio"]:
    """uvloop when installed: it roughly doubles what one sandbox process serves."""
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def fast_http() -> Literal["httptools", "h11"]:
    """httptools when installed, for the same reason."""
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def uvicorn_config(app: ASGIApp, *, host: str, port: int) -> uvicorn.Config:
    """The uvicorn settings the sandbox runs with: fast loop and parser, no access log."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=fast_loop(),
        http=fast_http(),
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


@dataclass
class RunningServer:
    """A uvicorn server serving on a thread of this process."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 10.0
) -> RunningServer:
    """Serve `app` on `host:port` (0 picks a free port) and return once it accepts connections."""
    # Binding here, not in uvicorn, is what tells us the port the kernel picked for port 0.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, host=host, port=bound_port))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="sandbox-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"the server on {host}:{bound_port} did not start")
        time.sleep(0.01)
    return RunningServer(url=f"http://{host}:{bound_port}", server=server, thread=thread)
