"""Evaluate an anonymizer with independent judges: identity (dlib ResNet) and expression (FER mini-Xception).

    python -m tools.evaluate --method anoncam --out reports/anoncam        # the shipped models and settings
    python -m tools.evaluate --method anoncam --manifest variant.yaml --out reports/variant   # other model settings
    python -m tools.evaluate --method anoncam --config camera.yaml --out reports/camera       # a camera's config
    python -m tools.evaluate --method blur --out reports/blur              # baselines on the same faces
    python -m tools.evaluate --method pixelate --out reports/pixelate
    python -m tools.evaluate --summary reports/anoncam reports/blur reports/pixelate   # one Markdown table
    python -m tools.evaluate --compare reports/blur reports/anoncam    # paired differences, item by item

anoncam runs the full stills path (agent.pipeline.Anonymizer.process) built from ``--config`` (a user
config, as ``anoncam run`` reads it: backend, threads, models folder, experimental settings) and the
models' manifest: the folder's own ``manifest.yaml``, or ``--manifest``, a changed copy of it, to
evaluate other model settings (generator routing, identity normalization and variation, expression
neighbours, texture gain, tone match, feather, surround).

Identity: the 40 held-out CelebA identities x 30 photos, judged by dlib after the method:
re-identification (within dlib's 0.6 of the photo's own original), rank-1 against the other original
photos (chance 2.5 %), and the share of outputs in which dlib still finds a face (tools/evaluation/identity.py).
Expression: FER2013 val faces, upscaled 4x so MediaPipe finds them; agreement of the independent
judge's label on the original and on the output (tools/evaluation/expression.py).

Writes <out>/metrics.json, <out>/report.md, <out>/items.csv (each scored item's verdicts, for --compare)
and <out>/grid.png (conditioning | the replaced face region only, the rest blacked out, so it holds no
dataset pixels), plus reports/tmp/<name>_grid.png with original | conditioning | anonymized (gitignored:
dataset images are never committed).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2

from agent.config import load_config
from agent.errors import AnoncamError
from agent.runtime.manifest import load_manifest
from tools.datasets import CELEBA_ZIP, FER_VAL_ZIP
from tools.evaluation.expression import ExpressionJudge, evaluate_expression
from tools.evaluation.grid import write_grids
from tools.evaluation.identity import DlibRecognizer, evaluate_identity
from tools.evaluation.methods import METHODS, draws_expression, make_method
from tools.evaluation.report import ITEMS_FILE, compare_runs, summary_table, write_items, write_metrics, write_report
from tools.reports import git_commit

ROOT = Path(__file__).resolve().parent.parent


def run(args, cfg, manifest) -> dict:
    """Evaluate ``args.method`` and write the run's files to ``args.out``; returns its metrics."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cv2.setNumThreads(1)
    t0 = time.time()
    method = make_method(args, cfg, manifest)
    recognizer = DlibRecognizer()
    judge = ExpressionJudge()
    from tools.evaluation.second import load_second_judges

    second_id, second_expr, why = load_second_judges()
    if why:
        print(f"second judges skipped: {why}", file=sys.stderr)
    id_samples, fer_samples = [], []
    try:
        identity = {} if args.skip_identity else evaluate_identity(
            method, recognizer, args.limit, args.celeba_upscale, id_samples, args.grid_rows, second_id)
        expression = {} if args.skip_expression else evaluate_expression(
            method, judge, args.fer_limit, args.seed, args.fer_upscale, fer_samples, args.fer_grid_rows, second_expr)
    finally:
        method.close()
    items = identity.pop("_items", []) + expression.pop("_items", [])
    settings = {
        "method": args.method, **method.settings, "threads": cfg.inference.threads,
        "config": str(args.config) if args.config else "defaults", "manifest": str(args.manifest or manifest.folder / "manifest.yaml"),
        "celeba_upscale_before_anonymizing": args.celeba_upscale, "celeba_limit": args.limit or "all",
        "fer_upscale_before_anonymizing": f"{args.fer_upscale}x cubic", "fer_limit": args.fer_limit or "all",
        "seed": args.seed, "identity_judge": recognizer.version, "expression_judge_sha256": judge.sha256[:16],
        "python": platform.python_version(),
    }
    metrics = {
        "name": out.name, "method": args.method, "commit": git_commit(),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "seconds": time.time() - t0,
        "command": "python -m tools.evaluate " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
        "settings": settings, "identity": identity, "expression": expression,
        "config": cfg.model_dump(mode="json", include={"inference", "anonymizer", "experimental"}),
        "manifest": manifest.model_dump(mode="json"),
    }
    write_grids(id_samples + fer_samples, out / "grid.png", ROOT / "reports" / "tmp" / f"{out.name}_grid.png")
    metrics = write_metrics(out, metrics)
    write_items(out / ITEMS_FILE, items)
    write_report(out, metrics)
    return metrics


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=METHODS, help="what to evaluate")
    ap.add_argument("--out", type=Path, help="report folder, e.g. reports/anoncam (overwritten on rerun)")
    ap.add_argument("--config", type=Path, help="user config (YAML, as `anoncam run --config` reads it); default: the defaults")
    ap.add_argument("--manifest", type=Path, help="a variant of the models folder's manifest.yaml, for the same "
                    "model files (default: the folder's own)")
    ap.add_argument("--random-expression", action="store_true",
                    help="anoncam diagnostic: draw every face with a random bank expression (its own pose kept)")
    ap.add_argument("--limit", type=int, default=0, help="only N held-out photos, spread over identities (0 = all 1200)")
    ap.add_argument("--fer-limit", type=int, default=1000, help="FER val faces, class-stratified random subset (0 = all 5383)")
    ap.add_argument("--seed", type=int, default=0, help="FER sampling and anoncam's random draws")
    ap.add_argument("--celeba-upscale", type=int, default=1, help="upscale CelebA photos before anonymizing (scored at native size)")
    ap.add_argument("--fer-upscale", type=int, default=4, help="upscale FER faces (48 px) before anonymizing")
    ap.add_argument("--blur-sigma", type=float, default=0.1, help="blur baseline: Gaussian sigma as a fraction of face size")
    ap.add_argument("--erase-grow", type=float, default=1.0, help="erase baseline: grey out the face oval grown by this fraction")
    ap.add_argument("--pixel-blocks", type=float, default=10, help="pixelate baseline: blocks across the face")
    ap.add_argument("--grid-rows", type=int, default=8, help="held-out faces in grid.png (distinct identities)")
    ap.add_argument("--fer-grid-rows", type=int, default=4, help="FER faces in grid.png")
    ap.add_argument("--skip-identity", action="store_true")
    ap.add_argument("--skip-expression", action="store_true")
    ap.add_argument("--summary", nargs="+", type=Path, metavar="RUN",
                    help="print one Markdown table merging these report folders (or metrics.json files)")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                    help="compare report folder B with A item by item (paired differences, McNemar's test)")
    return ap


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    args.argv = argv
    if args.compare:
        print(compare_runs(*args.compare))
        return 0
    if args.summary:
        print(summary_table(args.summary))
        return 0
    if not args.method or not args.out:
        ap.error("--method and --out are required (or use --summary RUN... or --compare A B)")
    try:
        cfg = load_config(args.config)
        manifest = load_manifest(cfg.inference.models_dir, path=args.manifest)
    except AnoncamError as exc:
        ap.error(str(exc))
    if args.random_expression and (args.method != "anoncam" or not draws_expression(cfg, manifest)):
        ap.error("--random-expression replaces the drawn expression: it needs --method anoncam with identity "
                 "normalization (manifest generator.identity_normalization > 0, experimental.own_landmarks off)")
    needed = ([] if args.skip_identity else [CELEBA_ZIP]) + ([] if args.skip_expression else [FER_VAL_ZIP])
    for p in needed:
        if not p.is_file():
            ap.error(f"{p} not found; set ANONCAM_SHARED to the shared data folder")
    run(args, cfg, manifest)
    print(summary_table([Path(args.out)]))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
