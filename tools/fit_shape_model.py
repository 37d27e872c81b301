"""Fit the identity-free shape model: a face's expression and pose, drawn on an average person's geometry.

Landmarks carry face shape (jaw width, eye spacing, nose length), which identifies people. MediaPipe
also reports 52 blendshapes (expression) and the head rotation. This tool fits a ridge regression from
(blendshapes, rotation) to the aligned 128 px crop landmarks that the generator is conditioned on,
over training identities only. What the regression predicts is the shape an average person makes
with that expression and pose; what it leaves unexplained is mostly the person's own shape.
At run time ``agent.synthesis.shape`` draws the prediction instead of the person's landmarks.

    python -m tools.fit_shape_model            # -> models/shape_model.npz, models/SHA256SUMS
    python -m tools.fit_shape_model --fer 5000 # + FER2013 train faces (needs tools.prepare_expressions)

Runs the camera's code path (agent.detection.landmarks -> agent.synthesis.align) on the shared training photos. The photo sets
are mostly smiling or neutral, so a regression fitted on them alone knows little of how a frown or a
grimace moves the landmarks; ``--fer N`` adds N FER2013 train faces (all seven emotions, as analysed
by tools.prepare_expressions with the same code path) and reports the fit on FER2013 val too.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agent.synthesis.align import CROP_SIZE, alignment_matrix, transform_points
from agent.synthesis.render import RENDERED_INDICES
from agent.types import BLENDSHAPES
from agent.synthesis.shape import features, features_from_pose
from tools.datasets import (CACHE, CELEBA_ZIP, UTK_ZIP, decode_rgb, init_face_worker, is_heldout_identity,
                            iter_zip_images, worker_faces)
from tools.model_files import MODELS, ROOT, update_sums
from tools.reports import write_report

def _process(item):
    identity, data = item
    rgb = decode_rgb(data)
    faces = worker_faces(rgb) if rgb is not None else []
    if not faces or faces[0].blendshapes is None or faces[0].transform is None:
        return None
    f = faces[0]
    lm = transform_points(alignment_matrix(f.landmarks, CROP_SIZE), f.landmarks)[RENDERED_INDICES]
    return identity, features(f.blendshapes, f.transform), lm.reshape(-1).astype(np.float32)


def _items(limit_per_set: int):
    """Every k-th image of each set, so the sample spans all identities; held-out ones kept apart."""
    for zpath, src in ((CELEBA_ZIP, "celeba"), (UTK_ZIP, "utkface")):
        names = list(iter_zip_images(zpath))
        step = max(1, len(names) // limit_per_set)
        for name, data in names[::step][:limit_per_set]:
            yield (name.split("/")[0] if src == "celeba" else "utk:" + name.rsplit("/", 1)[-1]), data


def fer_rows(path: Path, limit: int, seed: int = 0):
    """(features, crop landmarks) of up to ``limit`` FER faces MediaPipe found, in the generator crop's pixels.

    tools.prepare_expressions stores landmarks normalised to its aligned crop, which has the
    generator crop's framing at another size.
    """
    d = np.load(path, allow_pickle=False)
    idx = np.flatnonzero(d["found"] & d["has_blendshapes"])
    idx = np.sort(np.random.default_rng(seed).permutation(idx)[:limit]) if limit > 0 else idx
    pose = d["pose"][idx].astype(np.float64)
    x = features_from_pose(d["blendshapes"][idx], pose[:, 0], pose[:, 1])
    y = d["landmarks"][idx][:, RENDERED_INDICES].astype(np.float64) * CROP_SIZE
    return x, y.reshape(len(idx), -1)


def fit_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Least squares with an L2 penalty on everything but the intercept (the last column of x)."""
    reg = lam * np.eye(x.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(x.T @ x + reg, x.T @ y)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.fit_shape_model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-set", type=int, default=2500, help="photos sampled from each face set")
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--fer", type=int, default=0, help="also fit on this many FER2013 train faces (0 = none, -1 = all)")
    ap.add_argument("--fer-dir", type=Path, default=CACHE, help="where tools.prepare_expressions wrote fer_{train,val}.npz")
    ap.add_argument("--identity-components", type=int, default=16,
                    help="principal directions of identity shape kept for the manifest's generator.identity_variation")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", type=Path, default=MODELS)
    ap.add_argument("--report", type=Path, default=ROOT / "reports/shape_model.json")
    args = ap.parse_args(argv)

    rows = {"train": [], "heldout": []}
    items = list(_items(args.per_set))
    with mp.get_context("spawn").Pool(args.workers, initializer=init_face_worker) as pool:
        for r in tqdm(pool.imap(_process, items, chunksize=16), total=len(items), desc="analyse faces"):
            if r is not None:
                rows["heldout" if is_heldout_identity(r[0]) else "train"].append(r[1:])
    xs, ys = (np.stack(v) for v in zip(*rows["train"]))
    xh, yh = (np.stack(v) for v in zip(*rows["heldout"]))
    photos = len(xs)
    if args.fer:
        xf, yf = fer_rows(args.fer_dir / "fer_train.npz", args.fer)
        xs, ys = np.concatenate([xs, xf]), np.concatenate([ys, yf])
    w = fit_ridge(xs, ys, args.ridge)

    def explained(x, y):
        return 1.0 - float(((y - x @ w) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())

    # How identities differ from the prediction, as principal directions: the agent can draw a face on
    # a random plausible other person's shape (the manifest's generator.identity_variation) instead of the average.
    resid = ys[:photos] - xs[:photos] @ w
    _, sv, vt = np.linalg.svd(resid - resid.mean(0), full_matrices=False)
    k = args.identity_components
    identity_std = sv[:k] / np.sqrt(len(resid) - 1)
    identity_share = float((sv[:k] ** 2).sum() / (sv ** 2).sum())

    # Mean landmark displacement between a face and its identity-free version, in 128 px crop pixels.
    moved = float(np.linalg.norm((yh - xh @ w).reshape(len(yh), -1, 2), axis=2).mean())
    args.models.mkdir(parents=True, exist_ok=True)
    out = args.models / "shape_model.npz"
    np.savez(out, weights=w.astype(np.float32), blendshapes=np.array(BLENDSHAPES),
             landmark_indices=RENDERED_INDICES.astype(np.int32), crop_size=np.int32(CROP_SIZE),
             identity_components=vt[:k].astype(np.float32), identity_std=identity_std.astype(np.float32))
    update_sums(args.models, [out.name])
    report = {"train_faces": len(xs), "train_photos": photos, "train_fer_faces": len(xs) - photos, "heldout_faces": len(xh),
              "ridge": args.ridge, "variance_explained_train": explained(xs, ys), "variance_explained_heldout": explained(xh, yh),
              "mean_landmark_shift_px_heldout": moved, "identity_components": k,
              "identity_components_share_of_residual_variance": identity_share, "model": str(out.name), "size_kb": round(out.stat().st_size / 1e3, 1)}
    fer_val = args.fer_dir / "fer_val.npz"
    if fer_val.exists():  # how much of an expression's geometry the model reproduces, on faces it never saw
        report["variance_explained_fer_val"] = explained(*fer_rows(fer_val, 0))
    write_report(args.report, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
