"""What an evaluation leaves: metrics.json, report.md and items.csv; a summary table of several runs,
and the paired comparison of two runs item by item."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from tools.evaluation.identity import DLIB_THRESHOLD

# The figures anoncam is held to, shown next to the measured ones.
TARGETS = {"reid_rate": ("<=", 0.02), "rank1": ("<=", 0.05), "faces_kept": (">=", 0.90), "agreement": (">=", 0.70)}
ITEMS_FILE = "items.csv"
ITEM_COLUMNS = ("part", "key", "label", "rank1_hit", "reid_hit", "distance", "original", "anonymized", "agree")
COMPARED = (("identity", "reid_hit", "re-identification"), ("identity", "rank1_hit", "rank-1"),
            ("expression", "agree", "expression agreement"))


# ---------------------------------------------------------------- files of one run

def json_safe(o):
    """``o`` with NaN as None and numpy scalars as Python ones, for JSON."""
    if isinstance(o, float) and np.isnan(o):
        return None
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    return o


def write_metrics(out: Path, metrics: dict) -> dict:
    """``out``/metrics.json, replaced whole (never left half-written); returns what was written."""
    metrics = json_safe(metrics)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out / "metrics.json")
    return metrics


def write_items(path: Path, items: list[dict]) -> None:
    """One row per scored photo and FER face (dataset file names and the judges' verdicts, no pixels), so
    two runs can be compared item by item (--compare)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ITEM_COLUMNS, restval="")
        w.writeheader()
        w.writerows(items)


def read_items(run: Path) -> dict:
    path = run / ITEMS_FILE if run.is_dir() else run
    if not path.is_file():
        raise SystemExit(f"{path} not found: runs evaluated before per-item results were kept cannot be "
                         "compared item by item; rerun them with the command in their metrics.json")
    with open(path, newline="") as f:
        return {(r["part"], r["key"]): r for r in csv.DictReader(f)}


def _fmt(v, pct=True):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f} %" if pct else f"{v}"


def _num(v) -> float:
    return float("nan") if v is None else v


def _target(key, v):
    op, t = TARGETS[key]
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    ok = v <= t if op == "<=" else v >= t
    return f"{op} {100 * t:g} % {'met' if ok else 'not met'}"


def _metric_rows(i: dict, e: dict) -> list[str]:
    return [
        "| metric | value | target |",
        "|---|---|---|",
        f"| re-identification (dlib distance < {DLIB_THRESHOLD}, anonymized vs own original) | {_fmt(i.get('reid_rate'))} | {_target('reid_rate', i.get('reid_rate'))} |",
        f"| re-identification, dlib's detector only (no face found = not re-identified) | {_fmt(i.get('reid_rate_detected_only'))} | |",
        f"| rank-1 identification (gallery: the other {i.get('gallery_size', 0) - 1} original photos, {i.get('identities')} identities; chance {_fmt(i.get('rank1_chance'))}) | {_fmt(i.get('rank1'))} | {_target('rank1', i.get('rank1'))} |",
        f"| rank-1 of the originals themselves (judge sanity check) | {_fmt(i.get('rank1_originals'))} | |",
        f"| faces kept (dlib still detects a face in the output) | {_fmt(i.get('faces_kept'))} | {_target('faces_kept', i.get('faces_kept'))} |",
        f"| expression agreement (FER judge, original vs anonymized) | {_fmt(e.get('agreement'))} | {_target('agreement', e.get('agreement'))} |",
        f"| judge accuracy vs FER ground truth, originals (all sampled / scored) | {_fmt(e.get('judge_accuracy_originals_all'))} / {_fmt(e.get('judge_accuracy_originals'))} | |",
        f"| judge accuracy vs FER ground truth, anonymized | {_fmt(e.get('judge_accuracy_anonymized'))} | |",
        *_look_rows(i.get("look") or {}),
        *_second_rows(i.get("second_judge") or {}, e.get("second_judge") or {}),
    ]


def _second_rows(i2: dict, e2: dict) -> list[str]:
    rows = []
    if i2:
        rows += [f"| second recognizer ({i2['judge']}): re-identification at its EER threshold {i2['threshold']:.3f} / floor (another person's photo) | {_fmt(i2['reid_rate'])} / {_fmt(i2['reid_floor'])} | |",
                 f"| second recognizer: rank-1 (chance {_fmt(i2['rank1_chance'])}) | {_fmt(i2['rank1'])} | |"]
    if e2:
        per = ", ".join(f"{k} {_fmt(v)}" for k, v in e2["agreement_per_original_label"].items())
        rows.append(f"| second expression judge ({e2['judge']}): agreement, original vs anonymized ({per}) | {_fmt(e2['agreement'])} | |")
    return rows


def _look_rows(look: dict) -> list[str]:
    if not look:
        return []
    num = lambda k: f"{_num(look.get(k)):.2f}"  # noqa: E731
    return [
        f"| tone: ΔE (CIELAB) face middle vs visible neck, anonymized / original ({look.get('tone_photos')} photos) | {num('tone_delta_e')} / {num('tone_delta_e_original')} | |",
        f"| seam: gradient energy on the replaced region's edge over inside it, anonymized / original: mean (median) | {num('seam_ratio')} ({num('seam_ratio_median')}) / {num('seam_ratio_original')} ({num('seam_ratio_original_median')}) | |",
        f"| realism: Fréchet distance of dlib descriptors, anonymized vs real faces / two halves of the real faces | {num('frechet_dlib')} / {num('frechet_dlib_real_halves')} | |",
    ]


