"""Identity normalization of the conditioning geometry (agent/synthesis/shape.py) on the shipped shape model."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from configs import config, manifest

from agent.detection.landmarks import FaceAnalyzer
from agent.errors import ModelError
from agent.expression.bank import EXPRESSION_BANK, ExpressionBank
from agent.pipeline import Anonymizer
from agent.synthesis.align import alignment_matrix, transform_points
from agent.synthesis.render import RENDERED_INDICES
from agent.synthesis.shape import SHAPE_MODEL, ShapeNormalizer
from agent.types import BLENDSHAPES, blendshape_vector

UPPER_LIP, LOWER_LIP = 13, 14  # inner lip midpoints in the 478-point mesh


@pytest.fixture(scope="module")
def face_and_crop():
    with FaceAnalyzer(max_faces=1) as fa:
        face = fa.detect(skimage.data.astronaut())[0]
    return face, transform_points(alignment_matrix(face.landmarks), face.landmarks)


def row(index):
    return int(np.searchsorted(RENDERED_INDICES, index))


def test_full_strength_ignores_the_persons_own_shape(face_and_crop):
    face, crop = face_and_crop
    norm = ShapeNormalizer(1.0)
    other = crop + np.random.default_rng(0).normal(0, 3, crop.shape)  # another person's proportions
    assert np.array_equal(norm(crop, face), norm(other, face))
    assert norm(crop, face).shape == (len(RENDERED_INDICES), 2)
    # Still the same face in the same place: an average shape, a few pixels from the real one.
    assert 0.3 < np.linalg.norm(norm(crop, face) - crop[RENDERED_INDICES], axis=1).mean() < 8


def test_zero_strength_is_the_persons_own_shape(face_and_crop):
    face, crop = face_and_crop
    assert np.allclose(ShapeNormalizer(0.0)(crop, face), crop[RENDERED_INDICES])


def test_expression_drives_the_shape(face_and_crop):
    face, crop = face_and_crop
    norm = ShapeNormalizer(1.0)
    closed = norm(crop, type(face)(face.landmarks, dict(face.blendshapes, jawOpen=0.0), face.transform))
    opened = norm(crop, type(face)(face.landmarks, dict(face.blendshapes, jawOpen=0.8), face.transform))

    def gap(p):
        return p[row(LOWER_LIP), 1] - p[row(UPPER_LIP), 1]

    assert gap(opened) > gap(closed) + 3  # pixels of the 128 px crop


def test_pipeline_changes_only_what_the_generator_sees(face_and_crop):
    img = skimage.data.astronaut()
    jobs = {}
    for s in (0.0, 1.0):
        a = Anonymizer(config(), manifest=manifest(generator={"identity_normalization": s}))
        try:
            jobs[s] = a.process(img).jobs[0]
        finally:
            a.close()
    assert np.array_equal(jobs[0.0].crop_landmarks, jobs[1.0].crop_landmarks)  # same replaced region
    assert np.abs(jobs[0.0].conditioning.astype(int) - jobs[1.0].conditioning).sum() > 0


def test_missing_or_tampered_shape_model_is_refused(tmp_path):
    (tmp_path / SHAPE_MODEL).write_bytes(b"not a model")
    (tmp_path / EXPRESSION_BANK).write_bytes(b"not a bank")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  {SHAPE_MODEL}\n{'0' * 64}  {EXPRESSION_BANK}\n")
    with pytest.raises(ModelError):
        ShapeNormalizer(1.0, tmp_path)
    with pytest.raises(ModelError):
        ExpressionBank(tmp_path)
    with pytest.raises(ValueError):
        ShapeNormalizer(1.5)
    with pytest.raises(ValueError):
        ShapeNormalizer(1.0, expression_neighbours=-1)


def test_expression_bank_draws_other_peoples_expressions(face_and_crop):
    """k-Same-Select: the drawn expression is a mean of stored group means with her emotion and gaze,
    never the person's own blendshapes."""
    face, crop = face_and_crop
    bank = ExpressionBank()
    assert bank.min_group >= 4 and len(bank.centroids) > 1000
    own = blendshape_vector(face.blendshapes)
    pooled = bank.pool(own, 4)
    assert pooled.shape == own.shape and not np.allclose(pooled, own, atol=1e-3)
    # Still her expression: the astronaut smiles, and along the matching axes (emotion and gaze) the
    # pooled expression is nearer hers than almost every stored one.
    smile = [BLENDSHAPES.index("mouthSmileLeft"), BLENDSHAPES.index("mouthSmileRight")]
    assert pooled[smile].mean() > 0.5
    d_pooled = np.linalg.norm(bank.match_key(pooled) - bank.match_key(own))
    assert (np.linalg.norm(bank.keys - bank.match_key(own), axis=1) > d_pooled).mean() > 0.99
    # The drawn face looks where she looks.
    gaze = [i for i, name in enumerate(BLENDSHAPES) if name.startswith("eyeLook")]
    for look in ("eyeLookOutLeft", "eyeLookInLeft"):
        turned = own.copy()
        turned[gaze] = 0.0
        turned[BLENDSHAPES.index(look)] = 0.8
        assert bank.pool(turned, 4)[BLENDSHAPES.index(look)] > 0.4
    # Smooth in the input: a tiny change of expression moves the drawn one by about as little.
    nudged = own + np.random.default_rng(0).normal(0, 1e-3, own.shape)
    assert np.linalg.norm(bank.pool(nudged, 4) - pooled) < 0.05


