"""The expression bank (k-Same-Select): group means of other people's blendshapes.

Drawn instead of a person's own blendshapes by synthesis, and published instead of them by the
metadata, since a person's own blendshapes identify them too.
"""

from __future__ import annotations

import numpy as np

from agent.errors import ModelError
from agent.runtime.model_files import verified_path
from agent.types import BLENDSHAPES

EXPRESSION_BANK = "expression_bank.npz"


class ExpressionBank:
    """k-Same-Select for expressions: a face's blendshapes -> the mean of the nearest expressions of other people.

    Blendshapes identify people as well as their expression (a face's resting squint, the shape of
    its smile): drawn as they are, the generated face stays recognisable. The bank
    (``models/expression_bank.npz``, fitted by ``python -m tools.fit_expression_bank``) holds only means
    of groups of training faces, never one person's blendshapes. "Nearest" is measured along the
    bank's matching axes only: the linear discriminants of the FER2013 emotions and the gaze
    blendshapes. The expressions pooled share the face's emotion and gaze and differ in the rest,
    the person's own manner, which averages out.
    """

    def __init__(self, model_folder=None, file: str = EXPRESSION_BANK):
        path = verified_path(file, model_folder)
        try:
            with np.load(path, allow_pickle=False) as d:
                self.centroids = d["centroids"].astype(np.float64)
                names = tuple(str(n) for n in d["blendshapes"])
                self.min_group = int(d["min_group"])
                self.match_mean = d["match_mean"].astype(np.float64)
                self.match_axes = d["match_axes"].astype(np.float64)
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"{path} is not an expression bank ({exc}); rerun python -m tools.fit_expression_bank") from exc
        if (names != BLENDSHAPES or self.centroids.ndim != 2 or len(self.centroids) < 2
                or self.match_axes.shape[0] != len(BLENDSHAPES) or self.match_mean.shape != (len(BLENDSHAPES),)):
            raise ModelError(f"{path} was fitted for other blendshapes; rerun python -m tools.fit_expression_bank")
        self.keys = self.match_key(self.centroids)
        self._keys_sq = (self.keys * self.keys).sum(1)  # for distances as |k|^2 - 2 k.q + |q|^2: a third of the time

    def match_key(self, blendshapes: np.ndarray) -> np.ndarray:
        """(..., 52) -> (..., axes): where an expression lies along the matching axes (emotion, gaze)."""
        return (np.asarray(blendshapes, np.float64) - self.match_mean) @ self.match_axes

    def pool(self, blendshapes: np.ndarray, neighbours: int) -> np.ndarray:
        """(52,) -> (52,): the nearest ``neighbours`` stored expressions, averaged.

        Weights fall linearly to zero at the next-nearest one, so the result moves smoothly as a
        face's expression changes in a stream instead of jumping when the neighbour set changes.
        """
        k = max(1, min(neighbours, len(self.centroids) - 1))
        q = self.match_key(blendshapes)
        d2 = self._keys_sq - 2.0 * (self.keys @ q) + q @ q
        idx = np.argpartition(d2, k)[:k + 1]
        idx = idx[np.argsort(d2[idx])]
        d = np.linalg.norm(self.keys[idx] - q, axis=1)  # exact distances of the few that are used
        edge = d[k]
        w = 1.0 - d[:k] / edge if edge > 0 else np.ones(k)
        if w.sum() <= 1e-9:  # k + 1 equidistant expressions
            w = np.ones(k)
        return w @ self.centroids[idx[:k]] / w.sum()
