"""Export the trained generator: ONNX FP32 -> INT8 for ONNX Runtime (QDQ) and OpenVINO (NNCF).

    python -m tools.export_generator --checkpoint tools/checkpoints/generator_ema.pt
    python -m tools.export_generator --head --checkpoint runs/head/head_generator_ema.pt --name head-generator

The decoder is exported in its sub-pixel form (tools.generator_model.SubPixelUp: same outputs).
Writes models/generator.int8.onnx and models/generator.int8.{xml,bin}, updates models/SHA256SUMS,
and reports INT8-vs-FP32 parity (PSNR on held-out conditioning images) to
reports/generator_export.json. Calibration uses real conditioning images rendered from training
faces by the runtime renderer. Rerunning overwrites the outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np
import torch

from agent.synthesis.align import CROP_SIZE
from agent.synthesis.render import render_conditioning, to_network_input
from tools.datasets import CACHE, PackedFaces
from tools.generator_model import EdgeGenerator, for_export
from tools.model_files import MODELS, ROOT, update_sums
from tools.quantize import quantize_openvino, quantize_ort
from tools.reports import write_report

# First and last conv stay FP32: quantizing the sparse [-1, 1] conditioning input and the 3-channel
# tanh head cost 16 dB of PSNR (18 -> 35 dB measured) for 2 % of the MACs.
FP32_PREFIXES = ("/stem/", "/head/")


def conditioning_batch(pack_path: Path, count: int, seed: int) -> np.ndarray:
    pack = PackedFaces(pack_path)
    idx = np.random.default_rng(seed).choice(len(pack), size=min(count, len(pack)), replace=False)
    return to_network_input(np.stack([render_conditioning(pack.landmarks[i], CROP_SIZE) for i in idx]))


def head_batch(pack_path: Path, count: int, seed: int) -> np.ndarray:
    """Head generator inputs (conditioning, surroundings, head region) from head packs, as the agent builds them."""
    from agent.synthesis.head import head_mask
    from agent.synthesis.render import RENDERED_INDICES
    from tools.prepare_heads import PackedHeads

    pack = PackedHeads(pack_path)
    idx = np.random.default_rng(seed).choice(len(pack), size=min(count, len(pack)), replace=False)
    out = []
    for i in idx:
        region = head_mask(pack.landmarks[i], pack.size)
        cond = to_network_input(render_conditioning(pack.landmarks[i][RENDERED_INDICES], pack.size))[0]
        keep = (1.0 - region) * (pack.valid(i) > 0)
        out.append(np.concatenate([cond, to_network_input(pack.image(i))[0] * keep, (region * 2 - 1)[None]]))
    return np.stack(out).astype(np.float32)


def load_generator(checkpoint: Path, in_ch: int = 3) -> EdgeGenerator:
    g = EdgeGenerator(in_ch=in_ch)
    state = torch.load(checkpoint, map_location="cpu")
    state = state.get("G_ema", state)  # a compact training state (tools.train_head) holds the EMA weights too
    g.load_state_dict({k: v.float() for k, v in state.items()})
    return g.eval()


def export_onnx(g: torch.nn.Module, path: Path, size: int = CROP_SIZE, opset: int = 17, in_ch: int = 3) -> None:
    x = torch.zeros(1, in_ch, size, size)
    torch.onnx.export(g, x, str(path), opset_version=opset, input_names=["conditioning"], output_names=["face"],
                      dynamic_axes={"conditioning": {0: "batch"}, "face": {0: "batch"}}, dynamo=False)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two [-1, 1] images, on the 0-255 scale."""
    mse = float(np.mean(((a - b) * 127.5) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"conditioning": x[i:i + 8]})[0] for i in range(0, len(x), 8)])


def run_openvino(xml: Path, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    c = ov.Core().compile_model(str(xml), "CPU")
    return np.concatenate([c(x[i:i + 1])[0] for i in range(len(x))])


def export(g: EdgeGenerator, args, work: Path) -> None:
    args.models.mkdir(parents=True, exist_ok=True)
    fp32 = work / f"{args.name}.fp32.onnx"
    if args.head:
        from agent.synthesis.head import HEAD_SIZE

        export_onnx(for_export(g), fp32, size=HEAD_SIZE, in_ch=g.stem[0].in_channels)
        calib = head_batch(args.data / f"heads{HEAD_SIZE}_train.npz", args.calibration, seed=0)
        test = head_batch(args.data / f"heads{HEAD_SIZE}_heldout.npz", 64, seed=1)
    else:
        export_onnx(for_export(g), fp32)
        calib = conditioning_batch(args.data / f"faces{CROP_SIZE}_train.npz", args.calibration, seed=0)
        test = conditioning_batch(args.data / f"faces{CROP_SIZE}_heldout.npz", 64, seed=1)
    print(f"ONNX FP32 -> {fp32}")

    onnx_int8 = args.models / f"{args.name}.int8.onnx"
    ov_xml = args.models / f"{args.name}.int8.xml"
    with contextlib.chdir(work):  # the quantizers drop temporary files into the working directory
        # Symbolic shape inference cannot follow the nearest-neighbour Resize scales; ONNX's own does.
        quantize_ort(fp32, onnx_int8, calib, "conditioning", fp32_prefixes=FP32_PREFIXES, skip_symbolic_shape=True)
        print(f"ONNX Runtime INT8 (QDQ) -> {onnx_int8}")
        quantize_openvino(fp32, ov_xml, calib, preset="mixed", fp32_prefixes=FP32_PREFIXES)
    print(f"OpenVINO INT8 (NNCF) -> {ov_xml}")
    update_sums(args.models, [onnx_int8.name, ov_xml.name, ov_xml.with_suffix(".bin").name])

    with torch.no_grad():
        ref_torch = g(torch.from_numpy(test)).numpy()
    ref = run_ort(fp32, test)
    report = {
        "checkpoint": str(args.checkpoint.relative_to(ROOT) if args.checkpoint.is_relative_to(ROOT) else args.checkpoint),
        "heldout_conditioning_images": len(test),
        "psnr_db": {
            "onnx_fp32_vs_torch": psnr(ref, ref_torch),
            "onnxruntime_int8_vs_fp32": psnr(run_ort(onnx_int8, test), ref),
            "openvino_int8_vs_fp32": psnr(run_openvino(ov_xml, test), ref),
        },
        "sizes_mb": {p.name: round(p.stat().st_size / 1e6, 2) for p in (onnx_int8, ov_xml.with_suffix(".bin"))},
    }
    write_report(args.report, report)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.export_generator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "tools/checkpoints/generator_ema.pt")
    ap.add_argument("--data", type=Path, default=CACHE)
    ap.add_argument("--name", default="generator")
    ap.add_argument("--calibration", type=int, default=300)
    ap.add_argument("--head", action="store_true", help="a head generator checkpoint (tools.train_head): 7 input channels")
    ap.add_argument("--report", type=Path, default=ROOT / "reports/generator_export.json")
    ap.add_argument("--models", type=Path, default=MODELS, help="where the INT8 models and SHA256SUMS go")
    args = ap.parse_args(argv)
    # export() works inside a temporary directory, so relative paths must not be read from there.
    for name in ("checkpoint", "data", "report", "models"):
        setattr(args, name, getattr(args, name).resolve())

    g = load_generator(args.checkpoint, in_ch=7 if args.head else 3)
    # Each export works in its own folder: the FP32 model must be this checkpoint's, never a leftover.
    with tempfile.TemporaryDirectory(prefix="anoncam-export-") as tmp:
        export(g, args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
