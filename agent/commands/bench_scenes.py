"""The bench's scenes: the bundled astronaut photo (public domain) pasted into synthetic rooms.

640x480 with one face and 1280x720 with four, every face moving a little each frame so MediaPipe's
VIDEO mode tracks as it would on a camera. Frames are written raw to a temporary file before any
timing, and read back through :class:`RawVideo` by the agent's real Capture thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.io.images import read_image

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"

# The astronaut's face in the 512 px asset (landmark box x 181-270, y 72-178, from FaceAnalyzer in
# IMAGE mode) and the head-and-shoulders rectangle pasted into scenes around it.
ASSET_FACE_CENTER = (225.5, 125.0)
ASSET_FACE_WIDTH = 89.0
HEAD_CROP = (130, 0, 322, 262)  # x0, y0, x1, y1 in asset pixels


@dataclass(frozen=True)
class Person:
    """One astronaut copy: its face centre and face width at rest; ``phase`` desynchronises motion."""

    x: float
    y: float
    face_px: float
    phase: float


@dataclass(frozen=True)
class Scene:
    name: str
    width: int
    height: int
    people: tuple[Person, ...]


SCENES = (
    # Faces 122-138 px wide: a person a couple of metres from a 640x480 camera.
    Scene("640x480_1face", 640, 480, (Person(320, 235, 130, 0.0),)),
    # Faces 100-180 px wide at different depths, none overlapping another's face.
    Scene("1280x720_4faces", 1280, 720, (Person(175, 300, 106, 0.0), Person(480, 420, 130, 1.7),
                                         Person(795, 330, 150, 3.1), Person(1100, 380, 170, 4.6))),
)
SCENE_BY_NAME = {s.name: s for s in SCENES}


def load_head() -> np.ndarray:
    """The astronaut's head and shoulders, BGR uint8, with the package's own image reader."""
    img = read_image(ASSET)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    x0, y0, x1, y1 = HEAD_CROP
    return np.ascontiguousarray(img[y0:y1, x0:x1, :3])


def background(width: int, height: int, seed: int = 7) -> np.ndarray:
    """A face-free room-like backdrop: smooth colour patches plus sensor-like grain (so the JPEG
    encoder has texture to spend bits on, as it would on a camera image)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(70, 190, (6, 8, 1)) + rng.integers(-25, 25, (6, 8, 3))  # greyish walls and furniture
    smooth = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0.0, 4.0, (height, width, 3)).astype(np.float32)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def render_frame(scene: Scene, index: int, head: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """Frame ``index`` of ``scene`` (BGR): each person drifts by up to ~20 px and breathes +-6 % in
    size over a few seconds, i.e. 1-3 px per frame, like someone standing and talking."""
    frame = backdrop.copy()
    fx, fy = ASSET_FACE_CENTER[0] - HEAD_CROP[0], ASSET_FACE_CENTER[1] - HEAD_CROP[1]
    for p in sorted(scene.people, key=lambda q: q.face_px):  # far (small) first, near on top
        s = p.face_px * (1 + 0.06 * math.sin(index / 13 + p.phase)) / ASSET_FACE_WIDTH
        cx = p.x + 20 * math.sin(index / 9 + p.phase)
        cy = p.y + 8 * math.cos(index / 11 + p.phase)
        m = np.array([[s, 0, cx - s * fx], [0, s, cy - s * fy]], np.float32)
        cv2.warpAffine(head, m, (scene.width, scene.height), dst=frame, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_TRANSPARENT)
    return frame


def write_scene(scene: Scene, count: int, path: Path) -> Path:
    """``count`` frames of ``scene`` as raw BGR bytes, back to back (no codec to time or to blur)."""
    head, backdrop = load_head(), background(scene.width, scene.height)
    with open(path, "wb") as f:
        for i in range(count):
            render_frame(scene, i, head, backdrop).tofile(f)
    return path


class RawVideo:
    """The part of cv2.VideoCapture that :class:`~agent.io.capture.Capture` uses, over raw frames.

    Frames live in a file (page cache), not in the process, so they do not count in its RSS.
    """

    def __init__(self, path: Path, width: int, height: int):
        self._file = open(path, "rb")
        self._shape = (height, width, 3)
        self._size = height * width * 3

    def isOpened(self) -> bool:  # noqa: N802 -- cv2.VideoCapture's name
        return not self._file.closed

    def read(self) -> tuple[bool, np.ndarray | None]:
        data = np.fromfile(self._file, np.uint8, count=self._size)
        if data.size < self._size:
            return False, None
        return True, data.reshape(self._shape)

    def get(self, prop: int) -> float:
        return 0.0  # no native rate: the bench hands over every frame (capture.realtime false)

    def release(self):
        self._file.close()
