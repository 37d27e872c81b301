"""Synthesis: aligned landmarks in, synthetic face crops out.

The generator sees only the rendered conditioning image, never a pixel of the real face.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from agent.runtime.backends import InferenceBackend
from agent.synthesis.align import CROP_SIZE, alignment_matrix, transform_points
from agent.synthesis.head import HEAD_SIZE, INPUT_CHANNELS, face_to_head, generator_input, head_geometry
from agent.synthesis.render import (
    from_network_output,
    render_conditioning,
    to_network_input,
)
from agent.synthesis.router import EmotionRouter
from agent.synthesis.shape import ShapeNormalizer
from agent.synthesis.texture import ExpressionTexture
from agent.types import Face, FaceJob

log = logging.getLogger(__name__)


class Synthesizer:
    """Conditioning images through the generator.

    In streams, ``regenerate_every=N`` lets a tracked face keep its synthetic crop for up to N
    frames. The crop lives in the aligned crop space, and compose warps it with the current frame's
    alignment and masks it with the current face oval. So position, scale, rotation and coverage
    follow the face on every frame; only the expression can lag, by at most N-1 frames. Faces
    without a track id (stills) are always generated. Regeneration is spread over the frames so
    each frame generates about 1/N of its faces, rather than all of them every Nth frame.
    """

    def __init__(self, backend: InferenceBackend, size: int = CROP_SIZE, max_batch: int = 8,
                 shape: ShapeNormalizer | None = None, regenerate_every: int = 1, identity_variation: float = 0.0,
                 seed: int | None = None, generators: dict[str, InferenceBackend] | None = None,
                 router: EmotionRouter | None = None, texture: ExpressionTexture | None = None,
                 texture_strength: float = 1.0, head: bool = False):
        """``texture``: with a router, each generated face gets the shading of the emotion it is drawn
        as, ``texture_strength`` times the fitted gain (agent/synthesis/texture.py). ``head``: the
        backend is a head generator (agent/synthesis/head.py): it redraws the whole head in a head
        crop from the conditioning and the head's surroundings, and the region it replaces is the head."""
        self.head = head
        if head:
            size, generators, texture = HEAD_SIZE, {}, None
        self.backend = backend
        self.texture = texture if router is not None and texture_strength > 0 else None
        self.texture_strength = texture_strength
        self.generators = dict(generators or {})  # name -> backend, for the names the router assigns
        self.router = router
        self.routing_ms = 0.0  # time the router took in the last run()
        self.shape = shape
        self.identity_variation = identity_variation if shape is not None and shape.identity_dims else 0.0
        self._rng = np.random.default_rng(seed)
        self._identities: dict[int, np.ndarray] = {}  # track id -> its random identity, kept while tracked
        self.size = size
        self.max_batch = max_batch
        self.regenerate_every = regenerate_every
        self._frame = 0
        self._crops: dict[int, tuple[np.ndarray, int, str | None]] = {}  # track id -> (crop, frame made, generator)

    def prepare(self, face: Face) -> FaceJob:
        if self.head:
            m, crop_landmarks, region = head_geometry(face.landmarks, self.size)
            return FaceJob(face, m, crop_landmarks, self.size, region=region)
        m = alignment_matrix(face.landmarks, self.size)
        return FaceJob(face, m, transform_points(m, face.landmarks).astype(np.float32), self.size)

    def condition(self, job: FaceJob) -> np.ndarray:
        # The mask follows the real landmarks; only the generator's view loses the person's shape.
        if self.shape is None:
            drawn = job.crop_landmarks
        elif self.head:
            # The shape model draws in the face's alignment crop; the head crop is another view of it.
            face_matrix = alignment_matrix(job.face.landmarks, CROP_SIZE)
            in_face = self.shape(transform_points(face_matrix, job.face.landmarks), job.face,
                                 self._identity(job.face.track_id))
            drawn = transform_points(face_to_head(job.face.landmarks, job.matrix), in_face)
        else:
            drawn = self.shape(job.crop_landmarks, job.face, self._identity(job.face.track_id))
        return render_conditioning(drawn, self.size)

    def _identity(self, track_id: int | None) -> np.ndarray | None:
        """A random identity shape: one per track, so a followed face keeps its synthetic person."""
        if not self.identity_variation:
            return None
        if track_id in self._identities:
            return self._identities[track_id]
        drawn = self._rng.standard_normal(self.shape.identity_dims) * self.identity_variation
        if track_id is not None:
            self._identities[track_id] = drawn
        return drawn

    def run(self, jobs: list[FaceJob], rgb8: np.ndarray | None = None) -> list[FaceJob]:
        """Fill ``job.generated`` for each job; a batch that fails marks its jobs with ``error``.

        One call is one frame: tracked faces may get their crop from an earlier call. ``rgb8`` (the
        frame, 8-bit RGB) lets the router read the emotion of the faces generated now; only those,
        since a reused crop keeps the generator it was made with."""
        self._frame += 1
        fresh = self._select(jobs)
        self._route(fresh, rgb8)
        self._generate(fresh, rgb8)
        crops = {}
        for j in jobs:
            tid = j.face.track_id
            if tid is None:
                continue
            if j.generated is not None and not j.reused:
                crops[tid] = (j.generated, self._frame, j.generator)
            elif j.reused:
                crops[tid] = self._crops[tid]
        self._crops = crops  # tracks not in this frame are forgotten
        present = {j.face.track_id for j in jobs}
        self._identities = {t: z for t, z in self._identities.items() if t in present}
        return jobs

    def _select(self, jobs: list[FaceJob]) -> list[FaceJob]:
        """Reuse what the cadence allows; return the jobs that need the generator now."""
        n = self.regenerate_every
        if n <= 1:
            return jobs
        due, spare = [], []
        for j in jobs:
            cached = self._crops.get(j.face.track_id) if j.face.track_id is not None else None
            if cached is None or self._frame - cached[1] >= n:
                due.append(j)
            else:
                spare.append((cached[1], j.face.track_id, j))
        # Top up to a steady share, oldest crops first, so a group of faces that appeared together
        # does not all fall due on the same frame.
        share = len(jobs) // n
        spare.sort(key=lambda item: item[:2])
        while len(due) < share and spare:
            due.append(spare.pop(0)[2])
        for _, tid, j in spare:
            j.generated, _, j.generator = self._crops[tid]
            j.reused = True
        return due

    def _route(self, jobs: list[FaceJob], rgb8: np.ndarray | None):
        t0 = time.perf_counter()
        if self.router is not None and rgb8 is not None and jobs:
            try:
                self.router.assign(rgb8, jobs)
            except Exception as exc:  # the faces are still anonymized: only the choice of generator is lost
                log.warning("emotion routing failed (%s); drawing this frame's faces as neutral ones", exc)
                for j in jobs:
                    self.router.unread(j)
        self.routing_ms = (time.perf_counter() - t0) * 1e3

    def backends(self) -> list[InferenceBackend]:
        """Every generator this synthesizer may call (the default one first)."""
        return [self.backend] + [b for b in self.generators.values() if b is not self.backend]

    def warm_up(self):
        """One inference per generator and batch size of a stream's first frames (graph init, JIT)."""
        channels = INPUT_CHANNELS if self.head else 3  # a face generator sees the conditioning alone
        for backend in self.backends():
            for batch in (1, 2):
                backend.infer(np.zeros((batch, channels, self.size, self.size), np.float32))

    def _generate(self, jobs: list[FaceJob], rgb8: np.ndarray | None = None):
        groups: dict[str | None, list[FaceJob]] = {}
        for j in jobs:
            groups.setdefault(j.generator if j.generator in self.generators else None, []).append(j)
        for name, group in groups.items():
            self._generate_with(self.generators[name] if name is not None else self.backend, group, rgb8)

    def _inputs(self, jobs: list[FaceJob], rgb8: np.ndarray | None) -> np.ndarray:
        if not self.head:
            return to_network_input(np.stack([j.conditioning for j in jobs]))
        if rgb8 is None:
            raise ValueError("the head generator needs the frame (its surroundings of each head)")
        return np.stack([generator_input(rgb8, j.matrix, j.region, j.conditioning) for j in jobs])

    def _generate_with(self, backend: InferenceBackend, jobs: list[FaceJob], rgb8: np.ndarray | None = None):
        for start in range(0, len(jobs), self.max_batch):
            chunk = jobs[start:start + self.max_batch]
            try:
                for j in chunk:
                    j.conditioning = self.condition(j)
                out = backend.infer(self._inputs(chunk, rgb8))
                if out.shape != (len(chunk), 3, self.size, self.size) or not np.isfinite(out).all():
                    raise ValueError(f"generator returned {out.shape} with non-finite values" if out.ndim == 4 else f"bad output shape {out.shape}")
                for j, img in zip(chunk, from_network_output(out)):
                    if self.texture is not None and j.drawn_emotion is not None:
                        img = self.texture.apply(img, j.drawn_emotion, self.texture_strength)
                    j.generated = img
            except Exception as exc:  # any failure here must end in masking, never in a raw face
                for j in chunk:
                    j.error = f"{type(exc).__name__}: {exc}"
