"""The daemon's config: the shipped default file, and clear refusals of bad configs (no models needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from agent.commands.cli import main
from agent.config import Config, load_config, parse_broker
from agent.errors import ConfigError
from agent.io.publish import read_password

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "config" / "agent.yaml"


def _keys(model: type[BaseModel], prefix="") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _keys(ann, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def _yaml_keys(data: dict, prefix="") -> set[str]:
    """Dotted keys of the YAML; a mapping that is a value, not a section, is one key."""
    sections = {k.rsplit(".", 1)[0] for k in _keys(Config) if "." in k}
    out = set()
    for k, v in data.items():
        if isinstance(v, dict) and prefix + k in sections:
            out |= _yaml_keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


def test_default_file_documents_every_key_with_its_default():
    data = yaml.safe_load(DEFAULT.read_text())
    assert _yaml_keys(data) == _keys(Config), "config/agent.yaml and agent/config.py disagree on the keys"
    assert load_config(DEFAULT) == Config(), "config/agent.yaml must show the built-in defaults"


def test_the_user_config_stays_small():
    # What belongs to a model lives in models/manifest.yaml; a camera's config is what its owner sets.
    assert len(_keys(Config)) <= 35, sorted(_keys(Config))


BAD = [
    ("mqtt:\n  hots: x\n", "mqtt.hots: unknown key"),
    ("mqtt:\n  port: 70000\n", "mqtt.port"),
    ("mqtt:\n  username: u\n  password: hunter2\n", "plain-text 'password' is not accepted"),
    ("mqtt:\n  keepalive: 30\n", "mqtt: Value error, 'keepalive' is no longer a setting (the agent uses 30 s)"),
    ("mqtt:\n  camera: 'a/#'\n", "mqtt.camera"),
    ("mqtt:\n  camera: lab/door\n", "mqtt.camera: Value error, must be one MQTT topic level"),
    ("inference:\n  device: banana\n", "inference.device"),
    ("anonymizer:\n  generator_by_emotion: {}\n", "anonymizer.generator_by_emotion: unknown key"),
    ("experimental:\n  own_landmarks: sometimes\n", "experimental.own_landmarks"),
    ("mqtt:\n  tls:\n    enabled: true\n    cert_file: /x.pem\n", "set both cert_file and key_file"),
    ("policy:\n  on_failure: explode\n", "policy.on_failure"),
    ("policy:\n  frame_budget_ms: -5\n", "policy.frame_budget_ms"),
    ("capture:\n  fps: fast\n", "capture.fps"),
    ("- just\n- a list\n", "must hold a mapping"),
    ("mqtt: [unclosed\n", "not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1] for b in BAD])
def test_bad_config_is_refused_with_the_key_named(tmp_path, capsys, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert main(["run", "--config", str(cfg), "--source", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "anoncam: error:" in err and expected in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


def test_bad_flags_and_sources_are_refused_before_models_load(tmp_path, capsys, astronaut_clip):
    not_video = tmp_path / "notes.avi"
    not_video.write_bytes(b"this is not a video" * 100)
    cases = [
        (["run", "--source", str(tmp_path / "missing.mp4")], "no such video file"),
        (["run", "--source", str(not_video)], "not a video OpenCV can read"),
        (["run", "--source", "ftp://cam/stream"], "unsupported scheme"),
        (["run", "--source", "/dev/video97"], "capture.source /dev/video97: no camera there"),
        (["run", "--source", str(astronaut_clip), "--broker", "host:notaport"], "port must be a number"),
        (["run", "--config", str(tmp_path / "nope.yaml")], "not found"),
        (["run", "--source", str(astronaut_clip), "--max-frames", "0"], "--max-frames"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err, (argv, err)


def test_broker_flag_forms():
    assert parse_broker("mqtt.lan:8883") == ("mqtt.lan", 8883)
    assert parse_broker("10.0.0.2") == ("10.0.0.2", 1883)
    assert parse_broker("[::1]:1884") == ("::1", 1884)
    with pytest.raises(ConfigError):
        parse_broker(":1883")


def test_password_from_file_or_systemd_credential(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg = Config.model_validate({"mqtt": {"username": "cam", "password_file": str(pw)}}).mqtt
    assert read_password(cfg, {}) == "s3cret"
    cred = Config.model_validate({"mqtt": {"username": "cam", "password_credential": "mqtt-password"}}).mqtt
    (tmp_path / "mqtt-password").write_text("fromsystemd")
    assert read_password(cred, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "fromsystemd"
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        read_password(cred, {})
    with pytest.raises(ConfigError, match="cannot be read"):
        read_password(cfg.model_copy(update={"password_file": tmp_path / "absent"}), {})
    with pytest.raises(ConfigError, match="no username"):
        read_password(cfg.model_copy(update={"username": None}), {})
    assert read_password(Config().mqtt, {}) is None


def test_configuration_reference_is_generated_from_the_schema():
    from tools import config_reference

    assert config_reference.main(["--check"]) == 0, "run python -m tools.config_reference"
