"""Recorded video end to end: a clip of real people through ``anoncam anonymize``, judged by dlib.

    python -m tools.video_check [--frames 440] [--fps 15] [--no-deface]   # -> reports/video_check.json

The clip is made here from photos the generators never trained on (held-out CelebA identities and adult
UTKFace chips from ../shared/data, research-only: the clip and its frames stay in a temporary folder and are
deleted), half of each. Four people at a time, one per quarter of a 640x480 frame, drift and zoom slowly; every 55 frames
four new people take their places. An AAC tone runs the clip's length. Then:

- ``anoncam anonymize CLIP OUT`` runs as a user runs it (the console command, in a subprocess);
- the output's frame count, frame rate and audio are read back with PyAV;
- dlib (an independent recognizer, the eval extra) describes each person in every output frame, at the box
  dlib finds in the person's quarter or, if it finds none, at the person's box in the source frame, and
  compares it (distance < 0.6: a match) with the same person in the same source frame (the strictest
  comparison: same pose, light and hair) and, for the CelebA identities, with another photo of them (what a
  re-identifier would hold; the untouched clip against the same photos gives the judge's ceiling);
- deface (CenterFace + blur, its CLI defaults) runs on the same clip for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from tools.bench_video import write_h264_with_tone
from tools.datasets import (
    CELEBA_ZIP,
    UTK_ZIP,
    decode_rgb,
    identity_and_split,
    iter_zip_images,
)
from tools.reports import ROOT, write_report

SIZE = (640, 480)
CELL = (320, 240)
SEGMENT = 55  # frames per group of four people
FACE_PX = 130  # the pasted photo's height; its face is about 100 px tall


def pick_people(count: int, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """``count`` people no generator trained on: (name, the photo in the clip, another photo of them or None).

    Held-out CelebA identities come with a second photo, the one a re-identifier would hold; UTKFace
    chips (adults) have none. The two alternate."""
    rng = np.random.default_rng(seed)
    held, utk = {}, []
    for name, data in iter_zip_images(CELEBA_ZIP):
        identity, split, _ = identity_and_split(f"celeba:{name}")
        if split == "heldout" and len(held.setdefault(identity, [])) < 2:
            held[identity].append(data)
    for i, (name, data) in enumerate(iter_zip_images(UTK_ZIP)):
        # Adults only (UTKFace names start with the age): dlib's 0.6 threshold is set for adults and calls
        # most young children the same person, original or not.
        age = name.rsplit("/", 1)[-1].split("_", 1)[0]
        if i % 37 == 0 and age.isdigit() and 18 <= int(age) <= 85:
            utk.append((f"utk:{name}", [data]))
    celeb = [(k, v) for k, v in held.items() if len(v) == 2]
    # Half of each: the CelebA identities carry the re-identification figure, UTKFace the range of ages and skin.
    sets = [[celeb[i] for i in rng.permutation(len(celeb))], [utk[i] for i in rng.permutation(len(utk))]]
    people = []
    while len(people) < count and any(sets):
        for pool in sets:
            while pool and len(people) < count:
                name, photos = pool.pop(0)
                rgb = decode_rgb(photos[0])
                if rgb is not None:
                    people.append((name, rgb, decode_rgb(photos[1]) if len(photos) > 1 else None))
                    break
    return people


def backdrop() -> np.ndarray:
    y, x = np.mgrid[0:SIZE[1], 0:SIZE[0]].astype(np.float32)
    base = np.stack([90 + 40 * x / SIZE[0], 100 + 30 * y / SIZE[1], 110 + 20 * np.sin(x / 70)], -1)
    return base.clip(0, 255).astype(np.uint8)


def place(i: int, slot: int) -> tuple[float, float, float]:
    """Centre and height of the photo in ``slot`` at frame ``i``: a slow drift and zoom."""
    t = i / 15.0
    cx = CELL[0] * (slot % 2 + 0.5) + 18 * np.sin(0.7 * t + slot)
    cy = CELL[1] * (slot // 2 + 0.5) + 10 * np.cos(0.5 * t + 2 * slot)
    return cx, cy, FACE_PX * (1 + 0.08 * np.sin(0.4 * t + slot))


def render(i: int, people, base: np.ndarray) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    """Frame ``i`` (RGB) and, per slot, (person index, the photo's box)."""
    frame = base.copy()
    group = (i // SEGMENT) * 4
    boxes = []
    for slot in range(4):
        k = (group + slot) % len(people)
        photo = people[k][1]
        cx, cy, h = place(i, slot)
        w = h * photo.shape[1] / photo.shape[0]
        m = np.array([[w / photo.shape[1], 0, cx - w / 2], [0, h / photo.shape[0], cy - h / 2]], np.float32)
        warped = cv2.warpAffine(photo, m, SIZE, flags=cv2.INTER_AREA)
        inside = cv2.warpAffine(np.ones(photo.shape[:2], np.uint8), m, SIZE, flags=cv2.INTER_NEAREST).astype(bool)
        frame[inside] = warped[inside]
        boxes.append((k, (int(cx - w / 2), int(cy - h / 2), int(cx + w / 2), int(cy + h / 2))))
    return frame, boxes


def write_clip(path: Path, frames: int, fps: int, people) -> list[list[tuple[int, tuple]]]:
    base, layout = backdrop(), []

    def rendered():
        for i in tqdm(range(frames), desc="clip", leave=False):
            rgb, boxes = render(i, people, base)
            layout.append(boxes)
            yield rgb

    write_h264_with_tone(path, *SIZE, fps, rendered())
    return layout


def read_video(path: Path) -> tuple[list[np.ndarray], float, int]:
    """(RGB frames, the video stream's frame rate, number of audio streams)."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate)
        audio = len(c.streams.audio)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return frames, rate, audio


def inside(box, cell_box) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return cell_box[0] <= cx <= cell_box[2] and cell_box[1] <= cy <= cell_box[3]


def reference_descriptors(judge, people) -> dict[int, np.ndarray]:
    """dlib descriptors of each person's other photo, where they have one and dlib finds its face."""
    refs = {}
    for k, (_, _, other) in enumerate(people):
        if other is not None and (boxes := judge.detect(other)):
            refs[k] = judge.describe(other, boxes[0])
    return refs


def judge_identity(judge, source: list[np.ndarray], output: list[np.ndarray], layout, photos: dict) -> dict:
    """dlib on each person in the output frames, against (a) the same person in the same source frame and
    (b) another photo of them (``photos``: person -> descriptor), which is what a re-identifier holds."""
    from tools.evaluation.identity import DLIB_THRESHOLD

    judged = matched = missing_in_source = other_pairs = other_matches = photo_judged = photo_matched = 0
    distances = []
    for src, out, boxes in tqdm(list(zip(source, output, layout)), desc="dlib", leave=False):
        src_faces, out_faces = judge.detect(src), judge.detect(out)
        refs, outs = [], []
        for person, photo_box in boxes:
            mine = [b for b in src_faces if inside(b, photo_box)]
            candidates = [b for b in out_faces if inside(b, photo_box)] or mine[:1] or [photo_box]
            described = [judge.describe(out, b) for b in candidates]
            if person in photos:
                photo_judged += 1
                photo_matched += min(float(np.linalg.norm(v - photos[person])) for v in described) < DLIB_THRESHOLD
            if not mine:
                missing_in_source += 1
                continue
            refs.append(judge.describe(src, mine[0]))
            outs.append(described)
        for a, described in enumerate(outs):
            for b, ref in enumerate(refs):
                d = min(float(np.linalg.norm(v - ref)) for v in described)
                if a == b:
                    distances.append(d)
                    judged += 1
                    matched += d < DLIB_THRESHOLD
                else:  # the same output face against the other people in the frame: the judge's floor
                    other_pairs += 1
                    other_matches += d < DLIB_THRESHOLD
    return {"faces_judged": judged, "faces_matching_their_person": matched,
            "faces_matching_another_person_in_the_frame": f"{other_matches} of {other_pairs}",
            "faces_matching_another_photo_of_their_person": f"{photo_matched} of {photo_judged}",
            "faces_dlib_missed_in_source": missing_in_source, "threshold": DLIB_THRESHOLD,
            "min_distance": round(min(distances), 3) if distances else None,
            "median_distance": round(float(np.median(distances)), 3) if distances else None}


def run_anonymize(clip: Path, out: Path, config: Path | None = None) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agent.commands.cli", "anonymize", str(clip), str(out),
                           *(["--config", str(config)] if config else [])], capture_output=True, text=True)
    return {"exit_code": proc.returncode, "wall_s": round(time.monotonic() - t0, 1),
            "summary": proc.stdout.strip().splitlines()[-1:] or proc.stderr.strip().splitlines()[-1:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.video_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=440)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--no-deface", action="store_true", help="skip the deface baseline")
    ap.add_argument("--config", type=Path, help="the agent config anoncam anonymize runs with (default: none, the defaults)")
    ap.add_argument("--report", type=Path, default=ROOT / "reports" / "video_check.json")
    args = ap.parse_args(argv)
    from tools.evaluation.identity import DlibRecognizer

    judge = DlibRecognizer()
    groups = -(-args.frames // SEGMENT)
    people = pick_people(4 * groups)
    report = {"clip": {"frames": args.frames, "fps": args.fps, "size": f"{SIZE[0]}x{SIZE[1]}", "people": len(people),
                       "people_per_frame": 4, "audio": "AAC 440 Hz tone",
                       "sources": "held-out CelebA identities and UTKFace chips (../shared/data), not kept"}}
    with tempfile.TemporaryDirectory(prefix="anoncam-video-") as tmp:
        tmp = Path(tmp)
        clip, out = tmp / "people.mp4", tmp / "people-anonymized.mp4"
        layout = write_clip(clip, args.frames, args.fps, people)
        source, _, _ = read_video(clip)
        photos = reference_descriptors(judge, people)
        # The judge's ceiling: the untouched clip against the same other photos.
        report["clip"]["raw_faces_matching_another_photo_of_their_person"] = \
            judge_identity(judge, source, source, layout, photos)["faces_matching_another_photo_of_their_person"]
        report["anoncam"] = run_anonymize(clip, out, args.config)
        if args.config:
            report["anoncam"]["config"] = args.config.read_text()
        frames, rate, audio = read_video(out) if out.exists() else ([], 0.0, 0)
        report["anoncam"].update(frames_out=len(frames), fps_out=round(rate, 3), audio_streams_out=audio,
                                 fps_processing=round(len(frames) / max(report["anoncam"]["wall_s"], 1e-6), 2))
        if len(frames) == len(source):
            report["anoncam"]["dlib"] = judge_identity(judge, source, frames, layout, photos)
        if not args.no_deface:
            from tools.bench_video import run_deface

            blurred = tmp / "people-deface.mp4"
            figures = run_deface(clip, blurred)
            frames, rate, audio = read_video(blurred)
            report["deface"] = {"wall_s": round(figures["seconds"], 1), "frames_out": len(frames),
                                "fps_out": round(rate, 3), "audio_streams_out": audio, "settings": figures["settings"]}
            if len(frames) == len(source):
                report["deface"]["dlib"] = judge_identity(judge, source, frames, layout, photos)
    ours = report["anoncam"]
    report["verdict"] = {
        "frames_kept": ours.get("frames_out") == args.frames, "rate_kept": abs(ours.get("fps_out", 0) - args.fps) < 0.01,
        "audio_kept": ours.get("audio_streams_out") == 1,
        "no_dlib_match": ours.get("dlib", {}).get("faces_matching_their_person") == 0,
    }
    write_report(args.report, report)
    print(json.dumps(report, indent=1))
    return 0 if all(report["verdict"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
