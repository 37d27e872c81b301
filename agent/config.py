"""Configuration schema: one pydantic model per section, unknown keys rejected.

``config/agent.yaml`` is the documented default; every field here has the same default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AnonymizerConfig(Section):
    """Face analysis, synthesis and paste-back (shared by stills and streams)."""

    backend: Literal["openvino", "onnxruntime", "auto"] = "auto"
    device: str = Field("CPU", description="OpenVINO device: CPU, GPU, NPU (ignored by onnxruntime)")
    threads: int = Field(0, ge=0, description="inference threads; 0 lets the runtime decide")
    generator: str = Field("generator.int8", description="model base name in the models folder")
    max_faces: int = Field(8, ge=1, le=64)
    min_detection_confidence: float = Field(0.5, gt=0, lt=1)
    max_analysis_side: int = Field(1920, ge=256, description="larger frames are downscaled for analysis only")
    tone_match: Literal["none", "luminance"] = Field(
        "luminance", description="scale the synthetic face's brightness to the scene (never its colour)"
    )
    feather: float = Field(0.06, ge=0, le=0.3, description="mask edge softness, as a fraction of the face size")
    models_dir: Path | None = Field(None, description="folder with SHA256SUMS and the model files")


class Config(Section):
    anonymizer: AnonymizerConfig = AnonymizerConfig()


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
