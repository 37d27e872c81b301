"""Camera input: an OpenCV source read by its own thread, handing over only the newest frame.

Sources, by URI:

- ``/dev/videoN`` or ``N``: a V4L2 device;
- a path or ``file://`` URI: a video file, played at its own frame rate like a camera (optionally looped);
- ``rtsp://``, ``rtsps://``: an RTSP stream; ``http://``, ``https://``: an MJPEG (or other FFmpeg-readable) stream.

Processing pulls with :meth:`Capture.get`. When it is slower than the source, unread frames are
overwritten (counted as ``dropped``): a camera agent must show *now*, so nothing ever queues. A live
source that fails or goes silent is reopened with exponential backoff; a file ends with
:attr:`Capture.ended` set once its last frame has been handed over.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import cv2
import numpy as np

from agent.config import CaptureConfig
from agent.errors import AnoncamError
from agent.io.retry import Backoff

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
DEFAULT_FILE_FPS = 25.0
READ_TIMEOUT_S = 5.0  # a live source silent this long is reopened


class CaptureError(AnoncamError):
    """The source cannot be used at all (missing file, unreadable video, bad URI)."""


@dataclass(frozen=True)
class Source:
    kind: str  # "v4l2" | "file" | "stream"
    target: str | int  # what cv2.VideoCapture opens
    api: int  # cv2.CAP_* backend
    uri: str

    @property
    def live(self) -> bool:
        return self.kind != "file"


@dataclass
class Frame:
    seq: int  # 1-based count of frames read from the source since start
    image: np.ndarray  # BGR uint8 (H, W, 3)
    monotonic: float  # time.monotonic() when read
    wall: float  # time.time() when read


def parse_source(uri: str | int) -> Source:
    uri = str(uri).strip()
    if not uri:
        raise CaptureError("capture.source is empty; give /dev/videoN, a camera index, a video file, rtsp:// or http:// URL")
    if uri.isdigit():
        return Source("v4l2", int(uri), cv2.CAP_V4L2, uri)
    if uri.startswith("/dev/"):
        return Source("v4l2", uri, cv2.CAP_V4L2, uri)
    scheme = urlparse(uri).scheme.lower()
    if scheme in STREAM_SCHEMES:
        return Source("stream", uri, cv2.CAP_FFMPEG, uri)
    if scheme == "file":
        uri = urlparse(uri).path
    elif scheme and len(scheme) > 1:  # one letter would be a Windows drive
        raise CaptureError(f"capture.source {uri!r}: unsupported scheme {scheme!r} (use rtsp://, http://, a file or /dev/videoN)")
    path = Path(uri).expanduser()
    if not path.is_file():
        raise CaptureError(f"capture.source {uri!r}: no such video file (for a camera give /dev/videoN or its index)")
    return Source("file", str(path), cv2.CAP_FFMPEG, uri)


def _cannot_open(source: Source) -> str:
    if source.kind == "v4l2":
        return (f"capture.source {source.uri}: no camera there (is it plugged in? see `ls /dev/video*`); "
                "check capture.source")
    return f"capture.source {source.uri}: cannot open it; check the URL, its credentials and that the camera is reachable"


def open_video(source: Source, cfg: CaptureConfig, timeout_s: float = READ_TIMEOUT_S):
    """Open ``source`` with OpenCV; returns a VideoCapture that may or may not be opened."""
    params = []
    if source.kind == "stream":
        # Without these FFmpeg can block for minutes on a dead stream, and the reader would never reconnect.
        params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(timeout_s * 1000),
                   cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(timeout_s * 1000)]
        if source.uri.lower().startswith("rtsp"):
            # TCP interleaving survives NAT and lossy Wi-Fi where UDP RTP tears frames apart.
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    if source.kind == "v4l2":
        if cfg.width:
            params += [cv2.CAP_PROP_FRAME_WIDTH, cfg.width]
        if cfg.height:
            params += [cv2.CAP_PROP_FRAME_HEIGHT, cfg.height]
        if cfg.fps:
            params += [cv2.CAP_PROP_FPS, cfg.fps]
    return cv2.VideoCapture(source.target, source.api, params)


class Capture:
    """The reader thread and the one-frame hand-over slot."""

    def __init__(self, cfg: CaptureConfig, source: str | None = None,
                 opener: Callable[[Source, CaptureConfig], object] = open_video, realtime: bool = True,
                 backoff: Backoff = Backoff(0.5, 10.0), read_timeout_s: float = READ_TIMEOUT_S):
        """``realtime`` False: a file hands over every frame instead of playing at its rate and
        dropping like a camera. ``backoff``: retry delays after a live source fails;
        ``read_timeout_s``: a live source silent this long is reopened."""
        self.cfg = cfg
        self.realtime = realtime
        self.backoff = backoff
        self.read_timeout_s = read_timeout_s
        if opener is open_video:
            opener = functools.partial(open_video, timeout_s=read_timeout_s)
        self.source = parse_source(source if source is not None else cfg.source)
        self._opener = opener
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._eof = False
        self.error: str | None = None  # set when a file source could not be read at all
        self.native_fps: float | None = None
        self.connected = False
        self.counters = {"read": 0, "dropped": 0, "corrupt": 0, "reconnects": 0, "open_failures": 0}
        self._first = None  # a live source's first open, made here so that one missing at start is an error
        if self.source.live:
            self._first = self._open()
            if self._first is None:
                raise CaptureError(_cannot_open(self.source))
        else:
            # Fail now, with a clear message, rather than as a silent end of file later.
            cap = self._opener(self.source, self.cfg)
            ok = cap.isOpened() and cap.read()[0]
            cap.release()
            if not ok:
                raise CaptureError(f"{self.source.uri} is not a video OpenCV can read (corrupt, or an unsupported codec)")

    # -- consumer side -------------------------------------------------------------------------

    def start(self) -> "Capture":
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()
        return self

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet handed over, waiting up to ``timeout`` s; None if there is none."""
        with self._cond:
            if self._slot is None and not self._eof:
                self._cond.wait_for(lambda: self._slot is not None or self._eof, timeout)
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            return frame

    @property
    def ended(self) -> bool:
        """True once a (non-looping) file has been read to its end and its last frame handed over."""
        with self._cond:
            return self._eof and self._slot is None

    def stop(self):
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        elif self._first is not None:  # opened but never started
            self._first.release()
            self._first = None

    # -- reader thread -------------------------------------------------------------------------

    def _run(self):
        try:
            self._loop()
        except Exception as exc:  # the reader must never die silently: processing would wait forever
            log.exception("capture thread failed")
            self.error = f"capture failed: {exc}"
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True if stop was requested."""
        return self._stop.wait(max(seconds, 0.0))

    def _loop(self):
        src = self.source
        self._retry_s = self.backoff.min_s
        cap, self._first = self._first, None
        try:
            while not self._stop.is_set():
                if cap is None:
                    cap = self._open()
                    if cap is None:
                        if not src.live or self._retry("cannot open %s; retrying in %.1f s"):
                            return
                        continue
                ok, image = cap.read()
                if not ok or image is None:
                    cap.release()
                    cap = None
                    self.connected = False
                    if not src.live:
                        if self.cfg.loop and self.counters["read"] > 0:
                            continue
                        log.info("end of %s", src.uri)
                        return
                    self.counters["reconnects"] += 1
                    if self._retry("lost %s; reconnecting in %.1f s"):
                        return
                    continue
                image = self._validate(image)
                if image is None:
                    self.counters["corrupt"] += 1
                    continue
                self._retry_s = self.backoff.min_s
                if not src.live and self._pace():
                    return
                self._hand_over(image)
        finally:
            if cap is not None:
                cap.release()

    def _open(self):
        """The opened source, or None (counted; a file that cannot be opened is an error)."""
        src = self.source
        cap = self._opener(src, self.cfg)
        if not cap.isOpened():
            cap.release()
            self.counters["open_failures"] += 1
            if not src.live:
                self.error = f"{src.uri} could not be opened"
            return None
        self.connected = True
        if not src.live:
            fps = self.cfg.fps or cap.get(cv2.CAP_PROP_FPS) or 0.0
            self.native_fps = fps if 0 < fps < 1000 else DEFAULT_FILE_FPS
            self._paced_start, self._paced_n = time.monotonic(), 0
        log.info("capture open: %s", src.uri)
        return cap

    def _retry(self, message: str) -> bool:
        """Wait out the backoff before the next attempt; True if stop was requested meanwhile."""
        log.warning(message, self.source.uri, self._retry_s)
        stopped = self._sleep(self._retry_s)
        self._retry_s = self.backoff.next(self._retry_s)
        return stopped

    def _pace(self) -> bool:
        """A file plays like a camera (frame n is due n/fps after the start), or waits for the
        consumer to take each frame (realtime off); True if stop was requested meanwhile."""
        if self.realtime:
            self._paced_n += 1
            return self._sleep(self._paced_start + self._paced_n / self.native_fps - time.monotonic())
        with self._cond:
            self._cond.wait_for(lambda: self._slot is None or self._stop.is_set())
        return False

    def _validate(self, image) -> np.ndarray | None:
        """A well-formed BGR uint8 frame, or None for something no camera should produce."""
        if not isinstance(image, np.ndarray) or image.size == 0 or image.dtype != np.uint8:
            return None
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        elif image.ndim != 3 or image.shape[2] != 3:
            return None
        if image.shape[0] < 16 or image.shape[1] < 16:
            return None
        w, h = self.cfg.width, self.cfg.height
        if w and h and (image.shape[1], image.shape[0]) != (w, h):
            # The camera ignored the requested size (or this is a file): deliver what was asked for.
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        return image

    def _hand_over(self, image: np.ndarray):
        self.counters["read"] += 1
        frame = Frame(self.counters["read"], image, time.monotonic(), time.time())
        with self._cond:
            if self._slot is not None:
                self.counters["dropped"] += 1
            self._slot = frame
            self._cond.notify_all()
