"""The recall dataset: a zip or folder with images/ and a gt.json (WIDER FACE val's annotations in
that format), unpacked outside the repository, and the JPEG round trip every output takes."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from agent.io.images import read_image, to_rgb, to_rgb8
from tools.datasets import CACHE, SHARED
from tools.reports import ROOT

WIDER_ZIP = SHARED / "data/crowd/wider_face_val_dev.zip"
JPEG_QUALITY = 95
FLAGS = {"blur": (0, 1, 2), "occlusion": (0, 1, 2), "pose": (0, 1), "illumination": (0, 1), "expression": (0, 1)}


def unpack(zip_path: Path, dest: Path) -> Path:
    """Extract the members of ``zip_path`` that ``dest`` lacks (or holds at another size); return ``dest``.

    A complete earlier extraction is reused, so a rerun costs a listing, not 30 MB of writes.
    """
    dest = Path(dest).resolve()
    if dest == ROOT or ROOT in dest.parents:
        raise SystemExit(f"anoncam: error: cache {dest} is inside the repository; the images must stay out of it")
    with zipfile.ZipFile(zip_path) as z:
        stale = [m for m in z.infolist() if not m.is_dir() and not (
            (dest / m.filename).is_file() and (dest / m.filename).stat().st_size == m.file_size)]
        for m in tqdm(stale, desc=f"unzip -> {dest}", unit="file", disable=not stale):
            z.extract(m, dest)
    return dest


def load_dataset(data: Path, cache: Path | None) -> tuple[Path, list[dict]]:
    """(folder holding images/, gt.json's entries) for a zip or a folder; a one-line exit when missing.

    The shared WIDER zip goes to ~/.cache/anoncam/wider (where the other tools look), any other to its own folder.
    """
    data = Path(data)
    if not data.exists():
        raise SystemExit(f"anoncam: error: {data} not found; pass --data (a zip or a folder with images/ and gt.json)")
    if data.is_file():
        data = unpack(data, cache or CACHE / ("wider" if data.resolve() == WIDER_ZIP.resolve() else data.stem))
    if not (data / "gt.json").is_file() or not (data / "images").is_dir():
        raise SystemExit(f"anoncam: error: {data}/gt.json or {data}/images not found; pass --data")
    return data, json.loads((data / "gt.json").read_text())


def face_rows(items: list[dict]) -> list[dict]:
    """One row per annotated face, in image order: what faces.csv and every statistic index into."""
    return [{"image": i, "file": it["file"], "face": k, **{c: int(f[c]) for c in ("x", "y", "w", "h", "invalid", *FLAGS)}}
            for i, it in enumerate(items) for k, f in enumerate(it["faces"])]


def load_rgb(path: Path) -> np.ndarray:
    """The photo as both methods get it: decoded from disk, RGB, 8 bits."""
    return to_rgb8(to_rgb(read_image(path)))


def encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