def _count_lines(i: dict, e: dict, s: dict) -> list[str]:
    return [
        f"- Identity: {i.get('photos')} held-out photos of {i.get('identities')} identities; MediaPipe found a face in "
        f"{i.get('mediapipe_found')} (the others pass through unchanged, and are scored as they are); dlib found a face in "
        f"{i.get('dlib_original_faces')} originals, which are the scored photos ({i.get('scored')}). Outputs with a dlib face "
        f"where the original had none: {i.get('faces_gained')}. Mean / median descriptor distance to the own original: "
        f"{_num(i.get('distance_mean')):.3f} / {_num(i.get('distance_median')):.3f}.",
        f"- Expression: {e.get('sampled')} FER2013 val faces ({e.get('sampling')}); MediaPipe found no face in "
        f"{e.get('skipped_no_face')} (skipped), {e.get('scored')} scored.",
        "- Agreement by true class: " + ", ".join(f"{k} {_fmt(v)}" for k, v in e.get("agreement_per_true_class", {}).items()),
        "- Labels the judge gives the anonymized faces: " + ", ".join(f"{k} {_fmt(v)}" for k, v in e.get("anonymized_label_share", {}).items()),
        f"- Time per image (method only, {s.get('threads')} inference thread(s) (0: the runtime's choice), shared CPU): "
        f"CelebA {i.get('ms_per_image', 0):.0f} ms, FER {e.get('ms_per_image', 0):.0f} ms.",
    ]


def write_report(out: Path, m: dict) -> None:
    """``out``/report.md: the figures against their targets, the counts behind them, the settings."""
    i, e, s = m["identity"], m["expression"], m["settings"]
    grid = (out / "grid.png").is_file()
    lines = [f"# Evaluation: {m['name']} ({m['method']})", "",
             f"Run {m['finished']} on commit `{m['commit']}`, {m['seconds']:.0f} s. Reproduce: `{m['command']}`", "",
             *_metric_rows(i, e), "", "Counts:", "", *_count_lines(i, e, s), "", "Settings:", ""]
    lines += [f"- {k}: {v}" for k, v in s.items()]
    lines += [
        "",
        "How: identity is judged by dlib's HOG detector (upsample 1), 5-point aligner and ResNet descriptor "
        "(face_recognition_models); where dlib finds no face in an output, the descriptor is taken at the original "
        "photo's face box (an attacker knows where the face was). Expression is judged by the independent "
        "FER2013 mini-Xception (shared/models/fer_mini_xception_int8.tflite, OpenVINO) on the whole FER crop, "
        "upscaled original and anonymized output both converted to 64x64 grey the same way.",
        "",
        "grid.png: conditioning | the replaced region of the output (everything else blacked out, so no "
        "dataset pixels are committed); the full outputs next to the originals are written to "
        f"reports/tmp/{m['name']}_grid.png, which stays out of git." if grid else "",
        "",
        "![conditioning | replaced region](grid.png)" if grid else "",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))


# ---------------------------------------------------------------- several runs

def summary_table(paths: list[Path]) -> str:
    """One Markdown table of the headline figures of several runs (report folders or metrics.json files)."""
    rows = ["| run | method | re-identification | rank-1 (chance 2.5 %) | faces kept | expression agreement | scored (identity / FER) |",
            "|---|---|---|---|---|---|---|"]
    for p in paths:
        f = p / "metrics.json" if p.is_dir() else p
        m = json.loads(f.read_text())
        i, e = m["identity"], m["expression"]
        method = m["method"] + (f" ({m['settings'].get('backend_class', '')})" if m["method"] == "anoncam" else "")
        rows.append(f"| {m['name']} | {method} | {_fmt(i.get('reid_rate'))} | {_fmt(i.get('rank1'))} | "
                    f"{_fmt(i.get('faces_kept'))} | {_fmt(e.get('agreement'))} | {i.get('scored')} / {e.get('scored')} |")
    rows.append("| target | | <= 2 % | <= 5 % | >= 90 % | >= 70 % | |")
    return "\n".join(rows)


def paired_difference(a, b) -> dict:
    """Two runs judged on the same items: b's rate minus a's, with its 95 % interval and McNemar's exact p.

    Both runs see the same photos and FER faces, so only the items on which they disagree carry
    information; treating the two rates as independent would count the many items both get right or
    both get wrong as noise.
    """
    from scipy.stats import binomtest

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n = len(a)
    if n == 0 or len(b) != n:
        raise ValueError("paired_difference needs two equally long, non-empty outcome lists")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    diff = (only_b - only_a) / n
    se = np.sqrt(max(only_a + only_b - (only_b - only_a) ** 2 / n, 0.0)) / n
    p = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"n": n, "a": float(a.mean()), "b": float(b.mean()), "diff": diff,
            "ci95": (diff - 1.96 * se, diff + 1.96 * se), "only_a": only_a, "only_b": only_b, "p": float(p)}


def compare_runs(a: Path, b: Path) -> str:
    """Markdown table: each metric of run b against run a, on the items both scored."""
    ra, rb = read_items(a), read_items(b)
    rows = [f"Paired comparison, `{b}` against `{a}` (items both runs scored):", "",
            "| metric | items | a | b | b − a | 95 % interval | only a / only b | McNemar p |", "|---|---|---|---|---|---|---|---|"]
    for part, column, label in COMPARED:
        keys = sorted(k for k in ra.keys() & rb.keys() if k[0] == part)
        if not keys:
            continue
        d = paired_difference([ra[k][column] == "1" for k in keys], [rb[k][column] == "1" for k in keys])
        lo, hi = d["ci95"]
        rows.append(f"| {label} | {d['n']} | {100 * d['a']:.1f} % | {100 * d['b']:.1f} % | {100 * d['diff']:+.1f} pts | "
                    f"{100 * lo:+.1f} … {100 * hi:+.1f} | {d['only_a']} / {d['only_b']} | {d['p']:.3f} |")
    return "\n".join(rows)
