"""Before-and-after sheet of public-domain portraits, with what a judge makes of each (docs/photo-sheet.jpg).

    python -m tools.photo_sheet        # -> docs/photo-sheet.jpg, reports/photo_sheet.json

Each photo goes through `anoncam anonymize`'s own pipeline (stills, the shipped models). Under each
pair: dlib's distance between the person's face and the anonymized one (0.6 and less: the same
person to dlib), whether dlib's HOG detector still finds a face, and the CIELAB colour difference
between the face's middle and the neck below it, before and after. The photos and where they come
from: docs/photos/README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from agent.types import iou
from tools.evaluation.identity import DlibRecognizer
from tools.evaluation.look import tone_difference
from tools.model_files import ROOT
from tools.reports import write_report

PHOTOS = (  # (file, what it stands for on the sheet)
    (ROOT / "docs/photos/obama.jpg", "dark skin, smiling"),
    (ROOT / "docs/photos/biden.jpg", "elderly, turned a little"),
    (ROOT / "docs/photos/hopper.jpg", "elderly, glasses"),
    (ROOT / "agent/assets/astronaut.jpg", "the demo's face"),
)
PANEL_HEIGHT = 420
CAPTION = 44
COLUMNS = 2  # pairs per row
FONT, FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.48
BACKGROUND = (24, 24, 24)


def measure(judge: DlibRecognizer, original: np.ndarray, anonymized: np.ndarray) -> dict:
    """dlib's verdict and the face-to-neck tone on one pair (RGB uint8, same size)."""
    boxes = judge.detect(original)
    if not boxes:
        return {"dlib_face_in_original": False}
    box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    found = judge.detect(anonymized)
    # The anonymized face where dlib finds one, else at the original's box (what a recognizer
    # pointed at the known place would read).
    near = [b for b in found if iou(b, box) >= 0.3]
    at = max(near, key=lambda b: iou(b, box)) if near else box
    distance = float(np.linalg.norm(judge.describe(original, box) - judge.describe(anonymized, at)))
    return {"dlib_face_in_original": True, "dlib_face_in_output": bool(near), "dlib_distance": distance,
            "same_person_to_dlib": distance <= 0.6,
            "tone_delta_e_original": tone_difference(original, box, None),
            "tone_delta_e_anonymized": tone_difference(anonymized, box, None)}


def panel(original: np.ndarray, anonymized: np.ndarray, label: str, m: dict) -> np.ndarray:
    """The pair side by side at PANEL_HEIGHT, two caption lines below (BGR)."""
    s = PANEL_HEIGHT / original.shape[0]
    size = (round(original.shape[1] * s), PANEL_HEIGHT)
    pair = np.hstack([cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (original, anonymized)])
    pair = cv2.cvtColor(pair, cv2.COLOR_RGB2BGR)
    if m.get("dlib_face_in_original"):
        verdict = "same person" if m["same_person_to_dlib"] else "another person"
        tone = "" if m["tone_delta_e_anonymized"] is None else (
            f", face-neck dE {m['tone_delta_e_original']:.0f} -> {m['tone_delta_e_anonymized']:.0f}")
        line2 = (f"dlib: {m['dlib_distance']:.2f} ({verdict}), face "
                 f"{'found' if m['dlib_face_in_output'] else 'not found'}{tone}")
    else:
        line2 = "dlib finds no face in the original"
    lines = ((17, f"{label}: before | after"), (37, line2))
    width = max(pair.shape[1], *(cv2.getTextSize(t, FONT, FONT_SCALE, 1)[0][0] + 16 for _, t in lines))
    pair = cv2.copyMakeBorder(pair, 0, 0, 0, width - pair.shape[1], cv2.BORDER_CONSTANT, value=BACKGROUND)
    strip = np.full((CAPTION, width, 3), BACKGROUND, np.uint8)
    for y, text in lines:
        cv2.putText(strip, text, (8, y), FONT, FONT_SCALE, (235, 235, 235), 1, cv2.LINE_AA)
    return np.vstack([pair, strip])


def sheet(panels: list[np.ndarray]) -> np.ndarray:
    width = max(p.shape[1] for p in panels)
    padded = [cv2.copyMakeBorder(p, 0, 0, 0, width - p.shape[1], cv2.BORDER_CONSTANT, value=BACKGROUND) for p in panels]
    padded += [np.full_like(padded[0], BACKGROUND[0])] * (-len(padded) % COLUMNS)
    rows = [np.hstack(padded[i:i + COLUMNS]) for i in range(0, len(padded), COLUMNS)]
    return np.vstack(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.photo_sheet", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="user config (YAML), e.g. one naming a variant models folder")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/photo-sheet.jpg")
    ap.add_argument("--report", type=Path, default=ROOT / "reports/photo_sheet.json")
    args = ap.parse_args(argv)
    from agent.config import load_config
    from agent.io.images import read_image, to_rgb, to_rgb8
    from agent.pipeline import Anonymizer

    cfg = load_config(args.config) if args.config else None
    anonymizer = Anonymizer(cfg, mode="image", seed=0)
    judge = DlibRecognizer(upsample=1)
    panels, rows = [], []
    try:
        for path, label in PHOTOS:
            original = to_rgb8(to_rgb(read_image(path)))
            result = anonymizer.process(original)
            anonymized = to_rgb8(result.frame.pixels)
            m = measure(judge, original, anonymized)
            rows.append({"photo": str(path.relative_to(ROOT)), "stands_for": label,
                         "faces_replaced": result.frame.faces_replaced, "faces_covered": result.frame.faces_masked, **m})
            panels.append(panel(original, anonymized, label, m))
    finally:
        anonymizer.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), sheet(panels), [cv2.IMWRITE_JPEG_QUALITY, 88])
    write_report(args.report, {"models": str(anonymizer.manifest.folder), "judge": judge.version, "photos": rows}, echo=False)
    for r in rows:
        print(f"{r['photo']}: replaced {r['faces_replaced']}, covered {r['faces_covered']}, "
              f"dlib {r.get('dlib_distance', float('nan')):.3f}, face found {r.get('dlib_face_in_output')}")
    print(f"wrote {args.out} and {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
