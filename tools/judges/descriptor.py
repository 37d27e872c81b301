"""The identity judge's descriptor: HSE FaceRes (Human's ``faceres``), 224x224 RGB in 0..255 -> 1024-d.

What the model expects, from the Human library (src/face/faceres.ts, facemesh.ts): a square,
upright crop of the face, resized bilinearly to 224x224, RGB scaled 0..255 (the normalisation is
folded into the first convolution); Human cuts it as BlazeFace's box grown 1.4x and squared.
The descriptor is the ``global_pooling/Mean`` output (1024 values, after ReLU6); Human compares
descriptors by Euclidean distance, and here they are L2-normalised so distances lie in [0, 2].

Channel order: Human feeds RGB, but the network tells people apart better when fed BGR (on 957
photos of 120 CelebA identities the evaluation never uses: EER 9.7 % against 11.2 %, rank-1 93.3 %
against 90.0 %), as a model trained on OpenCV-decoded images would. ``embed`` takes RGB crops and
turns them to ``CHANNELS`` itself.

The crop here is made from five points (two eye centres, nose tip, two mouth corners; MediaPipe's
478 or dlib's 68 landmarks are reduced to them): rotated so the face is upright, centred
``CROP_CENTRE`` of the way from the eyes' midpoint to the mouth's, side ``CROP_SCALE`` times the
FFHQ head scale (2 * max(2.0 x eye distance, 1.8 x eye-to-mouth distance)). Those two numbers were
chosen on CelebA identities the evaluation never uses (``python -m tools.judges calibrate``).
From a box alone (no points) the crop is Human's: the box grown ``BOX_SCALE`` and squared, unrotated.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tools.judges.common import judge_entry, session

NAME = "descriptor"
INPUT_SIZE = 224
CROP_SCALE = 0.9
CROP_CENTRE = 0.3
CHANNELS = "BGR"
BOX_SCALE = 1.4
BATCH = 16

# MediaPipe FaceMesh indices (subject's right eye = image left in a frontal face)
_MP_EYE_R, _MP_EYE_L, _MP_NOSE, _MP_MOUTH = (33, 133), (362, 263), 1, (61, 291)
# dlib 68-point indices
_DLIB_EYE_R, _DLIB_EYE_L, _DLIB_NOSE, _DLIB_MOUTH = range(36, 42), range(42, 48), 30, (48, 54)


def five_points(landmarks) -> np.ndarray:
    """(5, 2): eye centre, eye centre, nose tip, mouth corner, mouth corner, from 5, 68 or 468+ landmarks."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    if len(lm) == 5:
        return lm
    if len(lm) == 68:
        eyes, nose, mouth = (_DLIB_EYE_R, _DLIB_EYE_L), _DLIB_NOSE, _DLIB_MOUTH
    elif len(lm) >= 468:
        eyes, nose, mouth = (_MP_EYE_R, _MP_EYE_L), _MP_NOSE, _MP_MOUTH
    else:
        raise ValueError(f"five_points: expected 5, 68 or 468+ landmarks, got {len(lm)}")
    return np.array([lm[list(eyes[0])].mean(0), lm[list(eyes[1])].mean(0), lm[nose], lm[mouth[0]], lm[mouth[1]]])


