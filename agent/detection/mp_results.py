"""MediaPipe FaceLandmarker results as arrays, without a Python object per landmark.

MediaPipe >= 1.0 hands results over as C structs (ctypes), and its Python wrapper turns every one
of the 478 landmarks of every face into a dataclass, and every blendshape into another. At 720p
with four faces that costs ~9 ms of CPU per frame, all of it holding the GIL that the generator's
and detector's threads need (`anoncam bench`, cProfile). :class:`ArrayReader` makes the same C
call and copies the landmark block straight into a numpy array.

It relies on the wrapper's private names (``_lib``, ``_handle``, ``MpFaceLandmarkerResultC``). Where
they are missing (older, pybind-based MediaPipe) :func:`array_reader` returns None and the caller
uses the public API; tests/test_stills.py checks both give the same faces.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np


@dataclass
class RawFaces:
    """One landmarker call's faces: normalized (N, 3) landmarks, blendshape scores, 4x4 matrices."""

    landmarks: list[np.ndarray]
    blendshapes: list[dict[str, float]]
    transforms: list[np.ndarray]


def from_public(result) -> RawFaces:
    """The same from the public ``FaceLandmarkerResult``."""
    return RawFaces(
        [np.array([(p.x, p.y, p.z) for p in lms], np.float32) for lms in result.face_landmarks],
        [{c.category_name: float(c.score) for c in cats} for cats in (result.face_blendshapes or [])],
        [np.asarray(m, np.float32).reshape(4, 4) for m in (result.facial_transformation_matrixes or [])],
    )


class ArrayReader:
    def __init__(self, landmarker, result_type, landmark_type):
        self._lib = landmarker._lib
        self._handle = landmarker._handle
        self._result_type = result_type
        # x, y, z of each C landmark struct, read in place; the struct also holds a name pointer,
        # which numpy cannot describe, so the layout is given by ctypes' own field offsets.
        self._dtype = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3,
                                "offsets": [getattr(landmark_type, k).offset for k in "xyz"],
                                "itemsize": ctypes.sizeof(landmark_type)})

    def detect(self, image, timestamp_ms: int | None = None) -> RawFaces:
        result = self._result_type()
        if timestamp_ms is None:
            self._lib.MpFaceLandmarkerDetectImage(self._handle, image._image_ptr, None, ctypes.byref(result))
        else:
            self._lib.MpFaceLandmarkerDetectForVideo(self._handle, image._image_ptr, None, timestamp_ms,
                                                     ctypes.byref(result))
        try:
            return self._read(result)
        finally:
            self._lib.MpFaceLandmarkerCloseResult(ctypes.byref(result))


    def _read(self, c) -> RawFaces:
        landmarks = []
        for i in range(c.face_landmarks_count):
            block = c.face_landmarks[i]
            raw = ctypes.string_at(block.landmarks, block.landmarks_count * self._dtype.itemsize)  # a copy
            rows = np.frombuffer(raw, self._dtype)
            landmarks.append(np.stack([rows["x"], rows["y"], rows["z"]], axis=1))
        blendshapes = []
        for i in range(c.face_blendshapes_count):
            cats = c.face_blendshapes[i]
            blendshapes.append({cat.category_name.decode(): float(cat.score)
                                for cat in cats.categories[:cats.categories_count]})
        transforms = [np.array(c.facial_transformation_matrixes[i].to_numpy(), np.float32).reshape(4, 4)
                      for i in range(c.facial_transformation_matrixes_count)]
        return RawFaces(landmarks, blendshapes, transforms)


def array_reader(landmarker) -> ArrayReader | None:
    """An :class:`ArrayReader` for ``landmarker``, or None where this MediaPipe lacks the C API."""
    try:
        from mediapipe.tasks.python.components.containers import landmark_c
        from mediapipe.tasks.python.vision import face_landmarker as module

        result_type, landmark_type = module.MpFaceLandmarkerResultC, landmark_c.MpNormalizedLandmarkC
        for name in ("MpFaceLandmarkerDetectImage", "MpFaceLandmarkerDetectForVideo", "MpFaceLandmarkerCloseResult"):
            getattr(landmarker._lib, name)
        landmarker._handle  # noqa: B018 -- only checks that it exists
        return ArrayReader(landmarker, result_type, landmark_type)
    except (ImportError, AttributeError):
        return None
