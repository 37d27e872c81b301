"""Per-track smoothing of emotion scores and head pose in streams."""

from __future__ import annotations

import numpy as np


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
