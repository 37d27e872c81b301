"""Soak the daemon: an hour of `anoncam run` on a looping clip, with the broker restarted on a schedule.

    python -m tools.soak [--minutes 60] [--restart-every 10] [--out reports/soak.json]

mosquitto runs on a free loopback port and is stopped and started again every ``--restart-every``
minutes (5 s away each time); the agent plays a looping 640x480 15 fps clip of the public-domain
astronaut in real time, like a camera. A subscriber that reconnects by itself checks every frame as
it arrives: the face oval of the source frame (found once per clip frame by dlib, not by the agent)
must differ from it, or the frame counts as raw. Reported: the agent's resident memory every
``--sample-s`` seconds and its growth after warm-up, frames read, sent and received, frames lost and
why, raw frames, and whether every outage was recovered (``online`` again and frames flowing).
Needs mosquitto and the eval extra (dlib).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tools.reports import ROOT, write_report

sys.path.insert(0, str(ROOT / "tests"))  # the broker, clip and oval helpers live with the tests that share them

from daemon_helpers import (Broker, FaceOvals, agent_command, agent_env, decode_jpeg, make_clip,  # noqa: E402
                            oval_diff, read_frames, wait_for, write_config)

RAW_DIFF = 6.0  # mean grey-level change inside the face oval below which a frame counts as raw (JPEG noise: 1-3)
CLIP_FRAMES = 150


class Watcher:
    """Subscribes to everything of the camera, checks each frame as it arrives, keeps only counts."""

    def __init__(self, port: int, base: str, source: list[np.ndarray], masks: list[list[np.ndarray]]):
        import paho.mqtt.client as mqtt

        self.source, self.masks = source, masks
        self.counts = {"frames": 0, "metas": 0, "raw": 0, "checked_faces": 0, "undecodable": 0}
        self.availability: list[tuple[float, str]] = []
        self.last_stats: dict | None = None
        self.last_frame_at = 0.0
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{base}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 2.0)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg):
        kind = msg.topic.rsplit("/", 1)[-1]
        with self._lock:
            if kind == "frame":
                self._check(msg)
            elif kind == "meta":
                self.counts["metas"] += 1
            elif kind == "availability":
                self.availability.append((time.monotonic(), msg.payload.decode(errors="replace")))
            elif kind == "stats":
                self.last_stats = json.loads(msg.payload)

    def _check(self, msg):
        self.counts["frames"] += 1
        self.last_frame_at = time.monotonic()
        img = decode_jpeg(msg.payload)
        if img is None:
            self.counts["undecodable"] += 1
            return
        fid = int(dict(msg.properties.UserProperty)["frame_id"])
        index = (fid - 1) % len(self.source)  # the clip loops; frame ids count every frame read
        for mask in self.masks[index]:
            self.counts["checked_faces"] += 1
            if oval_diff(img, self.source[index], mask) < RAW_DIFF:
                self.counts["raw"] += 1

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def restart_broker(broker: Broker, watcher: Watcher, away_s: float, recover_s: float) -> dict:
    """Take the broker away for ``away_s``; recovered when ``online`` came again and frames flow."""
    broker.stop()
    stopped = time.monotonic()
    time.sleep(away_s)
    broker.start()
    back = time.monotonic()
    recovered = wait_for(lambda: any(t > back and p == "online" for t, p in watcher.availability)
                         and watcher.last_frame_at > back, recover_s)
    return {"away_s": round(back - stopped, 1), "recovered": bool(recovered),
            "recovered_after_s": round(time.monotonic() - back, 1) if recovered else None}


def soak(args, work: Path) -> dict:
    clip = make_clip(work / "soak.avi", frames=CLIP_FRAMES)
    source = read_frames(clip)
    ovals = FaceOvals()
    masks = [ovals.masks(i, f) for i, f in enumerate(source)]
    broker = Broker(work).start()
    cfg = write_config(work / "agent.yaml", capture={"source": str(clip), "loop": True},
                       mqtt={"host": "127.0.0.1", "port": broker.port, "prefix": "soak", "camera": "cam"},
                       stats={"interval_s": 10})
    watcher = Watcher(broker.port, "soak/cam", source, masks)
    proc = subprocess.Popen(agent_command("run", "--config", str(cfg)), env=agent_env(),
                            stdout=subprocess.DEVNULL, stderr=open(work / "agent.log", "w"))
    t0 = time.monotonic()
    rss, outages = [], []
    next_restart = t0 + args.restart_every * 60
    try:
        while (now := time.monotonic()) - t0 < args.minutes * 60 and proc.poll() is None:
            rss.append((round(now - t0, 1), rss_mb(proc.pid)))
            if now >= next_restart:
                outages.append({"at_s": round(now - t0, 1),
                                **restart_broker(broker, watcher, args.away_s, args.recover_s)})
                next_restart = time.monotonic() + args.restart_every * 60
            time.sleep(args.sample_s)
        crashed = proc.poll() is not None
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        wait_for(lambda: watcher.availability and watcher.availability[-1][1] == "offline", 10)
    finally:
        if proc.poll() is None:
            proc.kill()
        watcher.close()
        broker.stop()
    warm = [r for t, r in rss if t >= args.warmup_s and r is not None]
    growth = (warm[-1] - warm[0]) / warm[0] * 100 if len(warm) >= 2 else None
    stats = watcher.last_stats or {}
    return {
        "minutes": args.minutes, "restart_every_min": args.restart_every, "crashed": crashed, "exit_code": code,
        "rss_mb": {"after_warmup": warm[0] if warm else None, "end": warm[-1] if warm else None,
                   "max": max(warm) if warm else None, "growth_pct": round(growth, 2) if growth is not None else None,
                   "samples": rss},
        "frames": {"agent": stats.get("frames"), "received": watcher.counts["frames"],
                   "metas_received": watcher.counts["metas"], "undecodable": watcher.counts["undecodable"]},
        "raw_frames": watcher.counts["raw"], "faces_checked": watcher.counts["checked_faces"],
        "outages": outages, "all_recovered": all(o["recovered"] for o in outages),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--restart-every", type=float, default=10, help="minutes between broker restarts")
    ap.add_argument("--away-s", type=float, default=5, help="how long the broker stays down each time")
    ap.add_argument("--recover-s", type=float, default=60, help="how long an outage may take to recover")
    ap.add_argument("--sample-s", type=float, default=10, help="RSS sampling interval")
    ap.add_argument("--warmup-s", type=float, default=300, help="RSS growth is measured from here")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/soak.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="anoncam-soak-") as tmp:
        report = soak(args, Path(tmp))
    write_report(args.out, report)
    r = report
    print(f"soak {r['minutes']:g} min: RSS {r['rss_mb']['after_warmup']} -> {r['rss_mb']['end']} MB "
          f"({r['rss_mb']['growth_pct']} %), frames received {r['frames']['received']}, raw frames {r['raw_frames']}, "
          f"outages {len(r['outages'])} ({'all' if r['all_recovered'] else 'NOT all'} recovered); {args.out}")
    return 0 if r["raw_frames"] == 0 and r["all_recovered"] and not r["crashed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
