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
    from agent.align import align_face
    from agent.faces import FaceAnalyzer
    from agent.render import RENDERED_INDICES
    from tools.datasets import PackedFaces

    rgb = skimage.data.astronaut()
    d = tmp_path_factory.mktemp("pack")
    enc, lms = [], []
    with FaceAnalyzer(max_faces=1, full_range=False) as fa:
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


def test_train_resumes_and_exports(tiny_pack, tmp_path):
    from tools import export_generator, train_generator

    run = tmp_path / "run"
    args = ["--data", str(tiny_pack), "--run", str(run), "--minutes", "0.05", "--batch", "4", "--workers", "1"]
    assert train_generator.main(args) == 0
    first = torch.load(run / "state.pt")["step"]
    assert first > 0 and (run / "samples_final.png").exists() and (run / "generator_ema.pt").exists()
    assert train_generator.main(args) == 0
    assert torch.load(run / "state.pt")["step"] > first, "a rerun must continue from the saved state"

    out = tmp_path / "models"
    report = tmp_path / "export.json"
    assert export_generator.main(["--checkpoint", str(run / "generator_ema.pt"), "--data", str(tiny_pack),
                                  "--models", str(out), "--report", str(report), "--calibration", "8"]) == 0
    from agent.backends import create_backend

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
