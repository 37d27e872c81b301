"""Prepare generator training data: detect, align and pack every face of the shared face sets.

Runs the camera's own code path (agent.detection.landmarks.FaceAnalyzer -> agent.synthesis.align.align_face), so the
generator is trained on exactly the crops it will see at run time.

    python -m tools.prepare_faces            # -> ~/.cache/anoncam/faces128_{train,heldout}.npz

Held-out CelebA identities (tools.datasets.is_heldout_identity) go to a separate file and are never
used for training. Rerunning skips outputs that exist (use --force to rebuild).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from pathlib import Path

import cv2
from tqdm import tqdm

from agent.synthesis.align import CROP_SIZE, align_face
from agent.synthesis.render import RENDERED_INDICES
from tools.datasets import (
    CACHE,
    PackedFaces,
    decode_rgb,
    identity_and_split,
    init_face_worker,
    photo_items,
    worker_faces,
)


def _process(item):
    name, data, quality = item
    rgb = decode_rgb(data)
    if rgb is None:
        return name, None, None
    faces = worker_faces(rgb)
    if not faces:
        return name, None, None
    crop, lm, _ = align_face(rgb, faces[0].landmarks, CROP_SIZE)
    # WebP: 40 % smaller than JPEG at the same error on 128 px crops, which decides what fits a GPU trip.
    ok, enc = cv2.imencode(".webp", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, quality])
    return name, enc.tobytes(), lm[RENDERED_INDICES]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.prepare_faces", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=CACHE)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quality", type=int, default=85, help="WebP quality of the packed crops")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images of each set (smoke runs)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train_path = args.out / f"faces{CROP_SIZE}_train.npz"
    held_path = args.out / f"faces{CROP_SIZE}_heldout.npz"
    if train_path.exists() and held_path.exists() and not args.force:
        print(f"{train_path} and {held_path} exist; --force rebuilds them")
        return 0

    items = photo_items(args.limit, args.quality)
    out = {"train": ([], [], [], []), "heldout": ([], [], [], [])}
    missed = 0
    with mp.get_context("spawn").Pool(args.workers, initializer=init_face_worker) as pool:
        for name, enc, lm in tqdm(pool.imap(_process, items, chunksize=16), total=len(items), desc="align faces"):
            if enc is None:
                missed += 1
                continue
            identity, split, src = identity_and_split(name)
            for lst, v in zip(out[split], (enc, lm, identity, src)):
                lst.append(v)
    for split, path in (("train", train_path), ("heldout", held_path)):
        PackedFaces.save(path, *out[split])
        print(f"{split}: {len(out[split][0])} faces -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"no face found in {missed} of {len(items)} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
