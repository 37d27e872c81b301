"""The user configuration: one pydantic model per section, unknown keys rejected.

``config/agent.yaml`` is the documented default; every field here has the same default, and
docs/configuration.md is generated from these models (``python -m tools.config_reference``).
What belongs to a model (which generator draws which emotion, texture gain, bank sizes, feather,
detector thresholds) is not here: it lives in the models' manifest (agent/runtime/manifest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InferenceConfig(Section):
    """Where the models run: one runtime and device for the detector, the generators and the classifier."""

    backend: Literal["openvino", "onnxruntime", "auto"] = Field(
        "auto", description="auto: OpenVINO when installed (pip install 'anoncam[openvino]'), else ONNX Runtime")
    device: str = Field("CPU", description="OpenVINO device: CPU, GPU or NPU (ONNX Runtime runs on the CPU)")
    threads: int = Field(0, ge=0, le=256, description="inference threads; 0: in `anoncam run` every core for the face "
                                                      "detector and half of them for the other models (analysis and "
                                                      "synthesis run side by side), the runtime's choice elsewhere")
    models_dir: Path | None = Field(None, description="folder with SHA256SUMS, manifest.yaml and the models; "
                                                      "unset: the installed models")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str):
        if v.split(".")[0].split(":")[0].upper() not in ("CPU", "GPU", "NPU", "AUTO", "HETERO", "MULTI"):
            raise ValueError("must be an OpenVINO device: CPU, GPU, GPU.1, NPU or AUTO")
        return v


class AnonymizerConfig(Section):
    """What each face gets: up to max_faces are synthesized, every other face found is covered."""

    max_faces: int = Field(8, ge=1, le=64, description="faces synthesized per frame, largest first; the others are "
                                                       "covered (their head filled with one colour)")
    detection_scale: float = Field(
        1.0, gt=0.1, le=1, description="run the face detector on the frame scaled by this: 1 finds faces from ~8 px; "
        "0.5 takes a quarter of the time and finds them from ~16 px")
    detect_rotated: bool = Field(True, description="also find faces upside down or on their side (the frame turned "
                                                   "90/180/270 degrees at a third of its size: faces from ~40 px; a "
                                                   "frame that lies turned, again at full size)")


class ExpressionConfig(Section):
    """Per-face expression metadata published with every frame."""

    enabled: bool = Field(True, description="publish each face's emotion, blendshapes and head pose; off: box, "
                                            "track and head pose only (the classifier still picks each face's generator)")
    smoothing: float = Field(0.0, ge=0, lt=1, description="streams: per-track moving average of emotion scores and "
                                                          "head pose; the weight of the history (0 off, 0.9 heavy)")


class CaptureConfig(Section):
    """Where frames come from (agent/io/capture.py lists the URI forms)."""

    source: str = Field("/dev/video0", description="/dev/videoN, a V4L2 index, a video file, rtsp://, http(s):// MJPEG")
    width: int = Field(0, ge=0, le=16384, description="requested width; 0 keeps the source's own")
    height: int = Field(0, ge=0, le=16384, description="requested height; 0 keeps the source's own")
    fps: float = Field(0, ge=0, le=240, description="requested camera rate, or the playback rate of a file; 0 = native")
    loop: bool = Field(False, description="files: start again at the end instead of exiting")


class TlsConfig(Section):
    enabled: bool = Field(False, description="connect to the broker over TLS (usually port 8883)")
    ca_file: Path | None = Field(None, description="CA bundle for the broker's certificate; None = system CAs")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="client private key (mutual TLS)")

    @model_validator(mode="after")
    def _pair(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file for a client certificate, or neither")
        return self


class MqttConfig(Section):
    """MQTT output: topics ``<prefix>/<camera>/frame|meta|availability|stats`` (docs/mqtt.md). MQTT 5,
    falling back to 3.1.1 when the broker refuses it."""

    host: str = Field("localhost", description="the broker's host name or address")
    port: int = Field(1883, ge=1, le=65535, description="the broker's port")
    prefix: str = Field("anoncam", description="topics are <prefix>/<camera>/frame|meta|availability|stats")
    camera: str = Field("camera", description="this camera's name in the topics")
    username: str | None = Field(None, description="broker user name; null: connect anonymously")
    password_file: Path | None = Field(None, description="file holding the password (first line)")
    password_credential: str | None = Field(None, description="systemd credential name, read from $CREDENTIALS_DIRECTORY")
    tls: TlsConfig = TlsConfig()
    buffer_frames: int = Field(30, ge=1, le=10000, description="frames kept while the broker is away; oldest dropped")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of published frames")
    publish_frames: bool = Field(True, description="false: metadata only")
    discovery: bool = Field(False, description="publish Home Assistant MQTT discovery for this camera (retained, under "
                                               "homeassistant/), and again when Home Assistant's birth message arrives")

    @model_validator(mode="before")
    @classmethod
    def _refused_keys(cls, data):
        if isinstance(data, dict) and "keepalive" in data:
            raise ValueError("'keepalive' is no longer a setting (the agent uses 30 s): remove it")
        if isinstance(data, dict) and "password" in data:
            raise ValueError("plain-text 'password' is not accepted in YAML: put it in a file readable only by the "
                             "service and set password_file, or pass a systemd credential and set password_credential")
        return data

    @field_validator("prefix")
    @classmethod
    def _topic_prefix(cls, v: str):
        if not v or any(c in v for c in "#+\0") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be a non-empty MQTT topic without wildcards (#, +) or leading/trailing '/'")
        return v

    @field_validator("camera")
    @classmethod
    def _topic_level(cls, v: str):
        if not v or any(c in v for c in "/#+\0"):
            raise ValueError("must be one MQTT topic level: not empty, without '/', '#' or '+'")
        return v


class PolicyConfig(Section):
    """The fail-closed rules for frames that could not be fully anonymized."""

    on_failure: Literal["drop", "mask"] = Field("drop", description="analysis or synthesis error, or over budget: drop "
                                                                    "the frame, or publish it all grey")
    frame_budget_ms: float = Field(1000, gt=0, le=60000, description="analysis + synthesis slower than this fails the "
                                                                      "frame")
    hold_ms: float = Field(500, ge=0, le=10000, description="keep covering a face the detector lost at its last place "
                                                            "this long")


class StatsConfig(Section):
    """The agent's counters, published (not retained) on ``<prefix>/<camera>/stats``."""

    interval_s: float = Field(10, ge=0.5, le=3600, description="how often <prefix>/<camera>/stats is published")


