"""INT8 post-training quantization shared by the model exports: ONNX Runtime (static QDQ) and OpenVINO (NNCF).

Each model keeps its own settings (what stays FP32, calibration method, weight range); the calls are here once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def quantize_ort(fp32: Path, out: Path, calib: np.ndarray, input_name: str, *, batch: int = 1,
                 method: str = "percentile", reduce_range: bool = False, fp32_prefixes: tuple[str, ...] = (),
                 skip_symbolic_shape: bool = False) -> None:
    """Static QDQ: uint8 activations, per-channel symmetric int8 weights, calibrated on ``calib`` batches.

    Convs whose node name starts with one of ``fp32_prefixes`` are left in FP32.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: calib[i:i + batch]} for i in range(0, len(calib), batch)])

        def get_next(self):
            return next(self.items, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=skip_symbolic_shape)
    keep_fp32 = [n.name for n in onnx.load(str(pre)).graph.node
                 if n.op_type == "Conv" and fp32_prefixes and n.name.startswith(fp32_prefixes)]
    calibrate = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}[method]
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate,
                    nodes_to_exclude=keep_fp32, extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    pre.unlink()


def quantize_openvino(fp32: Path, out_xml: Path, calib: np.ndarray, *, preset: str = "performance",
                      fp32_prefixes: tuple[str, ...] = ()) -> None:
    """NNCF post-training quantization of the ONNX model, saved as OpenVINO IR (.xml + .bin)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32))
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    keep_fp32 = [op.get_friendly_name() for op in model.get_ops()
                 if op.get_type_name() == "Convolution" and fp32_prefixes and op.get_friendly_name().startswith(fp32_prefixes)]
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    q = nncf.quantize(model, dataset, subset_size=len(calib), preset=presets[preset],
                      ignored_scope=nncf.IgnoredScope(names=keep_fp32) if keep_fp32 else None)
    ov.save_model(q, str(out_xml), compress_to_fp16=False)
