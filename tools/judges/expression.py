"""The expression judge: face-api's faceExpressionNet, 112x112 RGB -> 7 emotions.

What the net expects, from face-api's source (FaceFeatureExtractor.ts, NetInput.toBatchTensor,
FaceLandmarks.align, extractFaces): the face cut at the bounding box of its 68 landmarks grown by
20 % (10 % each side) and clipped at the image's borders, padded with black to a square (centred),
resized bilinearly to 112x112, RGB minus the mean (122.782, 117.001, 104.298), divided by 255.
Four densely connected blocks of separable convolutions, a 7x7 average pool, one dense layer and a
softmax. Its outputs come in face-api's order, ``FACE_API_LABELS``; :meth:`ExpressionJudge.probabilities`
returns them in the project's ``EMOTIONS`` order.

A whole small face image (a FER2013 frame) is already such a crop and goes in as it is.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tools.datasets import EMOTIONS
from tools.judges.common import judge_entry, session

NAME = "expression"
INPUT_SIZE = 112
MEAN_RGB = (122.782, 117.001, 104.298)
BOX_PADDING = 0.2
BATCH = 64
FACE_API_LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
_SAME = {"angry": "angry", "disgust": "disgusted", "fear": "fearful", "happy": "happy", "neutral": "neutral",
         "sad": "sad", "surprise": "surprised"}
# Column of face-api's output for each of EMOTIONS: probabilities[:, TO_EMOTIONS] is in EMOTIONS order.
TO_EMOTIONS = np.array([FACE_API_LABELS.index(_SAME[e]) for e in EMOTIONS])

# MediaPipe FaceMesh points that play the 68-point set's part: the jaw line from ear to ear (no
# forehead), the eyebrows, eyes, nose and lips. Their bounding box is the 68 landmarks' box.
_MP_68_LIKE = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361,
               323, 454, 356, 70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 336, 296, 334, 293, 300, 276, 283, 282,
               295, 285, 33, 133, 362, 263, 1, 61, 291, 0, 17)


def expression_box(landmarks) -> tuple[float, float, float, float]:
    """The 68-landmark bounding box (x0, y0, x1, y1) from dlib's 68 points or MediaPipe's 478."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    if len(lm) >= 468:
        lm = lm[list(_MP_68_LIKE)]
    elif len(lm) != 68:
        raise ValueError(f"expression_box: expected 68 or 468+ landmarks, got {len(lm)}")
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    return float(x0), float(y0), float(x1), float(y1)


def expression_crop(rgb: np.ndarray, box) -> np.ndarray:
    """face-api's face crop: ``box`` grown by 20 % and clipped at the image, padded black to a square."""
    x0, y0, x1, y1 = (float(v) for v in box)
    pw, ph = (x1 - x0) * BOX_PADDING / 2, (y1 - y0) * BOX_PADDING / 2
    h, w = rgb.shape[:2]
    cx0, cy0 = max(int(np.floor(x0 - pw)), 0), max(int(np.floor(y0 - ph)), 0)
    cx1, cy1 = min(int(np.ceil(x1 + pw)), w), min(int(np.ceil(y1 + ph)), h)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"expression_crop: box {box} lies outside the {w}x{h} image")
    return pad_to_square(rgb[cy0:cy1, cx0:cx1])


def pad_to_square(img: np.ndarray) -> np.ndarray:
    """Black bands on both sides of the shorter dimension (face-api's padToSquare, centred)."""
    h, w = img.shape[:2]
    if h == w:
        return img
    diff = abs(h - w)
    after = round(diff * 0.5)
    before = diff - after
    pads = ((before, after), (0, 0)) if h < w else ((0, 0), (before, after))
    return np.pad(img, pads + ((0, 0),) * (img.ndim - 2))


def to_input(crops, size: int = INPUT_SIZE) -> np.ndarray:
    """Face crops (RGB or grey uint8, any size) -> (N, 112, 112, 3) float32, mean-subtracted, /255."""
    out = np.empty((len(crops), size, size, 3), np.float32)
    mean = np.array(MEAN_RGB, np.float32)
    for i, c in enumerate(crops):
        c = np.asarray(c)
        if c.ndim == 2:
            c = np.repeat(c[:, :, None], 3, axis=2)
        c = pad_to_square(c)
        if c.shape[:2] != (size, size):
            interp = cv2.INTER_AREA if c.shape[0] > size else cv2.INTER_LINEAR
            c = cv2.resize(c, (size, size), interpolation=interp)
        out[i] = (c.astype(np.float32) - mean) / 255.0
    return out


class ExpressionJudge:
    """face-api's faceExpressionNet from the judges' cache: ``probabilities(crops) -> (N, 7)`` in EMOTIONS order."""

    labels = EMOTIONS

    def __init__(self, cache: Path | None = None):
        self.entry, self.path = judge_entry(NAME, cache)
        self.session = session(self.path)
        self.input_name = self.entry["input"]["name"]
        self.output_name = self.entry["output"]["name"]

    def net_probabilities(self, crops) -> np.ndarray:
        """(N, 7) softmax in the net's own order, ``FACE_API_LABELS``."""
        if len(crops) == 0:
            return np.zeros((0, len(FACE_API_LABELS)), np.float32)
        parts = [self.session.run([self.output_name], {self.input_name: to_input(crops[i:i + BATCH])})[0]
                 for i in range(0, len(crops), BATCH)]
        return np.concatenate(parts).astype(np.float32)

    def probabilities(self, crops) -> np.ndarray:
        """(N, 7) probabilities in ``EMOTIONS`` order (angry, disgust, fear, happy, neutral, sad, surprise)."""
        return self.net_probabilities(crops)[:, TO_EMOTIONS]

    def labels_of(self, crops) -> list[str]:
        return [EMOTIONS[i] for i in np.argmax(self.probabilities(crops), axis=1)]
