"""Known-box test scenes and an oracle for raw faces that owes nothing to the agent's own detectors.

Scenes: scikit-image's ``astronaut()`` (Eileen Collins, NASA, public domain) pasted at known places,
sizes and rotations on public-domain or synthetic backgrounds. Every scene records each face's box
(x0, y0, x1, y1 in frame pixels, end exclusive: brows to chin, ear to ear, not the hair) and the
rotation the face was given (degrees counter-clockwise, a multiple of 90, so boxes stay axis-aligned
and de-rotation is exact). All faces are the same person; flips and colour/brightness changes only
make them look different.

Oracle: :func:`raw_faces` lists the known boxes under which the person is still recognisable in an
output frame, by (a) the middle half of the box being nearly unchanged against the input, or (b)
dlib's face-recognition descriptor (face_recognition_models: 68-landmark shape predictor + ResNet
descriptor) still matching the input's face at that box. The agent uses MediaPipe and CenterFace;
dlib, fed the known boxes, never depends on the agent finding a face.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

# --- the source face -------------------------------------------------------------------------------

# In astronaut() (512x512): dlib's 68 landmarks put the jaw line at x 179..272, the brows' top at
# y 87 and the chin at y 178. The face box (end exclusive) is that span.
SRC_FACE = (179, 87, 273, 179)
# Head region pasted: hair, ears, chin and a little neck (checked by eye).
SRC_HEAD = (140, 10, 312, 218)
SRC_FACE_H = SRC_FACE[3] - SRC_FACE[1]  # 92

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Scene:
    name: str
    frame: np.ndarray = field(repr=False)  # RGB uint8, H x W x 3 (read-only)
    boxes: tuple[Box, ...]
    rotations: tuple[int, ...]  # per face, degrees counter-clockwise: 0, 90, 180 or 270

    @property
    def size(self) -> tuple[int, int]:
        return self.frame.shape[1], self.frame.shape[0]

    def with_frame(self, rgb: np.ndarray) -> "Scene":
        """The same faces over another rendition of the frame (e.g. the frame as a video file decodes it)."""
        assert rgb.shape == self.frame.shape, (rgb.shape, self.frame.shape)
        rgb = np.ascontiguousarray(rgb, np.uint8)
        rgb.setflags(write=False)
        return replace(self, frame=rgb)


@functools.lru_cache(maxsize=1)
def _head_patch() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut's head as float RGB and a feathered elliptical alpha, at source scale."""
    from skimage import data

    x0, y0, x1, y1 = SRC_HEAD
    rgb = data.astronaut()[y0:y1, x0:x1].astype(np.float32)
    h, w = rgb.shape[:2]
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (w // 2, h // 2), (int(w * 0.46), int(h * 0.47)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 4)
    # The face box itself is always fully opaque.
    fx0, fy0, fx1, fy1 = (SRC_FACE[0] - x0, SRC_FACE[1] - y0, SRC_FACE[2] - x0, SRC_FACE[3] - y0)
    alpha[fy0:fy1, fx0:fx1] = 1.0
    return rgb, alpha


def rot90_box(box: Box, width: int, height: int, k: int) -> tuple[Box, int, int]:
    """``box`` in a ``width`` x ``height`` image after ``np.rot90(img, k)``; also the new width and height."""
    x0, y0, x1, y1 = box
    for _ in range(k % 4):
        # np.rot90 (counter-clockwise): pixel (x, y) -> (y, width - 1 - x).
        x0, y0, x1, y1 = y0, width - x1, y1, width - x0
        width, height = height, width
    return (x0, y0, x1, y1), width, height


def paste_face(canvas: np.ndarray, face_h: int, x: int, y: int, rotation: int = 0, flip: bool = False,
               tint=(1.0, 1.0, 1.0), gain: float = 1.0) -> tuple[Box, tuple[int, int]]:
    """Paste the head with its face box ``face_h`` px tall (before rotation), the patch's top-left at (x, y).

    Returns the face box in canvas pixels and the patch's (width, height) as pasted."""
    rgb, alpha = _head_patch()
    s = face_h / SRC_FACE_H
    pw, ph = round(rgb.shape[1] * s), round(rgb.shape[0] * s)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    rgb = cv2.resize(rgb, (pw, ph), interpolation=interp)
    alpha = np.clip(cv2.resize(alpha, (pw, ph), interpolation=cv2.INTER_LINEAR), 0, 1)
    fx0, fy0, fx1, fy1 = (SRC_FACE[i] - SRC_HEAD[i % 2] for i in range(4))
    box = (round(fx0 * s), round(fy0 * s), round(fx1 * s), round(fy1 * s))
    if flip:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
        box = (pw - box[2], box[1], pw - box[0], box[3])
    rgb = np.clip(rgb * np.asarray(tint, np.float32) * gain, 0, 255)
    k = rotation // 90
    assert rotation % 90 == 0
    rgb, alpha = np.rot90(rgb, k), np.rot90(alpha, k)
    box, pw, ph = rot90_box(box, pw, ph, k)
    H, W = canvas.shape[:2]
    assert 0 <= x and 0 <= y and x + pw <= W and y + ph <= H, f"patch {pw}x{ph} at ({x}, {y}) leaves the {W}x{H} frame"
    region = canvas[y:y + ph, x:x + pw].astype(np.float32)
    a = alpha[..., None]
    canvas[y:y + ph, x:x + pw] = np.round(region * (1 - a) + rgb * a).astype(np.uint8)
    return (box[0] + x, box[1] + y, box[2] + x, box[3] + y), (pw, ph)


def patch_size(face_h: int, rotation: int = 0) -> tuple[int, int]:
    s = face_h / SRC_FACE_H
    w, h = round((SRC_HEAD[2] - SRC_HEAD[0]) * s), round((SRC_HEAD[3] - SRC_HEAD[1]) * s)
    return (h, w) if rotation % 180 else (w, h)


# --- backgrounds ------------------------------------------------------------------------------------

def gradient(width: int, height: int, top=(96, 120, 150), bottom=(205, 192, 170)) -> np.ndarray:
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    sweep = 0.08 * np.sin(np.linspace(0, 3 * np.pi, width, dtype=np.float32))[None, :, None]
    img = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return np.clip(img * (1 + sweep), 0, 255).astype(np.uint8)


def photo(name: str, width: int, height: int) -> np.ndarray:
    """A public-domain scikit-image photo (rocket, coffee, ...) resized to fill the frame."""
    from skimage import data

    img = getattr(data, name)()
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


# --- scenes -----------------------------------------------------------------------------------------

# Per-face looks: (flip, tint, gain), cycled.
LOOKS = [
    (False, (1.0, 1.0, 1.0), 1.0),
    (True, (1.06, 0.98, 0.92), 0.95),
    (False, (0.94, 1.0, 1.06), 1.05),
    (True, (1.0, 0.96, 1.02), 0.9),
    (False, (1.08, 1.0, 0.96), 1.08),
    (True, (0.96, 1.02, 1.0), 1.0),
]


def _finish(name, canvas, boxes, rotations) -> Scene:
    _assert_disjoint(boxes)
    canvas = np.ascontiguousarray(canvas)
    canvas.setflags(write=False)
    return Scene(name, canvas, tuple(boxes), tuple(rotations))


def _assert_disjoint(boxes):
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], f"faces overlap: {a} {b}"


