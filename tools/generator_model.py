"""The edge generator and its discriminator (PyTorch; training and export only).

Generator: a compact U-Net, 128 px in and out. Built for INT8 on a CPU:
- stride-2 3x3 convs down, nearest-neighbour resize + 3x3 conv up (no ConvTranspose, which ONNX
  Runtime's quantizer leaves in FP32);
- BatchNorm (folds into the convs at export) and ReLU (fuses with the quantized conv);
- additive skips instead of concatenation, which halves the decoder's cost.

unet_256 is GANonymization's generator (pix2pix ``unet_256``), kept here as the speed reference.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm


def conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True),
                                  nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))

    def forward(self, x):
        return F.relu(x + self.body(x))


class Up(nn.Module):
    def __init__(self, cin, cout, refine=True):
        super().__init__()
        self.conv = conv_bn(cin, cout)
        self.refine = conv_bn(cout, cout) if refine else nn.ReLU()

    def forward(self, x, skip):
        x = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.refine(x + skip)


class SubPixelUp(nn.Module):
    """An ``Up`` block re-parametrized for export: the same function, computed at low resolution.

    Nearest 2x upsampling followed by a 3x3 conv equals a 3x3 conv at the low resolution with four
    times the output channels (one per output pixel phase) followed by depth-to-space. The runtimes'
    nearest Resize on INT8 tensors took a quarter of the generator's time; depth-to-space moves
    the same bytes faster, and the conv now runs on a 4x smaller, wider tensor. BatchNorm is folded.
    """

    # Rows (or columns) of the 3x3 low-res kernel as sums of the 3x3 high-res kernel's, per phase:
    # phase 0 reads low-res offsets (-1, 0, 0), phase 1 reads (0, 0, +1).
    PHASE = (torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 0]]), torch.tensor([[0.0, 0, 0], [1, 1, 0], [0, 0, 1]]))

    def __init__(self, up: Up):
        super().__init__()
        conv, bn = up.conv[0], up.conv[1]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = conv.weight * scale[:, None, None, None]
        cout, cin = w.shape[:2]
        k = torch.zeros(cout, 4, cin, 3, 3)
        for a in range(2):
            for b in range(2):
                k[:, a * 2 + b] = torch.einsum("ij,ocjk,lk->ocil", self.PHASE[a], w, self.PHASE[b])
        self.conv = nn.Conv2d(cin, 4 * cout, 3, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(k.reshape(4 * cout, cin, 3, 3))
            self.conv.bias.copy_((bn.bias - bn.running_mean * scale).repeat_interleave(4))
        self.refine = up.refine

    def forward(self, x, skip):
        return self.refine(F.pixel_shuffle(F.relu(self.conv(x)), 2) + skip)


def for_export(g: "EdgeGenerator") -> "EdgeGenerator":
    """The trained generator with its decoder in sub-pixel form (same outputs, faster INT8)."""
    g = copy.deepcopy(g).eval()
    with torch.no_grad():
        g.up = nn.ModuleList([SubPixelUp(u) for u in g.up])
    return g


class EdgeGenerator(nn.Module):
    """128x128 conditioning (3 ch, [-1, 1]) -> 128x128 RGB face crop ([-1, 1]).

    ``in_ch`` 7: the head generator, whose input is the conditioning, the head's surroundings (the
    crop with the head blanked) and the head mask (tools.train_head); any side divisible by 16."""

    def __init__(self, widths=(16, 32, 64, 128, 256), res_blocks=1, refine_from_level=2, in_ch=3):
        super().__init__()
        w = widths
        self.stem = conv_bn(in_ch, w[0])  # 128
        self.down = nn.ModuleList([conv_bn(w[i], w[i + 1], 2) for i in range(len(w) - 1)])  # 64, 32, 16, 8
        self.mid = nn.Sequential(*[ResBlock(w[-1]) for _ in range(res_blocks)])
        # A second conv per decoder level only at 32 px and coarser: at 64 and 128 px it would cost
        # over a third of the budget for texture the 3x3 up-conv already gives.
        self.up = nn.ModuleList([Up(w[i + 1], w[i], refine=i >= refine_from_level) for i in reversed(range(len(w) - 1))])
        self.head = nn.Conv2d(w[0], 3, 3, 1, 1)

    def forward(self, x):
        x = self.stem(x)
        skips = [x]
        for d in self.down:
            x = d(x)
            skips.append(x)
        x = self.mid(skips.pop())
        for u in self.up:
            x = u(x, skips.pop())
        return torch.tanh(self.head(x))


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN with spectral norm; returns patch scores and intermediate features."""

    def __init__(self, in_ch=6, ch=64):
        super().__init__()
        sn = spectral_norm
        self.layers = nn.ModuleList([
            nn.Sequential(sn(nn.Conv2d(in_ch, ch, 4, 2, 1)), nn.LeakyReLU(0.2, True)),  # 64
            nn.Sequential(sn(nn.Conv2d(ch, ch * 2, 4, 2, 1)), nn.LeakyReLU(0.2, True)),  # 32
            nn.Sequential(sn(nn.Conv2d(ch * 2, ch * 4, 4, 2, 1)), nn.LeakyReLU(0.2, True)),  # 16
            nn.Sequential(sn(nn.Conv2d(ch * 4, ch * 4, 3, 1, 1)), nn.LeakyReLU(0.2, True)),
        ])
        self.out = sn(nn.Conv2d(ch * 4, 1, 3, 1, 1))

    def forward(self, cond, img):
        x = torch.cat([cond, img], 1)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return self.out(x), feats


