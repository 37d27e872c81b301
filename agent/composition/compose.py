"""Paste-back: synthetic faces into the frame (agent.composition.guard decides what may leave).

Each face region is the face-oval polygon from the landmarks, feathered at its edge. A face the
generator could not produce is filled with flat grey instead (masked), never left as it was.

Lighting and skin tone (``tone_match``):

- ``"skin"`` (the shipped setting): the synthetic face takes the tone and light of the skin it
  replaces. Its median CIELAB colour over the face's middle is moved onto the original's there
  (lightness by a gain, the two chroma axes by a shift and a scale of their spread), so it reads
  as the same skin as the neck, ears and hands that stay visible, and a greyscale photo keeps a
  grey face. Five numbers pass from the person (lightness, chroma and its spread), and the visible
  neck shows them anyway; the features, shape and texture stay the generator's.
- ``"luminance"``: only the brightness is scaled to the original face's, the colour is the generator's.
- ``"none"``: the generator's face as drawn.

Hair, ears and the outline of the head lie outside the face oval and identify people too. With
``surround > 0`` the band around each face, out to the oval grown by that fraction, is blurred to
a few blocks per face before the synthetic face goes in, so only their coarse colour remains.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agent.synthesis.topology import FACE_OVAL_POLYGON
from agent.types import FaceJob

MASK_GREY = 128
GAIN_LIMITS = (0.5, 2.0)  # how far the synthetic face's lightness may be scaled towards the original's


@dataclass
class Region:
    """Where a face goes in the frame: an integer box and the per-pixel blend weight inside it."""

    x0: int
    y0: int
    alpha: np.ndarray  # (h, w) float32 in [0, 1]
    matrix: np.ndarray  # 2x3 crop -> box pixels


def face_region(job: FaceJob, frame_shape, feather: float) -> Region | None:
    h, w = frame_shape[:2]
    size = job.size
    oval = job.crop_landmarks[FACE_OVAL_POLYGON].astype(np.float32)
    inv = cv2.invertAffineTransform(job.matrix)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ inv[:, :2].T + inv[:, 2]
    x0, y0 = np.floor(corners.min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    # Mask in crop space: the oval (or a head job's head region), grown by half the feather so the
    # soft edge lies outside it and the whole region is covered at full weight.
    if job.region is not None:
        inside = (job.region > 0.5).astype(np.float32)
        crop_mask = job.region.astype(np.float32)
    else:
        inside = np.zeros((size, size), np.float32)
        cv2.fillPoly(inside, [np.round(oval * 16).astype(np.int32)], 1.0, cv2.LINE_8, 4)
        crop_mask = np.zeros((size, size), np.float32)
        cv2.fillPoly(crop_mask, [np.round(oval * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    sigma = max(feather * size, 0.0)
    if sigma > 0:
        k = int(sigma * 2) | 1
        crop_mask = cv2.dilate(crop_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        crop_mask = cv2.GaussianBlur(crop_mask, (0, 0), sigma / 2)
        # Keep the region itself fully covered: feathering only adds weight outside it.
        crop_mask = np.maximum(crop_mask, inside)
    to_box = inv.copy()
    to_box[:, 2] -= (x0, y0)
    alpha = cv2.warpAffine(crop_mask, to_box, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=0)
    return Region(x0, y0, alpha, to_box)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def grown_oval(landmarks: np.ndarray, grow: float) -> np.ndarray:
    """The face-oval polygon of frame ``landmarks``, scaled by 1 + ``grow`` about its centre: the head around a face."""
    oval = landmarks[FACE_OVAL_POLYGON, :2]
    if grow == 0:
        return oval
    oval = oval.astype(np.float64)
    centre = oval.mean(axis=0)
    return centre + (oval - centre) * (1.0 + grow)


def blur_surround(out: np.ndarray, job: FaceJob, grow: float) -> None:
    """Blur, in place, the head around a face: its oval grown by ``grow`` about its centre, soft-edged."""
    ring = grown_oval(job.face.landmarks, grow)
    h, w = out.shape[:2]
    x0, y0 = np.maximum(np.floor(ring.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(ring.max(axis=0)).astype(int) + 1, (w, h))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return
    box = out[y0:y1, x0:x1]
    side = max(x1 - x0, y1 - y0)
    # About eight blocks across the face (the band is 1+grow faces wide), then smoothed:
    # as coarse as the pixelation baseline, without its block edges.
    blocks = max(2, round(8 * (1.0 + grow)))
    small = cv2.resize(box, (max(1, round(blocks * (x1 - x0) / side)), max(1, round(blocks * (y1 - y0) / side))),
                       interpolation=cv2.INTER_AREA)
    blurred = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    mask = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.fillPoly(mask, [np.round((ring - (x0, y0)) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.05 * side))[..., None]
    box[:] = (blurred * mask + box * (1.0 - mask) + 0.5).astype(box.dtype)


def compose(frame: np.ndarray, jobs: list[FaceJob], feather: float = 0.06, tone_match: str = "skin",
            surround: float = 0.0) -> tuple[np.ndarray, list, int, int]:
    """Blend every job's face into a copy of ``frame`` (RGB, uint8 or uint16).

    Returns (pixels, each job's :class:`Region` or None where it lies off the frame, faces replaced,
    faces masked). Faces are drawn far-to-near (small to large), so the nearer of two overlapping
    faces is on top. ``surround`` > 0 blurs each face's head around its oval first (see the module
    docstring). A job without a generated face is filled flat grey over its oval.
    """
    out = frame.copy()
    peak = float(np.iinfo(frame.dtype).max) if frame.dtype.kind in "ui" else 255.0
    scale = peak / 255.0
    replaced = masked = 0
    regions: list = [None] * len(jobs)
    for i in sorted(range(len(jobs)), key=lambda k: jobs[k].face.size):
        job = jobs[i]
        if surround > 0:
            blur_surround(out, job, surround)
        region = regions[i] = face_region(job, frame.shape, feather)
        if region is None:
            continue
        bh, bw = region.alpha.shape
        view = out[region.y0:region.y0 + bh, region.x0:region.x0 + bw]
        # Tone is read from the frame as it came, not from ``out``: a blurred surround or a nearer
        # face already drawn there is not the person's skin.
        skin = frame[region.y0:region.y0 + bh, region.x0:region.x0 + bw]
        if job.generated is None:
            # Masking: a hard-edged flat fill, no feathering that could let face pixels through.
            view[region.alpha > 0.01] = MASK_GREY * scale
            masked += 1
            continue
        gen = cv2.warpAffine(job.generated, region.matrix, (bw, bh), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        if frame.dtype == np.uint8:
            view[:] = _blend_8bit(view, gen, region.alpha, tone_match, skin)
        else:
            view[:] = _blend_float(view, gen, region.alpha, tone_match, peak, skin)
        replaced += 1
    return out, regions, replaced, masked


def _blend_8bit(box: np.ndarray, gen: np.ndarray, alpha: np.ndarray, tone_match: str, skin: np.ndarray) -> np.ndarray:
    """Camera frames: the same blend as :func:`_blend_float` in OpenCV's 8-bit kernels, about half
    the time (it runs for every face of every frame). Where alpha is 1 -- the whole oval -- the
    result is the generated pixel alone, as in the float path."""
    if tone_match == "skin":
        gen = _match_skin(skin, gen, alpha)
    elif tone_match == "luminance":
        gain = _tone_gain(cv2.cvtColor(skin, cv2.COLOR_RGB2GRAY), cv2.cvtColor(gen, cv2.COLOR_RGB2GRAY), alpha)
        if gain != 1.0:
            gen = cv2.convertScaleAbs(gen, alpha=gain)
    return cv2.blendLinear(gen, np.ascontiguousarray(box), alpha, 1.0 - alpha)


def _blend_float(box: np.ndarray, gen: np.ndarray, alpha: np.ndarray, tone_match: str, peak: float,
                 skin: np.ndarray) -> np.ndarray:
    """Any bit depth (16-bit stills): ``gen`` is 8-bit and scaled up to the frame's range."""
    dtype = box.dtype
    box = box.astype(np.float32)
    if tone_match == "skin":
        gen = _match_skin((skin.astype(np.float32) * (255.0 / peak)).clip(0, 255).astype(np.uint8), gen, alpha)
    gen = gen.astype(np.float32) * (peak / 255.0)
    if tone_match == "luminance":
        gen *= _tone_gain(_luminance(skin.astype(np.float32)), _luminance(gen), alpha)
    a = alpha[..., None]
    return np.clip(box * (1 - a) + gen * a + 0.5, 0, peak).astype(dtype)


