"""What every offline tool's report shares: one JSON writer, so they all look alike, and where a
figure was measured (the commit, the CPU)."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_report(path: Path, report: dict, echo: bool = True) -> None:
    """Write ``report`` as indented JSON to ``path`` (folders made as needed), then print it whole
    (``echo``) or only where it went."""
    text = json.dumps(report, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(text if echo else f"-> {path}")


def git_commit() -> str:
    """HEAD and whether tracked files differ from it (``+dirty``): the code may be mid-change when a tool runs."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module knows."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    names = [ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()
