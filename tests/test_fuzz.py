"""Fuzzing the inputs a user hands the agent: configs, images and video files. Whatever arrives, the
answer is a valid result or a one-line error naming the problem, never a traceback."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Config, load_config
from agent.errors import AnoncamError, ConfigError, ImageError
from agent.io.images import read_image

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _schema_keys(model=Config, prefix=()) -> list[tuple]:
    from pydantic import BaseModel

    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _schema_keys(ann, prefix + (name,))
        else:
            out.append(prefix + (name,))
    return out


KEYS = _schema_keys()
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["auto", "openvino", "CPU", "GPU", "drop", "mask", "/dev/video0",
                                                           "rtsp://x", "camera", "a/b", "#", "5", "3.1.1"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


@st.composite
def configs(draw):
    """Mostly the schema's own keys with values of any type, sometimes misspelt or misplaced ones."""
    data: dict = {}
    for _ in range(draw(st.integers(0, 8))):
        path = list(draw(st.sampled_from(KEYS)))
        if draw(st.booleans()) and draw(st.booleans()):
            path[-1] = path[-1] + draw(st.sampled_from(["s", "_", "x"]))
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else node
        node[path[-1]] = draw(values)
    return data


@SETTINGS
@given(data=configs())
def test_any_config_is_valid_or_one_line_error(tmp_path, data):
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
    else:
        assert isinstance(cfg, Config)


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_text_as_a_config_is_valid_or_one_line_error(tmp_path, text):
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


@pytest.fixture(scope="module")
def good_jpeg() -> bytes:
    import skimage.data

    return cv2.imencode(".jpg", cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))[1].tobytes()


@SETTINGS
@given(blob=st.binary(max_size=4096), suffix=st.sampled_from([".jpg", ".png", ".webp", ".bmp", ".tif"]))
def test_random_bytes_are_a_clear_per_file_error(tmp_path, blob, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(blob)
    try:
        img = read_image(path)
    except ImageError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        assert isinstance(img, np.ndarray) and img.size > 0


@SETTINGS
@given(cut=st.floats(0.0, 0.999), flips=st.lists(st.integers(0, 10**6), max_size=8))
def test_truncated_or_damaged_jpegs_are_read_or_refused_cleanly(tmp_path, good_jpeg, cut, flips):
    data = bytearray(good_jpeg[: max(1, int(len(good_jpeg) * cut))])
    for f in flips:
        if data:
            data[f % len(data)] ^= 0xFF
    path = tmp_path / "cut.jpg"
    path.write_bytes(bytes(data))
    try:
        read_image(path)
    except ImageError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_decompression_bomb_headers_are_refused_before_decoding(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(width, height) + b"\0" * 64)
    try:
        read_image(path)
    except ImageError as exc:
        assert "\n" not in str(exc)


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory) -> bytes:
    from daemon_helpers import make_clip

    return make_clip(tmp_path_factory.mktemp("clip") / "c.avi", frames=8).read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.integers(0, 10**7), max_size=12))
def test_damaged_video_files_give_frames_or_a_clear_error(tmp_path, clip_bytes, cut, flips):
    from agent.io.capture import Capture

    data = bytearray(clip_bytes[: max(1, int(len(clip_bytes) * cut))])
    for f in flips:
        data[f % len(data)] ^= 0x5A
    path = tmp_path / "damaged.avi"
    path.write_bytes(bytes(data))
    try:
        cap = Capture(_capture_config(path), realtime=False).start()
    except AnoncamError as exc:
        assert "\n" not in str(exc)
        return
    frames = 0
    try:
        while (frame := cap.get(timeout=5)) is not None:
            assert frame.image.dtype == np.uint8 and frame.image.ndim == 3 and frame.image.shape[2] == 3
            frames += 1
    finally:
        cap.stop()
    assert frames <= 8 and (cap.error is None or "\n" not in cap.error)


def _capture_config(path):
    from agent.config import CaptureConfig

    return CaptureConfig(source=str(path))
