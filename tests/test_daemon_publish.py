"""The MQTT publisher against real brokers: TLS + password, MQTT 5 -> 3.1.1 fallback (amqtt), the bounded
buffer across a network outage, and the type guard. No face models needed: frames are mask_everything()."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading

import numpy as np
import pytest
from daemon_helpers import (
    Broker,
    Subscriber,
    TcpProxy,
    decode_jpeg,
    free_port,
    retained,
    wait_for,
)

from agent.composition.guard import mask_everything
from agent.config import Config, MqttConfig
from agent.errors import ConfigError
from agent.io.publish import Publisher
from agent.io.retry import Backoff

FAST = Backoff(0.1, 0.3)  # broker retries for tests: the service's start at 0.5 s and reach 30 s


def mqtt_cfg(port, **kw) -> MqttConfig:
    return Config.model_validate({"mqtt": {"host": "127.0.0.1", "port": port, "prefix": "t", "camera": "c", **kw}}).mqtt


def frame(v=50):
    return mask_everything(np.full((48, 64, 3), v, np.uint8))


def test_only_anonymized_frames_can_be_published(mosquitto):
    pub = Publisher(mqtt_cfg(mosquitto.port), backoff=FAST)
    with pytest.raises(TypeError):
        pub.publish(np.zeros((48, 64, 3), np.uint8), {}, 1, 0.0)
    assert pub.buffered == 0


def test_outage_keeps_newest_frames_and_never_blocks(mosquitto):
    """Through a proxy that drops out: the buffer keeps the newest N, drops the oldest, delivers after reconnect."""
    proxy = TcpProxy(mosquitto.port)
    sub = Subscriber(mosquitto.port, "t/#")
    pub = Publisher(mqtt_cfg(proxy.port, buffer_frames=10), backoff=FAST, keepalive=5).start()
    try:
        assert wait_for(lambda: pub.connected)
        pub.publish(frame(), {"n": 0}, 0, 0.0)
        assert wait_for(lambda: len(sub.topic("meta")) == 1)
        proxy.down()
        assert wait_for(lambda: not pub.connected)
        for i in range(1, 51):
            pub.publish(frame(i), {"n": i}, i, float(i))
        assert pub.buffered == 10 and pub.counters["buffer_dropped"] == 40
        proxy.up()
        assert wait_for(lambda: len(sub.topic("meta")) == 11, 20)
        assert [json.loads(m.payload)["n"] for m in sub.topic("meta")] == [0] + list(range(41, 51))
        ids = [int(dict(m.properties.UserProperty)["frame_id"]) for m in sub.topic("frame")]
        assert ids == [0] + list(range(41, 51))
        assert pub.counters["connects"] >= 2
    finally:
        pub.close()
        sub.close()
        proxy.down()


def _certs(d):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI."""
    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "1", "-subj", "/CN=anoncam test CA")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    (d / "client.ext").write_text("basicConstraints=CA:FALSE\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "camera-1")):
        ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
    return d


def test_tls_client_certificate_and_password_file(tmp_path):
    d = _certs(tmp_path)
    passwd = d / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "cam", "pa55-word"], check=True, capture_output=True)
    passwd.chmod(0o600)
    extra = (f"cafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\nkeyfile {d / 'server.key'}\n"
             f"require_certificate true\nallow_anonymous false\npassword_file {passwd}\n")
    broker = Broker(tmp_path, extra=extra).start()
    (d / "pw").write_text("pa55-word\n")
    tls = {"enabled": True, "ca_file": str(d / "ca.pem"), "cert_file": str(d / "client.pem"), "key_file": str(d / "client.key")}
    sub_kw = {"tls": {"ca_certs": str(d / "ca.pem"), "certfile": str(d / "client.pem"), "keyfile": str(d / "client.key")},
              "auth": ("cam", "pa55-word")}
    sub = Subscriber(broker.port, "t/#", **sub_kw)
    pub = Publisher(mqtt_cfg(broker.port, tls=tls, username="cam", password_file=str(d / "pw")), backoff=FAST).start()
    (d / "pw2").write_text("nope")
    wrong = Publisher(mqtt_cfg(broker.port, tls=tls, username="cam", password_file=str(d / "pw2"), camera="x"), backoff=FAST).start()
    no_cert = Publisher(mqtt_cfg(broker.port, tls={"enabled": True, "ca_file": str(d / "ca.pem")}, username="cam",
                                 password_file=str(d / "pw"), camera="y"), backoff=FAST).start()
    try:
        assert wait_for(lambda: pub.connected, 20), pub.last_error
        pub.publish(frame(77), {"ok": True}, 5, 1.0)
        assert wait_for(lambda: sub.topic("frame") and sub.topic("meta"), 20)
        assert decode_jpeg(sub.topic("frame")[0].payload)[0, 0, 0] == 128  # grey mask, through TLS
        assert wait_for(lambda: wrong.last_error and no_cert.last_error, 20)
        assert not wrong.connected and "refused" in wrong.last_error
        assert not no_cert.connected
    finally:
        for p in (pub, wrong, no_cert):
            p.close(flush_s=1)
        sub.close()
        broker.stop()
    with pytest.raises(ConfigError, match="cannot load certificates"):
        Publisher(mqtt_cfg(1, tls={"enabled": True, "ca_file": str(d / "missing.pem")}), backoff=FAST)


