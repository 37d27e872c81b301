"""The identity judge: would a face recognizer still know the person?

The 40 held-out CelebA identities x 30 photos (tools.datasets.is_heldout_identity; never trained
on). Each whole photo goes through the method, then dlib's own detector and ResNet descriptor judge it:

- re-identification: share of photos whose anonymized descriptor lies within 0.6 (dlib's threshold)
  of the same photo's original descriptor;
- rank-1: share of anonymized photos whose nearest neighbour among all the OTHER original photos of
  the 40 identities has the right identity (chance 1/40 = 2.5 %);
- faces kept: share of outputs in which dlib's detector still finds a face.

Where dlib finds no face in the output, the descriptor is taken at the original photo's face box:
an attacker knows where the face was (the rest of the image is untouched), so a method does not
score as private merely because it breaks a detector. The detector-only figure is reported too.
Original descriptors are cached in ~/.cache/anoncam/, so reruns only judge the new outputs.
"""

from __future__ import annotations

import os
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from agent.types import iou
from tools.datasets import CACHE, CELEBA_ZIP, decode_rgb, is_heldout_identity
from tools.evaluation.grid import replaced_only
from tools.evaluation.look import look_figures, seam_ratio, tone_difference
from tools.evaluation.second import face_crop

DLIB_THRESHOLD = 0.6  # dlib's published same-person threshold for this ResNet
ORIGINALS_CACHE_VERSION = 1


# ---------------------------------------------------------------- metric math (no models needed)

def descriptor_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distance between paired descriptors (N, D) and (N, D)."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=1)


def verification_rate(anonymized: np.ndarray, originals: np.ndarray, threshold: float = DLIB_THRESHOLD) -> float:
    """Share of pairs (anonymized photo, its own original) that the recognizer calls the same person."""
    if len(anonymized) == 0:
        return float("nan")
    return float((descriptor_distances(anonymized, originals) < threshold).mean())


def rank1_identification(queries: np.ndarray, query_ids, query_keys, gallery: np.ndarray, gallery_ids, gallery_keys) -> float:
    """Share of queries whose nearest gallery descriptor has the query's identity.

    A query never matches the gallery entry with its own key (its own original photo): the gallery
    is the *other* photos, as a database of known faces would be.
    """
    if len(queries) == 0:
        return float("nan")
    return float(rank1_hits(queries, query_ids, query_keys, gallery, gallery_ids, gallery_keys).mean())


