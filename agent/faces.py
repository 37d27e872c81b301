"""Face analysis: every face in a frame, with its 478 landmarks, 52 blendshapes and head pose.

Wraps MediaPipe's FaceLandmarker (Tasks API) with the bundle vendored in ``models/``. IMAGE mode
serves stills; VIDEO mode (monotonic timestamps, tracking between frames) serves streams.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from .detect import iou
from .errors import ModelError
from .models import verified_path
from .mp_results import RawFaces, array_reader, from_public

LANDMARKER_MODEL = "face_landmarker.task"
NUM_LANDMARKS = 478


@dataclass
class Face:
    """One face in frame pixel coordinates."""

    landmarks: np.ndarray  # (478, 3) float32: x, y in pixels, z in the same scale as x
    blendshapes: dict[str, float] | None = None
    transform: np.ndarray | None = None  # (4, 4) facial transformation matrix, or None
    track_id: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def box(self) -> tuple[float, float, float, float]:
        # Tracking, paste-back and metadata ask for it ~50 times a frame at 720p with four faces;
        # recomputed each time it was 5 ms of the output thread. Kept with the array it came from,
        # so a face given new landmarks (a new array) gets a new box.
        cached = self.__dict__.get("_box")
        if cached is not None and cached[0] is self.landmarks:
            return cached[1]
        xy = self.landmarks[:, :2]
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        box = float(x0), float(y0), float(x1), float(y1)
        self.__dict__["_box"] = (self.landmarks, box)
        return box

    @property
    def size(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, y1 - y0)

    def head_pose(self) -> dict[str, float] | None:
        """Yaw, pitch and roll in degrees from the transformation matrix (None if unavailable)."""
        if self.transform is None:
            return None
        return rotation_to_euler(self.transform[:3, :3])


def rotation_to_euler(r: np.ndarray) -> dict[str, float]:
    """Decompose R = Ry(yaw) @ Rx(pitch) @ Rz(roll), MediaPipe's camera frame (y up, z towards viewer)."""
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, -float(r[1, 2])))))
    yaw = math.degrees(math.atan2(float(r[0, 2]), float(r[2, 2])))
    roll = math.degrees(math.atan2(float(r[1, 0]), float(r[1, 1])))
    return {"yaw": yaw, "pitch": pitch, "roll": roll}


