"""``anoncam anonymize INPUT OUTPUT``: anonymize a still or a folder of stills."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from tqdm import tqdm

from agent.config import command_config
from agent.errors import AnoncamError, ImageError
from agent.io.images import (
    EXTENSIONS,
    from_rgb,
    image_files,
    read_image,
    to_rgb,
    write_image,
)

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser("anonymize", help="replace every face in an image or a folder of images",
                       description="Replace every face in INPUT (an image file, or a folder searched recursively) "
                                   "and write the result to OUTPUT (a file, or a folder mirroring INPUT's layout).")
    p.add_argument("input", type=Path, help="an image (JPEG, PNG, WebP, BMP, TIFF) or a folder of them")
    p.add_argument("output", type=Path, help="the output file, or folder (same relative paths); never INPUT itself")
    p.add_argument("--backend", choices=("openvino", "onnxruntime", "auto"), help="inference backend (default: config, else auto)")
    p.add_argument("--device", help="OpenVINO device: CPU, GPU or NPU")
    p.add_argument("--config", type=Path, help="YAML config (its inference, anonymizer and experimental sections "
                                               "are used)")
    p.add_argument("--max-faces", type=int, help="faces synthesized per image, largest first; every other face is "
                                                 "covered, its head filled flat (default: config, else 8)")
    p.set_defaults(func=run)


def _pairs(src: Path, dst: Path) -> tuple[list[tuple[Path, Path]], int]:
    """(input, output) pairs, and how many files in a folder INPUT are not images it takes."""
    images, skipped = image_files(src)
    if src.is_dir():
        return [(f, dst / f.relative_to(src)) for f in images], skipped
    return [(src, dst / src.name if dst.is_dir() else dst)], 0


def run(args) -> int:
    cfg = command_config(args.config, backend=args.backend, device=args.device, max_faces=args.max_faces)
    if not args.input.exists():
        raise AnoncamError(f"input {args.input} does not exist")
    pairs, skipped = _pairs(args.input, args.output)
    if not pairs:
        raise AnoncamError(f"no images ({', '.join(EXTENSIONS)}) under {args.input}")
    if any(src.resolve() == dst.resolve() for src, dst in pairs):
        raise AnoncamError(f"OUTPUT {args.output} would overwrite INPUT {args.input}: the originals are never "
                           "replaced; choose another OUTPUT")

    from agent.pipeline import AnalysisFailed, Anonymizer

    for name in cfg.experimental.in_use():
        log.warning("experimental.%s is on: the outputs identify people more easily", name)
    anonymizer = Anonymizer(cfg, mode="image")
    counts = {"images": 0, "faces_replaced": 0, "faces_covered": 0, "no_face": 0, "failed": 0}
    failures = []
    stopped = False
    restore = _stop_on_sigterm()
    try:
        for src, dst in tqdm(pairs, desc="anonymize", unit="img", disable=len(pairs) < 2 or not sys.stderr.isatty()):
            try:
                stored = read_image(src)
                result = anonymizer.process(to_rgb(stored))
                write_image(dst, from_rgb(result.frame.pixels, stored))
            except (ImageError, AnalysisFailed) as exc:
                # Nothing is written for a file we could not anonymize: no output beats a raw one.
                counts["failed"] += 1
                failures.append(str(exc))
                continue
            counts["images"] += 1
            counts["faces_replaced"] += result.frame.faces_replaced
            counts["faces_covered"] += result.frame.faces_masked
            if not result.frame.faces:
                counts["no_face"] += 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every file written is whole; stop and say so
        stopped = True
    finally:
        anonymizer.close()
        signal.signal(signal.SIGTERM, restore)
    for msg in failures:
        print(f"anoncam: error: {msg}", file=sys.stderr)
    print(
        f"{counts['images']} image(s) written, {counts['faces_replaced']} face(s) replaced, "
        f"{counts['faces_covered']} covered, {counts['no_face']} with no face (written unchanged), "
        f"{counts['failed']} failed" + (f", {skipped} other file(s) skipped" if skipped else "")
        + (f"; stopped by a signal, {len(pairs) - counts['images'] - counts['failed']} not done" if stopped else "")
    )
    if stopped:
        return 130
    return 1 if counts["failed"] else 0


def _stop_on_sigterm():
    """SIGTERM stops the batch like Ctrl-C: the current file is dropped whole, the summary printed."""
    def stop(*_):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)
