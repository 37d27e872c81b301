"""Prepare the head generator's training data: every face of the shared photo sets as a whole-head crop.

Runs the camera's own code path (agent.detection.landmarks.FaceAnalyzer -> agent.synthesis.head.head_matrix),
so the generator is trained on the crops it will see at run time. Per face: the head crop (WebP), its
full 478-point mesh in crop pixels, and the part of the crop that lies inside the photo (the rest is
unknown, not black, and the losses skip it).

    python -m tools.prepare_heads            # -> ~/.cache/anoncam/heads192_{train,heldout}.npz

Held-out CelebA identities (tools.datasets.is_heldout_identity) go to a separate file and are never
used for training. Rerunning skips outputs that exist (use --force to rebuild).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from agent.synthesis.align import transform_points
from agent.synthesis.head import HEAD_SIZE, head_matrix
from tools.datasets import (
    CACHE,
    decode_rgb,
    identity_and_split,
    init_face_worker,
    photo_items,
    worker_faces,
)

SIZE = HEAD_SIZE  # the head crop's side, as the runtime cuts it
class PackedHeads:
    """Head crops (encoded WebP), their meshes in crop pixels and their in-photo masks (PNG), in one .npz."""

    def __init__(self, path: Path):
        d = np.load(path, allow_pickle=False)
        self.blob, self.offsets = d["blob"], d["offsets"]
        self.valid_blob, self.valid_offsets = d["valid_blob"], d["valid_offsets"]
        self.landmarks = d["landmarks"].astype(np.float32)
        self.identity, self.source = d["identity"], d["source"]
        self.size = int(d["size"])

    def __len__(self):
        return len(self.offsets) - 1

    def image(self, i: int) -> np.ndarray:
        return decode_rgb(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes())

    def valid(self, i: int) -> np.ndarray:
        """(size, size) uint8, 255 where the crop shows the photo."""
        data = self.valid_blob[self.valid_offsets[i]:self.valid_offsets[i + 1]].tobytes()
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)

    @staticmethod
    def save(path: Path, size: int, encoded, valid, landmarks, identity, source):
        def pack(parts):
            offsets = np.zeros(len(parts) + 1, np.int64)
            offsets[1:] = np.cumsum([len(p) for p in parts])
            return np.frombuffer(b"".join(parts), np.uint8), offsets

        blob, offsets = pack(encoded)
        valid_blob, valid_offsets = pack(valid)
        tmp = Path(str(path) + ".tmp.npz")
        np.savez(tmp, blob=blob, offsets=offsets, valid_blob=valid_blob, valid_offsets=valid_offsets,
                 landmarks=np.stack(landmarks).astype(np.float16), identity=np.array(identity),
                 source=np.array(source), size=np.array(size))
        os.replace(tmp, path)


def _process(item):
    name, data, quality = item
    rgb = decode_rgb(data)
    if rgb is None:
        return name, None
    faces = worker_faces(rgb)
    if not faces:
        return name, None
    m = head_matrix(faces[0].landmarks, SIZE)
    crop = cv2.warpAffine(rgb, m, (SIZE, SIZE), flags=cv2.INTER_AREA if m[0, 0] < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
    inside = cv2.warpAffine(np.full(rgb.shape[:2], 255, np.uint8), m, (SIZE, SIZE), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT)
    ok, enc = cv2.imencode(".webp", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, quality])
    ok2, valid = cv2.imencode(".png", inside, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not (ok and ok2):
        return name, None
    return name, (enc.tobytes(), valid.tobytes(), transform_points(m, faces[0].landmarks).astype(np.float32))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.prepare_heads", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=CACHE)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quality", type=int, default=90, help="WebP quality of the packed crops")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images of each set (smoke runs)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {split: args.out / f"heads{SIZE}_{split}.npz" for split in ("train", "heldout")}
    if all(p.exists() for p in paths.values()) and not args.force:
        print(f"{paths['train']} and {paths['heldout']} exist; --force rebuilds them")
        return 0
    items = photo_items(args.limit, args.quality)
    out = {split: ([], [], [], [], []) for split in paths}
    missed = 0
    with mp.get_context("spawn").Pool(args.workers, initializer=init_face_worker) as pool:
        for name, got in tqdm(pool.imap(_process, items, chunksize=16), total=len(items), desc="head crops"):
            if got is None:
                missed += 1
                continue
            identity, split, src = identity_and_split(name)
            for lst, v in zip(out[split], (*got, identity, src)):
                lst.append(v)
    for split, path in paths.items():
        enc, valid, lm, identity, src = out[split]
        PackedHeads.save(path, SIZE, enc, valid, lm, identity, src)
        print(f"{split}: {len(enc)} heads -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"no face found in {missed} of {len(items)} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