class FaceAnalyzer:
    """MediaPipe FaceLandmarker over RGB uint8 frames.

    ``mode`` is ``"image"`` (each call independent) or ``"video"`` (tracking; pass increasing
    timestamps to :meth:`detect`).
    """

    def __init__(
        self,
        max_faces: int = 8,
        mode: str = "image",
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        model_folder=None,
        full_range: bool = True,
        full_range_threshold: float = 0.5,
        threads: int = 0,
    ):
        from mediapipe.tasks.python import vision

        def make(running_mode, num_faces):
            from mediapipe.tasks.python import BaseOptions

            options = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(path)),
                running_mode=running_mode,
                num_faces=num_faces,
                min_face_detection_confidence=min_detection_confidence,
                min_face_presence_confidence=min_presence_confidence,
                min_tracking_confidence=min_tracking_confidence,
                output_face_blendshapes=True,
                output_facial_transformation_matrixes=True,
            )
            try:
                return vision.FaceLandmarker.create_from_options(options)
            except Exception as exc:
                raise ModelError(f"MediaPipe could not load {path}: {exc}") from exc

        path = verified_path(LANDMARKER_MODEL, model_folder)
        running_mode = {"image": vision.RunningMode.IMAGE, "video": vision.RunningMode.VIDEO}[mode]
        self._landmarker = make(running_mode, max_faces)
        self._read = reader(self._landmarker)
        self._detector = self._roi_landmarker = None
        if full_range:
            from .detect import FullRangeDetector

            self._detector = FullRangeDetector(full_range_threshold, model_folder, threads)
            self._roi_landmarker = make(vision.RunningMode.IMAGE, 1)
            self._roi_read = reader(self._roi_landmarker)
        self.mode = mode
        self.max_faces = max_faces
        self._last_ts = -1
        self._pool = self._expected = None
        self._roi_slots: list[_RoiSlot] = []
        self._frame = 0
        if full_range and mode == "video":
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="full-range")
            self._expected = None  # face boxes the landmarker found on the previous frame
            self._new_roi_slot = lambda: _RoiSlot(make(vision.RunningMode.VIDEO, 1))
            self._roi_slots.append(self._new_roi_slot())  # made now, not while frames wait

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for lm in (self._landmarker, self._roi_landmarker, *(slot.landmarker for slot in self._roi_slots)):
            if lm is not None:
                lm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def detect(self, rgb: np.ndarray, timestamp_ms: int | None = None) -> list[Face]:
        """Faces with landmarks (see :meth:`detect_all` for faces found without them)."""
        return self.detect_all(rgb, timestamp_ms)[0]

    def detect_all(self, rgb: np.ndarray, timestamp_ms: int | None = None) -> tuple[list[Face], list[np.ndarray]]:
        """(faces with landmarks, boxes of faces the full-range detector found but no mesh fitted).

        The unmeshed boxes are still faces: the caller must mask them.
        """
        import mediapipe as mp

        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError("FaceAnalyzer.detect expects an RGB uint8 image of shape (H, W, 3)")
        rgb = np.ascontiguousarray(rgb)
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
        self._frame += 1
        ts = None
        if self.mode == "video":
            ts = int(timestamp_ms) if timestamp_ms is not None else self._last_ts + 1
            ts = max(ts, self._last_ts + 1)  # MediaPipe rejects non-increasing timestamps
            self._last_ts = ts
        speculative = None
        if self._pool is not None and self._expected is not None:
            # Streams: the full-range detector, and the mesh of each face the landmarker missed on
            # the previous frame, run on their own thread while the landmarker works (MediaPipe
            # releases the GIL). The outcome is what running them afterwards would give: a box the
            # landmarker covers after all is skipped, and one it newly missed is meshed below.
            speculative = self._pool.submit(self._detections, rgb, self._expected, ts)
        try:
            raw = self._read(image) if ts is None else self._read(image, ts)
        finally:
            # Also on error, so the ROI landmarker never serves two frames at once.
            detections = speculative.result() if speculative is not None else None
        faces = _faces_from_raw(raw, rgb.shape[1], rgb.shape[0])
        if self._detector is None:
            return faces, []
        if speculative is None:
            detections = self._detections(rgb, [f.box for f in faces], ts)
        if self._pool is not None:
            self._expected = [f.box for f in faces]
        unmeshed = []
        for box, meshed in detections:
            if len(faces) >= self.max_faces:
                break
            if _covered(box, [f.box for f in faces]):
                continue
            if meshed is _NOT_TRIED:  # the landmarker lost a face it had on the previous frame
                meshed = self._mesh_in_roi(rgb, box, ts)
            if meshed is None:
                unmeshed.append(np.asarray(box, np.float32))
            else:
                faces.append(meshed)
        return faces, unmeshed

    def _detections(self, rgb: np.ndarray, expected: list, ts: int | None) -> list:
        """Full-range detector boxes, best first, each with its ROI mesh (a Face, or None if none
        fitted), or with ``_NOT_TRIED`` where its centre lies in one of the ``expected`` boxes."""
        return [(box, _NOT_TRIED if _covered(box, expected) else self._mesh_in_roi(rgb, box, ts))
                for box, _score in self._detector.detect(rgb)]

    def _roi_slot(self, box) -> _RoiSlot | None:
        """The slot that had this face on the last frame; else one idle since before it; else a new
        one (up to ROI_SLOTS). None: use the IMAGE-mode landmarker."""
        free = [slot for slot in self._roi_slots if slot.frame != self._frame]
        if not free and len(self._roi_slots) >= ROI_SLOTS:
            return None
        tracked = [(iou(slot.box, box), slot) for slot in free if slot.box is not None and slot.frame == self._frame - 1]
        score, slot = max(tracked, key=lambda pair: pair[0], default=(0.0, None))
        if score < 0.3:
            idle = [s for s in free if s.frame < self._frame - 1]
            if idle:
                slot = min(idle, key=lambda s: s.frame)
            elif len(self._roi_slots) < ROI_SLOTS:
                slot = self._new_roi_slot()
                self._roi_slots.append(slot)
            else:
                slot = free[0]
        slot.box, slot.frame = box, self._frame
        return slot

    def _mesh_in_roi(self, rgb: np.ndarray, box, ts: int | None = None) -> Face | None:
        """Fit the mesh on a crop around a detector box, magnified so the short-range model sees it."""
        import mediapipe as mp

        side = max(box[2] - box[0], box[3] - box[1]) * ROI_MARGIN
        if side < 4:
            return None
        s = ROI_SIZE / side
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        m = np.array([[s, 0, ROI_SIZE / 2 - s * cx], [0, s, ROI_SIZE / 2 - s * cy]], np.float32)
        crop = cv2.warpAffine(rgb, m, (ROI_SIZE, ROI_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=crop)
        slot = self._roi_slot(box) if ts is not None else None
        found = _faces_from_raw(slot.read(image, ts) if slot else self._roi_read(image), ROI_SIZE, ROI_SIZE)
        if not found:
            return None
        face = found[0]
        face.landmarks = (face.landmarks - (m[0, 2], m[1, 2], 0.0)) / s  # back to frame pixels
        return face


_NOT_TRIED = object()


def _covered(box, face_boxes) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in face_boxes)


class _RoiSlot:
    """A VIDEO-mode landmarker for one face the main landmarker misses. Its crop is centred on the
    face's detector box every frame, so the face stays put in it and MediaPipe tracks the mesh
    instead of running its own detector again: 15.6 instead of 18.7 ms a face at 720p."""

    def __init__(self, landmarker):
        self.landmarker = landmarker
        self.read = reader(landmarker)
        self.box = None
        self.frame = 0  # the frame it last served


ROI_SIZE = 256
# Each slot is a MediaPipe graph of its own, ~24 MB resident; faces missed beyond these few share the
# IMAGE-mode landmarker, which costs 3 ms more a face but no memory.
ROI_SLOTS = 3
ROI_MARGIN = 2.2  # the face fills under half the crop, as the short-range detector expects


def reader(landmarker, arrays: bool = True):
    """``read(image, timestamp_ms=None) -> RawFaces`` for a FaceLandmarker: the array reader where
    this MediaPipe allows it (see agent.mp_results), else the public API."""
    fast = array_reader(landmarker) if arrays else None
    if fast is not None:
        return fast.detect

    def public(image, timestamp_ms=None):
        return from_public(landmarker.detect(image) if timestamp_ms is None
                           else landmarker.detect_for_video(image, timestamp_ms))
    return public


def _faces_from_raw(raw: RawFaces, w: int, h: int) -> list[Face]:
    faces = []
    scale = np.array([w, h, w], np.float32)  # z shares x's scale
    for i, lms in enumerate(raw.landmarks):
        blend = raw.blendshapes[i] if i < len(raw.blendshapes) and raw.blendshapes[i] else None
        transform = raw.transforms[i] if i < len(raw.transforms) else None
        faces.append(Face(landmarks=lms * scale, blendshapes=blend, transform=transform))
    return faces
