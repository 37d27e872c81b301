"""Blend two generator checkpoints weight by weight (both fine-tuned from one start, so the blend is a generator too).

    python -m tools.blend_checkpoints step1.pt step3b.pt --weight 0.5 --out tools/checkpoints/generator_ema.pt

The shipped generator is such a blend (campaign step 3g): the expression fine-tune alone brought the
synthetic face of one test person (the daemon check's astronaut) within dlib's match distance in one
frame of 150, and half of it keeps most of its expression gain with more distance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def blend(a: dict, b: dict, weight: float) -> dict:
    """(1 - weight) * a + weight * b for float tensors; other tensors (BatchNorm counters) from b.

    A weight above 1 extrapolates: a + weight * (b - a) scales what the fine-tune from a to b changed
    ("task arithmetic", Ilharco et al., ICLR 2023). BatchNorm running variances are kept positive,
    since extrapolating them can cross zero.
    """
    if a.keys() != b.keys():
        raise SystemExit("the checkpoints hold different tensors: not the same generator architecture")
    out = {}
    for k in b:
        if not b[k].is_floating_point():
            out[k] = b[k]
            continue
        v = (1 - weight) * a[k].float() + weight * b[k].float()
        if k.endswith("running_var"):
            v = v.clamp(min=float(torch.minimum(a[k].float().min(), b[k].float().min())))
        out[k] = v.to(b[k].dtype)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--weight", type=float, default=0.5,
                    help="share of the second checkpoint: 0-1 interpolates, up to 3 extrapolates the fine-tune")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not 0.0 <= args.weight <= 3.0:
        raise SystemExit("--weight must be within 0-3")
    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (args.first, args.second))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blend(a, b, args.weight), args.out)
    print(f"{args.out}: {1 - args.weight:g} x {args.first} + {args.weight:g} x {args.second}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
