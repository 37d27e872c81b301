"""Which generator draws each face: chosen by its emotion, read on the real face."""

from __future__ import annotations

import numpy as np

from agent.expression.classifier import EmotionClassifier, grey_crop
from agent.expression.smoothing import TrackSmoother
from agent.types import EMOTIONS, FaceJob

NEUTRAL = np.eye(len(EMOTIONS))[EMOTIONS.index("neutral")]


class EmotionRouter:
    """Chooses each face's generator by its emotion, read by the metadata stage's classifier on the real face.

    One generator of this size does not render every expression equally well: the one trained on the
    photos (mostly happy and neutral faces) renders those best, the one fine-tuned on FER2013's angry,
    fearful, sad and surprised faces those (models/MODEL_CARD.md). The choice
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
