"""Where the judges live once fetched, how they load, and the error when they are not there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agent.runtime.model_files import sha256_file
from tools.datasets import CACHE

JUDGES_CACHE = CACHE / "judges"
MANIFEST = "judges.json"
FETCH_HINT = "run python -m tools.judges fetch"


class JudgeCacheMissing(FileNotFoundError):
    """The judges' cache (or one of its files) is not there: they have not been fetched."""


def read_manifest(cache: Path | None = None) -> dict:
    """The cache's ``judges.json`` (what was fetched, from where, with which checksums)."""
    cache = Path(cache) if cache is not None else JUDGES_CACHE
    path = cache / MANIFEST
    if not path.is_file():
        raise JudgeCacheMissing(f"no judges in {cache} ({MANIFEST} missing): {FETCH_HINT}")
    return json.loads(path.read_text())


def sha256(path: Path) -> str:
    return sha256_file(Path(path))


def judge_entry(name: str, cache: Path | None = None, check: bool = True) -> tuple[dict, Path]:
    """One judge's manifest entry and its ONNX file, checked against the recorded sha256."""
    cache = Path(cache) if cache is not None else JUDGES_CACHE
    entry = read_manifest(cache)["judges"].get(name)
    if entry is None:
        raise JudgeCacheMissing(f"{cache / MANIFEST} has no judge {name!r}: {FETCH_HINT}")
    path = cache / entry["onnx"]
    if not path.is_file():
        raise JudgeCacheMissing(f"judge file {path} missing: {FETCH_HINT}")
    if check and sha256(path) != entry["onnx_sha256"]:
        raise JudgeCacheMissing(f"judge file {path} differs from {MANIFEST}: {FETCH_HINT}")
    return entry, path


def session(path: Path):
    """An ONNX Runtime CPU session on one thread (the judges run beside the methods they judge)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def load_or_exit(judge_class, *args, **kwargs):
    """``judge_class(*args, **kwargs)``, or one line on stderr and exit status 2 if it was never fetched."""
    try:
        return judge_class(*args, **kwargs)
    except JudgeCacheMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
