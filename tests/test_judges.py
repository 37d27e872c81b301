"""The second judges (tools.judges): offline and fast. The fetched models are only used when cached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.datasets import EMOTIONS
from tools.judges import (FACE_API_LABELS, JUDGES_CACHE, TO_EMOTIONS, ExpressionJudge, FaceDescriptor,
                          JudgeCacheMissing, equal_error_rate, expression_crop, five_points, load_or_exit)
from tools.judges.descriptor import crop_matrix, descriptor_crop
from tools.judges.expression import pad_to_square, to_input
from tools.judges.metrics import pair_distances, rates_at

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- labels

def test_face_api_labels_map_onto_the_project_emotions():
    assert [FACE_API_LABELS[i] for i in TO_EMOTIONS] == [
        "angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]
    assert sorted(TO_EMOTIONS.tolist()) == list(range(7))


def test_probabilities_come_out_in_emotions_order():
    judge = ExpressionJudge.__new__(ExpressionJudge)
    judge.net_probabilities = lambda crops: np.eye(7, dtype=np.float32)  # row k: face-api's class k
    p = judge.probabilities([None] * 7)
    for k, label in enumerate(FACE_API_LABELS):
        assert EMOTIONS[int(np.argmax(p[k]))].startswith(label[:4])  # disgust/disgusted, fear/fearful...
    assert judge.labels_of([None] * 7)[FACE_API_LABELS.index("happy")] == "happy"


# ---------------------------------------------------------------- equal error rate

def test_eer_of_separated_scores_is_zero_with_a_threshold_between_them():
    eer, thr = equal_error_rate([0.1, 0.2, 0.3], [0.7, 0.8, 0.9])
    assert eer == 0.0 and 0.3 <= thr < 0.7


def test_eer_of_two_gaussians_matches_theory():
    rng = np.random.default_rng(0)
    genuine, impostor = rng.normal(0, 1, 40000), rng.normal(2, 1, 40000)
    eer, thr = equal_error_rate(genuine, impostor)
    assert eer == pytest.approx(0.1587, abs=0.006)  # Phi(-1): the crossing is halfway, at 1
    assert thr == pytest.approx(1.0, abs=0.03)
    r = rates_at(genuine, impostor, thr)
    assert abs(r["far"] - r["frr"]) < 0.01


def test_eer_by_hand():
    # threshold 0.5: genuine 0.6 rejected (1/4), impostor 0.4 accepted (1/4)
    eer, thr = equal_error_rate([0.1, 0.2, 0.3, 0.6], [0.4, 0.7, 0.8, 0.9])
    assert eer == pytest.approx(0.25) and thr in (0.3, 0.4)
    with pytest.raises(ValueError):
        equal_error_rate([], [1.0])


def test_pair_distances_split_genuine_and_impostor():
    desc = np.array([[0, 0], [0, 1], [3, 0], [3, 1]], float)
    genuine, impostor = pair_distances(desc, ["a", "a", "b", "b"])
    assert sorted(genuine) == [1, 1] and len(impostor) == 4 and min(impostor) == 3


# ---------------------------------------------------------------- missing cache

def test_missing_cache_is_a_clear_error(tmp_path):
    for cls in (FaceDescriptor, ExpressionJudge):
        with pytest.raises(JudgeCacheMissing, match="run python -m tools.judges fetch"):
            cls(tmp_path)
    with pytest.raises(SystemExit) as exc:
        load_or_exit(FaceDescriptor, tmp_path)
    assert exc.value.code == 2


def test_a_changed_model_file_counts_as_missing(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    entry = {"onnx": "x.onnx", "onnx_sha256": "0" * 64, "input": {"name": "i"}, "output": {"name": "o", "shape": [1, 7]}}
    (tmp_path / "judges.json").write_text(json.dumps({"judges": {"expression": entry}}))
    with pytest.raises(JudgeCacheMissing, match="differs"):
        ExpressionJudge(tmp_path)
    with pytest.raises(JudgeCacheMissing, match="no judge 'descriptor'"):
        FaceDescriptor(tmp_path)


def test_cli_without_cache_says_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.judges", "measure", "--cache", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "run python -m tools.judges fetch" in lines[0]


# ---------------------------------------------------------------- crops and inputs

def _face_points(angle_deg: float = 0.0, centre=(100.0, 120.0), iod: float = 40.0):
    """Five points (eye, eye, nose, mouth, mouth) of an upright face, turned by angle_deg about its centre."""
    pts = np.array([[-iod / 2, 0], [iod / 2, 0], [0, 22], [-16, 45], [16, 45]], float)
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return pts @ rot.T + centre


def test_descriptor_crop_is_upright_whatever_the_roll_and_eye_order():
    for angle in (0, 25, -40):
        for pts in (_face_points(angle), _face_points(angle)[[1, 0, 2, 4, 3]]):
            m = crop_matrix(pts)
            p = pts @ m[:, :2].T + m[:, 2]
            assert abs(p[0, 1] - p[1, 1]) < 1e-6  # eyes level
            assert p[3:, 1].mean() > p[:2, 1].mean()  # mouth below the eyes
            assert abs(p[:2, 0].mean() - 112) < 1e-6  # centred across


def test_five_points_from_dlib_68_and_mediapipe_478():
    lm68 = np.zeros((68, 2))
    lm68[36:42], lm68[42:48], lm68[30], lm68[48], lm68[54] = (10, 20), (50, 20), (30, 40), (15, 60), (45, 60)
    np.testing.assert_allclose(five_points(lm68), [[10, 20], [50, 20], [30, 40], [15, 60], [45, 60]])
    lm478 = np.random.default_rng(0).random((478, 3))
    assert five_points(lm478).shape == (5, 2)
    with pytest.raises(ValueError):
        five_points(np.zeros((10, 2)))


def test_descriptor_crop_from_a_box_and_its_size():
    img = np.zeros((200, 200, 3), np.uint8)
    img[80:120, 80:120] = 255
    crop = descriptor_crop(img, box=(80, 80, 120, 120))
    assert crop.shape == (224, 224, 3)
    assert crop[112, 112].tolist() == [255, 255, 255] and crop[5, 5].tolist() == [0, 0, 0]


def test_expression_crop_pads_and_squares():
    img = np.full((100, 200, 3), 200, np.uint8)
    crop = expression_crop(img, (50, 10, 150, 60))  # 100 x 50 box -> 120 x 60 crop -> 120 x 120 padded
    assert crop.shape == (120, 120, 3)
    assert crop[0, 60].tolist() == [0, 0, 0] and crop[60, 60].tolist() == [200, 200, 200]
    assert pad_to_square(np.ones((3, 5), np.uint8)).shape == (5, 5)


def test_expression_input_is_mean_subtracted_and_scaled():
    x = to_input([np.full((48, 48), 128, np.uint8)])
    assert x.shape == (1, 112, 112, 3)
    np.testing.assert_allclose(x[0, 50, 50], (128 - np.array([122.782, 117.001, 104.298])) / 255, atol=1e-6)


# ---------------------------------------------------------------- the face-api graph, on made-up weights

def _fake_manifest(rng):
    specs, blobs = [], []

    def add(name, shape, quantized=True):
        n = int(np.prod(shape))
        if quantized:
            specs.append({"name": name, "shape": shape, "dtype": "float32",
                          "quantization": {"dtype": "uint8", "scale": 0.004, "min": -0.5}})
            blobs.append(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        else:
            specs.append({"name": name, "shape": shape, "dtype": "float32"})
            blobs.append((rng.standard_normal(n).astype(np.float32) * 0.1).tobytes())

    cin = 3
    for i, cout in enumerate((32, 64, 128, 256)):
        for j in range(4):
            if i == 0 and j == 0:
                add("dense0/conv0/filters", [3, 3, 3, 32])
            else:
                c = cin if j == 0 else cout
                add(f"dense{i}/conv{j}/depthwise_filter", [3, 3, c, 1])
                add(f"dense{i}/conv{j}/pointwise_filter", [1, 1, c, cout])
            add(f"dense{i}/conv{j}/bias", [cout], quantized=False)
        cin = cout
    add("fc/weights", [256, 7])
    add("fc/bias", [7], quantized=False)
    return [{"paths": ["x.bin"], "weights": specs}], b"".join(blobs)


def test_face_api_graph_builds_and_runs_on_made_up_weights():
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from tools.judges.face_api_onnx import INPUT, OUTPUT, build, read_weights

    manifest, data = _fake_manifest(np.random.default_rng(0))
    w = read_weights(manifest, data)
    assert w["fc/weights"].shape == (256, 7) and w["fc/weights"].min() >= -0.5 and w["fc/weights"].max() <= -0.5 + 255 * 0.004 + 1e-6
    model = build(manifest, data)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    p = s.run([OUTPUT], {INPUT: np.random.default_rng(1).standard_normal((2, 112, 112, 3)).astype(np.float32)})[0]
    assert p.shape == (2, 7)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError):
        read_weights(manifest, data + b"\0")


# ---------------------------------------------------------------- the fetched models (skipped without the cache)

def _have_cache() -> bool:
    return (JUDGES_CACHE / "judges.json").is_file()


@pytest.mark.skipif(not _have_cache(), reason="judges not fetched (python -m tools.judges fetch)")
def test_descriptor_separates_very_different_inputs():
    rng = np.random.default_rng(0)
    a = (rng.random((28, 28, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    a_noisy = np.clip(a + rng.normal(0, 4, a.shape), 0, 255).astype(np.uint8)
    b = np.zeros_like(a)
    b[:, :112] = 255
    d = FaceDescriptor().embed([a, a_noisy, b])
    assert d.shape == (3, 1024)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    assert np.linalg.norm(d[0] - d[1]) < 0.5 * np.linalg.norm(d[0] - d[2])


@pytest.mark.skipif(not _have_cache(), reason="judges not fetched (python -m tools.judges fetch)")
def test_expression_judge_gives_distributions():
    p = ExpressionJudge().probabilities([np.full((48, 48), 100, np.uint8), np.zeros((80, 60, 3), np.uint8)])
    assert p.shape == (2, 7)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
