"""Torch definitions of the emotion classifiers, and a loader for the trained checkpoint.

Input contract of the crop classifier (the exported ``emotion.int8`` model has the same one):
``(N, 1, 48, 48)`` float32, the face aligned with ``agent.synthesis.align.align_face`` at 48 px, converted to
grey (OpenCV RGB2GRAY weights) and scaled to [0, 1]. Output: ``(N, 7)`` logits in
``agent.types.EMOTIONS`` order (angry, disgust, fear, happy, neutral, sad, surprise).

For the generator's expression-consistency loss (frozen judge)::

    from tools.emotion_model import load_emotion_cnn, aligned_rgb_to_input
    judge = load_emotion_cnn()            # eval mode, requires_grad False
    logits = judge(aligned_rgb_to_input(fake_128_rgb, value_range=(-1, 1)))

``aligned_rgb_to_input`` accepts the generator's 128 px aligned RGB crops (any square size; the
alignment is the same at every size, so resizing is all that is needed) and is differentiable.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "emotion_cnn.pt"
INPUT_SIZE = 48
NUM_CLASSES = 7
GEOMETRY_DIM = 478 * 2 + 52 + 3  # aligned landmarks, blendshapes, head pose


def _block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class EmotionCNN(nn.Module):
    """VGG-style, four stages of two 3x3 convs. Plain convs because they are what 2 CPU cores and
    INT8 runtimes execute fastest; global average pooling keeps the head tiny.

    ``stem_pool`` halves the resolution right after the one full-resolution conv: the stages then
    run at 24/12/6/3 px, a quarter of the multiply-adds (about 35 M instead of 140 M per face at
    width 32), which is what makes training on 2 shared CPU cores and <= 3 ms INT8 inference fit.
    """

    def __init__(self, width: int = 32, num_classes: int = NUM_CLASSES, dropout: float = 0.3, stem_pool: bool = True):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList([_block(w, w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 8 * w)])
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * w, num_classes)
        self.width = width
        self.stem_pool = stem_pool

    def forward(self, x):
        x = (x - 0.5) * 4.0  # [0, 1] grey -> roughly zero-mean, unit-variance
        x = self.stem(x)
        if self.stem_pool:
            x = F.max_pool2d(x, 2)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.stages) - 1:
                x = F.max_pool2d(x, 2)
        x = x.mean(dim=(2, 3))
        return self.fc(self.drop(x))


class GeometryMLP(nn.Module):
    """Blendshapes + aligned landmark geometry + head pose -> emotion logits."""

    def __init__(self, in_dim: int = GEOMETRY_DIM, hidden: int = 256, num_classes: int = NUM_CLASSES, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden // 2, num_classes),
        )

    def forward(self, x):
        return self.net(x)


def aligned_rgb_to_input(rgb: torch.Tensor, value_range=(0.0, 1.0)) -> torch.Tensor:
    """(N, 3, S, S) aligned RGB crops in ``value_range`` -> (N, 1, 48, 48) classifier input."""
    lo, hi = value_range
    x = (rgb - lo) / (hi - lo)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    if grey.shape[-1] != INPUT_SIZE:
        grey = F.interpolate(grey, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return grey.clamp(0, 1)


def load_emotion_cnn(path: Path | str = CHECKPOINT, frozen: bool = True, map_location="cpu") -> EmotionCNN:
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = EmotionCNN(width=int(ckpt["width"]), stem_pool=bool(ckpt.get("stem_pool", True)))
    model.load_state_dict(ckpt["model"])
    model.eval()
    if frozen:
        for p in model.parameters():
            p.requires_grad_(False)
    return model.to(map_location)
