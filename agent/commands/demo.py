"""``anoncam demo [--frames N]``: the whole camera agent on one machine, with nothing else installed.

Three real parts on loopback, nothing mocked:

- an embedded MQTT broker, amqtt (pure Python, from PyPI), on its own asyncio loop in a thread;
- the camera agent (:class:`agent.service.agent.Agent`, the same object ``anoncam run`` drives) playing the
  bundled clip ``agent/assets/demo.mp4`` in real time, like a camera, with the default settings;
- a subscriber (paho-mqtt) that sees what any consumer of the camera would see.

Everything the demo writes (a few frames, their metadata, a contact sheet) is decoded from what
arrived over MQTT; the raw clip frames are never written anywhere.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections import Counter
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from agent.commands.demo_mqtt import HOST, DemoError, EmbeddedBroker, Received, Receiver
from agent.config import Config

log = logging.getLogger(__name__)

CLIP = "demo.mp4"
PREFIX, CAMERA = "anoncam", "demo"
SAVED_FRAMES = 4
SHEET_FRAMES = 12
SHEET_COLUMNS = 4
THUMB = (320, 240)
SETTLE_S = 10.0  # how long to wait for the last messages after the agent has stopped


def evenly_spaced(n: int, k: int) -> list[int]:
    if n <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(k, n))})


def decode(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise DemoError("a frame that arrived over MQTT is not a decodable JPEG")
    return img


def face_summary(meta: dict) -> str:
    faces = meta.get("faces") or []
    labels = [(f.get("emotion") or {}).get("label") for f in faces]
    text = f"{len(faces)} face" + ("" if len(faces) == 1 else "s")
    named = [label for label in labels if label]
    if named:
        text += ": " + ", ".join(named)
    if meta.get("status") == "masked":
        text = f"masked ({meta.get('reason', 'fail-closed')})"
    return text


def thumbnail(img: np.ndarray, meta: dict) -> np.ndarray:
    thumb = cv2.resize(img, THUMB, interpolation=cv2.INTER_AREA)
    # A dark band under the caption keeps it readable on any background.
    band = thumb[-26:]
    band[:] = (band * 0.35).astype(np.uint8)
    caption = f"frame {meta.get('frame_id', '?')}  {face_summary(meta)}"
    cv2.putText(thumb, caption, (6, THUMB[1] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return thumb


def contact_sheet(pairs: list[tuple[dict, bytes]]) -> np.ndarray:
    thumbs = [thumbnail(decode(jpeg), meta) for meta, jpeg in pairs]
    rows = []
    for r in range(0, len(thumbs), SHEET_COLUMNS):
        row = thumbs[r:r + SHEET_COLUMNS]
        row += [np.zeros_like(thumbs[0])] * (SHEET_COLUMNS - len(row))
        rows.append(np.hstack(row))
    return np.vstack(rows)


def write_png(path: Path, img: np.ndarray) -> Path:
    if not cv2.imwrite(str(path), img):
        raise DemoError(f"cannot write {path}: check that --out is a writable folder")
    return path


def prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"cannot create the output folder {out}: {exc.strerror or exc}; choose another with --out") from None
    # Frames of an earlier run would mix with this run's; only files this command writes are removed.
    for old in out.glob("frame-*.*"):
        if re.fullmatch(r"frame-\d{5}\.(png|json)", old.name):
            old.unlink()


def save_outputs(got: Received, out: Path) -> list[Path]:
    """A few full-size anonymized frames (PNG, with their metadata as JSON) and a contact sheet."""
    pairs = got.pairs()
    written = []
    for i in evenly_spaced(len(pairs), SAVED_FRAMES):
        meta, jpeg = pairs[i]
        stem = out / f"frame-{int(meta.get('frame_id', i)):05d}"
        written.append(write_png(stem.with_suffix(".png"), decode(jpeg)))
        stem.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    sheet = contact_sheet([pairs[i] for i in evenly_spaced(len(pairs), SHEET_FRAMES)])
    return [write_png(out / "contact-sheet.png", sheet), *written]


# -- the run ------------------------------------------------------------------------------------------

class Progress:
    """A tqdm bar of frames received, opened at the first frame: MediaPipe's native start-up messages
    (printed while the models load, outside Python's logging) then come before it, not through it."""

    def __init__(self, total: int | None):
        self.total = total
        self._bar = None

    def update(self):
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=self.total, desc="frames received", unit="frame", disable=None, leave=False)
        self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._bar.close()


@contextmanager
def bundled_clip():
    """The clip's path on disk (extracted first if the package is installed as a zip)."""
    ref = resources.files("agent").joinpath("assets", CLIP)
    if not ref.is_file():
        raise DemoError(f"the bundled clip agent/assets/{CLIP} is missing: reinstall anoncam "
                        "(from a checkout, regenerate it with python -m tools.make_demo_clip)")
    with resources.as_file(ref) as path:
        yield path


