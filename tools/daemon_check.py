"""Measure the daemon end to end on a real clip, broker and subscriber: the agent's acceptance figures.

    python -m tools.daemon_check [--clip FILE] [--seconds 10]     # -> reports/daemon_check.json

Without --clip it writes a 640x480 15 fps clip of scikit-image's astronaut (public domain) moving.
It starts mosquitto on a free loopback port, runs ``anoncam run`` on the clip in real time (frames
dropped like a camera when processing is slower), and reports:

- the share of the clip's frames that were published, and whether there is exactly one ``meta`` per frame;
- that every published frame's face oval differs from the source (no raw face on the wire);
- how many published frames an independent recognizer (dlib ResNet, the eval extra) still matches to the
  person in the source frame (distance < 0.6);
- whether a retained ``offline`` is left after ``kill -9`` of a second, looping agent.

Needs mosquitto (apt-get install mosquitto) and, for the identity figures, the eval extra (dlib).
It drives the agent with the test suite's broker, subscriber and clip helpers (tests/daemon_helpers.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.reports import ROOT, write_report

sys.path.insert(0, str(ROOT / "tests"))  # the helpers live with the tests that share them

from daemon_helpers import (Broker, FaceOvals, Subscriber, agent_command, agent_env, decode_jpeg, make_clip,  # noqa: E402
                            oval_diff, read_frames, retained, wait_for, write_config)


def identity_check(frames, frame_ids, source) -> dict:
    """dlib (an independent recognizer) on every published frame against the person in the source frame.

    Where dlib finds no face in the published frame, the descriptor is taken at the source's face box,
    as tools.evaluate does, so a face dlib cannot see is still judged.
    """
    import cv2

    try:
        from tools.evaluation.identity import DLIB_THRESHOLD, DlibRecognizer
        judge = DlibRecognizer()
    except (ImportError, SystemExit) as exc:
        return {"dlib": f"skipped: {exc}"}
    matches, judged, min_dist, dists = 0, 0, None, []
    for m, fid in zip(frames, frame_ids):
        src = cv2.cvtColor(source[fid - 1], cv2.COLOR_BGR2RGB)
        boxes = judge.detect(src)
        if not boxes:
            continue
        ref = judge.describe(src, boxes[0])
        out = cv2.cvtColor(decode_jpeg(m.payload), cv2.COLOR_BGR2RGB)
        found = judge.detect(out) or [boxes[0]]
        d = min(float(np.linalg.norm(judge.describe(out, b) - ref)) for b in found)
        judged += 1
        dists.append(d)
        matches += d < DLIB_THRESHOLD
        min_dist = d if min_dist is None else min(min_dist, d)
    return {"dlib_frames_judged": judged, "dlib_frames_matching_person": matches,
            "dlib_min_distance": round(min_dist, 3) if min_dist is not None else None,
            "dlib_median_distance": round(float(np.median(dists)), 3) if dists else None,
            "dlib_threshold": DLIB_THRESHOLD}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.daemon_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, help="640x480 video with one face (default: generated astronaut clip)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the generated clip")
    ap.add_argument("--no-expression", action="store_true", help="run the agent with expression.enabled: false")
    ap.add_argument("--report", type=Path, default=ROOT / "reports/daemon_check.json")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="anoncam-check-"))
    clip = args.clip or make_clip(work / "astronaut.avi", frames=int(args.seconds * 15))
    source = read_frames(clip)
    broker = Broker(work).start()
    report = {"clip": str(clip), "frames_in_clip": len(source)}
    try:
        cfg = write_config(work / "agent.yaml", capture={"source": str(clip)},
                           expression={"enabled": not args.no_expression},
                           mqtt={"host": "127.0.0.1", "port": broker.port, "prefix": "check", "camera": "cam"},
                           stats={"interval_s": 2})
        sub = Subscriber(broker.port, "check/#")
        t0 = time.monotonic()
        run = subprocess.run(agent_command("run", "--config", str(cfg)), env=agent_env(), capture_output=True, text=True)
        report["agent_exit_code"] = run.returncode
        report["agent_wall_s"] = round(time.monotonic() - t0, 1)
        time.sleep(1)
        sub.close()
        frames, metas = sub.topic("frame"), sub.topic("meta")
        meta_ids = [json.loads(m.payload)["frame_id"] for m in metas]
        frame_ids = [int(dict(m.properties.UserProperty)["frame_id"]) for m in frames]
        report["frames_published"] = len(frames)
        report["published_pct"] = round(100.0 * len(frames) / len(source), 1)
        report["one_meta_per_frame"] = sorted(meta_ids) == sorted(frame_ids) and len(set(meta_ids)) == len(meta_ids)
        stats = [json.loads(m.payload) for m in sub.topic("stats")]
        if stats:
            last = stats[-1]
            report["stats_last"] = {k: last[k] for k in ("frames", "fail_closed", "stage_ms")}
        ovals = FaceOvals()
        diffs, no_face = [], 0
        for m, fid in zip(frames, frame_ids):
            img = decode_jpeg(m.payload)
            masks = ovals.masks(fid - 1, source[fid - 1])
            if not masks:
                no_face += 1
            diffs += [oval_diff(img, source[fid - 1], mk) for mk in masks]
        ovals.close()
        report.update(identity_check(frames, frame_ids, source))
        report["faces_compared"] = len(diffs)
        report["face_oval_mean_abs_diff_min"] = round(min(diffs), 1) if diffs else None
        report["face_oval_mean_abs_diff_median"] = round(sorted(diffs)[len(diffs) // 2], 1) if diffs else None
        report["published_frames_without_source_face"] = no_face

        # kill -9 of a looping agent: the broker must leave the retained will, 'offline'.
        cfg2 = write_config(work / "loop.yaml", capture={"source": str(clip), "loop": True},
                            expression={"enabled": not args.no_expression},
                            mqtt={"host": "127.0.0.1", "port": broker.port, "prefix": "check", "camera": "k9"})
        sub = Subscriber(broker.port, "check/k9/frame")
        proc = subprocess.Popen(agent_command("run", "--config", str(cfg2)), env=agent_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: len(sub.messages) >= 5, 120)
        report["retained_before_kill"] = (retained(broker.port, "check/k9/availability") or b"").decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        sub.close()
        time.sleep(0.5)
        report["retained_after_kill9"] = (retained(broker.port, "check/k9/availability") or b"").decode()
    finally:
        broker.stop()
    write_report(args.report, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
