"""Recall on crowded real photos: which annotated faces each anonymizer leaves untouched.

    python -m tools.eval_recall --limit 20                    # quick check, both methods
    python -m tools.eval_recall --config config/agent.yaml    # anoncam as a camera with that config runs it
    python -m tools.eval_recall --manifest variant.yaml --methods anoncam   # other detector thresholds
    python -m tools.eval_recall --data DIR_OR_ZIP --methods deface
    python -m tools.eval_recall --turn 180 --half odd         # the photos upside down, with no orientation tag

Data: shared/data/crowd/wider_face_val_dev.zip (WIDER FACE val, research-only: unpacked into
~/.cache/anoncam, never into the repo), or any zip/folder with images/ and a gt.json in its format.
Each method (`anoncam`: agent.pipeline.Anonymizer on stills, built from --config and the models'
manifest or --manifest, a changed copy of it; `deface`: deface with its CLI defaults) is timed alike:
decode the file, anonymize, encode JPEG q95 in memory. The methods take turns on each photo, in
rotating order, so that a drift in the machine's speed falls on both. Then, decoded output vs original:

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
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agent.errors import AnoncamError
from tools.datasets import CACHE
from tools.recall.data import (JPEG_QUALITY, TURNS, WIDER_ZIP, decode_jpeg, encode_jpeg, face_rows, load_dataset, load_rgb,
                               turned_dataset)
from tools.recall.judge import DLIB_CROP_GROWTH, DLIB_FACE_PX, DLIB_MIN_HEIGHT, DLIB_MIN_IOU, DLIB_THRESHOLD, DlibJudge
from tools.recall.methods import METHODS, anoncam_setup, make_method
from tools.recall.metrics import calibrate, centre_diff, dlib_counts, impostor_rate, method_figures, outside_changed_share
from tools.recall.report import markdown, write_faces_csv
from tools.reports import ROOT, cpu_name, write_report

DLIB_PROTOCOL = {
    "min_height_px": DLIB_MIN_HEIGHT, "detector": "dlib.get_frontal_face_detector() (HOG), upsample 0",
    "crop": f"GT box grown to {DLIB_CROP_GROWTH:g}x, clipped, resized so the face is {DLIB_FACE_PX} px tall",
    "found": f"best detection with IoU >= {DLIB_MIN_IOU} with the GT box",
    "matched": f"found and descriptor at the detection within {DLIB_THRESHOLD} of the original's at the GT box",
}


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
            if not f["invalid"] and f.get("upright_h", f["h"]) >= DLIB_MIN_HEIGHT:
                descriptors[i, k] = judge.describe(rgb, f)
                found[i, k] = judge.match(rgb, f, descriptors[i, k])
    return noise, descriptors, found


def timed_output(method, path: Path) -> tuple[float, bytes]:
    """Wall-clock seconds for one image as a user would run it: decode, anonymize, encode JPEG."""
    t = time.perf_counter()
    data = encode_jpeg(method(load_rgb(path)))
    return time.perf_counter() - t, data


def method_passes(methods: list, folder: Path, items: list[dict], judge: DlibJudge, originals: dict) -> dict:
    """Run every method over all images and measure its outputs (the measuring is not timed). The
    methods take turns on each image, in an order that rotates, never side by side: a shared
    machine's speed drifts by a third within minutes, and so it falls on all of them alike."""
    first = folder / "images" / items[0]["file"]
    for method in methods:
        timed_output(method, first)  # warm-up: first-call allocations, lazy loads
    runs = {m.name: {"seconds": [], "diffs": [], "outside": [], "dlib": {}} for m in methods}
    for i, it in enumerate(tqdm(items, desc=" + ".join(runs), unit="img")):
        path = folder / "images" / it["file"]
        rgb = load_rgb(path)
        reencoded = decode_jpeg(encode_jpeg(rgb))
        turn = i % len(methods)
        for method in methods[turn:] + methods[:turn]:
            dt, data = timed_output(method, path)
            run, out = runs[method.name], decode_jpeg(data)
            run["seconds"].append(dt)
            run["diffs"] += [centre_diff(rgb, out, f) for f in it["faces"]]
            run["outside"].append(outside_changed_share(rgb, out, reencoded, it["faces"]))
            for k, f in enumerate(it["faces"]):
                if (i, k) in originals:
                    run["dlib"][i, k] = judge.match(out, f, originals[i, k])
    return {name: {**run, "diffs": np.array(run["diffs"]), "outside": np.array(run["outside"])}
            for name, run in runs.items()}


