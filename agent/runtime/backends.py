"""One small inference interface with an ONNX Runtime and an OpenVINO implementation.

Like Frigate's detector plugins: each backend is one class that loads a model by its base name
(``generator.int8`` -> ``generator.int8.onnx`` or ``generator.int8.xml``+``.bin``) and maps a
float32 NCHW batch to the model's first output. The generator and the emotion classifier are both
just models behind it.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from agent.errors import ModelError
from agent.runtime.model_files import models_dir, verified_path

log = logging.getLogger(__name__)

BACKENDS = ("openvino", "onnxruntime", "auto")
OPENVINO_MISSING = ("OpenVINO is not installed: pip install 'anoncam[openvino]', "
                    "or set inference.backend: onnxruntime")


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


class InferenceBackend(ABC):
    name: str = "?"

    def __init__(self, model: str, folder: Path | None = None, device: str = "CPU", threads: int = 0):
        self.model = model
        self.folder = Path(folder) if folder is not None else models_dir()
        self.device = device
        self.threads = threads

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a float32 NCHW batch and return its first output."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r}, device={self.device!r})"


class OnnxRuntimeBackend(InferenceBackend):
    name = "onnxruntime"

    def __init__(self, model, folder=None, device="CPU", threads=0):
        super().__init__(model, folder, device, threads)
        import onnxruntime as ort

        path = verified_path(f"{model}.onnx", self.folder)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Idle workers spin by default, holding a core for a while after every op. The agent runs
        # face analysis on one thread while this model runs on another; on a 2-core device a
        # spinning pool takes the core analysis needs (measured by `anoncam bench`).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"ONNX Runtime could not load {path}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch):
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


class OpenVinoBackend(InferenceBackend):
    name = "openvino"

    def __init__(self, model, folder=None, device="CPU", threads=0):
        super().__init__(model, folder, device, threads)
        try:
            import openvino as ov
        except ImportError:
            raise ModelError(OPENVINO_MISSING) from None

        xml = verified_path(f"{model}.xml", self.folder)
        verified_path(f"{model}.bin", self.folder)
        core = ov.Core()
        # Listing the devices loads every device plugin (GPU and NPU: ~26 MB of RSS on a CPU-only box),
        # so it is asked only when a device other than the always-present CPU is wanted.
        if device != "CPU" and device.split(":")[0].split(".")[0] not in {d.split(".")[0] for d in core.available_devices} and not device.startswith(("AUTO", "MULTI", "HETERO")):
            raise ModelError(
                f"OpenVINO device {device!r} is not available here (found {core.available_devices}); "
                "set inference.device to one of those, or use CPU"
            )
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if device == "CPU":
            # Pinned (OpenVINO's default), single-thread models run from two threads at once share
            # one core: the agent runs the face detector while the generator works, and on 2 cores
            # the pair took 1.6-2x as long; unpinned, `anoncam bench` gains 10-20 % fps on OpenVINO.
            config["ENABLE_CPU_PINNING"] = False
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
        try:
            model_ir = core.read_model(str(xml))
            # Batch size varies with the number of faces in the frame.
            model_ir.reshape({model_ir.inputs[0].get_any_name(): ov.PartialShape([-1] + list(model_ir.inputs[0].get_partial_shape())[1:])})
            self.compiled = core.compile_model(model_ir, device, config)
        except Exception as exc:
            raise ModelError(f"OpenVINO could not load {xml} on {device}: {exc}") from exc
        self.request = self.compiled.create_infer_request()

    def infer(self, batch):
        self.request.infer([np.ascontiguousarray(batch, dtype=np.float32)])
        return self.request.get_output_tensor(0).data.copy()


def create_backend(kind: str, model: str, folder: Path | None = None, device: str = "CPU", threads: int = 0) -> InferenceBackend:
    """Build the backend named ``kind``; ``auto`` prefers OpenVINO and falls back to ONNX Runtime."""
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(model, folder, device, threads)
    if kind == "openvino":
        return OpenVinoBackend(model, folder, device, threads)
    if kind == "auto":
        if not openvino_available():
            return OnnxRuntimeBackend(model, folder, "CPU", threads)
        try:
            return OpenVinoBackend(model, folder, device, threads)
        except ModelError as exc:
            log.warning("OpenVINO unavailable for %s (%s); using ONNX Runtime", model, exc)
            return OnnxRuntimeBackend(model, folder, "CPU", threads)
    raise ModelError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
