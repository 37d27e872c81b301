"""``anoncam bench``: per-stage time, end-to-end frame rate and peak memory of the agent itself.

What is measured is :meth:`agent.service.agent.Agent.run` as the service runs it -- the real
:class:`~agent.io.capture.Capture` thread, the two-stage loop (analysis of frame N+1 overlapping
replacement of frame N), tracking, synthesis, paste-back, expression metadata and the
:class:`~agent.io.publish.Publisher`'s JPEG encoding and metadata serialisation -- with three parts
swapped (:class:`agent.service.agent.Parts`): the camera is a file of raw frames read by the real Capture thread,
the publisher never opens a network connection, and Stats also keeps each frame's stage times.

Scenes are made at run time from the bundled astronaut photo (public domain, agent/assets) and
written to a temporary file before any timing: 640x480 with one face and 1280x720 with four, every
face moving a little each frame so MediaPipe's VIDEO mode tracks as it would on a camera.

Each backend and scene runs in its own child process, so peak RSS (VmHWM) belongs to that agent
alone; deface, where installed, runs on the same frames in a child of its own.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.commands.bench_report import evaluate, format_report
from agent.commands.bench_runs import (
    OtherLoad,
    bench_config,
    bench_deface,
    deface_installed,
    peak_rss_mb,
    run_agent,
)
from agent.commands.bench_scenes import SCENE_BY_NAME, SCENES, Scene, write_scene
from agent.config import load_config
from agent.errors import AnoncamError
from agent.runtime.manifest import load_manifest
from agent.runtime.memory import limit_malloc_arenas
from agent.service.agent import stream_detector_threads, stream_threads

log = logging.getLogger(__name__)

REPORT_SCHEMA = "anoncam.bench/1"
BACKENDS = ("onnxruntime", "openvino")



# -- child process: one backend, one scene -----------------------------------------------------

def child_main(spec_path: str) -> int:
    """Entry of ``python -m agent.commands.bench SPEC``: reads the job, writes its result next to it."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["result"])
    try:
        result = _bench_one(spec)
    except AnoncamError as exc:  # the parent shows this line instead of a wall of native-library noise
        out.write_text(json.dumps({"error": str(exc)}))
        return 2
    out.write_text(json.dumps(result))
    return 0


def _bench_one(spec: dict) -> dict:
    if spec["backend"] == "deface":
        return bench_deface(Path(spec["frames"]), SCENE_BY_NAME[spec["scene"]], spec["warmup"])
    scene = SCENE_BY_NAME[spec["scene"]]
    frames = Path(spec["frames"])
    cfg = bench_config(load_config(spec["config"]), spec["backend"], spec["threads"], scene, frames)
    agent = run_agent(cfg, frames, spec["warmup"])
    threads = stream_threads(cfg.inference).threads
    return {"agent": agent, "peak_rss_mb": peak_rss_mb(), "threads": threads,
            "detector_threads": stream_detector_threads(cfg.inference) or threads}


def _spawn(workdir: Path, backend: str, scene: Scene, frames: Path, warmup: int, threads: int | None,
           config: Path | None) -> dict:
    tag = f"{backend}-{scene.name}"
    spec = {"backend": backend, "scene": scene.name, "frames": str(frames), "warmup": warmup, "threads": threads,
            "config": str(config) if config else None, "result": str(workdir / f"{tag}.json")}
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
    load = OtherLoad()
    proc = subprocess.run([sys.executable, "-m", "agent.commands.bench", str(spec_path)], env=env, capture_output=True,
                          text=True)
    other = load.cores()
    result_path = Path(spec["result"])
    result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if proc.returncode != 0 or result is None or "error" in result:
        why = result["error"] if result and "error" in result else "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise AnoncamError(f"bench of {backend} on {scene.name} failed (exit {proc.returncode}): {why}")
    return {**result, "other_load_cores": other}


# -- parent: scenes, children, report -------------------------------------------------------------

