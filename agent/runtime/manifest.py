"""The models' manifest: what each shipped model is for and the settings that belong to it.

``models/manifest.yaml`` sits next to ``SHA256SUMS`` and is checked against it like a model: which
generator draws which emotion, the texture gain, the bank sizes, the feather, the detector's
thresholds. These are measured with the models they ship with (models/MODEL_CARD.md), so they
change with a model release, not with a camera's configuration. Every file the manifest names must
be listed in SHA256SUMS; a folder given as ``inference.models_dir`` brings its own manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.errors import ModelError
from agent.runtime.model_files import listed, models_dir, verified_path
from agent.types import EMOTIONS

MANIFEST_FILE = "manifest.yaml"
MANIFEST_VERSION = 1
# A model named by its base name is one of these files (agent.runtime.backends).
MODEL_SUFFIXES = (".onnx", ".xml")

Emotion = Literal["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenVinoDetector(_Part):
    """What OpenVINO runs instead: the network quantized to INT8 (NNCF QDQ, which ONNX Runtime runs slower
    than FP32), and the score threshold measured with it when it differs."""

    file: str
    threshold: float | None = Field(None, gt=0, lt=1)


class DetectorSpec(_Part):
    file: str = "face_detector.onnx"
    openvino: OpenVinoDetector | None = None
    threshold: float = Field(0.1, gt=0, lt=1, description="score from which a box is a face")
    small_threshold: float = Field(0.06, gt=0, lt=1, description="the same for boxes under small_size px")
    small_size: float = Field(20, ge=0)
    tiny_threshold: float = Field(0.06, gt=0, lt=1, description="the same for boxes under tiny_size px (below "
                                  "small_size): where most false boxes are, and the faces least identifiable")
    tiny_size: float = Field(0, ge=0)
    large_threshold: float = Field(0.2, gt=0, lt=1, description="the same for boxes of large_size px and more")
    large_size: float = Field(64, ge=0)
    rotated_threshold: float = Field(0.5, gt=0, lt=1, description="faces found in the turned passes")
    min_mesh_size: float = Field(64, ge=0, description="faces smaller than this (px) are covered, not synthesized")

    def for_runtime(self, runtime: str) -> "DetectorSpec":
        """The file and thresholds for ``runtime`` ("openvino" or "onnxruntime")."""
        if runtime != "openvino" or self.openvino is None:
            return self
        return self.model_copy(update={**self.openvino.model_dump(exclude_none=True), "openvino": None})


class LandmarkerSpec(_Part):
    file: str = "face_landmarker.task"
    min_detection_confidence: float = Field(0.5, gt=0, lt=1, description="MediaPipe's own detector, in streams")
    max_analysis_side: int = Field(1920, ge=256, description="larger frames are downscaled for face analysis")


class GeneratorSpec(_Part):
    default: str = Field("generator.int8", description="the generator for emotions by_emotion does not name")
    head: str | None = Field(None, description="a head generator (agent/synthesis/head.py) that redraws the whole "
                             "head from the conditioning and its surroundings; set, it draws every face and, "
                             "unless face_over_head, by_emotion and the texture are not used")
    face_over_head: bool = Field(False, description="with a head generator: the face generators (by_emotion, "
                                 "texture) then draw the face oval over the synthetic head")
    by_emotion: dict[Emotion, str] = Field(default_factory=dict, description="emotion -> generator; {}: default for all")
    shape_model: str = "shape_model.npz"
    identity_normalization: float = Field(1.0, ge=0, le=1, description="1: an average face shape with the person's "
                                          "expression and pose; 0: their own landmarks")
    identity_variation: float = Field(0.0, ge=0, le=2, description="draw each tracked face on a random other face "
                                      "shape, this many standard deviations from the average")
    expression_neighbours: int = Field(4, ge=0, le=64, description="draw the mean of this many nearest expressions "
                                       "of other people instead of the person's own; 0: their own")
    texture: str = "expression_texture.npz"
    texture_gain: float = Field(1.0, ge=0, le=3, description="times the fitted shading of the drawn emotion; 0: off")
    regenerate_every: int = Field(3, ge=1, le=10, description="streams: a tracked face is generated anew at least "
                                  "every N frames and re-fitted to its landmarks in between")
    tone_match: Literal["none", "luminance", "skin"] = Field(
        "skin", description="skin: the synthetic face takes the tone and light of the skin it replaces; "
        "luminance: only its brightness; none: as drawn")
    feather: float = Field(0.06, ge=0, le=0.3, description="mask edge softness, a fraction of the face size")
    surround: float = Field(0.0, ge=0, le=1.5, description="also blur hair and head outline out to the face oval "
                            "grown by this fraction; 0: off")

    def names(self) -> set[str]:
        """Every generator this spec may call."""
        if self.head and not self.face_over_head:
            return {self.head}
        faces = set(self.by_emotion.values()) | ({self.default} if set(EMOTIONS) - set(self.by_emotion) else set())
        return faces | ({self.head} if self.head else set())


class EmotionSpec(_Part):
    classifier: str = "emotion.int8"
    flip_tta: bool = Field(True, description="average the classifier over the face and its mirror image")
    bank: str = "expression_bank.npz"
    blendshape_neighbours: int = Field(4, ge=1, le=64, description="expressions averaged in published blendshapes")


class LandmarkSmoothing(_Part):
    """One-Euro filter on landmarks per track (Casiez et al. 2012)."""

    enabled: bool = True
    min_cutoff: float = Field(1.5, gt=0, description="Hz; lower: steadier still faces, more lag")
    beta: float = Field(0.01, ge=0, description="speed coefficient; higher: less lag when moving")
    max_offset: float = Field(0.02, ge=0, le=0.1, description="smoothed landmarks stay within this fraction of the "
                              "face size of the detected ones")


class TrackingSpec(_Part):
    iou_threshold: float = Field(0.3, gt=0, lt=1, description="box overlap that continues a track")
    smoothing: LandmarkSmoothing = LandmarkSmoothing()


class Manifest(_Part):
    version: Literal[1] = MANIFEST_VERSION
    detector: DetectorSpec = DetectorSpec()
    landmarker: LandmarkerSpec = LandmarkerSpec()
    generator: GeneratorSpec = GeneratorSpec()
    emotion: EmotionSpec = EmotionSpec()
    tracking: TrackingSpec = TrackingSpec()
    folder: Path | None = Field(None, exclude=True, description="where the files it names are")

    @model_validator(mode="before")
    @classmethod
    def _version_first(cls, data):
        if isinstance(data, dict) and data.get("version", MANIFEST_VERSION) != MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')!r} is not {MANIFEST_VERSION}; this anoncam "
                             "release reads version 1 (install the models that came with it)")
        return data

    def files(self) -> list[str]:
        """Every file name and model base name the manifest refers to."""
        g = self.generator
        d = self.detector
        return [d.file, *([d.openvino.file] if d.openvino else []), self.landmarker.file, *sorted(g.names()),
                g.shape_model, g.texture, self.emotion.classifier, self.emotion.bank]

    def override(self, **parts: dict) -> "Manifest":
        """This manifest with some settings changed, validated again: ``override(generator={"feather": 0.1})``.

        For evaluating variants of the shipped settings (tools/); the files stay those of the folder."""
        data = self.model_dump()
        for part, values in parts.items():
            if part not in data or not isinstance(data[part], dict):
                raise ModelError(f"the manifest has no part {part!r}")
            data[part] = {**data[part], **values}
        try:
            return Manifest.model_validate({**data, "folder": self.folder})
        except ValidationError as exc:
            raise ModelError(f"manifest override is invalid: {_errors(exc)}") from None


def load_manifest(folder: Path | None = None, path: Path | None = None) -> Manifest:
    """The manifest of the models in ``folder`` (default: the installed models), checked against
    its SHA256SUMS; ``path``: a variant manifest for that folder's files (evaluation only)."""
    folder = Path(folder) if folder is not None else models_dir()
    source = Path(path) if path is not None else verified_path(MANIFEST_FILE, folder)
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except FileNotFoundError:
        raise ModelError(f"manifest {source} not found") from None
    except yaml.YAMLError as exc:
        raise ModelError(f"{source} is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ModelError(f"{source} must hold a mapping, got {type(data).__name__}")
    try:
        manifest = Manifest.model_validate({**data, "folder": folder})
    except ValidationError as exc:
        raise ModelError(f"{source} is invalid: {_errors(exc)}") from None
    for name in manifest.files():
        if not (listed(name, folder) or any(listed(name + s, folder) for s in MODEL_SUFFIXES)):
            raise ModelError(f"{source} names {name}, which {folder / 'SHA256SUMS'} does not list; "
                             "install a complete models release")
    return manifest


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
