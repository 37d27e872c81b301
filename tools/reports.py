"""The JSON report every offline tool leaves in reports/: one writer, so they all look alike."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(path: Path, report: dict, echo: bool = True) -> None:
    """Write ``report`` as indented JSON to ``path`` (folders made as needed), then print it whole
    (``echo``) or only where it went."""
    text = json.dumps(report, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(text if echo else f"-> {path}")
