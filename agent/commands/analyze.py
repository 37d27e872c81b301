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

from tqdm import tqdm

from agent.commands.native_log import stderr_is_terminal
from agent.config import command_config
from agent.errors import AnoncamError, ImageError
from agent.expression.metadata import META_SCHEMA, ExpressionAnalyzer
from agent.io.images import EXTENSIONS, image_files, read_image, to_rgb

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser("analyze", help="per-face emotion, blendshapes and head pose of an image or a folder",
                       description="Find every face in INPUT (an image file, or a folder searched recursively) and "
                                   "print its 7-class emotion, 52 blendshapes and head pose. Nothing is written to disk.")
    p.add_argument("input", type=Path, metavar="INPUT", help="an image, or a folder searched recursively (every format OpenCV reads)")
    p.add_argument("--json", action="store_true", help="one JSON object per image per line (schema anoncam.meta/1)")
    p.add_argument("--anonymized", action="store_true",
                   help="also anonymize each face and report whether the synthetic face kept the emotion (expression_kept)")
    p.add_argument("--backend", choices=("openvino", "onnxruntime", "auto"), help="inference backend (default: config, else auto)")
    p.add_argument("--device", help="OpenVINO device: CPU, GPU or NPU (default: config, else CPU)")
    p.add_argument("--config", type=Path, help="YAML config (its inference, anonymizer, expression and experimental "
                                               "sections are used)")
    p.add_argument("--max-faces", type=int, help="faces meshed and described per image, largest first "
                                                 "(default: config, else 8)")
    p.set_defaults(func=run)


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
    cfg = command_config(args.config, backend=args.backend, device=args.device, max_faces=args.max_faces)
    if not cfg.expression.enabled:
        cfg = cfg.model_copy(update={"expression": cfg.expression.model_copy(update={"enabled": True})})
    if not args.input.exists():
        raise AnoncamError(f"input {args.input} does not exist")
    files, _ = image_files(args.input)
    if not files:
        raise AnoncamError(f"no images ({', '.join(EXTENSIONS)}) under {args.input}")

    from agent.pipeline import Anonymizer
    from agent.runtime.manifest import load_manifest

    manifest = load_manifest(cfg.inference.models_dir)
    expression = ExpressionAnalyzer(cfg, manifest)
    anonymizer = Anonymizer(cfg, mode="image", emotion_classifier=expression.classifier, manifest=manifest)
    failed = 0
    try:
        for path in tqdm(files, desc="analyze", unit="img", disable=len(files) < 2 or not stderr_is_terminal()):
            try:
                rgb = to_rgb(read_image(path))
                analysis = anonymizer.analyze_all(rgb)
                jobs = anonymizer.anonymize(rgb, analysis)[1] if args.anonymized else None
            except ImageError as exc:
                failed += 1
                print(f"anoncam: error: {exc}", file=sys.stderr)
                continue
            except AnoncamError as exc:  # analysis failed on this file: report it, go on with the rest
                failed += 1
                print(f"anoncam: error: {path}: {exc}", file=sys.stderr)
                continue
            h, w = rgb.shape[:2]
            msg = {"schema": META_SCHEMA, "path": str(path), "width": w, "height": h,
                   "faces": expression.describe(rgb, analysis.faces, jobs)}
            print(json.dumps(msg, separators=(",", ":")) if args.json else _summary(msg), flush=True)
    finally:
        anonymizer.close()
    if args.anonymized and expression.checked:
        a = expression.agreement
        print(f"expression kept on {a['kept']} of {a['checked']} anonymized faces ({a['rate']:.1%})", file=sys.stderr)
    if failed:
        print(f"anoncam: {failed} of {len(files)} file(s) could not be analyzed", file=sys.stderr)
    return 1 if failed else 0
