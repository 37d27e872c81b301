"""``anoncam analyze INPUT [--json]``: expression metadata (emotion, blendshapes, head pose) per face.

INPUT is an image file or a folder searched recursively. With ``--json`` each image gives one
line on stdout, a message of schema ``anoncam.meta/1`` (agent/schema/anoncam-metadata-v1.json).
Unreadable files are reported on stderr and skipped; the exit status is then 1.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .config import AnonymizerConfig, ExpressionConfig, load_config, with_flags
from .errors import AnoncamError, ImageError
from .expression import META_SCHEMA, ExpressionAnalyzer
from .images import EXTENSIONS, read_image, to_rgb, to_rgb8

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser("analyze", help="per-face emotion, blendshapes and head pose of an image or a folder",
                       description="Find every face in INPUT (an image file, or a folder searched recursively) and "
                                   "print its 7-class emotion, 52 blendshapes and head pose. Nothing is written to disk.")
    p.add_argument("input", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object per image per line (schema anoncam.meta/1)")
    p.add_argument("--anonymized", action="store_true",
                   help="also anonymize each face and report whether the synthetic face kept the emotion (expression_kept)")
    p.add_argument("--backend", choices=("openvino", "onnxruntime", "auto"), help="inference backend (default: config, else auto)")
    p.add_argument("--config", type=Path, help="YAML config (its 'anonymizer' and 'expression' sections are used)")
    p.add_argument("--max-faces", type=int)
    p.set_defaults(func=run)


def _files(src: Path) -> list[Path]:
    if src.is_dir():
        return sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
    return [src]


class _Analysis:
    """Faces from MediaPipe in IMAGE mode, downscaled for analysis like the anonymizer does."""

    def __init__(self, cfg: AnonymizerConfig, anonymize: bool):
        self.cfg = cfg
        self.anonymizer = None
        if anonymize:
            from .pipeline import Anonymizer

            self.anonymizer = Anonymizer(cfg, mode="image")
        else:
            from .faces import FaceAnalyzer

            self.analyzer = FaceAnalyzer(max_faces=cfg.max_faces, mode="image",
                                         min_detection_confidence=cfg.min_detection_confidence, model_folder=cfg.models_dir)

    def faces_and_jobs(self, rgb: np.ndarray):
        if self.anonymizer is not None:
            analysis = self.anonymizer.analyze_all(rgb)
            _, jobs, _ = self.anonymizer.anonymize(rgb, analysis)
            return analysis.faces, jobs
        rgb8 = to_rgb8(rgb)
        h, w = rgb8.shape[:2]
        scale = min(1.0, self.cfg.max_analysis_side / max(h, w))
        small = rgb8 if scale == 1.0 else cv2.resize(rgb8, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        faces = self.analyzer.detect(small)
        for f in faces:
            f.landmarks = f.landmarks / scale
        return faces, None

    def close(self):
        (self.anonymizer or self.analyzer).close()


def _summary(msg: dict) -> str:
    if not msg["faces"]:
        return f"{msg['path']}: no face"
    parts = []
    for i, f in enumerate(msg["faces"]):
        e = f["emotion"]
        pose = f["head_pose"]
        s = f"face {i}: {e['label']} ({e['scores'][e['label']]:.2f})"
        s += f", yaw {pose['yaw']:.0f} pitch {pose['pitch']:.0f} roll {pose['roll']:.0f}" if pose else ", no head pose"
        if f["blendshapes"]:
            top = sorted(((v, k) for k, v in f["blendshapes"].items() if k != "_neutral"), reverse=True)[:3]
            s += ", top blendshapes " + " ".join(f"{k}={v:.2f}" for v, k in top)
        else:
            s += ", no blendshapes"
        if f.get("expression_kept") is not None:
            s += f", anonymized: {f['anonymized_emotion']['label']} ({'kept' if f['expression_kept'] else 'changed'})"
        parts.append(s)
    return f"{msg['path']}: " + "; ".join(parts)


def run(args) -> int:
    cfg = load_config(args.config) if args.config else None
    acfg: AnonymizerConfig = cfg.anonymizer if cfg else AnonymizerConfig()
    ecfg: ExpressionConfig = cfg.expression if cfg else ExpressionConfig()
    acfg = with_flags(acfg, backend=args.backend, max_faces=args.max_faces)
    ecfg = with_flags(ecfg, backend=args.backend, check_anonymized=True if args.anonymized else None)
    if not args.input.exists():
        raise AnoncamError(f"input {args.input} does not exist")
    files = _files(args.input)
    if not files:
        raise AnoncamError(f"no images ({', '.join(EXTENSIONS)}) under {args.input}")

    analysis = _Analysis(acfg, args.anonymized)
    expression = ExpressionAnalyzer(ecfg)
    failed = 0
    try:
        for path in tqdm(files, desc="analyze", unit="img", disable=len(files) < 2 or not sys.stderr.isatty()):
            try:
                rgb = to_rgb(read_image(path))
                faces, jobs = analysis.faces_and_jobs(rgb)
            except ImageError as exc:
                failed += 1
                print(f"anoncam: error: {exc}", file=sys.stderr)
                continue
            except Exception as exc:  # MediaPipe's own errors: report this file, go on with the rest
                failed += 1
                print(f"anoncam: error: face analysis failed on {path}: {exc}", file=sys.stderr)
                continue
            h, w = rgb.shape[:2]
            msg = {"schema": META_SCHEMA, "path": str(path), "width": w, "height": h,
                   "faces": expression.describe(rgb, faces, jobs)}
            print(json.dumps(msg, separators=(",", ":")) if args.json else _summary(msg), flush=True)
    finally:
        analysis.close()
    if args.anonymized and expression.checked:
        a = expression.agreement
        print(f"expression kept on {a['kept']} of {a['checked']} anonymized faces ({a['rate']:.1%})", file=sys.stderr)
    if failed:
        print(f"anoncam: {failed} of {len(files)} file(s) could not be analyzed", file=sys.stderr)
    return 1 if failed else 0
