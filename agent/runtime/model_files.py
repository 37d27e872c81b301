"""Where the shipped model files live, and the checksum check every load goes through.

The sums in ``models/SHA256SUMS`` are the single source of truth: a model whose bytes differ from
the sum (truncated copy, wrong file, tampering) is refused rather than run.
"""

from __future__ import annotations

import hashlib
import os
import sys
from functools import lru_cache
from pathlib import Path

from agent.errors import ModelError

SUMS_FILE = "SHA256SUMS"


def _candidate_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("ANONCAM_MODELS")
    if env:
        dirs.append(Path(env))
    # Source checkout (editable install, tests, tools/).
    dirs.append(Path(__file__).resolve().parents[2] / "models")
    # `pip install .` puts the files under <prefix>/share/anoncam/models.
    dirs.append(Path(sys.prefix) / "share" / "anoncam" / "models")
    dirs.append(Path("/usr/share/anoncam/models"))
    return dirs


def models_dir() -> Path:
    for d in _candidate_dirs():
        if (d / SUMS_FILE).is_file():
            return d
    tried = ", ".join(str(d) for d in _candidate_dirs())
    raise ModelError(
        f"no models folder found (looked in {tried}); reinstall the package or set ANONCAM_MODELS "
        "to the folder holding SHA256SUMS and the model files"
    )


@lru_cache(maxsize=None)
def _sums(folder: Path) -> dict[str, str]:
    sums = {}
    for line in (folder / SUMS_FILE).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest.lower()
    return sums


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=None)
def _verified(path: Path, expected: str, mtime_ns: int, size: int) -> bool:
    # Keyed on mtime and size so a file replaced on disk is hashed again.
    return sha256_file(path) == expected


def listed(name: str, folder: Path | None = None) -> bool:
    """Whether ``folder``'s SHA256SUMS lists ``name``."""
    folder = Path(folder) if folder is not None else models_dir()
    return (folder / SUMS_FILE).is_file() and name in _sums(folder)


def verified_path(name: str, folder: Path | None = None) -> Path:
    """Return the path of model ``name`` after checking it against SHA256SUMS."""
    folder = Path(folder) if folder is not None else models_dir()
    path = folder / name
    if not (folder / SUMS_FILE).is_file():
        raise ModelError(f"{folder} has no {SUMS_FILE}, so {name} cannot be checked; point models_dir at a folder "
                         "holding SHA256SUMS and the model files (the package's models/)")
    sums = _sums(folder)
    if name not in sums:
        raise ModelError(f"{name} has no entry in {folder / SUMS_FILE}; refusing to load an unlisted model")
    if not path.is_file():
        raise ModelError(f"model file {path} is missing; reinstall the package or restore it from the release")
    st = path.stat()
    if not _verified(path, sums[name], st.st_mtime_ns, st.st_size):
        raise ModelError(
            f"model file {path} does not match its sha256 in {SUMS_FILE} (corrupt or replaced); "
            "restore the original file"
        )
    return path