def _place_centered(canvas, face_h, cx, cy, i, rotation=0):
    """Paste look ``i`` with its patch centred on (cx, cy)."""
    pw, ph = patch_size(face_h, rotation)
    flip, tint, gain = LOOKS[i % len(LOOKS)]
    box, _ = paste_face(canvas, face_h, int(round(cx - pw / 2)), int(round(cy - ph / 2)), rotation, flip, tint, gain)
    return box


@functools.lru_cache(maxsize=None)
def grid_720p() -> Scene:
    """1280x720, 12 upright faces 95 px tall in a 4x3 grid."""
    canvas = gradient(1280, 720)
    boxes = []
    for r in range(3):
        for c in range(4):
            i = 4 * r + c
            boxes.append(_place_centered(canvas, 95, 160 + 320 * c, 120 + 240 * r, i))
    return _finish("grid_720p", canvas, boxes, [0] * len(boxes))


LADDER = (40, 56, 72, 96, 128, 160)


@functools.lru_cache(maxsize=None)
def size_ladder() -> Scene:
    """1280x720 (rocket photo), upright faces 40, 56, 72, 96, 128 and 160 px tall in a row."""
    canvas = photo("rocket", 1280, 720)
    widths = [patch_size(h)[0] for h in LADDER]
    gap = (1280 - sum(widths)) / (len(LADDER) + 1)
    boxes, x = [], gap
    for i, (h, w) in enumerate(zip(LADDER, widths)):
        boxes.append(_place_centered(canvas, h, x + w / 2, 380, i))
        x += w + gap
    return _finish("size_ladder", canvas, boxes, [0] * len(boxes))


