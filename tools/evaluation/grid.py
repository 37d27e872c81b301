"""The evaluation's sample pictures: one row per sampled face, one column per view of it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def replaced_only(rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The output with everything the method did not replace blacked out: no dataset pixels reach the
    committed grid, only what the method put in their place."""
    only = np.where(region[..., None], rgb, 0).astype(np.uint8)
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return only
    return only[ys.min():ys.max() + 1, xs.min():xs.max() + 1]  # cropped so the face fills its grid cell


def _tile(img: np.ndarray, side: int) -> np.ndarray:
    if img.ndim == 2:
        img = np.dstack([img] * 3)
    h, w = img.shape[:2]
    s = side / max(h, w)
    small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    tile = np.zeros((side, side, 3), np.uint8)
    y, x = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    tile[y:y + small.shape[0], x:x + small.shape[1]] = small
    return tile


def make_grid(samples: list[dict], columns: tuple[str, ...], side: int = 128) -> np.ndarray | None:
    """One row per sample, one column per key; RGB uint8."""
    if not samples:
        return None
    rows = [np.hstack([_tile(s[c], side) for c in columns]) for s in samples]
    return np.vstack(rows)


def write_grids(samples: list[dict], committed: Path, private: Path) -> bool:
    """``committed``: conditioning | replaced region only (no dataset pixels); ``private`` (kept out of
    git): original | conditioning | anonymized. False when there is nothing to draw."""
    grid = make_grid(samples, ("conditioning", "replaced"))
    if grid is None:
        return False
    cv2.imwrite(str(committed), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    private.parent.mkdir(parents=True, exist_ok=True)
    full = make_grid(samples, ("original", "conditioning", "anonymized"))
    cv2.imwrite(str(private), cv2.cvtColor(full, cv2.COLOR_RGB2BGR))
    return True
