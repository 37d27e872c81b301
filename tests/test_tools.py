"""Offline tools on a tiny pack built from the astronaut: data packing, training with resume, INT8 export."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import skimage.data

torch = pytest.importorskip("torch", reason="training tools need the 'train' extra")


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    from agent.detection.landmarks import FaceAnalyzer
    from agent.synthesis.align import align_face
    from agent.synthesis.render import RENDERED_INDICES
    from tools.datasets import PackedFaces

    rgb = skimage.data.astronaut()
    d = tmp_path_factory.mktemp("pack")
    enc, lms = [], []
    with FaceAnalyzer(max_faces=1) as fa:
        for k in range(12):  # small shifts and zooms: 12 different real alignments of one face
            m = cv2.getRotationMatrix2D((256, 256), k - 6, 1.0 + 0.03 * (k % 4))
            img = cv2.warpAffine(rgb, m, (512, 512), borderMode=cv2.BORDER_REFLECT)
            face = fa.detect(img)[0]
            crop, lm, _ = align_face(img, face.landmarks)
            enc.append(cv2.imencode(".webp", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))[1].tobytes())
            lms.append(lm[RENDERED_INDICES])
    for split in ("train", "heldout"):
        PackedFaces.save(d / f"faces128_{split}.npz", enc, lms, ["astronaut"] * 12, ["test"] * 12)
    return d


def test_pack_roundtrip(tiny_pack):
    from tools.datasets import PackedFaces

    p = PackedFaces(tiny_pack / "faces128_train.npz")
    assert len(p) == 12 and p.image(3).shape == (128, 128, 3) and p.landmarks.shape == (12, 160, 2)


def test_train_resumes_and_exports(tiny_pack, tmp_path, monkeypatch):
    from tools import export_generator, train_generator

    run = tmp_path / "run"
    args = ["--data", str(tiny_pack), "--run", str(run), "--minutes", "5", "--batch", "4", "--workers", "1"]
    assert train_generator.main([*args, "--max-steps", "2"]) == 0
    first = torch.load(run / "state.pt")["step"]
    assert first == 2 and (run / "samples_final.png").exists() and (run / "generator_ema.pt").exists()
    assert train_generator.main([*args, "--max-steps", "4"]) == 0
    assert torch.load(run / "state.pt")["step"] == 4, "a rerun must continue from the saved state"

    out = tmp_path / "models"
    report = tmp_path / "export.json"
    monkeypatch.chdir(tmp_path)  # relative output paths, as a user types them (the export works in a temporary folder)
    assert export_generator.main(["--checkpoint", str(run / "generator_ema.pt"), "--data", str(tiny_pack),
                                  "--models", "models", "--report", "export.json", "--calibration", "8"]) == 0
    from agent.runtime.backends import create_backend

    x = np.full((1, 3, 128, 128), -1.0, np.float32)
    for kind in ("onnxruntime", "openvino"):
        y = create_backend(kind, "generator.int8", out).infer(x)
        assert y.shape == (1, 3, 128, 128) and np.isfinite(y).all()
    psnr = json.loads(report.read_text())["psnr_db"]
    assert psnr["onnx_fp32_vs_torch"] > 60


def test_subpixel_export_form_matches_the_trained_generator():
    """The export re-parametrization (resize+conv -> conv+depth-to-space) must not change a pixel."""
    from tools.generator_model import EdgeGenerator, for_export

    torch.manual_seed(0)
    g = EdgeGenerator()
    for m in g.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    g.eval()
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(for_export(g)(x), g(x), atol=1e-4)


def test_expression_loss_compares_the_judges_views(tiny_pack):
    """The expression-consistency loss: zero for the same face, positive for another, and it trains the fake."""
    from tools.datasets import PackedFaces
    from tools.emotion_model import load_emotion_cnn
    from tools.train_generator import expression_kl, to_net

    judge = load_emotion_cnn()
    real = to_net(torch.from_numpy(PackedFaces(tiny_pack / "faces128_train.npz").image(0)[None]))
    assert expression_kl(judge, real, real).item() == pytest.approx(0.0, abs=1e-6)
    fake = torch.zeros_like(real, requires_grad=True)  # a flat grey "face"
    loss = expression_kl(judge, real, fake)
    loss.backward()
    assert loss.item() > 0.01 and fake.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def tiny_fer_source(tmp_path_factory):
    """Astronaut faces in tools.prepare_expressions' format, labelled round-robin over the 7 emotions."""
    from agent.detection.landmarks import FaceAnalyzer
    from agent.synthesis.align import align_face
    from agent.synthesis.shape import ShapeNormalizer
    from agent.types import BLENDSHAPES

    rgb = skimage.data.astronaut()
    crops, blends, poses, expected = [], [], [], []
    with FaceAnalyzer(max_faces=1) as fa:
        for k in range(14):
            m = cv2.getRotationMatrix2D((256, 256), k - 7, 1.0 + 0.03 * (k % 4))
            face = fa.detect(cv2.warpAffine(rgb, m, (512, 512), borderMode=cv2.BORDER_REFLECT))[0]
            crop, lm, _ = align_face(cv2.warpAffine(rgb, m, (512, 512), borderMode=cv2.BORDER_REFLECT), face.landmarks)
            crops.append(cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (48, 48), interpolation=cv2.INTER_AREA))
            blends.append([face.blendshapes[n] for n in BLENDSHAPES])
            pose = face.head_pose()
            poses.append([pose["yaw"], pose["pitch"], pose["roll"]])
            expected.append(ShapeNormalizer(1.0)(lm, face))  # what the agent draws for this face at run time
    path = tmp_path_factory.mktemp("fer") / "fer_train.npz"
    n = len(crops)
    found = np.ones(n, bool)
    found[-1] = False  # a face MediaPipe missed carries no geometry and must be left out
    np.savez(path, crops=np.stack(crops), blendshapes=np.array(blends, np.float32), pose=np.array(poses, np.float32),
             labels=np.arange(n) % 7, found=found, has_blendshapes=found)
    return path, np.stack(crops), np.stack(expected)


