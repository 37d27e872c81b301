"""Export the emotion classifier: ONNX FP32 (opset 17) -> INT8 for ONNX Runtime (static QDQ) and OpenVINO (NNCF).

    python -m tools.export_emotion                  # tools/checkpoints/emotion_cnn.pt -> models/emotion.int8.*

Calibration uses real aligned FER training crops (tools.prepare_expressions); agreement with the
FP32 model and FER val accuracy of each INT8 model, loaded through agent.runtime.backends.create_backend
exactly as the agent loads it, go to reports/emotion_export.json. Updates models/SHA256SUMS.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch

from tools.datasets import CACHE
from tools.emotion_model import CHECKPOINT, EmotionCNN
from tools.model_files import MODELS, ROOT, update_sums
from tools.quantize import quantize_openvino, quantize_ort
from tools.reports import write_report
from tools.train_emotion import load_split



def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, opset: int = 17) -> None:
    torch.onnx.export(model, example, str(path), opset_version=opset, input_names=[input_name], output_names=["logits"],
                      dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)


def _export(name: str, model: torch.nn.Module, example: torch.Tensor, calib: np.ndarray, input_name: str, work: Path) -> list[str]:
    fp32 = work / f"{name}.fp32.onnx"
    export_onnx(model, example, fp32, input_name)
    onnx_int8 = MODELS / f"{name}.int8.onnx"
    ov_xml = MODELS / f"{name}.int8.xml"
    with contextlib.chdir(work):  # the quantizers drop temporary files into the working directory
        # reduce_range: 7-bit weights. ONNX Runtime's u8*s8 kernels on AVX2 (this CPU, no VNNI) sum
        # pairs of products in int16 and saturate with full-range weights; measured on FER val, full
        # range kept only 78 % of the FP32 labels, 7 bits keep them (reports/emotion_export.json).
        quantize_ort(fp32, onnx_int8, calib, input_name, batch=32, method="minmax", reduce_range=True)
        quantize_openvino(fp32, ov_xml, calib, preset="performance")
    print(f"{name}: ONNX Runtime INT8 -> {onnx_int8}, OpenVINO INT8 -> {ov_xml}")
    return [onnx_int8.name, ov_xml.name, ov_xml.with_suffix(".bin").name]


def _accuracy(logits, labels):
    return float((logits.argmax(1) == labels).mean())


def _infer_all(backend, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([backend.infer(x[i:i + batch]) for i in range(0, len(x), batch)])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.export_emotion", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--calibration", type=int, default=512)
    ap.add_argument("--report", type=Path, default=ROOT / "reports/emotion_export.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    from agent.runtime.backends import create_backend

    train_d, val_d = load_split("train", args.cache), load_split("val", args.cache)
    rng = np.random.default_rng(0)
    # Calibrate on faces MediaPipe found: those are the only crops the agent ever classifies.
    idx = rng.choice(np.flatnonzero(train_d["found"]), args.calibration, replace=False)
    work = ROOT / "runs" / "export_emotion"
    work.mkdir(parents=True, exist_ok=True)

    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    cnn = EmotionCNN(width=ck["width"], stem_pool=ck.get("stem_pool", True))
    cnn.load_state_dict(ck["model"])
    cnn.eval()
    calib = (train_d["crops"][idx].astype(np.float32) / 255.0)[:, None]
    names = _export("emotion", cnn, torch.zeros(1, 1, 48, 48), calib, "face", work)

    val_x = (val_d["crops"].astype(np.float32) / 255.0)[:, None]
    labels = val_d["labels"]
    with torch.no_grad():
        ref = torch.cat([cnn(torch.from_numpy(val_x[i:i + 512])) for i in range(0, len(val_x), 512)]).numpy()
    report = {"checkpoint": str(args.checkpoint.relative_to(ROOT) if args.checkpoint.is_relative_to(ROOT) else args.checkpoint),
              "calibration_crops": int(len(calib)), "val_images": int(len(labels)),
              "emotion": {"torch_fp32_val_acc_no_tta": _accuracy(ref, labels)}}
    update_sums(MODELS, names)
    for kind in ("onnxruntime", "openvino"):
        b = create_backend(kind, "emotion.int8", MODELS)
        out = _infer_all(b, val_x)
        flip = _infer_all(b, np.ascontiguousarray(val_x[..., ::-1]))
        report["emotion"][kind] = {"val_acc_no_tta": _accuracy(out, labels), "val_acc_flip_tta": _accuracy(out + flip, labels),
                                   "label_agreement_with_fp32": float((out.argmax(1) == ref.argmax(1)).mean())}

    report["sizes_mb"] = {p.name: round(p.stat().st_size / 1e6, 3) for p in sorted(MODELS.glob("emotion*.int8.*"))}
    write_report(args.report, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