def clip_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cap.release()
    return n


def demo_config(clip: Path, port: int, backend: str, clip_len: int, loop: bool = False) -> Config:
    """Built-in defaults, pointed at the clip and the embedded broker."""
    # Files play in real time, like a camera: when the pipeline is slower than 15 fps, frames are
    # skipped, not queued.
    return Config.model_validate({
        "inference": {"backend": backend},
        "capture": {"source": str(clip), "loop": loop},
        "mqtt": {
            "host": HOST, "port": port, "prefix": PREFIX, "camera": CAMERA,
            # The protocol is "auto": amqtt speaks only MQTT 3.1.1, so the agent's MQTT 5 attempt is refused
            # and it falls back, as it would with any 3.1.1 broker. The buffer holds the whole clip so the
            # frames anonymized during that first (~3 s) attempt are still delivered, not dropped.
            "buffer_frames": max(30, clip_len),
        },
    })


def quiet_libraries(verbose: bool) -> None:
    """Keep the terminal to the progress bar and the summary; ``-v`` shows everything."""
    if verbose:
        return
    # The agent's warnings still show; its routine INFO lines would break the progress bar.
    logging.getLogger("agent").setLevel(logging.WARNING)
    # amqtt logs the agent's refused MQTT 5 attempt (expected here) as warnings, and a failed start with a
    # traceback; the demo reports both in its own words.
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def run_demo(frames: int | None, out: Path, port: int, backend: str, verbose: bool = False) -> int:
    from agent.service.agent import Agent

    quiet_libraries(verbose)
    prepare_out(out)
    with bundled_clip() as clip:
        clip_len = clip_frames(clip)
        expected = min(frames, clip_len) if frames and clip_len else (frames or clip_len or None)
        broker = EmbeddedBroker(HOST, port).start()
        print(f"anoncam demo: amqtt {broker.version} broker on {HOST}:{broker.port}; clip {clip.name} "
              f"({clip_len} frames); loading models...", flush=True)
        bar = Progress(expected)
        started = time.monotonic()
        try:
            receiver = Receiver(HOST, broker.port, f"{PREFIX}/{CAMERA}", on_frame=bar.update).start()
            try:
                agent = Agent(demo_config(clip, broker.port, backend, clip_len))
                agent.run(max_frames=frames)
                pub = agent.publisher
                if pub is not None and pub.counters["connects"]:
                    # The agent publishes its retained "offline" after its last frame: wait for both.
                    sent = pub.counters["published"]
                    receiver.wait_until(lambda g: len(g.metas) >= sent and "offline" in g.availability, SETTLE_S)
            finally:
                receiver.close()
        finally:
            bar.close()
            broker.stop()
        elapsed = time.monotonic() - started
    return report(agent, receiver.got, broker, out, elapsed)


def run_view_demo(frames: int | None, port: int, view_port: int, backend: str, verbose: bool = False) -> int:
    """The clip in a loop through the agent to the embedded broker, watched in the live viewer
    (``anoncam view``'s page and bridge) until Ctrl-C or ``frames``."""
    from agent.commands.view import viewer_server
    from agent.service.agent import Agent

    quiet_libraries(verbose)
    with bundled_clip() as clip:
        clip_len = clip_frames(clip)
        broker = EmbeddedBroker(HOST, port).start()
        try:
            cfg = demo_config(clip, broker.port, backend, clip_len, loop=True)
            server = viewer_server(cfg, bind=HOST, port=view_port).start()
            try:
                print(f"anoncam demo: the live viewer is on {server.url} (amqtt {broker.version} broker on "
                      f"{HOST}:{broker.port}; the clip {clip.name} in a loop); Ctrl-C to stop", flush=True)
                agent = Agent(cfg)
                code = agent.run(max_frames=frames)
            finally:
                server.close()
        finally:
            broker.stop()
    fr = (agent.last_stats or {}).get("frames", {})
    print(f"anoncam demo: read {fr.get('read', 0)} frames, published {fr.get('published', 0)}, sent "
          f"{fr.get('sent', 0)} over MQTT; {server.bridged} viewer connection(s)", flush=True)
    return code


