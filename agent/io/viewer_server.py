"""The live viewer's server: the page's files, and a WebSocket bridge from the page to the broker.

The page speaks MQTT itself (MQTT.js over WebSockets); the server never parses it. The bridge at
``/mqtt`` carries the page's bytes to the broker's ordinary MQTT port and back, so the browser's MQTT
session, its credentials and the broker's ACLs are end to end, and a broker needs no WebSockets
listener. That also keeps the view live where a broker's own listener is slow: Debian 12's mosquitto
2.0.11 delivers about 50 kB/s over its listener, about one 640x480 frame a second (docs/viewer.md).
It connects only to the configured broker, and only for pages of its own origin.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent.errors import AnoncamError

log = logging.getLogger(__name__)
# The server library logs every start, stop and refused handshake at INFO: only its warnings show.
library_log = logging.getLogger(__name__ + ".websockets")
library_log.setLevel(logging.WARNING)

BRIDGE_PATH = "/mqtt"
CHUNK = 256 * 1024
# The page loads only its own files and talks only to a broker: no inline script, no third-party origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' blob: data:; "
                               "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where the bridge connects: the broker's MQTT port, with the agent's TLS settings."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None


def same_origin(request: Request) -> bool:
    """A browser sends Origin on a WebSocket handshake: only pages served from here may use the bridge."""
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc == request.headers.get("Host")


class ViewerServer:
    """Serves ``files`` ({path: (bytes, content type)}) and, with ``broker``, the bridge at BRIDGE_PATH.

    ``start()`` runs it in a background thread; ``close()`` stops it.
    """

    def __init__(self, files: dict[str, tuple[bytes, str]], broker: BrokerEndpoint | None,
                 bind: str = "127.0.0.1", port: int = 8090):
        if not 0 <= port < 65536:
            raise AnoncamError(f"--port {port}: give a port from 1 to 65535 (0 picks a free one)")
        self.files, self.broker, self.bind, self.port = files, broker, bind, port
        self.bridged = 0  # page connections bridged to the broker so far
        self._unreachable = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        shown = "localhost" if self.bind in ("0.0.0.0", "127.0.0.1", "::", "::1") else self.bind
        return f"http://{shown}:{self.port}/"

    # ---- lifecycle ----
    def start(self, timeout: float = 10.0) -> "ViewerServer":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="viewer", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AnoncamError(f"the viewer did not start within {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self

    def close(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            server = await serve(self._bridge, self.bind, self.port, process_request=self._http,
                                 subprotocols=["mqtt"], max_size=None, compression=None, ping_interval=20,
                                 logger=library_log)
        except OSError as exc:
            self._error = AnoncamError(f"cannot serve the viewer on {self.bind}:{self.port} ({exc.strerror}): "
                                       "choose another --port, or stop what uses it")
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    # ---- HTTP: the page's files ----
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == BRIDGE_PATH and self.broker is not None:
            if not same_origin(request):
                return self._response(HTTPStatus.FORBIDDEN, b"only the viewer's own page may use this bridge\n")
            return None  # go on with the WebSocket handshake
        if path not in self.files:
            return self._response(HTTPStatus.NOT_FOUND, b"the viewer serves only its own page\n")
        body, kind = self.files[path]
        return self._response(HTTPStatus.OK, body, kind)

    @staticmethod
    def _response(status: HTTPStatus, body: bytes, kind: str = "text/plain; charset=utf-8") -> Response:
        headers = Headers({"Content-Type": kind, "Content-Length": str(len(body)), "Connection": "close",
                           **SECURITY_HEADERS})
        return Response(status.value, status.phrase, headers, body)

    # ---- WebSocket: the bridge to the broker ----
    async def _bridge(self, ws: ServerConnection) -> None:
        broker = self.broker
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(broker.host, broker.port, ssl=broker.tls,
                                        server_hostname=broker.host if broker.tls else None), 10)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            # Pages retry every 2 s: one line per outage, not per attempt.
            (log.debug if self._unreachable else log.warning)(
                "viewer: cannot reach the broker at %s:%d (%s); pages keep retrying", broker.host, broker.port, exc)
            self._unreachable = True
            await ws.close(1011, "the broker is unreachable from the viewer")
            return
        if self._unreachable:
            log.info("viewer: the broker at %s:%d is reachable again", broker.host, broker.port)
        self._unreachable = False
        self.bridged += 1
        log.debug("viewer: page %s bridged to %s:%d", ws.remote_address, broker.host, broker.port)

        async def page_to_broker():
            async for message in ws:
                writer.write(message if isinstance(message, bytes) else message.encode())
                await writer.drain()

        async def broker_to_page():
            while chunk := await reader.read(CHUNK):
                await ws.send(chunk)  # waits while the page is slow: TCP backpressure to the broker

        tasks = [asyncio.create_task(page_to_broker()), asyncio.create_task(broker_to_page())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            try:
                await ws.close()
            except ConnectionClosed:
                pass