class ExperimentalConfig(Section):
    """Settings that deliberately weaken anonymity, for research. Each one in use is logged as a
    warning at start and listed in the stats (``experimental``)."""

    own_landmarks: bool = Field(False, description="condition the generator on the person's own landmarks and "
                                "blendshapes instead of an average face shape with pooled expressions; face shape and "
                                "expression manner identify people")
    raw_blendshapes: bool = Field(False, description="publish each person's own blendshapes instead of the mean of "
                                  "the nearest expressions of other people; they identify people too")

    def in_use(self) -> list[str]:
        return [name for name, value in self if value]


class Config(Section):
    inference: InferenceConfig = InferenceConfig()
    anonymizer: AnonymizerConfig = AnonymizerConfig()
    expression: ExpressionConfig = ExpressionConfig()
    capture: CaptureConfig = CaptureConfig()
    mqtt: MqttConfig = MqttConfig()
    policy: PolicyConfig = PolicyConfig()
    stats: StatsConfig = StatsConfig()
    experimental: ExperimentalConfig = ExperimentalConfig()


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
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = "unknown key (check spelling; see docs/configuration.md)" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: {' '.join(msg.split())}")
        raise ConfigError(f"{path} is invalid: " + "; ".join(problems)) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error as one line: what and where (1-based line and column)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else what


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


def command_config(path: Path | None, backend: str | None = None, device: str | None = None,
                   max_faces: int | None = None) -> Config:
    """The config file (or the defaults) with the flags a command was given, validated like the file."""
    cfg = load_config(path)
    return cfg.model_copy(update={
        "inference": with_flags(cfg.inference, backend=backend, device=device),
        "anonymizer": with_flags(cfg.anonymizer, max_faces=max_faces),
    })


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` or ``[IPv6]:PORT``."""
    host, port = text.strip(), None
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ConfigError(f"--broker {text!r}: missing ']' after the IPv6 address")
        host, rest = host[1:end], host[end + 1:]
        if rest.startswith(":"):
            port = rest[1:]
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host:
        raise ConfigError(f"--broker {text!r}: give HOST:PORT, e.g. localhost:1883")
    if port is None:
        return host, 1883
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--broker {text!r}: port must be a number from 1 to 65535")
    return host, int(port)