def report(agent, got: Received, broker: EmbeddedBroker, out: Path, elapsed: float) -> int:
    """Print what happened; 0 only if frames arrived and each came with its metadata."""
    stats = agent.last_stats or {}
    fr = stats.get("frames", {})
    fail = stats.get("fail_closed", {})
    sent = agent.publisher.counters["published"] if agent.publisher else 0
    protocol = agent.publisher.protocol if agent.publisher else "?"
    faces = [f for m in got.metas for f in m.get("faces") or []]
    emotions = Counter((f.get("emotion") or {}).get("label") for f in faces)
    emotions.pop(None, None)
    reasons = ", ".join(f"{k} {v}" for k, v in fail.items() if k != "total" and v) or "none"

    saved = save_outputs(got, out) if got.frames and got.complete else []
    lines = [
        f"anoncam demo: {len(got.frames)} anonymized frames received over MQTT in {elapsed:.1f} s"
        + (" (stopped early by a signal)" if agent.stopping else ""),
        f"  broker        amqtt {broker.version}, embedded, {HOST}:{broker.port}; agent connected with MQTT {protocol}",
        f"  agent         read {fr.get('read', 0)} frames, processed {fr.get('processed', 0)}, "
        f"published {fr.get('published', 0)} ({fr.get('published_masked', 0)} masked), "
        f"skipped by real-time capture {fr.get('dropped_capture', 0)}",
        f"  fail-closed   {fail.get('total', 0)} ({reasons})",
        f"  received      {len(got.frames)} frames, {len(got.metas)} metadata messages (sent {sent}), "
        f"{len(got.stats)} stats",
        f"  faces         {len(faces)} in {sum(1 for m in got.metas if m.get('faces'))} frames, "
        f"{sum(1 for f in faces if f.get('replaced'))} replaced",
        "  expression    " + (f"top: {emotions.most_common(1)[0][0]} ({emotions.most_common(1)[0][1]} of {len(faces)} "
                              f"faces); " + ", ".join(f"{k} {v}" for k, v in emotions.most_common())
                              if emotions else "none reported"),
        f"  availability  {', '.join(got.availability) or 'none'}",
    ]
    if saved:
        lines.append(f"  saved         {saved[0]} (contact sheet)")
        lines += [f"                {p}" for p in saved[1:]]
    print("\n".join(lines), flush=True)
    return verdict(agent, got, sent)


def verdict(agent, got: Received, sent: int) -> int:
    if not got.frames:
        why = agent.publisher.last_error if agent.publisher and agent.publisher.last_error else None
        print("anoncam demo: FAILED: no frames arrived at the subscriber"
              + (f" (the agent's MQTT connection: {why})" if why else "")
              + "; run again with -v to see the agent's and the broker's logs", file=sys.stderr)
        return 1
    if not got.complete:
        print(f"anoncam demo: FAILED: {len(got.frames)} frames but {len(got.metas)} metadata messages arrived; "
              "every frame must come with its metadata", file=sys.stderr)
        return 1
    if len(got.frames) < sent:
        print(f"anoncam demo: note: the agent sent {sent} frames, {len(got.frames)} arrived", file=sys.stderr)
    if not any(m.get("faces") for m in got.metas):
        print("anoncam demo: note: no face was reported in any frame; the clip shows one in every frame",
              file=sys.stderr)
    return 0


# -- CLI ------------------------------------------------------------------------------------------------

def register(sub):
    p = sub.add_parser("demo", help="play a bundled clip through the agent to an embedded MQTT broker",
                       description="Start an embedded MQTT broker (amqtt) on loopback, play the bundled clip (a "
                                   "public-domain NASA photo of an astronaut, moving) through the camera agent in "
                                   "real time, and subscribe to what it publishes. Saves a few received frames and "
                                   "a contact sheet (PNG) and prints a summary. Needs no camera, broker or network.")
    p.add_argument("--frames", type=int, help="stop after this many processed frames (default: the whole clip, 6 s)")
    p.add_argument("--out", type=Path, default=Path("anoncam-demo"),
                   help="folder for the received frames and the contact sheet (default: ./anoncam-demo)")
    p.add_argument("--port", type=int, default=0, help="loopback port for the embedded broker (default: any free port)")
    p.add_argument("--backend", choices=("auto", "openvino", "onnxruntime"), default="auto",
                   help="inference backend for the generator and the emotion classifier (default: auto)")
    p.add_argument("--view", nargs="?", type=int, const=8090, metavar="PORT",
                   help="instead of saving frames, play the clip in a loop and watch it in the live viewer at "
                        "http://localhost:PORT/ (default port 8090) until Ctrl-C or --frames")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.frames is not None and args.frames < 1:
        raise DemoError("--frames must be at least 1")
    if not 0 <= args.port < 65536:
        raise DemoError("--port must be from 1 to 65535 (or 0 for any free port)")
    if args.view is not None:
        return run_view_demo(args.frames, args.port, args.view, args.backend, verbose=getattr(args, "verbose", False))
    return run_demo(args.frames, args.out, args.port, args.backend, verbose=getattr(args, "verbose", False))
