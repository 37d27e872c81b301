"""The fail-closed rule, in one place for stills and streams alike, and the only maker of AnonymizedFrame.

The guard receives everything analysis found -- the faces with a fitted mesh and every box the
face detector reported -- and the synthesis jobs for the meshed faces. It pastes the synthetic
faces (:func:`agent.composition.compose.compose`), then checks each detector box: a box whose inner ellipse the
synthetic face covers is replaced; any other is *covered*: its head filled with one flat colour, the
mean of its outer ring (no blur: nothing of the person survives). So a face is never dropped, never
passed raw: a face over ``max_faces``, too small, turned, or whose mesh landed beside it is covered.

Only :func:`seal` and :func:`mask_everything` make an :class:`AnonymizedFrame`, and publishing and
writing accept nothing else. ``seal`` refuses an analysis made for another frame or jobs that are
not the analysis's faces, so code that skips analysis cannot obtain a publishable frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.composition.compose import MASK_GREY, compose
from agent.errors import AnoncamError
from agent.types import Analysis, Detection

COVERED_SHARE = 0.97  # of a detector box's inner ellipse that a synthetic face must cover to count
INNER = 0.8  # the inner ellipse spans this share of the detector box (its corners are background)
# The head around a detector box (brows to chin, ear to ear), in box sizes from its centre: across,
# and down to below the chin and up to the top of the hair. Measured on WIDER val photos: larger
# heads changed half again as much of the scene around false boxes for 0.1 points fewer leaks.
HEAD_ACROSS = 0.7
HEAD_DOWN, HEAD_UP = 0.65, 0.9
RING = 0.75  # a cover takes the colour of the head's ring outside this share of its radii


class GuardError(AnoncamError):
    """The guard was handed something it cannot vouch for: the frame must not leave as is."""


class AnonymizedFrame:
    """A frame in which every face analysis found was replaced or covered. Read-only.

    Made only by :func:`seal` (or :func:`mask_everything`); calling the class raises.
    """

    __slots__ = ("_pixels", "faces_replaced", "faces_masked", "covered")

    def __init__(self, *args, **kwargs):
        raise TypeError("an AnonymizedFrame is made only by agent.composition.guard.seal")

    @property
    def pixels(self) -> np.ndarray:
        return self._pixels

    @property
    def faces(self) -> int:
        return self.faces_replaced + self.faces_masked


def _make(pixels: np.ndarray, replaced: int, masked: int, covered: tuple = ()) -> AnonymizedFrame:
    frame = object.__new__(AnonymizedFrame)
    pixels.setflags(write=False)
    object.__setattr__(frame, "_pixels", pixels)
    object.__setattr__(frame, "faces_replaced", replaced)
    object.__setattr__(frame, "faces_masked", masked)
    object.__setattr__(frame, "covered", covered)  # the detector boxes covered rather than replaced
    return frame


def seal(frame: np.ndarray, analysis: Analysis, jobs: list, feather: float = 0.06, tone_match: str = "skin",
         surround: float = 0.0, under: list = ()) -> AnonymizedFrame:
    """Paste ``jobs``' synthetic faces into a copy of ``frame``, cover every detected face they (or the
    grey fill of a face whose synthesis failed) do not cover, and return the result as the one publishable type.

    ``under``: synthetic heads (generated head jobs of the same faces) pasted first, for the faces
    to be drawn over; what counts as covered is still the face layer alone."""
    if tuple(analysis.shape[:2]) != tuple(frame.shape[:2]):
        raise GuardError(f"analysis of a {analysis.shape[1]}x{analysis.shape[0]} frame handed in for a "
                         f"{frame.shape[1]}x{frame.shape[0]} one")
    if len(jobs) != len(analysis.faces) or any(j.face is not f for j, f in zip(jobs, analysis.faces)):
        raise GuardError("synthesis jobs do not match the analysed faces one to one")
    found = {id(f) for f in analysis.faces}
    if any(id(j.face) not in found or j.generated is None for j in under):
        raise GuardError("synthetic heads handed in for faces the analysis did not find, or not drawn")
    base = compose(frame, list(under), feather, tone_match)[0] if under else frame
    out, regions, replaced, masked = compose(base, jobs, feather, tone_match, surround)
    handled = _oval_coverage(frame.shape, regions)
    covered = tuple(det for det in analysis.detections if not _is_covered(handled, det))
    for det in covered:
        cover(out, det)
    return _make(out, replaced, masked + len(covered), tuple(d.box for d in covered))


def mask_everything(frame: np.ndarray) -> AnonymizedFrame:
    """The fail-closed stand-in for a frame that could not be analysed: nothing of it survives."""
    peak = np.iinfo(frame.dtype).max if frame.dtype.kind in "ui" else 255
    return _make(np.full_like(frame, MASK_GREY * peak // 255), 0, 0)


def _oval_coverage(shape, regions) -> np.ndarray | None:
    """Where a synthetic face (or the grey fill of one that failed) now lies at full weight, as a
    bool frame mask; None if nowhere."""
    mask = None
    for region in regions:
        if region is None:
            continue
        if mask is None:
            mask = np.zeros(shape[:2], bool)
        bh, bw = region.alpha.shape
        mask[region.y0:region.y0 + bh, region.x0:region.x0 + bw] |= region.alpha >= 0.5
    return mask


def _is_covered(handled: np.ndarray | None, det: Detection) -> bool:
    if handled is None:
        return False
    h, w = handled.shape
    x0, y0, x1, y1 = det.box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * INNER / 2, (y1 - y0) * INNER / 2
    bx0, by0 = max(int(cx - rx), 0), max(int(cy - ry), 0)
    bx1, by1 = min(int(np.ceil(cx + rx)) + 1, w), min(int(np.ceil(cy + ry)) + 1, h)
    if bx1 <= bx0 or by1 <= by0:
        return True  # nothing of it on the frame
    yy, xx = np.mgrid[by0:by1, bx0:bx1]
    inside = ((xx + 0.5 - cx) / max(rx, 0.5)) ** 2 + ((yy + 0.5 - cy) / max(ry, 0.5)) ** 2 <= 1.0
    if not inside.any():
        return bool(handled[int(min(max(cy, 0), h - 1)), int(min(max(cx, 0), w - 1))])
    return float(handled[by0:by1, bx0:bx1][inside].mean()) >= COVERED_SHARE


def head_ellipse(det: Detection) -> tuple[tuple[float, float], tuple[float, float], float]:
    """(centre, semi-axes (across, along), angle in degrees) of the head around a detector box, grown
    towards the hair along the face's own up direction."""
    ux, uy = float(det.up[0]), float(det.up[1])
    w, h = det.box[2] - det.box[0], det.box[3] - det.box[1]
    along = abs(ux) * w + abs(uy) * h  # the box's extent from chin to brow
    across = abs(uy) * w + abs(ux) * h
    c = det.centre + det.up * (HEAD_UP - HEAD_DOWN) / 2 * along
    semi_along = (HEAD_UP + HEAD_DOWN) / 2 * along
    angle = np.degrees(np.arctan2(uy, ux))  # the ellipse's first axis runs along `up`
    return (float(c[0]), float(c[1])), (float(semi_along), float(HEAD_ACROSS * across)), float(angle)