def test_expression_neighbours_change_only_the_drawn_expression(face_and_crop):
    face, crop = face_and_crop
    own, pooled = ShapeNormalizer(1.0), ShapeNormalizer(1.0, expression_neighbours=4)
    assert not np.allclose(own(crop, face), pooled(crop, face))
    # The pooled face still opens its mouth when the person does.
    closed = pooled(crop, type(face)(face.landmarks, dict(face.blendshapes, jawOpen=0.0), face.transform))
    opened = pooled(crop, type(face)(face.landmarks, dict(face.blendshapes, jawOpen=0.8), face.transform))
    assert opened[row(LOWER_LIP), 1] - opened[row(UPPER_LIP), 1] > closed[row(LOWER_LIP), 1] - closed[row(UPPER_LIP), 1] + 2


def test_random_identity_shapes_per_track_and_reproducible(face_and_crop):
    """identity_variation: each face on a random plausible face shape, kept per track, reproducible with a seed."""
    from dataclasses import replace

    from agent.synthesis.synthesizer import Synthesizer

    face, crop = face_and_crop
    norm = ShapeNormalizer(1.0)
    assert norm.identity_dims > 0, "the shipped shape model carries the training identities' shape directions"
    base = norm(crop, face)
    assert np.allclose(norm(crop, face, np.zeros(norm.identity_dims)), base)
    one_sd = np.zeros(norm.identity_dims)
    one_sd[0] = 1.0
    assert 0.3 < np.linalg.norm(norm(crop, face, one_sd) - base, axis=1).mean() < 10  # another face, same place

    def drawn(synth, f):
        return synth.condition(synth.prepare(f))

    synth = Synthesizer(None, shape=norm, identity_variation=1.0, seed=7)
    first, second, untracked = replace(face, track_id=1), replace(face, track_id=2), replace(face, track_id=None)
    a = drawn(synth, first)
    assert np.array_equal(drawn(synth, first), a), "a tracked face keeps its synthetic person"
    assert not np.array_equal(drawn(synth, second), a)
    assert not np.array_equal(drawn(synth, untracked), drawn(synth, untracked))
    assert np.array_equal(drawn(Synthesizer(None, shape=norm, identity_variation=1.0, seed=7), first), a)
    assert np.array_equal(drawn(Synthesizer(None, shape=norm), first), drawn(Synthesizer(None, shape=norm), untracked))
