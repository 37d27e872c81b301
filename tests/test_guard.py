"""The guard, the one place the fail-closed rule lives: what it covers, what it refuses, and that
nothing else can make a publishable frame. Real models where a face is needed (scikit-image's
public-domain astronaut); detector boxes placed by hand where the rule itself is under test."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from configs import config

from agent.composition.guard import (
    AnonymizedFrame,
    GuardError,
    head_ellipse,
    mask_everything,
    seal,
)
from agent.pipeline import Anonymizer
from agent.types import Analysis, Detection


def detection(x0, y0, x1, y1, up=(0.0, -1.0)) -> Detection:
    return Detection(np.array([x0, y0, x1, y1], np.float32), 0.9, np.zeros((5, 2), np.float32),
                     up=np.array(up, np.float32))


def textured(h=240, w=320) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def inner(det: Detection, shape) -> np.ndarray:
    """The middle of a box: what must not survive."""
    x0, y0, x1, y1 = det.box
    m = np.zeros(shape[:2], bool)
    dx, dy = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
    m[int(y0 + dy):int(y1 - dy), int(x0 + dx):int(x1 - dx)] = True
    return m


@pytest.fixture(scope="module")
def astronaut_result():
    a = Anonymizer(config())
    try:
        rgb = skimage.data.astronaut()
        return rgb, a.process(rgb)
    finally:
        a.close()


def test_every_box_without_a_synthetic_face_is_covered_flat():
    frame = textured()
    dets = [detection(20, 30, 60, 80), detection(200, 100, 230, 140, up=(0.0, 1.0)), detection(120, 10, 140, 34)]
    out = seal(frame, Analysis([], dets, frame.shape), [])
    assert out.faces_replaced == 0 and out.faces_masked == 3 and len(out.covered) == 3
    for d in dets:
        middle = out.pixels[inner(d, frame.shape)]
        assert (middle == middle[0]).all(), "a covered face is one flat colour"
        assert np.abs(middle.astype(int) - frame[inner(d, frame.shape)]).mean() > 40


def test_a_cover_grows_towards_the_hair_whichever_way_the_head_is_turned():
    upright, upside_down = detection(100, 100, 140, 150), detection(100, 100, 140, 150, up=(0.0, 1.0))
    (_, cy_up), _, _ = head_ellipse(upright)
    (_, cy_down), _, _ = head_ellipse(upside_down)
    assert cy_up < 125 < cy_down


def test_a_synthetic_face_beside_its_box_does_not_count_and_the_box_is_covered(astronaut_result):
    rgb, r = astronaut_result
    face = r.analysis.faces[0]
    elsewhere = detection(20, 300, 90, 380)  # a second face the mesh does not reach
    analysis = Analysis(r.analysis.faces, [*r.analysis.detections, elsewhere], rgb.shape)
    out = seal(rgb, analysis, r.jobs)
    assert out.faces_replaced == 1 and out.faces_masked == 1
    assert [tuple(b) for b in out.covered] == [tuple(elsewhere.box)]
    x0, y0, x1, y1 = map(int, face.box)
    assert np.abs(out.pixels[y0:y1, x0:x1].astype(int) - r.frame.pixels[y0:y1, x0:x1]).max() == 0, \
        "the replaced face is left as synthesized"


def test_a_failed_synthesis_is_masked_once_not_twice(astronaut_result):
    rgb, r = astronaut_result
    import copy

    failed = [copy.copy(j) for j in r.jobs]
    for j in failed:
        j.generated = None
    out = seal(rgb, r.analysis, failed)
    assert out.faces_replaced == 0 and out.faces_masked == 1


def test_the_guard_refuses_an_analysis_of_another_frame_or_foreign_jobs(astronaut_result):
    rgb, r = astronaut_result
    with pytest.raises(GuardError):
        seal(cv2.resize(rgb, (256, 256)), r.analysis, r.jobs)
    with pytest.raises(GuardError):
        seal(rgb, r.analysis, [])  # the analysis has a face: jobs must account for it
    with pytest.raises(GuardError):
        seal(rgb, Analysis([], r.analysis.detections, rgb.shape), r.jobs)


def test_an_anonymized_frame_cannot_be_made_or_changed_outside_the_guard(astronaut_result):
    _, r = astronaut_result
    with pytest.raises(TypeError):
        AnonymizedFrame()
    with pytest.raises(AttributeError):
        r.frame.pixels = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError):
        r.frame.pixels[0, 0] = 0  # read-only
    grey = mask_everything(np.zeros((8, 8, 3), np.uint8))
    assert isinstance(grey, AnonymizedFrame) and (grey.pixels == 128).all()


def test_compose_alone_gives_pixels_not_a_publishable_frame(astronaut_result):
    from agent.composition.compose import compose
    from agent.io.publish import Publisher

    rgb, r = astronaut_result
    pixels, *_ = compose(rgb, r.jobs)
    assert not isinstance(pixels, AnonymizedFrame)
    with pytest.raises(TypeError):
        Publisher.encode(None, pixels)
