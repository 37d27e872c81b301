"""Configs and manifests for tests: the shipped defaults with a few settings changed."""

from __future__ import annotations

from agent.config import Config
from agent.runtime.manifest import Manifest, load_manifest


def config(backend: str = "onnxruntime", **sections) -> Config:
    """The default config on ``backend``, with ``sections`` ({"anonymizer": {"max_faces": 4}}) merged in."""
    data = {"inference": {"backend": backend}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Config.model_validate(data)


def manifest(**parts) -> Manifest:
    """The shipped manifest with some settings changed: ``manifest(generator={"texture_gain": 0})``."""
    return load_manifest().override(**parts) if parts else load_manifest()
