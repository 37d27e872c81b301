"""The shipped models folder and its checksum list, shared by every tool that writes a model.

Kept apart from the exporters so a tool that only fits numbers (tools/fit_shape_model.py) does not
import torch to update a checksum.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def update_sums(folder: Path, names: list[str]) -> None:
    """Record the sha256 of ``names`` in ``folder``/SHA256SUMS (which agent.models checks at load)."""
    from agent.models import _sums, sha256_file

    sums_path = folder / "SHA256SUMS"
    lines = {}
    for line in (sums_path.read_text() if sums_path.exists() else "").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            lines[name.lstrip("*")] = digest
    for name in names:
        lines[name] = sha256_file(folder / name)
    sums_path.write_text("".join(f"{d}  {n}\n" for n, d in sorted(lines.items())))
    _sums.cache_clear()  # the agent reads a folder's sums once per process: this one may load what it wrote
