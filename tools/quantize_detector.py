"""An INT8 copy of the face detector (static QDQ, one file both runtimes read), and how its scores compare.

    python -m tools.quantize_detector --out DIR       # DIR/face_detector.int8.onnx + DIR/quantize_detector.json

CenterFace is raised from opset 9 to 13 (per-channel QDQ needs it) and quantized with ONNX Runtime
(tools.quantize.quantize_ort: per-channel int8 weights, uint8 activations, percentile calibration).
Calibration frames are collages of CelebA photos of *training* identities at many sizes on a plain
room-like backdrop, never WIDER FACE. Held-out collages (other identities) then compare the INT8
heatmap with FP32's at every cell FP32 scores near the detector's thresholds: the ratio of the two
is what the manifest's thresholds are scaled by when the INT8 file is used
(``detector.file: face_detector.int8.onnx`` with the thresholds times ``score_ratio``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from tools.datasets import CELEBA_ZIP, decode_rgb, is_heldout_identity, iter_zip_images
from tools.model_files import MODELS

FRAME = (480, 640)  # h, w of a collage
FACES_PER_COLLAGE = 10


def photos(heldout: bool, limit: int) -> list[np.ndarray]:
    out = []
    for name, data in iter_zip_images(CELEBA_ZIP):
        if is_heldout_identity(name.split("/")[0]) == heldout:
            img = decode_rgb(data)
            if img is not None:
                out.append(img)
        if len(out) >= limit:
            break
    return out


def collage(rng: np.random.Generator, pool: list[np.ndarray]) -> np.ndarray:
    """A frame of FACES_PER_COLLAGE photos, each scaled so its face is 10-200 px, on a smooth noisy backdrop."""
    h, w = FRAME
    base = cv2.resize(rng.integers(40, 200, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    frame = np.clip(base.astype(np.int16) + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    for _ in range(FACES_PER_COLLAGE):
        img = pool[int(rng.integers(len(pool)))]
        # CelebA's aligned crops hold a face about half their width.
        face = float(np.exp(rng.uniform(np.log(10), np.log(200))))
        s = face / (img.shape[1] * 0.5)
        small = cv2.resize(img, (max(2, round(img.shape[1] * s)), max(2, round(img.shape[0] * s))),
                           interpolation=cv2.INTER_AREA)
        sh, sw = small.shape[:2]
        if sh >= h or sw >= w:
            continue
        y, x = int(rng.integers(0, h - sh)), int(rng.integers(0, w - sw))
        frame[y:y + sh, x:x + sw] = small
    return frame


def blob(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None].astype(np.float32))


def raise_opset(source: Path, target: Path, opset: int = 13) -> None:
    import onnx
    from onnx import version_converter

    model = version_converter.convert_version(onnx.load(str(source)), opset)
    # Names, so that quantization can leave kinds of node in FP32 (CenterFace's nodes have none): the
    # depthwise convolutions, and the output heads (the nodes making the four outputs and their inputs).
    outputs = {o.name for o in model.graph.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    heads = {id(producer[o]) for o in outputs} | {id(producer[i]) for o in outputs for i in producer[o].input
                                                   if i in producer and producer[o].op_type == "Sigmoid"}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            depthwise = node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
            kind = "head_" if id(node) in heads else "depthwise_" if depthwise else ""
            node.name = f"{kind}{node.op_type.lower()}_{i}"
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def head_nodes(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.name.startswith("head_")]


def score_ratio(fp32: Path, int8: Path, frames: list[np.ndarray], low: float = 0.04, high: float = 0.6) -> dict:
    """INT8 / FP32 heatmap score at the cells FP32 scores in [low, high] (where thresholds decide)."""
    import onnxruntime as ort

    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8))
    ratios, diffs = [], []
    for f in frames:
        x = blob(f)
        ha = a.run(None, {"image": x})[0][0, 0]
        hb = b.run(None, {"image": x})[0][0, 0]
        cells = (ha >= low) & (ha <= high)
        ratios.append(hb[cells] / ha[cells])
        diffs.append(hb[cells] - ha[cells])
    r, d = np.concatenate(ratios), np.concatenate(diffs)
    return {"cells": int(r.size), "score_ratio_median": float(np.median(r)),
            "score_ratio_p10_p90": [float(np.percentile(r, 10)), float(np.percentile(r, 90))],
            "score_difference_median": float(np.median(d))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.quantize_detector", description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=MODELS / "face_detector.onnx")
    ap.add_argument("--out", type=Path, required=True, help="folder for face_detector.int8.onnx and the report")
    ap.add_argument("--calibration", type=int, default=48, help="collages to calibrate on")
    ap.add_argument("--method", choices=("percentile", "minmax"), default="percentile")
    ap.add_argument("--fp32", choices=("none", "depthwise", "heads"), default="none",
                    help="left in FP32: nothing, the 17 depthwise convolutions, or the output heads (the four "
                         "output convolutions and the heatmap's sigmoid, whose uint8 output steps by 1/255)")
    args = ap.parse_args(argv)
    if not CELEBA_ZIP.exists():
        sys.exit(f"tools.quantize_detector: error: {CELEBA_ZIP} not found (set ANONCAM_SHARED)")
    from tools.quantize import quantize_ort

    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train, heldout = photos(False, 600), photos(True, 300)
    calib = np.concatenate([blob(collage(rng, train)) for _ in range(args.calibration)])
    opset13, int8 = args.out / "face_detector.opset13.onnx", args.out / "face_detector.int8.onnx"
    raise_opset(args.source, opset13)
    # Upsample with a computed scale defeats ORT's symbolic shape inference; ONNX's own is enough here.
    quantize_ort(opset13, int8, calib, "image", method=args.method, skip_symbolic_shape=True,
                 fp32_prefixes=("depthwise_",) if args.fp32 == "depthwise" else (),
                 fp32_nodes=tuple(head_nodes(opset13)) if args.fp32 == "heads" else ())
    report = {"source": str(args.source), "method": args.method, "fp32": args.fp32, "calibration_collages": args.calibration,
              **score_ratio(opset13, int8, [collage(rng, heldout) for _ in range(24)])}
    opset13.unlink()
    (args.out / "quantize_detector.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
