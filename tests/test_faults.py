"""Faults from outside, with real parts: a model file damaged between runs, a disk-quota style file-size
limit on the output, and SIGTERM in the middle of a batch. Each ends in one line saying what happened,
and nothing half-written is left behind."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from agent.runtime.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent


def anoncam(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.commands.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, **kw)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    bgr = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    for i in range(6):
        cv2.imwrite(str(d / f"p{i}.png"), np.roll(bgr, 7 * i, axis=1))
    return d


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("anoncam: error:")]


def test_a_model_damaged_between_runs_is_refused_in_one_line(tmp_path, photos):
    models = tmp_path / "models"
    shutil.copytree(load_manifest().folder, models)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"inference:\n  backend: onnxruntime\n  models_dir: {models}\n")
    first = anoncam("anonymize", photos / "p0.png", tmp_path / "ok.png", "--config", cfg)
    assert first.returncode == 0, first.stderr
    damaged = models / "face_detector.onnx"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    second = anoncam("anonymize", photos / "p0.png", tmp_path / "again.png", "--config", cfg)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    (line,) = _errors(second.stderr)
    assert "face_detector.onnx does not match its sha256" in line and "restore the original file" in line
    assert not (tmp_path / "again.png").exists()


def test_a_file_size_limit_fails_each_output_alone(tmp_path, photos):
    def limit():  # like a full disk or a quota: no file may grow past 64 kB (the outputs are ~400 kB)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    out = tmp_path / "out"
    p = anoncam("anonymize", photos, out, "--backend", "onnxruntime", preexec_fn=limit,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert p.returncode == 1, p.stderr[-2000:]
    errors = _errors(p.stderr)
    assert len(errors) == 6 and all("cannot write" in e and "file-size limit" in e for e in errors), p.stderr
    assert "Traceback" not in p.stderr and "0 image(s) written" in p.stdout and "6 failed" in p.stdout
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.png"))


def test_sigterm_mid_batch_leaves_only_whole_outputs(tmp_path, photos):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "agent.commands.cli", "anonymize", str(photos), str(out),
                             "--backend", "onnxruntime"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.png")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    written = sorted(out.glob("*.png"))
    if proc.returncode == 0:  # the batch was already done when the signal came
        assert len(written) == 6
    else:
        assert proc.returncode == 130 and "stopped by a signal" in stdout, (proc.returncode, stdout, stderr)
        assert 1 <= len(written) < 6
    assert not list(out.rglob("*.part"))
    for path in written:  # every file there is a whole image
        img = cv2.imread(str(path))
        assert img is not None and img.shape == (512, 512, 3)