def crop_matrix(landmarks, size: int = INPUT_SIZE, scale: float = CROP_SCALE, centre: float = CROP_CENTRE) -> np.ndarray:
    """2x3 similarity matrix from frame pixels to the descriptor's upright square crop."""
    p = five_points(landmarks)
    eye_avg = (p[0] + p[1]) / 2
    eye_to_mouth = (p[3] + p[4]) / 2 - eye_avg
    eye_to_eye = p[1] - p[0]
    across = np.array([eye_to_mouth[1], -eye_to_mouth[0]])  # image +x of an upright face
    n_e2e, n_e2m = np.hypot(*eye_to_eye), np.hypot(*eye_to_mouth)
    if n_e2e < 1e-6 or n_e2m < 1e-6:
        raise ValueError("degenerate landmarks: eyes or mouth coincide")
    if eye_to_eye @ across < 0:  # whichever order the eyes came in
        eye_to_eye = -eye_to_eye
    x = eye_to_eye / n_e2e + across / n_e2m
    x /= np.hypot(*x)
    half = max(2.0 * n_e2e, 1.8 * n_e2m) * scale
    k = size / (2 * half)
    rot = np.array([[x[0], x[1]], [-x[1], x[0]]]) * k
    t = np.array([size / 2, size / 2]) - rot @ (eye_avg + centre * eye_to_mouth)
    return np.hstack([rot, t[:, None]])


def descriptor_crop(rgb: np.ndarray, landmarks=None, box=None, size: int = INPUT_SIZE,
                    scale: float = CROP_SCALE, centre: float = CROP_CENTRE) -> np.ndarray:
    """The face as the descriptor wants it (size x size RGB uint8), from landmarks or else a box."""
    if landmarks is not None:
        m = crop_matrix(landmarks, size, scale, centre)
    elif box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        side = BOX_SCALE * max(x1 - x0, y1 - y0)
        k = size / side
        m = np.array([[k, 0, size / 2 - k * (x0 + x1) / 2], [0, k, size / 2 - k * (y0 + y1) / 2]])
    else:
        raise ValueError("descriptor_crop needs landmarks or a box")
    return cv2.warpAffine(np.ascontiguousarray(rgb), m, (size, size), flags=cv2.INTER_AREA if m[0, 0] < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def to_input(crops, size: int = INPUT_SIZE, channels: str = CHANNELS) -> np.ndarray:
    """RGB uint8 crops (any size; grey is repeated) -> (N, size, size, 3) float32 in 0..255, in ``channels`` order."""
    out = np.empty((len(crops), size, size, 3), np.float32)
    for i, c in enumerate(crops):
        c = np.asarray(c)
        if c.ndim == 2:
            c = np.repeat(c[:, :, None], 3, axis=2)
        if c.shape[:2] != (size, size):
            interp = cv2.INTER_AREA if min(c.shape[:2]) > size else cv2.INTER_LINEAR
            c = cv2.resize(c, (size, size), interpolation=interp)
        out[i] = c
    return out[..., ::-1] if channels == "BGR" else out


class FaceDescriptor:
    """HSE FaceRes from the judges' cache: ``embed(crops) -> (N, 1024)`` unit vectors.

    Same person: small Euclidean distance (equivalently, large cosine similarity). The threshold
    at equal error rate on CelebA is in ``reports/judges.json`` (``descriptor.eer_threshold``).
    """

    def __init__(self, cache: Path | None = None, channels: str = CHANNELS):
        if channels not in ("RGB", "BGR"):
            raise ValueError(f"channels must be RGB or BGR, not {channels!r}")
        self.channels = channels
        self.entry, self.path = judge_entry(NAME, cache)
        self.session = session(self.path)
        self.input_name = self.entry["input"]["name"]
        self.output_name = self.entry["output"]["name"]
        self.dim = int(self.entry["output"]["shape"][-1])

    def embed(self, crops) -> np.ndarray:
        """Face crops (RGB uint8, framed as :func:`descriptor_crop` frames them) -> (N, D) float32 unit vectors."""
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = []
        for i in range(0, len(crops), BATCH):
            x = np.ascontiguousarray(to_input(crops[i:i + BATCH], channels=self.channels))
            parts.append(self.session.run([self.output_name], {self.input_name: x})[0])
        d = np.concatenate(parts).astype(np.float32)
        return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)

    def embed_faces(self, rgb: np.ndarray, faces) -> np.ndarray:
        """Descriptors of faces in one frame, each given as landmarks (5, 68 or 478 points)."""
        return self.embed([descriptor_crop(rgb, landmarks=lm) for lm in faces])
