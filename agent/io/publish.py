"""MQTT output: anonymized JPEG frames, per-frame metadata, availability and stats.

Topics, under ``<prefix>/<camera>/``:

- ``frame``: the anonymized frame as raw JPEG bytes. QoS 0, not retained; with MQTT 5 it carries
  ContentType ``image/jpeg``, user properties ``frame_id`` and ``timestamp`` and a short message expiry.
- ``meta``: one JSON document per published frame (same user properties, ContentType ``application/json``).
- ``availability``: retained ``online``/``offline``; ``offline`` is also the will, so a crash or a
  cut cable shows up as ``offline`` once the broker notices (keepalive x 1.5).
- ``stats``: periodic JSON.

With ``mqtt.discovery`` the Home Assistant discovery documents (:mod:`agent.io.discovery`) go out too.

Only :class:`~agent.composition.guard.AnonymizedFrame` objects can be published as frames: there is no
method here that takes raw pixels.

One thread owns the paho client (connect, reconnect with backoff, network I/O, the MQTT 5 -> 3.1.1
fallback); the processing loop only appends to a bounded buffer that drops its oldest frame when
full, so a missing broker never blocks capture.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import cv2
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.composition.guard import AnonymizedFrame
from agent.config import MqttConfig
from agent.io.broker_auth import read_password, tls_context
from agent.io.discovery import Announcer
from agent.io.retry import Backoff

log = logging.getLogger(__name__)

ONLINE, OFFLINE = b"online", b"offline"
# CONNACK codes that mean "I do not speak this protocol version" (3.1.1: 1, MQTT 5: 0x84).
_PROTOCOL_REFUSED = {0x01, 0x84}
_INFLIGHT = 8  # messages handed to paho but not yet written to the socket
_V5_CONNACK_WAIT_S = 3.0
FRAME_EXPIRY_S = 5  # MQTT 5 message expiry of frames; buffered frames older than this are dropped
KEEPALIVE_S = 30  # the broker publishes the 'offline' will ~1.5x this after it lost the agent


@dataclass
class _Entry:
    frame_id: int
    timestamp: float
    jpeg: bytes | None
    meta: bytes
    queued: float  # monotonic


class Publisher:
    def __init__(self, cfg: MqttConfig, host: str | None = None, port: int | None = None,
                 backoff: Backoff = Backoff(0.5, 30.0), frame_expiry_s: int = FRAME_EXPIRY_S, protocol: str = "auto",
                 keepalive: int = KEEPALIVE_S):
        """``backoff``: retry delays while the broker is away. ``protocol``: "auto" (MQTT 5, falling
        back to 3.1.1 if refused), "5" or "3.1.1". ``keepalive``: seconds."""
        self.cfg = cfg
        self.backoff = backoff
        self.keepalive = keepalive
        self.frame_expiry_s = frame_expiry_s
        self._auto = protocol == "auto"
        self.host = host or cfg.host
        self.port = port or cfg.port
        base = f"{cfg.prefix}/{cfg.camera}"
        self.topics = {name: f"{base}/{name}" for name in ("frame", "meta", "availability", "stats")}
        self.client_id = f"anoncam-{cfg.camera}"
        self._password = read_password(cfg)
        self._tls = tls_context(cfg)
        self._protocol = mqtt.MQTTv311 if protocol == "3.1.1" else mqtt.MQTTv5
        self._lock = threading.Lock()
        self._buffer: deque[_Entry] = deque()
        self._stats: bytes | None = None
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._connack: int | None = None  # reason code value of the last CONNACK, None until one arrives
        self._connack_text = ""
        self._flush_deadline = 0.0
        self.connected = False
        self.last_error: str | None = None
        self.counters = {"published": 0, "buffer_dropped": 0, "expired": 0, "lost": 0, "connects": 0,
                         "connect_failures": 0}
        self._final_stats: Callable[[], dict] | None = None
        self._online_mid: int | None = None
        self.refused = False  # the broker's ACL refused this camera's topics
        self.discovery = Announcer(cfg, self.topics, lambda: self._props("application/json")) if cfg.discovery else None

    @property
    def protocol(self) -> str:
        return "5" if self._protocol == mqtt.MQTTv5 else "3.1.1"

    # -- called by the processing loop; never blocks on the network ---------------------------

    def start(self) -> "Publisher":
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()
        return self

    def encode(self, frame: AnonymizedFrame) -> bytes:
        if not isinstance(frame, AnonymizedFrame):
            raise TypeError("only an AnonymizedFrame can be published")
        pixels = frame.pixels
        if pixels.dtype != "uint8":
            pixels = (pixels >> 8).astype("uint8")
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return buf.tobytes()

    def publish(self, frame: AnonymizedFrame, meta: dict, frame_id: int, timestamp: float) -> None:
        """Queue ``frame`` (JPEG-encoded here) and its metadata; drops the oldest entry if the buffer is full."""
        jpeg = self.encode(frame) if self.cfg.publish_frames else None
        entry = _Entry(frame_id, timestamp, jpeg, json.dumps(meta, separators=(",", ":")).encode(), time.monotonic())
        with self._lock:
            if len(self._buffer) >= self.cfg.buffer_frames:
                self._buffer.popleft()
                self.counters["buffer_dropped"] += 1
            self._buffer.append(entry)

    def publish_stats(self, stats: dict) -> None:
        """Only the newest stats are kept: old ones have no value once newer exist."""
        with self._lock:
            self._stats = json.dumps(stats, separators=(",", ":")).encode()

    @property
    def buffered(self) -> int:
        with self._lock:
            return len(self._buffer)

    def close(self, flush_s: float = 5.0, final_stats: Callable[[], dict] | None = None) -> None:
        """Send what is buffered (up to ``flush_s``), then ``final_stats()`` (made once everything
        before it has left, so its counts are what a subscriber received), a retained ``offline``,
        and disconnect."""
        if self._thread is None:
            return
        self._final_stats = final_stats
        self._flush_deadline = time.monotonic() + flush_s
        self._closing.set()
        self._thread.join(timeout=flush_s + 10)
        self._stop.set()
        self._thread = None

    # -- network thread ------------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=self._protocol,
                        reconnect_on_failure=False)
        if self.cfg.username is not None:
            c.username_pw_set(self.cfg.username, self._password)
        if self._tls is not None:
            c.tls_set_context(self._tls)
        c.will_set(self.topics["availability"], OFFLINE, qos=1, retain=True)
        c.connect_timeout = 10.0
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        if self.discovery is not None:
            c.on_message, c.on_subscribe = self.discovery.on_message, self.discovery.on_subscribe
        c.max_queued_messages_set(0)
        return c

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._connack = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
        self._connack_text = str(reason_code)
        if self._connack == 0:
            self.connected = True
            self.counters["connects"] += 1
            self.last_error = None
            self._online_mid = client.publish(self.topics["availability"], ONLINE, qos=1, retain=True).mid
            if self.discovery is not None:
                self.discovery.connected(client)
            log.info("MQTT connected to %s:%d (MQTT %s)", self.host, self.port, self.protocol)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        # MQTT 5 brokers answer a QoS 1 publish the ACL forbids with "Not authorized"; the frames (QoS 0)
        # go the same way unanswered, so the availability message is where the refusal shows.
        if mid == self._online_mid and getattr(reason_code, "is_failure", False):
            message = (f"broker {self.host}:{self.port} refused publishing to {self.topics['availability']}: "
                       f"{reason_code}; allow user {self.cfg.username or '(anonymous)'} to write "
                       f"{self.cfg.prefix}/{self.cfg.camera}/# in the broker's ACL")
            self.refused = True
            if message != self.last_error:
                log.error("MQTT: %s", message)
            self.last_error = message
        elif self.discovery is not None and not self.refused and (problem := self.discovery.refusal(mid, reason_code)):
            if problem != self.last_error:
                log.error("MQTT: %s", problem)
            self.last_error = problem

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.connected:
            log.warning("MQTT disconnected from %s:%d: %s", self.host, self.port, reason_code)
        self.connected = False

    def _sleep(self, seconds: float) -> bool:
        """Wait unless closing; True if the thread should stop waiting."""
        return self._closing.wait(seconds) or self._stop.is_set()

    def _connect(self) -> mqtt.Client | None:
        """One connection attempt, including the CONNACK; the connected client or None."""
        client = self._new_client()
        self._connack = None
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive)
        except ssl.SSLCertVerificationError as exc:
            self._fail(f"the certificate of {self.host}:{self.port} is not trusted ({exc.verify_message}); check "
                       "mqtt.tls.ca_file and that the broker's certificate names this host")
            return None
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._fail(f"cannot reach {self.host}:{self.port}: {exc}")
            return None
        wait = client.connect_timeout
        if self._auto and self._protocol == mqtt.MQTTv5:
            # amqtt (3.1.1 only) misreads an MQTT 5 CONNECT with a will and answers nothing until its own
            # timeout; a 5-capable broker answers in one round trip, so a short wait costs nothing.
            wait = _V5_CONNACK_WAIT_S
        deadline = time.monotonic() + wait
        while self._connack is None and time.monotonic() < deadline and not self._stop.is_set():
            if client.loop(0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
        if self._connack == 0:
            return client
        refused = self._connack
        try:
            client.disconnect()
        except Exception:
            pass
        if self._auto and self._protocol == mqtt.MQTTv5 and (refused is None or refused in _PROTOCOL_REFUSED):
            # amqtt and other 3.1.1-only brokers refuse (or just drop) an MQTT 5 CONNECT.
            log.info("broker %s:%d refused MQTT 5; using MQTT 3.1.1", self.host, self.port)
            self._protocol = mqtt.MQTTv311
            return self._connect()
        if refused is None:
            self._fail(f"no CONNACK from {self.host}:{self.port}")
        else:
            self._fail(f"broker {self.host}:{self.port} refused the connection: {self._connack_text}")
        return None

    def _fail(self, message: str):
        self.counters["connect_failures"] += 1
        if message != self.last_error:
            log.warning("MQTT: %s", message)
        self.last_error = message

    def _run(self):
        backoff = self.backoff.min_s
        inflight: deque = deque()
        while not self._stop.is_set():
            if self._closing.is_set() and (self._client is None or time.monotonic() > self._flush_deadline):
                break
            if self._client is None:
                self._client = self._connect()
                if self._client is None:
                    if self._sleep(backoff):
                        break
                    backoff = self.backoff.next(backoff)
                    continue
                backoff = self.backoff.min_s
            client = self._client
            rc = client.loop(0.02)
            if rc != mqtt.MQTT_ERR_SUCCESS or not self.connected:
                self.connected = False
                self._client = None
                # Frames handed to the connection that never left it: counted, not retried (QoS 0).
                self.counters["lost"] += sum(is_frame for info, is_frame in inflight if not info.is_published())
                inflight.clear()
                continue
            while inflight and inflight[0][0].is_published():
                self.counters["published"] += inflight.popleft()[1]
            self._send_pending(client, inflight)
            if self._closing.is_set() and not inflight and self.buffered == 0:
                if self._send_final_stats(client):
                    break
        self._shutdown()

    def _send_pending(self, client: mqtt.Client, inflight: deque):
        with self._lock:
            stats, self._stats = self._stats, None
        if stats is not None:
            inflight.append((client.publish(self.topics["stats"], stats, qos=0, properties=self._props("application/json")), 0))
        while len(inflight) < _INFLIGHT:
            with self._lock:
                if not self._buffer:
                    return
                entry = self._buffer.popleft()
            age = time.monotonic() - entry.queued
            if age > self.frame_expiry_s:
                self.counters["expired"] += 1
                continue
            if entry.jpeg is not None:
                expiry = max(1, round(self.frame_expiry_s - age))
                inflight.append((client.publish(self.topics["frame"], entry.jpeg, qos=0,
                                                properties=self._props("image/jpeg", entry, expiry)), 0))
            inflight.append((client.publish(self.topics["meta"], entry.meta, qos=0,
                                            properties=self._props("application/json", entry)), 1))

    def _send_final_stats(self, client: mqtt.Client) -> bool:
        """At close, with nothing left to send: the last stats message. True once it has left."""
        make, self._final_stats = self._final_stats, None
        if make is None:
            return True
        info = client.publish(self.topics["stats"], json.dumps(make(), separators=(",", ":")).encode(), qos=0,
                              properties=self._props("application/json"))
        deadline = time.monotonic() + 2
        while not info.is_published() and time.monotonic() < deadline:
            if client.loop(0.02) != mqtt.MQTT_ERR_SUCCESS:
                break
        return True

    def _props(self, content_type: str, entry: _Entry | None = None, expiry: int | None = None) -> Properties | None:
        if self._protocol != mqtt.MQTTv5:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = content_type
        if entry is not None:
            props.UserProperty = [("frame_id", str(entry.frame_id)), ("timestamp", f"{entry.timestamp:.3f}")]
        if expiry is not None:
            props.MessageExpiryInterval = expiry
        return props

    def _shutdown(self):
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if self.connected:
                info = client.publish(self.topics["availability"], OFFLINE, qos=1, retain=True)
                deadline = time.monotonic() + 3
                # QoS 1: wait for the broker's PUBACK so the retained offline is really stored.
                while not info.is_published() and time.monotonic() < deadline:
                    if client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                        break
                self.connected = False  # a deliberate disconnect is not worth a warning
                client.disconnect()
                client.loop(0.1)
        except Exception as exc:
            log.debug("MQTT shutdown: %s", exc)
        self.connected = False
