"""End to end with real parts: video file -> Agent -> mosquitto -> subscriber.

The core promise under test: every message on the wire is an anonymized JPEG or valid metadata;
no face region of a published frame is (near-)identical to the source.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from importlib import resources

import jsonschema
import numpy as np
import pytest
from daemon_helpers import (
    FaceOvals,
    Subscriber,
    agent_command,
    agent_env,
    decode_jpeg,
    oval_diff,
    read_frames,
    retained,
    terminate,
    wait_for,
    write_config,
)

from agent.config import Config
from agent.io.publish import Publisher
from agent.io.retry import Backoff
from agent.service.agent import Agent, Parts

# A replaced face differs from the source by tens of grey levels on average; the same face merely
# re-encoded as JPEG differs by 1-3 (checked below, so the threshold cannot be vacuous).
MIN_FACE_DIFF = 12.0
META_SCHEMA = json.loads(resources.files("agent").joinpath("schema/anoncam-metadata-v1.json").read_text())


FAST = Backoff(0.2, 1.0)  # broker retries for tests: the service's start at 0.5 s and reach 30 s


def every_frame(cfg: Config, realtime: bool = False) -> Agent:
    """The agent with a file source handing over every frame (not played in real time), retrying the
    broker quickly."""
    parts = Parts(publisher=lambda cfg, broker: Publisher(cfg.mqtt, *broker, backoff=FAST))
    return Agent(cfg, parts=parts, realtime=realtime)


def config(port, source, **over) -> Config:
    data = {
        # Expression metadata is exercised by the first test; the others test transport and policy.
        "expression": {"enabled": False},
        "capture": {"source": str(source)},
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": "test", "camera": "cam1"},
        "stats": {"interval_s": 1},
    }
    for section, values in over.items():
        data.setdefault(section, {}).update(values)
    return Config.model_validate(data)


@pytest.fixture(scope="module")
def ovals():
    o = FaceOvals()
    yield o
    o.close()


def check_wire(sub: Subscriber, source_frames, ovals, expect_faces=True):
    """Every message is a known topic with a valid payload; every frame's faces are replaced."""
    frames, metas = sub.topic("frame"), sub.topic("meta")
    for m in sub.messages:
        assert m.topic.rsplit("/", 1)[1] in ("frame", "meta", "availability", "stats"), m.topic
    for m in sub.topic("availability"):
        assert m.payload in (b"online", b"offline")
    meta_by_id = {}
    for m in metas:
        doc = json.loads(m.payload)
        jsonschema.validate(doc, META_SCHEMA)
        assert doc["frame_id"] not in meta_by_id, "one metadata message per frame"
        meta_by_id[doc["frame_id"]] = doc
    checked_faces = 0
    for m in frames:
        assert not m.retain
        props = m.properties
        assert props.ContentType == "image/jpeg"
        user = dict(props.UserProperty)
        fid = int(user["frame_id"])
        assert float(user["timestamp"]) > 0
        assert 0 < props.MessageExpiryInterval <= 5
        assert fid in meta_by_id, "every frame has its metadata"
        img = decode_jpeg(m.payload)
        assert img is not None and img.shape == (480, 640, 3)
        src = source_frames[fid - 1]
        masks = ovals.masks(fid - 1, src)
        if expect_faces and masks:
            assert meta_by_id[fid]["faces"], f"frame {fid}: source has a face, metadata lists none"
        for mask in masks:
            d = oval_diff(img, src, mask)
            assert d > MIN_FACE_DIFF, f"frame {fid}: face region differs from the source by only {d:.1f}"
            checked_faces += 1
    return frames, meta_by_id, checked_faces


