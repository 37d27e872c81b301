"""How natural an anonymized face looks, measured: its tone against the person's visible neck, the
seam at the edge of what was replaced, and how close anonymized faces lie to real ones in an
embedding the generator never saw.

- **Tone**: CIELAB colour difference (CIE76 ΔE) between the median skin of the face's middle (cheeks,
  nose, mouth: the box's centre) and the median of the neck below the chin, on pixels the method left
  as they were. The same on the original photo is the natural difference between a face and its neck.
- **Seam**: mean gradient magnitude on a thin band along the boundary of the replaced region, over the
  mean inside the region. A cut or a box edge shows as a ratio above the original photo's own.
- **Realism**: the Fréchet distance between dlib descriptors (128-d, a recognizer trained on other
  data) of anonymized faces and of real faces, beside the same distance between two halves of the
  real faces (the floor).
"""

from __future__ import annotations

import cv2
import numpy as np

SEAM_BAND = 3  # px either side of the region's boundary


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32) * [100 / 255, 1, 1] - [0, 128, 128]


def tone_difference(rgb: np.ndarray, box, region: np.ndarray | None) -> float | None:
    """ΔE between the face's middle and the neck below it in ``rgb``; None where no neck is visible."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    H, W = rgb.shape[:2]
    face = (slice(int(max(y0 + 0.45 * h, 0)), int(min(y0 + 0.8 * h, H))), slice(int(max(x0 + 0.3 * w, 0)), int(min(x1 - 0.3 * w, W))))
    neck = (slice(int(min(y1 + 0.08 * h, H)), int(min(y1 + 0.3 * h, H))), slice(int(max(x0 + 0.3 * w, 0)), int(min(x1 - 0.3 * w, W))))
    lab = _lab(rgb)
    neck_px = lab[neck].reshape(-1, 3)
    if region is not None:
        neck_px = neck_px[~region[neck].reshape(-1)]
    face_px = lab[face].reshape(-1, 3)
    if len(neck_px) < 30 or len(face_px) < 30:
        return None
    return float(np.linalg.norm(np.median(face_px, 0) - np.median(neck_px, 0)))


def seam_ratio(rgb: np.ndarray, region: np.ndarray) -> float | None:
    """Gradient energy on the boundary band of ``region`` over that inside it; None for a tiny region."""
    mask = region.astype(np.uint8)
    if mask.sum() < 400:
        return None
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * SEAM_BAND + 1, 2 * SEAM_BAND + 1))
    band = (cv2.dilate(mask, kernel) - cv2.erode(mask, kernel)) > 0
    inside = (cv2.erode(mask, kernel) > 0) & ~band
    grey = cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
    mag = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    if band.sum() < 50 or inside.sum() < 50:
        return None
    return float(mag[band].mean() / max(mag[inside].mean(), 1e-3))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b``."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def look_figures(tone_anon: list, tone_orig: list, seam_anon: list, seam_orig: list, anon_desc: np.ndarray,
                 real_desc: np.ndarray, seed: int = 0) -> dict:
    """The look figures of a run, from its per-photo measurements and descriptors."""
    def over_photos(v, stat=np.mean):
        v = [x for x in v if x is not None]
        return float(stat(v)) if v else float("nan")

    # The seam ratio's median beside its mean: the ratio is unbounded where a region is nearly flat
    # inside, so a few photos can carry the mean.
    out = {"tone_delta_e": over_photos(tone_anon), "tone_delta_e_original": over_photos(tone_orig),
           "seam_ratio": over_photos(seam_anon), "seam_ratio_original": over_photos(seam_orig),
           "seam_ratio_median": over_photos(seam_anon, np.median),
           "seam_ratio_original_median": over_photos(seam_orig, np.median),
           "tone_photos": sum(x is not None for x in tone_anon)}
    if len(anon_desc) > 20 and len(real_desc) > 40:
        halves = np.random.default_rng(seed).permutation(len(real_desc))
        a, b = real_desc[halves[: len(halves) // 2]], real_desc[halves[len(halves) // 2:]]
        out["frechet_dlib"] = frechet_distance(anon_desc, real_desc)
        out["frechet_dlib_real_halves"] = frechet_distance(a, b)
    return out