def measure(backends, frames: int, warmup: int, threads: int | None, config: Path | None = None,
            scenes: tuple[Scene, ...] = SCENES) -> dict:
    """Write each scene, bench every backend on it in a child process, and assemble the report."""
    defaults = load_config(config)  # validated here, so a bad file fails before any scene is made
    manifest = load_manifest(defaults.inference.models_dir)
    load_before = os.getloadavg()
    results: dict = {}
    peers: dict = {}
    peer = deface_installed()
    with tempfile.TemporaryDirectory(prefix="anoncam-bench-") as tmp:
        workdir = Path(tmp)
        for scene in scenes:
            path = write_scene(scene, warmup + frames, workdir / f"{scene.name}.bgr")
            for backend in backends:
                log.info("bench: %s on %s (%d frames after %d warm-up)", backend, scene.name, frames, warmup)
                results.setdefault(backend, {})[scene.name] = _spawn(workdir, backend, scene, path, warmup, threads,
                                                                     config)
            if peer:
                log.info("bench: deface on %s", scene.name)
                peers[scene.name] = _spawn(workdir, "deface", scene, path, warmup, threads, config)
            path.unlink()
    return {
        "schema": REPORT_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(load_before),
        "settings": {"frames": frames, "warmup": warmup, "config": str(config) if config else None,
                     "jpeg_quality": defaults.mqtt.jpeg_quality,
                     "expression": defaults.expression.enabled, "flip_tta": manifest.emotion.flip_tta,
                     "regenerate_every": manifest.generator.regenerate_every,
                     "threads": threads if threads is not None else defaults.inference.threads,
                     "threads_used": max(r["threads"] for per in results.values() for r in per.values()),
                     "detector_threads": max(r["detector_threads"] for per in results.values() for r in per.values())},
        "scenes": {s.name: {"width": s.width, "height": s.height, "faces": len(s.people)} for s in scenes},
        "results": {b: {"peak_rss_mb": max(r["peak_rss_mb"] for r in per.values()), "scenes": per}
                    for b, per in results.items()},
        "deface": peers or None,
        "targets": evaluate(results, peers),
    }


def _machine(load_before) -> dict:
    import mediapipe
    import onnxruntime

    try:
        import openvino

        openvino_version = openvino.__version__
    except ImportError:
        openvino_version = None

    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "versions": {"mediapipe": mediapipe.__version__, "onnxruntime": onnxruntime.__version__,
                         "openvino": openvino_version}}


# -- CLI ------------------------------------------------------------------------------------------

def register(sub):
    p = sub.add_parser("bench", help="measure per-stage time, frame rate and peak memory of the agent",
                       description="Run the agent (the daemon's own code path, offline: no MQTT network I/O) on "
                                   "synthetic 640x480/1-face and 1280x720/4-face scenes, for ONNX Runtime and "
                                   "OpenVINO, each in its own process; print stage times, end-to-end fps, peak RSS "
                                   "and the requirement's targets.")
    p.add_argument("--config", type=Path, help="YAML config as for `anoncam run` (default: built-in defaults); its "
                                               "capture source and broker are not used, and the backend (and "
                                               "--threads, if given) come from the flags")
    p.add_argument("--frames", type=int, default=150,
                   help="timed frames per scene (default 150); they wait in a temporary raw file, 2.8 MB each at 720p")
    p.add_argument("--warmup", type=int, default=10, help="frames run before timing starts (default 10)")
    p.add_argument("--backend", choices=BACKENDS, help="run only this inference backend (default: both)")
    p.add_argument("--scene", choices=list(SCENE_BY_NAME), help="run only this scene (default: both)")
    p.add_argument("--threads", type=int, help="inference threads for the detector, generator and emotion classifier "
                                               "(default: the config's, 0 = half the cores, as `anoncam run` does)")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="also write the report as JSON, e.g. reports/bench_agent.json")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.frames < 1:
        raise AnoncamError("--frames must be at least 1")
    if args.warmup < 1:
        raise AnoncamError("--warmup must be at least 1 (the first frame pays one-off costs)")
    if args.threads is not None and args.threads < 0:
        raise AnoncamError("--threads must be 0 (half the cores) or more")
    backends = (args.backend,) if args.backend else BACKENDS
    scenes = (SCENE_BY_NAME[args.scene],) if args.scene else SCENES
    report = measure(backends, args.frames, args.warmup, args.threads, args.config, scenes)
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nreport written to {args.json}")
    return 0


if __name__ == "__main__":
    limit_malloc_arenas()  # as the anoncam command does: the child is the agent as it runs
    sys.exit(child_main(sys.argv[1]))
