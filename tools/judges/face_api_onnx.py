"""face-api's faceExpressionNet as an ONNX graph, from its weights manifest.

face-api ships the net as weights only (``face_expression_model-weights_manifest.json`` + ``.bin``,
uint8-quantised); the architecture is code (src/faceFeatureExtractor/FaceFeatureExtractor.ts,
denseBlock.ts, src/faceProcessor/FaceProcessor.ts). There is no TF.js graph for tf2onnx to read, so
the same graph is written here with the ``onnx`` helpers:

    dense0..3: denseBlock4 (first conv of dense0 is a plain 3x3 conv, the rest separable; each
               block's first conv has stride 2, TF 'same' padding); 112 -> 56 -> 28 -> 14 -> 7
    avgPool 7x7 stride 2 'valid' -> 1x1x256, fc 256 -> 7, softmax.

Input (N, 112, 112, 3) NHWC float32, already mean-subtracted and divided by 255 (see
tools.judges.expression.to_input); output (N, 7) probabilities in face-api's label order.
"""

from __future__ import annotations

import json

import numpy as np

INPUT = "input"
OUTPUT = "probabilities"
SIZE = 112
_DTYPES = {"float32": (np.float32, 4), "int32": (np.int32, 4)}


def read_weights(manifest: list, data: bytes) -> dict[str, np.ndarray]:
    """TF.js weights manifest + concatenated shards -> name: float32 array (uint8/uint16 dequantised)."""
    out, offset = {}, 0
    for group in manifest:
        for spec in group["weights"]:
            shape = spec["shape"]
            n = int(np.prod(shape)) if shape else 1
            q = spec.get("quantization")
            if q:
                qtype = np.dtype(q["dtype"])
                raw = np.frombuffer(data, qtype, n, offset).astype(np.float32)
                offset += n * qtype.itemsize
                if "scale" in q:
                    raw = raw * np.float32(q["scale"]) + np.float32(q["min"])
                value = raw
            else:
                dtype, size = _DTYPES[spec["dtype"]]
                value = np.frombuffer(data, dtype, n, offset).astype(np.float32)
                offset += n * size
            out[spec["name"]] = value.reshape(shape)
    if offset != len(data):
        raise ValueError(f"weights manifest describes {offset} bytes, the shards hold {len(data)}")
    return out


class _Graph:
    def __init__(self, weights: dict[str, np.ndarray]):
        self.w = weights
        self.nodes, self.inits, self.used = [], [], set()
        self.n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        from onnx import helper

        self.n += 1
        out = f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def take(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.w[name]

    def conv(self, x: str, prefix: str, stride: int) -> str:
        """Plain 3x3 conv (HWIO filters) + bias, TF 'same' padding."""
        f = self.take(f"{prefix}/filters").transpose(3, 2, 0, 1)
        return self.node("Conv", [x, self.const(f"{prefix}/W", f), self.const(f"{prefix}/B", self.take(f"{prefix}/bias"))],
                         kernel_shape=[3, 3], strides=[stride, stride], pads=_same_pads(stride))

    def separable(self, x: str, prefix: str, stride: int) -> str:
        """tf.separableConv2d (depthwise 3x3, then pointwise 1x1) + bias."""
        dw = self.take(f"{prefix}/depthwise_filter")  # (3, 3, C, 1)
        c = dw.shape[2]
        dw = dw.transpose(2, 3, 0, 1)  # (C, 1, 3, 3)
        y = self.node("Conv", [x, self.const(f"{prefix}/DW", dw)], kernel_shape=[3, 3], strides=[stride, stride],
                      pads=_same_pads(stride), group=c)
        pw = self.take(f"{prefix}/pointwise_filter").transpose(3, 2, 0, 1)  # (Cout, Cin, 1, 1)
        return self.node("Conv", [y, self.const(f"{prefix}/PW", pw), self.const(f"{prefix}/B", self.take(f"{prefix}/bias"))],
                         kernel_shape=[1, 1])

    def dense_block4(self, x: str, prefix: str, first: bool) -> str:
        out1 = self.node("Relu", [self.conv(x, f"{prefix}/conv0", 2) if first else self.separable(x, f"{prefix}/conv0", 2)])
        out2 = self.separable(out1, f"{prefix}/conv1", 1)
        in3 = self.node("Relu", [self.node("Add", [out1, out2])])
        out3 = self.separable(in3, f"{prefix}/conv2", 1)
        s3 = self.node("Add", [out1, self.node("Add", [out2, out3])])
        in4 = self.node("Relu", [s3])
        out4 = self.separable(in4, f"{prefix}/conv3", 1)
        return self.node("Relu", [self.node("Add", [s3, out4])])


def _same_pads(stride: int) -> list[int]:
    """TF 'same' for a 3x3 kernel on even sizes: stride 1 pads 1 all round, stride 2 pads 0 before and 1 after."""
    return [1, 1, 1, 1] if stride == 1 else [0, 0, 1, 1]


def build(manifest: list, data: bytes):
    """The ONNX model (opset 13) of faceExpressionNet with these weights."""
    from onnx import TensorProto, checker, helper

    g = _Graph(read_weights(manifest, data))
    x = g.node("Transpose", [INPUT], perm=[0, 3, 1, 2])
    for i in range(4):
        x = g.dense_block4(x, f"dense{i}", first=i == 0)
    x = g.node("AveragePool", [x], kernel_shape=[7, 7], strides=[2, 2])
    x = g.node("Flatten", [x], axis=1)
    x = g.node("Gemm", [x, g.const("fc/W", g.take("fc/weights")), g.const("fc/B", g.take("fc/bias"))])
    g.nodes.append(helper.make_node("Softmax", [x], [OUTPUT], name="softmax", axis=1))
    unused = sorted(set(g.w) - g.used)
    if unused:
        raise ValueError(f"faceExpressionNet: weights not placed in the graph: {unused}")
    graph = helper.make_graph(
        g.nodes, "face_api_face_expression_net",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 7])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tools.judges")
    model.ir_version = 8
    checker.check_model(model)
    return model


def build_from_files(manifest_path, bin_path):
    return build(json.loads(open(manifest_path).read()), open(bin_path, "rb").read())