def test_fer_pack_draws_what_the_agent_draws_and_trains(tiny_fer_source, tiny_pack, tmp_path):
    """The FER pack's conditioning is the agent's identity-free shape; training uses it for the expression loss."""
    from tools import pack_generator_data, train_generator
    from tools.datasets import PackedFaces
    from tools.pack_generator_data import PackedFer

    source, crops, expected = tiny_fer_source
    data = tmp_path / "gpu"
    assert pack_generator_data.main(["--source", str(source), "--out-dir", str(data), "--per-class", "2",
                                     "--faces", "5", "--faces-from", str(tiny_pack / "faces128_train.npz")]) == 0
    fer = PackedFer(data / "fer_generator.npz")
    labels = np.arange(13) % 7  # the 14th face was missed by MediaPipe and must be left out
    order = np.concatenate([np.flatnonzero(labels == c) for c in range(7)])  # the pack is grouped by class
    assert len(fer) == 13 and np.array_equal(fer.labels, labels[order])
    assert np.abs(fer.conditioning_landmarks() - expected[order]).max() < 0.1  # float16 storage, in 128 px
    assert np.abs(np.stack([fer.crop(i) for i in range(len(fer))]).astype(int) - crops[order]).mean() < 4  # JPEG
    assert len(PackedFaces(data / "faces128_train.npz")) == 5

    run = tmp_path / "run"
    assert train_generator.main(["--data", str(data), "--fer", str(data / "fer_generator.npz"), "--run", str(run),
                                 "--minutes", "5", "--max-steps", "3", "--batch", "2", "--workers", "1", "--d-warmup", "1"]) == 0
    assert torch.load(run / "state.pt")["step"] > 1 and (run / "fer_final.png").exists()


def test_mdav_groups_are_small_local_and_cover_every_row():
    from tools.fit_expression_bank import mdav

    rng = np.random.default_rng(0)
    # Two expression clusters far apart, each a whole number of groups: no group may mix them.
    x = np.concatenate([rng.normal(0, 0.05, (52, 52)), rng.normal(1, 0.05, (41, 52))])
    groups = mdav(x, 4, progress=False)
    rows = np.concatenate(groups)
    assert sorted(rows.tolist()) == list(range(len(x)))
    assert all(4 <= len(g) <= 7 for g in groups)
    assert sum(len(set((g < 52).tolist())) > 1 for g in groups) <= 1  # at most the remainder group
    with pytest.raises(ValueError):
        mdav(x[:3], 4, progress=False)


def test_match_axes_ignore_constant_blendshapes_and_keep_gaze():
    from agent.types import BLENDSHAPES
    from tools.fit_expression_bank import GAZE, match_axes

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), 60)
    x = rng.uniform(0, 0.2, (len(labels), len(BLENDSHAPES)))
    smile = BLENDSHAPES.index("mouthSmileLeft")
    x[:, smile] += 0.5 * (labels == 3)  # one emotion smiles
    x[:, BLENDSHAPES.index("_neutral")] = 1e-4 * rng.random(len(labels))  # nearly constant, as MediaPipe gives it
    spread = x.std(0)
    mean, axes = match_axes(x, labels, spread)
    assert axes.shape == (len(BLENDSHAPES), 6 + len(GAZE)) and mean.shape == (len(BLENDSHAPES),)
    assert not axes[BLENDSHAPES.index("_neutral")].any(), "a constant blendshape must not steer the match"
    emotion = axes[:, :6]
    assert np.abs(emotion[smile]).max() == np.abs(emotion).max(), "the smile is what tells this emotion apart"
    gaze = axes[:, 6:]
    assert np.allclose(gaze[GAZE, np.arange(len(GAZE))] * spread[GAZE], 1.0) and np.count_nonzero(gaze) == len(GAZE)


