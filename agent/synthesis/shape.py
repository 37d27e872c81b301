"""Identity-free geometry: the person's expression and head pose on an average person's face shape.

Landmarks carry the shape of a face (jaw width, eye spacing, nose length), and shape identifies
people. MediaPipe also gives 52 blendshapes (expression) and the head rotation, which carry less
identity. ``models/shape_model.npz`` (fitted by ``python -m tools.fit_shape_model`` on training
identities) maps those to the crop landmarks an average face makes with them; the generator is
conditioned on that prediction instead of the person's own landmarks. ``strength`` blends the two:
1 draws the prediction only, 0 the person's landmarks (no normalization).

Blendshapes are not free of identity either (a person's resting squint, the shape of their smile):
with ``expression_neighbours`` > 0 the expression drawn is the mean of the nearest expressions of
other people with the same emotion and gaze, from ``models/expression_bank.npz`` (:class:`ExpressionBank`,
k-Same-Select), rather than the person's own blendshapes.

Only what the generator is conditioned on changes: the face region that is replaced in the frame
still follows the person's real landmarks, so nothing of the real face shows around it.
"""

from __future__ import annotations

import numpy as np

from agent.errors import ModelError
from agent.expression.bank import ExpressionBank
from agent.runtime.model_files import verified_path
from agent.types import BLENDSHAPES, Face, blendshape_vector, rotation_to_euler

SHAPE_MODEL = "shape_model.npz"

def features(blendshapes: dict[str, float] | np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Regression inputs for one face: its blendshapes (a dict, or a vector in BLENDSHAPES order) and
    the yaw and pitch of its transformation matrix."""
    pose = rotation_to_euler(np.asarray(transform, dtype=np.float64)[:3, :3])
    bs = blendshape_vector(blendshapes) if isinstance(blendshapes, dict) else np.asarray(blendshapes, np.float64)
    return features_from_pose(bs[None], np.array([pose["yaw"]]), np.array([pose["pitch"]]))[0]


def features_from_pose(blendshapes: np.ndarray, yaw_deg: np.ndarray, pitch_deg: np.ndarray) -> np.ndarray:
    """(N, 52) blendshapes in BLENDSHAPES order and head angles in degrees -> (N, 162) regression inputs.

    Roll is not an input: alignment removes it. The projected outline of a turned head moves with
    the sine of the angle and shrinks with its square, and expressions look different on a turned
    head, hence the squares and the products.
    """
    bs = np.asarray(blendshapes, dtype=np.float64)
    sy = np.sin(np.radians(np.asarray(yaw_deg, dtype=np.float64)))[:, None]
    sp = np.sin(np.radians(np.asarray(pitch_deg, dtype=np.float64)))[:, None]
    angles = np.concatenate([sy, sp, sy * sy, sp * sp, sy * sp], 1)
    return np.concatenate([bs, angles, bs * sy, bs * sp, np.ones((len(bs), 1))], 1)


class ShapeNormalizer:
    def __init__(self, strength: float = 1.0, model_folder=None, expression_neighbours: int = 0,
                 file: str = SHAPE_MODEL, bank: ExpressionBank | None = None):
        """``bank``: the expression bank to pool with when ``expression_neighbours`` > 0 (loaded
        from ``model_folder`` if not given)."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError("shape normalization strength must be within 0-1")
        if expression_neighbours < 0:
            raise ValueError("expression_neighbours must be 0 (off) or more")
        self.expression_neighbours = expression_neighbours
        self.bank = (bank or ExpressionBank(model_folder)) if expression_neighbours else None
        path = verified_path(file, model_folder)
        try:
            with np.load(path, allow_pickle=False) as d:
                self.weights = d["weights"].astype(np.float64)
                self.indices = d["landmark_indices"]
                names = tuple(str(n) for n in d["blendshapes"])
                # Principal directions of how training identities differ from the average shape: a
                # random point in them is a plausible other person.
                self.identity_basis = d["identity_components"].astype(np.float64) * d["identity_std"][:, None]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"{path} is not a shape model ({exc}); rerun python -m tools.fit_shape_model") from exc
        if names != BLENDSHAPES or self.weights.shape != (len(features({}, np.eye(4))), 2 * len(self.indices)):
            raise ModelError(f"{path} was fitted for other inputs; rerun python -m tools.fit_shape_model")
        self.strength = strength

    def average_landmarks(self, feats: np.ndarray) -> np.ndarray:
        """(N, F) regression inputs -> (N, len(self.indices), 2) crop landmarks of an average face."""
        return (np.asarray(feats, dtype=np.float64) @ self.weights).reshape(len(feats), -1, 2)

    @property
    def identity_dims(self) -> int:
        return len(self.identity_basis)

    def __call__(self, crop_landmarks: np.ndarray, face: Face, identity: np.ndarray | None = None) -> np.ndarray:
        """The rendered landmark rows (``self.indices``) in crop pixels, with the identity taken out.

        A face without blendshapes or pose (the landmarker always gives both; this guards against
        a model that does not) gets its real landmarks rather than a wrong expression.
        ``identity`` ((identity_dims,) standard-normal draws) moves the average shape to a random
        other person's, so anonymized faces do not all share one shape.
        """
        own = np.asarray(crop_landmarks, dtype=np.float64)[self.indices, :2]
        if face.blendshapes is None or face.transform is None or self.strength == 0.0:
            return own
        blendshapes = blendshape_vector(face.blendshapes)
        if self.bank is not None:
            blendshapes = self.bank.pool(blendshapes, self.expression_neighbours)
        average = self.average_landmarks(features(blendshapes, face.transform)[None])[0]
        if identity is not None and self.identity_dims:
            average = average + (np.asarray(identity, np.float64) @ self.identity_basis).reshape(-1, 2)
        return average + (1.0 - self.strength) * (own - average)
