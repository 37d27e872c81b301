"""Face analysis: every face in a frame (agent.detection.detector), with 478 landmarks, 52 blendshapes and head pose.

Wraps MediaPipe's FaceLandmarker (Tasks API) with the bundle vendored in ``models/``. IMAGE mode
serves stills; VIDEO mode (monotonic timestamps, tracking between frames) serves streams.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from agent.detection.detector import FaceDetector
from agent.detection.mp_results import RawFaces, array_reader, from_public
from agent.errors import ModelError
from agent.runtime.model_files import verified_path
from agent.types import Analysis, Detection, Face, iou

LANDMARKER_MODEL = "face_landmarker.task"
NUM_LANDMARKS = 478


class FaceAnalyzer:
    """Faces in RGB uint8 frames: the face detector on every frame, and MediaPipe's mesh on each face.

    ``mode`` is ``"image"`` (each call independent) or ``"video"`` (tracking; pass increasing
    timestamps to :meth:`detect_all`). In stills every detector box is meshed on a crop of its own.
    In streams MediaPipe's landmarker also runs over the whole frame and tracks the faces it has;
    the detector runs beside it on another thread, and each box the landmarker does not cover is
    meshed on its crop. Up to ``max_faces`` faces are meshed (largest first); the rest, and every
    face smaller than ``min_mesh_size`` px or whose mesh fails, stay detections only: the guard
    covers them. ``detector=None`` runs the landmarker alone (for aligned face crops in tools).
    """

    def __init__(self, max_faces: int = 8, mode: str = "image", min_detection_confidence: float = 0.5,
                 min_presence_confidence: float = 0.5, min_tracking_confidence: float = 0.5,
                 model_folder=None, detector: FaceDetector | None = None, min_mesh_size: float = 64.0,
                 file: str = LANDMARKER_MODEL):
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

        path = verified_path(file, model_folder)
        self.mode = mode
        self.max_faces = max_faces
        self.min_mesh_size = min_mesh_size
        self._detector = detector
        self._landmarker = None
        if mode == "video" or detector is None:
            running_mode = {"image": vision.RunningMode.IMAGE, "video": vision.RunningMode.VIDEO}[mode]
            self._landmarker = make(running_mode, max_faces)
            self._read = reader(self._landmarker)
        self._roi_landmarker = self._roi_read = None
        self._make_roi_landmarker = lambda: make(vision.RunningMode.IMAGE, 1)
        if detector is not None and mode == "image":
            self._roi_landmarker = self._make_roi_landmarker()
            self._roi_read = reader(self._roi_landmarker)
        self._last_ts = -1
        self._pool = None
        self._roi_slots: list[_RoiSlot] = []
        self._frame = 0
        if detector is not None and mode == "video":
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="face-detector")
            self._new_roi_slot = lambda: _RoiSlot(make(vision.RunningMode.VIDEO, 1))
            self._roi_slots.append(self._new_roi_slot())  # made now, not while frames wait

    def restart(self) -> None:
        """The next frame is a stream's first: the detector runs every pass on it."""
        if self._detector is not None:
            self._detector.restart()

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
        """Faces with landmarks (see :meth:`detect_all` for everything found)."""
        return self.detect_all(rgb, timestamp_ms).faces

    def detect_all(self, rgb: np.ndarray, timestamp_ms: int | None = None) -> Analysis:
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError("FaceAnalyzer.detect expects an RGB uint8 image of shape (H, W, 3)")
        rgb = np.ascontiguousarray(rgb)
        self._frame += 1
        ts = None
        if self.mode == "video":
            ts = int(timestamp_ms) if timestamp_ms is not None else self._last_ts + 1
            ts = max(ts, self._last_ts + 1)  # MediaPipe rejects non-increasing timestamps
            self._last_ts = ts
        if self._landmarker is None:  # stills with the detector: every face meshed on its own crop
            detections = self._detector.detect(rgb)
            return Analysis(self._mesh_detections(rgb, [], detections, None), detections, rgb.shape)
        faces, detections = self._landmark_frame(rgb, ts)
        if self._detector is None:
            return Analysis(faces, [], rgb.shape)
        return Analysis(self._mesh_detections(rgb, faces, detections, ts), detections, rgb.shape)

    def _landmark_frame(self, rgb: np.ndarray, ts: int | None) -> tuple[list[Face], list[Detection] | None]:
        """The whole-frame landmarker's faces, and (in streams) the detector's boxes, found side by side."""
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
        # MediaPipe releases the GIL: the detector runs on its own thread while the landmarker works.
        pending = self._pool.submit(self._detector.detect, rgb) if self._pool is not None else None
        try:
            raw = self._read(image) if ts is None else self._read(image, ts)
        finally:
            # Also on error, so the detector never serves two frames at once.
            detections = pending.result() if pending is not None else None
        faces = _faces_from_raw(raw, rgb.shape[1], rgb.shape[0])
        if self._detector is not None and detections is None:
            detections = self._detector.detect(rgb)
        return faces, detections

    def _mesh_detections(self, rgb, faces: list[Face], detections: list[Detection], ts) -> list[Face]:
        """``faces`` plus a mesh for each detector box (largest first) that none of them covers,
        up to ``max_faces`` in all. Boxes left without a mesh are the guard's to cover."""
        faces = list(faces)
        for det in detections:  # largest first
            if len(faces) >= self.max_faces:
                break
            if det.size < self.min_mesh_size or any(_agrees(f, det) for f in faces):
                continue
            meshed = self._mesh_in_roi(rgb, det, ts)
            if meshed is not None and _agrees(meshed, det):
                faces.append(meshed)
        return faces

    def _image_roi_read(self):
        """The IMAGE-mode crop landmarker. Streams make it only on a frame with more unmeshed boxes
        than ROI slots (rare: ~30 MB of RSS the rest of the time); stills always need it."""
        if self._roi_read is None:
            self._roi_landmarker = self._make_roi_landmarker()
            self._roi_read = reader(self._roi_landmarker)
        return self._roi_read

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

    def _mesh_in_roi(self, rgb: np.ndarray, det: Detection, ts: int | None = None) -> Face | None:
        """Fit the mesh on a crop around a detector box, magnified so the short-range model sees it,
        and turned so the face stands upright in it."""
        import mediapipe as mp

        box = det.box
        side = max(box[2] - box[0], box[3] - box[1]) * ROI_MARGIN
        if side < 4:
            return None
        s = ROI_SIZE / side
        rot = _upright_rotation(det.up)
        upright = rot[0, 0] == 1  # the crop is not turned
        m = np.zeros((2, 3), np.float64)
        m[:, :2] = s * rot
        m[:, 2] = ROI_SIZE / 2 - m[:, :2] @ det.centre.astype(np.float64)
        crop = cv2.warpAffine(rgb, m.astype(np.float32), (ROI_SIZE, ROI_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=crop)
        slot = self._roi_slot(box) if ts is not None and upright else None
        found = _faces_from_raw(slot.read(image, ts) if slot else self._image_roi_read()(image), ROI_SIZE, ROI_SIZE)
        if not found:
            return None
        face = found[0]
        lm = face.landmarks.astype(np.float64)
        xy = (lm[:, :2] - m[:, 2]) @ rot / s  # back to frame pixels (rot is orthonormal)
        face.landmarks = np.concatenate([xy, lm[:, 2:] / s], 1).astype(np.float32)
        if face.transform is not None and not upright:
            face.transform = _turn_transform(face.transform, rot)
        return face


_AXES = np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def _upright_rotation(up: np.ndarray) -> np.ndarray:
    """The 2x2 rotation (frame -> crop) that turns the face's up direction, to the nearest quarter
    turn, into the crop's up (0, -1). MediaPipe's mesh copes with the rest of a tilt."""
    ux, uy = _AXES[int(np.argmax(_AXES @ np.asarray(up, np.float64)))]
    return np.array([[-uy, ux], [-ux, -uy]], np.float64)


def _turn_transform(transform: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """A facial transformation matrix fitted in a turned crop, in the frame's camera axes (y up)."""
    flip = np.diag([1.0, -1.0])
    turn = np.eye(4)
    turn[:2, :2] = flip @ rot.T @ flip  # crop -> frame, in camera axes
    return (turn @ transform.astype(np.float64)).astype(np.float32)


def _agrees(face: Face, det: Detection) -> bool:
    """A mesh belongs to a detector box: the box's centre lies in the mesh's box, at a similar size."""
    x0, y0, x1, y1 = face.box
    cx, cy = det.centre
    return x0 <= cx <= x1 and y0 <= cy <= y1 and 0.5 <= face.size / max(det.size, 1.0) <= 2.5


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
    this MediaPipe allows it (see agent.detection.mp_results), else the public API."""
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
