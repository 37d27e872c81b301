"""``anoncam demo`` end to end: embedded amqtt broker, the bundled clip, the real agent, the subscriber's PNGs.

Nothing is mocked: the command runs as a user would run it, in a subprocess. The saved frames are
checked against the bundled clip itself: inside the face oval a saved frame must differ strongly
from the source frame it claims to be (the face was replaced), outside it must match that frame and
no other (so the frame id it is labelled with is right, and the check above compares like with like).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_helpers import FaceOvals, agent_command, agent_env, oval_diff, read_frames

import agent

CLIP = Path(agent.__file__).resolve().parent / "assets" / "demo.mp4"
FRAMES = 20
# As in test_daemon_e2e: a replaced face differs by tens of grey levels, a re-encoded one by 1-3.
MIN_FACE_DIFF = 12.0
# Outside the face, the received frame is the source frame after one JPEG round trip (~1.4 here).
MAX_BACKGROUND_DIFF = 3.0


def run_demo(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(agent_command("demo", *args), cwd=cwd, env=agent_env(), capture_output=True, text=True,
                          timeout=timeout)


def summary_count(pattern: str, text: str) -> tuple[int, ...]:
    m = re.search(pattern, text)
    assert m, f"summary has no match for {pattern!r}:\n{text}"
    return tuple(int(g) for g in m.groups())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run shared by the tests below (it is the slow part)."""
    work = tmp_path_factory.mktemp("demo")
    out = work / "out"
    proc = run_demo("--frames", str(FRAMES), "--out", str(out), cwd=work)
    return proc, out


def test_demo_exits_0_and_reports_what_it_received(demo):
    proc, _ = demo
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    text = proc.stdout
    assert "Traceback" not in proc.stderr
    (processed,) = summary_count(r"processed (\d+)", text)
    assert processed == FRAMES  # --frames N: the agent stops after N processed frames
    frames, metas, sent = summary_count(r"received\s+(\d+) frames, (\d+) metadata messages \(sent (\d+)\)", text)
    assert frames == metas == sent and 0 < frames <= FRAMES
    (fail_closed,) = summary_count(r"fail-closed\s+(\d+)", text)
    (published,) = summary_count(r"published (\d+) \(", text)
    assert published + fail_closed == FRAMES  # every processed frame was published or failed closed
    (faces,) = summary_count(r"faces\s+(\d+) in", text)
    assert faces >= frames - 2, "the clip shows one face in every frame"
    assert re.search(r"availability\s+online, offline", text)
    assert re.search(r"agent connected with MQTT 3\.1\.1", text), "amqtt speaks 3.1.1: the MQTT 5 fallback must work"
    assert re.search(r"expression\s+top: \w+", text)


def test_demo_saves_a_contact_sheet_and_frames(demo):
    proc, out = demo
    assert proc.returncode == 0, proc.stderr[-4000:]
    sheet = cv2.imread(str(out / "contact-sheet.png"))
    assert sheet is not None and sheet.shape[1] == 4 * 320 and sheet.shape[0] % 240 == 0
    pngs = sorted(out.glob("frame-*.png"))
    assert len(pngs) == 4
    assert {p.name for p in out.iterdir()} == {"contact-sheet.png"} | {p.name for p in pngs} \
        | {p.with_suffix(".json").name for p in pngs}, "the demo writes only what it received"
    for png in pngs:
        assert str(png) in proc.stdout, "the summary says where the frames are"
        img = cv2.imread(str(png))
        assert img is not None and img.shape == (480, 640, 3)
        meta = json.loads(png.with_suffix(".json").read_text())
        assert meta["frame_id"] == int(png.stem.split("-")[1]) and meta["status"] == "anonymized"
        assert len(meta["faces"]) == 1 and meta["faces"][0]["replaced"]


def test_saved_frames_are_anonymized(demo):
    proc, out = demo
    assert proc.returncode == 0, proc.stderr[-4000:]
    source = read_frames(CLIP)
    ovals = FaceOvals()
    try:
        for png in sorted(out.glob("frame-*.png")):
            fid = int(png.stem.split("-")[1])
            img = cv2.imread(str(png))
            masks = ovals.masks(fid - 1, source[fid - 1])
            assert len(masks) == 1, f"source frame {fid} should show exactly one face"
            face = masks[0]
            background = ~cv2.dilate(face.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
            # The label is right: outside the face, this is source frame fid and not one of its neighbours.
            own = oval_diff(img, source[fid - 1], background)
            assert own < MAX_BACKGROUND_DIFF, f"{png.name}: background differs from source frame {fid} by {own:.1f}"
            for k in (fid - 1, fid + 1):
                if 1 <= k <= len(source):
                    assert oval_diff(img, source[k - 1], background) > own
            # And the face is not the source's face.
            d = oval_diff(img, source[fid - 1], face)
            assert d > MIN_FACE_DIFF, f"{png.name}: face region differs from the source by only {d:.1f}"
    finally:
        ovals.close()


def test_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_demo("--port", str(port), "--out", str(tmp_path / "out"), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr
