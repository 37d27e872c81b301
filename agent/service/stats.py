"""The agent's counters: what the stats topic carries (schema ``anoncam.stats/1``)."""

from __future__ import annotations

import threading
import time

STATS_SCHEMA = "anoncam.stats/1"
FAIL_REASONS = ("analysis_error", "synthesis_error", "over_budget", "incomplete", "output_error")
STAGES = ("analysis", "tracking", "align", "routing", "synthesis", "compose", "expression", "encode", "total")


class Stats:
    """Counters since start plus per-interval rates and stage times."""

    def __init__(self, experimental: list[str] | tuple = ()):
        """``experimental``: the privacy-weakening settings in use, listed in every snapshot."""
        self.experimental = list(experimental)
        self.started = time.monotonic()
        self.frames = {"processed": 0, "published": 0, "published_masked": 0, "dropped_failed": 0}
        self.fail_closed = dict.fromkeys(FAIL_REASONS, 0)
        self.faces = {"replaced": 0, "masked": 0, "held": 0, "frames_with_faces": 0}
        self.lock = threading.Lock()  # the output stage writes, the stats timer reads and resets
        self._reset_interval(self.started, 0)

    def _reset_interval(self, now: float, read: int):
        self._t_interval = now
        self._read_at_interval = read
        self._published_at_interval = self.frames["published"]
        self._stage_sum = dict.fromkeys(STAGES, 0.0)
        self._stage_max = dict.fromkeys(STAGES, 0.0)
        self._stage_n = dict.fromkeys(STAGES, 0)

    def stage(self, name: str, ms: float):
        self._stage_sum[name] += ms
        self._stage_n[name] += 1
        self._stage_max[name] = max(self._stage_max[name], ms)

    def fail(self, reason: str):
        self.fail_closed[reason] += 1

    def end_frame(self, seq: int, published: bool):
        """Called after each frame's stages were recorded (``anoncam bench`` keeps them per frame)."""

    def start_interval(self, read: int):
        """Rates count from now (the first frame), not from model loading."""
        with self.lock:
            self._reset_interval(time.monotonic(), read)

    def snapshot(self, capture=None, publisher=None, reset: bool = True) -> dict:
        """Counters since start and rates since the last reset; ``capture`` and ``publisher`` (the
        agent's) add theirs."""
        with self.lock:
            return self._snapshot(capture, publisher, reset)

    def _snapshot(self, capture, publisher, reset) -> dict:
        now = time.monotonic()
        dt = max(now - self._t_interval, 1e-6)
        cap = dict(capture.counters) if capture is not None else {}
        pub = dict(publisher.counters) if publisher is not None else {}
        read = cap.get("read", 0)
        snap = {
            "schema": STATS_SCHEMA,
            "timestamp": round(time.time(), 3),
            "uptime_s": round(now - self.started, 1),
            "interval_s": round(dt, 2),
            "fps_in": round((read - self._read_at_interval) / dt, 2),
            "fps_out": round((self.frames["published"] - self._published_at_interval) / dt, 2),
            "stage_ms": {k: round(self._stage_sum[k] / self._stage_n[k], 2) for k in STAGES if self._stage_n[k]},
            "stage_ms_max": {k: round(self._stage_max[k], 2) for k in STAGES if self._stage_n[k]},
            "frames": {
                "read": read,
                **self.frames,
                "dropped_capture": cap.get("dropped", 0),
                "dropped_buffer": pub.get("buffer_dropped", 0),
                "expired_buffer": pub.get("expired", 0),
                "corrupt": cap.get("corrupt", 0),
                "sent": pub.get("published", 0),
                "lost": pub.get("lost", 0),
            },
            "fail_closed": {**self.fail_closed, "total": sum(self.fail_closed.values())},
            "faces": dict(self.faces),
            "capture": {"connected": bool(capture and capture.connected), "reconnects": cap.get("reconnects", 0),
                        "open_failures": cap.get("open_failures", 0)},
            "mqtt": {"connected": bool(publisher and publisher.connected),
                     "protocol": publisher.protocol if publisher else None,
                     "connects": pub.get("connects", 0), "connect_failures": pub.get("connect_failures", 0),
                     "buffered": publisher.buffered if publisher else 0,
                     "error": publisher.last_error if publisher else None},
        }
        if self.experimental:
            snap["experimental"] = list(self.experimental)
        if reset:
            self._reset_interval(now, read)
        return snap
