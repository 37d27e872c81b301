"""tools.evaluate (tools/evaluation/): the metric math on synthetic descriptors, the judges' preprocessing,
the methods built from a config and the models' manifest, the command line, and the judges themselves on
scikit-image's public-domain astronaut (no dataset needed)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml

from agent.config import Config
from agent.runtime.manifest import load_manifest
from agent.types import iou
from tools import evaluate
from tools.evaluation import expression, identity, methods, report


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def test_verification_rate_counts_pairs_under_threshold():
    rng = np.random.default_rng(1)
    orig = rng.normal(size=(4, 128))
    step = _unit(rng.normal(size=128))
    anon = orig + np.array([0.1, 0.59, 0.61, 2.0])[:, None] * step
    assert identity.verification_rate(anon, orig) == pytest.approx(0.5)
    assert identity.verification_rate(anon, orig, threshold=0.7) == pytest.approx(0.75)
    assert np.isnan(identity.verification_rate(np.zeros((0, 128)), np.zeros((0, 128))))


def test_rank1_uses_only_the_other_photos():
    # Identity A's photos: a1 at the origin, a2 far away. B's photo sits between them.
    gallery = np.array([[0.0, 0.0], [10.0, 0.0], [3.0, 0.0]])
    g_ids, g_keys = ["A", "A", "B"], ["a1", "a2", "b1"]
    # The anonymized a1 is unchanged: its own original must not count, so B is its nearest neighbour.
    assert identity.rank1_identification(np.array([[0.0, 0.0]]), ["A"], ["a1"], gallery, g_ids, g_keys) == 0.0
    # Moved close to A's other photo, it is identified.
    assert identity.rank1_identification(np.array([[9.0, 0.0]]), ["A"], ["a1"], gallery, g_ids, g_keys) == 1.0
    q = np.array([[0.0, 0.0], [9.0, 0.0], [3.1, 0.0]])
    assert identity.rank1_identification(q, ["A", "A", "B"], ["a1", "x", "b1"], gallery, g_ids, g_keys) == pytest.approx(1 / 3)


def test_rank1_on_random_descriptors_is_near_chance():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(40), 30).astype(str)
    keys = np.arange(1200).astype(str)
    gallery = rng.normal(size=(1200, 128))
    queries = rng.normal(size=(1200, 128))  # no identity information at all
    r = identity.rank1_identification(queries, ids, keys, gallery, ids, keys)
    assert 0.005 < r < 0.06
    clustered = np.repeat(rng.normal(size=(40, 128)) * 5, 30, axis=0)
    assert identity.rank1_identification(clustered + queries * 0.1, ids, keys, clustered + gallery * 0.1, ids, keys) == 1.0


@pytest.mark.parametrize("shape", [(48, 48), (192, 192), (192, 192, 3), (64, 64), (30, 40, 3)])
def test_judge_input_shape_and_range(shape):
    img = np.zeros(shape, np.uint8)
    img[: shape[0] // 2] = 255
    x = expression.judge_input(img)
    assert x.shape == (1, 64, 64, 1) and x.dtype == np.float32
    assert x.min() == pytest.approx(-1.0) and x.max() == pytest.approx(1.0)


def test_judge_input_treats_grey_and_rgb_alike():
    grey = (np.arange(192 * 192) % 251).reshape(192, 192).astype(np.uint8)
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    np.testing.assert_allclose(expression.judge_input(grey), expression.judge_input(rgb), atol=1e-6)


def test_stratified_sample_is_proportional_and_fixed_by_seed():
    labels = ["happy"] * 600 + ["sad"] * 300 + ["disgust"] * 100
    a = expression.stratified_sample(labels, 100, seed=3)
    assert len(set(a.tolist())) == len(a) == 100
    picked = np.array(labels)[a]
    assert (picked == "happy").sum() == 60 and (picked == "disgust").sum() == 10
    np.testing.assert_array_equal(a, expression.stratified_sample(labels, 100, seed=3))
    assert not np.array_equal(a, expression.stratified_sample(labels, 100, seed=4))
    assert len(expression.stratified_sample(labels, 0, seed=3)) == 1000


def test_spread_limit_covers_every_identity_first():
    items = [(f"celeb_{k}/{j}.jpg", f"celeb_{k}") for k in (0, 4, 8) for j in range(5)]
    got = identity.spread_limit(items, 4)
    assert [i for _, i in got] == ["celeb_0", "celeb_4", "celeb_8", "celeb_0"]
    assert identity.spread_limit(items, 0) == items


def test_summary_table_merges_runs(tmp_path):
    for name, reid in (("anoncam", 0.108), ("blur", 0.026)):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({
            "name": name, "method": name, "settings": {"backend_class": "OpenVinoBackend"},
            "identity": {"reid_rate": reid, "rank1": 0.23, "faces_kept": 0.95, "scored": 1194},
            "expression": {"agreement": None, "scored": 900},
        }))
    table = report.summary_table([tmp_path / "anoncam", tmp_path / "blur" / "metrics.json"])
    lines = table.splitlines()
    assert lines[2].startswith("| anoncam | anoncam (OpenVinoBackend) | 10.8 % | 23.0 % | 95.0 % | n/a | 1194 / 900 |")
    assert "| blur | blur | 2.6 %" in lines[3]
    assert lines[-1].startswith("| target")


def test_rank1_hits_are_per_query():
    gallery = np.array([[0.0, 0.0], [10.0, 0.0], [3.0, 0.0]])
    q = np.array([[0.0, 0.0], [9.0, 0.0], [3.1, 0.0]])
    hits = identity.rank1_hits(q, ["A", "A", "B"], ["a1", "x", "b1"], gallery, ["A", "A", "B"], ["a1", "a2", "b1"])
    # a1's own original is excluded, so its nearest is B's photo; x is nearest a2; b1's own is excluded too.
    assert hits.tolist() == [False, True, False]
    assert identity.rank1_hits(np.zeros((0, 2)), [], [], gallery, ["A", "A", "B"], ["a1", "a2", "b1"]).shape == (0,)


def test_paired_difference_counts_only_discordant_items():
    a = [True] * 30 + [False] * 60 + [True] * 2 + [False] * 8
    b = [True] * 30 + [False] * 60 + [False] * 2 + [True] * 8
    d = report.paired_difference(a, b)
    assert (d["n"], d["only_a"], d["only_b"]) == (100, 2, 8)
    assert d["a"] == pytest.approx(0.32) and d["b"] == pytest.approx(0.38) and d["diff"] == pytest.approx(0.06)
    assert d["p"] == pytest.approx(0.109375)  # exact two-sided binomial: 2 * P(X <= 2 | 10, 1/2) = 2 * 56 / 1024
    lo, hi = d["ci95"]
    assert lo < 0.06 < hi and lo > -0.02
    same = report.paired_difference(a, a)
    assert same["diff"] == 0 and same["p"] == 1.0 and same["ci95"] == (0.0, 0.0)
    with pytest.raises(ValueError):
        report.paired_difference(a, b[:-1])


def test_compare_runs_pairs_items_by_key(tmp_path, capsys):
    def run(name, hits, agree):
        d = tmp_path / name
        d.mkdir()
        items = [{"part": "identity", "key": f"p{i}", "label": "id", "rank1_hit": h, "reid_hit": 0, "distance": "0.7"}
                 for i, h in enumerate(hits)]
        items += [{"part": "expression", "key": f"f{i}", "label": "sad", "original": "sad", "anonymized": "sad" if g else "happy",
                   "agree": g} for i, g in enumerate(agree)]
        report.write_items(d / report.ITEMS_FILE, items)
        return d
    a = run("a", [1, 1, 0, 0], [1, 0, 1])
    b = run("b", [1, 0, 0, 0, 1], [1, 1, 1])  # p4 only in b: not paired, not counted
    assert evaluate.main(["--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| rank-1 | 4 | 50.0 % | 25.0 % | -25.0 pts |" in out
    assert "| re-identification | 4 | 0.0 % | 0.0 % | +0.0 pts |" in out
    assert "| expression agreement | 3 | 66.7 % | 100.0 % | +33.3 pts |" in out
    (tmp_path / "old-run").mkdir()  # a report from before items.csv was written
    with pytest.raises(SystemExit, match="items.csv not found"):
        report.compare_runs(a, tmp_path / "old-run")


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(data.astronaut())


def test_region_baselines_change_only_the_face(astronaut):
    areas = {}
    for kind in ("blur", "pixelate", "erase"):
        method = methods.RegionMethod(kind, blur_sigma=0.1, pixel_blocks=10, erase_grow=1.0, manifest=load_manifest())
        try:
            out = method(astronaut)
        finally:
            method.close()
        assert out.faces == 1
        changed = np.any(out.pixels != astronaut, axis=2)
        region = out.conditioning[..., 0] > 0
        np.testing.assert_array_equal(region, out.region)
        assert changed.sum() > 0.5 * region.sum()
        assert not changed[~region].any()
        x0, y0, x1, y1 = (int(v) for v in out.face_box)
        assert region[(y0 + y1) // 2, (x0 + x1) // 2]
        areas[kind] = region.sum()
    assert 3 < areas["erase"] / areas["blur"] < 4.5  # the whole head: the oval grown to twice its size


CPU = Config.model_validate({"inference": {"backend": "onnxruntime", "threads": 1}})


def _variant(tmp_path, name="manifest.yaml", **generator):
    """A copy of the shipped manifest with some generator settings changed, as a user writes one for --manifest."""
    data = yaml.safe_load((load_manifest().folder / "manifest.yaml").read_text())
    data["generator"].update(generator)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_anoncam_expression_options(astronaut):
    """The manifest's expression settings reach the generator: pooled by default, random in the diagnostic."""
    shipped = load_manifest()
    drawn = {}
    for name, (neighbours, random_expression) in {"own": (0, False), "pooled": (4, False), "random": (4, True)}.items():
        manifest = shipped.override(generator={"expression_neighbours": neighbours})
        method = methods.AnoncamMethod(CPU, manifest, random_expression=random_expression)
        try:
            drawn[name] = [method(astronaut).conditioning for _ in range(2)]
            assert method.settings["generator.expression_neighbours"] == neighbours
            assert method.settings["random_expression"] == random_expression
        finally:
            method.close()
    assert np.array_equal(*drawn["pooled"]) and np.array_equal(*drawn["own"])
    assert not np.array_equal(drawn["own"][0], drawn["pooled"][0])
    assert not np.array_equal(*drawn["random"]), "a new random expression for every face"
    # texture_gain 0: no texture on the generated face.
    for gain in (0.0, 1.0):
        method = methods.AnoncamMethod(CPU, shipped.override(generator={"texture_gain": gain}))
        try:
            assert method.settings["generator.texture_gain"] == gain
            assert (method.anonymizer.synthesizer.texture is None) == (gain == 0)
        finally:
            method.close()


