"""Emotion routing: each face is drawn by the generator the manifest names for its emotion, read by the
metadata stage's classifier on the real face. Real models throughout; scikit-image's astronaut smiles."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from configs import config, manifest

from agent.errors import ModelError
from agent.pipeline import Anonymizer
from agent.runtime.backends import InferenceBackend, create_backend
from agent.runtime.manifest import load_manifest
from agent.synthesis.render import from_network_output, to_network_input
from agent.types import EMOTIONS


@pytest.fixture(scope="module")
def astronaut():
    return np.ascontiguousarray(skimage.data.astronaut())


def _direct(name: str, conditioning: np.ndarray) -> np.ndarray:
    """The named generator run by hand on one conditioning image."""
    return from_network_output(create_backend("onnxruntime", name).infer(to_network_input(conditioning[None])))[0]


def test_shipped_routes_cover_every_emotion():
    routes = load_manifest().generator.by_emotion
    assert set(routes) == set(EMOTIONS)
    assert {routes[e] for e in ("happy", "neutral")} == {"generator-calm.int8"}


@pytest.mark.parametrize("routes, expected", [
    (None, "generator-calm.int8"),                         # shipped routes: a smile goes to the calm generator
    ({"happy": "generator-expressive.int8"}, "generator-expressive.int8"),
    ({"angry": "generator-expressive.int8"}, "generator.int8"),  # happy not listed: `generator`
])
def test_face_is_drawn_by_the_generator_of_its_emotion(astronaut, routes, expected):
    # Texture off: the face must be exactly what the routed generator drew (tests/test_texture.py adds it).
    m = manifest(generator={"texture_gain": 0.0, **({} if routes is None else {"by_emotion": routes})})
    a = Anonymizer(config(), manifest=m)
    try:
        r = a.process(astronaut)
        loaded = set(a.synthesizer.generators)
    finally:
        a.close()
    (job,) = r.jobs
    assert job.generator == expected and r.frame.faces_replaced == 1
    np.testing.assert_array_equal(job.generated, _direct(expected, job.conditioning))
    assert r.timings_ms["routing_ms"] > 0
    # Only the generators the routes can reach are loaded (each costs ~20 MB).
    g = m.generator
    assert loaded == set(g.by_emotion.values()) | ({g.default} if len(g.by_emotion) < 7 else set())


def test_metadata_reuses_the_routers_reading_of_the_face(astronaut):
    """With the classifier shared (as the daemon does), each real face is classified once per frame."""
    from agent.expression.metadata import ExpressionAnalyzer

    expression = ExpressionAnalyzer(config())
    sizes = []
    infer = expression.classifier.backend.infer
    expression.classifier.backend.infer = lambda batch: sizes.append(len(batch)) or infer(batch)
    a = Anonymizer(config(), emotion_classifier=expression.classifier)
    try:
        r = a.process(astronaut)
        (item,) = expression.describe(astronaut, r.faces, r.jobs)
    finally:
        a.close()
    # flip TTA: 2 inputs for the real face (router), 2 for the synthetic one (metadata), never the real one again.
    assert sizes == [2, 2]
    reference = ExpressionAnalyzer(config()).describe(astronaut, r.faces, r.jobs)[0]
    assert item["emotion"] == reference["emotion"] and item["expression_kept"] == reference["expression_kept"]


def test_empty_routes_use_one_generator(astronaut):
    a = Anonymizer(config(), manifest=manifest(generator={"by_emotion": {}, "texture_gain": 0.0}))
    try:
        r = a.process(astronaut)
        assert a.router is None and a.synthesizer.generators == {}
    finally:
        a.close()
    np.testing.assert_array_equal(r.jobs[0].generated, _direct("generator.int8", r.jobs[0].conditioning))
    assert r.jobs[0].generator is None and r.jobs[0].emotion is None


def test_tracked_face_does_not_switch_generators_on_one_frame():
    a = Anonymizer(config())
    try:
        router = a.router

        def choose(scores, track_ids):
            return [router.route(s) for s in router.read(scores, track_ids)]

        happy, sad = (np.eye(len(EMOTIONS))[EMOTIONS.index(e)] for e in ("happy", "sad"))
        assert choose(np.stack([happy, sad]), [None, None]) == ["generator-calm.int8", "generator-expressive.int8"]
        assert choose(happy[None], [7]) == ["generator-calm.int8"]
        # One sad frame does not outweigh a smiling history; a sustained change does switch.
        assert choose(sad[None], [7]) == ["generator-calm.int8"]
        assert [choose(sad[None], [7])[0] for _ in range(3)][-1] == "generator-expressive.int8"
        # Untracked faces (stills) are never smoothed.
        assert choose(sad[None], [None]) == ["generator-expressive.int8"]
    finally:
        a.close()


def test_routing_failure_falls_back_to_the_default_generator(astronaut, caplog):
    class BrokenClassifier(InferenceBackend):
        """Stands in for a classifier that fails at run time (e.g. an accelerator fault)."""

        def infer(self, batch):
            raise RuntimeError("device lost")

    a = Anonymizer(config(), manifest=manifest(generator={"texture_gain": 0.0}))
    try:
        a.router.classifier.backend = BrokenClassifier("broken")
        r = a.process(astronaut)
    finally:
        a.close()
    # Drawn as a neutral face: still anonymized, only the choice of generator is lost.
    assert r.frame.faces_replaced == 1 and r.jobs[0].generator == "generator-calm.int8"
    np.testing.assert_array_equal(r.jobs[0].generated, _direct("generator-calm.int8", r.jobs[0].conditioning))
    assert "emotion routing failed" in caplog.text


def test_missing_routed_generator_is_refused_at_start():
    with pytest.raises(ModelError, match="generator-nope"):
        Anonymizer(config(), manifest=manifest(generator={"by_emotion": {"sad": "generator-nope.int8"}}))


def test_unknown_emotion_in_the_manifest_is_refused():
    with pytest.raises(ModelError, match="joy"):
        manifest(generator={"by_emotion": {"joy": "generator-calm.int8"}})
