"""`anoncam anonymize` on video files: real clips written with PyAV and OpenCV, the real models.

Clips are short (24-40 frames, 640x480) moving copies of scikit-image's astronaut (NASA, public domain).
Faces are checked against dlib's ovals of the *source* frames (tests/daemon_helpers.py FaceOvals), an
oracle independent of the agent's own detector.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import skimage.data
from configs import config
from daemon_helpers import FaceOvals, make_clip, oval_diff

from agent.composition.compose import MASK_GREY
from agent.composition.guard import mask_everything
from agent.io.video import InputFrame, VideoError, VideoReader, VideoWriter, rewrite
from tools.bench_video import SAMPLE_RATE, mux_tone

ROOT = Path(__file__).resolve().parent.parent
# As in test_daemon_e2e: a replaced face differs from its source by tens of grey levels; the same
# pixels re-encoded differ by 1-3 (the background check below keeps the threshold honest).
MIN_FACE_DIFF = 12.0
MAX_BACKGROUND_DIFF = 4.0


def astronaut_frame(i: int, size=(640, 480)) -> np.ndarray:
    """Frame ``i`` of the moving astronaut (RGB), the motion of daemon_helpers.make_clip."""
    w, h = size
    s = 1.25 + 0.1 * np.sin(i / 7)
    dx, dy = 50 * np.sin(i / 9), 15 * np.cos(i / 11)
    m = np.array([[s, 0, w / 2 - 256 * s + dx], [0, s, h / 2 - 190 * s + dy]], np.float32)
    return cv2.warpAffine(skimage.data.astronaut(), m, size, borderMode=cv2.BORDER_REFLECT)


def make_video(path: Path, frames: int = 24, fps=15, audio: bool = False, pts=None, rotation: int | None = None,
               time_base=None) -> Path:
    """An H.264 clip written with PyAV; ``audio``: a 440 Hz AAC tone as long as the video;
    ``pts``: the frames' own time stamps (a variable frame rate); ``rotation``: display rotation
    (the pixels are stored turned the other way, so a player shows the astronaut upright)."""
    out = av.open(str(path), "w")
    video = out.add_stream("libx264", rate=fps)
    video.width, video.height = (480, 640) if rotation in (90, -90, 270) else (640, 480)
    video.pix_fmt = "yuv420p"
    if time_base is not None:
        video.codec_context.time_base = video.time_base = time_base
    if rotation is not None:
        video.set_display_rotation(rotation)
    tone = None
    if audio:
        tone = out.add_stream("aac", rate=SAMPLE_RATE)
        tone.layout = "mono"
    for i in range(frames):
        rgb = astronaut_frame(i)
        if rotation is not None:
            rgb = np.ascontiguousarray(np.rot90(rgb, -round(rotation / 90)))
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = pts[i] if pts is not None else i
        for p in video.encode(frame):
            out.mux(p)
    for p in video.encode(None):
        out.mux(p)
    if tone is not None:
        mux_tone(out, tone, int(SAMPLE_RATE * frames / fps), 0.3)
    out.close()
    return path


def decode(path: Path) -> dict:
    """What a player gets: upright BGR frames, their time stamps, the rate, and every audio packet."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = {"rate": v.average_rate, "codec": v.codec_context.name, "frames": [], "pts": [], "rotation": set()}
        for f in c.decode(v):
            rgb = f.to_ndarray(format="rgb24")
            turns = round(f.rotation / 90) % 4
            info["frames"].append(cv2.cvtColor(np.ascontiguousarray(np.rot90(rgb, turns)), cv2.COLOR_RGB2BGR))
            info["pts"].append(f.pts)
            info["rotation"].add(f.rotation)
    with av.open(str(path)) as c:
        info["audio_packets"] = [bytes(p) for s in c.streams.audio for p in c.demux(s) if p.size]
    with av.open(str(path)) as c:
        info["audio"] = [f.to_ndarray() for f in c.decode(audio=0)] if c.streams.audio else []
    return info


