"""systemd integration: sd_notify over a real datagram socket, and the shipped unit file."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.service.systemd import Notifier

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "anoncam.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _receiver(address: str):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(1)
    return sock


def test_notify_ready_status_watchdog_stopping(tmp_path):
    path = str(tmp_path / "notify")
    sock = _receiver(path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.enabled and n.watchdog_s == 2.0
    n.ready("streaming")
    assert sock.recv(256) == b"READY=1\nSTATUS=streaming"
    assert n.watchdog(now=100.0)
    assert sock.recv(256) == b"WATCHDOG=1"
    # Rate-limited to half the interval: a 15 fps loop does not flood systemd.
    assert not n.watchdog(now=100.5)
    assert n.watchdog(now=101.1)
    assert sock.recv(256) == b"WATCHDOG=1"
    n.stopping()
    assert sock.recv(256) == b"STOPPING=1"
    n.close()
    sock.close()


def test_notify_abstract_socket_and_disabled_cases():
    name = f"anoncam-test-{os.getpid()}"
    sock = _receiver("\0" + name)
    n = Notifier({"NOTIFY_SOCKET": "@" + name})
    n.status("hello")
    assert sock.recv(256) == b"STATUS=hello"
    assert n.watchdog_s is None and not n.watchdog()  # no WATCHDOG_USEC: no pings
    sock.close()
    # The watchdog belongs to another process (e.g. a wrapper script): ignore it.
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    plain = Notifier({})
    assert not plain.enabled and not plain.send("READY=1")


def test_unit_file_declares_notify_watchdog_and_camera_access():
    text = UNIT.read_text()
    for line in ("Type=notify", "DeviceAllow=char-video4linux rw", "SupplementaryGroups=video", "StateDirectory=anoncam",
                 "ConfigurationDirectory=anoncam", "LoadCredential=mqtt-password:", "DevicePolicy=closed"):
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert "password" not in re.sub(r"(LoadCredential=mqtt-password:\S+|#.*)", "", text).lower()


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_unit_verifies_and_scores_at_most_2(tmp_path):
    # verify checks that ExecStart exists: point it at this interpreter, keep everything else.
    unit = tmp_path / "anoncam.service"
    unit.write_text(UNIT.read_text().replace("/opt/anoncam/bin/anoncam", f"{sys.executable} -m agent.commands.cli"))
    verify = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert "anoncam.service" not in verify.stderr, verify.stderr  # no warnings about our unit
    sec = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", str(UNIT)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for anoncam\.service: ([\d.]+)", sec.stdout)
    assert m, sec.stdout + sec.stderr
    assert float(m.group(1)) <= 2.0, sec.stdout


def test_watchdog_pings_stop_when_the_camera_stops_delivering(mosquitto, astronaut_clip, tmp_path, monkeypatch):
    """A camera that stays 'open' but sends nothing must let systemd's watchdog fire: pings only while frames flow.

    The V4L2 device is the one mocked part (a hardware edge): it serves the clip's frames, then every
    read fails, as an unplugged camera does; the agent keeps reconnecting and must stop pinging.
    """
    import threading
    import time

    from agent.config import Config
    from agent.io.capture import Capture
    from agent.io.retry import Backoff
    from agent.service import agent as service
    from agent.service.agent import Agent, Parts
    from tests.daemon_helpers import read_frames, wait_for

    frames = read_frames(astronaut_clip)[:12]
    remaining = list(frames)
    lock = threading.Lock()

    class Camera:
        def isOpened(self):
            return True

        def read(self):
            time.sleep(1 / 15)
            with lock:
                return (True, remaining.pop(0)) if remaining else (False, None)

        def release(self):
            pass

        def get(self, prop):
            return 0.0

    parts = Parts(capture=lambda cfg: Capture(cfg.capture, opener=lambda source, cfg: Camera(),
                                              backoff=Backoff(0.05, 0.2)))

    sock = _receiver(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s while healthy
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    stall_s = 1.0
    monkeypatch.setattr(service, "WATCHDOG_STALL_S", stall_s)
    cfg = Config.model_validate({
        "capture": {"source": "/dev/video0"},
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "prefix": "test", "camera": "wd"},
        "expression": {"enabled": False},
    })
    agent = Agent(cfg, parts=parts)
    runner = threading.Thread(target=agent.run, daemon=True)
    pings: list[float] = []
    sock.settimeout(0.05)

    def drain():
        try:
            while True:
                if b"WATCHDOG=1" in sock.recv(256):
                    pings.append(time.monotonic())
        except (socket.timeout, BlockingIOError):
            return

    runner.start()
    try:
        assert wait_for(lambda: drain() or (agent.capture is not None and agent.capture.counters["read"] >= len(frames)), 120)
        frames_ended = time.monotonic()
        wait_for(lambda: drain() or time.monotonic() > frames_ended + stall_s + 2.0, 10)
    finally:
        agent.stop()
        runner.join(30)
        sock.close()
    assert any(t < frames_ended for t in pings), "no watchdog pings while frames flowed"
    late = [round(t - frames_ended, 2) for t in pings if t > frames_ended + stall_s + 0.5]
    assert not late, f"watchdog still pinged {late} s after the camera stopped sending"
    assert not runner.is_alive()


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_viewer_unit_verifies_and_scores_at_most_2(tmp_path):
    source = UNIT.with_name("anoncam-view.service")
    unit = tmp_path / source.name
    unit.write_text(source.read_text().replace("/opt/anoncam/bin/anoncam", f"{sys.executable} -m agent.commands.cli"))
    verify = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert source.name not in verify.stderr, verify.stderr
    sec = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", str(source)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for anoncam-view\.service: ([\d.]+)", sec.stdout)
    assert m, sec.stdout + sec.stderr
    assert float(m.group(1)) <= 2.0, sec.stdout
    assert "view --config /etc/anoncam/agent.yaml" in source.read_text()
