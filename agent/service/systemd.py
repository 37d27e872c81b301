"""systemd integration without extra dependencies: sd_notify over $NOTIFY_SOCKET and the watchdog.

Outside systemd (no $NOTIFY_SOCKET) every call is a no-op, so the same code runs from a shell.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_s = self._watchdog_interval(env)
        self._last_ping = 0.0
        self._sock = None
        if self.address:
            # A leading '@' names a socket in the abstract namespace.
            if self.address.startswith("@"):
                self.address = "\0" + self.address[1:]
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @staticmethod
    def _watchdog_interval(env) -> float | None:
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 1e6 if value > 0 else None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:  # systemd gone or socket full: never fatal for the camera
            log.debug("sd_notify failed: %s", exc)
            return False

    def ready(self, status: str = ""):
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str):
        self.send(f"STATUS={text}")

    def stopping(self, status: str = ""):
        self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self, now: float | None = None) -> bool:
        """Ping the watchdog, at most every half interval. Call only when frames are flowing."""
        if self.watchdog_s is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_s / 2:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
