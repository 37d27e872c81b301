"""Home Assistant MQTT discovery (mqtt.discovery): the documents, against a real mosquitto, with the
value templates rendered by Jinja2 (Home Assistant's template engine, sandboxed as it runs them) on
metadata the agent really published."""

from __future__ import annotations

import json
import re
import threading
from importlib import resources

import jsonschema
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from daemon_helpers import Broker, Subscriber, decode_jpeg, retained, wait_for
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

import agent
from agent.composition.guard import mask_everything
from agent.config import Config
from agent.expression.metadata import frame_message
from agent.io import discovery
from agent.io.publish import Publisher
from agent.io.retry import Backoff
from agent.service.agent import Agent, Parts

FAST = Backoff(0.1, 0.3)
META_SCHEMA = json.loads(resources.files("agent").joinpath("schema/anoncam-metadata-v1.json").read_text())
CONFIG_TOPIC = re.compile(r"^homeassistant/(camera|sensor)/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)/config$")
# What Home Assistant's docs mark Required, per component (camera.mqtt, sensor.mqtt).
REQUIRED = {"camera": ("topic",), "sensor": ("state_topic",)}
# Home Assistant's abbreviations of the keys used here: the documents spell them out.
ABBREVIATIONS = {"avty_t", "pl_avail", "pl_not_avail", "dev", "ids", "mf", "mdl", "sw", "uniq_id", "stat_t",
                 "val_tpl", "unit_of_meas", "stat_cla", "t", "o", "ic"}
EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
JINJA = ImmutableSandboxedEnvironment(undefined=StrictUndefined)  # an undefined name fails instead of rendering ""


def render(template: str, payload: bytes) -> str:
    return JINJA.from_string(template).render(value_json=json.loads(payload)).strip()


def mqtt_cfg(port, **kw):
    return Config.model_validate({"mqtt": {"host": "127.0.0.1", "port": port, "prefix": "t", "camera": "c",
                                           "discovery": True, **kw}}).mqtt


class Wire:
    """Every message on exactly ``topics``; constructed once the broker has acknowledged the subscription."""

    def __init__(self, port: int, *topics: str):
        self.messages: list = []
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, msg: self.messages.append(msg)
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10), "no SUBACK"

    def on(self, topic: str) -> list:
        return [m for m in self.messages if m.topic == topic]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def configs_of(sub) -> dict[str, dict]:
    return {m.topic: json.loads(m.payload) for m in sub.messages if CONFIG_TOPIC.match(m.topic)}


def face(box, label="happy", **extra) -> dict:
    """A face item shaped like the schema's (blendshapes and head pose left out as unavailable)."""
    scores = {e: 0.94 if e == label else 0.01 for e in EMOTIONS}
    emotion = None if label is None else {"label": label, "scores": scores}
    missing = [k for k, v in (("emotion", emotion), ("blendshapes", None), ("head_pose", None)) if v is None]
    return {"box": box, "track_id": 1, "emotion": emotion, "blendshapes": None, "head_pose": None, "missing": missing,
            "held": False, "replaced": True, **extra}


# -- the pure builder -------------------------------------------------------------------------------

def test_documents_name_the_agents_topics_in_home_assistants_keys():
    cfg = Config.model_validate({"mqtt": {"prefix": "home/cams", "camera": "lab door", "discovery": True}}).mqtt
    topics = {k: f"home/cams/lab door/{k}" for k in ("frame", "meta", "availability")}
    docs = dict(discovery.configs(cfg, topics))
    assert sorted(docs) == ["homeassistant/camera/anoncam_lab_door/frame/config",
                            "homeassistant/sensor/anoncam_lab_door/emotion/config",
                            "homeassistant/sensor/anoncam_lab_door/faces/config"]
    cam = docs["homeassistant/camera/anoncam_lab_door/frame/config"]
    faces = docs["homeassistant/sensor/anoncam_lab_door/faces/config"]
    emotion = docs["homeassistant/sensor/anoncam_lab_door/emotion/config"]
    assert cam["topic"] == topics["frame"] and "image_encoding" not in cam  # raw JPEG bytes
    assert faces["state_topic"] == emotion["state_topic"] == topics["meta"]
    assert faces["value_template"] == "{{ value_json.faces | length }}"
    assert (faces["unit_of_measurement"], faces["state_class"]) == ("faces", "measurement")
    assert len({d["unique_id"] for d in docs.values()}) == 3
    for doc in docs.values():
        assert not ABBREVIATIONS & set(doc) and not ABBREVIATIONS & set(doc["device"])
        assert (doc["availability_topic"], doc["payload_available"], doc["payload_not_available"]) == (
            topics["availability"], "online", "offline")
        assert doc["device"] == {"identifiers": ["anoncam_lab_door"], "name": "anoncam lab door",
                                 "manufacturer": "anoncam", "model": "anonymizing camera agent",
                                 "sw_version": agent.__version__}
    # Metadata only: the camera entity is removed (an empty retained document), the sensors stay.
    msgs = dict(discovery.messages(cfg.model_copy(update={"publish_frames": False}), topics))
    assert msgs["homeassistant/camera/anoncam_lab_door/frame/config"] == b""
    assert json.loads(msgs["homeassistant/sensor/anoncam_lab_door/faces/config"]) == faces


