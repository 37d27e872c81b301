"""Leaks, the scene changed outside heads, and the figures per face group: pure numpy, no models.

- leak: a valid face whose box centre (middle half of the box, >= 2x2 px) barely changed: mean abs
  RGB difference at most a margin, max(2 m, m + 2), above the largest m that re-encoding the untouched
  photo alone gives on any valid face;
- changed outside faces: share of the pixels outside every annotated face's head region (valid or not,
  grown to the 16x16 JPEG blocks it touches: re-encoding a changed head moves those too) whose
  max-over-channels difference d exceeds the same rule per pixel, on that pixel's own re-encode
  difference d0: d > max(2 d0, d0 + 2).
"""

from __future__ import annotations

import cv2
import numpy as np

from tools.recall.data import FLAGS, JPEG_QUALITY
from tools.recall.judge import DLIB_THRESHOLD

JPEG_MCU = 16  # OpenCV encodes JPEG with 4:2:0 chroma subsampling: 16x16 pixel blocks
BINS = (("< 16 px", 0, 16), ("16-32 px", 16, 32), ("32-64 px", 32, 64), ("64-128 px", 64, 128), (">= 128 px", 128, 1 << 30))


# ---------------------------------------------------------------- pixels

def centre_box(face: dict, shape) -> tuple[int, int, int, int]:
    """The middle half of a face box in width and height (at least 2x2 px), kept inside the image.

    The centre holds eyes, nose and mouth in any pose; the box's edges are often background or hair.
    """
    out = []
    for start, size, limit in ((face["x"], face["w"], shape[1]), (face["y"], face["h"], shape[0])):
        span = min(max(2, round(size / 2)), limit)
        lo = min(max(int(start + (size - span) // 2), 0), limit - span)
        out += [lo, lo + span]
    return out[0], out[2], out[1], out[3]


def centre_diff(a: np.ndarray, b: np.ndarray, face: dict) -> float:
    """Mean absolute RGB difference (0-255) of two images in the face's centre box."""
    x0, y0, x1, y1 = centre_box(face, a.shape)
    return float(np.abs(a[y0:y1, x0:x1].astype(np.int16) - b[y0:y1, x0:x1]).mean())


def margin_above(noise):
    """The calibration rule, for a scalar or per pixel: max(2 x noise, noise + 2)."""
    noise = np.asarray(noise, np.float64)
    return np.maximum(2 * noise, noise + 2)


def head_mask(faces: list[dict], shape) -> np.ndarray:
    """True on every face's head: [cx - 0.9 s, cx + 0.9 s] x [cy - 1.1 s, cy + 0.9 s], s = max(w, h).

    Taller above the centre than below: the hair counts as head, and a method may cover it.
    """
    h, w = shape[:2]
    mask = np.zeros((h, w), bool)
    for f in faces:
        s, cx, cy = max(f["w"], f["h"]), f["x"] + f["w"] / 2, f["y"] + f["h"] / 2
        x0, x1 = max(int(np.floor(cx - 0.9 * s)), 0), min(int(np.ceil(cx + 0.9 * s)), w)
        y0, y1 = max(int(np.floor(cy - 1.1 * s)), 0), min(int(np.ceil(cy + 0.9 * s)), h)
        mask[y0:y1, x0:x1] = True
    return mask


def spill_mask(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown to the whole JPEG blocks it touches, plus the 1 px that chroma upsampling reaches.

    Encoding a changed head also moves the untouched pixels that share its 16x16 blocks: without this,
    a method that fills every head grey reads as 0.1-0.8 % of the background changed (0 with it).
    """
    h, w = mask.shape
    rows, cols = -(-h // JPEG_MCU), -(-w // JPEG_MCU)
    padded = np.pad(mask, ((0, rows * JPEG_MCU - h), (0, cols * JPEG_MCU - w)))
    blocks = padded.reshape(rows, JPEG_MCU, cols, JPEG_MCU).any(axis=(1, 3))
    grown = np.repeat(np.repeat(blocks, JPEG_MCU, 0), JPEG_MCU, 1)[:h, :w].astype(np.uint8)
    return cv2.dilate(grown, np.ones((3, 3), np.uint8)) > 0


def pixel_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b).max(axis=2)


def outside_changed_share(original: np.ndarray, output: np.ndarray, reencoded: np.ndarray, faces: list[dict]) -> float:
    """Share of the pixels outside all heads (and their JPEG blocks) that the method changed; NaN if none are.

    A pixel counts as changed when it moved more than the calibration rule allows its own re-encode
    difference, so the decoded JPEG of an untouched photo scores exactly 0. Per pixel, as JPEG noise
    at edges passes 20 levels: one global threshold above it would hide most blurring.
    """
    outside = ~spill_mask(head_mask(faces, original.shape))
    if not outside.any():
        return float("nan")
    changed = pixel_diff(original, output) > margin_above(pixel_diff(original, reencoded))
    return float(changed[outside].mean())


# ---------------------------------------------------------------- figures

def calibrate(noise: list[float], rows: list[dict]) -> dict:
    """The leak threshold: a margin above the most that re-encoding alone moves any valid face's centre."""
    valid = np.array([not r["invalid"] for r in rows], bool)
    worst = float(np.max(np.array(noise)[valid])) if valid.any() else 0.0
    return {"jpeg_quality": JPEG_QUALITY, "reencode_max_centre_diff": round(worst, 4),
            "face_threshold": round(float(margin_above(worst)), 4), "rule": "leaked if centre diff <= max(2 m, m + 2)",
            "pixel_rule": "changed if max-channel diff > max(2 d0, d0 + 2), d0 = that pixel's re-encode diff",
            "outside_region": f"outside every head box grown to the {JPEG_MCU}x{JPEG_MCU} JPEG blocks it touches, + 1 px"}


def dlib_counts(judged: dict) -> dict:
    """Faces scored, found by dlib's detector, and matched (found and within DLIB_THRESHOLD), with %."""
    n = len(judged)
    found = sum(f for f, _ in judged.values())
    matches = sum(d is not None and d < DLIB_THRESHOLD for _, d in judged.values())

    def pct(k):
        return round(100 * k / n, 1) if n else None

    return {"faces": n, "found": int(found), "matches": int(matches), "found_rate": pct(found), "rate": pct(matches)}


def impostor_rate(originals: dict) -> dict:
    """Share of pairs of different faces whose originals, at their GT boxes, already lie within dlib's 0.6.
    Small, blurred crowd faces cluster in descriptor space, unlike the aligned portraits the threshold was
    set on: why a descriptor at the GT box is no evidence alone, and the judge first asks dlib's detector."""
    d = np.array(list(originals.values()), np.float64).reshape(-1, 128)
    sq = (d * d).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * d @ d.T, 0))[np.triu_indices(len(d), 1)]
    return {"pairs": int(dist.size), "within_threshold_pct": round(100 * float((dist < DLIB_THRESHOLD).mean()), 2) if dist.size else None}


def face_groups(rows: list[dict]) -> dict[str, np.ndarray]:
    """Masks over faces for every reported row: all, >= 16 px, size bins by the face's own height, each
    flag value."""
    h = np.array([r["upright_h"] for r in rows])
    groups = {"all": np.ones(len(rows), bool), ">= 16 px": h >= 16}
    groups.update({label: (h >= lo) & (h < hi) for label, lo, hi in BINS})
    for flag, values in FLAGS.items():
        col = np.array([r[flag] for r in rows])
        groups.update({f"{flag} {v}": col == v for v in values})
    return groups


def leak_rates(rows: list[dict], leaked: np.ndarray) -> dict:
    """Leaked / valid faces (and %) per group; invalid faces never count."""
    valid = np.array([not r["invalid"] for r in rows], bool)
    out = {}
    for label, mask in face_groups(rows).items():
        n, k = int((mask & valid).sum()), int((mask & valid & leaked).sum())
        out[label] = {"leaked": k, "faces": n, "rate": round(100 * k / n, 1) if n else None}
    return out


def method_figures(run: dict, rows: list[dict], threshold: float) -> dict:
    """One method's figures from its pass over the images (tools.eval_recall.method_passes)."""
    shares = 100 * run["outside"][~np.isnan(run["outside"])]
    return {
        "leak": leak_rates(rows, run["diffs"] <= threshold),
        "outside_changed": {"mean_pct": round(float(shares.mean()), 3) if len(shares) else None,
                            "p95_pct": round(float(np.percentile(shares, 95)), 3) if len(shares) else None,
                            "images": int(len(shares))},
        "dlib": dlib_counts(run["dlib"]),
        "throughput": {"images": len(run["seconds"]), "seconds": round(sum(run["seconds"]), 3),
                       "images_per_s": round(len(run["seconds"]) / sum(run["seconds"]), 3)},
    }
