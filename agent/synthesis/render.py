"""Conditioning images: what the generator sees instead of the face.

Only the landmark geometry is drawn, never a pixel of the face: region-coloured anti-aliased mesh
contours (oval, brows, eyes, irises filled, lips, nose). Each region has its own colour, so a 128 px
generator can tell an upper eyelid from a brow without inferring it from the spacing of dots, as
GANonymization's grey dot rendering makes it.

Needs only numpy and OpenCV, so the training machine renders with the same code as the camera.
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.synthesis import topology

# RGB colours per region; left/right differ so the generator sees which way the head turns.
REGIONS = (
    ("FACE_OVAL", (200, 200, 200)),
    ("NOSE", (0, 110, 255)),
    ("RIGHT_EYEBROW", (255, 140, 0)),
    ("LEFT_EYEBROW", (255, 220, 0)),
    ("RIGHT_EYE", (0, 255, 80)),
    ("LEFT_EYE", (0, 255, 220)),
    ("LIPS", (255, 40, 40)),
)
IRISES = (("RIGHT_IRIS", (255, 0, 255)), ("LEFT_IRIS", (170, 0, 255)))
_SHIFT = 4  # sub-pixel precision bits for OpenCV drawing

# Only these landmarks are drawn, so training packs store just them (a third of
# the 478) to stay small enough to travel to a GPU machine.
RENDERED_INDICES = np.array(sorted({i for name, _ in REGIONS + IRISES for edge in getattr(topology, name) for i in edge}))
_POSITION = {int(k): i for i, k in enumerate(RENDERED_INDICES)}
_SEGMENTS = {
    name: np.array([[_POSITION[a], _POSITION[b]] for a, b in getattr(topology, name)], dtype=np.int64)
    for name, _ in REGIONS + IRISES
}


def render_conditioning(points: np.ndarray, size: int) -> np.ndarray:
    """Draw crop-space landmarks as an RGB uint8 image of ``size`` x ``size``.

    ``points`` is the full mesh (478, >=2) or just its RENDERED_INDICES rows.
    """
    canvas = np.zeros((size, size, 3), np.uint8)
    pts = np.asarray(points, dtype=np.float64)[:, :2]
    fixed = np.round(pts * (1 << _SHIFT)).astype(np.int32)
    if len(fixed) != len(RENDERED_INDICES):
        fixed = fixed[RENDERED_INDICES]
    thickness = max(1, round(size / 128))
    for name, colour in REGIONS:
        seg = fixed[_SEGMENTS[name]]  # (n, 2, 2): each edge as two points
        cv2.polylines(canvas, list(seg), False, colour, thickness, cv2.LINE_AA, _SHIFT)
    for name, colour in IRISES:
        ring = fixed[_SEGMENTS[name][:, 0]]
        cv2.fillPoly(canvas, [ring], colour, cv2.LINE_AA, _SHIFT)
    return canvas


def to_network_input(conditioning: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 in [-1, 1], the generator's input layout."""
    x = np.asarray(conditioning, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) / 127.5 - 1.0)


def from_network_output(y: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8 RGB."""
    y = np.clip((np.asarray(y, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255)
    return y.astype(np.uint8).transpose(0, 2, 3, 1)