def test_templates_on_every_shape_of_metadata():
    def both(faces):
        payload = json.dumps({"schema": "anoncam.meta/1", "faces": faces}).encode()
        return render(discovery.FACES_TEMPLATE, payload), render(discovery.EMOTION_TEMPLATE, payload)

    assert both([face([0, 0, 10, 10], "sad"), face([20, 20, 60, 70], "happy"), face([5, 5, 30, 30], "fear")]) == (
        "3", "happy")
    assert both([]) == ("0", "none")
    assert both([face([0, 0, 100, 100], None), face([0, 0, 10, 10], "sad")]) == ("2", "none")  # largest: no emotion
    no_expression = {"box": [0, 0, 50, 50], "track_id": 3, "blendshapes": None, "head_pose": None, "held": False}
    assert both([no_expression]) == ("1", "none")  # expression.enabled: false: no emotion key at all


# -- against mosquitto ------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_discovery_is_retained_and_points_at_the_real_topics(mosquitto, protocol):
    pub = Publisher(mqtt_cfg(mosquitto.port), backoff=FAST, protocol=protocol).start()
    try:
        assert wait_for(lambda: pub.connected and pub.discovery.announced == 1)
        sub = Subscriber(mosquitto.port, "homeassistant/#")  # after the fact: what Home Assistant finds at start
        try:
            assert wait_for(lambda: len(configs_of(sub)) == 3)
            assert all(m.retain for m in sub.messages)
            docs = configs_of(sub)
        finally:
            sub.close()
        for topic, doc in docs.items():
            component, node, _ = CONFIG_TOPIC.match(topic).groups()
            assert node == "anoncam_c"
            assert all(doc.get(key) for key in REQUIRED[component]), (topic, doc)
            assert doc["availability_topic"] == pub.topics["availability"] == "t/c/availability"
            assert doc["device"]["identifiers"] == ["anoncam_c"]
        assert len({d["unique_id"] for d in docs.values()}) == 3
        assert retained(mosquitto.port, pub.topics["availability"]) == b"online"
        by_component = {CONFIG_TOPIC.match(t).group(3): d for t, d in docs.items()}
        camera, faces, emotion = by_component["frame"], by_component["faces"], by_component["emotion"]

        # The entities' topics are where the agent really publishes: subscribe to what the documents name.
        wire = Wire(mosquitto.port, camera["topic"], faces["state_topic"])
        metas = [frame_message([face([200, 80, 340, 210], "happy"), face([10, 10, 40, 50], "sad")], camera="c",
                               frame_id=1, timestamp=1.0, shape=(480, 640)),
                 frame_message([], camera="c", frame_id=2, timestamp=2.0, shape=(480, 640), status="masked",
                               reason="over_budget"),
                 frame_message([face([10, 10, 90, 90], None)], camera="c", frame_id=3, timestamp=3.0, shape=(480, 640))]
        try:
            for i, meta in enumerate(metas, 1):
                jsonschema.validate(meta, META_SCHEMA)
                pub.publish(mask_everything(np.full((48, 64, 3), 50, np.uint8)), meta, i, float(i))
            assert wait_for(lambda: len(wire.on(faces["state_topic"])) == 3 and len(wire.on(camera["topic"])) == 3)
            assert decode_jpeg(wire.on(camera["topic"])[0].payload) is not None
            got = [(render(faces["value_template"], m.payload), render(emotion["value_template"], m.payload))
                   for m in wire.on(emotion["state_topic"])]
        finally:
            wire.close()
        assert got == [("2", "happy"), ("0", "none"), ("1", "none")]
    finally:
        pub.close(flush_s=1)


