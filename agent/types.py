"""The types the stages hand each other, from detection to the guard and the metadata.

A frame's way: the detector finds :class:`Detection` boxes; landmarking fits a :class:`Face` (478
landmarks, blendshapes, head pose) to those it can; both travel as one :class:`Analysis`; synthesis
makes a :class:`FaceJob` per face; the guard seals the frame from the analysis and the jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

# MediaPipe FaceLandmarker's blendshape categories, in its output order.
BLENDSHAPES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)



def blendshape_vector(blendshapes: dict[str, float]) -> np.ndarray:
    """(52,) blendshapes in BLENDSHAPES order."""
    return np.array([blendshapes.get(name, 0.0) for name in BLENDSHAPES], dtype=np.float64)


@dataclass
class Detection:
    """A face the detector found, in frame pixels.

    ``box`` is axis-aligned in the frame; ``up`` is the unit vector from chin to brow in frame
    coordinates, so a cover can grow the box towards the hair whatever way the head is turned.
    """

    box: np.ndarray  # (4,) x0, y0, x1, y1
    score: float
    landmarks: np.ndarray  # (5, 2): eyes, nose, mouth corners (as the face sees them)
    held: bool = False
    up: np.ndarray = field(default_factory=lambda: np.array([0.0, -1.0], np.float32))

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2], np.float32)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0



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


@dataclass
class Analysis:
    """Everything analysis found in one frame, handed to the guard whole.

    ``faces`` have a fitted mesh and go to synthesis. ``detections`` are every box the face
    detector reported (in streams, also those held since it lost them): the guard covers each one
    that no synthetic face covers. ``shape`` is the frame's, so an analysis cannot be applied to
    another frame.
    """

    faces: list[Face]
    detections: list[Detection]
    shape: tuple[int, ...]

    def scaled(self, factor: float, shape) -> Analysis:
        """The same analysis in a frame ``factor`` times the size (analysis may run downscaled)."""
        for f in self.faces:
            f.landmarks = f.landmarks * factor
        dets = [replace(d, box=d.box * factor, landmarks=d.landmarks * factor) for d in self.detections]
        return Analysis(self.faces, dets, tuple(shape))


@dataclass
class FaceJob:
    """One face on its way through synthesis: alignment, conditioning, then the generated crop."""

    face: Face
    matrix: np.ndarray  # 2x3, frame -> crop
    crop_landmarks: np.ndarray  # (478, 2) in crop pixels
    size: int  # S, the crop's side
    conditioning: np.ndarray | None = None  # (S, S, 3) uint8 RGB, drawn only for faces sent to the generator
    generated: np.ndarray | None = None  # (S, S, 3) uint8 RGB, None if synthesis failed
    error: str | None = None
    reused: bool = False  # generated is this track's crop from an earlier frame (see Synthesizer)
    generator: str | None = None  # the generator chosen for this face (EmotionRouter); None: the default one
    emotion: tuple | None = None  # (classifier, its probabilities for the real face) when the router read it
    drawn_emotion: np.ndarray | None = None  # (7,) the emotion scores the face is drawn with (smoothed per track)
    region: np.ndarray | None = None  # (S, S) float32 in crop space: what is replaced (head jobs); None: the face oval
