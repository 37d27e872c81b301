"""Expression metadata for every face: 52 blendshapes, head pose and a 7-class emotion.

Everything here is computed from the ORIGINAL face, on the device, before anonymization; only
these numbers (never a pixel of the face) leave it. The emotion classifier is a small INT8 CNN on
the aligned grey face (``emotion.int8``, see tools/train_emotion.py), run through the same
:mod:`agent.backends` interface as the generator. Its input contract: ``(N, 1, 48, 48)`` float32,
the face aligned by :func:`agent.align.alignment_matrix` (same framing as the generator's crop),
converted to grey with OpenCV's RGB2GRAY weights and scaled to [0, 1]; output ``(N, 7)`` logits in
:data:`EMOTIONS` order.

Per-face objects follow ``agent/schema/anoncam-metadata-v1.json`` (see :func:`schema`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .align import alignment_matrix
from .backends import create_backend
from .config import ExpressionConfig
from .faces import Face
from .images import to_rgb8
from .shape import BLENDSHAPES, ExpressionBank, blendshape_vector

META_SCHEMA = "anoncam.meta/1"  # the value of every message's "schema" field
SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / "anoncam-metadata-v1.json"

EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
BLENDSHAPE_NAMES = BLENDSHAPES  # the schema's and the reports' name for them
CROP_SIZE = 48
# Faces are aligned at this size first and then area-averaged down to CROP_SIZE, so a large camera
# face is averaged rather than aliased by a direct 48 px bilinear warp. On FER val (653 faces) both
# routes score the same (0.685 vs 0.681), and this one is also how the generator's 128 px output is
# brought to the classifier, so original and synthetic faces are judged alike.
_ALIGN_SIZE = 128


@lru_cache(maxsize=1)
def schema() -> dict:
    """The metadata JSON Schema (draft 2020-12) as a dict."""
    return json.loads(SCHEMA_FILE.read_text())


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


def _emotion(scores: np.ndarray) -> dict:
    return {"label": EMOTIONS[int(np.argmax(scores))], "scores": {c: round(float(s), 4) for c, s in zip(EMOTIONS, scores)}}


class EmotionClassifier:
    """Batches of aligned grey crops -> class probabilities.

    The crop CNN alone: a blendshape + landmark-geometry MLP was trained too (tools/train_emotion.py,
    candidate B, 0.56 on FER val) and fusing it did not beat the CNN on held-out val faces, so the
    blendshapes are reported as measured, not fed to the classifier.
    """

    def __init__(self, cfg: ExpressionConfig):
        self.cfg = cfg
        self.backend = create_backend(cfg.backend, cfg.classifier, cfg.models_dir, cfg.device, cfg.threads)

    def crop_logits(self, crops: np.ndarray) -> np.ndarray:
        """(N, 48, 48) uint8 -> (N, 7) logits; averaged with the mirrored face when flip_tta is on."""
        x = (crops.astype(np.float32) / 255.0)[:, None]
        if not self.cfg.flip_tta:
            return self.backend.infer(x)
        out = self.backend.infer(np.concatenate([x, x[..., ::-1]]))
        n = len(crops)
        return (out[:n] + out[n:]) / 2

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        """(N, 48, 48) uint8 -> (N, 7) probabilities."""
        if len(crops) == 0:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        return _softmax(self.crop_logits(crops).astype(np.float64))


class TrackSmoother:
    """Per-track exponential moving average of emotion scores and head pose (streams).

    ``alpha`` is the weight of the newest frame. Tracks not seen for ``max_age`` updates are dropped.
    """

    def __init__(self, alpha: float, max_age: int = 30):
        self.alpha = alpha
        self.max_age = max_age
        self._state: dict[int, dict] = {}
        self._tick = 0

    def update(self, track_id: int, scores: np.ndarray, pose: dict | None) -> tuple[np.ndarray, dict | None]:
        st = self._state.get(track_id)
        if st is None:
            st = {"scores": scores.copy(), "pose": dict(pose) if pose else None}
        else:
            a = self.alpha
            st["scores"] = a * scores + (1 - a) * st["scores"]
            if pose is not None:
                if st["pose"] is None:
                    st["pose"] = dict(pose)
                else:
                    st["pose"] = {k: _ema_angle(st["pose"][k], v, a) for k, v in pose.items()}
        st["seen"] = self._tick
        self._state[track_id] = st
        return st["scores"], (dict(st["pose"]) if pose is not None and st["pose"] else pose)

    def step(self):
        """Call once per frame: forgets tracks that have not been updated for max_age frames."""
        self._tick += 1
        for tid in [t for t, s in self._state.items() if self._tick - s["seen"] > self.max_age]:
            del self._state[tid]


def _ema_angle(old: float, new: float, a: float) -> float:
    # Average along the short way round so a yaw crossing +-180 does not swing through 0.
    d = (new - old + 180.0) % 360.0 - 180.0
    return (old + a * d + 180.0) % 360.0 - 180.0


class BlendshapeReport:
    """The blendshapes a subscriber learns for a face: the person's own (``raw``) or ``pooled`` (k-Same-Select).

    A person's own blendshapes identify them: on held-out identities, the nearest other photo by
    blendshapes alone is the same person 41 % of the time (chance 5 %; ``reports/expression_bank.json``).
    Pooled, each face reports the mean of the expressions of other people nearest in emotion and
    gaze (:class:`agent.shape.ExpressionBank`), which keeps both and brings that linkage to 18 %.
    """

    def __init__(self, cfg: ExpressionConfig):
        self.neighbours = cfg.blendshape_neighbours
        self.bank = None
        if cfg.blendshapes == "pooled":
            self.bank = ExpressionBank(cfg.models_dir)

    def __call__(self, face: Face) -> dict | None:
        if not face.blendshapes:
            return None
        values = blendshape_vector(face.blendshapes)
        if self.bank is not None:
            values = self.bank.pool(values, self.neighbours)
        return {k: round(float(v), 4) for k, v in zip(BLENDSHAPE_NAMES, values)}


class ExpressionAnalyzer:
    """Per-face expression metadata for a frame: ``describe(rgb, faces, jobs=None) -> list[dict]``.

    ``faces`` are :class:`agent.faces.Face` in ``rgb``'s pixel coordinates (as ``Anonymizer.analyze``
    returns them). Pass the anonymizer's ``jobs`` to also classify each synthetic face and report
    ``expression_kept``; the running agreement is in :attr:`agreement`.
    """

    def __init__(self, cfg: ExpressionConfig | None = None):
        self.cfg = cfg = cfg or ExpressionConfig()
        self.classifier = EmotionClassifier(cfg)
        self.blendshapes = BlendshapeReport(cfg)
        # cfg.smoothing is the weight of the history, so the newest frame weighs 1 - smoothing.
        self.smoother = TrackSmoother(1.0 - cfg.smoothing) if cfg.smoothing > 0 else None
        self.checked = 0
        self.kept = 0
        self._anon_scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # track id -> (synthetic crop, its scores)

    @property
    def agreement(self) -> dict:
        """Running count of anonymized faces whose emotion label matched the original's."""
        return {"checked": self.checked, "kept": self.kept, "rate": (self.kept / self.checked) if self.checked else None}

    def describe(self, rgb: np.ndarray, faces: list[Face], jobs=None) -> list[dict]:
        by_face = {id(j.face): j for j in (jobs or [])}
        # Faces the generator router just classified with this very classifier are not classified again.
        known = {i: by_face[id(f)].emotion[1] for i, f in enumerate(faces)
                 if id(f) in by_face and by_face[id(f)].emotion is not None and by_face[id(f)].emotion[0] is self.classifier}
        if not self.cfg.check_anonymized:
            jobs, by_face = None, {}
        rgb8 = to_rgb8(rgb)
        h, w = rgb8.shape[:2]
        crops, rows = [], {}
        for i, f in enumerate(faces):
            if i in known:
                continue
            try:
                crops.append(grey_crop(rgb8, f.landmarks))
                rows[i] = len(crops) - 1
            except ValueError:  # degenerate landmarks (eyes and mouth coincide): no crop to classify
                pass
        n_real = len(crops)
        # Synthetic faces go through the same classifier in the same batch (one backend call).
        gen_rows = [i for i, f in enumerate(faces)
                    if (i in rows or i in known) and id(f) in by_face and by_face[id(f)].generated is not None]
        # A synthetic crop carried over from an earlier frame (Synthesizer's regenerate_every) is
        # the very same array, so its scores from that frame still hold.
        anon, fresh = {}, []
        for i in gen_rows:
            hit = self._anon_scores.get(faces[i].track_id)
            if hit is not None and hit[0] is by_face[id(faces[i])].generated:
                anon[i] = hit[1]
            else:
                fresh.append(i)
        crops += [crop_to_input(by_face[id(faces[i])].generated) for i in fresh]
        probs = self.classifier.probabilities(np.stack(crops) if crops else np.zeros((0, CROP_SIZE, CROP_SIZE), np.uint8))
        anon.update(zip(fresh, probs[n_real:]))
        real = {i: probs[r] for i, r in rows.items()} | known
        self._anon_scores = {faces[i].track_id: (by_face[id(faces[i])].generated, anon[i])
                             for i in anon if faces[i].track_id is not None}
        out = []
        for i, face in enumerate(faces):
            scores, pose = real.get(i), face.head_pose()
            raw_label = int(np.argmax(scores)) if scores is not None else None
            if self.smoother is not None and face.track_id is not None and scores is not None:
                scores, pose = self.smoother.update(face.track_id, scores, pose)
            x0, y0, x1, y1 = face.box
            item = {
                "box": [round(max(0.0, x0), 1), round(max(0.0, y0), 1), round(min(float(w), x1), 1), round(min(float(h), y1), 1)],
                "track_id": face.track_id,
                "emotion": _emotion(scores) if scores is not None else None,
                "blendshapes": self.blendshapes(face),
                "head_pose": {k: round(float(v), 2) for k, v in pose.items()} if pose else None,
            }
            missing = [k for k in ("emotion", "blendshapes", "head_pose") if item[k] is None]
            if missing:
                item["missing"] = missing
            if jobs is not None:
                if i in anon:
                    # Judged on unsmoothed labels: a per-frame check of what the generator kept.
                    kept = int(np.argmax(anon[i])) == raw_label
                    item["anonymized_emotion"] = _emotion(anon[i])
                    item["expression_kept"] = kept
                    self.checked += 1
                    self.kept += kept
                else:
                    item["anonymized_emotion"] = None  # masked, not synthesized: nothing to compare
                    item["expression_kept"] = None
            out.append(item)
        if self.smoother is not None:
            self.smoother.step()
        return out
