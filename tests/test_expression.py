"""Expression metadata: emotion classifier, per-face objects, schema, and `anoncam analyze`.

Offline, real models, scikit-image's public-domain astronaut (a smiling face) as the fixture.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
from configs import config, manifest
from skimage import data

from agent.config import Config, ExpressionConfig, load_config
from agent.detection.landmarks import FaceAnalyzer
from agent.errors import ConfigError, ModelError
from agent.expression.bank import ExpressionBank
from agent.expression.classifier import CROP_SIZE, EmotionClassifier, grey_crop
from agent.expression.metadata import (
    META_SCHEMA,
    BlendshapeReport,
    ExpressionAnalyzer,
    schema,
)
from agent.expression.smoothing import TrackSmoother
from agent.types import BLENDSHAPES as BLENDSHAPE_NAMES
from agent.types import EMOTIONS

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = jsonschema.Draft202012Validator(schema())


@pytest.fixture(scope="module")
def astronaut():
    rgb = data.astronaut()
    with FaceAnalyzer(max_faces=4, mode="image") as fa:
        faces = fa.detect(rgb)
    assert len(faces) == 1
    return rgb, faces


@pytest.fixture(scope="module")
def analyzer():
    return ExpressionAnalyzer(config())


def _message(faces, path="x.png"):
    return {"schema": META_SCHEMA, "path": path, "faces": faces}


def test_schema_is_valid_draft_2020_12_and_versioned():
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["properties"]["schema"]["const"] == META_SCHEMA
    face = schema()["$defs"]["face"]
    assert set(face["properties"]["blendshapes"]["oneOf"][0]["required"]) == set(BLENDSHAPE_NAMES)
    assert len(BLENDSHAPE_NAMES) == 52


def test_schema_rejects_incomplete_faces(analyzer, astronaut):
    rgb, faces = astronaut
    good = analyzer.describe(rgb, faces)[0]
    VALIDATOR.validate(_message([good]))
    no_schema = {"path": "x", "faces": [good]}
    assert not VALIDATOR.is_valid(no_schema)
    short = dict(good, blendshapes={k: v for k, v in list(good["blendshapes"].items())[:51]})
    assert not VALIDATOR.is_valid(_message([short]))
    # A null field must be explained by "missing".
    unexplained = dict(good, blendshapes=None)
    assert not VALIDATOR.is_valid(_message([unexplained]))
    bad_label = dict(good, emotion={"label": "contempt", "scores": good["emotion"]["scores"]})
    assert not VALIDATOR.is_valid(_message([bad_label]))


def test_describe_astronaut(analyzer, astronaut):
    rgb, faces = astronaut
    (face,) = analyzer.describe(rgb, faces)
    VALIDATOR.validate(_message([face]))
    assert face["emotion"]["label"] == "happy"  # she is smiling: a check that the model holds up off FER
    scores = face["emotion"]["scores"]
    assert list(scores) == list(EMOTIONS)
    assert abs(sum(scores.values()) - 1) < 1e-3
    assert list(face["blendshapes"]) == list(BLENDSHAPE_NAMES)
    assert face["blendshapes"]["mouthSmileLeft"] > 0.5
    assert set(face["head_pose"]) == {"yaw", "pitch", "roll"}
    assert abs(face["head_pose"]["yaw"]) < 20  # she faces the camera
    x0, y0, x1, y1 = face["box"]
    assert 0 <= x0 < x1 <= rgb.shape[1] and 0 <= y0 < y1 <= rgb.shape[0]
    assert face["track_id"] is None and "missing" not in face and "expression_kept" not in face


def test_published_blendshapes_are_pooled_unless_raw_is_asked_for(astronaut):
    _, faces = astronaut
    own = faces[0].blendshapes
    raw = ExpressionAnalyzer(config(experimental={"raw_blendshapes": True})).blendshapes(faces[0])
    assert raw == {k: round(own[k], 4) for k in BLENDSHAPE_NAMES}
    pooled = ExpressionAnalyzer(config()).blendshapes(faces[0])  # the default
    assert list(pooled) == list(BLENDSHAPE_NAMES) and pooled != raw
    # What is published is a mix of the bank's group means, not the person's own values...
    bank = ExpressionBank()
    vec = np.array([own[k] for k in BLENDSHAPE_NAMES])
    near = bank.centroids[np.argsort(np.linalg.norm(bank.keys - bank.match_key(vec), axis=1))[:4]]
    got = np.array(list(pooled.values()))
    assert np.all(got >= near.min(0) - 1e-4) and np.all(got <= near.max(0) + 1e-4)
    # ...and still her expression: a broad smile.
    assert pooled["mouthSmileLeft"] > 0.5 and pooled["mouthSmileRight"] > 0.5
    one = ExpressionAnalyzer(config(), manifest(emotion={"blendshape_neighbours": 1})).blendshapes(faces[0])
    assert np.allclose(list(one.values()), near[0], atol=1e-4)  # snapped to the nearest group mean


def test_blendshape_options_are_validated_and_the_bank_is_checked(astronaut, tmp_path):
    p = tmp_path / "agent.yaml"
    for bad in ("expression:\n  blendshapes: raw", "experimental:\n  raw_blendshapes: maybe"):
        p.write_text(bad + "\n")
        with pytest.raises(ConfigError, match="blendshapes"):
            load_config(p)
    with pytest.raises(ModelError, match="blendshape_neighbours"):
        manifest(emotion={"blendshape_neighbours": 0})
    with pytest.raises(ModelError, match="expression_bank.npz cannot be checked"):
        ExpressionBank(tmp_path)
    (tmp_path / "SHA256SUMS").write_text("")
    with pytest.raises(ModelError, match="expression_bank.npz has no entry"):
        ExpressionBank(tmp_path)
    assert BlendshapeReport(None)(astronaut[1][0]) is not None  # raw blendshapes need no bank


def test_face_without_blendshapes_is_flagged_and_still_classified(analyzer, astronaut):
    rgb, faces = astronaut
    bare = [replace(faces[0], blendshapes=None)]
    (face,) = analyzer.describe(rgb, bare)
    VALIDATOR.validate(_message([face]))
    assert face["blendshapes"] is None
    assert face["missing"] == ["blendshapes"]
    assert face["head_pose"] is not None
    assert face["emotion"]["label"] == "happy"  # from the crop alone

    no_pose = [replace(faces[0], blendshapes=None, transform=None)]
    (face,) = analyzer.describe(rgb, no_pose)
    VALIDATOR.validate(_message([face]))
    assert face["missing"] == ["blendshapes", "head_pose"] and face["head_pose"] is None


def test_face_that_cannot_be_aligned_has_no_emotion_but_the_rest(analyzer, astronaut):
    rgb, faces = astronaut
    flat = faces[0].landmarks.copy()
    flat[:, :2] = flat[:, :2].mean(axis=0)  # every landmark on one point: no alignment exists
    out = analyzer.describe(rgb, [replace(faces[0], landmarks=flat), faces[0]])
    VALIDATOR.validate(_message(out))
    assert out[0]["emotion"] is None and out[0]["missing"] == ["emotion"]
    assert len(out[0]["blendshapes"]) == 52
    assert out[1]["emotion"]["label"] == "happy"  # the other face is unaffected
    assert not VALIDATOR.is_valid(_message([dict(out[1], emotion=None)]))


def test_no_faces_gives_empty_list(analyzer):
    assert analyzer.describe(data.coffee(), []) == []
    VALIDATOR.validate(_message([]))


def test_16_bit_input_matches_8_bit(analyzer, astronaut):
    rgb, faces = astronaut
    a = analyzer.describe(rgb, faces)[0]["emotion"]["scores"]
    b = analyzer.describe(rgb.astype(np.uint16) * 257, faces)[0]["emotion"]["scores"]
    assert a == b


def test_both_backends_load_int8_classifier_and_agree(astronaut):
    rgb, faces = astronaut
    # Several different real crops: the face, its mirror, rotated and darker copies of the frame.
    crops = [grey_crop(rgb, faces[0].landmarks)]
    crops.append(crops[0][:, ::-1])
    h, w = rgb.shape[:2]
    for angle in (-12, 12):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        lm = faces[0].landmarks[:, :2] @ m[:, :2].T + m[:, 2]
        crops.append(grey_crop(cv2.warpAffine(rgb, m, (w, h)), lm))
    crops.append(grey_crop((rgb * 0.5).astype(np.uint8), faces[0].landmarks))
    crops = np.ascontiguousarray(np.stack(crops))
    assert crops.shape == (5, CROP_SIZE, CROP_SIZE)
    probs = {}
    for kind in ("onnxruntime", "openvino"):
        clf = EmotionClassifier(config(kind).inference)
        assert clf.backend.name == kind
        probs[kind] = clf.probabilities(crops)
    assert probs["onnxruntime"].shape == (5, 7)
    np.testing.assert_array_equal(probs["onnxruntime"].argmax(1), probs["openvino"].argmax(1))
    assert np.abs(probs["onnxruntime"] - probs["openvino"]).max() < 0.1
    assert (probs["openvino"].argmax(1) == EMOTIONS.index("happy")).all()


def test_expression_kept_on_anonymized_faces(astronaut):
    from agent.pipeline import Anonymizer

    rgb, _ = astronaut
    anonymizer = Anonymizer(config(), mode="image")
    try:
        analysis = anonymizer.analyze_all(rgb)
        faces = analysis.faces
        _, jobs, _ = anonymizer.anonymize(rgb, analysis)
    finally:
        anonymizer.close()
    ea = ExpressionAnalyzer(config("openvino"))
    (face,) = ea.describe(rgb, faces, jobs)
    VALIDATOR.validate(_message([face]))
    assert isinstance(face["expression_kept"], bool)
    assert face["expression_kept"] == (face["anonymized_emotion"]["label"] == face["emotion"]["label"])
    assert ea.agreement["checked"] == 1 and ea.agreement["kept"] == int(face["expression_kept"])

    # A face the pipeline had to mask has nothing to compare.
    jobs[0].generated = None
    (masked,) = ea.describe(rgb, faces, jobs)
    VALIDATOR.validate(_message([masked]))
    assert masked["expression_kept"] is None and masked["anonymized_emotion"] is None
    assert ea.agreement["checked"] == 1
    assert masked["replaced"] is False and faces and "expression_kept" not in ea.describe(rgb, faces)[0]
    with pytest.raises(ValueError, match="one per face"):
        ea.describe(rgb, faces, jobs[:0])


def test_track_smoothing(astronaut):
    rgb, faces = astronaut
    ea = ExpressionAnalyzer(config(expression={"smoothing": 0.5}))
    tracked = [replace(faces[0], track_id=7)]
    first = ea.describe(rgb, tracked)[0]
    assert first["track_id"] == 7
    VALIDATOR.validate(_message([first]))
    # Feed the mirrored frame: raw yaw flips sign, the smoothed yaw lands half way.
    mirrored = rgb[:, ::-1].copy()
    lm = faces[0].landmarks.copy()
    lm[:, 0] = rgb.shape[1] - 1 - lm[:, 0]
    t = faces[0].transform.copy()
    flip = np.diag([-1.0, 1.0, 1.0]).astype(np.float32)
    t[:3, :3] = flip @ t[:3, :3] @ flip
    raw = ExpressionAnalyzer(config()).describe(mirrored, [replace(faces[0], landmarks=lm, transform=t)])[0]
    second = ea.describe(mirrored, [replace(faces[0], landmarks=lm, transform=t, track_id=7)])[0]
    assert second["head_pose"]["yaw"] == pytest.approx((first["head_pose"]["yaw"] + raw["head_pose"]["yaw"]) / 2, abs=0.02)
    for c in EMOTIONS:
        assert second["emotion"]["scores"][c] == pytest.approx((first["emotion"]["scores"][c] + raw["emotion"]["scores"][c]) / 2, abs=2e-4)


def test_smoother_angles_wrap_and_old_tracks_expire():
    s = TrackSmoother(alpha=0.5, max_age=2)
    p = np.full(7, 1 / 7)
    s.update(1, p, {"yaw": 170.0, "pitch": 0.0, "roll": 0.0})
    _, pose = s.update(1, p, {"yaw": -170.0, "pitch": 0.0, "roll": 0.0})
    assert abs(abs(pose["yaw"]) - 180.0) < 1e-6  # the short way round, not through 0
    for _ in range(4):
        s.step()
    _, pose = s.update(1, p, {"yaw": 10.0, "pitch": 0.0, "roll": 0.0})
    assert pose["yaw"] == 10.0  # forgotten track starts afresh


def test_config_section():
    assert isinstance(Config().expression, ExpressionConfig)


def test_config_rejects_bad_expression_keys(tmp_path):
    p = tmp_path / "agent.yaml"
    p.write_text("expression:\n  smoothing: 0.7\n  classifer: x\n")
    with pytest.raises(ConfigError, match="expression.classifer"):
        load_config(p)
    p.write_text("expression:\n  smoothing: 0.7\ninference:\n  backend: openvino\n")
    assert load_config(p).expression.smoothing == 0.7


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "agent.commands.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_analyze_cli_json_folder(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "sub" / "coffee.jpg"), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    (folder / "sub" / "broken.png").write_bytes(b"\x89PNG truncated")
    r = _cli("analyze", str(folder), "--json")
    assert r.returncode == 1, r.stderr  # one unreadable file: the others are still analysed
    assert "broken.png" in r.stderr and "not a readable" in r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    msgs = [json.loads(line) for line in lines]
    for m in msgs:
        VALIDATOR.validate(m)
        assert m["schema"] == META_SCHEMA
    by_name = {Path(m["path"]).name: m for m in msgs}
    assert by_name["coffee.jpg"]["faces"] == []
    (face,) = by_name["astronaut.png"]["faces"]
    assert face["emotion"]["label"] == "happy"
    assert len(face["blendshapes"]) == 52 and face["head_pose"] is not None
    assert by_name["astronaut.png"]["width"] == 512


def test_analyze_cli_single_file_and_errors(tmp_path):
    img = tmp_path / "a.jpg"
    cv2.imwrite(str(img), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    r = _cli("analyze", str(img), "--json", "--backend", "openvino")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.strip().splitlines()
    VALIDATOR.validate(json.loads(line))
    r = _cli("analyze", str(img))
    assert r.returncode == 0 and "happy" in r.stdout and "yaw" in r.stdout
    r = _cli("analyze", str(tmp_path / "missing.png"), "--json")
    assert r.returncode == 2 and "does not exist" in r.stderr and r.stdout == ""


def test_analyze_cli_anonymized_reports_expression_kept(tmp_path):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    r = _cli("analyze", str(img), "--json", "--anonymized")
    assert r.returncode == 0, r.stderr
    msg = json.loads(r.stdout)
    VALIDATOR.validate(msg)
    assert isinstance(msg["faces"][0]["expression_kept"], bool)
    assert "expression kept on" in r.stderr
