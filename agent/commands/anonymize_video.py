"""Video files for ``anoncam anonymize``: every frame through the stream pipeline, the file written whole or not at all.

Each frame is analysed in MediaPipe's VIDEO mode at its own time in the file, the tracker keeps a face
the detector loses covered for ``policy.hold_ms`` (of video time), and the guard seals the frame. A
frame whose analysis or synthesis fails is written fully grey (:func:`~agent.composition.guard.mask_everything`):
never raw, never dropped, so the output has the input's frames one for one. There is no time budget:
a file is not a live camera, every frame gets the time it takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

from tqdm import tqdm

from agent.commands.native_log import stderr_is_terminal
from agent.composition.guard import AnonymizedFrame, mask_everything
from agent.config import Config
from agent.io.video import VIDEO_EXTENSIONS, InputFrame, VideoReader, rewrite
from agent.types import Analysis

log = logging.getLogger(__name__)

__all__ = ["VIDEO_EXTENSIONS", "StreamPipeline", "VideoTotals", "anonymize_video"]

LOGGED_FAILURES = 3  # per video; the rest are counted in the summary


@dataclass
class VideoTotals:
    videos: int = 0
    frames: int = 0
    replaced: int = 0  # faces, summed over frames
    covered: int = 0
    masked: int = 0  # frames written fully grey

    def add(self, other: VideoTotals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        per = max(self.frames, 1)
        return (f"{self.videos} video(s) written, {self.frames} frame(s), {self.replaced / per:.2f} face(s) replaced "
                f"and {self.covered / per:.2f} covered per frame, {self.masked} frame(s) masked whole")


class StreamPipeline:
    """One video's way through the daemon's pipeline: VIDEO-mode analysis, the tracker's hold, the guard."""

    def __init__(self, cfg: Config, name: str = "video"):
        from agent.detection.tracking import Tracker
        from agent.pipeline import Anonymizer

        self.name = name
        self.anonymizer = Anonymizer(cfg, mode="video")
        self.tracker = Tracker(cfg.policy.hold_ms, self.anonymizer.manifest.tracking)
        self.counts = VideoTotals(videos=1)
        self._last_t = None

    def __call__(self, frame: InputFrame) -> AnonymizedFrame:
        t = frame.time_s if self._last_t is None else max(frame.time_s, self._last_t + 1e-3)  # time must move on
        self._last_t = t
        try:
            analysis = self.anonymizer.analyze_all(frame.rgb, round(t * 1000))
            faces, _ = self.tracker.update(analysis.faces, t)
            detections, _ = self.tracker.update_detections(analysis.detections, t)
            sealed, _, _ = self.anonymizer.anonymize(frame.rgb, Analysis(faces, detections, analysis.shape))
        except Exception as exc:  # analysis, synthesis or the guard: this frame leaves grey
            self.counts.masked += 1
            if self.counts.masked <= LOGGED_FAILURES:
                log.warning("%s: frame %d (%.2f s) written grey: %s%s", self.name, frame.index + 1, frame.time_s,
                            exc, "; further such frames are only counted" if self.counts.masked == LOGGED_FAILURES
                            else "")
            sealed = mask_everything(frame.rgb)
        self.counts.frames += 1
        self.counts.replaced += sealed.faces_replaced
        self.counts.covered += sealed.faces_masked
        return sealed

    def close(self):
        self.anonymizer.close()


def anonymize_video(src: Path, dst: Path, cfg: Config, totals: VideoTotals) -> int:
    """Write ``dst`` from ``src``; add its counts to ``totals``. Returns the frames written.

    Raises :class:`~agent.io.video.VideoError` (one line) when ``src`` cannot be read or ``dst``
    written; then nothing is left at ``dst``."""
    with VideoReader(src) as reader:
        pipeline = StreamPipeline(cfg, src.name)
        bar = tqdm(total=reader.expected_frames, desc=src.name, unit="frame", dynamic_ncols=True,
                   disable=not stderr_is_terminal())
        try:
            written = rewrite(reader, dst, pipeline, on_frame=lambda _frame: bar.update())
        finally:
            bar.close()
            pipeline.close()
        listed = reader.video.frames
        if listed and written < listed:  # every decodable frame is written; the rest is not in the file
            log.warning("%s: %d frame(s) decoded of the %d its header lists (cut short?); all %d written", src,
                        written, listed, written)
    totals.add(pipeline.counts)
    return written