def test_home_assistant_birth_brings_discovery_again(mosquitto):
    sub = Subscriber(mosquitto.port, "homeassistant/#")
    pub = Publisher(mqtt_cfg(mosquitto.port), backoff=FAST).start()
    try:
        count = lambda: sum(bool(CONFIG_TOPIC.match(m.topic)) for m in sub.messages)  # noqa: E731
        assert wait_for(lambda: count() == 3)
        ha = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        ha.connect("127.0.0.1", mosquitto.port)
        ha.loop_start()
        try:
            ha.publish("homeassistant/status", "offline", qos=1).wait_for_publish(5)
            ha.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)  # Home Assistant's birth
            assert wait_for(lambda: count() == 6)
            assert pub.discovery.announced == 2
            ha.publish("homeassistant/status", "offline", qos=1).wait_for_publish(5)
            assert not wait_for(lambda: count() > 6, 1.0)  # only "online" triggers it
        finally:
            ha.loop_stop()
            ha.disconnect()
    finally:
        pub.close(flush_s=1)
        sub.close()


def test_without_discovery_nothing_goes_to_home_assistant(mosquitto):
    sub = Wire(mosquitto.port, "#")
    pub = Publisher(mqtt_cfg(mosquitto.port, discovery=False), backoff=FAST).start()
    try:
        assert pub.discovery is None
        assert wait_for(lambda: pub.connected)
        sub.client.publish("homeassistant/status", "online", qos=1)
        pub.publish(mask_everything(np.full((48, 64, 3), 50, np.uint8)), {"schema": "anoncam.meta/1", "faces": []},
                    1, 1.0)
        assert wait_for(lambda: sub.on("t/c/meta") and sub.on("t/c/frame"))
        ours = lambda: [m.topic for m in sub.messages  # noqa: E731
                        if m.topic.startswith("homeassistant/") and m.topic != "homeassistant/status"]
        assert not wait_for(ours, 1.0), ours()
    finally:
        pub.close(flush_s=1)
        sub.close()


def test_a_broker_acl_without_homeassistant_is_named(tmp_path):
    """Frames still flow; the error says which ACL lines are missing."""
    (tmp_path / "acl").write_text("topic readwrite t/#\n")
    broker = Broker(tmp_path, extra=f"allow_anonymous true\nacl_file {tmp_path / 'acl'}\n").start()
    sub = Wire(broker.port, "t/#")
    pub = Publisher(mqtt_cfg(broker.port), backoff=FAST, protocol="5").start()
    try:
        assert wait_for(lambda: pub.last_error and "homeassistant/#" in pub.last_error), pub.last_error
        assert not pub.refused
        pub.publish(mask_everything(np.full((48, 64, 3), 50, np.uint8)), {"schema": "anoncam.meta/1", "faces": []},
                    1, 1.0)
        assert wait_for(lambda: sub.on("t/c/meta"))
    finally:
        pub.close(flush_s=1)
        sub.close()
        broker.stop()


def test_real_agent_metadata_renders(mosquitto, astronaut_clip):
    """The agent on the astronaut clip, expression on: the sensors read what it published."""
    cfg = Config.model_validate({
        "capture": {"source": str(astronaut_clip)}, "policy": {"frame_budget_ms": 60000},
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "prefix": "t", "camera": "astro", "discovery": True}})
    sub = Wire(mosquitto.port, "#")
    try:
        parts = Parts(publisher=lambda cfg, broker: Publisher(cfg.mqtt, *broker, backoff=FAST))
        assert Agent(cfg, parts=parts, realtime=False).run(max_frames=4) == 0
        assert wait_for(lambda: len(sub.on("t/astro/meta")) >= 4 and len(configs_of(sub)) == 3)
        docs = {t.split("/")[3]: d for t, d in configs_of(sub).items()}
        payloads = [m.payload for m in sub.on(docs["faces"]["state_topic"])]
    finally:
        sub.close()
    metas = [json.loads(p) for p in payloads]
    assert len(metas) == 4 and any(doc["faces"] for doc in metas)
    area = lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1])  # noqa: E731
    labels = []
    for payload, doc in zip(payloads, metas):
        jsonschema.validate(doc, META_SCHEMA)
        assert render(docs["faces"]["value_template"], payload) == str(len(doc["faces"]))
        expected = (max(doc["faces"], key=area)["emotion"] or {"label": "none"})["label"] if doc["faces"] else "none"
        labels.append(render(docs["emotion"]["value_template"], payload))
        assert labels[-1] == expected
    assert set(labels) - {"none"}, labels  # the astronaut's emotion, read by the sensor
