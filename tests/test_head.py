"""The whole-head path: a head generator redraws the head (hair, ears, outline) from the conditioning and
the head's surroundings. The generator here is an untrained one exported by the project's own tools, so
the test checks the path, not the looks: which pixels are replaced and what the generator is shown."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import skimage.data
from configs import config

torch = pytest.importorskip("torch", reason="exporting a head generator needs the 'train' extra")

from agent.detection.landmarks import FaceAnalyzer  # noqa: E402
from agent.pipeline import Anonymizer  # noqa: E402
from agent.runtime.manifest import load_manifest  # noqa: E402
from agent.synthesis.head import HEAD_SIZE, generator_input, head_geometry  # noqa: E402
from agent.synthesis.render import render_conditioning  # noqa: E402


@pytest.fixture(scope="module")
def head_models(tmp_path_factory):
    """A copy of the shipped models with an (untrained, FP32) head generator beside them, checksummed."""
    from tools.export_generator import export_onnx
    from tools.generator_model import EdgeGenerator, for_export
    from tools.model_files import update_sums

    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(load_manifest().folder, folder, dirs_exist_ok=True)
    torch.manual_seed(0)
    export_onnx(for_export(EdgeGenerator(in_ch=7).eval()), folder / "head-test.onnx", size=HEAD_SIZE, in_ch=7)
    update_sums(folder, ["head-test.onnx"])
    return folder


@pytest.fixture(scope="module")
def astronaut():
    rgb = np.ascontiguousarray(skimage.data.astronaut())
    with FaceAnalyzer(max_faces=1) as fa:
        (face,) = fa.detect(rgb)
    return rgb, face


def test_the_generator_never_sees_the_head(astronaut):
    import cv2

    rgb, face = astronaut
    m, crop_landmarks, region = head_geometry(face.landmarks)
    x = generator_input(rgb, m, region, render_conditioning(crop_landmarks, HEAD_SIZE))
    assert x.shape == (7, HEAD_SIZE, HEAD_SIZE)
    head = region >= 1.0
    assert head.mean() > 0.2 and np.all(x[3:6][:, head] == 0), "no pixel of the head reaches the generator"
    assert np.abs(x[3:6][:, region == 0]).mean() > 0.05, "its surroundings do"
    # Repainting the head (hair, face) changes nothing the generator is given.
    inner = cv2.erode(head.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(np.float32)
    repainted = rgb.copy()
    repainted[cv2_inverse_mask(m, inner, rgb.shape)] = 0
    blank = np.zeros((HEAD_SIZE, HEAD_SIZE, 3), np.uint8)
    np.testing.assert_array_equal(generator_input(repainted, m, region, blank)[3:], x[3:])


def cv2_inverse_mask(m, region, shape):
    import cv2

    inv = cv2.invertAffineTransform(m)
    return cv2.warpAffine((region > 0.5).astype(np.uint8), inv, (shape[1], shape[0]), flags=cv2.INTER_NEAREST) > 0


def test_the_head_region_is_replaced_and_the_scene_kept(astronaut, head_models):
    rgb, face = astronaut
    cfg = config(inference={"models_dir": str(head_models)})
    manifest = load_manifest(head_models).override(generator={"head": "head-test"})
    a = Anonymizer(cfg, manifest=manifest)
    try:
        r = a.process(rgb)
    finally:
        a.close()
    assert r.frame.faces_replaced == 1 and r.frame.faces_masked == 0 and not r.frame.covered
    (job,) = r.jobs
    assert job.size == HEAD_SIZE and job.region is not None and job.generated.shape == (HEAD_SIZE, HEAD_SIZE, 3)
    changed = np.abs(r.frame.pixels.astype(int) - rgb).max(axis=2) > 0
    head = cv2_inverse_mask(job.matrix, job.region, rgb.shape)
    # The whole head is redrawn: the hair above the face oval as well as the face.
    x0, y0, x1, y1 = (int(v) for v in face.box)
    hair = head[: max(y0 - 5, 0)]
    assert hair.sum() > 500 and changed[: max(y0 - 5, 0)][hair].mean() > 0.95
    assert changed[head].mean() > 0.95
    # Far from the head nothing moves.
    far = np.ones_like(changed)
    far[max(y0 - 150, 0):y1 + 80, max(x0 - 120, 0):x1 + 120] = False
    assert not changed[far].any()


def test_faces_drawn_over_the_synthetic_head(astronaut, head_models):
    """face_over_head: the head generator redraws hair and outline, then the face generators (with
    their emotion routing and texture) draw the face oval over it."""
    from agent.synthesis.align import CROP_SIZE

    rgb, face = astronaut
    cfg = config(inference={"models_dir": str(head_models)})
    runs = {}
    variants = {"heads": {"head": "head-test"}, "layered": {"head": "head-test", "face_over_head": True}}
    for name, generator in variants.items():
        a = Anonymizer(cfg, manifest=load_manifest(head_models).override(generator=generator))
        try:
            for synthesizer in a.synthesizers():
                synthesizer.warm_up()  # what a stream's start does, with each generator's own input
            runs[name] = (a.process(rgb), len(a.synthesizers()))
        finally:
            a.close()
    (heads, n_heads), (layered, n_layered) = runs["heads"], runs["layered"]
    assert (n_heads, n_layered) == (1, 2)
    assert layered.frame.faces_replaced == 1 and layered.frame.faces_masked == 0 and not layered.frame.covered
    (job,) = layered.jobs
    assert job.size == CROP_SIZE and job.region is None and job.generator is not None, "the face layer is routed"
    (head_job,) = heads.jobs
    head = cv2_inverse_mask(head_job.matrix, head_job.region, rgb.shape)
    oval = cv2_inverse_mask(job.matrix, _oval_mask(job), rgb.shape)
    out, head_only = layered.frame.pixels.astype(int), heads.frame.pixels.astype(int)
    hair = head & ~cv2_inverse_mask(job.matrix, _oval_mask(job, grow=24), rgb.shape)
    assert hair.sum() > 500
    # Beyond the face layer's feathered edge, the layered frame is the head generator's head, pixel for pixel.
    assert np.abs(out - head_only).max(axis=2)[hair].mean() < 1
    assert (np.abs(out - rgb).max(axis=2)[hair] > 0).mean() > 0.95
    # Inside the oval the face generator drew, not the head generator.
    assert np.abs(out - head_only).max(axis=2)[oval].mean() > 20


def _oval_mask(job, grow: int = 0):
    import cv2

    from agent.synthesis.topology import FACE_OVAL_POLYGON

    mask = np.zeros((job.size, job.size), np.uint8)
    cv2.fillPoly(mask, [np.round(job.crop_landmarks[FACE_OVAL_POLYGON]).astype(np.int32)], 1)
    if grow:
        mask = cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return mask.astype(np.float32)
