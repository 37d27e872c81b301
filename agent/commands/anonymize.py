"""``anoncam anonymize INPUT OUTPUT``: anonymize a still, a video file, or a folder of them."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from tqdm import tqdm

from agent.commands.native_log import stderr_is_terminal
from agent.config import command_config
from agent.errors import AnoncamError, ImageError
from agent.io.images import EXTENSIONS, from_rgb, read_image, to_rgb, write_image
from agent.io.video import VIDEO_EXTENSIONS, VideoError

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser("anonymize", help="replace every face in an image, a video file, or a folder of them",
                       description="Replace every face in INPUT (an image or video file, or a folder searched "
                                   "recursively) and write the result to OUTPUT (a file, or a folder mirroring "
                                   "INPUT's layout).")
    p.add_argument("input", type=Path, help="an image (JPEG, PNG, WebP, BMP, TIFF), a video (.mp4, .mkv, .mov, "
                                            ".avi) or a folder of them")
    p.add_argument("output", type=Path, help="the output file, or folder (same relative paths); never INPUT itself")
    p.add_argument("--backend", choices=("openvino", "onnxruntime", "auto"), help="inference backend (default: config, else auto)")
    p.add_argument("--device", help="OpenVINO device: CPU, GPU or NPU")
    p.add_argument("--config", type=Path, help="YAML config (its inference, anonymizer and experimental sections "
                                               "are used, and policy.hold_ms for videos)")
    p.add_argument("--max-faces", type=int, help="faces synthesized per image or frame, largest first; every other "
                                                 "face is covered, its head filled flat (default: config, else 8)")
    p.set_defaults(func=run)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def media_files(src: Path) -> tuple[list[Path], int]:
    """The images and videos a command takes from ``src`` (a file, or a folder searched recursively,
    sorted), and how many other files the folder holds."""
    if not src.is_dir():
        return [src], 0
    files = sorted(p for p in src.rglob("*") if p.is_file())
    taken = [f for f in files if f.suffix.lower() in EXTENSIONS + VIDEO_EXTENSIONS]
    return taken, len(files) - len(taken)


def _pairs(src: Path, dst: Path) -> tuple[list[tuple[Path, Path]], int]:
    """(input, output) pairs, and how many files in a folder INPUT are not images or videos."""
    inputs, skipped = media_files(src)
    if src.is_dir():
        return [(f, dst / f.relative_to(src)) for f in inputs], skipped
    return [(src, dst / src.name if dst.is_dir() else dst)], 0


def _check(args, pairs):
    if not pairs:
        raise AnoncamError(f"no images ({', '.join(EXTENSIONS)}) or videos ({', '.join(VIDEO_EXTENSIONS)}) under "
                           f"{args.input}")
    if any(src.resolve() == dst.resolve() for src, dst in pairs):
        raise AnoncamError(f"OUTPUT {args.output} would overwrite INPUT {args.input}: the originals are never "
                           "replaced; choose another OUTPUT")
    for src, dst in pairs:
        if is_video(src) and not is_video(dst):
            raise AnoncamError(f"OUTPUT {dst} for the video {src}: a video is written as "
                               f"{', '.join(VIDEO_EXTENSIONS)}")


def run(args) -> int:
    cfg = command_config(args.config, backend=args.backend, device=args.device, max_faces=args.max_faces)
    if not args.input.exists():
        raise AnoncamError(f"input {args.input} does not exist")
    pairs, skipped = _pairs(args.input, args.output)
    _check(args, pairs)
    for name in cfg.experimental.in_use():
        log.warning("experimental.%s is on: the outputs identify people more easily", name)
    batch = Batch(cfg, pairs)
    restore = _stop_on_sigterm()
    try:
        batch.run()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every file written is whole; stop and say so
        batch.stopped = True
    finally:
        batch.close()
        signal.signal(signal.SIGTERM, restore)
    for msg in batch.failures:
        print(f"anoncam: error: {msg}", file=sys.stderr)
    print(batch.summary(skipped))
    if batch.stopped:
        return 130
    return 1 if batch.failures else 0


class Batch:
    """The files of one command, in order: stills through the IMAGE-mode pipeline, videos through
    the stream pipeline (agent.commands.anonymize_video), one failed file never stopping the others."""

    def __init__(self, cfg, pairs: list[tuple[Path, Path]]):
        from agent.commands.anonymize_video import VideoTotals
        from agent.pipeline import Anonymizer

        self.cfg, self.pairs = cfg, pairs
        self.images = [p for p in pairs if not is_video(p[0])]
        self.has_videos = len(self.images) < len(pairs)
        # Loaded before the first file, so a damaged model is one line and exit 2 before any output.
        self.anonymizer = Anonymizer(cfg, mode="image") if self.images else None
        self.counts = {"images": 0, "faces_replaced": 0, "faces_covered": 0, "no_face": 0}
        self.videos = VideoTotals()
        self.failures: list[str] = []
        self.stopped = False

    def run(self):
        from agent.commands.anonymize_video import anonymize_video

        # Several stills get a bar over files; each video has its own over its frames.
        bar = tqdm(self.pairs, desc="anonymize", unit="file",
                   disable=len(self.images) < 2 or self.has_videos or not stderr_is_terminal())
        for src, dst in bar:
            try:
                if is_video(src):
                    anonymize_video(src, dst, self.cfg, self.videos)
                else:
                    self._image(src, dst)
            except (ImageError, VideoError) as exc:
                # Nothing is written for a file we could not anonymize: no output beats a raw one.
                self.failures.append(str(exc))

    def _image(self, src: Path, dst: Path):
        from agent.pipeline import AnalysisFailed

        stored = read_image(src)
        try:
            result = self.anonymizer.process(to_rgb(stored))
        except AnalysisFailed as exc:
            raise ImageError(f"{src}: {exc}") from None
        write_image(dst, from_rgb(result.frame.pixels, stored))
        self.counts["images"] += 1
        self.counts["faces_replaced"] += result.frame.faces_replaced
        self.counts["faces_covered"] += result.frame.faces_masked
        if not result.frame.faces:
            self.counts["no_face"] += 1

    def close(self):
        if self.anonymizer is not None:
            self.anonymizer.close()

    def summary(self, skipped: int) -> str:
        c = self.counts
        parts = []
        if self.images:
            parts.append(f"{c['images']} image(s) written, {c['faces_replaced']} face(s) replaced, "
                         f"{c['faces_covered']} covered, {c['no_face']} with no face (written unchanged)")
        if self.has_videos:
            parts.append(self.videos.summary())
        done = c["images"] + self.videos.videos + len(self.failures)
        return ("; ".join(parts) + f", {len(self.failures)} failed"
                + (f", {skipped} other file(s) skipped" if skipped else "")
                + (f"; stopped by a signal, {len(self.pairs) - done} not done" if self.stopped else ""))


def _stop_on_sigterm():
    """SIGTERM stops the batch like Ctrl-C: the current file is dropped whole, the summary printed."""
    def stop(*_):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)
