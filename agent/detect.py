"""BlazeFace full-range detector: finds faces too small or far for the landmarker's own detector.

The landmarker bundle's detector is short-range (faces within ~2 m, filling a good part of the
frame). In a room camera, people further away would go unseen and unanonymized. This detector
(192x192 input, 48x48 anchor grid) runs on the whole frame; every face it finds that the landmarker
missed gets a landmark pass on its own crop, and if even that fails the box is masked.
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import ModelError
from .models import verified_path

DETECTOR_MODEL = "face_detection_full_range_sparse.tflite"
INPUT = 192
GRID = 48


class FullRangeDetector:
    def __init__(self, score_threshold: float = 0.5, model_folder=None, threads: int = 0):
        import openvino as ov

        path = verified_path(DETECTOR_MODEL, model_folder)
        try:
            # Unpinned: it runs while the generator does, on the other core (see agent.backends).
            config = {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            self._model = ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU", config)
        except Exception as exc:
            raise ModelError(f"OpenVINO could not load {path}: {exc}") from exc
        self._request = self._model.create_infer_request()
        self.threshold = score_threshold
        g = (np.arange(GRID, dtype=np.float32) + 0.5) / GRID
        ax, ay = np.meshgrid(g, g)
        self._anchors = np.stack([ax.ravel(), ay.ravel()], 1)

    def detect(self, rgb: np.ndarray, nms_iou: float = 0.3) -> list[tuple[np.ndarray, float]]:
        """Face boxes [x0, y0, x1, y1] in frame pixels with their scores, best first."""
        h, w = rgb.shape[:2]
        side = max(h, w)
        # Letterbox to a square so the detector sees undistorted faces.
        scale = INPUT / side
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        while max(rgb.shape[:2]) >= 2 * INPUT:
            # OpenCV's area resize has a fast path for halving only: 720p -> 192 px directly takes
            # 4.5 ms, by halvings and one small last step 0.8 ms.
            rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        canvas = np.zeros((INPUT, INPUT, 3), np.float32)
        canvas[:resized.shape[0], :resized.shape[1]] = resized / 127.5 - 1.0
        self._request.infer([canvas[None]])
        raw = self._request.get_output_tensor(0).data[0]
        logits = self._request.get_output_tensor(1).data[0, :, 0]
        scores = 1 / (1 + np.exp(-np.clip(logits, -80, 80)))
        keep = np.nonzero(scores >= self.threshold)[0]
        if keep.size == 0:
            return []
        c = raw[keep, :2] / INPUT + self._anchors[keep]
        wh = raw[keep, 2:4] / INPUT
        boxes = np.concatenate([c - wh / 2, c + wh / 2], 1) * side  # back to frame pixels
        return _nms(boxes, scores[keep], nms_iou)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms(boxes, scores, thr):
    order = np.argsort(-scores)
    out = []
    for i in order:
        if all(iou(boxes[i], b) < thr for b, _ in out):
            out.append((boxes[i], float(scores[i])))
    return out
