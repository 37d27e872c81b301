"""Expression texture: each emotion's mean shading, added to the synthetic face by the emotion
classifier's scores of the real face. Real models throughout; scikit-image's astronaut smiles."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from configs import config, manifest

from agent.errors import ModelError
from agent.pipeline import Anonymizer
from agent.runtime.backends import InferenceBackend, create_backend
from agent.synthesis.render import from_network_output, to_network_input
from agent.synthesis.texture import EXPRESSION_TEXTURE, ExpressionTexture
from agent.types import EMOTIONS
from tools.fit_expression_texture import (
    choose_gains,
    emotion_textures,
    face_oval,
    texture_sheet,
)
from tools.model_files import update_sums

HAPPY, NEUTRAL = (np.eye(len(EMOTIONS))[EMOTIONS.index(e)] for e in ("happy", "neutral"))


@pytest.fixture(scope="module")
def astronaut():
    return np.ascontiguousarray(skimage.data.astronaut())


@pytest.fixture(scope="module")
def texture():
    return ExpressionTexture()


def _direct(name: str, conditioning: np.ndarray) -> np.ndarray:
    return from_network_output(create_backend("onnxruntime", name).infer(to_network_input(conditioning[None])))[0]


def _run(astronaut, **generator):
    a = Anonymizer(config(), manifest=manifest(generator=generator) if generator else None)
    try:
        return a, a.process(astronaut)
    finally:
        a.close()


def test_textures_keep_only_what_tells_emotions_apart():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(EMOTIONS)), [5, 2, 5, 9, 5, 5, 5])
    crops = rng.normal(100, 3, (len(labels), 12, 12))
    for c in range(len(EMOTIONS)):  # each emotion brightens its own pixel
        crops[labels == c, c, c] += 40
    t, counts = emotion_textures(crops, labels)
    assert counts.tolist() == [5, 2, 5, 9, 5, 5, 5]
    np.testing.assert_allclose(t.sum(0), 0, atol=1e-9)
    for c in range(len(EMOTIONS)):
        assert np.unravel_index(np.argmax(t[c]), t[c].shape) == (c, c)
        assert t[c, c, c] == pytest.approx(40 * 6 / 7, abs=5)
    crops[labels == 3] += 30  # happy faces are brighter overall: that is lighting, not expression
    oval = np.zeros((12, 12))
    oval[2:10, 2:10] = 1
    t, _ = emotion_textures(crops, labels, oval)
    np.testing.assert_allclose((t * oval).sum((1, 2)), 0, atol=1e-9)
    assert np.unravel_index(np.argmax(t[3]), t[3].shape) == (3, 3)
    with pytest.raises(ValueError, match="disgust"):
        emotion_textures(crops[labels != 1], labels[labels != 1])


def test_each_emotion_gets_the_gain_its_own_faces_agree_best_under():
    gains = [0.0, 1.0, 2.0]
    drawn = np.array([0, 0, 0, 3, 3, 5])
    agree = np.array([[0, 0, 1, 1, 1, 1],    # gain 0
                      [1, 0, 1, 1, 0, 1],    # gain 1
                      [1, 1, 1, 0, 0, 1]])   # gain 2
    chosen, rates = choose_gains(agree, drawn, gains)
    assert chosen[0] == 2.0 and chosen[3] == 0.0
    assert chosen[5] == 0.0  # a tie: the smallest gain
    assert chosen[1] == 0.0 and np.isnan(rates[:, 1]).all()  # no faces of disgust: nothing added
    np.testing.assert_allclose(rates[:, 0], [1 / 3, 2 / 3, 1.0])


def test_shipped_textures_are_shading_not_faces(texture):
    t, g = texture.textures, texture.gains
    assert t.shape[0] == len(EMOTIONS) and t.shape[1] == t.shape[2] and g.shape == (len(EMOTIONS),)
    assert (g >= 0).all() and (g <= 6).all() and g.max() > 0
    # Zero mean over the face oval: a texture shades, the tone matcher sets the brightness.
    oval = face_oval(t.shape[1])
    np.testing.assert_allclose((t * oval).sum((1, 2)) / oval.sum(), 0, atol=0.05)
    assert 1 < np.abs(t).max() < 64  # a few tens of grey levels at most
    assert texture_sheet(t, g).shape[1] == len(EMOTIONS) * 3 * t.shape[1]


def test_apply_adds_the_drawn_emotions_texture(texture):
    crop = np.full((128, 128, 3), 120, np.uint8)
    assert texture.apply(crop, HAPPY, 0.0) is crop
    happy = EMOTIONS.index("happy")
    out = texture.apply(crop, HAPPY, 0.5).astype(np.float32)
    expected = np.clip(120 + 0.5 * texture.gains[happy] * texture.at(128)[happy], 0, 255)
    assert np.abs(out[..., 0] - expected).max() <= 1.0
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # brightness only, never colour
    # The face is drawn as its top emotion: a mostly-neutral face gets the neutral texture alone.
    mix = 0.25 * HAPPY + 0.75 * NEUTRAL
    np.testing.assert_array_equal(texture.shading(mix, 64), texture.shading(NEUTRAL, 64))
    bright = texture.apply(np.full((128, 128, 3), 250, np.uint8), HAPPY, 3.0)
    assert bright.dtype == np.uint8 and bright.max() == 255  # clipped, not wrapped
    with pytest.raises(ValueError):
        texture.shading(np.ones(6), 128)
    with pytest.raises(ValueError):
        texture.shading(np.full(7, np.nan), 128)


def test_synthetic_face_gets_its_emotions_shading(astronaut, texture):
    a, r = _run(astronaut)
    (job,) = r.jobs
    assert a.manifest.generator.texture_gain == 1.0 and job.drawn_emotion is not None
    assert EMOTIONS[int(np.argmax(job.drawn_emotion))] == "happy"
    plain = _direct(job.generator, job.conditioning)
    np.testing.assert_array_equal(job.generated, texture.apply(plain, job.drawn_emotion))
    assert np.abs(job.generated.astype(int) - plain).max() > 5
    _, stronger = _run(astronaut, texture_gain=2.0)
    np.testing.assert_array_equal(stronger.jobs[0].generated, texture.apply(plain, job.drawn_emotion, 2.0))


def test_texture_off_draws_the_generators_face(astronaut):
    _, r = _run(astronaut, texture_gain=0.0)
    (job,) = r.jobs
    np.testing.assert_array_equal(job.generated, _direct(job.generator, job.conditioning))


def test_texture_without_routes_reads_the_emotion_but_uses_one_generator(astronaut, texture):
    a, r = _run(astronaut, by_emotion={})
    (job,) = r.jobs
    assert a.router is not None and a.synthesizer.generators == {} and job.generator == "generator.int8"
    np.testing.assert_array_equal(job.generated, texture.apply(_direct("generator.int8", job.conditioning),
                                                              job.drawn_emotion, a.manifest.generator.texture_gain))
    _, r = _run(astronaut, by_emotion={}, texture_gain=0.0)
    assert r.jobs[0].drawn_emotion is None and r.jobs[0].emotion is None


def test_unreadable_emotion_draws_a_neutral_face(astronaut, texture, caplog):
    class BrokenClassifier(InferenceBackend):
        def infer(self, batch):
            raise RuntimeError("device lost")

    a = Anonymizer(config())
    try:
        a.router.classifier.backend = BrokenClassifier("broken")
        r = a.process(astronaut)
    finally:
        a.close()
    (job,) = r.jobs
    assert r.frame.faces_replaced == 1 and "emotion routing failed" in caplog.text
    np.testing.assert_array_equal(job.drawn_emotion, NEUTRAL)
    np.testing.assert_array_equal(job.generated, texture.apply(_direct("generator-calm.int8", job.conditioning),
                                                              NEUTRAL, a.manifest.generator.texture_gain))


def test_tracked_face_is_shaded_by_its_smoothed_emotion():
    a = Anonymizer(config())
    try:
        router = a.router
        sad = np.eye(len(EMOTIONS))[EMOTIONS.index("sad")]
        router.read(HAPPY[None], [3])
        drawn = router.read(sad[None], [3])[0]
        assert 0 < drawn[EMOTIONS.index("sad")] < 0.5 < drawn[EMOTIONS.index("happy")]
        np.testing.assert_array_equal(router.read(sad[None], [None])[0], sad)  # stills: as read
    finally:
        a.close()


def test_missing_or_bad_texture_file_is_refused(tmp_path):
    (tmp_path / EXPRESSION_TEXTURE).write_bytes(b"not textures")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  {EXPRESSION_TEXTURE}\n")
    with pytest.raises(ModelError, match="checksum|sha256"):
        ExpressionTexture(tmp_path)
    other = tmp_path / "six-emotions"  # a folder's SHA256SUMS is read once per process
    other.mkdir()
    np.savez(other / EXPRESSION_TEXTURE, textures=np.zeros((6, 48, 48), np.float32), gains=np.ones(6, np.float32),
             emotions=np.array(EMOTIONS[:6]))
    update_sums(other, [EXPRESSION_TEXTURE])
    with pytest.raises(ModelError, match="fit_expression_texture"):
        ExpressionTexture(other)
    (tmp_path / EXPRESSION_TEXTURE).unlink()
    with pytest.raises(ModelError, match="missing"):
        ExpressionTexture(tmp_path)


def test_texture_gain_is_validated():
    with pytest.raises(ModelError, match="texture_gain"):
        manifest(generator={"texture_gain": -1})