def test_anoncam_follows_a_variant_manifest_and_its_seed(astronaut, tmp_path):
    """--manifest's settings are the ones run and recorded; random face shapes are fixed by --seed."""
    manifest = load_manifest(path=_variant(tmp_path, feather=0.12, identity_variation=1.0, by_emotion={}))
    assert manifest.folder == load_manifest().folder, "a variant manifest uses the folder's own model files"
    runs = {}
    for seed in (0, 0, 1):
        method = methods.AnoncamMethod(CPU, manifest, seed=seed)
        try:
            assert method.feather == 0.12 and method.settings["generator.feather"] == 0.12
            assert method.anonymizer.router is not None and method.anonymizer.synthesizer.generators == {}
            assert method.settings["generators"] == {"generator.int8": methods.generator_sha(manifest, "generator.int8")}
            runs.setdefault(seed, []).append(method(astronaut).conditioning)
        finally:
            method.close()
    assert np.array_equal(*runs[0]), "the same seed draws the same face shape"
    assert not np.array_equal(runs[0][0], runs[1][0])


def test_random_expression_needs_the_drawn_expression(tmp_path, capsys):
    own = tmp_path / "own.yaml"
    own.write_text("experimental:\n  own_landmarks: true\n")
    for argv in (["--method", "blur"], ["--method", "anoncam", "--manifest", str(_variant(tmp_path, identity_normalization=0))],
                 ["--method", "anoncam", "--config", str(own)]):
        with pytest.raises(SystemExit) as exc:
            evaluate.main([*argv, "--random-expression", "--out", str(tmp_path / "run")])
        assert exc.value.code == 2 and "--random-expression" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_settings_come_from_files_not_flags(tmp_path, capsys):
    """Model settings are a --manifest's, camera settings a --config's: one error line each, before any model loads."""
    for flag in ("--feather", "--identity-normalization", "--expression-texture", "--backend", "--threads"):
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--method", "anoncam", "--out", str(tmp_path / "run"), flag, "0"])
        assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("anonymizer:\n  max_faces: 0\n")
    for argv, expected in ((["--manifest", str(_variant(tmp_path, "bad_manifest.yaml", feather=5))], "feather"),
                           (["--manifest", str(tmp_path / "none.yaml")], "not found"),
                           (["--config", str(bad_config)], "max_faces")):
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--method", "anoncam", "--out", str(tmp_path / "run"), *argv])
        assert exc.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_dlib_judge_on_astronaut(astronaut):
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    rec = identity.DlibRecognizer()
    # Her face is the upper of the HOG detector's hits (it also fires on the suit's flag patch).
    box = min(rec.detect(astronaut), key=lambda b: b[1])
    assert 150 < (box[0] + box[2]) / 2 < 300 and (box[1] + box[3]) / 2 < 200
    d = rec.describe(astronaut, box)
    assert d.shape == (128,) and np.isfinite(d).all()
    # The same person, mirrored, is the same person; a flat grey patch over the face is not.
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    fbox = min(rec.detect(flipped), key=lambda b: b[1])
    assert np.linalg.norm(rec.describe(flipped, fbox) - d) < identity.DLIB_THRESHOLD
    grey = astronaut.copy()
    x0, y0, x1, y1 = box
    grey[y0:y1, x0:x1] = 128
    assert all(iou(b, box) < 0.3 for b in rec.detect(grey))
    assert np.linalg.norm(rec.describe(grey, box) - d) > identity.DLIB_THRESHOLD


