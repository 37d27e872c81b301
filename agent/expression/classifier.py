"""The emotion classifier: a small INT8 CNN on the aligned grey face, 7 classes.

Its input contract: ``(N, 1, 48, 48)`` float32, the face aligned by
:func:`agent.synthesis.align.alignment_matrix` (the generator's framing), converted to grey with
OpenCV's RGB2GRAY weights and scaled to [0, 1]; output ``(N, 7)`` logits in :data:`EMOTIONS` order.
It reads the real face for the metadata and for the choice of generator, and each synthetic face
to report whether the expression was kept.
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.config import InferenceConfig
from agent.runtime.backends import create_backend
from agent.synthesis.align import alignment_matrix
from agent.types import EMOTIONS

CROP_SIZE = 48
# Faces are aligned at this size first and then area-averaged down to CROP_SIZE, so a large camera
# face is averaged rather than aliased by a direct 48 px bilinear warp. On FER val (653 faces) both
# routes score the same (0.685 vs 0.681), and this one is also how the generator's 128 px output is
# brought to the classifier, so original and synthetic faces are judged alike.
_ALIGN_SIZE = 128


def grey_crop(rgb8: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The classifier's view of one face: aligned, grey, CROP_SIZE px, uint8."""
    m = alignment_matrix(landmarks, _ALIGN_SIZE)
    crop = cv2.warpAffine(rgb8, m, (_ALIGN_SIZE, _ALIGN_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return crop_to_input(crop)


def crop_to_input(aligned_rgb: np.ndarray) -> np.ndarray:
    """An aligned RGB crop of any size (e.g. the generator's 128 px output) -> grey CROP_SIZE uint8."""
    grey = cv2.cvtColor(aligned_rgb, cv2.COLOR_RGB2GRAY)
    if grey.shape[0] != CROP_SIZE:
        grey = cv2.resize(grey, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    return grey


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class EmotionClassifier:
    """Batches of aligned grey crops -> class probabilities.

    The crop CNN alone: a blendshape + landmark-geometry MLP was trained too (0.56 on FER val;
    docs/history.md) and fusing it did not beat the CNN on held-out val faces, so the
    blendshapes are reported as measured, not fed to the classifier.
    """

    def __init__(self, inference: InferenceConfig | None = None, model: str = "emotion.int8", flip_tta: bool = True):
        inference = inference or InferenceConfig()
        self.flip_tta = flip_tta
        self.backend = create_backend(inference.backend, model, inference.models_dir, inference.device, inference.threads)

    def crop_logits(self, crops: np.ndarray) -> np.ndarray:
        """(N, 48, 48) uint8 -> (N, 7) logits; averaged with the mirrored face when flip_tta is on."""
        x = (crops.astype(np.float32) / 255.0)[:, None]
        if not self.flip_tta:
            return self.backend.infer(x)
        out = self.backend.infer(np.concatenate([x, x[..., ::-1]]))
        n = len(crops)
        return (out[:n] + out[n:]) / 2

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        """(N, 48, 48) uint8 -> (N, 7) probabilities."""
        if len(crops) == 0:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        return _softmax(self.crop_logits(crops).astype(np.float64))
