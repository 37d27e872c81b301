"""The shipped models folder and its checksum list, shared by every tool that writes a model.

Kept apart from the exporters so a tool that only fits numbers (tools.fit_shape_model) does not
import torch to update a checksum.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MANIFEST = "manifest.yaml"  # agent.runtime.manifest.MANIFEST_FILE, checked against SHA256SUMS like a model


def update_sums(folder: Path, names: list[str]) -> None:
    """Record the sha256 of ``names`` in ``folder``/SHA256SUMS (which agent.runtime.model_files checks at load).

    The folder's manifest.yaml, when it has one, is always recorded too: the agent checks it against
    the same list, so a sums file rewritten without it would refuse the whole folder."""
    from agent.runtime.model_files import _sums, sha256_file

    sums_path = folder / "SHA256SUMS"
    lines = {}
    for line in (sums_path.read_text() if sums_path.exists() else "").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            lines[name.lstrip("*")] = digest
    for name in [*names, *([MANIFEST] if (folder / MANIFEST).is_file() else [])]:
        lines[name] = sha256_file(folder / name)
    sums_path.write_text("".join(f"{d}  {n}\n" for n, d in sorted(lines.items())))
    _sums.cache_clear()  # the agent reads a folder's sums once per process: this one may load what it wrote


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.model_files", description=(
        "Record the sha256 of model files (and always of manifest.yaml) in a models folder's SHA256SUMS, then "
        "load its manifest as the agent does: run after editing models/manifest.yaml or replacing a model by hand."))
    ap.add_argument("names", nargs="*", help="files in the folder to record besides manifest.yaml, e.g. generator.int8.onnx")
    ap.add_argument("--models", type=Path, default=MODELS, help="the models folder (default: the checkout's models/)")
    args = ap.parse_args(argv)
    from agent.errors import AnoncamError
    from agent.runtime.manifest import load_manifest

    missing = [n for n in [*args.names, MANIFEST] if not (args.models / n).is_file()]
    if missing:
        ap.error(f"not in {args.models}: {', '.join(missing)}")
    update_sums(args.models, args.names)
    try:
        manifest = load_manifest(args.models)
    except AnoncamError as exc:
        raise SystemExit(f"tools.model_files: error: {exc}") from None
    print(f"{args.models / 'SHA256SUMS'}: recorded {', '.join([*args.names, MANIFEST])}; "
          f"the manifest loads and names {len(manifest.files())} listed files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
