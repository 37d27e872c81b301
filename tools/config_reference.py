"""Write docs/configuration.md from the config schema (agent/config.py), so the two cannot drift.

    python -m tools.config_reference            # rewrites docs/configuration.md
    python -m tools.config_reference --check    # exit 1 if the file is out of date (the tests run this)
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from agent.config import Config

OUT = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

INTRO = """# Configuration reference

Generated from `agent/config.py` by `python -m tools.config_reference`; do not edit by hand.

`config/agent.yaml` shows every key with its default. Every key is optional. Unknown keys and bad
values are refused at start, in one line naming the key (exit code 2). On a device the file is
`/etc/anoncam/agent.yaml`; `anoncam run --config FILE [--source URI] [--broker HOST:PORT]` reads it,
and `anoncam anonymize` and `anoncam analyze` read its `inference`, `anonymizer`, `expression` and
`experimental` sections.

What belongs to the models is not here: which generator draws which emotion, the expression texture's
gain, the expression bank sizes, the feather and tone matching of the paste-back, the face detector's
thresholds and the smallest face that is synthesized rather than covered live in the versioned
manifest `models/manifest.yaml`, next to `models/SHA256SUMS`, and change with a model release
(`models/MODEL_CARD.md`).
"""


def _type(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in typing.get_args(annotation) if a is not type(None)) + " or null"
    return {str: "text", int: "integer", float: "number", bool: "true/false", Path: "path"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def _default(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`" if value != "" else '`""`'


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += _rows(ann, f"{prefix}{name}.")
            continue
        limits = [f"{op} {getattr(m, attr)}" for m in field.metadata
                  for attr, op in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")) if hasattr(m, attr)]
        kind = _type(ann) + (f" ({', '.join(limits)})" if limits else "")
        rows.append(f"| `{prefix}{name}` | {kind} | {_default(field.default)} | {field.description or ''} |")
    return rows


def render() -> str:
    parts = [INTRO]
    for name, field in Config.model_fields.items():
        section = field.annotation
        doc = " ".join((section.__doc__ or "").split())
        parts += [f"\n## `{name}`\n", *([doc, ""] if doc else []),
                  "| key | type | default | meaning |", "|---|---|---|---|", *_rows(section, f"{name}.")]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.config_reference", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that docs/configuration.md is up to date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python -m tools.config_reference", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
