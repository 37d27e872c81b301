"""Prepare emotion-classifier data: FER2013 through the camera's own analysis and alignment path.

    python -m tools.prepare_expressions        # -> ~/.cache/anoncam/fer_{train,val}.npz

Each 48x48 grey FER face is upscaled 4x to 192x192 with INTER_CUBIC and given a 48 px replicated
border (288x288): BlazeFace's short-range detector wants some context around a face and misses
more of these tight crops without it. MediaPipe's FaceLandmarker then runs in IMAGE mode
(agent.detection.landmarks.FaceAnalyzer) and agent.synthesis.align.align_face cuts the aligned crop, exactly as at run
time. If the padded image yields no face, the plain 192x192 upscale is tried once more.

Stored per image: the aligned grey crop (agent.expression.classifier.CROP_SIZE px), the 52 blendshapes, the
478 crop-space landmarks (normalised to [0, 1]), head pose, the label and whether MediaPipe found
the face. For faces MediaPipe misses (about 10 %) there are no blendshapes or landmarks; their crop
is the raw FER image warped by the median FER-to-crop alignment of the faces that were found, so it
is framed like an aligned crop on average. Training uses them for the CNN only (``found`` says which
they are) and validation reports accuracy with and without them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from agent.synthesis.align import align_face
from agent.expression.classifier import CROP_SIZE
from agent.types import BLENDSHAPES as BLENDSHAPE_NAMES
from tools.datasets import CACHE, EMOTIONS, FER_TRAIN_ZIP, FER_VAL_ZIP, iter_zip_images

UPSCALE = 4
PAD = 48
_analyzer = None


def _init():
    global _analyzer
    os.environ.setdefault("GLOG_minloglevel", "2")
    from agent.detection.landmarks import FaceAnalyzer

    cv2.setNumThreads(1)
    _analyzer = FaceAnalyzer(max_faces=1, mode="image")


def _detect(grey: np.ndarray):
    """(face, image it was found in, 2x3 matrix from FER pixels to that image) or (None, None, None)."""
    h, w = grey.shape
    up = cv2.resize(grey, (w * UPSCALE, h * UPSCALE), interpolation=cv2.INTER_CUBIC)
    for pad in (PAD, 0):
        img = cv2.cvtColor(cv2.copyMakeBorder(up, pad, pad, pad, pad, cv2.BORDER_REPLICATE), cv2.COLOR_GRAY2RGB)
        faces = _analyzer.detect(img)
        if faces:
            # Pixel centres: FER pixel i covers [i, i+1), so x_up = 4 * x_fer + 1.5 for cubic resize.
            m = np.array([[UPSCALE, 0, pad + (UPSCALE - 1) / 2], [0, UPSCALE, pad + (UPSCALE - 1) / 2]], np.float64)
            return faces[0], img, m
    return None, None, None


def _process(item):
    name, data = item
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        return name, None
    face, img, m_up = _detect(grey)
    if face is None:
        return name, {"grey": grey, "found": False}
    crop, lm, m = align_face(img, face.landmarks, CROP_SIZE)
    blend = face.blendshapes
    pose = face.head_pose()
    # FER pixels -> crop: crop matrix composed with the upscale+pad matrix.
    m_fer = m[:, :2] @ m_up[:, :2]
    t_fer = m[:, :2] @ m_up[:, 2] + m[:, 2]
    return name, {
        "grey": grey, "found": True,
        "crop": cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY),
        "lm": (lm / CROP_SIZE).astype(np.float16),
        "blend": np.array([blend.get(k, 0.0) for k in BLENDSHAPE_NAMES], np.float32) if blend else None,
        "pose": np.array([pose["yaw"], pose["pitch"], pose["roll"]], np.float32) if pose else None,
        "m_fer": np.hstack([m_fer, t_fer[:, None]]),
    }


def _median_similarity(ms: list[np.ndarray]) -> np.ndarray:
    """Median scale, rotation and offset of similarity matrices (robust to a few odd detections)."""
    a = np.array([m[0, 0] for m in ms])
    b = np.array([m[0, 1] for m in ms])
    tx = np.array([m[0, 2] for m in ms])
    ty = np.array([m[1, 2] for m in ms])
    a, b, tx, ty = (float(np.median(v)) for v in (a, b, tx, ty))
    return np.array([[a, b, tx], [-b, a, ty]], np.float64)


def prepare(zip_path: Path, out_path: Path, workers: int, limit: int = 0, fallback_m: np.ndarray | None = None):
    items = []
    for name, data in iter_zip_images(zip_path):
        if name.split("/")[0] in EMOTIONS:
            items.append((name, data))
    if limit:
        rng = np.random.default_rng(0)
        items = [items[i] for i in sorted(rng.choice(len(items), min(limit, len(items)), replace=False))]
    n = len(items)
    crops = np.zeros((n, CROP_SIZE, CROP_SIZE), np.uint8)
    lms = np.zeros((n, 478, 2), np.float16)
    blends = np.zeros((n, len(BLENDSHAPE_NAMES)), np.float32)
    poses = np.zeros((n, 3), np.float32)
    found = np.zeros(n, bool)
    has_blend = np.zeros(n, bool)
    labels = np.array([EMOTIONS.index(name.split("/")[0]) for name, _ in items], np.int64)
    missed, undecodable, ms = [], 0, []
    with mp.get_context("spawn").Pool(workers, initializer=_init) as pool:
        for i, (name, r) in enumerate(tqdm(pool.imap(_process, items, chunksize=32), total=n, desc=zip_path.stem)):
            if r is None:
                undecodable += 1
                continue
            if not r["found"]:
                missed.append((i, r["grey"]))
                continue
            found[i] = True
            crops[i] = r["crop"]
            lms[i] = r["lm"]
            if r["blend"] is not None:
                blends[i] = r["blend"]
                has_blend[i] = True
            if r["pose"] is not None:
                poses[i] = r["pose"]
            ms.append(r["m_fer"])
    if fallback_m is None:
        fallback_m = _median_similarity(ms)
    for i, grey in missed:
        crops[i] = cv2.warpAffine(grey, fallback_m, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    tmp = Path(str(out_path) + ".tmp.npz")
    np.savez(tmp, crops=crops, landmarks=lms, blendshapes=blends, pose=poses, labels=labels, found=found,
             has_blendshapes=has_blend, names=np.array([name for name, _ in items]), fallback_matrix=fallback_m,
             classes=np.array(EMOTIONS))
    os.replace(tmp, out_path)
    stats = {"images": n, "found": int(found.sum()), "missed": len(missed), "undecodable": undecodable,
             "without_blendshapes": int(found.sum() - has_blend.sum())}
    print(f"{zip_path.name}: {stats} -> {out_path}")
    return fallback_m, stats


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.prepare_expressions", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=CACHE)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="a random N images of each split (smoke runs)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"_n{args.limit}" if args.limit else ""
    train_path = args.out / f"fer_train{suffix}.npz"
    val_path = args.out / f"fer_val{suffix}.npz"
    if train_path.exists() and val_path.exists() and not args.force:
        print(f"{train_path} and {val_path} exist; --force rebuilds them")
        return 0
    # The fallback framing comes from training faces only, and is reused for validation.
    fallback_m, _ = prepare(FER_TRAIN_ZIP, train_path, args.workers, args.limit)
    prepare(FER_VAL_ZIP, val_path, args.workers, args.limit, fallback_m)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
