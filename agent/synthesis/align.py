"""Similarity alignment of a face to the canonical crop the generator works in.

The crop is 128 px square. Why 128: faces in 640x480 to 1280x720 lab-camera frames are mostly
60-200 px tall, so 128 px holds about as much detail as the camera saw, and the generator's cost
grows with the square of the side (256 px would cost 4x for pixels the camera never had).

The frame follows FFHQ's recipe (eye centres and mouth centre fix position, scale and rotation),
tightened so the face oval fills most of the crop: the oval, not the hair, is what gets replaced.
"""

from __future__ import annotations

import cv2
import numpy as np

CROP_SIZE = 128

RIGHT_EYE = (33, 133)  # subject's right eye corners (image left)
LEFT_EYE = (362, 263)
MOUTH = (61, 291)
# Half-side of the crop relative to FFHQ's scale; 1.0 is FFHQ (whole head and some shoulders).
CROP_TIGHTNESS = 0.80


def alignment_matrix(landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """2x3 similarity matrix mapping frame pixels to crop pixels for one face."""
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    eye_r = lm[list(RIGHT_EYE)].mean(axis=0)
    eye_l = lm[list(LEFT_EYE)].mean(axis=0)
    mouth = lm[list(MOUTH)].mean(axis=0)
    eye_avg = (eye_r + eye_l) / 2
    eye_to_eye = eye_l - eye_r
    eye_to_mouth = mouth - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = np.hypot(*x)
    if norm < 1e-6:
        raise ValueError("degenerate landmarks: eyes and mouth coincide")
    x /= norm
    half = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) * CROP_TIGHTNESS
    center = eye_avg + eye_to_mouth * 0.5
    scale = size / (2 * half)
    # Rotation taking x to the +x axis, then scale, then centre in the crop.
    c, s = x[0], x[1]
    rot = np.array([[c, s], [-s, c]]) * scale
    t = np.array([size / 2, size / 2]) - rot @ center
    return np.hstack([rot, t[:, None]]).astype(np.float64)


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)[:, :2]
    return pts @ m[:, :2].T + m[:, 2]


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE):
    """Warp ``image`` to the canonical crop. Returns (crop, crop_landmarks (478,2), matrix)."""
    m = alignment_matrix(landmarks, size)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return crop, transform_points(m, landmarks).astype(np.float32), m
