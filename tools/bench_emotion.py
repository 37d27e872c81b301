"""Time the INT8 emotion classifier per face on each backend, as the agent runs it.

    python -m tools.bench_emotion                    # -> reports/bench_emotion.json

Measures ``EmotionClassifier.probabilities`` (preprocessed crop in, probabilities out, including the
mirrored second pass when flip_tta is on) for batches of 1 and 4 faces, and the full
``ExpressionAnalyzer.describe`` per face (alignment + grey crop + classifier + JSON-ready dict) on
scikit-image's astronaut. Reports the median and 90th percentile of repeated runs; the CPU is shared,
so run it on an otherwise idle machine for figures to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from tools.reports import write_report

ROOT = Path(__file__).resolve().parent.parent


def _time(fn, repeat: int, warmup: int = 20) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(repeat)
    for i in range(repeat):
        t = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def _stats(ms: np.ndarray, faces: int) -> dict:
    return {"median_ms_per_face": round(float(np.median(ms)) / faces, 3),
            "p90_ms_per_face": round(float(np.percentile(ms, 90)) / faces, 3)}


def main(argv=None):
    os.environ.setdefault("GLOG_minloglevel", "2")
    ap = argparse.ArgumentParser(prog="python -m tools.bench_emotion", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="inference threads (inference.threads; the default config's 0 is the runtime's choice)")
    ap.add_argument("--report", type=Path, default=ROOT / "reports/bench_emotion.json")
    args = ap.parse_args(argv)

    from skimage import data

    from agent.config import Config, InferenceConfig
    from agent.detection.landmarks import FaceAnalyzer
    from agent.expression.classifier import grey_crop
    from agent.expression.metadata import ExpressionAnalyzer
    from agent.runtime.manifest import load_manifest

    rgb = data.astronaut()
    with FaceAnalyzer(max_faces=1, mode="image") as fa:
        faces = fa.detect(rgb)
    if not faces:
        raise SystemExit("MediaPipe found no face in the astronaut image")
    crop = grey_crop(rgb, faces[0].landmarks)
    shipped = load_manifest()
    report = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
              "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "repeat": args.repeat, "backends": {}}
    for backend in ("onnxruntime", "openvino"):
        cfg = Config(inference=InferenceConfig(backend=backend, threads=args.threads))
        r = {}
        for tta in (True, False):
            ea = ExpressionAnalyzer(cfg, manifest=shipped.override(emotion={"flip_tta": tta}))
            key = "flip_tta" if tta else "single_pass"
            r[key] = {}
            for n in (1, 4):
                batch = np.repeat(crop[None], n, axis=0)
                r[key][f"classifier_batch{n}"] = _stats(_time(lambda: ea.classifier.probabilities(batch), args.repeat), n)
            r[key]["describe_1_face"] = _stats(_time(lambda: ea.describe(rgb, faces), args.repeat), 1)
        report["backends"][backend] = r
        print(backend, json.dumps(r))
    report["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    write_report(args.report, report, echo=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
