"""Where the development data lives and how it is split. Shared by preparation, training and evaluation."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("ANONCAM_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
CELEBA_ZIP = SHARED / "data/faces/celeba_identities.zip"
UTK_ZIP = SHARED / "data/faces/utkface_chips.zip"
FER_TRAIN_ZIP = SHARED / "data/expressions/fer2013_train.zip"
FER_VAL_ZIP = SHARED / "data/expressions/fer2013_val.zip"
CACHE = Path(os.environ.get("ANONCAM_CACHE", Path.home() / ".cache" / "anoncam"))
EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def is_heldout_identity(identity: str) -> bool:
    """Every fourth CelebA identity (40 of 160) never enters training: the evaluation gallery."""
    return identity.startswith("celeb_") and int(identity.split("_")[1]) % 4 == 0


def iter_zip_images(path: Path):
    """Yield (member name, encoded bytes) for every image in a zip, in a stable order."""
    with zipfile.ZipFile(path) as z:
        for name in sorted(z.namelist()):
            if name.lower().endswith((".jpg", ".jpeg", ".png")):
                yield name, z.read(name)


def decode_rgb(data: bytes) -> np.ndarray | None:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class PackedFaces:
    """Aligned face crops (encoded WebP) plus crop-space landmarks (agent.synthesis.render.RENDERED_INDICES rows) in one compact .npz file.

    Compact on purpose: it is what travels to a GPU machine (64 MiB limit), and rendering of the
    conditioning happens there with the same ``agent.synthesis.render`` code.
    """

    def __init__(self, path: Path):
        d = np.load(path, allow_pickle=False)
        self.blob = d["blob"]
        self.offsets = d["offsets"]
        self.landmarks = d["landmarks"].astype(np.float32)
        self.identity = d["identity"]
        self.source = d["source"]

    def __len__(self):
        return len(self.offsets) - 1

    def image(self, i: int) -> np.ndarray:
        return decode_rgb(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes())

    @staticmethod
    def save(path: Path, encoded: list[bytes], landmarks: list[np.ndarray], identity: list[str], source: list[str]):
        offsets = np.zeros(len(encoded) + 1, np.int64)
        offsets[1:] = np.cumsum([len(e) for e in encoded])
        blob = np.frombuffer(b"".join(encoded), np.uint8)
        tmp = Path(str(path) + ".tmp.npz")
        np.savez(tmp, blob=blob, offsets=offsets, landmarks=np.stack(landmarks).astype(np.float16),
                 identity=np.array(identity), source=np.array(source))
        os.replace(tmp, path)


def photo_items(limit: int = 0, *extra) -> list[tuple]:
    """Every photo of the shared face sets as ("celeba:member" or "utkface:member", bytes, *extra),
    the first ``limit`` of each set when given: the work items of the preparation tools."""
    items = []
    for zpath, src in ((CELEBA_ZIP, "celeba"), (UTK_ZIP, "utkface")):
        for i, (name, data) in enumerate(iter_zip_images(zpath)):
            if limit and i >= limit:
                break
            items.append((f"{src}:{name}", data, *extra))
    return items


def identity_and_split(item_name: str) -> tuple[str, str, str]:
    """(identity, split, source) of a photo_items name; held-out CelebA identities go to "heldout"."""
    src, member = item_name.split(":", 1)
    identity = member.split("/")[0] if src == "celeba" else "utk:" + member.rsplit("/", 1)[-1]
    return identity, "heldout" if is_heldout_identity(identity) else "train", src


_analyzer = None


def init_face_worker():
    """A preparation worker's FaceAnalyzer (stills mode, one face): the camera's own code path."""
    global _analyzer
    import cv2

    from agent.detection.landmarks import FaceAnalyzer

    cv2.setNumThreads(1)
    _analyzer = FaceAnalyzer(max_faces=1, mode="image")


def worker_faces(rgb):
    return _analyzer.detect(rgb)