def cover(out: np.ndarray, det: Detection) -> None:
    """Fill the head around ``det`` in place with one colour: the mean of its outer ring (hair, ears,
    background), not of the whole head, so the face's own skin tone does not survive as its middle."""
    (cx, cy), (a, b), angle = head_ellipse(det)
    r = max(a, b)
    h, w = out.shape[:2]
    x0, y0 = max(int(cx - r), 0), max(int(cy - r), 0)
    x1, y1 = min(int(np.ceil(cx + r)) + 1, w), min(int(np.ceil(cy + r)) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return
    view = out[y0:y1, x0:x1]
    centre = (round((cx - x0) * 16), round((cy - y0) * 16))
    head = np.zeros(view.shape[:2], np.uint8)
    cv2.ellipse(head, centre, (max(1, round(a * 16)), max(1, round(b * 16))), angle, 0, 360, 1, -1, cv2.LINE_8, 4)
    inner = np.zeros_like(head)
    cv2.ellipse(inner, centre, (max(1, round(a * RING * 16)), max(1, round(b * RING * 16))), angle, 0, 360, 1, -1,
                cv2.LINE_8, 4)
    head, ring = head.astype(bool), (head > inner)
    if head.any():
        view[head] = view[ring if ring.any() else head].mean(axis=0).round().astype(view.dtype)