def test_mqtt5_refused_by_amqtt_falls_back_to_311():
    from amqtt.broker import Broker as AmqttBroker

    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    async def serve():
        broker = AmqttBroker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                              "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
                              "topic-check": {"enabled": False}}, loop=loop)
        await broker.start()
        holder["broker"] = broker
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(20)
    import paho.mqtt.client as mqtt

    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    sub.on_message = lambda c, u, m: got.append(m)
    sub.on_connect = lambda c, *a: c.subscribe("t/#")
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    pub = Publisher(mqtt_cfg(port), backoff=FAST).start()
    try:
        assert wait_for(lambda: pub.connected, 20), pub.last_error
        assert pub.protocol == "3.1.1"
        pub.publish(frame(), {"v": 1}, 1, 1.0)
        assert wait_for(lambda: any(m.topic == "t/c/meta" for m in got), 20)
        assert any(m.topic == "t/c/frame" and decode_jpeg(m.payload) is not None for m in got)
    finally:
        pub.close(flush_s=1)
        sub.disconnect()
        sub.loop_stop()
        asyncio.run_coroutine_threadsafe(holder["broker"].shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_clean_close_publishes_retained_offline_and_pending_stats(mosquitto):
    pub = Publisher(mqtt_cfg(mosquitto.port), backoff=FAST).start()
    assert wait_for(lambda: pub.connected)
    assert retained(mosquitto.port, "t/c/availability") == b"online"
    sub = Subscriber(mosquitto.port, "t/#")
    assert wait_for(lambda: sub.topic("availability"))  # subscribed (the retained online came), so no stats are missed
    pub.publish_stats({"fps_in": 1})
    pub.publish_stats({"fps_in": 2})  # only the newest stats matter
    pub.close()
    assert wait_for(lambda: sub.topic("availability") and sub.topic("availability")[-1].payload == b"offline")
    stats = [json.loads(m.payload) for m in sub.topic("stats")]
    sub.close()
    assert stats == [{"fps_in": 2}]
    assert retained(mosquitto.port, "t/c/availability") == b"offline"


def test_a_certificate_from_another_ca_is_a_clear_error_and_retried(tmp_path):
    d = _certs(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _certs(other)  # a second CA, which did not sign the broker's certificate
    extra = f"cafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\nkeyfile {d / 'server.key'}\nallow_anonymous true\n"
    broker = Broker(tmp_path, extra=extra).start()
    pub = Publisher(mqtt_cfg(broker.port, tls={"enabled": True, "ca_file": str(other / "ca.pem")}), backoff=FAST).start()
    try:
        assert wait_for(lambda: pub.counters["connect_failures"] >= 2, 20), "retried with backoff"
        assert not pub.connected and "is not trusted" in pub.last_error and "mqtt.tls.ca_file" in pub.last_error
    finally:
        pub.close(flush_s=1)
        broker.stop()


def test_a_broker_acl_refusing_the_topics_is_named(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("user cam\ntopic read t/#\n")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "cam", "pw"], check=True, capture_output=True)
    passwd.chmod(0o600)
    broker = Broker(tmp_path, extra=f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n").start()
    (tmp_path / "pw").write_text("pw\n")
    pub = Publisher(mqtt_cfg(broker.port, username="cam", password_file=str(tmp_path / "pw")), backoff=FAST).start()
    try:
        assert wait_for(lambda: pub.refused, 20), pub.last_error
        assert "refused publishing to t/c/availability" in pub.last_error and "ACL" in pub.last_error
    finally:
        pub.close(flush_s=1)
        broker.stop()
