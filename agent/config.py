"""Configuration schema: one pydantic model per section, unknown keys rejected.

``config/agent.yaml`` is the documented default; every field here has the same default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Emotion = Literal["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
# Campaign step 6 (models/MODEL_CARD.md): the photo-trained generator renders happy and neutral faces
# best, the one fine-tuned on FER2013's expressions all the others.
DEFAULT_GENERATOR_BY_EMOTION: dict[str, str] = {
    "happy": "generator-calm.int8", "neutral": "generator-calm.int8",
    **{e: "generator-expressive.int8" for e in ("angry", "disgust", "fear", "sad", "surprise")},
}


class AnonymizerConfig(Section):
    """Face analysis, synthesis and paste-back (shared by stills and streams)."""

    backend: Literal["openvino", "onnxruntime", "auto"] = "auto"
    device: str = Field("CPU", description="OpenVINO device: CPU, GPU, NPU (ignored by onnxruntime)")
    threads: int = Field(0, ge=0, description="inference threads; 0: half the cores in `anoncam run` (analysis and "
                                              "synthesis run side by side), the runtime's choice elsewhere")
    generator: str = Field("generator.int8", description="generator model base name in the models folder: the one "
                           "for every face when generator_by_emotion is {}, and for the emotions it does not list")
    generator_by_emotion: dict[Emotion, str] = Field(
        default_factory=lambda: dict(DEFAULT_GENERATOR_BY_EMOTION),
        description="draw each face with the generator named for its emotion (the emotion classifier on the real "
        "face; a face it cannot read is drawn as a neutral one); {} = `generator` for every face",
    )
    emotion_classifier: str = Field("emotion.int8", description="with generator_by_emotion or expression_texture: "
                                    "the classifier model base name (the metadata stage's)")
    expression_texture: float = Field(
        1.0, ge=0, le=3,
        description="add the shading of the emotion each face is drawn as (furrowed brows, raised cheeks: "
        "models/expression_texture.npz) to its synthetic face, this many times the fitted strength; 0 = off",
    )
    max_faces: int = Field(8, ge=1, le=64, description="faces synthesized per frame, largest first; the others are covered")
    min_detection_confidence: float = Field(0.5, gt=0, lt=1)
    detection_threshold: float = Field(
        0.1, gt=0, lt=1, description="face detector score from which a box is a face (boxes under 20 px: 0.06); "
        "lower finds more faces and covers more background"
    )
    detection_scale: float = Field(
        1.0, gt=0.1, le=1, description="run the face detector on the frame scaled by this: 1 finds faces from ~8 px; "
        "0.5 takes a quarter of the time and finds them from ~16 px (for a slow device; see README, Performance)"
    )
    detect_rotated: bool = Field(True, description="also find faces upside down or on their side (the frame turned "
                                                   "90/180/270 degrees, at a third of its size: faces from ~40 px)")
    min_mesh_size: float = Field(64, ge=0, description="faces smaller than this (px) are covered, not synthesized")
    max_analysis_side: int = Field(1920, ge=256, description="larger frames are downscaled for analysis only")
    identity_normalization: float = Field(
        1.0, ge=0, le=1,
        description="condition the generator on an average face shape with the person's expression and pose "
        "(1), their own landmarks (0), or a blend; face shape identifies people",
    )
    identity_variation: float = Field(
        0.0, ge=0, le=2,
        description="with identity_normalization: draw each face (each tracked person in streams) on a random "
        "other face shape instead of the one average shape, this many standard deviations of the training faces' "
        "shape variation; 0 = the average shape",
    )
    expression_neighbours: int = Field(
        4, ge=0, le=64,
        description="with identity_normalization: draw the mean of this many nearest expressions of other people "
        "(models/expression_bank.npz) instead of the person's own blendshapes, which identify them too; 0 = their own",
    )
    seed: int | None = Field(None, description="random seed for identity_variation; unset: different on every start")
    regenerate_every: int = Field(
        3, ge=1, le=10,
        description="streams: make each tracked face's synthetic face anew at least every N frames and re-fit the "
        "last one to its current landmarks in between (position and outline follow every frame; expression may lag "
        "N-1 frames); 1 = every frame",
    )
    tone_match: Literal["none", "luminance"] = Field(
        "luminance", description="scale the synthetic face's brightness to the scene (never its colour)"
    )
    feather: float = Field(0.06, ge=0, le=0.3, description="mask edge softness, as a fraction of the face size")
    surround: float = Field(
        0.0, ge=0, le=1.5,
        description="also blur the hair, ears and head outline around each face, out to its oval grown by this "
        "fraction (0.5: half a face further); 0 = off",
    )
    models_dir: Path | None = Field(None, description="folder with SHA256SUMS and the model files")


class CaptureConfig(Section):
    """Where frames come from (see agent/capture.py for the URI forms)."""

    source: str = Field("/dev/video0", description="/dev/videoN, a V4L2 index, a video file, rtsp://, http(s):// MJPEG")
    width: int = Field(0, ge=0, description="requested width; 0 keeps the source's own")
    height: int = Field(0, ge=0, description="requested height; 0 keeps the source's own")
    fps: float = Field(0, ge=0, le=240, description="requested camera rate, or the playback rate of a file; 0 = native")
    loop: bool = Field(False, description="files only: start again at the end instead of exiting")
    realtime: bool = Field(True, description="files only: play at the file's frame rate, dropping frames like a camera "
                                             "(false: hand over every frame, for benchmarks)")
    reconnect_min_s: float = Field(0.5, gt=0, le=60)
    reconnect_max_s: float = Field(10.0, gt=0, le=600)
    read_timeout_s: float = Field(5.0, gt=0, le=120, description="a live source silent this long is reopened")


class TlsConfig(Section):
    enabled: bool = False
    ca_file: Path | None = Field(None, description="CA bundle for the broker's certificate; None = system CAs")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="client private key (mutual TLS)")
    insecure: bool = Field(False, description="skip the broker hostname check (testing only)")

    @model_validator(mode="after")
    def _pair(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file for a client certificate, or neither")
        return self


class MqttConfig(Section):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = Field("anoncam", description="topics are <prefix>/<camera>/frame|meta|availability|stats")
    camera: str = Field("camera", description="this camera's name in the topics")
    client_id: str = Field("", description="empty: anoncam-<camera>")
    protocol: Literal["auto", "5", "3.1.1"] = Field("auto", description="auto: MQTT 5, falling back to 3.1.1 if refused")
    keepalive: int = Field(30, ge=5, le=3600)
    username: str | None = None
    password_file: Path | None = Field(None, description="file holding the password (first line)")
    password_credential: str | None = Field(None, description="systemd credential name, read from $CREDENTIALS_DIRECTORY")
    tls: TlsConfig = TlsConfig()
    buffer_frames: int = Field(30, ge=1, le=10000, description="frames kept while the broker is away; oldest dropped")
    frame_expiry_s: int = Field(5, ge=1, le=3600, description="MQTT 5 message expiry of frames; older buffered frames are dropped")
    jpeg_quality: int = Field(85, ge=10, le=100)
    publish_frames: bool = Field(True, description="false: metadata only")
    reconnect_min_s: float = Field(0.5, gt=0, le=60)
    reconnect_max_s: float = Field(30.0, gt=0, le=600)

    @model_validator(mode="before")
    @classmethod
    def _no_plain_password(cls, data):
        if isinstance(data, dict) and "password" in data:
            raise ValueError("plain-text 'password' is not accepted in YAML: put it in a file readable only by the "
                             "service and set password_file, or pass a systemd credential and set password_credential")
        return data

    @field_validator("prefix", "camera")
    @classmethod
    def _topic_level(cls, v: str):
        if not v or any(c in v for c in "#+\0") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be a non-empty MQTT topic without wildcards (#, +) or leading/trailing '/'")
        return v


class SmoothingConfig(Section):
    """One-Euro filter on landmarks, per track (Casiez et al. 2012)."""

    enabled: bool = True
    min_cutoff: float = Field(1.5, gt=0, description="Hz; lower = steadier still faces")
    beta: float = Field(0.01, ge=0, description="speed coefficient; higher = less lag when moving")
    max_offset: float = Field(0.02, ge=0, le=0.1, description="cap on smoothed-vs-detected shift, as a fraction of face "
                                                              "size, so the pasted face never lags off the real one")


class PolicyConfig(Section):
    """The fail-closed rules for frames that could not be fully anonymized."""

    on_failure: Literal["drop", "mask"] = Field("drop", description="drop the frame, or publish it fully masked")
    frame_budget_ms: float = Field(1000, gt=0, description="analysis + synthesis slower than this fails the frame")
    hold_ms: float = Field(500, ge=0, le=10000, description="keep anonymizing a lost face at its last place this long")
    iou_threshold: float = Field(0.3, gt=0, lt=1, description="box overlap that continues a track")
    smoothing: SmoothingConfig = SmoothingConfig()


class StatsConfig(Section):
    interval_s: float = Field(10, ge=0.5, le=3600, description="how often the stats topic is published")


class ServiceConfig(Section):
    watchdog_stall_s: float = Field(5, gt=0, le=600, description="stop watchdog pings when no frame came this long")


class ExpressionConfig(Section):
    """Per-face expression metadata: emotion classifier, blendshapes, head pose (agent.expression)."""

    enabled: bool = Field(True, description="compute and publish expression metadata for every face")
    backend: Literal["openvino", "onnxruntime", "auto"] = "auto"
    device: str = Field("CPU", description="OpenVINO device: CPU, GPU, NPU (ignored by onnxruntime)")
    threads: int = Field(0, ge=0, description="inference threads; 0: half the cores in `anoncam run` (analysis and "
                                              "synthesis run side by side), the runtime's choice elsewhere")
    classifier: str = Field("emotion.int8", description="emotion CNN base name in the models folder")
    flip_tta: bool = Field(True, description="average the classifier over the face and its mirror image")
    blendshapes: Literal["pooled", "raw"] = Field(
        "pooled", description="blendshapes published per face: 'pooled', the mean of the nearest expressions of other "
        "people (models/expression_bank.npz), or 'raw', the person's own, which also identify them")
    blendshape_neighbours: int = Field(4, ge=1, le=64, description="expressions averaged when blendshapes: pooled")
    check_anonymized: bool = Field(True, description="classify each synthetic face too and report expression_kept")
    smoothing: float = Field(0.0, ge=0, lt=1, description="streams: per-track EMA of emotion scores and head pose; the "
                                                          "weight of the history (0 off, 0.6 moderate, 0.9 heavy)")
    models_dir: Path | None = Field(None, description="folder with SHA256SUMS and the model files")


class Config(Section):
    anonymizer: AnonymizerConfig = AnonymizerConfig()
    expression: ExpressionConfig = ExpressionConfig()
    capture: CaptureConfig = CaptureConfig()
    mqtt: MqttConfig = MqttConfig()
    policy: PolicyConfig = PolicyConfig()
    stats: StatsConfig = StatsConfig()
    service: ServiceConfig = ServiceConfig()


def load_config(path: str | Path | None, cls=Config):
    """Read and validate a YAML config; errors name the key and say what is allowed."""
    if path is None:
        return cls()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = "unknown key (check spelling; see config/agent.yaml)" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {where}: {msg}")
        raise ConfigError(f"{path} is invalid:\n" + "\n".join(lines)) from None


def with_flags(section: Section, **flags) -> Section:
    """``section`` with the command-line values that were given (None: not given), validated like
    the file: a bad flag is one line naming it, e.g. ``--max-faces: Input should be greater than or equal to 1``."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return type(section).model_validate({**section.model_dump(), **given})
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-")
        raise ConfigError(f"{flag}: {err['msg']}") from None