@functools.lru_cache(maxsize=None)
def crowd_20() -> Scene:
    """1280x720 (coffee photo), 20 upright faces 48-72 px tall, 5x4 cells with seeded jitter."""
    canvas = photo("coffee", 1280, 720)
    rng = np.random.default_rng(20)
    boxes = []
    for r in range(4):
        for c in range(5):
            i = 5 * r + c
            h = 48 + (i * 7) % 25  # 48..72
            pw, ph = patch_size(h)
            jx = rng.uniform(-1, 1) * (256 - pw) / 2 * 0.8
            jy = rng.uniform(-1, 1) * (180 - ph) / 2 * 0.8
            boxes.append(_place_centered(canvas, h, 128 + 256 * c + jx, 90 + 180 * r + jy, i))
    return _finish("crowd_20", canvas, boxes, [0] * len(boxes))


@functools.lru_cache(maxsize=None)
def upside_down() -> Scene:
    """1280x720, two faces 140 and 156 px tall, both rotated 180 degrees."""
    canvas = gradient(1280, 720, top=(150, 160, 170), bottom=(70, 80, 95))
    boxes = [_place_centered(canvas, 140, 380, 340, 0, 180), _place_centered(canvas, 156, 900, 380, 1, 180)]
    return _finish("upside_down", canvas, boxes, [180, 180])


@functools.lru_cache(maxsize=None)
def turned_90() -> Scene:
    """1280x720, a face 136 px tall turned 90 degrees counter-clockwise and one 152 px turned 270."""
    canvas = gradient(1280, 720, top=(180, 170, 150), bottom=(90, 110, 120))
    boxes = [_place_centered(canvas, 136, 380, 360, 2, 90), _place_centered(canvas, 152, 900, 360, 3, 270)]
    return _finish("turned_90", canvas, boxes, [90, 270])


def _turned_crowd(name: str, angle: int, small: int = 24, large: bool = True) -> Scene:
    """1280x720 (coffee photo), a face 110 px tall (unless not ``large``) and 24 faces ``small`` px tall in
    a 6x4 grid, all turned by ``angle``: a group photo stored sideways or upside down without an orientation
    tag. The small faces are too small to be found at the scale of the detector's turned passes, and the
    upright pass misses about half of them turned."""
    canvas = photo("coffee", 1280, 720)
    boxes = [_place_centered(canvas, 110, 150, 150, 0, angle)] if large else []
    for i in range(24):
        r, c = divmod(i, 6)
        boxes.append(_place_centered(canvas, small, 360 + 150 * c, 100 + 150 * r, i + 1, angle))
    return _finish(name, canvas, boxes, [angle] * len(boxes))


@functools.lru_cache(maxsize=None)
def upside_down_crowd() -> Scene:
    return _turned_crowd("upside_down_crowd", 180)


@functools.lru_cache(maxsize=None)
def sideways_crowd() -> Scene:
    return _turned_crowd("sideways_crowd", 90)


@functools.lru_cache(maxsize=None)
def upright_pair() -> Scene:
    """1280x720, two upright faces 140 and 156 px tall: the agent's easy case (a control), and the
    displayed image of the Orientation=3 EXIF test (stored upside down)."""
    canvas = gradient(1280, 720, top=(150, 160, 170), bottom=(70, 80, 95))
    boxes = [_place_centered(canvas, 140, 380, 340, 0), _place_centered(canvas, 156, 900, 380, 1)]
    return _finish("upright_pair", canvas, boxes, [0, 0])


@functools.lru_cache(maxsize=None)
def portrait_pair() -> Scene:
    """720x1280 (portrait), two upright faces 136 and 152 px tall: the displayed image of the
    Orientation=6/8 EXIF tests (stored sideways, so the stored faces are turned 90 / 270 degrees)."""
    canvas = gradient(720, 1280, top=(180, 170, 150), bottom=(90, 110, 120))
    boxes = [_place_centered(canvas, 136, 360, 380, 2), _place_centered(canvas, 152, 360, 900, 3)]
    return _finish("portrait_pair", canvas, boxes, [0, 0])


SCENES = {f.__name__: f for f in (grid_720p, size_ladder, crowd_20, upside_down, turned_90, upside_down_crowd,
                                  sideways_crowd, upright_pair, portrait_pair)}


def scene(name: str) -> Scene:
    return SCENES[name]()


# --- EXIF orientation -------------------------------------------------------------------------------

# EXIF Orientation tag -> k for np.rot90 that turns the *displayed* image into the *stored* pixels.
# 3: stored upside down; 6: display = stored turned 90 clockwise; 8: display = stored turned 90 counter-clockwise.
EXIF_STORE_K = {1: 0, 3: 2, 6: 1, 8: 3}