def anoncam(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.commands.cli", "anonymize", *map(str, args),
                           "--backend", "onnxruntime"], check=False, capture_output=True, text=True, cwd=ROOT,
                          timeout=600, **kw)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("anoncam: error:")]


@pytest.fixture(scope="module")
def ovals():
    return FaceOvals()


def assert_faces_replaced(src: dict, out: dict, ovals: FaceOvals):
    """Every source frame's dlib face oval differs in the output; the scene away from the face does not."""
    assert len(out["frames"]) == len(src["frames"])
    ovals._cache.clear()  # its cache is by frame index: this clip's frames only
    checked = 0
    for i, (s, o) in enumerate(zip(src["frames"], out["frames"])):
        masks = ovals.masks(i, s)
        near = np.zeros(s.shape[:2], np.uint8)
        for mask in masks:
            d = oval_diff(o, s, mask)
            assert d > MIN_FACE_DIFF, f"frame {i + 1}: face region differs from the source by only {d:.1f}"
            near |= mask
            checked += 1
        far = cv2.dilate(near, np.ones((201, 201), np.uint8)) == 0
        # The median: a small false box the guard covered may lie out there.
        change = np.median(np.abs(o.astype(np.float32) - s.astype(np.float32)).max(axis=2)[far])
        assert change < MAX_BACKGROUND_DIFF, f"frame {i + 1}: the scene changed by {change:.1f} (re-encoded badly?)"
    assert checked >= 0.8 * len(src["frames"]), f"dlib found the face in only {checked} frames: the check is vacuous"


# -- the command, end to end ---------------------------------------------------------------------

def test_mp4_with_audio_every_frame_replaced_audio_untouched(tmp_path, ovals):
    src = make_video(tmp_path / "clip.mp4", frames=24, audio=True)
    out = tmp_path / "anon.mp4"
    p = anoncam(src, out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1].startswith("1 video(s) written, 24 frame(s), 1.")
    assert p.stdout.strip().endswith("0 frame(s) masked whole, 0 failed")
    a, b = decode(src), decode(out)
    assert len(b["frames"]) == len(a["frames"]) == 24
    assert b["rate"] == a["rate"] == 15 and b["pts"] == a["pts"]
    assert b["codec"] == "h264" and b["frames"][0].shape == (480, 640, 3)
    # The audio is remuxed, not re-encoded: the same packets, so the same samples.
    assert b["audio_packets"] == a["audio_packets"] and len(a["audio_packets"]) > 20
    assert all(np.array_equal(x, y) for x, y in zip(a["audio"], b["audio"])) and len(a["audio"]) == len(b["audio"])
    assert_faces_replaced(a, b, ovals)
    assert not list(tmp_path.glob("*.part"))


