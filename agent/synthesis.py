"""Synthesis: aligned landmarks in, synthetic face crops out.

The generator sees only the rendered conditioning image, never a pixel of the real face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .align import CROP_SIZE, alignment_matrix, transform_points
from .backends import InferenceBackend
from .faces import Face
from .render import from_network_output, render_conditioning, to_network_input
from .shape import ShapeNormalizer


@dataclass
class FaceJob:
    """One face on its way through synthesis: alignment, conditioning, then the generated crop."""

    face: Face
    matrix: np.ndarray  # 2x3, frame -> crop
    crop_landmarks: np.ndarray  # (478, 2) in crop pixels
    conditioning: np.ndarray  # (S, S, 3) uint8 RGB
    generated: np.ndarray | None = None  # (S, S, 3) uint8 RGB, None if synthesis failed
    error: str | None = None


class Synthesizer:
    def __init__(self, backend: InferenceBackend, size: int = CROP_SIZE, style: str = "contours", max_batch: int = 8,
                 shape: ShapeNormalizer | None = None):
        self.backend = backend
        self.shape = shape
        self.size = size
        self.style = style
        self.max_batch = max_batch

    def prepare(self, face: Face) -> FaceJob:
        m = alignment_matrix(face.landmarks, self.size)
        lm = transform_points(m, face.landmarks).astype(np.float32)
        # The mask follows the real landmarks; only the generator's view loses the person's shape.
        drawn = lm if self.shape is None else self.shape(lm, face)
        return FaceJob(face, m, lm, render_conditioning(drawn, self.size, self.style))

    def run(self, jobs: list[FaceJob]) -> list[FaceJob]:
        """Fill ``job.generated`` for each job; a batch that fails marks its jobs with ``error``."""
        for start in range(0, len(jobs), self.max_batch):
            chunk = jobs[start:start + self.max_batch]
            try:
                out = self.backend.infer(to_network_input(np.stack([j.conditioning for j in chunk])))
                if out.shape != (len(chunk), 3, self.size, self.size) or not np.isfinite(out).all():
                    raise ValueError(f"generator returned {out.shape} with non-finite values" if out.ndim == 4 else f"bad output shape {out.shape}")
                for j, img in zip(chunk, from_network_output(out)):
                    j.generated = img
            except Exception as exc:  # any failure here must end in masking, never in a raw face
                for j in chunk:
                    j.error = f"{type(exc).__name__}: {exc}"
        return jobs