def _tone_gain(src_lum: np.ndarray, gen_lum: np.ndarray, alpha: np.ndarray) -> float:
    """Brightness ratio original / synthetic over the blended region, kept within 0.5-2x."""
    weight = float(alpha.sum())
    if weight <= 1:
        return 1.0
    src = float((src_lum * alpha).sum()) / weight
    dst = float((gen_lum * alpha).sum()) / weight
    return float(np.clip(src / dst, *GAIN_LIMITS)) if dst > 1e-3 else 1.0


SKIN_CORE = 0.99  # blend weight from which a pixel is the face itself, not its feathered edge
SKIN_STRIDE = 4  # the medians are taken on every 4th pixel each way: the same value, a sixteenth of the work


def _match_skin(box: np.ndarray, gen: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``gen`` (uint8 RGB) with its median CIELAB colour over the face's core moved onto ``box``'s.

    Medians, not means: eyes, brows, lips and teeth are a minority of the core, so both medians are
    skin. Lightness follows by a gain within 0.5-2x (as ``"luminance"``), chroma by a shift and a
    scale of its spread."""
    core = alpha[::SKIN_STRIDE, ::SKIN_STRIDE] >= SKIN_CORE
    if core.sum() < 16:
        return gen
    src = cv2.cvtColor(np.ascontiguousarray(box[::SKIN_STRIDE, ::SKIN_STRIDE]), cv2.COLOR_RGB2LAB)[core]
    lab = cv2.cvtColor(gen, cv2.COLOR_RGB2LAB)
    dst = lab[::SKIN_STRIDE, ::SKIN_STRIDE][core]
    src_med = np.median(src, axis=0)
    dst_med = np.median(dst, axis=0)
    gain = float(np.clip(src_med[0] / dst_med[0], *GAIN_LIMITS)) if dst_med[0] > 1 else 1.0
    # The chroma's spread about its median follows too (at most 1.5x): a grey photo's face has none
    # to give, so the lips and cheeks of the synthetic face go grey with it.
    src_spread = np.median(np.abs(src[:, 1:] - src_med[1:]), axis=0)
    dst_spread = np.median(np.abs(dst[:, 1:] - dst_med[1:]), axis=0)
    spread = np.clip(src_spread / np.maximum(dst_spread, 0.5), 0.0, 1.5).astype(np.float32)
    # Each Lab channel maps on its own, so the move is one lookup table: a tenth of float arithmetic.
    levels = np.arange(256, dtype=np.float32)[:, None]
    table = np.concatenate([levels * gain, (levels - dst_med[1:]) * spread + src_med[1:]], axis=1)
    table = table.clip(0, 255).round().astype(np.uint8).reshape(256, 1, 3)
    return cv2.cvtColor(cv2.LUT(lab, table), cv2.COLOR_LAB2RGB)
