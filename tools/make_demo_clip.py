"""Make ``agent/assets/demo.mp4``, the clip ``anoncam demo`` plays, from ``agent/assets/astronaut.jpg`` only.

The one bundled photograph (NASA, public domain) is panned, zoomed and slightly rotated by a smooth
virtual camera, so the clip shows one moving face and nothing that is not public domain.

    python -m tools.make_demo_clip [--out agent/assets/demo.mp4] [--seconds 6]

Format: 640x480, 15 fps, MPEG-4 Part 2 (``mp4v``) in MP4. That is the codec the opencv wheel that
mediapipe pulls in can both write and read back through FFmpeg (its FFmpeg has no H.264 encoder), so
the clip can be regenerated anywhere the package installs. The script reads the result back and
fails if the frame count or size is wrong.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "agent" / "assets" / "astronaut.jpg"
DEFAULT_OUT = ROOT / "agent" / "assets" / "demo.mp4"
SIZE = (640, 480)
FPS = 15
# Where the face is in astronaut.jpg (MediaPipe landmarks: box 181-270 x 72-178 px, so ~90 px wide).
FACE_CENTER = (224.0, 123.0)
FACE_WIDTH = 90.0
# Face width on screen, in px: MediaPipe's short-range detector (used for streams) finds faces of
# roughly 20-60 % of a 640 px frame's width reliably; 125-145 px sits well inside that, like a person
# a couple of metres from a lab camera. The lower end also keeps the 512 px photo (zoomed at least
# 1.39x) larger than the frame even when rolled, so no frame needs made-up border pixels.
FACE_PX = (125.0, 145.0)
MAX_ROLL = 6.0  # degrees


def camera(t: float) -> tuple[float, float, float, float]:
    """The virtual camera at ``t`` in [0, 1]: face width (px), face centre x, y (px) and roll (degrees).

    Slow sines with unrelated periods, so the motion has no jerks and does not repeat within the clip.
    """
    lo, hi = FACE_PX
    width = lo + (hi - lo) * 0.5 * (1 - math.cos(2 * math.pi * t))  # zoom in and back out once
    cx = 285 + 60 * math.sin(2 * math.pi * 0.9 * t)
    cy = 160 + 25 * math.sin(2 * math.pi * 1.4 * t + 0.6)
    roll = MAX_ROLL * math.sin(2 * math.pi * 0.7 * t)
    return width, cx, cy, roll


def warp_matrix(width: float, cx: float, cy: float, roll: float, photo_size: tuple[int, int]) -> np.ndarray:
    """Photo -> frame transform that puts the face at (cx, cy), moved as little as needed so that the
    photo covers the whole frame (the pan is the only thing given up near the photo's edges)."""
    m = cv2.getRotationMatrix2D(FACE_CENTER, roll, width / FACE_WIDTH)
    m[:, 2] += (cx - FACE_CENTER[0], cy - FACE_CENTER[1])
    # The frame's corners in photo coordinates; shift them back inside the photo where they stick out.
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0, 1], [SIZE[0], 0, 1], [0, SIZE[1], 1], [SIZE[0], SIZE[1], 1]], np.float64)
    p = corners @ inv.T
    pw, ph = photo_size
    delta = np.array([max(0.0, -p[:, 0].min()) + min(0.0, pw - 1 - p[:, 0].max()),
                      max(0.0, -p[:, 1].min()) + min(0.0, ph - 1 - p[:, 1].max())])
    # Moving the sampled photo points by delta = moving the photo by -L @ delta in the frame.
    m[:, 2] -= m[:, :2] @ delta
    return m


def frame_at(photo: np.ndarray, t: float) -> np.ndarray:
    m = warp_matrix(*camera(t), photo_size=(photo.shape[1], photo.shape[0]))
    return cv2.warpAffine(photo, m, SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def write_clip(out: Path, seconds: float) -> int:
    photo = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    if photo is None:
        raise SystemExit(f"cannot read {PHOTO}")
    n = round(seconds * FPS)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    if not writer.isOpened():
        raise SystemExit("this OpenCV build cannot write MPEG-4 (mp4v) video; install opencv-contrib-python from PyPI")
    for i in range(n):
        writer.write(frame_at(photo, i / max(n - 1, 1)))
    writer.release()
    return n


def check_clip(path: Path, expected: int) -> None:
    """Read the clip back the way the agent does (FFmpeg): a clip that only writes is no use."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    count = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        if img.shape[:2] != (SIZE[1], SIZE[0]):
            raise SystemExit(f"{path}: frame {count + 1} is {img.shape[1]}x{img.shape[0]}, expected {SIZE[0]}x{SIZE[1]}")
        count += 1
    cap.release()
    if count != expected:
        raise SystemExit(f"{path}: read back {count} frames, wrote {expected}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.make_demo_clip", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seconds", type=float, default=6.0)
    args = p.parse_args(argv)
    n = write_clip(args.out, args.seconds)
    check_clip(args.out, n)
    print(f"{args.out}: {n} frames, {SIZE[0]}x{SIZE[1]} @ {FPS} fps, {args.out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
