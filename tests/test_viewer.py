"""The live viewer (``anoncam view``): its server, and the page in a real browser.

The browser test runs every real part: mosquitto with a WebSockets listener, ``anoncam run`` playing a clip,
``anoncam view`` serving the page, and Debian's headless Chromium loading it. Its oracle is independent of the
page: a paho-mqtt subscriber records what the camera published, and the screenshot's frame is compared with
the JPEG of the frame id the page says it shows.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from browser import Browser, missing
from daemon_helpers import (
    MOSQUITTO,
    Broker,
    Subscriber,
    agent_command,
    agent_env,
    decode_jpeg,
    free_port,
    terminate,
    wait_for,
    write_config,
)

from agent.commands.cli import main
from agent.commands.view import page_settings, viewer_server
from agent.config import Config
from agent.io.viewer_server import SECURITY_HEADERS

REPLACED_BGR = (0x59, 0xC7, 0x34)  # viewer.css --replaced, #34c759
EMOTION_BGR = {"angry": (0x3A, 0x45, 0xFF), "disgust": (0x4F, 0xD1, 0x8F), "fear": (0xF2, 0x5A, 0xBF),
               "happy": (0x0A, 0xD6, 0xFF), "neutral": (0x9D, 0x98, 0x98), "sad": (0xFF, 0x84, 0x0A),
               "surprise": (0x0A, 0x9F, 0xFF)}  # viewer.js COLORS


def cfg(**mqtt) -> Config:
    return Config.model_validate({"mqtt": mqtt})


def test_page_settings_follow_the_agent_config():
    assert page_settings(cfg()) == {"url": None, "bridge": "/mqtt", "base": "anoncam/camera", "camera": "camera",
                                    "username": "", "needs_password": False}
    named = page_settings(cfg(host="broker.lab", prefix="lab", camera="door", username="viewer"))
    assert named["base"] == "lab/door" and named["username"] == "viewer" and named["needs_password"]
    direct = page_settings(cfg(), websocket="wss://broker/mqtt", camera="hall")
    assert direct["url"] == "wss://broker/mqtt" and direct["bridge"] is None and direct["base"] == "anoncam/hall"


@pytest.mark.parametrize("flags, words", [
    (["--websocket", "http://broker:9001"], "ws:// or wss://"),
    (["--camera", "a/b"], "camera name"),
    (["--port", "70000"], "port from 1 to 65535"),
])
def test_bad_flags_are_one_line_errors(capsys, flags, words):
    assert main(["view", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anoncam: error:") and words in err and "\n" not in err


def test_a_taken_port_is_a_one_line_error(capsys):
    server = viewer_server(cfg(), port=0).start()
    try:
        assert main(["view", "--port", str(server.port)]) == 2
        assert "choose another --port" in capsys.readouterr().err
    finally:
        server.close()


def test_the_server_hands_out_only_the_page_with_a_strict_policy():
    settings = page_settings(cfg(prefix="lab", camera="door"))
    server = viewer_server(cfg(prefix="lab", camera="door"), port=0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(base + "/") as reply:
            page = reply.read().decode()
            assert reply.headers["Content-Type"].startswith("text/html")
            assert reply.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
        assert '<script src="mqtt.min.js">' in page and "<script>" not in page  # no inline script under the CSP
        with urllib.request.urlopen(base + "/config.json") as reply:
            assert json.load(reply) == settings
        for name in ("viewer.js", "viewer.css", "mqtt.min.js", "LICENSE-mqtt.js.md"):
            with urllib.request.urlopen(f"{base}/{name}") as reply:
                assert reply.status == 200 and len(reply.read()) > 100
        for path in ("/../pyproject.toml", "/agent/config.py", "/viewer", "/%2e%2e/README.md"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + path)
            assert err.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/mqtt")  # the bridge is for the page's WebSocket only
        assert err.value.code == 403
    finally:
        server.close()


def test_the_bridge_carries_mqtt_both_ways_for_its_own_page_only(mosquitto):
    import paho.mqtt.client as mqtt
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    server = viewer_server(Config.model_validate({"mqtt": {"host": "127.0.0.1", "port": mosquitto.port}}), port=0).start()
    try:
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{server.port}/mqtt", origin="http://elsewhere.example", subprotocols=["mqtt"])
        assert refused.value.response.status_code == 403

        got = []
        page = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, transport="websockets")
        page.ws_set_options(path="/mqtt", headers={"Origin": f"http://127.0.0.1:{server.port}"})
        page.on_connect = lambda c, *_: c.subscribe("cam/#")
        page.on_message = lambda c, u, m: got.append(m.payload)
        page.connect("127.0.0.1", server.port)
        page.loop_start()
        camera = Subscriber(mosquitto.port, "page/#")
        try:
            assert wait_for(lambda: server.bridged == 1, 10)
            time.sleep(0.5)  # the page's SUBSCRIBE reaches the broker
            publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            publisher.connect("127.0.0.1", mosquitto.port)
            publisher.loop_start()
            frames = [np.random.default_rng(i).bytes(60_000) for i in range(45)]  # frame-sized payloads
            for frame in frames:
                publisher.publish("cam/frame", frame)
            assert wait_for(lambda: len(got) == len(frames), 20), f"{len(got)} of {len(frames)} arrived"
            assert got == frames, "in order and byte for byte"
            page.publish("page/hello", b"from the page").wait_for_publish(5)
            assert wait_for(lambda: camera.topic("hello"), 10)[0].payload == b"from the page"
            publisher.loop_stop()
            publisher.disconnect()
        finally:
            camera.close()
            page.loop_stop()
            page.disconnect()
    finally:
        server.close()


def test_the_bridge_closes_the_page_socket_when_the_broker_is_away():
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    server = viewer_server(Config.model_validate({"mqtt": {"host": "127.0.0.1", "port": free_port()}}), port=0).start()
    try:
        with connect(f"ws://127.0.0.1:{server.port}/mqtt", origin=f"http://127.0.0.1:{server.port}",
                     subprotocols=["mqtt"]) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=15)
        assert closed.value.rcvd.code == 1011 and "unreachable" in closed.value.rcvd.reason
        assert server.bridged == 0
    finally:
        server.close()


@pytest.fixture
def ws_broker(tmp_path):
    if MOSQUITTO is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (.ci/run does this)")
    ws_port = free_port()
    broker = Broker(tmp_path, extra=f"allow_anonymous true\nlistener {ws_port} 127.0.0.1\nprotocol websockets\n").start()
    broker.ws_port = ws_port
    yield broker
    broker.stop()


def near(pixels: np.ndarray, bgr, tolerance: float = 45.0) -> np.ndarray:
    return np.abs(pixels.astype(np.int16) - np.array(bgr, np.int16)).max(axis=-1) <= tolerance


def received_frames(sub: Subscriber) -> dict[int, bytes]:
    return {int(dict(m.properties.UserProperty)["frame_id"]): m.payload for m in sub.topic("frame")}


def test_viewer_in_chromium_shows_a_received_frame_with_its_faces(ws_broker, astronaut_clip, tmp_path):
    why = missing()
    if why:
        pytest.fail(why)  # a required test component: .ci/run installs it
    config = write_config(tmp_path / "agent.yaml", capture={"source": str(astronaut_clip), "loop": True},
                          mqtt={"host": "127.0.0.1", "port": ws_broker.port, "prefix": "lab", "camera": "door"},
                          stats={"interval_s": 1})
    sub = Subscriber(ws_broker.port, "lab/door/#")
    view_port, direct_port = free_port(), free_port()
    logs = open(tmp_path / "processes.log", "wb")
    agent = subprocess.Popen(agent_command("run", "--config", str(config)), env=agent_env(), stdout=logs, stderr=logs)
    viewer = subprocess.Popen(agent_command("view", "--config", str(config), "--port", str(view_port)),
                              env=agent_env(), stdout=logs, stderr=logs)
    direct = subprocess.Popen(agent_command("view", "--config", str(config), "--port", str(direct_port),
                                            "--websocket", f"ws://127.0.0.1:{ws_broker.ws_port}"),
                              env=agent_env(), stdout=logs, stderr=logs)
    browser = None
    try:
        assert wait_for(lambda: _serving(view_port) and _serving(direct_port), 30), \
            (tmp_path / "processes.log").read_text()[-2000:]
        browser = Browser()
        # Straight to mosquitto's own WebSockets listener.
        browser.open(f"http://127.0.0.1:{direct_port}/")
        assert browser.wait("Number(document.body.dataset.framesShown) >= 1", 120), browser.text("connection")
        assert browser.text("connection").startswith("broker: connected (MQTT 5)")
        assert browser.text("availability") == "camera: online"

        # Through the viewer's bridge to the broker's MQTT port: the default.
        browser.open(f"http://127.0.0.1:{view_port}/")
        assert browser.wait("Number(document.body.dataset.framesShown) >= 10", 120), \
            f"frames shown: {browser.text('caption')!r}; {(tmp_path / 'processes.log').read_text()[-2000:]}"
        assert browser.text("availability") == "camera: online"
        assert browser.text("connection").startswith("broker: connected (MQTT 5)")
        assert browser.text("camera") == "door"
        assert browser.wait("document.getElementById('stats').textContent.includes('fps out')", 20)

        # Stop the camera: the page keeps its last frame, which is then compared with what was published.
        assert terminate(agent) == 0
        assert browser.wait("document.getElementById('availability').textContent === 'camera: offline'", 30)
        assert browser.wait("!window.anoncamViewer.drawing && window.anoncamViewer.next === null", 10)
        frame_id = int(browser.run("return document.getElementById('frame').dataset.frameId;"))
        meta = browser.run("return window.anoncamViewer.meta;")
        shot = browser.screenshot()
        cv2.imwrite(str(tmp_path / "viewer.png"), shot)
        x, y, w, h = browser.rect("frame")
        faces_label = browser.run("return document.querySelector('#faces .emotion-label').textContent;")
        tx, ty, tw, th = browser.rect("timeline")
    finally:
        if browser is not None:
            browser.close()
        terminate(agent)
        terminate(viewer)
        terminate(direct)
        sub.close()
        logs.close()

    frames = received_frames(sub)
    assert frame_id in frames, "the page shows a frame the camera published"
    published = decode_jpeg(frames[frame_id])
    assert meta["frame_id"] == frame_id and (meta["width"], meta["height"]) == published.shape[1::-1]
    assert w > 300 and abs(h / w - published.shape[0] / published.shape[1]) < 0.01, "the frame keeps its aspect ratio"
    shown = shot[y:y + h, x:x + w].astype(np.int16)
    expected = cv2.resize(published, (w, h), interpolation=cv2.INTER_AREA).astype(np.int16)
    diff = np.abs(shown - expected).max(axis=-1)
    # Face boxes and labels are drawn over the frame: they are the only large differences.
    assert np.median(diff) < 8 and (diff > 60).mean() < 0.06, (np.median(diff), (diff > 60).mean())

    # The face box is drawn where the metadata puts it, in the "replaced" colour.
    assert meta["faces"], "the clip's face is in the metadata"
    face = meta["faces"][0]
    scale = w / published.shape[1]
    x0, y0, x1, y1 = (v * scale for v in face["box"])
    rows = shown[int(y0 + 0.2 * (y1 - y0)):int(y1 - 0.1 * (y1 - y0))]
    edge = max(near(rows[:, c], REPLACED_BGR).mean() for c in range(max(0, int(x0) - 3), int(x0) + 4))
    assert edge > 0.9, f"the face box's left edge: {edge:.2f} of its pixels"
    assert faces_label == f"face #{face['track_id']}: {face['emotion']['label']}"

    # The timeline has drawn the shown face's emotion as a line.
    timeline = shot[ty:ty + th, tx:tx + tw]
    assert near(timeline, EMOTION_BGR[face["emotion"]["label"]], 20).sum() > 10  # a second or two of a 60 s axis


def _serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config.json", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        time.sleep(0.1)
        return False


def test_viewer_asks_for_the_password_and_keeps_it_out_of_the_page(tmp_path):
    why = missing()
    if why:
        pytest.fail(why)
    if MOSQUITTO is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (.ci/run does this)")
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    for user, password in (("viewer", "look-only"), ("cam", "cam-pw")):
        subprocess.run(["mosquitto_passwd", "-b", *([] if passwd.exists() else ["-c"]), str(passwd), user, password],
                       check=True, capture_output=True)
    passwd.chmod(0o600)
    acl.write_text("user viewer\ntopic read lab/door/#\nuser cam\ntopic readwrite lab/door/#\n")
    broker = Broker(tmp_path, extra=f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n").start()
    server = viewer_server(Config.model_validate({"mqtt": {"host": "127.0.0.1", "port": broker.port, "prefix": "lab",
                                                           "camera": "door", "username": "viewer"}}), port=0).start()
    browser = Browser()
    try:
        browser.open(server.url)
        assert browser.wait("document.getElementById('connection').textContent === 'broker: enter the password'", 20)
        assert browser.run("return !document.getElementById('settings').hidden;")
        assert browser.run("return document.getElementById('username').value;") == "viewer"
        assert "look-only" not in browser.run("return document.documentElement.outerHTML;")

        def connect_with(password):
            field = browser.driver.find_element("id", "password")
            field.clear()
            field.send_keys(password)
            browser.driver.find_element("css selector", "#settings button[type=submit]").click()

        connect_with("wrong")
        assert browser.wait("/Bad User Name or Password|Not authorized/i.test("
                            "document.getElementById('connection').textContent)", 20), browser.text("connection")
        connect_with("look-only")
        assert browser.wait("document.getElementById('connection').textContent.startsWith('broker: connected')", 20), \
            browser.text("connection")
        import paho.mqtt.client as mqtt

        camera = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        camera.username_pw_set("cam", "cam-pw")
        camera.connect("127.0.0.1", broker.port)
        camera.loop_start()
        camera.publish("lab/door/availability", b"online", qos=1, retain=True).wait_for_publish(5)
        assert browser.wait("document.getElementById('availability').textContent === 'camera: online'", 20)
        camera.loop_stop()
        camera.disconnect()
        assert "look-only" not in browser.run("return location.href;")
    finally:
        browser.close()
        server.close()
        broker.stop()


def test_demo_view_plays_to_the_viewer_through_a_3_1_1_broker(tmp_path):
    """``anoncam demo --view``: the embedded amqtt broker speaks MQTT 3.1.1 only, so the page falls back."""
    why = missing()
    if why:
        pytest.fail(why)
    port = free_port()
    log = tmp_path / "demo.log"
    demo = subprocess.Popen(agent_command("demo", "--view", str(port)), env=agent_env(),
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    browser = None
    try:
        assert wait_for(lambda: _serving(port), 60), log.read_text()[-2000:]
        browser = Browser()
        browser.open(f"http://127.0.0.1:{port}/")
        assert browser.wait("Number(document.body.dataset.framesShown) >= 5", 120), \
            (browser.text("connection"), log.read_text()[-2000:])
        assert browser.text("connection") == "broker: connected (MQTT 3.1.1)"
        assert browser.text("availability") == "camera: online"
        assert browser.run("return window.anoncamViewer.meta.faces.length;") >= 1
    finally:
        if browser is not None:
            browser.close()
        assert terminate(demo, signal.SIGINT) == 0, log.read_text()[-2000:]
    text = log.read_text()
    assert "the live viewer is on http://" in text and " 0 viewer connection(s)" not in text, text[-2000:]
    assert "websockets" not in text, "the server library's own log lines stay quiet"
