"""Generator speed: the shipped INT8 generator vs GANonymization's unet_256, same process, same runtime.

    python -m tools.bench_generator            # -> reports/bench_generator.json

unet_256 (pix2pix, 54M parameters, 256 px, FP32, untrained weights: speed does not depend on them)
is exported to ONNX in a temporary folder and timed on ONNX Runtime and OpenVINO beside our models.
Median of --runs single-face (batch 1) calls after warm-up, in --rounds rounds that alternate the two
models, so a background load that comes and goes hits both alike: the speed-up is the median of the
per-round ratios, and each model's time the median over rounds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tools.export_generator import export_onnx
from tools.generator_model import count_macs, unet_256
from tools.model_files import ROOT
from tools.reports import write_report


def timed(fn, runs: int) -> float:
    for _ in range(5):
        fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


def ort_runner(path: Path, size: int):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    return lambda: s.run(None, {name: x})


def ov_runner(path: Path, size: int):
    import openvino as ov

    c = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    req = c.create_infer_request()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    return lambda: req.infer([x])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.bench_generator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--report", type=Path, default=ROOT / "reports/bench_generator.json")
    args = ap.parse_args(argv)

    from tools.generator_model import EdgeGenerator

    with tempfile.TemporaryDirectory() as tmp:
        ref = unet_256().eval()
        ref_onnx = Path(tmp) / "unet_256.onnx"
        with torch.no_grad():
            export_onnx(ref, ref_onnx, size=256)
        runners = {
            "onnxruntime": (ort_runner(ref_onnx, 256), ort_runner(args.models / "generator.int8.onnx", 128)),
            "openvino": (ov_runner(ref_onnx, 256), ov_runner(args.models / "generator.int8.xml", 128)),
        }
        rounds = {rt: [] for rt in runners}
        for _ in range(args.rounds):
            for rt, (big, small) in runners.items():
                rounds[rt].append((timed(big, args.runs), timed(small, args.runs)))
    results = {"unet_256_fp32": {"gmac": round(count_macs(ref, 256) / 1e9, 2)},
               "edge_generator_int8": {"gmac": round(count_macs(EdgeGenerator(), 128) / 1e9, 3)}}
    for rt, pairs in rounds.items():
        results["unet_256_fp32"][f"{rt}_ms"] = round(statistics.median(p[0] for p in pairs), 2)
        results["edge_generator_int8"][f"{rt}_ms"] = round(statistics.median(p[1] for p in pairs), 2)
        results[f"speedup_{rt}"] = round(statistics.median(p[0] / p[1] for p in pairs), 1)
        results[f"speedup_{rt}_rounds"] = [round(p[0] / p[1], 1) for p in pairs]
    results["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    write_report(args.report, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
