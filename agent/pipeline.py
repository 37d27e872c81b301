"""The face pipeline: analyse -> synthesize -> seal (agent.composition.guard).

A frame leaves only as an :class:`~agent.composition.guard.AnonymizedFrame`, which only the guard makes: every
face analysis found is replaced or covered there. Faces that cannot be aligned or synthesized are
masked. If analysis itself fails there is no AnonymizedFrame for that frame at all: the caller gets
an :class:`AnalysisFailed` and decides between dropping the frame and publishing
:func:`~agent.composition.guard.mask_everything` of it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from agent.composition.guard import AnonymizedFrame, seal
from agent.config import Config
from agent.detection.detector import FaceDetector
from agent.detection.landmarks import FaceAnalyzer
from agent.errors import AnoncamError
from agent.expression.bank import ExpressionBank
from agent.expression.classifier import EmotionClassifier
from agent.io.images import to_rgb8
from agent.runtime.backends import create_backend
from agent.runtime.manifest import Manifest, load_manifest
from agent.synthesis.router import EmotionRouter
from agent.synthesis.shape import ShapeNormalizer
from agent.synthesis.synthesizer import Synthesizer
from agent.synthesis.texture import ExpressionTexture
from agent.types import Analysis, Face, FaceJob

log = logging.getLogger(__name__)


STREAM_TURN_EVERY = 3
# A stream whose frames lie sideways or upside down (a camera mounted so) keeps being searched turned at
# full size for this many frames after the last sign of it: two turned passes' worth.
STREAM_FULL_TURNS = 2 * STREAM_TURN_EVERY


class AnalysisFailed(AnoncamError):
    """Face analysis did not run to completion on this frame: it must not be published as is."""


@dataclass
class Result:
    frame: AnonymizedFrame
    faces: list[Face]
    jobs: list[FaceJob]
    timings_ms: dict[str, float] = field(default_factory=dict)
    analysis: Analysis | None = None


class Anonymizer:
    """Stills (``mode="image"``) or streams (``mode="video"``, tracking between frames)."""

    def __init__(self, cfg: Config | None = None, mode: str = "image",
                 emotion_classifier: EmotionClassifier | None = None, manifest: Manifest | None = None,
                 seed: int | None = None, detector_threads: int | None = None):
        """``emotion_classifier``: the metadata stage's classifier, shared by the generator router
        (then each face is classified once per frame); by default the router loads its own.
        ``manifest``: the models and their settings (default: the models folder's own); every model
        is loaded from its folder. ``seed``: for the random face shapes of identity_variation
        (evaluations repeat; unset: different on every start). ``detector_threads``: the face
        detector's thread count when it should differ from ``inference.threads`` (streams give it
        every core: see :func:`agent.service.agent.stream_detector_threads`)."""
        cfg = cfg or Config()
        self.manifest = manifest = manifest or load_manifest(cfg.inference.models_dir)
        folder = manifest.folder
        self.cfg = cfg = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"models_dir": folder})})
        inference = cfg.inference
        # Streams skip the mirrored pass and turn the frame every third one only: there a face found
        # stays covered for hold_ms after it is lost, and the time goes to the frame rate.
        stills = mode == "image"
        detector_inference = inference if detector_threads is None else inference.model_copy(
            update={"threads": detector_threads})
        detector = FaceDetector(detector_inference, manifest.detector,
                                rotations=(90, 180, 270) if cfg.anonymizer.detect_rotated else (),
                                flip=stills, turn_every=1 if stills else STREAM_TURN_EVERY,
                                full_turns=1 if stills else STREAM_FULL_TURNS,
                                scale=cfg.anonymizer.detection_scale)
        self.analyzer = FaceAnalyzer(
            max_faces=cfg.anonymizer.max_faces, mode=mode,
            min_detection_confidence=manifest.landmarker.min_detection_confidence, model_folder=folder,
            detector=detector, min_mesh_size=manifest.detector.min_mesh_size, file=manifest.landmarker.file,
        )
        self.synthesizer, self.head_synthesizer = _synthesizers(cfg, manifest, emotion_classifier, seed)
        self.backend = self.synthesizer.backend

    def analyze(self, rgb: np.ndarray, timestamp_ms: int | None = None) -> list[Face]:
        """All faces with landmarks in ``rgb`` (any bit depth), in full-resolution pixel coordinates."""
        return self.analyze_all(rgb, timestamp_ms).faces

    def analyze_all(self, rgb: np.ndarray, timestamp_ms: int | None = None) -> Analysis:
        """Everything found in ``rgb`` (any bit depth), in full-resolution pixels."""
        rgb8 = to_rgb8(rgb)
        h, w = rgb8.shape[:2]
        scale = min(1.0, self.manifest.landmarker.max_analysis_side / max(h, w))
        small = rgb8 if scale == 1.0 else cv2.resize(rgb8, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        try:
            analysis = self.analyzer.detect_all(small, timestamp_ms)
        except Exception as exc:
            raise AnalysisFailed(f"face analysis failed: {exc}") from exc
        return analysis if scale == 1.0 else analysis.scaled(1.0 / scale, rgb.shape)

    def anonymize(self, rgb: np.ndarray, analysis: Analysis) -> tuple[AnonymizedFrame, list[FaceJob], dict]:
        t0 = time.perf_counter()
        jobs = []
        for face in analysis.faces:
            try:
                jobs.append(self.synthesizer.prepare(face))
            except Exception as exc:
                # Degenerate geometry: still mask the face, using its landmark hull as the region.
                log.warning("face could not be aligned (%s); masking it", exc)
                jobs.append(_hull_job(face, exc))
        t1 = time.perf_counter()
        wants_frame = self.router is not None or self.synthesizer.head or self.head_synthesizer is not None
        rgb8 = to_rgb8(rgb) if wants_frame else None
        heads = self._heads(jobs, rgb8)
        self.synthesizer.run([j for j in jobs if j.error is None], rgb8)
        t2 = time.perf_counter()
        g = self.manifest.generator
        frame = seal(rgb, analysis, jobs, g.feather, g.tone_match, g.surround, under=heads)
        t3 = time.perf_counter()
        routing = self.synthesizer.routing_ms
        return frame, jobs, {"align_ms": (t1 - t0) * 1e3, "routing_ms": routing,
                             "synthesis_ms": (t2 - t1) * 1e3 - routing, "compose_ms": (t3 - t2) * 1e3}

    def _heads(self, jobs: list[FaceJob], rgb8: np.ndarray | None) -> list[FaceJob]:
        """With ``face_over_head``: the synthetic heads the faces are then drawn over (those that
        could be drawn: the face layer alone still replaces or covers every face)."""
        if self.head_synthesizer is None:
            return []
        heads = []
        for j in jobs:
            if j.error is None:
                try:
                    heads.append(self.head_synthesizer.prepare(j.face))
                except Exception as exc:
                    log.debug("no synthetic head for a face (%s)", exc)
        self.head_synthesizer.run(heads, rgb8)
        return [h for h in heads if h.generated is not None and h.error is None]

    def synthesizers(self) -> list[Synthesizer]:
        return [self.synthesizer] + ([self.head_synthesizer] if self.head_synthesizer is not None else [])

    @property
    def router(self) -> EmotionRouter | None:
        return self.synthesizer.router

    def process(self, rgb: np.ndarray, timestamp_ms: int | None = None) -> Result:
        t0 = time.perf_counter()
        analysis = self.analyze_all(rgb, timestamp_ms)
        t1 = time.perf_counter()
        frame, jobs, timings = self.anonymize(rgb, analysis)
        timings["analysis_ms"] = (t1 - t0) * 1e3
        return Result(frame, analysis.faces, jobs, timings, analysis)

    def restart(self) -> None:
        """The next frame is a stream's first: warm-up frames do not count towards the detector's
        schedule of turned passes, so that the first real frame is searched for turned faces."""
        self.analyzer.restart()

    def close(self):
        self.analyzer.close()


def _synthesizers(cfg: Config, manifest: Manifest, classifier: EmotionClassifier | None,
                  seed: int | None) -> tuple[Synthesizer, Synthesizer | None]:
    """(what draws each face, the head generator it is drawn over with ``face_over_head`` or None)."""
    inference, spec, folder = cfg.inference, manifest.generator, manifest.folder
    heads_only = bool(spec.head) and not spec.face_over_head
    routes = {} if heads_only else spec.by_emotion
    # Faces whose emotion cannot be read are drawn as neutral ones; the default generator is
    # loaded only if some emotion has no generator of its own (or routing is off).
    default = spec.head if heads_only else routes.get("neutral", spec.default)
    generators = {n: create_backend(inference.backend, n, folder, inference.device, inference.threads)
                  for n in sorted(spec.names())}
    router = texture = None
    if routes or (spec.texture_gain > 0 and not heads_only):
        # The texture needs the emotion as much as the routes do: without routes the router only
        # reads it, and every face goes to the default generator.
        classifier = classifier or EmotionClassifier(inference, manifest.emotion.classifier, manifest.emotion.flip_tta)
        router = EmotionRouter(classifier, routes, default=spec.default)
    if spec.texture_gain > 0 and not heads_only:
        texture = ExpressionTexture(folder, spec.texture)
    shape = None
    if spec.identity_normalization > 0 and not cfg.experimental.own_landmarks:
        shape = ShapeNormalizer(spec.identity_normalization, folder, spec.expression_neighbours, spec.shape_model,
                                ExpressionBank(folder, manifest.emotion.bank) if spec.expression_neighbours else None)
    face_generators = {n: b for n, b in generators.items() if n != spec.head} if routes else {}
    faces = Synthesizer(generators[default], shape=shape, regenerate_every=spec.regenerate_every,
                        identity_variation=spec.identity_variation, seed=seed, generators=face_generators,
                        router=router, texture=texture, texture_strength=spec.texture_gain, head=heads_only)
    heads = None
    if spec.head and spec.face_over_head:
        heads = Synthesizer(generators[spec.head], shape=shape, regenerate_every=spec.regenerate_every,
                            identity_variation=spec.identity_variation, seed=seed, head=True)
    return faces, heads


def _hull_job(face: Face, exc: Exception) -> FaceJob:
    """A job whose 'crop' is the identity map over the face box, so compose masks the landmark hull."""
    x0, y0, x1, y1 = face.box
    side = max(x1 - x0, y1 - y0, 1.0)
    size = 128
    s = size / side
    m = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]], np.float64)
    lm = (face.landmarks[:, :2] - (x0, y0)) * s
    return FaceJob(face, m, lm.astype(np.float32), size, error=f"alignment failed: {exc}")
