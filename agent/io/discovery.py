"""Home Assistant MQTT discovery for one camera (``mqtt.discovery``), as Frigate and zigbee2mqtt do it.

Home Assistant creates entities from JSON documents published, retained, on
``homeassistant/<component>/<node_id>/<object_id>/config``
(https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery). A camera announces one device,
node id ``anoncam_<camera>``, with three entities on the topics the agent already publishes:

- ``camera/anoncam_<camera>/frame``: the anonymized frames (``<prefix>/<camera>/frame``, raw JPEG);
- ``sensor/anoncam_<camera>/faces``: the number of faces in the latest frame (from ``meta``);
- ``sensor/anoncam_<camera>/emotion``: the emotion label of the largest face; ``none`` when there is
  no face or it has no emotion (``expression.enabled: false``, or a face that could not be aligned).

Each is available while ``<prefix>/<camera>/availability`` says ``online``. Keys are Home Assistant's
full names, not its abbreviations. Home Assistant announces a (re)start on ``homeassistant/status``
(its birth message, ``online``); :class:`Announcer` publishes the documents again then.

The builders are pure functions of the config; :class:`Announcer` is the part that touches a paho
client, driven by :class:`agent.io.publish.Publisher`'s network thread.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Callable

from agent import __version__
from agent.config import MqttConfig

log = logging.getLogger(__name__)

DISCOVERY_PREFIX = "homeassistant"
BIRTH_TOPIC = f"{DISCOVERY_PREFIX}/status"
BIRTH_PAYLOAD = b"online"

FACES_TEMPLATE = "{{ value_json.faces | length }}"
# The label of the face with the largest box; "none" without faces. ``emotion`` is null for a face that
# could not be aligned and absent with expression.enabled: false, so it is read with .get().
EMOTION_TEMPLATE = (
    "{%- set ns = namespace(area=-1, label='none') -%}"
    "{%- for face in value_json.faces -%}"
    "{%- set area = (face.box[2] - face.box[0]) * (face.box[3] - face.box[1]) -%}"
    "{%- if area > ns.area -%}"
    "{%- set emotion = face.get('emotion') -%}"
    "{%- set ns.area = area -%}"
    "{%- set ns.label = emotion.label if emotion else 'none' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ ns.label }}"
)


def node_id(camera: str) -> str:
    """``anoncam_<camera>``, with what Home Assistant does not allow in a topic id (``[A-Za-z0-9_-]``) as ``_``."""
    return "anoncam_" + re.sub(r"[^A-Za-z0-9_-]", "_", camera)


def device(cfg: MqttConfig) -> dict:
    return {"identifiers": [node_id(cfg.camera)], "name": f"anoncam {cfg.camera}", "manufacturer": "anoncam",
            "model": "anonymizing camera agent", "sw_version": __version__}


def configs(cfg: MqttConfig, topics: dict[str, str]) -> list[tuple[str, dict | None]]:
    """``(discovery topic, document)`` for each entity; ``topics`` are the agent's (frame, meta, availability).

    With ``publish_frames: false`` the camera's document is None: an empty retained message, which
    removes a camera entity announced before."""
    node = node_id(cfg.camera)
    common = {"availability_topic": topics["availability"], "payload_available": "online",
              "payload_not_available": "offline", "device": device(cfg),
              "origin": {"name": "anoncam", "sw_version": __version__}}
    camera = {"name": "Anonymized frame", "unique_id": f"{node}_frame", "topic": topics["frame"],
              "icon": "mdi:cctv", **common}
    faces = {"name": "Faces", "unique_id": f"{node}_faces", "state_topic": topics["meta"],
             "value_template": FACES_TEMPLATE, "unit_of_measurement": "faces", "state_class": "measurement",
             "icon": "mdi:face-recognition", **common}
    emotion = {"name": "Emotion", "unique_id": f"{node}_emotion", "state_topic": topics["meta"],
               "value_template": EMOTION_TEMPLATE, "icon": "mdi:emoticon-outline", **common}
    base = f"{DISCOVERY_PREFIX}/{{}}/{node}/{{}}/config"
    return [(base.format("camera", "frame"), camera if cfg.publish_frames else None),
            (base.format("sensor", "faces"), faces),
            (base.format("sensor", "emotion"), emotion)]


def messages(cfg: MqttConfig, topics: dict[str, str]) -> list[tuple[str, bytes]]:
    """:func:`configs` as MQTT payloads."""
    return [(topic, b"" if doc is None else json.dumps(doc, separators=(",", ":")).encode())
            for topic, doc in configs(cfg, topics)]


class Announcer:
    """Publishes the discovery messages (retained, QoS 1) on a connected paho client, and again on
    each Home Assistant birth message. ``properties()``: the MQTT 5 properties of a JSON message, or None."""

    def __init__(self, cfg: MqttConfig, topics: dict[str, str], properties: Callable[[], object] = lambda: None):
        self.messages = messages(cfg, topics)
        self.properties = properties
        self.user = cfg.username or "(anonymous)"
        self.announced = 0  # how many times the whole set was published
        self._mids: set[int] = set()

    def connected(self, client) -> None:
        client.subscribe(BIRTH_TOPIC, qos=1)
        self.announce(client)

    def announce(self, client) -> None:
        self._mids = {client.publish(topic, payload, qos=1, retain=True, properties=self.properties()).mid
                      for topic, payload in self.messages}
        self.announced += 1

    def on_message(self, client, userdata, msg) -> None:
        # A retained "online" is an old birth (sent on subscribing): the set went out at connect already.
        if msg.topic == BIRTH_TOPIC and msg.payload == BIRTH_PAYLOAD and not msg.retain:
            log.info("Home Assistant started: publishing MQTT discovery again")
            self.announce(client)

    def refusal(self, mid: int, reason_code) -> str | None:
        """What to say when the broker refused one of the discovery messages (MQTT 5 PUBACK), else None."""
        if mid not in self._mids or not getattr(reason_code, "is_failure", False):
            return None
        self._mids.clear()  # once per announcement
        return (f"broker refused Home Assistant discovery ({reason_code}); allow user {self.user} to write "
                f"{DISCOVERY_PREFIX}/# and read {BIRTH_TOPIC} in the broker's ACL, or set mqtt.discovery: false")

    def on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [rc for rc in reason_codes if getattr(rc, "is_failure", False)]
        if failed:
            log.warning("MQTT: broker refused subscribing to %s (%s): discovery is not sent again when Home "
                        "Assistant restarts", BIRTH_TOPIC, failed[0])
