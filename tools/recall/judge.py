"""What a dlib face recognizer makes of each annotated face >= 40 px tall.

Found: dlib's own HOG face detector, run (upsample 0) on the output around the face (the GT box grown
to 2x its size, clipped to the image, resized so the face is 100 px tall: HOG needs about 80), returns
a box with IoU >= 0.3 with the GT box (the best one is taken). Matched: found, and the ResNet
descriptor (68-point landmarks) at that detected box lies within 0.6 of the original face's, taken at
the GT box of the original.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np

DLIB_THRESHOLD = 0.6  # dlib's published same-person threshold for this ResNet
DLIB_MIN_HEIGHT = 40
DLIB_FACE_PX = 100  # the GT face's height in the crop the detector sees: HOG's window is 80x80
DLIB_CROP_GROWTH = 2.0  # the crop around a face: its GT box grown to this many times its size
DLIB_MIN_IOU = 0.3  # a detection counts as that face when its box overlaps the GT box this much


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes, x1 and y1 exclusive."""
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def face_crop(face: dict, shape) -> tuple[int, int, int, int]:
    """The face's GT box grown about its centre to DLIB_CROP_GROWTH times its width and height, clipped."""
    h, w = shape[:2]
    cx, cy = face["x"] + face["w"] / 2, face["y"] + face["h"] / 2
    hw, hh = DLIB_CROP_GROWTH * face["w"] / 2, DLIB_CROP_GROWTH * face["h"] / 2
    return (max(int(np.floor(cx - hw)), 0), max(int(np.floor(cy - hh)), 0),
            min(int(np.ceil(cx + hw)), w), min(int(np.ceil(cy + hh)), h))


class DlibJudge:
    """What a dlib face recognizer makes of a face: whether its HOG detector finds it (``match``), and the
    ResNet descriptor (68-point landmarks) at a box: the GT box for the originals (``describe``), the
    detected one for an anonymized output."""

    def __init__(self):
        import dlib
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its pkg_resources import warns on every load
            import face_recognition_models as frm
        from importlib.metadata import version

        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(frm.pose_predictor_model_location())
        self.net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        self.version = f"dlib {dlib.__version__}, face_recognition_models {version('face_recognition_models')}"

    def describe(self, rgb: np.ndarray, face: dict) -> np.ndarray:
        rgb = np.ascontiguousarray(rgb)
        rect = self._dlib.rectangle(face["x"], face["y"], face["x"] + face["w"] - 1, face["y"] + face["h"] - 1)
        return np.array(self.net.compute_face_descriptor(rgb, self.shape(rgb, rect)), np.float32)

    def match(self, rgb: np.ndarray, face: dict, reference: np.ndarray) -> tuple[bool, float | None]:
        """(found, descriptor distance to ``reference`` or None when not found) for the face at ``face``'s GT box.

        The detector runs on a crop around the box, resized so the face is DLIB_FACE_PX tall; the detection
        whose box, in image pixels, best overlaps the GT box (IoU >= DLIB_MIN_IOU) is the face, and the
        descriptor is taken at that detection in the resized crop.
        """
        x0, y0, x1, y1 = face_crop(face, rgb.shape)
        scale = DLIB_FACE_PX / face["h"]
        size = (max(round((x1 - x0) * scale), 1), max(round((y1 - y0) * scale), 1))
        crop = np.ascontiguousarray(cv2.resize(rgb[y0:y1, x0:x1], size,
                                               interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR))
        sx, sy = (x1 - x0) / size[0], (y1 - y0) / size[1]  # crop pixels -> image pixels, exactly
        gt = (face["x"], face["y"], face["x"] + face["w"], face["y"] + face["h"])
        best, best_iou = None, DLIB_MIN_IOU
        for det in self.detector(crop, 0):
            box = (x0 + det.left() * sx, y0 + det.top() * sy, x0 + (det.right() + 1) * sx, y0 + (det.bottom() + 1) * sy)
            iou = box_iou(box, gt)
            if iou >= best_iou:
                best, best_iou = det, iou
        if best is None:
            return False, None
        descriptor = np.array(self.net.compute_face_descriptor(crop, self.shape(crop, best)), np.float32)
        return True, float(np.linalg.norm(descriptor - reference))
