"""Expression texture: the shading of an emotion, added to the synthetic face it is drawn as.

The generator draws what landmark contours carry: where the brows, eyes and lips are. It misses
what they do not: the furrow between lowered brows, the raised cheeks of a smile, the dark open
mouth of surprise. Those are shading, and expression judges read them (models/MODEL_CARD.md).
``models/expression_texture.npz`` (fitted by ``python -m tools.fit_expression_texture``)
holds, for each of the seven emotions, the mean aligned grey face of the FER2013 training faces that
show it most plainly, minus the mean of the seven and its own mean over the face oval (brightness is
the tone matcher's job), and a gain per emotion. A face is drawn as the emotion the classifier reads
on the real face (smoothed per track in streams: the same emotion that chooses its generator), and
that emotion's texture is added to the synthetic face's brightness.

No pixel of the person goes in: what is added depends only on their emotion, which the synthetic
face is meant to show (and the metadata publishes), and each texture is an average over hundreds or
thousands of other people.
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.errors import ModelError
from agent.runtime.model_files import verified_path
from agent.types import EMOTIONS

EXPRESSION_TEXTURE = "expression_texture.npz"


class ExpressionTexture:
    def __init__(self, model_folder=None, file: str = EXPRESSION_TEXTURE):
        path = verified_path(file, model_folder)
        try:
            with np.load(path, allow_pickle=False) as d:
                textures = d["textures"].astype(np.float32)
                gains = d["gains"].astype(np.float32)
                names = tuple(str(n) for n in d["emotions"])
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"{path} is not an expression texture file ({exc}); "
                             "rerun python -m tools.fit_expression_texture") from exc
        if (names != EMOTIONS or textures.ndim != 3 or len(textures) != len(EMOTIONS)
                or textures.shape[1] != textures.shape[2] or gains.shape != (len(EMOTIONS),)):
            raise ModelError(f"{path} was fitted for other emotions or shapes; rerun python -m tools.fit_expression_texture")
        self._set(textures, gains)

    @classmethod
    def from_arrays(cls, textures: np.ndarray, gains: np.ndarray) -> "ExpressionTexture":
        """Candidate textures not yet in a file (``tools.fit_expression_texture`` tunes their gains)."""
        self = cls.__new__(cls)
        self._set(np.asarray(textures, np.float32), np.asarray(gains, np.float32))
        return self

    def _set(self, textures: np.ndarray, gains: np.ndarray) -> None:
        self.textures = textures
        self.gains = gains
        self._resized: dict[int, np.ndarray] = {}

    def at(self, size: int) -> np.ndarray:
        """(7, size, size) float32: the textures at a crop size, gains not applied (cached: a run has one size)."""
        if size not in self._resized:
            interp = cv2.INTER_CUBIC if size > self.textures.shape[1] else cv2.INTER_AREA
            self._resized[size] = np.stack([cv2.resize(t, (size, size), interpolation=interp) for t in self.textures])
        return self._resized[size]

    def shading(self, scores: np.ndarray, size: int) -> np.ndarray:
        """(7,) emotion scores -> (size, size) grey levels to add: the top emotion's texture times its gain."""
        s = np.asarray(scores, np.float64).reshape(-1)
        if s.shape != (len(EMOTIONS),) or not np.isfinite(s).all():
            raise ValueError(f"expected {len(EMOTIONS)} finite emotion scores, got {s.shape}")
        e = int(np.argmax(s))
        return self.at(size)[e] * self.gains[e]

    def apply(self, crop: np.ndarray, scores: np.ndarray, strength: float = 1.0) -> np.ndarray:
        """A synthetic RGB uint8 crop with its emotion's shading added, ``strength`` times the fitted
        gain, equally to every channel (brightness only: never colour)."""
        if strength == 0:
            return crop
        add = self.shading(scores, crop.shape[0]) * np.float32(strength)
        return np.clip(crop.astype(np.float32) + add[..., None] + 0.5, 0, 255).astype(np.uint8)
