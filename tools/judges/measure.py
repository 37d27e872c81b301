"""``python -m tools.judges measure``: do the judges work, and are they independent? Numbers only.

- Descriptor crop (``calibrate``): the crop scale and centre of tools.judges.descriptor, compared on
  CelebA identities the evaluation never uses (not tools.datasets.is_heldout_identity).
- Descriptor: the 40 held-out identities x 30 photos the evaluation uses, faces found by the
  project's FaceAnalyzer (MediaPipe). Equal error rate and its threshold over every genuine and
  impostor pair; rank-1 of each photo against all the *other* photos; the same figures for dlib
  (the evaluation's first judge) from its cached descriptors of the same photos, and how the two
  judges' pair distances correlate.
- Expression: the evaluation's class-stratified FER2013 val sample (seed 0). face-api's accuracy on
  the 48x48 frames as they are, on the 4x-upscaled frames the evaluation feeds its methods, and on
  crops cut from MediaPipe's landmarks in those; and its agreement with the evaluation's
  mini-Xception FER judge on the same upscaled frames.
"""

from __future__ import annotations

import os
import time
import zipfile

import cv2
import numpy as np

from tools.datasets import CACHE, CELEBA_ZIP, EMOTIONS, FER_VAL_ZIP, decode_rgb, is_heldout_identity
from tools.judges.descriptor import CROP_CENTRE, CROP_SCALE, FaceDescriptor, descriptor_crop
from tools.judges.expression import ExpressionJudge, expression_box, expression_crop
from tools.judges.metrics import equal_error_rate, pair_distances, rates_at

CALIBRATION_SCALES = (0.7, 0.8, 0.9, 1.0)
CALIBRATION_CENTRES = (0.1, 0.3, 0.5)
CALIBRATION_CHANNELS = ("RGB", "BGR")


def analyzer():
    os.environ.setdefault("GLOG_minloglevel", "2")
    from agent.detection.landmarks import FaceAnalyzer

    cv2.setNumThreads(1)
    return FaceAnalyzer(max_faces=1, mode="image")


def celeba_photos(heldout: bool, identities: int = 0, per_identity: int = 0) -> list[tuple[str, str]]:
    """(member, identity) of CelebA photos, held-out or not, optionally the first n identities x m photos."""
    with zipfile.ZipFile(CELEBA_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith((".jpg", ".png")))
    by_id: dict[str, list[str]] = {}
    for n in names:
        ident = n.split("/")[0]
        if is_heldout_identity(ident) == heldout:
            by_id.setdefault(ident, []).append(n)
    ids = sorted(by_id, key=lambda s: int(s.split("_")[1]))[: identities or None]
    return [(n, i) for i in ids for n in by_id[i][: per_identity or None]]


def find_faces(fa, photos) -> list[dict]:
    """MediaPipe's largest face in each photo: [{name, id, landmarks}] (photos without one are left out)."""
    out = []
    with zipfile.ZipFile(CELEBA_ZIP) as z:
        for name, ident in photos:
            faces = fa.detect(decode_rgb(z.read(name)))
            if faces:
                out.append({"name": name, "id": ident, "landmarks": max(faces, key=lambda f: f.size).landmarks})
    return out


def embed_all(descriptor: FaceDescriptor, faces: list[dict], **crop) -> tuple[np.ndarray, float]:
    """Descriptors of the found faces with one crop setting, and ms per face (crop + network)."""
    out = []
    t0 = time.perf_counter()
    with zipfile.ZipFile(CELEBA_ZIP) as z:
        for f in faces:
            rgb = decode_rgb(z.read(f["name"]))
            out.append(descriptor.embed([descriptor_crop(rgb, landmarks=f["landmarks"], **crop)])[0])
    return np.array(out), 1e3 * (time.perf_counter() - t0) / max(1, len(faces))


def calibrate(descriptor: FaceDescriptor, fa, identities: int = 30, per_identity: int = 10) -> dict:
    """EER of each crop (scale, centre) and channel order on training identities, beside the shipped setting."""
    faces = find_faces(fa, celeba_photos(False, identities, per_identity))
    ids = [f["id"] for f in faces]
    grid = []
    shipped = descriptor.channels
    for channels in CALIBRATION_CHANNELS:
        descriptor.channels = channels
        for scale in CALIBRATION_SCALES:
            for centre in CALIBRATION_CENTRES:
                desc, _ = embed_all(descriptor, faces, scale=scale, centre=centre)
                eer, _ = equal_error_rate(*pair_distances(desc, ids))
                grid.append({"channels": channels, "scale": scale, "centre": centre, "eer": round(eer, 4)})
    descriptor.channels = shipped
    return {"photos": f"{identities} training identities x {per_identity} (never the held-out ones)",
            "faces": len(faces), "grid": grid, "best": min(grid, key=lambda g: g["eer"]),
            "shipped": {"channels": shipped, "scale": CROP_SCALE, "centre": CROP_CENTRE}}


def rank1(desc: np.ndarray, ids) -> float:
    from tools.evaluation.identity import rank1_identification

    keys = np.arange(len(desc))
    return rank1_identification(desc, ids, keys, desc, ids, keys)