def test_file_to_subscriber_publishes_only_anonymized_frames(mosquitto, astronaut_clip, ovals):
    sub = Subscriber(mosquitto.port, "test/#")
    source = read_frames(astronaut_clip)
    agent = every_frame(config(mosquitto.port, astronaut_clip, expression={"enabled": True}))
    try:
        assert agent.run() == 0  # end of file -> exit 0
        stats = agent.last_stats
        assert stats["frames"]["read"] == len(source) == 45
        assert stats["frames"]["published"] == 45 and stats["fail_closed"]["total"] == 0
        assert wait_for(lambda: len(sub.topic("meta")) >= 45 and len(sub.topic("frame")) >= 45)
        frames, metas, checked = check_wire(sub, source, ovals)
        assert len(frames) == len(metas) == 45
        assert checked >= 40, "the source clip must actually show a face for this test to mean anything"
        assert all(m["status"] == "anonymized" for m in metas.values())
        tracks = {f["track_id"] for m in metas.values() for f in m["faces"]}
        assert tracks == {1}, f"one moving face should keep one track id, got {tracks}"
        face = next(f for m in metas.values() for f in m["faces"])
        assert len(face["blendshapes"]) == 52 and set(face["head_pose"]) == {"yaw", "pitch", "roll"}
        assert face["replaced"] and not face["held"]
        assert face["emotion"]["label"] in face["emotion"]["scores"]
        assert isinstance(face["expression_kept"], bool)
        # The threshold separates: the source itself, JPEG-encoded, stays far below it.
        import cv2

        raw = decode_jpeg(cv2.imencode(".jpg", source[10], [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
        assert oval_diff(raw, source[10], ovals.masks(10, source[10])[0]) < MIN_FACE_DIFF / 3
        stats_docs = [json.loads(m.payload) for m in sub.topic("stats")]
        assert stats_docs and stats_docs[-1]["frames"]["published"] == 45
        assert {"analysis", "synthesis", "compose", "encode", "total"} <= set(stats_docs[0]["stage_ms"])
    finally:
        sub.close()
    assert retained(mosquitto.port, "test/cam1/availability") == b"offline"


def test_budget_overrun_masks_or_drops_and_counts(mosquitto, astronaut_clip):
    sub = Subscriber(mosquitto.port, "test/#")
    try:
        masked = every_frame(config(mosquitto.port, astronaut_clip, policy={"frame_budget_ms": 0.001, "on_failure": "mask"},
                              mqtt={"camera": "masked"}))
        assert masked.run(max_frames=5) == 0
        dropped = every_frame(config(mosquitto.port, astronaut_clip, policy={"frame_budget_ms": 0.001, "on_failure": "drop"},
                               mqtt={"camera": "dropped"}))
        assert dropped.run(max_frames=5) == 0
        assert wait_for(lambda: len([m for m in sub.topic("meta") if "/masked/" in m.topic]) >= 5)
    finally:
        sub.close()
    assert masked.last_stats["fail_closed"]["over_budget"] == 5
    assert masked.last_stats["frames"]["published_masked"] == 5
    for m in [m for m in sub.topic("frame") if "/masked/" in m.topic]:
        img = decode_jpeg(m.payload)
        assert img.max() - img.min() <= 4, "a failed frame is published only fully masked"
    for m in [m for m in sub.topic("meta") if "/masked/" in m.topic]:
        doc = json.loads(m.payload)
        jsonschema.validate(doc, META_SCHEMA)
        assert doc["status"] == "masked" and doc["reason"] == "over_budget" and doc["faces"] == []
    assert dropped.last_stats["fail_closed"]["over_budget"] == 5
    assert dropped.last_stats["frames"]["dropped_failed"] == 5
    assert not [m for m in sub.messages if "/dropped/" in m.topic and m.topic.endswith(("/frame", "/meta"))]


def test_corrupt_video_file_never_leaks(mosquitto, astronaut_clip, ovals, tmp_path):
    """Garbage in the middle of the file: whatever OpenCV decodes is anonymized or skipped, and EOF still exits 0."""
    data = bytearray(astronaut_clip.read_bytes())
    rng = np.random.default_rng(0)
    for at in (0.3, 0.55, 0.8):
        start = int(len(data) * at)
        data[start:start + 4000] = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.avi"
    bad.write_bytes(bytes(data))
    sub = Subscriber(mosquitto.port, "test/#")
    source = read_frames(astronaut_clip)
    try:
        agent = every_frame(config(mosquitto.port, bad))
        assert agent.run() == 0
        n = agent.last_stats["frames"]["published"]
        assert n > 0
        assert wait_for(lambda: len(sub.topic("meta")) >= n)
        for m in sub.topic("frame"):
            img = decode_jpeg(m.payload)
            # Frame numbers may shift where a packet was lost: compare with the closest source frame.
            small = cv2_small(img)
            best = min(range(len(source)), key=lambda i: np.abs(cv2_small(source[i]) - small).mean())
            for mask in ovals.masks(best, source[best]):
                assert oval_diff(img, source[best], mask) > MIN_FACE_DIFF
    finally:
        sub.close()


def cv2_small(img):
    import cv2

    return cv2.resize(img, (80, 60), interpolation=cv2.INTER_AREA).astype(np.float32)


def test_broker_restart_reconnects_without_blocking_capture(mosquitto, astronaut_clip, ovals):
    cfg = config(mosquitto.port, astronaut_clip, capture={"loop": True}, mqtt={"buffer_frames": 5})
    agent = every_frame(cfg, realtime=True)
    sub = Subscriber(mosquitto.port, "test/#")
    t = threading.Thread(target=agent.run, daemon=True)
    t.start()
    try:
        assert wait_for(lambda: len(sub.topic("frame")) >= 3, 60)
        mosquitto.stop()
        assert wait_for(lambda: agent.publisher is not None and not agent.publisher.connected)
        processed = agent.stats.frames["processed"]
        # While the broker is away frames keep being processed and the bounded buffer sheds the oldest.
        assert wait_for(lambda: agent.publisher.counters["buffer_dropped"] > 0, 30)
        assert agent.stats.frames["processed"] > processed
        assert agent.publisher.buffered <= 5
        mosquitto.start()
        before = len(sub.topic("frame"))
        assert wait_for(lambda: len(sub.topic("frame")) > before + 3, 30), "frames flow again after the broker returns"
        assert agent.publisher.counters["connects"] >= 2
        assert any(m.payload == b"online" for m in sub.topic("availability")[1:]), "online is re-announced on reconnect"
    finally:
        agent.stop()
        t.join(30)
        sub.close()
    assert not t.is_alive()
    # Nothing raw on the wire, before the outage or after it (the clip loops: frame ids keep counting).
    source = read_frames(astronaut_clip)
    for m in sub.topic("frame"):
        fid = int(dict(m.properties.UserProperty)["frame_id"])
        index = (fid - 1) % len(source)
        img = decode_jpeg(m.payload)
        for mask in ovals.masks(index, source[index]):
            assert oval_diff(img, source[index], mask) > MIN_FACE_DIFF, f"frame {fid} shows the face"


def _notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock, path


def _drain(sock) -> list[str]:
    out = []
    while True:
        try:
            out += sock.recv(4096).decode().split("\n")
        except (socket.timeout, BlockingIOError):
            return out


def test_subprocess_sigterm_is_clean_and_notifies_systemd(mosquitto, astronaut_clip, tmp_path):
    cfg = write_config(tmp_path / "agent.yaml",
                       capture={"source": str(astronaut_clip), "loop": True}, expression={"enabled": False},
                       mqtt={"host": "127.0.0.1", "port": mosquitto.port, "prefix": "test", "camera": "svc"},
                       stats={"interval_s": 1})
    sock, path = _notify_socket(tmp_path)
    env = {**agent_env(), "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    sub = Subscriber(mosquitto.port, "test/#")
    proc = subprocess.Popen(agent_command("run", "--config", str(cfg)), env=env, stderr=subprocess.PIPE, text=True)
    notes: list[str] = []
    try:
        assert wait_for(lambda: notes.extend(_drain(sock)) or "WATCHDOG=1" in notes, 120), notes
        assert "READY=1" in notes and notes.index("READY=1") < notes.index("WATCHDOG=1")
        assert wait_for(lambda: len(sub.topic("frame")) >= 3, 30)
        code = terminate(proc, signal.SIGTERM)
        err = proc.stderr.read()
        assert code == 0, err
        notes += _drain(sock)
        assert "STOPPING=1" in notes
        assert wait_for(lambda: sub.topic("availability") and sub.topic("availability")[-1].payload == b"offline")
        assert "Traceback" not in err
    finally:
        terminate(proc, signal.SIGKILL)
        sock.close()
        sub.close()


def test_subprocess_kill9_leaves_retained_offline(mosquitto, astronaut_clip, tmp_path):
    cfg = write_config(tmp_path / "agent.yaml",
                       capture={"source": str(astronaut_clip), "loop": True}, expression={"enabled": False},
                       mqtt={"host": "127.0.0.1", "port": mosquitto.port, "prefix": "test", "camera": "k9"})
    sub = Subscriber(mosquitto.port, "test/#")
    proc = subprocess.Popen(agent_command("run", "--config", str(cfg)), env=agent_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(sub.topic("frame")) >= 3, 120)
        assert retained(mosquitto.port, "test/k9/availability") == b"online"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        # The kernel closes the socket; the broker publishes the will at once.
        assert wait_for(lambda: sub.topic("availability")[-1].payload == b"offline", 20)
        assert retained(mosquitto.port, "test/k9/availability") == b"offline"
    finally:
        terminate(proc, signal.SIGKILL)
        sub.close()


def test_counters_agree_with_what_the_subscriber_received(mosquitto, astronaut_clip):
    sub = Subscriber(mosquitto.port, "test/#")
    try:
        agent = every_frame(config(mosquitto.port, astronaut_clip))
        assert agent.run(max_frames=12) == 0
        assert wait_for(lambda: sub.topic("availability") and sub.topic("availability")[-1].payload == b"offline")
        received = len(sub.topic("meta"))
        last = json.loads(sub.topic("stats")[-1].payload)
    finally:
        sub.close()
    # The last stats leave after every frame: what they say was sent is what arrived.
    assert last["frames"]["sent"] == received == len(sub.topic("frame")) == 12
    assert agent.last_stats["frames"]["sent"] == 12 and last["frames"]["lost"] == 0


def test_an_unreachable_broker_is_not_reported_as_published(astronaut_clip):
    from daemon_helpers import free_port

    proc = subprocess.run(agent_command("run", "--source", str(astronaut_clip), "--broker", f"127.0.0.1:{free_port()}",
                                        "--max-frames", "5"), env=agent_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stderr.splitlines() if "frames read" in x)
    assert "sent over MQTT 0" in line and "analysed 5" in line, line
    assert "5 still buffered at exit" in line, line


def test_metadata_without_expression_still_follows_the_schema(mosquitto, astronaut_clip):
    sub = Subscriber(mosquitto.port, "test/#")
    try:
        agent = every_frame(config(mosquitto.port, astronaut_clip))  # expression metadata off
        assert agent.run(max_frames=3) == 0
        assert wait_for(lambda: len(sub.topic("meta")) >= 3)
        docs = [json.loads(m.payload) for m in sub.topic("meta")]
    finally:
        sub.close()
    for doc in docs:
        jsonschema.validate(doc, META_SCHEMA)
        for face in doc["faces"]:
            assert face["emotion"] is None and "emotion" in face["missing"] and face["blendshapes"] is not None
