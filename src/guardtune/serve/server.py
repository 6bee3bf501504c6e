"""Running the app with uvicorn: in the foreground (the CLI) or in a background thread (tests)."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from types import FrameType, TracebackType

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# How long a stopping server keeps its open connections before closing the idle ones.
DRAIN_SECONDS = 0.5


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


class CloseWhenDraining:
    """ASGI wrapper: once ``draining`` is set, every response carries ``Connection: close``."""

    def __init__(self, app: ASGIApp, draining: threading.Event) -> None:
        self.app, self.draining = app, draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            # Checked when the response starts, not when the request came: a request that began
            # before the signal and ends after it must not leave its connection open either.
            if message["type"] == "http.response.start" and self.draining.is_set():
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


class DrainingServer(uvicorn.Server):
    """uvicorn's graceful shutdown, with a drain before the idle connections are closed.

    uvicorn closes an idle keep-alive connection at once, so a request the client had just sent
    on it, not yet read by the server, is lost (the client sees the connection drop). Here the
    server first stops accepting connections and, for ``drain_s``, goes on serving the open ones
    with ``Connection: close`` on every response (the clients then hang up), and only then shuts
    down as uvicorn does.
    """

    def __init__(self, config: uvicorn.Config, draining: threading.Event, drain_s: float = DRAIN_SECONDS):
        super().__init__(config)
        self.draining, self.drain_s = draining, drain_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        self.draining.set()
        await asyncio.sleep(self.drain_s)
        await super().shutdown(sockets)


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted or terminated, shutting down cleanly.

    On SIGTERM (or Ctrl-C) the server stops accepting connections, serves what arrives on the open
    ones for half a second (each response closing its connection: see :class:`DrainingServer`),
    lets the requests in flight finish (up to 10 s), stops the model worker, and the process
    exits 0 on SIGTERM.
    """
    # uvicorn re-raises the SIGTERM it handled once its graceful shutdown is over, which would
    # end the process as "killed by SIGTERM" (status 143) after a clean stop. This handler, which
    # uvicorn restores before re-raising, makes that a normal exit.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        draining = threading.Event()
        config = uvicorn.Config(
            CloseWhenDraining(app, draining),
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=10,
        )
        DrainingServer(config, draining).run()
    except KeyboardInterrupt:
        # uvicorn re-raises Ctrl-C after its clean shutdown; uvicorn.run swallowed it, so do we.
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


class BackgroundServer:
    """A real uvicorn server on 127.0.0.1 and an ephemeral port, in a daemon thread.

    Example:
        >>> with BackgroundServer(create_app(guards)) as server:
        ...     httpx.get(server.url + "/healthz")
    """

    def __init__(self, app: FastAPI, log_level: str = "warning") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="guardtune-uvicorn", daemon=True
        )

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