def test_update_sums_records_the_models_and_the_manifest(tmp_path, capsys):
    """Rewriting a folder's SHA256SUMS keeps its other entries and always records manifest.yaml, which the
    agent checks like a model; python -m tools.model_files does that alone and loads the manifest."""
    import shutil

    from agent.runtime.manifest import load_manifest
    from agent.runtime.model_files import sha256_file, verified_path
    from tools import model_files

    shipped = load_manifest().folder
    folder = tmp_path / "models"
    shutil.copytree(shipped, folder)
    (folder / "extra.npz").write_bytes(b"extra")
    with open(folder / "manifest.yaml", "a") as f:
        f.write("# edited\n")  # the manifest changed too: its old sum no longer holds
    model_files.update_sums(folder, ["extra.npz"])
    sums = dict(reversed(line.split()) for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert sums["extra.npz"] == sha256_file(folder / "extra.npz")
    assert sums["manifest.yaml"] == sha256_file(folder / "manifest.yaml")
    assert sums["shape_model.npz"] == sha256_file(shipped / "shape_model.npz")  # the others kept
    verified_path("manifest.yaml", folder)
    assert load_manifest(folder).folder == folder

    (folder / "manifest.yaml").write_text((shipped / "manifest.yaml").read_text())
    assert model_files.main(["--models", str(folder)]) == 0
    assert "the manifest loads" in capsys.readouterr().out
    verified_path("manifest.yaml", folder)
    with pytest.raises(SystemExit):
        model_files.main(["--models", str(folder), "missing.onnx"])


def test_head_generator_trains_on_whole_head_crops_and_resumes(tmp_path):
    """The head pack holds what the agent cuts at run time; training sees the surroundings, never the head."""

    from agent.detection.landmarks import FaceAnalyzer
    from agent.synthesis.align import align_face, transform_points
    from agent.synthesis.head import HEAD_SIZE, head_mask, head_matrix
    from tools import train_head
    from tools.generator_model import EdgeGenerator
    from tools.prepare_heads import PackedHeads

    photo = skimage.data.astronaut()
    with FaceAnalyzer(max_faces=1) as fa:
        (face,) = fa.detect(photo)
    encoded, valid, landmarks = [], [], []
    for shift in range(4):
        lm = face.landmarks.copy()
        lm[:, 0] += 3 * shift
        m = head_matrix(lm)
        crop = cv2.warpAffine(photo, m, (HEAD_SIZE, HEAD_SIZE))
        inside = cv2.warpAffine(np.full(photo.shape[:2], 255, np.uint8), m, (HEAD_SIZE, HEAD_SIZE))
        encoded.append(cv2.imencode(".webp", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))[1].tobytes())
        valid.append(cv2.imencode(".png", inside)[1].tobytes())
        landmarks.append(transform_points(m, lm).astype(np.float32))
    for split in ("train", "heldout"):
        PackedHeads.save(tmp_path / f"heads{HEAD_SIZE}_{split}.npz", HEAD_SIZE, encoded, valid, landmarks,
                         ["a"] * 4, ["test"] * 4)
    pack = PackedHeads(tmp_path / f"heads{HEAD_SIZE}_train.npz")
    mask = head_mask(pack.landmarks[0])
    # The head region holds the whole face and reaches above the brows into the hair.
    oval_top = pack.landmarks[0][10, 1]
    assert mask[int(oval_top) - 10, HEAD_SIZE // 2] == 1 and 0.15 < mask.mean() < 0.6
    assert pack.valid(0).min() == 0 and pack.valid(0).max() == 255  # the crop reaches past the photo's edge

    run = tmp_path / "run"
    args = ["--data", str(tmp_path), "--run", str(run), "--minutes", "5", "--batch", "2", "--workers", "1",
            "--resume", str(tmp_path / "none.pt")]  # start from the face generator, not the committed state
    # The expression loss samples each face's alignment crop out of its head crop, as align_face cuts it.
    sampled = torch.nn.functional.grid_sample(
        torch.from_numpy(pack.image(0)).permute(2, 0, 1)[None].float(),
        torch.nn.functional.affine_grid(torch.from_numpy(train_head.face_theta(pack.landmarks[0], HEAD_SIZE))[None],
                                        (1, 3, 64, 64), align_corners=False), align_corners=False)
    aligned, _, _ = align_face(pack.image(0), pack.landmarks[0], 64)
    assert np.abs(sampled[0].permute(1, 2, 0).numpy() - aligned)[4:-4, 4:-4].mean() < 3.0

    assert train_head.main([*args, "--max-steps", "2", "--expression", "5"]) == 0
    assert train_head.main([*args, "--max-steps", "3"]) == 0
    assert torch.load(run / "state.pt")["step"] == 3, "a rerun must continue from the saved state"
    # The compact state continues a fresh run where this one stopped.
    again = tmp_path / "again"
    assert train_head.main([*args[:3], str(again), *args[4:-2], "--resume", str(run / "head_train.pt"),
                            "--max-steps", "4"]) == 0
    assert torch.load(again / "state.pt")["step"] == 4
    g = EdgeGenerator(in_ch=train_head.IN_CH)
    g.load_state_dict({k: v.float() for k, v in torch.load(run / "head_generator_ema.pt").items()})
    out = g.eval()(torch.zeros(1, train_head.IN_CH, HEAD_SIZE, HEAD_SIZE))
    assert out.shape == (1, 3, HEAD_SIZE, HEAD_SIZE)
