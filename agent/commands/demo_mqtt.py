"""The demo's MQTT side: an embedded broker (amqtt) and a subscriber, both on loopback."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata

from agent.errors import AnoncamError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # loopback only: the demo never opens a port to the network


class DemoError(AnoncamError):
    """The demo could not run (broker, port, output folder); the message says what to do."""


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """Fail with a clear message now, rather than with amqtt's traceback later."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DemoError(f"port {port} on {host} is already in use (another MQTT broker?); pick another with "
                                "--port, or leave --port out to use any free port") from None
            raise DemoError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; try another --port") from None


class EmbeddedBroker:
    """amqtt on ``host:port``, anonymous clients allowed, running in a background thread with its own loop."""

    def __init__(self, host: str = HOST, port: int = 0):
        self.host = host
        self.port = port or free_port(host)
        try:
            self.version = metadata.version("amqtt")
        except metadata.PackageNotFoundError:
            raise DemoError("the demo's MQTT broker is not installed: pip install 'anoncam[demo]'") from None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _config(self) -> dict:
        # Only the anonymous-auth plugin: no $SYS topics or packet logging, nothing but the demo's own messages.
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    def start(self, timeout: float = 20.0) -> "EmbeddedBroker":
        check_port(self.host, self.port)
        self._thread = threading.Thread(target=self._main, name="amqtt", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise DemoError(f"the embedded MQTT broker (amqtt) did not start within {timeout:.0f} s")
        if self._error is not None:
            self._thread.join(5)
            raise DemoError(f"the embedded MQTT broker (amqtt {self.version}) could not start on "
                            f"{self.host}:{self.port}: {self._error}; try another --port") from None
        return self

    def _main(self):
        try:
            # asyncio.run cancels whatever amqtt leaves running and closes the loop: no stray tasks at exit.
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(); never a traceback from a background thread
            self._error = self._error or exc
            self._ready.set()

    async def _serve(self):
        from amqtt.broker import Broker

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        broker = Broker(self._config())
        try:
            await broker.start()
        except Exception as exc:
            self._error = exc.__cause__ or exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await broker.shutdown()

    def stop(self, timeout: float = 10.0):
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stop is not None and thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop already ended
                pass
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the embedded MQTT broker did not stop within %.0f s", timeout)


# -- the subscriber -----------------------------------------------------------------------------------

@dataclass
class Received:
    """Everything that arrived under ``<prefix>/<camera>/``, in arrival order."""

    frames: list[bytes] = field(default_factory=list)  # JPEG payloads
    metas: list[dict] = field(default_factory=list)
    availability: list[str] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)
    unreadable: int = 0  # meta/stats payloads that were not JSON

    def pairs(self) -> list[tuple[dict, bytes]]:
        """Each frame with its metadata.

        MQTT 3.1.1 (all amqtt speaks) has no user properties, so the frame message does not carry
        its id. The agent publishes every frame immediately followed by its metadata on one
        connection, and brokers keep that order, so the k-th frame belongs to the k-th metadata
        message; :meth:`complete` checks the counts agree before anything relies on it.
        """
        return list(zip(self.metas, self.frames))

    @property
    def complete(self) -> bool:
        return len(self.frames) == len(self.metas)


class Receiver:
    """A paho-mqtt subscriber (MQTT 3.1.1, like any client of amqtt) on ``<prefix>/<camera>/#``."""

    def __init__(self, host: str, port: int, base: str, on_frame=None):
        import paho.mqtt.client as mqtt

        self.host, self.port, self.base = host, port, base
        self.got = Received()
        self._on_frame = on_frame
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anoncam-demo-viewer",
                                  protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> "Receiver":
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise DemoError(f"the demo subscriber cannot reach the embedded broker at {self.host}:{self.port}: {exc}") from None
        self.client.loop_start()
        # Subscribed before the agent starts, so the first frame and the "online" message are not missed.
        if not self._subscribed.wait(timeout):
            self.close()
            raise DemoError(f"the embedded broker at {self.host}:{self.port} did not confirm the subscription "
                            f"within {timeout:.0f} s")
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(f"{self.base}/#", qos=1)

    def _on_message(self, client, userdata, msg):
        kind = msg.topic.rsplit("/", 1)[-1]
        with self._lock:
            if kind == "frame":
                self.got.frames.append(bytes(msg.payload))
                if self._on_frame is not None:
                    self._on_frame()
            elif kind == "availability":
                self.got.availability.append(msg.payload.decode(errors="replace"))
            elif kind in ("meta", "stats"):
                try:
                    doc = json.loads(msg.payload)
                except ValueError:
                    self.got.unreadable += 1
                    return
                (self.got.metas if kind == "meta" else self.got.stats).append(doc)

    def wait_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self.got):
                    return True
            time.sleep(0.05)
        with self._lock:
            return predicate(self.got)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


# -- what the subscriber saves ------------------------------------------------------------------------
