"""Throughput of ``anoncam anonymize`` on a video file, against deface on the same file in the same run.

    python -m tools.bench_video [--seconds 10] [--fps 15] [--clip FILE] [--out reports/bench_video.json]

Without --clip it writes a 640x480 H.264 .mp4 with an AAC tone: ``anoncam bench``'s one-face scene
(the bundled public-domain astronaut drifting and breathing in a synthetic room). Each engine runs in
a child process of its own, one after the other, file in and file out:

- anoncam, once per backend (ONNX Runtime; OpenVINO where installed): what ``anoncam anonymize``
  runs per video -- PyAV decoding, the stream pipeline (VIDEO-mode analysis, tracker, synthesis, the
  guard) on every frame, H.264 encoding and the audio remuxed;
- deface with its CLI defaults (CenterFace, threshold 0.2, ellipse blur at 1.3x the box, libx264
  through imageio-ffmpeg, ``--keep-audio``), by its own ``video_detect``.

Reported per engine: frames in and out, model load seconds, seconds and fps over the file (decoding
and encoding included), the part of those seconds spent on the faces alone, CPU seconds (its own
threads and children), peak RSS, and how many cores other processes kept busy meanwhile (the
figures are only as quiet as the machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.reports import ROOT, cpu_name, git_commit, write_report

SCENE = "640x480_1face"
SAMPLE_RATE = 48000


def write_clip(path: Path, seconds: float, fps: int) -> Path:
    """The bench scene as H.264 .mp4 with a 440 Hz AAC tone."""
    import cv2

    from agent.commands.bench_scenes import (
        SCENE_BY_NAME,
        background,
        load_head,
        render_frame,
    )

    scene = SCENE_BY_NAME[SCENE]
    head, backdrop = load_head(), background(scene.width, scene.height)
    frames = (cv2.cvtColor(render_frame(scene, i, head, backdrop), cv2.COLOR_BGR2RGB) for i in range(round(seconds * fps)))
    write_h264_with_tone(path, scene.width, scene.height, fps, frames)
    return path


def write_h264_with_tone(path: Path, width: int, height: int, fps: int, frames) -> int:
    """RGB ``frames`` (an iterable) as H.264 .mp4 at ``fps``, with a 440 Hz AAC tone as long as the video."""
    import av

    count = 0
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        tone = out.add_stream("aac", rate=SAMPLE_RATE)
        tone.layout = "mono"
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = count
            count += 1
            for p in video.encode(frame):
                out.mux(p)
        for p in video.encode(None):
            out.mux(p)
        mux_tone(out, tone, round(SAMPLE_RATE * count / fps), 0.2)
    return count


def mux_tone(out, stream, samples: int, amplitude: float) -> None:
    """``samples`` of a 440 Hz sine (mono, SAMPLE_RATE) encoded on ``stream`` and muxed into ``out``."""
    import av
    import numpy as np

    wave = (amplitude * np.sin(2 * np.pi * 440 * np.arange(samples) / SAMPLE_RATE)).astype(np.float32)[None]
    for k in range(0, samples, 1024):
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, k:k + 1024]), format="fltp", layout="mono")
        af.sample_rate, af.pts = SAMPLE_RATE, k
        for p in stream.encode(af):
            out.mux(p)
    for p in stream.encode(None):
        out.mux(p)


def count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# -- child: one engine ----------------------------------------------------------------------------

FACE_WORK = [0.0]  # seconds in the per-frame face work (detection, replacement or blur), not decoding or encoding


def timed(fn):
    def call(*args, **kw):
        t = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            FACE_WORK[0] += time.perf_counter() - t

    return call

def run_anoncam(clip: Path, out: Path, backend: str) -> dict:
    from agent.commands.anonymize_video import StreamPipeline
    from agent.config import command_config
    from agent.io.video import VideoReader, rewrite

    cfg = command_config(None, backend=backend)
    t0 = time.perf_counter()
    with VideoReader(clip) as reader:
        pipeline = StreamPipeline(cfg, clip.name)
        t1 = time.perf_counter()
        try:
            written = rewrite(reader, out, timed(pipeline))
        finally:
            pipeline.close()
    t2 = time.perf_counter()
    c = pipeline.counts
    return {"load_s": t1 - t0, "seconds": t2 - t1, "face_work_s": FACE_WORK[0], "frames_out": written,
            "faces_per_frame": {"replaced": c.replaced / max(c.frames, 1), "covered": c.covered / max(c.frames, 1)},
            "masked_frames": c.masked, "backend": pipeline.anonymizer.backend.name}


def run_deface(clip: Path, out: Path) -> dict:
    import deface.deface
    from deface.centerface import CenterFace
    from deface.deface import video_detect

    t0 = time.perf_counter()
    centerface = CenterFace(in_shape=None, backend="auto")
    t1 = time.perf_counter()
    deface.deface.anonymize_frame = timed(deface.deface.anonymize_frame)  # its own loop calls these two
    video_detect(str(clip), str(out), timed(centerface), threshold=0.2, enable_preview=False, cam=False, nested=False,
                 replacewith="blur", mask_scale=1.3, ellipse=True, draw_scores=False,
                 ffmpeg_config={"codec": "libx264"}, keep_audio=True)
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "seconds": t2 - t1, "face_work_s": FACE_WORK[0], "frames_out": count_frames(out),
            "settings": "CLI defaults: threshold 0.2, blur, ellipse, mask_scale 1.3, libx264, --keep-audio"}


def child_main(engine: str, clip: Path, out: Path, result: Path) -> int:
    os.environ.setdefault("GLOG_minloglevel", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cpu0 = time.process_time()
    figures = run_deface(clip, out) if engine == "deface" else run_anoncam(clip, out, engine.split("-", 1)[1])
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # deface's ffmpeg processes
    from agent.commands.bench_runs import peak_rss_mb

    figures.update(cpu_s=time.process_time() - cpu0 + children.ru_utime + children.ru_stime,
                   peak_rss_mb=peak_rss_mb())
    result.write_text(json.dumps(figures))
    return 0


# -- parent ---------------------------------------------------------------------------------------

def engines() -> list[str]:
    import importlib.util

    found = ["anoncam-onnxruntime"]
    if importlib.util.find_spec("openvino") is not None:
        found.append("anoncam-openvino")
    if importlib.util.find_spec("deface") is not None:
        found.append("deface")
    return found


def spawn(engine: str, clip: Path, workdir: Path) -> dict:
    from agent.commands.bench_runs import OtherLoad

    result = workdir / f"{engine}.json"
    out = workdir / f"{engine}.mp4"
    load = OtherLoad()
    env = {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tools.bench_video", "--child", engine, str(clip), str(out),
                           str(result)], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result.is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"bench_video: {engine} failed (exit {proc.returncode}):\n{tail}")
    figures = json.loads(result.read_text())
    figures.update(fps=figures["frames_out"] / figures["seconds"], process_s=wall,
                   other_load_cores=round(load.cores(), 2))
    return figures


def measure(clip: Path | None, seconds: float, fps: int) -> dict:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="anoncam-bench-video-") as tmp:
        workdir = Path(tmp)
        made = clip is None
        clip = clip or write_clip(workdir / "clip.mp4", seconds, fps)
        frames = count_frames(clip)
        results = {}
        for engine in engines():
            print(f"bench_video: {engine} on {clip.name} ({frames} frames)", file=sys.stderr)
            results[engine] = spawn(engine, clip, workdir)
            if results[engine]["frames_out"] != frames:
                raise SystemExit(f"bench_video: {engine} wrote {results[engine]['frames_out']} of {frames} frames")
        size = _size(clip)
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git_commit(),
        "command": "python -m tools.bench_video" + ("" if made else f" --clip {clip}"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in os.getloadavg()]},
        "clip": {"made": f"{SCENE} scene, H.264 + AAC tone" if made else str(clip), "frames": frames,
                 "fps": fps if made else None, "size": size},
        "results": results,
        "anoncam_over_deface": {e: round(r["fps"] / results["deface"]["fps"], 3) for e, r in results.items()
                                if e != "deface"} if "deface" in results else None,
    }


def _size(clip: Path) -> str:
    import av

    with av.open(str(clip)) as c:
        v = c.streams.video[0]
        return f"{v.codec_context.width}x{v.codec_context.height}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of the generated clip")
    p.add_argument("--fps", type=int, default=15, help="frame rate of the generated clip")
    p.add_argument("--clip", type=Path, help="a video file to use instead of the generated clip")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_video.json")
    p.add_argument("--child", nargs=4, metavar=("ENGINE", "CLIP", "OUT", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        engine, clip, out, result = args.child
        return child_main(engine, Path(clip), Path(out), Path(result))
    write_report(args.out, measure(args.clip, args.seconds, args.fps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