def stored_for_exif(displayed_rgb: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera would store for ``displayed_rgb`` with EXIF ``orientation``."""
    return np.ascontiguousarray(np.rot90(displayed_rgb, EXIF_STORE_K[orientation]))


def write_exif_jpeg(path, displayed_rgb: np.ndarray, orientation: int, quality: int = 95):
    """A JPEG whose stored pixels are rotated and whose EXIF Orientation tag turns them back upright."""
    from PIL import Image

    img = Image.fromarray(stored_for_exif(displayed_rgb, orientation))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=quality, exif=exif)


def read_displayed(path) -> np.ndarray:
    """An image file as a viewer shows it: EXIF orientation applied, RGB uint8."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


# --- the oracle -------------------------------------------------------------------------------------

# Calibration on the five leak scenes (42 faces), measured when this was written:
# - centre diff (middle half of the box, mean |output - input| over RGB, 0-255): untouched 0 in a PNG,
#   at most 5.1 / 4.2 / 2.9 after JPEG q75 / q85 / q95; box grown 1.3x filled grey >= 38; today's
#   synthetic faces 24-39; a light blur (sigma = face height / 40) only 7.9-11.4, so the diff alone
#   misses it, and
# - dlib distance to the input's face: the same face under the scenes' flips and tints 0.0-0.32; light
#   blur <= 0.43 (caught); grey fill 0.74-0.82; strong blur (sigma = height / 8) 0.71-0.83; today's
#   synthetic faces 0.62-0.78 (the largest faces closest: thin margin, worth watching).
RAW_DIFF = 8.0
# dlib's own threshold for "same person" with this model.
MATCH_DISTANCE = 0.6


@dataclass(frozen=True)
class FaceCheck:
    index: int
    box: Box
    rotation: int
    diff: float  # mean abs difference of the box's middle half against the input
    distance: float | None  # dlib descriptor distance to the input's face; None where diff alone decided
    # Where dlib matched a changed face: does dlib's own HOG detector also find a face there? Diagnostic
    # only, it does not change ``raw``: "finds" = a whole face is there (the person, lightly altered, or
    # a synthetic face too close to them); "does not find" = a match on a partly covered face.
    found: bool | None = None

    @property
    def unchanged(self) -> bool:
        return self.diff < RAW_DIFF

    @property
    def matches(self) -> bool:
        return self.distance is not None and self.distance < MATCH_DISTANCE

    @property
    def raw(self) -> bool:
        return self.unchanged or self.matches

    def __str__(self) -> str:
        h = min(self.box[2] - self.box[0], self.box[3] - self.box[1])
        dist = "not computed" if self.distance is None else f"{self.distance:.3f}"
        why = "unchanged" if self.unchanged else "same person" if self.matches else "ok"
        if self.found is not None:
            why += f" (dlib's detector {'finds' if self.found else 'does not find'} a face there)"
        return (f"face {self.index} box {self.box} ({h} px, rotated {self.rotation}): "
                f"centre diff {self.diff:.1f}, dlib distance {dist} -> {why}")


@functools.lru_cache(maxsize=1)
def _dlib_models():
    import warnings

    import dlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
        import face_recognition_models as frm

    return (dlib.shape_predictor(frm.pose_predictor_model_location()),
            dlib.face_recognition_model_v1(frm.face_recognition_model_location()))


def upright_crop(rgb: np.ndarray, box: Box, rotation: int, margin: float = 0.6) -> tuple[np.ndarray, Box]:
    """The box with ``margin`` of its size around it, de-rotated so the face is upright; the box in the crop."""
    H, W = rgb.shape[:2]
    x0, y0, x1, y1 = box
    m = int(round(margin * max(x1 - x0, y1 - y0)))
    cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(W, x1 + m), min(H, y1 + m)
    crop = rgb[cy0:cy1, cx0:cx1]
    k = (-rotation // 90) % 4
    b, _, _ = rot90_box((x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0), cx1 - cx0, cy1 - cy0, k)
    return np.ascontiguousarray(np.rot90(crop, k)), b


def descriptor(rgb: np.ndarray, box: Box, rotation: int) -> np.ndarray:
    """dlib's 128-d face descriptor of the face at the known ``box``, de-rotated upright.

    dlib's landmarks are fitted inside a rectangle like its HOG detector's, which sits ~12 % of the
    face height higher than our brows-to-chin box (measured on the source face); small faces are
    upscaled to 100 px so the 68-point fit is stable."""
    import dlib

    sp, fr = _dlib_models()
    crop, (x0, y0, x1, y1) = upright_crop(rgb, box, rotation)
    # Same pixels, same descriptor: a stream of identical frames costs one dlib pass per face.
    key = (hashlib.sha1(crop.data).hexdigest(), crop.shape, (x0, y0, x1, y1))
    if key in _DESCRIPTORS:
        return _DESCRIPTORS[key]
    h = y1 - y0
    if h < 100:
        s = 100 / h
        crop = cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
        x0, y0, x1, y1 = (v * s for v in (x0, y0, x1, y1))
        h = y1 - y0
    dy = 0.12 * h
    rect = dlib.rectangle(int(round(x0)), int(round(y0 - dy)), int(round(x1)) - 1, int(round(y1 - dy)) - 1)
    shape = sp(crop, rect)
    d = np.asarray(fr.compute_face_descriptor(crop, shape), np.float64)
    if len(_DESCRIPTORS) < 20000:
        _DESCRIPTORS[key] = d
    return d


def detector_finds(rgb: np.ndarray, box: Box, rotation: int) -> bool:
    """Whether dlib's HOG face detector finds a face at ``box`` (upright crop of twice the box, face
    resized to 100 px, IoU >= 0.3 with the box as dlib frames it)."""
    crop, (x0, y0, x1, y1) = upright_crop(rgb, box, rotation, margin=0.5)
    s = 100 / (y1 - y0)
    crop = cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    x0, y0, x1, y1 = (v * s for v in (x0, y0, x1, y1))
    dy = 0.12 * (y1 - y0)
    ref = (x0, y0 - dy, x1, y1 - dy)
    for r in _hog()(crop, 0):
        d = (r.left(), r.top(), r.right() + 1, r.bottom() + 1)
        iw = max(0.0, min(ref[2], d[2]) - max(ref[0], d[0]))
        ih = max(0.0, min(ref[3], d[3]) - max(ref[1], d[1]))
        union = (ref[2] - ref[0]) * (ref[3] - ref[1]) + (d[2] - d[0]) * (d[3] - d[1]) - iw * ih
        if union > 0 and iw * ih / union >= 0.3:
            return True
    return False


@functools.lru_cache(maxsize=1)
def _hog():
    import dlib

    return dlib.get_frontal_face_detector()


_DESCRIPTORS: dict = {}
_INPUT_DESCRIPTORS: dict = {}


def _frame_key(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).data).hexdigest()


def input_descriptors(sc: Scene) -> list[np.ndarray]:
    """The scene's own faces' descriptors, computed once per distinct frame."""
    key = (_frame_key(sc.frame), sc.boxes, sc.rotations)
    if key not in _INPUT_DESCRIPTORS:
        _INPUT_DESCRIPTORS[key] = [descriptor(sc.frame, b, r) for b, r in zip(sc.boxes, sc.rotations)]
    return _INPUT_DESCRIPTORS[key]


def centre(box: Box) -> tuple[slice, slice]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return slice(y0 + h // 4, y1 - h // 4), slice(x0 + w // 4, x1 - w // 4)


def face_checks(output_rgb: np.ndarray, sc: Scene, always_dlib: bool = False) -> list[FaceCheck]:
    """Per known face: centre difference and (where the centre changed, or ``always_dlib``) dlib distance."""
    output_rgb = np.asarray(output_rgb)
    if output_rgb.shape != sc.frame.shape:
        raise ValueError(f"output is {output_rgb.shape}, the scene {sc.frame.shape}")
    refs = input_descriptors(sc)
    out = []
    for i, (box, rot) in enumerate(zip(sc.boxes, sc.rotations)):
        ys, xs = centre(box)
        diff = float(np.abs(output_rgb[ys, xs].astype(np.float32) - sc.frame[ys, xs].astype(np.float32)).mean())
        dist = found = None
        if always_dlib or diff >= RAW_DIFF:
            dist = float(np.linalg.norm(descriptor(output_rgb, box, rot) - refs[i]))
            if dist < MATCH_DISTANCE and diff >= RAW_DIFF:
                found = detector_finds(output_rgb, box, rot)
        out.append(FaceCheck(i, box, rot, diff, dist, found))
    return out


def raw_faces(output_rgb: np.ndarray, sc: Scene) -> list[FaceCheck]:
    """The known faces under which the person is still recognisable in ``output_rgb`` (empty = none leaked)."""
    return [c for c in face_checks(output_rgb, sc) if c.raw]


def describe(checks) -> str:
    return "\n".join(f"  {c}" for c in checks)
