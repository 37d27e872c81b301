"""Real components for the daemon tests: a mosquitto broker, an MQTT subscriber, a video clip."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
CLIP_SIZE = (640, 480)
CLIP_FPS = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 20.0, step: float = 0.05):
    """Poll until ``predicate()`` is truthy; returns its last value (tests assert on it)."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(step)
        value = predicate()
    return value


class Broker:
    """mosquitto on a free loopback port with a generated config; restartable on the same port."""

    def __init__(self, workdir: Path, extra: str = "", port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.conf = self.workdir / f"mosquitto-{self.port}.conf"
        self.log = self.workdir / f"mosquitto-{self.port}.log"

    def start(self) -> "Broker":
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "persistence false\n"
            # As root, mosquitto would drop to its own user and lose access to the test's private files.
            + (f"user {os.environ.get('USER', 'root')}\n" if os.geteuid() == 0 else "")
            + "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + (self.extra or "allow_anonymous true\n")
        )
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"))
        ok = wait_for(self._listening, 10)
        if not ok:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}")
        return self

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Subscriber:
    """Collects every message under ``topic`` (MQTT 5, so properties arrive too)."""

    def __init__(self, port: int, topic: str = "#", tls: dict | None = None, auth: tuple[str, str] | None = None):
        import paho.mqtt.client as mqtt

        self.messages: list = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if auth:
            self.client.username_pw_set(*auth)
        if tls:
            self.client.tls_set(**tls)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append(msg)

    def topic(self, suffix: str) -> list:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str, timeout: float = 5.0, **kw) -> bytes | None:
    """The retained payload on ``topic`` as a fresh subscriber sees it."""
    sub = Subscriber(port, topic, **kw)
    try:
        wait_for(lambda: sub.messages, timeout)
        msgs = [m for m in sub.messages if m.retain]
        return msgs[-1].payload if msgs else None
    finally:
        sub.close()


def make_clip(path: Path, frames: int = 45, size=CLIP_SIZE, fps=CLIP_FPS) -> Path:
    """scikit-image's astronaut (NASA, public domain) moving and zooming, as MJPG .avi."""
    from skimage import data

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        # Face about 110-130 px wide: inside MediaPipe's short-range detector's reach at 640x480.
        s = 1.25 + 0.1 * np.sin(i / 7)
        dx, dy = 50 * np.sin(i / 9), 15 * np.cos(i / 11)
        m = np.array([[s, 0, w / 2 - 256 * s + dx], [0, s, h / 2 - 190 * s + dy]], np.float32)
        writer.write(cv2.warpAffine(img, m, size, borderMode=cv2.BORDER_REFLECT))
    writer.release()
    return path


def read_frames(path: Path) -> list[np.ndarray]:
    """The clip as the agent decodes it (BGR), so comparisons exclude the file's own compression."""
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def decode_jpeg(payload: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)


class FaceOvals:
    """Face-oval masks of the *source* frames, found by dlib, not by the agent (cached per frame).

    dlib's HOG face detector and its 68-landmark shape predictor (face_recognition_models) owe nothing
    to the MediaPipe / CenterFace models the agent runs, so a face the agent misses is still checked.
    The oval is the jaw line (points 0-16) closed over the brows (17-26) lifted towards the hairline by
    0.22 of the nose-bridge-to-chin length: on the astronaut and demo clips it overlaps MediaPipe's
    face oval at IoU ~0.95.
    """

    # Detector score floor: on the test clips real faces score >= 0.8, the one false hit (a patch on
    # the astronaut's suit) <= 0.02.
    MIN_SCORE = 0.4
    BROW_LIFT = 0.22

    def __init__(self):
        import warnings

        import dlib

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
            import face_recognition_models as frm

        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(frm.pose_predictor_model_location())
        self._cache: dict[int, list[np.ndarray]] = {}

    def landmarks(self, rgb: np.ndarray) -> list[np.ndarray]:
        rects, _, _ = self.detector.run(rgb, 0, self.MIN_SCORE)
        return [np.array([[p.x, p.y] for p in self.predictor(rgb, r).parts()], np.float32) for r in rects]

    def masks(self, index: int, bgr: np.ndarray) -> list[np.ndarray]:
        if index not in self._cache:
            masks = []
            for p in self.landmarks(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)):
                up = self.BROW_LIFT * (p[27] - p[8])
                oval = np.vstack([p[0:17], p[26:16:-1] + up])
                m = np.zeros(bgr.shape[:2], np.uint8)
                cv2.fillPoly(m, [np.round(oval).astype(np.int32)], 1)
                masks.append(m.astype(bool))
            self._cache[index] = masks
        return self._cache[index]

    def close(self):
        pass


def oval_diff(published_bgr: np.ndarray, source_bgr: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference inside ``mask``: near 0 (JPEG noise) for a raw face, large for a replaced one."""
    a = published_bgr.astype(np.float32)[mask]
    b = source_bgr.astype(np.float32)[mask]
    return float(np.abs(a - b).mean())


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.commands.cli", *args]


def agent_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GLOG_minloglevel", "2")
    return env


def write_config(path: Path, **sections) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(json.loads(json.dumps(sections, default=str))))
    return path


def terminate(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class TcpProxy:
    """A loopback TCP forwarder that can go away and come back: a network outage between agent and broker."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self.up()

    def up(self):
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(8)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def down(self):
        srv, self._server = self._server, None
        if srv is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave it listening.
            try:
                srv.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            srv.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, srv):
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class MjpegServer:
    """An HTTP MJPEG camera (multipart/x-mixed-replace), as many IP cameras serve; can be cut and restarted."""

    def __init__(self, frames: list[np.ndarray], fps: float = 15.0, port: int | None = None):
        from http.server import BaseHTTPRequestHandler

        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.fps = fps
        self.port = port or free_port()
        self.served = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while outer._server is not None:
                        jpg = outer.jpegs[i % len(outer.jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         + f"Content-Length: {len(jpg)}\r\n\r\n".encode() + jpg + b"\r\n")
                        outer.served += 1
                        i += 1
                        time.sleep(1 / outer.fps)
                except OSError:
                    pass

        self._handler = Handler
        self._server = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self):
        from http.server import ThreadingHTTPServer

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self):
        srv, self._server = self._server, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()