def rank1_hits(queries: np.ndarray, query_ids, query_keys, gallery: np.ndarray, gallery_ids, gallery_keys) -> np.ndarray:
    """Per query: is its nearest gallery descriptor (other than its own key's) of the query's identity."""
    if len(queries) == 0:
        return np.zeros(0, bool)
    q = np.asarray(queries, np.float64)
    g = np.asarray(gallery, np.float64)
    d = np.sqrt(np.maximum((q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2 * q @ g.T, 0))
    d[np.asarray(query_keys)[:, None] == np.asarray(gallery_keys)[None, :]] = np.inf
    nearest = np.argmin(d, axis=1)
    return np.asarray(gallery_ids)[nearest] == np.asarray(query_ids)


# ---------------------------------------------------------------- the judge

class DlibRecognizer:
    """dlib's HOG face detector, 5-point aligner and ResNet face descriptor (from face_recognition_models)."""

    def __init__(self, upsample: int = 1):
        try:
            import dlib
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its pkg_resources import warns on every load
                import face_recognition_models as frm
        except ImportError as exc:
            raise SystemExit(
                f"the identity judge needs the eval extra ({exc.name} missing): "
                "pip install 'dlib-bin' 'face_recognition_models' 'setuptools<81'"
            ) from None
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self.net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        self.upsample = upsample
        from importlib.metadata import PackageNotFoundError, version

        try:
            models_version = version("face_recognition_models")  # the module's own __version__ lags the release
        except PackageNotFoundError:
            models_version = getattr(frm, "__version__", "?")
        self.version = f"dlib {dlib.__version__}, face_recognition_models {models_version}"
        net_file = Path(frm.face_recognition_model_location())
        # What the cached original descriptors depend on: the library and the network's weights.
        self.cache_key = f"dlib {dlib.__version__}, {net_file.name} {net_file.stat().st_size}"

    def detect(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        return [(r.left(), r.top(), r.right(), r.bottom()) for r in self.detector(np.ascontiguousarray(rgb), self.upsample)]

    def describe(self, rgb: np.ndarray, box) -> np.ndarray:
        rect = self._dlib.rectangle(*[int(v) for v in box])
        shape = self.shape(np.ascontiguousarray(rgb), rect)
        return np.array(self.net.compute_face_descriptor(np.ascontiguousarray(rgb), shape), np.float32)


# ---------------------------------------------------------------- data

def heldout_photos() -> list[tuple[str, str]]:
    """(member name, identity) of every held-out CelebA photo, in zip order."""
    with zipfile.ZipFile(CELEBA_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith((".jpg", ".png")))
    return [(n, n.split("/")[0]) for n in names if is_heldout_identity(n.split("/")[0])]


def spread_limit(items: list[tuple[str, str]], limit: int) -> list[tuple[str, str]]:
    """The first ``limit`` photos taken round-robin over identities, so a short run still covers all of them."""
    if limit <= 0 or limit >= len(items):
        return items
    by_id: dict[str, list] = {}
    for it in items:
        by_id.setdefault(it[1], []).append(it)
    out, k = [], 0
    while len(out) < limit:
        for ident in sorted(by_id, key=lambda s: int(s.split("_")[1])):
            if k < len(by_id[ident]) and len(out) < limit:
                out.append(by_id[ident][k])
        k += 1
    return out


def original_descriptors(recognizer: DlibRecognizer, photos: list[tuple[str, str]]) -> dict:
    """dlib boxes and descriptors of the original photos, cached across runs (they never change)."""
    path = CACHE / f"eval_celeba_heldout_dlib_v{ORIGINALS_CACHE_VERSION}_up{recognizer.upsample}.npz"
    names = [n for n, _ in photos]
    if path.is_file():
        d = np.load(path, allow_pickle=False)
        if d["names"].tolist() == names and str(d["version"]) == recognizer.cache_key:
            return {"names": names, "ids": d["ids"].tolist(), "boxes": d["boxes"], "desc": d["desc"]}
    boxes = np.full((len(names), 4), -1, np.int32)
    desc = np.full((len(names), 128), np.nan, np.float32)
    with zipfile.ZipFile(CELEBA_ZIP) as z:
        for i, name in enumerate(tqdm(names, desc="dlib on originals (cached after)", unit="img")):
            rgb = decode_rgb(z.read(name))
            found = recognizer.detect(rgb)
            if found:
                box = max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
                boxes[i] = box
                desc[i] = recognizer.describe(rgb, box)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, names=np.array(names), ids=np.array([i for _, i in photos]), boxes=boxes, desc=desc,
             version=np.array(recognizer.cache_key))
    os.replace(tmp, path)
    return {"names": names, "ids": [i for _, i in photos], "boxes": boxes, "desc": desc}


# ---------------------------------------------------------------- evaluation

@dataclass
class _Scored:
    """What the pass over the photos collected: the scored photos' descriptors and the counts."""

    desc: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    detected_only_hit: list = field(default_factory=list)
    kept: int = 0
    gained: int = 0
    mediapipe_found: int = 0
    original_faces: int = 0
    seconds: float = 0.0
    look: dict = field(default_factory=lambda: {"tone_anon": [], "tone_orig": [], "seam_anon": [], "seam_orig": []})
    second: list | None = None  # with a second judge: (original row, its crop of the anonymized photo)


def evaluate_identity(method, recognizer: DlibRecognizer, limit: int = 0, upscale: int = 1,
                      samples: list | None = None, grid_rows: int = 8, second=None) -> dict:
    """dlib's verdicts on ``limit`` held-out photos (0: all 1200) after ``method``; each photo may be
    upscaled before the method and is scored at its own size. Up to ``grid_rows`` distinct identities
    are added to ``samples`` for the picture."""
    samples = [] if samples is None else samples
    all_photos = heldout_photos()
    orig = original_descriptors(recognizer, all_photos)
    index = {n: i for i, n in enumerate(orig["names"])}
    photos = spread_limit(all_photos, limit)
    s = _Scored(second=[] if second is not None else None)
    with zipfile.ZipFile(CELEBA_ZIP) as z:
        for name, ident in tqdm(photos, desc=f"identity ({method.name})", unit="img"):
            _score_photo(method, recognizer, decode_rgb(z.read(name)), name, ident, orig, index[name], upscale, s,
                         samples if len(samples) < grid_rows else None)
        figures = identity_figures(s, orig, index, photos)
        if second is not None:
            figures["second_judge"] = _second_judge(second, z, orig, s)
    return figures


def _second_judge(desc, z, orig: dict, s: _Scored) -> dict:
    """The second recognizer's verdicts on the same photos, from the originals' dlib boxes. Every
    scored photo has an original face (photos without one are counted, not scored)."""
    from tools.evaluation import second as sj

    rows = [i for i in range(len(orig["names"])) if orig["boxes"][i][0] >= 0]
    position = {row: k for k, row in enumerate(rows)}
    originals = desc.embed([sj.face_crop(decode_rgb(z.read(orig["names"][i])), orig["boxes"][i]) for i in rows])
    anonymized = desc.embed([crop for _, crop in s.second])
    return sj.identity_figures(desc, originals, [orig["ids"][i] for i in rows], anonymized,
                               [position[row] for row, _ in s.second])


def _score_photo(method, recognizer, rgb, name, ident, orig, i, upscale, s: _Scored, samples: list | None) -> None:
    t0 = time.perf_counter()
    out = method(_upscale(rgb, upscale))
    anon = _downscale(out.pixels, rgb.shape) if upscale != 1 else out.pixels
    s.seconds += time.perf_counter() - t0
    s.mediapipe_found += out.faces > 0
    found = recognizer.detect(anon)
    has_orig = orig["boxes"][i][0] >= 0
    s.original_faces += has_orig
    if found:
        s.kept += has_orig
        s.gained += not has_orig
    if not has_orig:
        return  # nothing to compare against: counted, not scored
    obox = tuple(int(v) for v in orig["boxes"][i])
    if upscale == 1 and out.region is not None and out.region.any():
        _measure_look(s.look, rgb, anon, out.face_box or obox, out.region)
    if s.second is not None:
        s.second.append((i, face_crop(anon, obox)))
    box = max(found, key=lambda b: iou(b, obox)) if found else obox
    d = recognizer.describe(anon, box)
    s.desc.append(d)
    s.keys.append(name)
    s.ids.append(ident)
    s.detected_only_hit.append(bool(found) and float(np.linalg.norm(d - orig["desc"][i])) < DLIB_THRESHOLD)
    if samples is not None and out.conditioning is not None and ident not in {x["id"] for x in samples}:
        region = _downscale(out.region.astype(np.uint8), rgb.shape) > 0 if upscale != 1 else out.region
        samples.append({"id": ident, "original": rgb, "conditioning": out.conditioning, "anonymized": anon,
                        "replaced": replaced_only(anon, region)})


def _measure_look(look: dict, rgb, anon, box, region) -> None:
    look["tone_anon"].append(tone_difference(anon, box, region))
    look["tone_orig"].append(tone_difference(rgb, box, None))
    look["seam_anon"].append(seam_ratio(anon, region))
    look["seam_orig"].append(seam_ratio(rgb, region))


def identity_figures(s: _Scored, orig: dict, index: dict, photos: list) -> dict:
    have = ~np.isnan(orig["desc"][:, 0])
    g_desc, g_ids, g_keys = orig["desc"][have], np.array(orig["ids"])[have], np.array(orig["names"])[have]
    keys, ids = s.keys, s.ids
    paired = np.array([orig["desc"][index[k]] for k in keys]) if keys else np.zeros((0, 128))
    anon_desc = np.array(s.desc) if s.desc else np.zeros((0, 128))
    dist = descriptor_distances(anon_desc, paired) if keys else np.zeros(0)
    hits = rank1_hits(anon_desc, ids, keys, g_desc, g_ids, g_keys)
    items = [{"part": "identity", "key": k, "label": i, "rank1_hit": int(h), "reid_hit": int(dd < DLIB_THRESHOLD),
              "distance": f"{dd:.4f}"} for k, i, h, dd in zip(keys, ids, hits, dist)]
    nan = float("nan")
    return {
        "_items": items,
        "photos": len(photos),
        "identities": len({i for _, i in photos}),
        "gallery_size": int(have.sum()),
        "mediapipe_found": int(s.mediapipe_found),
        "dlib_original_faces": int(s.original_faces),
        "scored": len(keys),
        "reid_rate": verification_rate(anon_desc, paired),
        "reid_rate_detected_only": float(np.mean(s.detected_only_hit)) if s.detected_only_hit else nan,
        "rank1": rank1_identification(anon_desc, ids, keys, g_desc, g_ids, g_keys),
        "rank1_originals": rank1_identification(paired, ids, keys, g_desc, g_ids, g_keys),
        "rank1_chance": 1.0 / max(1, len(set(g_ids.tolist()))),
        "faces_kept": s.kept / s.original_faces if s.original_faces else nan,
        "faces_gained": int(s.gained),
        "distance_mean": float(dist.mean()) if len(dist) else nan,
        "distance_median": float(np.median(dist)) if len(dist) else nan,
        "ms_per_image": 1e3 * s.seconds / max(1, len(photos)),
        "look": look_figures(s.look["tone_anon"], s.look["tone_orig"], s.look["seam_anon"], s.look["seam_orig"],
                             anon_desc, g_desc),
    }


def _upscale(rgb, factor):
    return rgb if factor == 1 else cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


def _downscale(rgb, shape):
    return cv2.resize(rgb, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
