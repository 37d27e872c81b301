"""Track ids, One-Euro smoothing with its lag cap, and the hold on lost faces (pure numpy, no models)."""

from __future__ import annotations

import numpy as np

from agent.detection.tracking import Tracker
from agent.runtime.manifest import TrackingSpec
from agent.types import Detection, Face, iou


def face_at(cx, cy, size=100.0, seed=None, jitter=0.0):
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(1).uniform(-0.5, 0.5, (478, 3)).astype(np.float32) * size
    base[:, 0] += cx
    base[:, 1] += cy
    if jitter:
        base[:, :2] += rng.normal(0, jitter, (478, 2)).astype(np.float32)
    return Face(landmarks=base)


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 15, 10)) - 1 / 3) < 1e-9


def test_ids_follow_faces_and_new_faces_get_new_ids():
    tr = Tracker(hold_ms=0)
    out, _ = tr.update([face_at(100, 100), face_at(400, 100)], 0.0)
    assert [f.track_id for f in out] == [1, 2]
    # Both move a little, listed in the other order: ids follow the boxes, not the list order.
    out, _ = tr.update([face_at(410, 105), face_at(105, 100)], 0.066)
    assert [f.track_id for f in out] == [2, 1]
    out, _ = tr.update([face_at(105, 100), face_at(700, 300)], 0.133)
    assert [f.track_id for f in out] == [1, 3]


def test_hold_keeps_a_lost_face_at_its_last_place_then_lets_go():
    tr = Tracker(hold_ms=300)
    first, _ = tr.update([face_at(200, 200)], 0.0)
    out, held = tr.update([], 0.2)
    assert held == 1 and out[0].track_id == 1 and out[0].extra["held"]
    np.testing.assert_array_equal(out[0].landmarks, first[0].landmarks)
    out, held = tr.update([], 0.29)
    assert held == 1
    out, held = tr.update([], 0.4)
    assert held == 0 and out == []
    # Re-found within the hold: same id, not held any more.
    tr = Tracker(hold_ms=300)
    tr.update([face_at(200, 200)], 0.0)
    tr.update([], 0.1)
    out, held = tr.update([face_at(203, 200)], 0.2)
    assert held == 0 and out[0].track_id == 1 and not out[0].extra.get("held")


def test_smoothing_reduces_jitter_and_never_lags_past_the_cap():
    spec = TrackingSpec()
    tr = Tracker(spec=spec)
    raw_steps, smooth_steps = [], []
    prev_raw = prev_s = None
    for i in range(60):
        f = face_at(300, 200, seed=i, jitter=1.5)
        (s,), _ = tr.update([f], i / 15)
        if prev_raw is not None:
            raw_steps.append(np.abs(f.landmarks[:, :2] - prev_raw).mean())
            smooth_steps.append(np.abs(s.landmarks[:, :2] - prev_s).mean())
        prev_raw, prev_s = f.landmarks[:, :2].copy(), s.landmarks[:, :2].copy()
    assert np.mean(smooth_steps) < 0.5 * np.mean(raw_steps), "still faces should shimmer much less"

    # A fast move: smoothed landmarks stay within max_offset x face size of the detected ones.
    tr = Tracker(spec=spec)
    for i in range(10):
        f = face_at(100 + 40 * i, 200)
        (s,), _ = tr.update([f], i / 15)
        lag = np.linalg.norm(s.landmarks[:, :2] - f.landmarks[:, :2], axis=1).max()
        assert lag <= spec.smoothing.max_offset * f.size + 1e-3


def test_smoothing_off_passes_landmarks_through():
    tr = Tracker(spec=TrackingSpec(smoothing={"enabled": False}))
    f = face_at(300, 200, seed=3, jitter=2)
    tr.update([face_at(300, 200)], 0.0)
    (s,), _ = tr.update([f], 0.066)
    np.testing.assert_array_equal(s.landmarks, f.landmarks)


def detection(x0, y0, x1, y1):
    return Detection(np.array([x0, y0, x1, y1], np.float32), 0.9, np.zeros((5, 2), np.float32))


def test_detector_boxes_are_held_too():
    tr = Tracker(hold_ms=300)
    boxes, held = tr.update_detections([detection(10, 10, 30, 30)], 0.0)
    assert len(boxes) == 1 and held == 0 and not boxes[0].held
    boxes, held = tr.update_detections([], 0.2)
    assert held == 1 and boxes[0].held and np.allclose(boxes[0].box, [10, 10, 30, 30])
    boxes, held = tr.update_detections([detection(11, 10, 31, 30)], 0.25)  # found again: not duplicated
    assert len(boxes) == 1 and held == 0
    boxes, held = tr.update_detections([], 0.6)
    assert boxes == [] and held == 0
