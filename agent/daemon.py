"""``anoncam run``: the camera agent. Capture -> anonymize -> publish, fail-closed, under systemd.

The processing loop takes the newest frame from :class:`~agent.capture.Capture`, analyses it in
VIDEO mode, tracks and smooths the faces (:mod:`agent.tracking`), replaces them and hands the
:class:`~agent.guard.AnonymizedFrame` with its metadata to :class:`~agent.publish.Publisher`.

Fail-closed: a frame is published only if analysis ran on that very frame and every face was
replaced or masked within the time budget. Otherwise it is dropped, or replaced by a fully masked
frame (``policy.on_failure``), and the event is counted under ``fail_closed`` in the stats.

Python API (used by ``anoncam demo`` and ``anoncam bench``)::

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
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .capture import Capture, CaptureError, Frame
from .config import Config, load_config
from .errors import AnoncamError, ConfigError, ModelError
from .faces import Analysis, Face
from .guard import mask_everything
from .publish import Publisher
from .service import Notifier
from .tracking import Tracker

log = logging.getLogger(__name__)

META_SCHEMA = "anoncam.meta/1"
STATS_SCHEMA = "anoncam.stats/1"
FAIL_REASONS = ("analysis_error", "synthesis_error", "over_budget", "incomplete", "output_error")
STAGES = ("analysis", "tracking", "align", "routing", "synthesis", "compose", "expression", "encode", "total")


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` or ``[IPv6]:PORT``."""
    host, port = text.strip(), None
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ConfigError(f"--broker {text!r}: missing ']' after the IPv6 address")
        host, rest = host[1:end], host[end + 1:]
        if rest.startswith(":"):
            port = rest[1:]
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host:
        raise ConfigError(f"--broker {text!r}: give HOST:PORT, e.g. localhost:1883")
    if port is None:
        return host, 1883
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--broker {text!r}: port must be a number from 1 to 65535")
    return host, int(port)