def test_expression_judge_runs_on_a_face(astronaut):
    if not expression.JUDGE_MODEL.is_file():
        pytest.skip(f"{expression.JUDGE_MODEL} not present (it ships in shared/models)")
    judge = expression.ExpressionJudge()
    face = astronaut[20:230, 140:330]
    p = judge.probabilities(face)
    assert p.shape == (len(expression.JUDGE_LABELS),) and np.isfinite(p).all()
    assert judge.label(face) in expression.JUDGE_LABELS
    assert judge.label(face) == judge.label(cv2.cvtColor(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB))


def test_seam_figures_give_the_median_beside_the_mean():
    from tools.evaluation.look import look_figures

    figures = look_figures([], [], [1.0, 0.9, None, 1.1, 120.0], [0.8, 0.8, 0.9, 0.9, None], np.zeros((0, 128)),
                           np.zeros((0, 128)))
    assert figures["seam_ratio"] == pytest.approx(30.75) and figures["seam_ratio_median"] == pytest.approx(1.05)
    assert figures["seam_ratio_original_median"] == pytest.approx(0.85)


def test_look_measures_see_seams_tone_and_distribution_shifts():
    from tools.evaluation.look import frechet_distance, seam_ratio, tone_difference

    rng = np.random.default_rng(0)
    base = np.clip(rng.normal(120, 8, (200, 200, 3)), 0, 255).astype(np.uint8)
    region = np.zeros((200, 200), bool)
    region[50:150, 50:150] = True
    pasted = base.copy()
    pasted[region] = np.clip(pasted[region].astype(int) + 60, 0, 255)  # a brighter patch with a hard edge
    assert seam_ratio(pasted, region) > 2 * seam_ratio(base, region)
    skin = np.full((200, 200, 3), (200, 150, 120), np.uint8)
    box = (60, 20, 140, 120)
    assert tone_difference(skin, box, None) < 1.0
    pink = skin.copy()
    pink[60:100] = (230, 140, 150)  # the face's middle pinker than its neck
    assert tone_difference(pink, box, None) > 10
    a, b = rng.normal(0, 1, (200, 8)), rng.normal(0, 1, (200, 8))
    assert frechet_distance(a, b) < 1.0 < frechet_distance(a, b + 1.0)
