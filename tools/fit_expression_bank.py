"""Fit the expression bank: k-Same for blendshapes, so the drawn expression is no one person's own.

MediaPipe's 52 blendshapes carry identity, not just expression: on the 40 held-out CelebA
identities, a photo's nearest neighbour by blendshapes alone is another photo of the same person
34 % of the time (chance 2.5 %), and with the shape model drawing them, the generated face is
recognised by dlib at rank-1 8.9 %. Drawing each face from a random other photo's blendshapes drops
that to 3.5 %, so this is the channel.

The fix follows k-Same-Select (Gross, Airoldi, Malin & Sweeney, PET 2005) on expression parameters
instead of pixels: the agent draws the mean of the nearest expressions of other people, "nearest"
measured only along the directions that tell the seven FER2013 emotions apart (linear discriminant
axes, fitted on FER2013 train labels and stored with the bank) and along gaze. The pooled faces
share the person's emotion and gaze and differ in the rest, which averages out. The bank itself
holds no one's blendshapes either: the training faces (photos of training identities and FER2013
train faces) are micro-aggregated with MDAV (Domingo-Ferrer & Mateo-Sanz, IEEE TKDE 2002) into
groups of at least ``--group`` faces, and only each group's mean is stored.

    python -m tools.fit_expression_bank            # -> models/expression_bank.npz, models/SHA256SUMS

Needs the shared photos and FER2013 train as analysed by tools.prepare_expressions (its cache).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agent.expression.bank import EXPRESSION_BANK, ExpressionBank
from agent.types import BLENDSHAPES
from tools.datasets import CACHE, init_face_worker, is_heldout_identity
from tools.fit_shape_model import _items, _process
from tools.model_files import MODELS, ROOT, update_sums
from tools.reports import write_report

N_BLEND = len(BLENDSHAPES)


def mdav(x: np.ndarray, group: int, progress: bool = True) -> list[np.ndarray]:
    """Maximum Distance to Average Vector micro-aggregation: row-index groups of ``group`` to
    ``2 * group - 1`` rows each, built from the outside in so each group holds near neighbours."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < group:
        raise ValueError(f"{n} rows cannot make a group of {group}")
    alive = np.ones(n, bool)
    sq = (x * x).sum(1)
    groups = []

    def take_nearest(p: np.ndarray, k: int) -> np.ndarray:
        idx = np.flatnonzero(alive)
        d = sq[idx] - 2 * x[idx] @ p
        chosen = idx[np.argpartition(d, k - 1)[:k]] if k < len(idx) else idx
        alive[chosen] = False
        groups.append(chosen)
        return chosen

    def farthest_from(p: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(alive)
        return x[idx[np.argmax(sq[idx] - 2 * x[idx] @ p)]]

    bar = tqdm(total=n, desc="micro-aggregate", unit="face", disable=not progress)
    while alive.sum() >= 3 * group:
        r = farthest_from(x[alive].mean(0))
        take_nearest(r, group)
        s = farthest_from(r)
        take_nearest(s, group)
        bar.update(2 * group)
    if alive.sum() >= 2 * group:
        take_nearest(farthest_from(x[alive].mean(0)), group)
    groups.append(np.flatnonzero(alive))
    alive[:] = False
    bar.update(n - bar.n)
    bar.close()
    return [g for g in groups if len(g)]


def fer_blendshapes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(blendshapes, emotion labels) of the FER faces MediaPipe found."""
    d = np.load(path, allow_pickle=False)
    keep = d["found"] & d["has_blendshapes"]
    return d["blendshapes"][keep].astype(np.float64), d["labels"][keep]


GAZE = [i for i, name in enumerate(BLENDSHAPES) if name.startswith("eyeLook")]
MIN_SPREAD = 0.03


def match_axes(x: np.ndarray, labels: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (52,), axes (52, 6 + 8)): the directions along which the bank's neighbours are found.

    Six are the linear discriminants of the 7 emotions (scaled so that a step along one is the
    spread within one emotion): what tells emotions apart, and not the rest, which is where a
    person's own manner sits. Eight are the gaze blendshapes (``eyeLook*``, in units of their spread
    over the bank), so the drawn face looks where the person looks: matching on emotion alone kept
    only a 0.38 correlation with the person's gaze.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    # Blendshapes that barely vary (_neutral, cheekSquint, noseSneer: sd < 0.03) would get huge
    # discriminant weights, and MediaPipe's noise in them would make the drawn expression jump.
    used = np.flatnonzero(x.std(0) >= MIN_SPREAD)
    lda = LinearDiscriminantAnalysis(solver="svd").fit(x[:, used], labels)
    emotion = np.zeros((len(BLENDSHAPES), len(lda.classes_) - 1))
    emotion[used] = lda.scalings_[:, :emotion.shape[1]]
    mean = np.zeros(len(BLENDSHAPES))
    mean[used] = lda.xbar_
    gaze = np.zeros((len(BLENDSHAPES), len(GAZE)))
    gaze[GAZE, np.arange(len(GAZE))] = 1.0 / np.maximum(spread[GAZE], 1e-6)
    return mean, np.concatenate([emotion, gaze], 1)


def nearest_same_identity(probes: np.ndarray, gallery: np.ndarray, ids: np.ndarray) -> float:
    """Share of probes whose nearest gallery row (Euclidean), other than their own photo's, shows the same person."""
    d = (probes * probes).sum(1)[:, None] + (gallery * gallery).sum(1)[None] - 2 * probes @ gallery.T
    np.fill_diagonal(d, np.inf)
    return float(np.mean(ids[d.argmin(1)] == ids))


def measure_pooling(bank: ExpressionBank, heldout: np.ndarray, heldout_ids: np.ndarray, fer_train: tuple,
                    fer_val: tuple, neighbours=(0, 1, 2, 4, 16, 64)) -> dict:
    """What pooling does to identity and to expression, on faces the bank never saw.

    Identity: on held-out CelebA identities, an attacker holds the measured blendshapes of every
    other photo and links each pooled face to the nearest one (standardised by the bank's spread);
    how often is it the same person? Expression: a linear classifier fitted on FER2013 train
    blendshapes, scored on FER2013 val blendshapes as measured (0) or pooled. Gaze: the correlation
    of the pooled ``eyeLook*`` blendshapes with the measured ones on the held-out photos.
    ``fer_train`` and ``fer_val`` are (blendshapes, labels) as :func:`fer_blendshapes` gives them.
    """
    from sklearn.linear_model import LogisticRegression

    xt, yt = fer_train
    xv, yv = fer_val
    clf = LogisticRegression(max_iter=3000).fit(xt, yt)
    scale = bank.centroids.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    out = {}
    for k in tqdm(neighbours, desc="measure pooling"):
        pool = (lambda a: a) if k == 0 else (lambda a: np.stack([bank.pool(v, k) for v in a]))
        pooled = pool(heldout)
        out[str(k)] = {"heldout_rank1": nearest_same_identity(pooled / scale, heldout / scale, heldout_ids),
                       "fer_val_accuracy": float(np.mean(clf.predict(pool(xv)) == yv)),
                       "gaze_correlation": float(np.corrcoef(pooled[:, GAZE].ravel(), heldout[:, GAZE].ravel())[0, 1])}
    return {"heldout_faces": len(heldout), "heldout_identities": len(set(heldout_ids)),
            "heldout_rank1_chance": 1.0 / max(1, len(set(heldout_ids))), "fer_val_faces": len(xv), "pooling": out}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.fit_expression_bank", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-set", type=int, default=2500, help="photos analysed from each face set (as tools.fit_shape_model)")
    ap.add_argument("--fer", type=Path, default=CACHE / "fer_train.npz", help="FER2013 train as analysed by tools.prepare_expressions")
    ap.add_argument("--fer-val", type=Path, default=CACHE / "fer_val.npz", help="FER2013 val, for the report only")
    ap.add_argument("--group", type=int, default=4, help="faces averaged into each stored expression (k of k-Same)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", type=Path, default=MODELS)
    ap.add_argument("--report", type=Path, default=ROOT / "reports/expression_bank.json")
    args = ap.parse_args(argv)
    if not args.fer.is_file():
        ap.error(f"{args.fer} not found: run python -m tools.prepare_expressions first")
    if not args.fer_val.is_file():
        ap.error(f"{args.fer_val} not found: run python -m tools.prepare_expressions first")

    photos, heldout, heldout_ids = [], [], []
    items = list(_items(args.per_set))
    with mp.get_context("spawn").Pool(args.workers, initializer=init_face_worker) as pool:
        for r in tqdm(pool.imap(_process, items, chunksize=16), total=len(items), desc="analyse faces"):
            if r is None:
                continue
            if is_heldout_identity(r[0]):  # the evaluation's identities: measured, never stored
                heldout.append(r[1][:N_BLEND])
                heldout_ids.append(r[0])
            else:
                photos.append(r[1][:N_BLEND])
    fer, fer_labels = fer_blendshapes(args.fer)
    x = np.concatenate([np.array(photos), fer])
    groups = mdav(x, args.group)
    centroids = np.stack([x[g].mean(0) for g in groups])
    # How far a face's drawn expression is moved from its own: the mean distance to its group's mean.
    moved = float(np.mean([np.linalg.norm(x[g] - c, axis=1).mean() for g, c in zip(groups, centroids)]))

    args.models.mkdir(parents=True, exist_ok=True)
    out = args.models / EXPRESSION_BANK
    mean, axes = match_axes(fer, fer_labels, centroids.std(0))
    np.savez(out, centroids=centroids.astype(np.float32), blendshapes=np.array(BLENDSHAPES),
             min_group=np.int32(min(len(g) for g in groups)),
             match_mean=mean.astype(np.float32), match_axes=axes.astype(np.float32))
    update_sums(args.models, [out.name])
    bank = ExpressionBank(args.models)
    measured = measure_pooling(bank, np.array(heldout), np.array(heldout_ids), (fer, fer_labels),
                               fer_blendshapes(args.fer_val))
    write_report(args.report, {
        "faces": len(x), "training_photos": len(photos), "fer_train_faces": len(fer), "group": args.group,
        "stored_expressions": len(centroids), "smallest_group": int(min(len(g) for g in groups)),
        "largest_group": int(max(len(g) for g in groups)), "mean_distance_face_to_group_mean": moved,
        "model": out.name, "size_kb": round(out.stat().st_size / 1e3, 1), **measured})
    for k, m in measured["pooling"].items():
        print(f"neighbours {k}: held-out rank-1 by blendshapes {m['heldout_rank1']:.3f} "
              f"(chance {measured['heldout_rank1_chance']:.3f}), FER val emotion from blendshapes {m['fer_val_accuracy']:.3f}, "
              f"gaze correlation {m['gaze_correlation']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