def verification(desc: np.ndarray, ids) -> dict:
    genuine, impostor = pair_distances(desc, ids)
    eer, thr = equal_error_rate(genuine, impostor)
    return {"genuine_pairs": len(genuine), "impostor_pairs": len(impostor), "eer": eer, "eer_threshold": thr,
            **rates_at(genuine, impostor, thr), "rank1": rank1(desc, ids),
            "distance_median_genuine": float(np.median(genuine)), "distance_median_impostor": float(np.median(impostor))}


def dlib_on_same_photos(faces: list[dict], ours: np.ndarray) -> dict | None:
    """dlib's figures from the evaluation's cached original descriptors, on the photos both judges scored."""
    path = CACHE / "eval_celeba_heldout_dlib_v1_up1.npz"
    if not path.is_file():
        return None
    d = np.load(path, allow_pickle=False)
    index = {n: i for i, n in enumerate(d["names"].tolist())}
    keep = [k for k, f in enumerate(faces) if f["name"] in index and not np.isnan(d["desc"][index[f["name"]], 0])]
    dl = d["desc"][[index[faces[k]["name"]] for k in keep]].astype(np.float64)
    ids = [faces[k]["id"] for k in keep]
    fig = verification(dl, ids)
    g_ours, i_ours = pair_distances(ours[keep], ids)
    g_dlib, i_dlib = pair_distances(dl, ids)
    both = np.concatenate([g_ours, i_ours]), np.concatenate([g_dlib, i_dlib])
    return {"photos": len(keep), **fig, "dlib_threshold_0.6": rates_at(g_dlib, i_dlib, 0.6),
            "pair_distance_correlation_pearson": float(np.corrcoef(*both)[0, 1]),
            "pair_distance_correlation_spearman": float(np.corrcoef(*(np.argsort(np.argsort(b)) for b in both))[0, 1])}


def measure_descriptor(descriptor: FaceDescriptor, fa) -> dict:
    photos = celeba_photos(True)
    faces = find_faces(fa, photos)
    desc, ms = embed_all(descriptor, faces)
    ids = [f["id"] for f in faces]
    fig = verification(desc, ids)
    shipped, descriptor.channels = descriptor.channels, "RGB"
    as_human = verification(embed_all(descriptor, faces)[0], ids)
    descriptor.channels = shipped
    return {"photos": len(photos), "identities": len({i for _, i in photos}), "faces_found": len(faces),
            "channels": shipped, "distance": "Euclidean between unit vectors (cosine similarity = 1 - d^2 / 2)", **fig,
            "eer_threshold_cosine": 1 - fig["eer_threshold"] ** 2 / 2, "rank1_chance": 1 / len(set(ids)),
            "ms_per_face": ms, "fed_rgb_as_human_does": {k: as_human[k] for k in ("eer", "eer_threshold", "rank1")},
            "dlib_same_photos": dlib_on_same_photos(faces, desc)}


def _accuracy(truth: list[str], pred: list[str]) -> dict:
    t, p = np.array(truth), np.array(pred)
    per = {c: float((p[t == c] == c).mean()) for c in EMOTIONS if (t == c).any()}
    return {"n": len(t), "accuracy": float((t == p).mean()), "macro_accuracy": float(np.mean(list(per.values()))),
            "per_class": per}


def measure_expression(judge: ExpressionJudge, fa, limit: int = 999, seed: int = 0) -> dict:
    from tools.evaluation.expression import ExpressionJudge as FerJudge, fer_items, fer_rgb

    fer = FerJudge()
    items = fer_items(limit, seed)
    truth, native, up, fer_labels, crop_truth, crop_pred = [], [], [], [], [], []
    t0 = time.perf_counter()
    with zipfile.ZipFile(FER_VAL_ZIP) as z:
        for name, label in items:
            grey = cv2.imdecode(np.frombuffer(z.read(name), np.uint8), cv2.IMREAD_GRAYSCALE)
            big = fer_rgb(z, name, 4)
            truth.append(label)
            native.append(judge.labels_of([grey])[0])
            up.append(judge.labels_of([big])[0])
            fer_labels.append(fer.label(big))
            faces = fa.detect(big)
            if faces:
                crop_truth.append(label)
                crop_pred.append(judge.labels_of([expression_crop(big, expression_box(faces[0].landmarks))])[0])
    confusion = [[int(sum(1 for t, p in zip(truth, up) if t == a and p == b)) for b in EMOTIONS] for a in EMOTIONS]
    return {"sampled": len(items), "sampling": f"class-stratified random, seed {seed} (the evaluation's sample)",
            "labels": list(EMOTIONS), "frame_48_native": _accuracy(truth, native),
            "frame_4x_upscaled": _accuracy(truth, up), "confusion_4x_rows_true_cols_predicted": confusion,
            "mediapipe_crop_in_4x": {"faces_found": len(crop_truth), **_accuracy(crop_truth, crop_pred)},
            "fer_mini_xception_4x": {**_accuracy(truth, fer_labels),
                                     "agreement_with_face_api": float(np.mean(np.array(up) == np.array(fer_labels)))},
            "chance_majority_class": max(truth.count(c) for c in set(truth)) / len(truth),
            "seconds": time.perf_counter() - t0}
