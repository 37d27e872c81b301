"""The whole head: the crop a head generator draws in, and the region of it that is replaced.

A face oval alone leaves the hair, the ears and the outline of the head, and those identify people
to a recognizer. The head crop is the face's alignment (:func:`agent.synthesis.align.alignment_matrix`,
the same rotation and centre line) widened to hold the whole head with a margin of its surroundings,
and lifted towards the hair. The head region is the face oval joined to an ellipse over the cranium
and the ears, both from the landmarks, so it follows the head whatever its pose.
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.synthesis.align import CROP_SIZE, LEFT_EYE, MOUTH, RIGHT_EYE, alignment_matrix, transform_points
from agent.synthesis.render import to_network_input
from agent.synthesis.topology import FACE_OVAL_POLYGON

HEAD_SIZE = 192
INPUT_CHANNELS = 7  # what generator_input gives a head generator: conditioning, surroundings, head region
# The head crop's half-side in eye-to-eye distances, and how far its centre sits above the eye-mouth
# midpoint in eye-to-mouth distances: chin to the top of the hair, ear to ear, and a margin around.
HEAD_HALF = 2.45
HEAD_LIFT = 0.55
# The cranium ellipse, in face-oval widths and heights from the brow line: across (with the ears) and up.
CRANIUM_ACROSS = 0.62
CRANIUM_UP = 0.62


def head_matrix(landmarks: np.ndarray, size: int = HEAD_SIZE) -> np.ndarray:
    """2x3 similarity matrix mapping frame pixels to the head crop's pixels for one face."""
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    eye_r, eye_l = lm[list(RIGHT_EYE)].mean(axis=0), lm[list(LEFT_EYE)].mean(axis=0)
    mouth = lm[list(MOUTH)].mean(axis=0)
    eye_avg = (eye_r + eye_l) / 2
    eye_to_eye, eye_to_mouth = eye_l - eye_r, mouth - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = np.hypot(*x)
    if norm < 1e-6:
        raise ValueError("degenerate landmarks: eyes and mouth coincide")
    x /= norm
    half = max(np.hypot(*eye_to_eye), np.hypot(*eye_to_mouth) * 0.9) * HEAD_HALF
    up = np.array([x[1], -x[0]])  # perpendicular to the eye line, towards the top of the head
    centre = eye_avg + eye_to_mouth * 0.5 + up * np.hypot(*eye_to_mouth) * HEAD_LIFT
    scale = size / (2 * half)
    c, s = x[0], x[1]
    rot = np.array([[c, s], [-s, c]]) * scale
    t = np.array([size / 2, size / 2]) - rot @ centre
    return np.hstack([rot, t[:, None]])


def head_mask(crop_landmarks: np.ndarray, size: int = HEAD_SIZE) -> np.ndarray:
    """(size, size) float32, 1 inside the head: the face oval joined to the cranium-and-ears ellipse.

    ``crop_landmarks``: the full mesh (478, >=2) in head-crop pixels (upright: the crop is aligned)."""
    pts = np.asarray(crop_landmarks, np.float64)[:, :2]
    oval = pts[FACE_OVAL_POLYGON]
    x0, y0 = oval.min(axis=0)
    x1, y1 = oval.max(axis=0)
    width, height = x1 - x0, y1 - y0
    brow_y = (pts[[105, 334], 1]).mean()  # the brows' middle, as the mesh places them
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(oval * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    centre = ((x0 + x1) / 2, brow_y)
    axes = (width * CRANIUM_ACROSS, (brow_y - y0) + height * CRANIUM_UP)
    cv2.ellipse(mask, (round(centre[0] * 16), round(centre[1] * 16)), (round(axes[0] * 16), round(axes[1] * 16)),
                0.0, 180.0, 360.0, 255, -1, cv2.LINE_AA, 4)
    # The ears and the jaw's sides down to the mouth: the ellipse's width carried down to the mouth line.
    mouth_y = pts[list(MOUTH), 1].mean()
    band = np.array([[centre[0] - axes[0], brow_y], [centre[0] + axes[0], brow_y],
                     [x1, mouth_y], [x0, mouth_y]])
    cv2.fillPoly(mask, [np.round(band * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    return mask.astype(np.float32) / 255.0


def _affine3(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def face_to_head(landmarks: np.ndarray, head: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """2x3 map from the face's alignment crop (``size`` px) to its head crop (matrix ``head``)."""
    return (_affine3(head) @ np.linalg.inv(_affine3(alignment_matrix(landmarks, size))))[:2]


def head_geometry(landmarks: np.ndarray, size: int = HEAD_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame -> head crop matrix, the mesh in head-crop pixels, the head region in the crop)."""
    m = head_matrix(landmarks, size)
    crop_landmarks = transform_points(m, landmarks).astype(np.float32)
    return m, crop_landmarks, head_mask(crop_landmarks, size)


def generator_input(rgb8: np.ndarray, matrix: np.ndarray, region: np.ndarray, conditioning: np.ndarray) -> np.ndarray:
    """(INPUT_CHANNELS, S, S) float32: the head generator's input for one face (as tools.train_head builds it):
    the conditioning, the head crop of the frame with the head (and what lies outside the frame)
    at 0, and the head region in [-1, 1]. No pixel of the head itself goes in."""
    size = region.shape[0]
    shrink = abs(np.linalg.det(matrix[:, :2])) < 1.0
    crop = cv2.warpAffine(rgb8, matrix, (size, size), flags=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
    inside = cv2.warpAffine(np.ones(rgb8.shape[:2], np.uint8), matrix, (size, size), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    keep = (1.0 - region) * (inside > 0)
    surroundings = to_network_input(crop)[0] * keep[None]
    return np.concatenate([to_network_input(conditioning)[0], surroundings, (region * 2 - 1)[None]]).astype(np.float32)


def face_framed(generated: np.ndarray, landmarks: np.ndarray, head: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """A generated head crop seen in the face's alignment crop (``size`` px), as the emotion
    classifier and the expression texture expect faces."""
    to_face = cv2.invertAffineTransform(face_to_head(landmarks, head, size))
    return cv2.warpAffine(generated, to_face, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