class MultiScaleDiscriminator(nn.Module):
    """Two PatchGANs, at full and half resolution: one judges texture, the other face layout."""

    def __init__(self, ch: int = 64):
        super().__init__()
        self.d = nn.ModuleList([PatchDiscriminator(ch=ch), PatchDiscriminator(ch=ch)])

    def forward(self, cond, img):
        outs = []
        for i, d in enumerate(self.d):
            if i:
                cond, img = F.avg_pool2d(cond, 2), F.avg_pool2d(img, 2)
            outs.append(d(cond, img))
        return outs


# --- GANonymization's generator, the speed reference (pix2pix unet_256, 54M parameters) ---

class _UnetBlock(nn.Module):
    def __init__(self, outer, inner, sub=None, outermost=False, innermost=False, in_ch=None, dropout=False):
        super().__init__()
        in_ch = in_ch or outer
        down = [nn.LeakyReLU(0.2, True), nn.Conv2d(in_ch, inner, 4, 2, 1, bias=False)]
        if outermost:
            self.model = nn.Sequential(nn.Conv2d(in_ch, inner, 4, 2, 1), sub, nn.ReLU(True),
                                       nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh())
        elif innermost:
            self.model = nn.Sequential(*down, nn.ReLU(True), nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer))
        else:
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]
            self.model = nn.Sequential(*down, nn.BatchNorm2d(inner), sub, *up, *([nn.Dropout(0.5)] if dropout else []))
        self.outermost = outermost

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


def unet_256(ngf=64):
    b = _UnetBlock(ngf * 8, ngf * 8, innermost=True)
    for _ in range(3):
        b = _UnetBlock(ngf * 8, ngf * 8, b, dropout=True)
    b = _UnetBlock(ngf * 4, ngf * 8, b)
    b = _UnetBlock(ngf * 2, ngf * 4, b)
    b = _UnetBlock(ngf, ngf * 2, b)
    return _UnetBlock(3, ngf, b, outermost=True, in_ch=3)


def count_macs(model: nn.Module, size: int) -> int:
    """Multiply-accumulates of one forward pass (convolutions only, which dominate)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.ConvTranspose2d):
            total += inp[0].numel() * m.out_channels * m.kernel_size[0] * m.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    model.train(was)
    for h in handles:
        h.remove()
    return total
