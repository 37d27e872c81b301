"""Synthesis: aligned landmarks in, synthetic face crops out.

The generator sees only the rendered conditioning image, never a pixel of the real face.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .align import CROP_SIZE, alignment_matrix, transform_points
from .backends import InferenceBackend
from .expression import EMOTIONS, EmotionClassifier, TrackSmoother, grey_crop
from .faces import Face
from .render import from_network_output, render_conditioning, to_network_input
from .shape import ShapeNormalizer
from .texture import ExpressionTexture


@dataclass
class FaceJob:
    """One face on its way through synthesis: alignment, conditioning, then the generated crop."""

    face: Face
    matrix: np.ndarray  # 2x3, frame -> crop
    crop_landmarks: np.ndarray  # (478, 2) in crop pixels
    size: int  # S, the crop's side
    conditioning: np.ndarray | None = None  # (S, S, 3) uint8 RGB, drawn only for faces sent to the generator
    generated: np.ndarray | None = None  # (S, S, 3) uint8 RGB, None if synthesis failed
    error: str | None = None
    reused: bool = False  # generated is this track's crop from an earlier frame (see Synthesizer)
    generator: str | None = None  # the generator chosen for this face (EmotionRouter); None: the default one
    emotion: tuple | None = None  # (classifier, its probabilities for the real face) when the router read it
    drawn_emotion: np.ndarray | None = None  # (7,) the emotion scores the face is drawn with (smoothed per track)


log = logging.getLogger(__name__)
NEUTRAL = np.eye(len(EMOTIONS))[EMOTIONS.index("neutral")]


class EmotionRouter:
    """Chooses each face's generator by its emotion, read by the metadata stage's classifier on the real face.

    One generator of this size does not render every expression equally well: the one trained on the
    photos (mostly happy and neutral faces) renders those best, the one fine-tuned on FER2013's angry,
    fearful, sad and surprised faces those (campaign step 6 in models/MODEL_CARD.md). The choice
    depends only on the emotion, which the agent publishes anyway, so it adds no identity channel.
    In streams a tracked face's scores are smoothed, so that its synthetic face does not switch
    between the generators on every flicker of the label.
    """

    def __init__(self, classifier: EmotionClassifier, routes: dict[str, str], default: str | None = None,
                 stream_weight: float = 0.3):
        """``routes``: emotion -> generator name; emotions not in it go to ``default`` (None: the
        synthesizer's default generator)."""
        unknown = set(routes) - set(EMOTIONS)
        if unknown:
            raise ValueError(f"no such emotion(s) {sorted(unknown)}; choose from {EMOTIONS}")
        self.classifier = classifier
        self.routes = {e: routes.get(e, default) for e in EMOTIONS}
        self.smoother = TrackSmoother(stream_weight)

    def assign(self, rgb8: np.ndarray, jobs: list[FaceJob]) -> None:
        """Set ``job.generator`` for each job; a face whose emotion cannot be read is drawn as a neutral one."""
        crops, readable = [], []
        for j in jobs:
            try:
                crops.append(grey_crop(rgb8, j.face.landmarks))
                readable.append(j)
            except ValueError:  # degenerate landmarks: no crop to classify
                self.unread(j)
        scores = self.classifier.probabilities(np.stack(crops)) if crops else np.zeros((0, len(EMOTIONS)))
        for j, s, drawn in zip(readable, scores, self.read(scores, [j.face.track_id for j in readable])):
            j.generator, j.emotion, j.drawn_emotion = self.route(drawn), (self.classifier, s), drawn

    def unread(self, job: FaceJob) -> None:
        """A face whose emotion could not be read: drawn as a neutral one."""
        job.generator, job.emotion, job.drawn_emotion = self.routes["neutral"], None, NEUTRAL.copy()

    def read(self, scores: np.ndarray, track_ids: list[int | None]) -> np.ndarray:
        """(N, 7) emotion probabilities of one frame's faces -> the scores each face is drawn with.

        A tracked face's scores are averaged over its regenerations. Call once per frame: tracks not
        seen for a while are forgotten."""
        self.smoother.step()
        out = np.array(scores, np.float64).reshape(-1, len(EMOTIONS))
        for i, tid in enumerate(track_ids):
            if tid is not None:
                out[i], _ = self.smoother.update(tid, out[i], None)
        return out

    def route(self, scores: np.ndarray) -> str | None:
        return self.routes[EMOTIONS[int(np.argmax(scores))]]

    def choose(self, scores: np.ndarray, track_ids: list[int | None]) -> list[str | None]:
        """(N, 7) emotion probabilities of one frame's faces -> each face's generator (None: the default)."""
        return [self.route(s) for s in self.read(scores, track_ids)]


class Synthesizer:
    """Conditioning images through the generator.

    In streams, ``regenerate_every=N`` lets a tracked face keep its synthetic crop for up to N
    frames. The crop lives in the aligned crop space, and compose warps it with the current frame's
    alignment and masks it with the current face oval. So position, scale, rotation and coverage
    follow the face on every frame; only the expression can lag, by at most N-1 frames. Faces
    without a track id (stills) are always generated. Regeneration is spread over the frames so
    each frame generates about 1/N of its faces, rather than all of them every Nth frame.
    """

    def __init__(self, backend: InferenceBackend, size: int = CROP_SIZE, style: str = "contours", max_batch: int = 8,
                 shape: ShapeNormalizer | None = None, regenerate_every: int = 1, identity_variation: float = 0.0,
                 seed: int | None = None, generators: dict[str, InferenceBackend] | None = None,
                 router: EmotionRouter | None = None, texture: ExpressionTexture | None = None,
                 texture_strength: float = 1.0):
        """``texture``: with a router, each generated face gets the shading of the emotion it is drawn
        as, ``texture_strength`` times the fitted gain (agent/texture.py)."""
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
        self.style = style
        self.max_batch = max_batch
        self.regenerate_every = regenerate_every
        self._frame = 0
        self._crops: dict[int, tuple[np.ndarray, int, str | None]] = {}  # track id -> (crop, frame made, generator)

    def prepare(self, face: Face) -> FaceJob:
        m = alignment_matrix(face.landmarks, self.size)
        return FaceJob(face, m, transform_points(m, face.landmarks).astype(np.float32), self.size)

    def condition(self, job: FaceJob) -> np.ndarray:
        # The mask follows the real landmarks; only the generator's view loses the person's shape.
        if self.shape is None:
            drawn = job.crop_landmarks
        else:
            drawn = self.shape(job.crop_landmarks, job.face, self._identity(job.face.track_id))
        return render_conditioning(drawn, self.size, self.style)

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
        self._generate(fresh)
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

    def _generate(self, jobs: list[FaceJob]):
        groups: dict[str | None, list[FaceJob]] = {}
        for j in jobs:
            groups.setdefault(j.generator if j.generator in self.generators else None, []).append(j)
        for name, group in groups.items():
            self._generate_with(self.generators[name] if name is not None else self.backend, group)

    def _generate_with(self, backend: InferenceBackend, jobs: list[FaceJob]):
        for start in range(0, len(jobs), self.max_batch):
            chunk = jobs[start:start + self.max_batch]
            try:
                for j in chunk:
                    j.conditioning = self.condition(j)
                out = backend.infer(to_network_input(np.stack([j.conditioning for j in chunk])))
                if out.shape != (len(chunk), 3, self.size, self.size) or not np.isfinite(out).all():
                    raise ValueError(f"generator returned {out.shape} with non-finite values" if out.ndim == 4 else f"bad output shape {out.shape}")
                for j, img in zip(chunk, from_network_output(out)):
                    if self.texture is not None and j.drawn_emotion is not None:
                        img = self.texture.apply(img, j.drawn_emotion, self.texture_strength)
                    j.generated = img
            except Exception as exc:  # any failure here must end in masking, never in a raw face
                for j in chunk:
                    j.error = f"{type(exc).__name__}: {exc}"
