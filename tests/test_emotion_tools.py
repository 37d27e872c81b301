"""tools/ side of the emotion classifier: FER-style preparation and the torch judge for the generator."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from agent.config import InferenceConfig
from agent.detection.landmarks import FaceAnalyzer
from agent.expression.classifier import CROP_SIZE, EmotionClassifier, grey_crop
from agent.synthesis.align import align_face
from agent.types import BLENDSHAPES, EMOTIONS


@pytest.fixture(scope="module")
def astronaut_face():
    rgb = data.astronaut()
    with FaceAnalyzer(max_faces=1, mode="image") as fa:
        (face,) = fa.detect(rgb)
    return rgb, face


def test_prepare_finds_a_48px_fer_style_face(astronaut_face):
    from tools import prepare_expressions as prep

    rgb, face = astronaut_face
    # A FER-like sample: tight 48x48 grey crop around the face, PNG-encoded as in the zips.
    x0, y0, x1, y1 = face.box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 0.55
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[int(cy - half):int(cy + half), int(cx - half):int(cx + half)]
    grey = cv2.resize(grey, (48, 48), interpolation=cv2.INTER_AREA)
    prep._init()
    name, r = prep._process(("happy/0.png", cv2.imencode(".png", grey)[1].tobytes()))
    assert r["found"]
    assert r["crop"].shape == (CROP_SIZE, CROP_SIZE) and r["crop"].dtype == np.uint8
    assert r["blend"].shape == (len(BLENDSHAPES),) and r["blend"][BLENDSHAPES.index("mouthSmileLeft")] > 0.3
    assert r["lm"].shape == (478, 2) and 0 < float(r["lm"].mean()) < 1
    # The prepared crop is what the runtime classifier sees: it should call her happy too.
    p = EmotionClassifier(InferenceConfig(backend="onnxruntime")).probabilities(r["crop"][None])
    assert EMOTIONS[int(p.argmax())] == "happy"


def test_torch_judge_matches_int8_model(astronaut_face):
    from tools.emotion_model import aligned_rgb_to_input, load_emotion_cnn

    rgb, face = astronaut_face
    judge = load_emotion_cnn()
    assert not any(p.requires_grad for p in judge.parameters())
    crop128, _, _ = align_face(rgb, face.landmarks, 128)  # the generator's crop
    x = torch.from_numpy(crop128).permute(2, 0, 1)[None].float() / 127.5 - 1
    x.requires_grad_(True)
    logits = judge(aligned_rgb_to_input(x, value_range=(-1, 1)))
    assert logits.shape == (1, 7) and EMOTIONS[int(logits.argmax())] == "happy"
    logits[0, EMOTIONS.index("happy")].backward()  # usable as a loss: gradients reach the image
    assert x.grad is not None and x.grad.abs().sum() > 0

    int8 = EmotionClassifier(InferenceConfig(backend="openvino"), flip_tta=False)
    p_int8 = int8.probabilities(grey_crop(rgb, face.landmarks)[None])[0]
    p_torch = torch.softmax(logits.detach(), 1)[0].numpy()
    assert np.abs(p_int8 - p_torch).max() < 0.1
