"""Reading and writing stills in the formats labs have: 8/16-bit, grey, colour, with alpha.

The anonymizer works on RGB; these helpers convert in and out while keeping the file's own layout
(size, bit depth, channels) so the output matches the input.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np

from agent.errors import ImageError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")  # read and written by OpenCV
MAX_PIXELS = 1 << 28  # 268 Mpx: far past any camera, short of exhausting the device's memory


def read_image(path: Path) -> np.ndarray:
    """Decode ``path`` as stored (grey, BGR or BGRA; uint8 or uint16)."""
    path = Path(path)
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if data.size == 0:
        raise ImageError(f"{path} is empty (0 bytes)")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. a header claiming more pixels than OpenCV decodes
        why = str(exc).strip().splitlines()[-1]
        raise ImageError(f"{path} cannot be decoded ({why}); is it a real image?") from None
    if img is None or img.size == 0:
        raise ImageError(f"{path} is not a readable image (corrupt or truncated?)")
    # As stored, with the camera's orientation tag applied: the output is written upright (and
    # without the tag), as a viewer shows the input.
    img = upright(img, exif_orientation(data[:1 << 16].tobytes()))
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise ImageError(f"{path} is {img.shape[1]}x{img.shape[0]}, over the {MAX_PIXELS >> 20} Mpx limit")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path} has unsupported sample type {img.dtype}; use 8- or 16-bit images")
    return img


def exif_orientation(head: bytes) -> int:
    """The EXIF Orientation tag (1-8) of a JPEG from its first bytes; 1 (as stored) if it has none."""
    if head[:2] != b"\xff\xd8":
        return 1
    i = 2
    while i + 4 <= len(head) and head[i] == 0xFF:
        marker, length = head[i + 1], int.from_bytes(head[i + 2:i + 4], "big")
        if marker == 0xE1 and head[i + 4:i + 10] == b"Exif\0\0":
            return _tiff_orientation(head[i + 10:i + 2 + length])
        if marker in (0xDA, 0xD9):  # image data: no EXIF before it
            break
        i += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd:ifd + 2], order) if ifd + 2 <= len(tiff) else 0
    for k in range(count):
        entry = tiff[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
        if len(entry) == 12 and int.from_bytes(entry[:2], order) == 0x0112:
            value = int.from_bytes(entry[8:10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to pixels as stored (what a viewer does before showing them)."""
    turn = _ORIENTATIONS.get(orientation)
    return img if turn is None else np.ascontiguousarray(turn(img))


_ORIENTATIONS = {  # EXIF Orientation -> how a viewer turns the stored rows and columns
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def to_rgb(img: np.ndarray) -> np.ndarray:
    """Stored layout -> RGB in the same bit depth (alpha dropped; see :func:`from_rgb`)."""
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def to_rgb8(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    return (rgb >> 8).astype(np.uint8)


def from_rgb(rgb: np.ndarray, like: np.ndarray) -> np.ndarray:
    """RGB -> the stored layout of ``like`` (grey stays grey; alpha is carried over unchanged)."""
    if like.ndim == 2 or like.shape[2] == 1:
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        return out if like.ndim == 2 else out[..., None]
    if like.shape[2] == 4:
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
        out[..., 3] = like[..., 3]
        return out
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def write_image(path: Path, pixels: np.ndarray) -> None:
    path = Path(path)
    ext = path.suffix.lower() or ".png"
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, enc = cv2.imencode(ext, pixels, params)
    if not ok:
        raise ImageError(f"cannot encode {path} as {ext}")
    # Written whole beside the target, then renamed: a reader never sees half an image.
    tmp = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        enc.tofile(tmp)
        tmp.replace(path)
    except BaseException as exc:  # also a stop signal: no half-written .part is left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        why = exc.strerror or f"the disk is full or a file-size limit was reached ({exc})"
        raise ImageError(f"cannot write {path}: {why}; check that its folder can be created and written and that "
                         "the disk has room") from None


def image_files(src: Path) -> tuple[list[Path], int]:
    """The images a command takes from ``src`` (a file, or a folder searched recursively, sorted),
    and how many other files the folder holds."""
    if not src.is_dir():
        return [src], 0
    files = sorted(p for p in src.rglob("*") if p.is_file())
    images = [f for f in files if f.suffix.lower() in EXTENSIONS]
    return images, len(files) - len(images)
