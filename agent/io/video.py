"""Reading and writing video files with PyAV (FFmpeg's libraries, shipped in its wheels).

:class:`VideoReader` demuxes a file once, in order: video frames come out decoded (RGB, upright, with
their time stamps), audio packets come out as they are stored. :class:`VideoWriter` encodes the
anonymized frames with the input's frame rate and time stamps and remuxes the audio packets unchanged
(no re-encode). It writes to ``OUTPUT.part`` and renames it at the end; on any error, or a stop
signal, the partial file is removed, so a file at OUTPUT is always a whole video.

Only an :class:`~agent.composition.guard.AnonymizedFrame` is written: pixels that did not pass the
guard cannot reach the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from agent.composition.guard import AnonymizedFrame
from agent.errors import AnoncamError

log = logging.getLogger(__name__)

# Output extension -> FFmpeg muxer. The encoder follows: H.264 where the muxer takes it, MJPEG in AVI.
FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".avi": "avi"}
VIDEO_EXTENSIONS = tuple(FORMATS)
H264_CRF = "18"  # visually lossless for the scene around the faces
H264_PRESET = "veryfast"  # encoding stays a few ms a frame next to ~100 ms of face work
MJPEG_QSCALE = 2  # 2 (best) .. 31
MPEG4_MAX_TIME_BASE = 65535  # MPEG-4 part 2 cannot express a finer time base


class VideoError(AnoncamError):
    """A video file cannot be read, decoded or written."""


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


@dataclass
class InputFrame:
    """One decoded frame: RGB uint8, upright (the stream's display rotation applied)."""

    rgb: np.ndarray
    index: int
    time_s: float  # from the first frame
    pts: int | None  # as stored, in the stream's time base


class VideoReader:
    """The frames of a video file's first video stream, and the packets of all its audio streams."""

    def __init__(self, path: Path):
        import av

        self.path = Path(path)
        try:
            self.container = av.open(str(path), "r", metadata_errors="ignore")
        except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
            raise VideoError(f"{path} cannot be opened as a video ({_why(exc)}); is it a whole video file?") from None
        try:
            self._probe()
        except BaseException:
            self.close()
            raise

    def _probe(self):
        streams = self.container.streams
        if not streams.video:
            raise VideoError(f"{self.path} holds no video stream")
        self.video = streams.video[0]
        self.audio = list(streams.audio)
        self.dropped = [s for s in streams if s.type not in ("video", "audio") or
                        (s.type == "video" and s is not self.video)]
        ctx = self.video.codec_context
        if not ctx.width or not ctx.height:
            raise VideoError(f"{self.path}: the video stream has no frame size (damaged header?)")
        rate = self.video.average_rate or self.video.guessed_rate or self.video.base_rate
        if not rate or rate <= 0:
            raise VideoError(f"{self.path}: the video stream has no frame rate")
        self.rate = Fraction(rate)
        self.time_base = self.video.time_base
        self.video.thread_type = "AUTO"  # decode on several cores

    @property
    def expected_frames(self) -> int | None:
        """The frame count the file claims (or its duration times the rate); None if it says neither."""
        if self.video.frames:
            return int(self.video.frames)
        if self.video.duration and self.time_base:
            return round(float(self.video.duration * self.time_base * self.rate))
        if self.container.duration:
            return round(self.container.duration / 1e6 * float(self.rate))
        return None

    def items(self) -> Iterator[InputFrame | object]:
        """Frames (:class:`InputFrame`) and audio packets (``av.Packet``), in the file's order."""
        import av

        index, first = 0, None
        try:
            for packet in self.container.demux(self.video, *self.audio):
                if packet.stream.index != self.video.index:
                    if packet.dts is not None and packet.size:
                        yield packet
                    continue
                for frame in packet.decode():
                    t = frame.time
                    first = t if first is None and t is not None else first
                    time_s = (t - first) if t is not None else index / float(self.rate)
                    yield InputFrame(_upright(frame), index, time_s, frame.pts)
                    index += 1
        except av.error.FFmpegError as exc:
            raise VideoError(f"{self.path} is damaged near frame {index + 1} ({_why(exc)}); nothing was written "
                             "for it") from None
        if index == 0:
            raise VideoError(f"{self.path}: no frame could be decoded (damaged or empty video)")

    def close(self):
        with contextlib.suppress(Exception):
            self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _upright(frame) -> np.ndarray:
    """RGB pixels as a player shows them: the display matrix's rotation (a multiple of 90 degrees) applied."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _video_codec(ext: str) -> str:
    import av

    if ext == ".avi":
        return "mjpeg"
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except (av.error.FFmpegError, ValueError):  # an FFmpeg built without x264
        return "mpeg4"


class VideoWriter:
    """Writes ``path`` from a :class:`VideoReader`'s frames (anonymized) and audio packets (as they are)."""

    def __init__(self, path: Path, reader: VideoReader, width: int, height: int):
        import av

        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in FORMATS:
            raise VideoError(f"cannot write {path}: a video is written as {', '.join(VIDEO_EXTENSIONS)}")
        self.part = self.path.with_name(self.path.name + ".part")
        self.source, self.size = reader.path, (width, height)
        self.frames = 0
        self._last_pts: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # AVI stores no audio time stamps: shifting them (AAC's priming starts below zero) would
            # only insert an empty video frame at the start.
            options = {".mp4": {"movflags": "+faststart"}, ".mov": {"movflags": "+faststart"},
                       ".avi": {"avoid_negative_ts": "disabled"}}.get(ext, {})
            self.container = av.open(str(self.part), "w", format=FORMATS[ext], options=options)
        except (av.error.FFmpegError, OSError) as exc:
            self._remove()
            raise VideoError(f"cannot write {path}: {_why(exc)}; check that its folder can be created and written") \
                from None
        try:
            self._add_streams(reader, ext, width, height)
            self.container.start_encoding()  # the header: an audio codec the container cannot hold fails here
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self.abort()
            codecs = ", ".join(s.codec_context.name for s in reader.audio)
            hint = f"; its audio ({codecs}) is copied unchanged, so choose a container that holds it (.mkv holds " \
                   "most)" if reader.audio else ""
            raise VideoError(f"cannot write {path}: {_why(exc)}{hint}") from None

    def _add_streams(self, reader: VideoReader, ext: str, width: int, height: int):
        codec = _video_codec(ext)
        stream = self.container.add_stream(codec, rate=reader.rate)
        stream.width, stream.height = width, height
        if codec == "libx264":
            # 4:2:0 needs even sides; x264 encodes an odd-sized frame in 4:4:4 rather than crop it.
            stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            stream.options = {"crf": H264_CRF, "preset": H264_PRESET}
        elif codec == "mjpeg":
            stream.pix_fmt = "yuvj420p"
            if hasattr(stream.codec_context, "qscale"):  # a fixed quality (PyAV's newer releases)
                stream.codec_context.qscale = True
                stream.codec_context.global_quality = MJPEG_QSCALE * 118  # FF_QP2LAMBDA
            else:
                stream.bit_rate = int(width * height * float(reader.rate) * 2)
        else:
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = int(width * height * float(reader.rate) * 0.4)
        # The input's own time stamps where the format keeps them (a variable frame rate stays as
        # it was); AVI (fixed rate by design), or a time base MPEG-4 cannot hold, numbers the frames.
        tb = reader.time_base
        self.avi, self.rate, self.source_time_base, self._grid0 = ext == ".avi", reader.rate, tb, None
        self.own_times = ext != ".avi" and tb is not None and (codec != "mpeg4" or tb.denominator <= MPEG4_MAX_TIME_BASE)
        self.time_base = Fraction(tb) if self.own_times else 1 / reader.rate
        stream.codec_context.time_base = self.time_base
        stream.time_base = self.time_base
        self.video = stream
        add = getattr(self.container, "add_stream_from_template", None)  # PyAV >= 13
        self.audio = {s.index: (add(s) if add else self.container.add_stream(template=s)) for s in reader.audio}
        if reader.dropped:
            log.warning("%s: %d stream(s) besides video and audio (%s) are not copied", reader.path,
                        len(reader.dropped), ", ".join(sorted({s.type for s in reader.dropped})))

    def write(self, frame: AnonymizedFrame, source: InputFrame) -> None:
        """Encode ``frame`` (the guard's output for ``source``) at ``source``'s time."""
        import av

        if not isinstance(frame, AnonymizedFrame):
            raise TypeError("only an AnonymizedFrame (agent.composition.guard) is written to a video")
        h, w = frame.pixels.shape[:2]
        if (w, h) != self.size:
            raise VideoError(f"{self.source} changes frame size at frame {source.index + 1} ({self.size[0]}x"
                             f"{self.size[1]} to {w}x{h}): not supported")
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.pixels), format="rgb24")
        if self.own_times and source.pts is not None:
            pts = source.pts
        else:  # numbered from the first frame's place on the rate's grid (AVI: from zero)
            if self._grid0 is None:
                start = 0 if source.pts is None or self.avi else source.pts * self.source_time_base * self.rate
                self._grid0 = round(start)
            pts = self._grid0 + source.index
        if self._last_pts is not None and pts <= self._last_pts:  # repeated or reordered stamps: keep order
            pts = self._last_pts + 1
        self._last_pts = out.pts = pts
        out.time_base = self.time_base
        self._mux(self.video.encode(out))
        self.frames += 1

    def copy(self, packet) -> None:
        """Remux an audio packet as stored: same bytes, same time stamps."""
        packet.stream = self.audio[packet.stream.index]
        self._mux([packet])

    def _mux(self, packets):
        import av

        try:
            for p in packets:
                self.container.mux(p)
        except (av.error.FFmpegError, OSError) as exc:
            why = _why(exc)
            raise VideoError(f"cannot write {self.path}: {why}; check that the disk has room") from None

    def finish(self) -> None:
        """Flush the encoder, close the file and move it to its name."""
        import av

        self._mux(self.video.encode(None))
        try:
            self.container.close()
            os.replace(self.part, self.path)
        except (av.error.FFmpegError, OSError) as exc:
            self._remove()
            raise VideoError(f"cannot write {self.path}: {_why(exc)}; check that the disk has room") from None

    def abort(self) -> None:
        """Close and remove the partial file."""
        with contextlib.suppress(Exception):
            self.container.close()
        self._remove()

    def _remove(self):
        with contextlib.suppress(OSError):
            self.part.unlink(missing_ok=True)


def rewrite(reader: VideoReader, dst: Path, anonymize, on_frame=None) -> int:
    """Write ``dst`` from ``reader``: each frame through ``anonymize(InputFrame) -> AnonymizedFrame``,
    every audio packet copied. Returns the frames written. On any error or signal nothing is left at
    ``dst`` (nor its ``.part``)."""
    writer, early = None, []  # audio packets before the first frame wait for the writer (its size is the frame's)
    try:
        for item in reader.items():
            if not isinstance(item, InputFrame):
                if writer is None:
                    early.append(item)
                else:
                    writer.copy(item)
                continue
            frame = anonymize(item)
            if writer is None:
                writer = VideoWriter(dst, reader, frame.pixels.shape[1], frame.pixels.shape[0])
                for packet in early:
                    writer.copy(packet)
                early = []
            writer.write(frame, item)
            if on_frame is not None:
                on_frame(frame)
        writer.finish()
        return writer.frames
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
