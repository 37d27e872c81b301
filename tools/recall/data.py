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
# Clockwise turns of a photo, as a camera or phone without an orientation tag stores one held sideways
# or upside down.
TURNS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
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


def turn_box(face: dict, angle: int, width: int, height: int) -> dict:
    """``face``'s box in the photo (``width`` x ``height``) turned clockwise by ``angle``; its own
    upright height travels with it as ``upright_h``, since the size bins are the face's, not the box's."""
    x, y, w, h = face["x"], face["y"], face["w"], face["h"]
    box = {90: (height - (y + h), x, h, w), 180: (width - (x + w), height - (y + h), w, h),
           270: (y, width - (x + w), h, w)}[angle]
    return {**face, **dict(zip(("x", "y", "w", "h"), box)), "upright_h": face.get("upright_h", h)}


def turned_dataset(folder: Path, items: list[dict], angle: int, dest: Path) -> tuple[Path, list[dict]]:
    """``items`` with their photos turned clockwise by ``angle`` into ``dest`` (PNG, so that the turn adds
    no loss of its own) and their boxes turned with them; photos already there are reused."""
    dest = Path(dest).resolve()
    if dest == ROOT or ROOT in dest.parents:
        raise SystemExit(f"anoncam: error: cache {dest} is inside the repository; the images must stay out of it")
    (dest / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for it in tqdm(items, desc=f"turn {angle} -> {dest}", unit="photo"):
        name = Path(it["file"]).with_suffix(".png").name
        target = dest / "images" / name
        w, h = (it["height"], it["width"]) if angle in (90, 270) else (it["width"], it["height"])
        if not target.is_file():
            bgr = cv2.imread(str(folder / "images" / it["file"]), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SystemExit(f"anoncam: error: cannot read {folder / 'images' / it['file']}")
            cv2.imwrite(str(target), cv2.rotate(bgr, TURNS[angle]))
        out.append({**it, "file": name, "width": w, "height": h, "sha256": None,
                    "faces": [turn_box(f, angle, it["width"], it["height"]) for f in it["faces"]]})
    (dest / "gt.json").write_text(json.dumps(out))
    return dest, out


def face_rows(items: list[dict]) -> list[dict]:
    """One row per annotated face, in image order: what faces.csv and every statistic index into.
    ``upright_h`` is the face's own height (its box's, unless the photo was turned)."""
    return [{"image": i, "file": it["file"], "face": k, **{c: int(f[c]) for c in ("x", "y", "w", "h", "invalid", *FLAGS)},
             "upright_h": int(f.get("upright_h", f["h"]))}
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
