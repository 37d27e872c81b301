"""What a subscriber learns about each frame and each face: the one place that decides it.

Everything here is computed from the ORIGINAL face, on the device, before anonymization; only these
numbers (never a pixel or a landmark of the face) leave it: the face's box and track, its 7-class
emotion (agent.expression.classifier), its blendshapes (pooled over other people's expressions by
default) and head pose, whether it was replaced or held, and for each synthetic face whether it
kept the emotion. Messages follow ``agent/schema/anoncam-metadata-v1.json`` (see :func:`schema`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from agent.config import Config
from agent.expression.bank import ExpressionBank
from agent.expression.classifier import (
    CROP_SIZE,
    EmotionClassifier,
    crop_to_input,
    grey_crop,
)
from agent.expression.smoothing import TrackSmoother
from agent.io.images import to_rgb8
from agent.runtime.manifest import Manifest, load_manifest
from agent.synthesis.head import face_framed
from agent.types import BLENDSHAPES, EMOTIONS, Face, FaceJob, blendshape_vector

META_SCHEMA = "anoncam.meta/1"  # the value of every message's "schema" field
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema" / "anoncam-metadata-v1.json"


@lru_cache(maxsize=1)
def schema() -> dict:
    """The metadata JSON Schema (draft 2020-12) as a dict."""
    return json.loads(SCHEMA_FILE.read_text())


def _emotion(scores: np.ndarray) -> dict:
    return {"label": EMOTIONS[int(np.argmax(scores))], "scores": {c: round(float(s), 4) for c, s in zip(EMOTIONS, scores)}}


def _box(face: Face, w: int, h: int) -> list[float]:
    x0, y0, x1, y1 = face.box
    return [round(max(0.0, x0), 1), round(max(0.0, y0), 1), round(min(float(w), x1), 1), round(min(float(h), y1), 1)]


def _face_view(job: FaceJob) -> np.ndarray:
    """The synthetic face as the classifier reads faces: in the face's alignment crop."""
    return job.generated if job.region is None else face_framed(job.generated, job.face.landmarks, job.matrix)


def frame_message(faces: list[dict], *, camera: str, frame_id: int, timestamp: float, shape, status: str = "anonymized",
                  covered=(), reason: str | None = None) -> dict:
    """One frame's metadata message around its per-face items (:meth:`ExpressionAnalyzer.describe`)."""
    h, w = shape[:2]
    meta = {"schema": META_SCHEMA, "camera": camera, "frame_id": frame_id, "timestamp": round(timestamp, 3),
            "width": w, "height": h, "status": status, "faces": faces}
    if len(covered):
        # Faces covered rather than synthesized (too small, turned, over max_faces, no mesh): no
        # expression to report, only where they are.
        meta["masked_regions"] = [[round(float(v), 1) for v in b] for b in covered]
    if reason is not None:
        meta["reason"] = reason
    return meta


class BlendshapeReport:
    """The blendshapes a subscriber learns for a face: ``pooled`` (k-Same-Select) or the person's own.

    A person's own blendshapes identify them: on held-out identities, the nearest other photo by
    blendshapes alone is the same person 41 % of the time (chance 5 %; ``reports/expression_bank.json``).
    Pooled, each face reports the mean of the expressions of other people nearest in emotion and
    gaze (:class:`agent.expression.bank.ExpressionBank`), which keeps both and brings that linkage to 18 %.
    """

    def __init__(self, bank: ExpressionBank | None, neighbours: int = 4):
        """``bank`` None: the person's own blendshapes (``experimental.raw_blendshapes``)."""
        self.bank = bank
        self.neighbours = neighbours

    def __call__(self, face: Face) -> dict | None:
        if not face.blendshapes:
            return None
        values = blendshape_vector(face.blendshapes)
        if self.bank is not None:
            values = self.bank.pool(values, self.neighbours)
        return {k: round(float(v), 4) for k, v in zip(BLENDSHAPES, values)}