def test_folder_corrupt_video_is_one_line_and_the_rest_is_written(tmp_path, ovals):
    photos = tmp_path / "in"
    (photos / "sub").mkdir(parents=True)
    good = make_clip(photos / "sub" / "good.avi", frames=20)  # MJPEG, as OpenCV writes it
    (photos / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(40_000))
    cv2.imwrite(str(photos / "still.png"), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    (photos / "notes.txt").write_text("not media")
    out = tmp_path / "out"
    p = anoncam(photos, out)
    assert p.returncode == 1, p.stderr[-3000:]
    (line,) = errors(p.stderr)
    assert "broken.mp4 cannot be opened as a video" in line and "Traceback" not in p.stderr
    summary = p.stdout.strip().splitlines()[-1]
    assert summary.startswith("1 image(s) written, 1 face(s) replaced, 0 covered, 0 with no face (written unchanged); "
                              "1 video(s) written, 20 frame(s), 1."), summary
    assert summary.endswith("0 frame(s) masked whole, 1 failed, 1 other file(s) skipped"), summary
    assert not (out / "broken.mp4").exists() and (out / "still.png").is_file()
    assert not list(out.rglob("*.part"))
    a, b = decode(good), decode(out / "sub" / "good.avi")
    assert len(b["frames"]) == len(a["frames"]) == 20 and b["rate"] == a["rate"] == 15
    assert b["codec"] == "mjpeg"
    assert_faces_replaced(a, b, ovals)


def test_output_equal_to_input_is_refused(tmp_path):
    src = make_video(tmp_path / "clip.mp4", frames=4)
    before = src.read_bytes()
    p = anoncam(src, src)
    assert p.returncode == 2
    (line,) = errors(p.stderr)
    assert "would overwrite INPUT" in line and src.read_bytes() == before
    p = anoncam(src, tmp_path / "clip.jpg")
    assert p.returncode == 2 and "a video is written as .mp4, .mkv, .mov, .avi" in errors(p.stderr)[0]


def test_write_failure_leaves_nothing(tmp_path):
    src = make_video(tmp_path / "clip.mp4", frames=24)

    def limit():  # a full disk or a quota: no file past 20 kB (the output is ~150 kB)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "out" / "anon.mp4"
    p = anoncam(src, out, preexec_fn=limit)
    assert p.returncode == 1, p.stderr[-3000:]
    (line,) = errors(p.stderr)
    assert f"cannot write {out}" in line and "Traceback" not in p.stderr
    assert "0 video(s) written" in p.stdout and "1 failed" in p.stdout
    assert not out.exists() and not list(out.parent.glob("*.part"))


def test_sigterm_mid_video_leaves_nothing_half_written(tmp_path):
    src = make_video(tmp_path / "clip.mp4", frames=40)
    out = tmp_path / "anon.mp4"
    part = out.with_name(out.name + ".part")
    proc = subprocess.Popen([sys.executable, "-m", "agent.commands.cli", "anonymize", str(src), str(out),
                             "--backend", "onnxruntime"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    deadline = time.monotonic() + 300
    while not part.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    if proc.returncode == 0:  # done before the signal came
        assert len(decode(out)["frames"]) == 40
    else:
        assert proc.returncode == 130 and "stopped by a signal, 1 not done" in stdout, (proc.returncode, stdout)
        assert not out.exists()
    assert not part.exists()


# -- the stream pipeline and the file layer, in process --------------------------------------------

def test_failed_frames_are_written_grey_and_counted(tmp_path):
    from agent.commands.anonymize_video import StreamPipeline
    from agent.pipeline import AnalysisFailed

    src = make_video(tmp_path / "clip.mp4", frames=20)
    pipeline = StreamPipeline(config())
    analyze = pipeline.anonymizer.analyze_all
    stamps = []

    def flaky(rgb, timestamp_ms=None):
        stamps.append(timestamp_ms)
        if len(stamps) % 5 == 3:
            raise AnalysisFailed("face analysis failed: injected")
        return analyze(rgb, timestamp_ms)

    synthesize = pipeline.anonymizer.anonymize

    def flaky_synthesis(rgb, analysis):
        if len(stamps) == 10:
            raise RuntimeError("generator fault")
        return synthesize(rgb, analysis)

    pipeline.anonymizer.analyze_all = flaky
    pipeline.anonymizer.anonymize = flaky_synthesis
    try:
        with VideoReader(src) as reader:
            assert rewrite(reader, tmp_path / "out.mkv", pipeline) == 20
    finally:
        pipeline.close()
    assert stamps == sorted(set(stamps)) and stamps[0] == 0 and stamps[1] == 67  # the frames' own times, in ms
    assert pipeline.counts.masked == 5 and pipeline.counts.frames == 20
    out = decode(tmp_path / "out.mkv")
    assert len(out["frames"]) == 20
    for i, frame in enumerate(out["frames"]):
        grey = np.abs(frame.astype(int) - MASK_GREY).max() <= 3
        assert grey == (i % 5 == 2 or i == 9), f"frame {i + 1}"


def test_display_rotation_is_applied_and_the_output_upright(tmp_path, ovals):
    from agent.commands.anonymize_video import StreamPipeline

    src = make_video(tmp_path / "phone.mp4", frames=12, rotation=90)
    a = decode(src)
    assert a["rotation"] == {90} and a["frames"][0].shape == (480, 640, 3)  # stored 480 wide, shown 640 wide
    pipeline = StreamPipeline(config())
    try:
        with VideoReader(src) as reader:
            rewrite(reader, tmp_path / "out.mp4", pipeline)
    finally:
        pipeline.close()
    b = decode(tmp_path / "out.mp4")
    assert b["rotation"] == {0} and b["frames"][0].shape == (480, 640, 3)
    assert pipeline.counts.replaced >= 12
    assert_faces_replaced(a, b, ovals)


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".mov", ".avi"])
def test_each_container_keeps_frame_count_rate_and_audio(tmp_path, ext):
    src = make_video(tmp_path / f"clip{ext if ext != '.avi' else '.mkv'}", frames=30, fps=Fraction(30000, 1001),
                     audio=True)
    with VideoReader(src) as reader:
        assert rewrite(reader, tmp_path / f"out{ext}", lambda f: mask_everything(f.rgb)) == 30
    a, b = decode(src), decode(tmp_path / f"out{ext}")
    assert len(b["frames"]) == 30 and b["audio_packets"] == a["audio_packets"]
    assert abs(float(b["rate"]) - 30000 / 1001) < 0.01, b["rate"]
    assert b["codec"] == ("mjpeg" if ext == ".avi" else "h264")


def test_variable_frame_rate_keeps_its_time_stamps(tmp_path):
    pts = [0, 1000, 2000, 4000, 4500, 5000, 9000, 10000, 11000, 12000]  # gaps and bursts, in 1/15000 s
    src = make_video(tmp_path / "vfr.mp4", frames=len(pts), pts=pts, time_base=Fraction(1, 15000))
    for ext in (".mp4", ".mkv"):
        with VideoReader(src) as reader:
            rewrite(reader, tmp_path / f"out{ext}", lambda f: mask_everything(f.rgb))
        with av.open(str(tmp_path / f"out{ext}")) as c:
            times = [round(float(f.time), 3) for f in c.decode(video=0)]
        assert times == [round(p / 15000, 3) for p in pts], (ext, times)


def test_nothing_but_an_anonymized_frame_is_written(tmp_path):
    src = make_video(tmp_path / "clip.mp4", frames=2)
    with VideoReader(src) as reader:
        frame = next(f for f in reader.items() if isinstance(f, InputFrame))
        writer = VideoWriter(tmp_path / "out.mp4", reader, 640, 480)
        try:
            with pytest.raises(TypeError, match="only an AnonymizedFrame"):
                writer.write(frame.rgb, frame)
        finally:
            writer.abort()
    assert not list(tmp_path.glob("out.mp4*"))


def test_damaged_middle_fails_the_file_in_one_line(tmp_path):
    src = make_video(tmp_path / "clip.mp4", frames=24)
    with av.open(str(src)) as c:
        packet = [(p.pos, p.size) for p in c.demux(video=0) if p.size][10]
    data = src.read_bytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(data[:packet[0]] + bytes(packet[1]) + data[sum(packet):])  # one frame's data zeroed
    with VideoReader(damaged) as reader, pytest.raises(VideoError, match="is damaged near frame"):
        rewrite(reader, tmp_path / "out.mp4", lambda f: mask_everything(f.rgb))
    assert not list(tmp_path.glob("out.mp4*"))
    os.truncate(damaged, 2000)  # the header cut off: not a video at all
    with pytest.raises(VideoError, match="cannot be opened as a video"):
        VideoReader(damaged)
