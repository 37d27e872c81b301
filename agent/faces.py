"""Face analysis: every face in a frame, with its 478 landmarks, 52 blendshapes and head pose.

Wraps MediaPipe's FaceLandmarker (Tasks API) with the bundle vendored in ``models/``. IMAGE mode
serves stills; VIDEO mode (monotonic timestamps, tracking between frames) serves streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import ModelError
from .models import verified_path

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
        xy = self.landmarks[:, :2]
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

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
        self._detector = self._roi_landmarker = None
        if full_range:
            from .detect import FullRangeDetector

            self._detector = FullRangeDetector(full_range_threshold, model_folder, threads)
            self._roi_landmarker = make(vision.RunningMode.IMAGE, 1)
        self.mode = mode
        self.max_faces = max_faces
        self._last_ts = -1

    def close(self):
        for lm in (self._landmarker, self._roi_landmarker):
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
        if self.mode == "video":
            ts = int(timestamp_ms) if timestamp_ms is not None else self._last_ts + 1
            ts = max(ts, self._last_ts + 1)  # MediaPipe rejects non-increasing timestamps
            self._last_ts = ts
            result = self._landmarker.detect_for_video(image, ts)
        else:
            result = self._landmarker.detect(image)
        faces = _faces_from_result(result, rgb.shape[1], rgb.shape[0])
        unmeshed = []
        if self._detector is not None and len(faces) < self.max_faces:
            for box, _score in self._detector.detect(rgb):
                if len(faces) >= self.max_faces:
                    break
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                if any(f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3] for f in faces):
                    continue
                face = self._mesh_in_roi(rgb, box)
                if face is None:
                    unmeshed.append(np.asarray(box, np.float32))
                else:
                    faces.append(face)
        return faces, unmeshed

    def _mesh_in_roi(self, rgb: np.ndarray, box) -> Face | None:
        """Fit the mesh on a crop around a detector box, magnified so the short-range model sees it."""
        import mediapipe as mp

        side = max(box[2] - box[0], box[3] - box[1]) * ROI_MARGIN
        if side < 4:
            return None
        s = ROI_SIZE / side
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        m = np.array([[s, 0, ROI_SIZE / 2 - s * cx], [0, s, ROI_SIZE / 2 - s * cy]], np.float32)
        crop = cv2.warpAffine(rgb, m, (ROI_SIZE, ROI_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        result = self._roi_landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop))
        found = _faces_from_result(result, ROI_SIZE, ROI_SIZE)
        if not found:
            return None
        face = found[0]
        face.landmarks[:, 0] = (face.landmarks[:, 0] - m[0, 2]) / s
        face.landmarks[:, 1] = (face.landmarks[:, 1] - m[1, 2]) / s
        face.landmarks[:, 2] /= s
        return face


ROI_SIZE = 256
ROI_MARGIN = 2.2  # the face fills under half the crop, as the short-range detector expects


def _faces_from_result(result, w: int, h: int) -> list[Face]:
    faces = []
    for i, lms in enumerate(result.face_landmarks):
        pts = np.array([(p.x * w, p.y * h, p.z * w) for p in lms], dtype=np.float32)  # z shares x's scale
        blend = None
        if result.face_blendshapes and i < len(result.face_blendshapes):
            cats = result.face_blendshapes[i]
            if cats:
                blend = {c.category_name: float(c.score) for c in cats}
        transform = None
        if result.facial_transformation_matrixes and i < len(result.facial_transformation_matrixes):
            transform = np.asarray(result.facial_transformation_matrixes[i], dtype=np.float32).reshape(4, 4)
        faces.append(Face(landmarks=pts, blendshapes=blend, transform=transform))
    return faces

