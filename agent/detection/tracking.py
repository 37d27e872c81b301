"""Between frames: track ids, landmark smoothing and the hold on lost faces.

- Track ids: greedy IoU matching of face boxes against the previous frame's tracks.
- Smoothing: a One-Euro filter (Casiez et al., CHI 2012) per track over all 478 landmarks, so the
  synthetic face does not shimmer from detector jitter. Smoothing lags a moving face, and a lagging
  paste-back region would uncover the real face's edge; the smoothed points are therefore kept within
  ``max_offset`` x face size of the detected ones, which the feathered mask margin covers.
- Hold: a track the detector loses keeps being anonymized at its last landmarks for ``hold_ms``,
  so one missed detection (motion blur, a hand passing) does not publish a frame with a bare face.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from agent.runtime.manifest import TrackingSpec
from agent.types import Detection, Face, iou


def _alpha(dt: float, cutoff) -> np.ndarray:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuro:
    """One-Euro filter over an array of points, speed-adaptive per point."""

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t = 0.0

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = x.astype(np.float32)
        if self.x is None:
            self.x, self.dx, self.t = x, np.zeros_like(x), t
            return x
        dt = max(t - self.t, 1e-3)
        a_d = _alpha(dt, self.d_cutoff)
        self.dx = a_d * (x - self.x) / dt + (1 - a_d) * self.dx
        speed = np.linalg.norm(self.dx[:, :2], axis=1, keepdims=True)
        a = _alpha(dt, self.min_cutoff + self.beta * speed)
        self.x = (a * x + (1 - a) * self.x).astype(np.float32)
        self.t = t
        return self.x

    def clamp(self, raw: np.ndarray, max_shift: float) -> np.ndarray:
        """Pull the state back to within ``max_shift`` px of ``raw`` (per point, in x/y)."""
        off = self.x[:, :2] - raw[:, :2]
        dist = np.linalg.norm(off, axis=1, keepdims=True)
        scale = np.minimum(1.0, max_shift / np.maximum(dist, 1e-6))
        self.x[:, :2] = raw[:, :2] + off * scale
        return self.x


@dataclass
class Track:
    id: int
    face: Face  # last (smoothed) face
    last_seen: float  # seconds, monotonic
    filter: OneEuro | None


class Tracker:
    def __init__(self, hold_ms: float = 500, spec: TrackingSpec | None = None):
        """``hold_ms``: how long a lost face stays anonymized at its last place (policy.hold_ms);
        ``spec``: matching and smoothing (the models' manifest)."""
        self.hold_s = hold_ms / 1000.0
        self.spec = spec or TrackingSpec()
        self.tracks: list[Track] = []
        self._boxes: list[tuple[Detection, float]] = []
        self._next_id = 1

    def update(self, faces: list[Face], t: float) -> tuple[list[Face], int]:
        """Match ``faces`` (detected at time ``t`` s) to tracks.

        Returns the faces to anonymize -- the detected ones, smoothed and with ``track_id`` set, then
        the held ones (``extra["held"] = True``) -- and how many are held.
        """
        boxes = [f.box for f in faces]
        pairs = sorted(
            ((iou(boxes[i], tr.face.box), i, k) for i in range(len(faces)) for k, tr in enumerate(self.tracks)),
            reverse=True,
        )
        face_to_track: dict[int, int] = {}
        used = set()
        for score, i, k in pairs:
            if score < self.spec.iou_threshold:
                break
            if i in face_to_track or k in used:
                continue
            face_to_track[i] = k
            used.add(k)

        out: list[Face] = []
        kept: list[Track] = []
        for i, face in enumerate(faces):
            if i in face_to_track:
                track = self.tracks[face_to_track[i]]
            else:
                track = Track(self._next_id, face, t, self._new_filter())
                self._next_id += 1
            smoothed = self._smooth(track, face, t)
            track.face, track.last_seen = smoothed, t
            kept.append(track)
            out.append(smoothed)
        held = 0
        for k, track in enumerate(self.tracks):
            if k in used:
                continue
            if t - track.last_seen <= self.hold_s:
                kept.append(track)
                out.append(replace(track.face, extra={**track.face.extra, "held": True}))
                held += 1
        self.tracks = kept
        return out, held

    def update_detections(self, detections: list[Detection], t: float) -> tuple[list[Detection], int]:
        """Every detector box, plus those it found in the last ``hold_ms`` and has lost since (marked
        ``held``): the guard covers a held box no synthetic face covers, so a face the detector misses
        for a frame or two stays covered. Returns the boxes and how many of them are held."""
        kept = [(d, t) for d in detections]
        held = []
        for det, seen in self._boxes:
            if any(iou(det.box, d.box) >= self.spec.iou_threshold for d in detections):
                continue
            if t - seen <= self.hold_s:
                kept.append((det, seen))
                held.append(replace(det, held=True))
        self._boxes = kept
        return list(detections) + held, len(held)

    def _new_filter(self) -> OneEuro | None:
        s = self.spec.smoothing
        return OneEuro(s.min_cutoff, s.beta) if s.enabled else None

    def _smooth(self, track: Track, face: Face, t: float) -> Face:
        extra = {k: v for k, v in face.extra.items() if k != "held"}
        if track.filter is None:
            return replace(face, track_id=track.id, extra=extra)
        raw = face.landmarks
        track.filter(raw, t)
        lm = track.filter.clamp(raw, self.spec.smoothing.max_offset * max(face.size, 1.0)).copy()
        return replace(face, landmarks=lm, track_id=track.id, extra=extra)
