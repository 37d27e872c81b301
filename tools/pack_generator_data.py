"""Pack FER2013 train faces for the generator's expression loss (python -m tools.train_generator --fer).

    python -m tools.prepare_expressions              # once: ~/.cache/anoncam/fer_train.npz
    python -m tools.pack_generator_data              # -> ~/.cache/anoncam/fer_generator.npz
    python -m tools.pack_generator_data --out-dir .device_data/gpu --per-class 1500 --faces 8000

The last form packs for a GPU machine, whose checkout and carried data must fit 64 MiB together:
the FER pack plus an even subset of the aligned photos (faces128_train.npz) beside it.

CelebA and UTKFace are mostly smiling or neutral, so the generator never learned to draw anger,
fear, sadness or disgust. FER2013 train has them. Its 48 px grey faces are too poor to be L1
targets, but they can teach expression: the generator draws a face from the conditioning the
agent would give it at run time (the identity-free shape of ``models/shape_model.npz``, predicted
from the face's blendshapes and head pose), it is pasted into the FER face, and the frozen emotion
CNN must see the same expression as in the real one.

Stored per face: the aligned 48 px grey crop (JPEG, as FER2013 itself is), the blendshapes and
head yaw/pitch the conditioning is predicted from (``fer_conditioning_landmarks``) and the label. Only faces MediaPipe found (they have blendshapes). ``--per-class`` caps the common
classes so the rare ones weigh more and the pack fits the GPU machine's 64 MiB carry limit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from agent.synthesis.shape import ShapeNormalizer, features_from_pose
from tools.datasets import CACHE, EMOTIONS, PackedFaces


class PackedFer:
    def __init__(self, path: Path):
        d = np.load(path, allow_pickle=False)
        self.blob, self.offsets = d["blob"], d["offsets"]
        self.blendshapes = d["blendshapes"].astype(np.float64)
        self.yaw_pitch = d["yaw_pitch"].astype(np.float64)
        self.labels = d["labels"]

    def __len__(self):
        return len(self.labels)

    def crop(self, i: int) -> np.ndarray:
        return cv2.imdecode(self.blob[self.offsets[i]:self.offsets[i + 1]], cv2.IMREAD_GRAYSCALE)

    def conditioning_landmarks(self, model_folder=None, rows: slice = slice(None)) -> np.ndarray:
        """(N, 160, 2) identity-free landmarks of ``rows`` in generator-crop pixels: what the agent draws at run time."""
        yaw_pitch = self.yaw_pitch[rows]
        feats = features_from_pose(self.blendshapes[rows], yaw_pitch[:, 0], yaw_pitch[:, 1])
        return ShapeNormalizer(1.0, model_folder).average_landmarks(feats).astype(np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.pack_generator_data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=CACHE / "fer_train.npz", help="output of tools.prepare_expressions")
    ap.add_argument("--out-dir", type=Path, default=CACHE, help="writes fer_generator.npz here")
    ap.add_argument("--faces", type=int, default=0,
                    help="also write an even subset of this many training photos (faces128_train.npz from --faces-from)")
    ap.add_argument("--faces-from", type=Path, default=CACHE / "faces128_train.npz")
    ap.add_argument("--per-class", type=int, default=2000, help="at most this many faces of each emotion")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the 48 px crops")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.source.exists():
        raise SystemExit(f"{args.source} not found: run python -m tools.prepare_expressions first")

    d = np.load(args.source, allow_pickle=False)
    labels = d["labels"]
    usable = d["found"] & d["has_blendshapes"]
    rng = np.random.default_rng(args.seed)
    keep = []
    for c in range(len(EMOTIONS)):
        idx = np.flatnonzero(usable & (labels == c))
        keep.append(np.sort(rng.permutation(idx)[:args.per_class]))
    keep = np.concatenate(keep)

    encoded = [cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, args.quality])[1] for crop in d["crops"][keep]]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "fer_generator.npz"
    np.savez(out, blob=np.concatenate(encoded), offsets=offsets, blendshapes=d["blendshapes"][keep].astype(np.float16),
             yaw_pitch=d["pose"][keep, :2].astype(np.float16), labels=labels[keep], classes=np.array(EMOTIONS))
    counts = ", ".join(f"{name} {int((labels[keep] == c).sum())}" for c, name in enumerate(EMOTIONS))
    print(f"{len(keep)} faces ({counts}) -> {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if args.faces:
        faces = PackedFaces(args.faces_from)
        pick = np.linspace(0, len(faces) - 1, min(args.faces, len(faces))).round().astype(int)
        out = args.out_dir / args.faces_from.name
        PackedFaces.save(out, [faces.blob[faces.offsets[i]:faces.offsets[i + 1]].tobytes() for i in pick],
                         list(faces.landmarks[pick]), list(faces.identity[pick]), list(faces.source[pick]))
        print(f"{len(pick)} of {len(faces)} photos -> {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
