"""The camera agent: capture -> anonymize -> publish, fail-closed, under systemd.

The processing loop takes the newest frame from :class:`~agent.io.capture.Capture`, analyses it in
VIDEO mode, tracks and smooths the faces (:mod:`agent.detection.tracking`), replaces them and hands the
:class:`~agent.composition.guard.AnonymizedFrame` with its metadata to :class:`~agent.io.publish.Publisher`.

Fail-closed: a frame is published only if analysis ran on that very frame and every face was
replaced or masked within the time budget. Otherwise it is dropped, or replaced by a fully masked
frame (``policy.on_failure``), and the event is counted under ``fail_closed`` in the stats.

Python API (used by ``anoncam run``, ``anoncam demo`` and ``anoncam bench``)::

    agent = Agent(config)          # a Config, a YAML path, or None for the defaults
    code = agent.run(max_frames=None)   # blocks; 0 at end of file, after max_frames or stop()
    agent.stop()                   # from another thread or a signal handler
    agent.stats_snapshot()         # the same dict the stats topic carries
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from agent.composition.guard import mask_everything
from agent.config import Config, load_config, parse_broker
from agent.detection.tracking import Tracker
from agent.errors import ModelError
from agent.expression.metadata import frame_message
from agent.io.capture import Capture, CaptureError, Frame
from agent.io.publish import Publisher
from agent.service.stats import Stats
from agent.service.systemd import Notifier
from agent.types import Analysis

log = logging.getLogger(__name__)

STATS_SCHEMA = "anoncam.stats/1"
FAIL_REASONS = ("analysis_error", "synthesis_error", "over_budget", "incomplete", "output_error")
STAGES = ("analysis", "tracking", "align", "routing", "synthesis", "compose", "expression", "encode", "total")


def stream_threads(section):
    """``section`` (anonymizer or expression config) with ``threads: 0`` resolved for a stream.

    The loop runs face analysis and synthesis at the same time (see :meth:`Agent._loop`), so each
    stage gets half the cores. Left at 0, every runtime would size its pool to all of them and the
    pools fight: on 2 cores one thread each costs 5-15 % less CPU per frame (``anoncam bench``).
    """
    if section.threads:
        return section
    return section.model_copy(update={"threads": max(1, usable_cores() // 2)})


def stream_detector_threads(inference) -> int | None:
    """Threads for the face detector in a stream: every core when ``inference.threads`` is 0.

    The upright detector pass is the stage a 640x480 stream waits on, and the other stages are
    short, so giving it all the cores lifts the frame rate (+13 % on 2 cores, ``anoncam bench``)
    where the same for every model would make the pools fight. None: as configured."""
    return None if inference.threads else usable_cores()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)


# Stop the systemd watchdog pings when no frame came for this long: systemd then restarts the
# service once WatchdogSec (systemd/anoncam.service) has passed.
WATCHDOG_STALL_S = 5.0


@dataclass
class Parts:
    """What each run is made of: the camera, the MQTT side and the counters.

    ``anoncam bench`` swaps in an in-memory camera, an offline publisher (JPEG and metadata made, no
    network) and per-frame stage samples; everything else runs as in the service."""

    capture: Callable[[Config], Capture] = lambda cfg: Capture(cfg.capture)
    publisher: Callable[[Config, tuple[str, int]], Publisher] = lambda cfg, broker: Publisher(cfg.mqtt, *broker)
    stats: Callable[[Config], Stats] = lambda cfg: Stats(cfg.experimental.in_use())


class Agent:
    def __init__(self, config: Config | str | Path | None = None, source: str | None = None, broker: str | None = None,
                 parts: Parts | None = None, realtime: bool = True):
        """``broker``: HOST:PORT over the config's. ``realtime`` False: a file source hands over
        every frame instead of playing at its rate like a camera (tests, benchmarks)."""
        if config is None:
            config = Config()
        elif not isinstance(config, Config):
            config = load_config(config)
        if source is not None:
            config = config.model_copy(update={"capture": config.capture.model_copy(update={"source": str(source)})})
        self.cfg = config
        self.broker = parse_broker(broker) if broker else (config.mqtt.host, config.mqtt.port)
        self.parts = parts or Parts()
        if not realtime:
            self.parts = replace(self.parts, capture=lambda cfg: Capture(cfg.capture, realtime=False))
        self._stop = threading.Event()
        self.stats = self.parts.stats(config)
        self.capture: Capture | None = None
        self.publisher: Publisher | None = None
        self.anonymizer = None
        self.expression = None  # the metadata stage (agent.expression.metadata.ExpressionAnalyzer)
        self.tracker = None
        self.notifier = Notifier()
        self.last_stats: dict | None = None

    def stop(self):
        """Ask :meth:`run` to finish its current frame and shut down cleanly (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stats_snapshot(self, reset: bool = False) -> dict:
        return self.stats.snapshot(self.capture, self.publisher, reset=reset)

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self, max_frames: int | None = None) -> int:
        """Process frames until end of file, ``max_frames`` processed frames, or :meth:`stop`. Returns the exit code."""
        restore = self._install_signal_handlers()
        # A fresh start each run: counters, tracks and the systemd socket.
        cfg = self.cfg
        self.stats, self.notifier = self.parts.stats(cfg), Notifier()
        for name in cfg.experimental.in_use():
            log.warning("experimental.%s is on: published data identify people more easily (docs/configuration.md)", name)
        # The stream already keeps the cores busy with its own threads (analysis, full-range detector,
        # output). OpenCV's pool on top splits each small warp and blend across cores and costs more
        # CPU than it saves: paste-back took 10-13 ms of CPU per 720p frame with it, 6 without.
        cv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        code = 1
        try:
            self.capture = self.parts.capture(cfg)
            self.publisher = self.parts.publisher(cfg, self.broker)
            self.notifier.status("loading models")
            self._load_models()
            self._warm_up()
            self.publisher.start()
            self.capture.start()
            self.notifier.ready(f"streaming {self.capture.source.uri}")
            log.info("agent running: %s -> mqtt://%s:%d/%s/%s", self.capture.source.uri, *self.broker,
                     cfg.mqtt.prefix, cfg.mqtt.camera)
            code = self._loop(max_frames)
        finally:
            self.notifier.stopping("shutting down")
            self._shutdown()
            for sig, handler in restore:
                signal.signal(sig, handler)
            cv2.setNumThreads(cv_threads)
        return code

    def _load_models(self):
        from agent.expression.metadata import ExpressionAnalyzer
        from agent.pipeline import Anonymizer
        from agent.runtime.manifest import load_manifest

        cfg = self.cfg.model_copy(update={"inference": stream_threads(self.cfg.inference)})
        manifest = load_manifest(cfg.inference.models_dir)
        try:
            self.expression = ExpressionAnalyzer(cfg, manifest)
        except ModelError as exc:
            raise ModelError(f"{exc} (or set expression.enabled: false to publish without emotion metadata)") from None
        # One classifier for the metadata and the generator router: each face is read once per frame.
        self.anonymizer = Anonymizer(cfg, mode="video", emotion_classifier=self.expression.classifier,
                                     manifest=manifest,
                                     detector_threads=stream_detector_threads(self.cfg.inference))
        self.tracker = Tracker(cfg.policy.hold_ms, manifest.tracking)

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return []
        restore = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            restore.append((sig, signal.getsignal(sig)))
            signal.signal(sig, lambda *_: self.stop())
        return restore

    def _warm_up(self):
        """First inferences are slow (graph init, JIT): pay that before READY, not on the first frame."""
        w = self.cfg.capture.width or 640
        h = self.cfg.capture.height or 480
        self.anonymizer.analyze(np.full((h, w, 3), 128, np.uint8), 0)
        self.anonymizer.restart()
        for synthesizer in self.anonymizer.synthesizers():
            synthesizer.warm_up()
        classifiers = [c.classifier for c in (self.anonymizer.router, self.expression) if c and c.classifier]
        for clf in {id(c): c for c in classifiers}.values():  # once each: the two stages may share one
            clf.probabilities(np.zeros((2, 48, 48), np.uint8))

    def _shutdown(self):
        if self.capture is not None:
            self.capture.stop()
        if self.publisher is not None:
            self.last_stats = None
            # The last stats leave after every frame before them, so their counts are what arrived.
            self.publisher.close(final_stats=self._final_stats)
            if self.last_stats is None:  # the broker was away: the counts still say what was (not) sent
                self.last_stats = self.stats_snapshot(reset=True)
        if self.anonymizer is not None:
            self.anonymizer.close()
            self.anonymizer = None
        self.notifier.close()

    def _final_stats(self) -> dict:
        self.last_stats = self.stats_snapshot(reset=True)
        return self.last_stats

    def _loop(self, max_frames: int | None) -> int:
        """Two stages: this thread analyses frame N+1 while the output thread replaces, describes and
        publishes frame N. MediaPipe and the generator then overlap on a multi-core CPU. The hand-over
        holds one frame; a busy output stage makes analysis wait, and capture drops as usual."""
        cfg = self.cfg
        self._handoff: queue.Queue = queue.Queue(maxsize=1)
        self._worker_error: BaseException | None = None
        worker = threading.Thread(target=self._output_worker, name="output", daemon=True)
        worker.start()
        t0 = time.monotonic()
        self.stats.start_interval(self.capture.counters["read"])
        next_stats = t0 + cfg.stats.interval_s
        last_frame = t0
        processed = 0
        try:
            while not self._stop.is_set():
                self._check_worker()
                frame = self.capture.get(timeout=0.25)
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + cfg.stats.interval_s
                    self._publish_stats()
                if frame is None:
                    if self.capture.ended:
                        if self.capture.error:
                            raise CaptureError(self.capture.error)
                        log.info("end of %s after %d frames", self.capture.source.uri, processed)
                        break
                    if now - last_frame < WATCHDOG_STALL_S:
                        self.notifier.watchdog(now)
                    continue
                self._hand_over(self._analyze(frame, t0))
                processed += 1
                last_frame = time.monotonic()
                self.notifier.watchdog(last_frame)
                if max_frames is not None and processed >= max_frames:
                    break
        finally:
            self._handoff.put(None)  # the worker finishes what it holds, then exits
            worker.join()
        self._check_worker()
        return 0

    def _hand_over(self, item):
        while True:
            try:
                self._handoff.put(item, timeout=0.25)
                return
            except queue.Full:
                self._check_worker()

    def _check_worker(self):
        if self._worker_error is not None:
            raise self._worker_error

    def _output_worker(self):
        try:
            while (item := self._handoff.get()) is not None:
                published = self._finish(item)
                self.stats.end_frame(item.frame.seq, published)
        except BaseException as exc:  # surfaced by the main loop, which then shuts down
            log.exception("output stage failed")
            self._worker_error = exc
            while self._handoff.get() is not None:  # keep draining so the main loop never blocks
                pass

    def _publish_stats(self):
        snap = self.stats.snapshot(self.capture, self.publisher)
        self.last_stats = snap
        self.publisher.publish_stats(snap)
        self.notifier.status(
            f"{snap['fps_in']:.1f} fps in, {snap['fps_out']:.1f} out; fail-closed {snap['fail_closed']['total']}; "
            f"mqtt {'up' if snap['mqtt']['connected'] else 'down'}"
        )

    # -- one frame ------------------------------------------------------------------------------

    def _analyze(self, frame: Frame, t0: float) -> _Work:
        """Stage 1: face analysis of this very frame (MediaPipe VIDEO mode needs one caller, in order)."""
        start = time.perf_counter()
        rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
        ts_ms = int((frame.monotonic - t0) * 1000) + 1
        try:
            analysis = self.anonymizer.analyze_all(rgb, ts_ms)
        except Exception as exc:  # AnalysisFailed or anything else: this frame was not analysed
            log.warning("analysis failed on frame %d: %s", frame.seq, exc)
            return _Work(frame, rgb, start, time.perf_counter(), failed="analysis_error")
        return _Work(frame, rgb, start, time.perf_counter(), analysis)

    def _finish(self, w: _Work) -> bool:
        """Stage 2: track, replace, check, describe and queue for MQTT -- or fail closed."""
        with self.stats.lock:
            self.stats.frames["processed"] += 1
        budget_s = self.cfg.policy.frame_budget_ms / 1000.0
        if w.failed or w.t_analysis - w.start > budget_s:
            return self._fail(w, w.failed or "over_budget")
        w.times["analysis"] = (w.t_analysis - w.start) * 1e3
        t_track = time.perf_counter()
        faces, held = self.tracker.update(w.analysis.faces, w.frame.monotonic)
        detections, held_boxes = self.tracker.update_detections(w.analysis.detections, w.frame.monotonic)
        w.times["tracking"] = (time.perf_counter() - t_track) * 1e3
        try:
            result, jobs, timings = self.anonymizer.anonymize(w.rgb, Analysis(faces, detections, w.analysis.shape))
        except Exception as exc:
            log.warning("synthesis failed on frame %d: %s", w.frame.seq, exc)
            return self._fail(w, "synthesis_error")
        t_anon = time.perf_counter()
        # The budget covers the frame's whole way, including its wait between the stages.
        if t_anon - w.start > budget_s:
            return self._fail(w, "over_budget")
        w.times.update({name: timings[f"{name}_ms"] for name in ("align", "routing", "synthesis", "compose")})
        try:
            meta = self._message(w, self.expression.describe(w.rgb, faces, jobs), covered=result.covered)
            t_meta = time.perf_counter()
            self.publisher.publish(result, meta, w.frame.seq, w.frame.wall)
        except Exception as exc:  # metadata or JPEG encoding: nothing of this frame goes out half-made
            log.warning("output failed on frame %d: %s", w.frame.seq, exc)
            return self._fail(w, "output_error")
        end = time.perf_counter()
        w.times.update(expression=(t_meta - t_anon) * 1e3, encode=(end - t_meta) * 1e3, total=(end - w.start) * 1e3)
        with self.stats.lock:
            self.stats.frames["published"] += 1
            f = self.stats.faces
            f["replaced"] += result.faces_replaced
            f["masked"] += result.faces_masked
            f["held"] += held + held_boxes
            f["frames_with_faces"] += bool(faces) or bool(detections)
            for name, ms in w.times.items():
                self.stats.stage(name, ms)
        return True

    def _fail(self, w: _Work, reason: str) -> bool:
        published = False
        if self.cfg.policy.on_failure == "mask":
            try:
                meta = self._message(w, [], status="masked", reason=reason)
                self.publisher.publish(mask_everything(w.rgb), meta, w.frame.seq, w.frame.wall)
                published = True
            except Exception as exc:
                log.warning("could not publish the masked stand-in for frame %d: %s", w.frame.seq, exc)
        with self.stats.lock:
            self.stats.fail(reason)
            if published:
                self.stats.frames["published"] += 1
                self.stats.frames["published_masked"] += 1
            else:
                self.stats.frames["dropped_failed"] += 1
        return False

    def _message(self, w: _Work, faces: list[dict], **kw) -> dict:
        return frame_message(faces, camera=self.cfg.mqtt.camera, frame_id=w.frame.seq, timestamp=w.frame.wall,
                             shape=w.rgb.shape, **kw)


@dataclass
class _Work:
    """A frame between the stages: the frame, its faces, and when analysis started and ended."""

    frame: Frame
    rgb: np.ndarray
    start: float
    t_analysis: float
    analysis: Analysis | None = None
    failed: str | None = None
    times: dict[str, float] = field(default_factory=dict)  # stage -> ms, recorded once the frame is published