def run_methods(names: list[str], args, folder: Path, items: list[dict], rows: list[dict], judge: DlibJudge,
                originals: dict, threshold: float) -> tuple[dict, dict]:
    """(per method: its pass over the images, its figures)."""
    methods = []
    try:
        for name in names:
            try:
                methods.append(make_method(name, args.config, args.manifest))
            except AnoncamError as exc:
                raise SystemExit(f"anoncam: error: {exc}") from None
        runs = method_passes(methods, folder, items, judge, originals)
    finally:
        for method in methods:
            method.close()
    figures = {m.name: {"version": m.version, "settings": m.settings, "failures": m.failures,
                        **method_figures(runs[m.name], rows, threshold)} for m in methods}
    return runs, figures


# ---------------------------------------------------------------- main

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.eval_recall", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=WIDER_ZIP, help="zip or folder with images/ and gt.json")
    ap.add_argument("--cache", type=Path, help="where a --data zip is unpacked (default ~/.cache/anoncam/<name>)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of: " + ", ".join(METHODS))
    ap.add_argument("--config", type=Path, help="user config for anoncam (YAML, as `anoncam run --config` reads it)")
    ap.add_argument("--manifest", type=Path, help="a variant of the models folder's manifest.yaml for anoncam "
                    "(default: the folder's own)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    ap.add_argument("--half", choices=("even", "odd"), help="every other image only: even (0th, 2nd, ...) or odd "
                    "(1st, 3rd, ...: the photos the detector's settings are tuned on)")
    ap.add_argument("--turn", type=int, choices=sorted(TURNS), help="turn every photo clockwise by this many degrees "
                    "(with its boxes) first: photos held sideways or upside down, stored without an orientation tag; "
                    "size bins stay by the face's own height, and dlib's frontal detector finds few turned faces")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/recall")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not names or set(names) - set(METHODS):
        ap.error(f"--methods takes a comma-separated list of {', '.join(METHODS)}")
    if "anoncam" in names:
        try:  # a bad config or manifest is one line now, not after the reference pass
            anoncam_setup(args.config, args.manifest)
        except AnoncamError as exc:
            raise SystemExit(f"anoncam: error: {exc}") from None

    folder, items = load_dataset(args.data, args.cache)
    items = items[{"even": 0, "odd": 1}[args.half]::2] if args.half else items
    items = items[:args.limit] if args.limit > 0 else items
    if args.turn:
        folder, items = turned_dataset(folder, items, args.turn, CACHE / f"{folder.name}-turn{args.turn}")
    if not items:
        raise SystemExit(f"anoncam: error: no images listed in {folder}/gt.json")
    rows, judge = face_rows(items), DlibJudge()
    noise, originals, original_found = reference_pass(folder, items, judge)
    calibration = calibrate(noise, rows)
    threshold = calibration["face_threshold"]
    print(f"calibration: re-encoding at q{JPEG_QUALITY} moves a valid face's centre by at most "
          f"{calibration['reencode_max_centre_diff']:.3f}; leak threshold {threshold:.3f}")
    runs, figures = run_methods(names, args, folder, items, rows, judge, originals, threshold)
    summary = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {"path": str(args.data), "folder": str(folder), "images": len(items), "faces": len(rows),
                 "faces_valid": sum(not r["invalid"] for r in rows), "limit": args.limit,
                 "half": args.half or "all", "turn": args.turn or 0},
        "calibration": calibration, "config": str(args.config) if args.config else "defaults (Config())",
        "manifest": str(args.manifest) if args.manifest else "the models folder's manifest.yaml",
        "judge": judge.version, "dlib_protocol": DLIB_PROTOCOL,
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