def stream_threads(section):
    """``section`` (anonymizer or expression config) with ``threads: 0`` resolved for a stream.

    The loop runs face analysis and synthesis at the same time (see :meth:`Agent._loop`), so each
    stage gets half the cores. Left at 0, every runtime would size its pool to all of them and the
    pools fight: on 2 cores one thread each costs 5-15 % less CPU per frame (``anoncam bench``).
    """
    if section.threads:
        return section
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return section.model_copy(update={"threads": max(1, cores // 2)})


class Stats:
    """Counters since start plus per-interval rates and stage times."""

    def __init__(self):
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

    def snapshot(self, capture: Capture | None, publisher: Publisher | None, reset: bool = True) -> dict:
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
            },
            "fail_closed": {**self.fail_closed, "total": sum(self.fail_closed.values())},
            "faces": dict(self.faces),
            "capture": {"connected": bool(capture and capture.connected), "reconnects": cap.get("reconnects", 0),
                        "open_failures": cap.get("open_failures", 0)},
            "mqtt": {"connected": bool(publisher and publisher.connected),
                     "protocol": publisher.protocol if publisher else None,
                     "connects": pub.get("connects", 0), "connect_failures": pub.get("connect_failures", 0),
                     "buffered": publisher.buffered if publisher else 0},
        }
        if reset:
            self._reset_interval(now, read)
        return snap


class Agent:
    def __init__(self, config: Config | str | Path | None = None, source: str | None = None, broker: str | None = None):
        if config is None:
            config = Config()
        elif not isinstance(config, Config):
            config = load_config(config)
        if source is not None:
            config = config.model_copy(update={"capture": config.capture.model_copy(update={"source": str(source)})})
        self.cfg = config
        self.broker = parse_broker(broker) if broker else (config.mqtt.host, config.mqtt.port)
        self._stop = threading.Event()
        self.stats = Stats()
        self.capture: Capture | None = None
        self.publisher: Publisher | None = None
        self.anonymizer = None
        self.expression = None  # agent.expression.ExpressionAnalyzer when expression.enabled
        self.blendshapes = None  # agent.expression.BlendshapeReport otherwise
        self.tracker = Tracker(config.policy)
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
        self.stats, self.tracker, self.notifier = self._new_stats(), Tracker(self.cfg.policy), Notifier()
        # The stream already keeps the cores busy with its own threads (analysis, full-range detector,
        # output). OpenCV's pool on top splits each small warp and blend across cores and costs more
        # CPU than it saves: paste-back took 10-13 ms of CPU per 720p frame with it, 6 without.
        cv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        code = 1
        try:
            self.capture = self._new_capture()
            self.publisher = self._new_publisher()
            self.notifier.status("loading models")
            from .pipeline import Anonymizer

            if self.cfg.expression.enabled:
                from .expression import ExpressionAnalyzer

                try:
                    self.expression = ExpressionAnalyzer(stream_threads(self.cfg.expression))
                except ModelError as exc:
                    raise ModelError(f"{exc} (or set expression.enabled: false to publish without emotion metadata)") from None
            else:
                from .expression import BlendshapeReport

                self.blendshapes = BlendshapeReport(self.cfg.expression)
            # One classifier for the metadata and the generator router: each face is read once per frame.
            shared = (self.expression.classifier if self.expression is not None
                      and self.cfg.expression.classifier == self.cfg.anonymizer.emotion_classifier else None)
            self.anonymizer = Anonymizer(stream_threads(self.cfg.anonymizer), mode="video", emotion_classifier=shared)
            self._warm_up()
            self.publisher.start()
            self.capture.start()
            self.notifier.ready(f"streaming {self.capture.source.uri}")
            log.info("agent running: %s -> mqtt://%s:%d/%s/%s", self.capture.source.uri, *self.broker,
                     self.cfg.mqtt.prefix, self.cfg.mqtt.camera)
            code = self._loop(max_frames)
        finally:
            self.notifier.stopping("shutting down")
            self._shutdown()
            for sig, handler in restore:
                signal.signal(sig, handler)
            cv2.setNumThreads(cv_threads)
        return code

    # The three parts `anoncam bench` swaps for an in-memory camera, an offline publisher (JPEG and
    # metadata made, no network) and per-frame stage samples; everything else is run() as is.

    def _new_stats(self) -> Stats:
        return Stats()

    def _new_capture(self) -> Capture:
        return Capture(self.cfg.capture)

    def _new_publisher(self) -> Publisher:
        return Publisher(self.cfg.mqtt, *self.broker)

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
        size = self.anonymizer.synthesizer.size
        for backend in self.anonymizer.synthesizer.backends():
            for batch in (1, 2):
                backend.infer(np.zeros((batch, 3, size, size), np.float32))
        classifiers = [c.classifier for c in (self.anonymizer.router, self.expression) if c is not None]
        for clf in {id(c): c for c in classifiers}.values():  # once each: the two stages may share one
            clf.probabilities(np.zeros((2, 48, 48), np.uint8))

    def _shutdown(self):
        if self.capture is not None:
            self.capture.stop()
        if self.publisher is not None:
            self.last_stats = self.stats_snapshot(reset=True)
            self.publisher.publish_stats(self.last_stats)
            self.publisher.close()
        if self.anonymizer is not None:
            self.anonymizer.close()
            self.anonymizer = None
        self.notifier.close()

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
        with self.stats.lock:  # rates count from the first frame, not from model loading
            self.stats._reset_interval(t0, self.capture.counters["read"])
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
                    if now - last_frame < cfg.service.watchdog_stall_s:
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
                self._finish(item)
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

    def process(self, frame: Frame, t0: float = 0.0) -> bool:
        """Anonymize and queue one frame on the calling thread; False if it was failed closed."""
        return self._finish(self._analyze(frame, t0))

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
        stats, policy = self.stats, self.cfg.policy
        frame, rgb, start = w.frame, w.rgb, w.start
        with stats.lock:
            stats.frames["processed"] += 1
        budget_s = policy.frame_budget_ms / 1000.0
        if w.failed:
            return self._fail(rgb, frame, w.failed)
        if w.t_analysis - start > budget_s:
            return self._fail(rgb, frame, "over_budget")
        t_start2 = time.perf_counter()
        faces, held = self.tracker.update(w.analysis.faces, frame.monotonic)
        detections, held_boxes = self.tracker.update_detections(w.analysis.detections, frame.monotonic)
        analysis = Analysis(faces, detections, w.analysis.shape)
        t_track = time.perf_counter()
        try:
            result, jobs, timings = self.anonymizer.anonymize(rgb, analysis)
        except Exception as exc:
            log.warning("synthesis failed on frame %d: %s", frame.seq, exc)
            return self._fail(rgb, frame, "synthesis_error")
        t_anon = time.perf_counter()
        # The budget covers the frame's whole way, including its wait between the stages.
        if t_anon - start > budget_s:
            return self._fail(rgb, frame, "over_budget")
        try:
            meta = self.build_meta(frame, rgb, faces, jobs, covered=result.covered)
            t_meta = time.perf_counter()
            self.publisher.publish(result, meta, frame.seq, frame.wall)
        except Exception as exc:  # metadata or JPEG encoding: nothing of this frame goes out half-made
            log.warning("output failed on frame %d: %s", frame.seq, exc)
            return self._fail(rgb, frame, "output_error")
        end = time.perf_counter()

        with stats.lock:
            stats.frames["published"] += 1
            stats.faces["replaced"] += result.faces_replaced
            stats.faces["masked"] += result.faces_masked
            stats.faces["held"] += held + held_boxes
            stats.faces["frames_with_faces"] += bool(faces) or bool(detections)
            stats.stage("analysis", (w.t_analysis - start) * 1e3)
            stats.stage("tracking", (t_track - t_start2) * 1e3)
            for name in ("align", "routing", "synthesis", "compose"):
                stats.stage(name, timings[f"{name}_ms"])
            stats.stage("expression", (t_meta - t_anon) * 1e3)
            stats.stage("encode", (end - t_meta) * 1e3)
            stats.stage("total", (end - start) * 1e3)
        return True

    def _fail(self, rgb: np.ndarray, frame: Frame, reason: str) -> bool:
        published = False
        if self.cfg.policy.on_failure == "mask":
            try:
                meta = self.build_meta(frame, rgb, [], [], status="masked", reason=reason)
                self.publisher.publish(mask_everything(rgb), meta, frame.seq, frame.wall)
                published = True
            except Exception as exc:
                log.warning("could not publish the masked stand-in for frame %d: %s", frame.seq, exc)
        with self.stats.lock:
            self.stats.fail(reason)
            if published:
                self.stats.frames["published"] += 1
                self.stats.frames["published_masked"] += 1
            else:
                self.stats.frames["dropped_failed"] += 1
        return False

    # -- metadata -------------------------------------------------------------------------------

    def build_meta(self, frame: Frame, rgb: np.ndarray, faces: list[Face], jobs, status: str = "anonymized",
                   reason: str | None = None, covered=()) -> dict:
        h, w = rgb.shape[:2]
        meta = {
            "schema": META_SCHEMA,
            "camera": self.cfg.mqtt.camera,
            "frame_id": frame.seq,
            "timestamp": round(frame.wall, 3),
            "width": w,
            "height": h,
            "status": status,
            "faces": self.describe_faces(rgb, faces, jobs),
        }
        if len(covered):
            # Faces covered rather than synthesized (too small, turned, over max_faces, no mesh):
            # no expression to report.
            meta["masked_regions"] = [[round(float(v), 1) for v in b] for b in covered]
        if reason is not None:
            meta["reason"] = reason
        return meta

    def describe_faces(self, rgb: np.ndarray, faces: list[Face], jobs) -> list[dict]:
        """Per-face metadata: the one place that decides what a subscriber learns about each face.

        With ``expression.enabled`` the fields come from :class:`agent.expression.ExpressionAnalyzer`
        (schema ``agent/schema/anoncam-metadata-v1.json``); without it, box, track, blendshapes and head
        pose only. Either way no pixels or landmarks, and the blendshapes ``expression.blendshapes``
        chooses (pooled over other people's expressions by default)."""
        replaced = {id(j.face): j.generated is not None for j in jobs}
        if self.expression is not None:
            items = self.expression.describe(rgb, faces, jobs)
        else:
            h, w = rgb.shape[:2]
            items = []
            for face in faces:
                x0, y0, x1, y1 = face.box
                pose = face.head_pose()
                items.append({
                    "box": [round(max(0.0, x0), 1), round(max(0.0, y0), 1), round(min(float(w), x1), 1), round(min(float(h), y1), 1)],
                    "track_id": face.track_id,
                    "blendshapes": self.blendshapes(face),
                    "head_pose": {k: round(v, 2) for k, v in pose.items()} if pose else None,
                })
        for item, face in zip(items, faces):
            item["held"] = bool(face.extra.get("held", False))
            item["replaced"] = replaced.get(id(face), False)
        return items


@dataclass
class _Work:
    """A frame between the stages: the frame, its faces, and when analysis started and ended."""

    frame: Frame
    rgb: np.ndarray
    start: float
    t_analysis: float
    analysis: Analysis | None = None
    failed: str | None = None


# -- CLI ------------------------------------------------------------------------------------------

def register(sub):
    p = sub.add_parser("run", help="run the camera agent: capture, anonymize, publish over MQTT",
                       description="Read a camera (or a file or stream), replace every face and publish only anonymized "
                                   "frames and metadata over MQTT. Flags override the config file.")
    p.add_argument("--config", type=Path, help="YAML config (default: built-in defaults, see config/agent.yaml)")
    p.add_argument("--source", help="camera/file/stream URI, overrides capture.source")
    p.add_argument("--broker", help="HOST:PORT, overrides mqtt.host and mqtt.port")
    p.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.max_frames is not None and args.max_frames < 1:
        raise AnoncamError("--max-frames must be at least 1")
    agent = Agent(args.config, source=args.source, broker=args.broker)
    code = agent.run(max_frames=args.max_frames)
    if agent.last_stats:
        s = agent.last_stats
        log.info("frames read %d, published %d (%d masked), fail-closed %d, dropped by capture %d, by buffer %d",
                 s["frames"]["read"], s["frames"]["published"], s["frames"]["published_masked"],
                 s["fail_closed"]["total"], s["frames"]["dropped_capture"], s["frames"]["dropped_buffer"])
    return code