class ExpressionAnalyzer:
    """Per-face metadata for a frame: ``describe(rgb, faces, jobs=None) -> list[dict]``.

    ``faces`` are in ``rgb``'s pixel coordinates (as ``Anonymizer.analyze_all`` returns them). Pass
    the anonymizer's ``jobs`` (one per face, in order) to also classify each synthetic face and
    report ``replaced`` and ``expression_kept``; the running agreement is in :attr:`agreement`.
    With ``expression.enabled`` off there is no classifier: the emotion is null (and listed as missing).
    """

    def __init__(self, cfg: Config | None = None, manifest: Manifest | None = None,
                 classifier: EmotionClassifier | None = None):
        cfg = cfg or Config()
        manifest = manifest or load_manifest(cfg.inference.models_dir)
        inference = cfg.inference.model_copy(update={"models_dir": manifest.folder})  # every model from one folder
        spec = manifest.emotion
        self.enabled = cfg.expression.enabled
        self.classifier = None
        if self.enabled:
            self.classifier = classifier or EmotionClassifier(inference, spec.classifier, spec.flip_tta)
        bank = None if cfg.experimental.raw_blendshapes else ExpressionBank(manifest.folder, spec.bank)
        self.blendshapes = BlendshapeReport(bank, spec.blendshape_neighbours)
        # smoothing is the weight of the history, so the newest frame weighs 1 - smoothing.
        smoothing = cfg.expression.smoothing
        self.smoother = TrackSmoother(1.0 - smoothing) if smoothing > 0 else None
        self.checked = 0
        self.kept = 0
        self._anon_scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # track id -> (synthetic crop, its scores)

    @property
    def agreement(self) -> dict:
        """Running count of anonymized faces whose emotion label matched the original's."""
        return {"checked": self.checked, "kept": self.kept, "rate": (self.kept / self.checked) if self.checked else None}

    def describe(self, rgb: np.ndarray, faces: list[Face], jobs: list[FaceJob] | None = None) -> list[dict]:
        if jobs is not None and [id(j.face) for j in jobs] != [id(f) for f in faces]:
            raise ValueError("jobs must be the anonymizer's, one per face in the same order")
        h, w = rgb.shape[:2]
        real, anon = self._classify(rgb, faces, jobs) if self.enabled else ({}, {})
        out = []
        for i, face in enumerate(faces):
            item = {"box": _box(face, w, h), "track_id": face.track_id}
            item.update(self._expression(face, real.get(i)))
            # With expression metadata off the emotion is null and listed as missing, as the schema asks.
            missing = [k for k in ("emotion", "blendshapes", "head_pose") if item[k] is None]
            if missing:
                item["missing"] = missing
            if jobs is not None:
                item.update(self._anonymized(anon.get(i), real.get(i)) if self.enabled else {})
                item["replaced"] = jobs[i].generated is not None
            item["held"] = bool(face.extra.get("held", False))
            out.append(item)
        if self.smoother is not None:
            self.smoother.step()
        return out

    def _expression(self, face: Face, scores: np.ndarray | None) -> dict:
        pose = face.head_pose()
        if self.smoother is not None and face.track_id is not None and scores is not None:
            scores, pose = self.smoother.update(face.track_id, scores, pose)
        item = {"emotion": _emotion(scores) if scores is not None and self.enabled else None}
        item["blendshapes"] = self.blendshapes(face)
        item["head_pose"] = {k: round(float(v), 2) for k, v in pose.items()} if pose else None
        return item

    def _anonymized(self, anon: np.ndarray | None, real: np.ndarray | None) -> dict:
        if anon is None or real is None:  # covered, not synthesized: nothing to compare
            return {"anonymized_emotion": None, "expression_kept": None}
        # Judged on unsmoothed labels: a per-frame check of what the generator kept.
        kept = int(np.argmax(anon)) == int(np.argmax(real))
        self.checked += 1
        self.kept += kept
        return {"anonymized_emotion": _emotion(anon), "expression_kept": kept}

    def _classify(self, rgb: np.ndarray, faces: list[Face], jobs: list[FaceJob] | None):
        """(real, anonymized) emotion scores by face index; the real and the synthetic faces go
        through the classifier in one batch."""
        jobs = jobs if jobs is not None else [None] * len(faces)
        # Faces the generator router just classified with this very classifier are not classified again.
        real = {i: j.emotion[1] for i, j in enumerate(jobs)
                if j is not None and j.emotion is not None and j.emotion[0] is self.classifier}
        rgb8 = to_rgb8(rgb)
        crops, rows = [], {}
        for i, f in enumerate(faces):
            if i in real:
                continue
            try:
                crops.append(grey_crop(rgb8, f.landmarks))
                rows[i] = len(crops) - 1
            except ValueError:  # degenerate landmarks (eyes and mouth coincide): no crop to classify
                pass
        n_real = len(crops)
        # A synthetic crop carried over from an earlier frame (the synthesizer's regenerate_every) is
        # the very same array, so its scores from that frame still hold.
        anon, fresh = {}, []
        for i, j in enumerate(jobs):
            if j is None or j.generated is None or (i not in rows and i not in real):
                continue
            hit = self._anon_scores.get(faces[i].track_id)
            if hit is not None and hit[0] is j.generated:
                anon[i] = hit[1]
            else:
                fresh.append(i)
        crops += [crop_to_input(_face_view(jobs[i])) for i in fresh]
        probs = self.classifier.probabilities(np.stack(crops) if crops else np.zeros((0, CROP_SIZE, CROP_SIZE), np.uint8))
        anon.update(zip(fresh, probs[n_real:]))
        real.update({i: probs[r] for i, r in rows.items()})
        self._anon_scores = {faces[i].track_id: (jobs[i].generated, anon[i]) for i in anon if faces[i].track_id is not None}
        return real, anon
