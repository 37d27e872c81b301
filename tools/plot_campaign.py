"""The generator-quality campaign in one picture: what each step traded between privacy and expression.

    python -m tools.plot_campaign     # -> reports/campaign/frontier.png, reports/campaign/expression_confusion.png

Left: rank-1 identification (dlib, 40 held-out identities) against expression agreement (independent
FER judge) for every evaluated step and baseline, with the issue's target region. Middle: how much
expression the independent judge still reads from the *real* face blurred by a growing Gaussian (the
blur baseline at several sigmas), against the levels the generator reaches: the fidelity a rendered face
would need to meet the agreement target. Both read the metrics.json files of tools.evaluate; a run
that is missing is left out and named. Right: step 7's expression texture, agreement against its gain
(reports/expression_texture.json), with the bound a texture that follows the agent's reading of the
emotion cannot pass: how often that reading matches the judge's on the real face.

The second picture is where the shipped generator's expressions go: for each label the judge gives an
original FER face, the labels it gives the anonymized face (from the run's items.csv).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"

# (report folder under reports/, code drawn by the point, legend text, kind): kind picks the marker.
FRONTIER_RUNS = (
    ("eval-anoncam", "1", "own landmarks", "step"),
    ("eval-anoncam-shape", "2", "identity-free shape", "step"),
    ("campaign/step3b-fer5", "3b", "FER expression loss", "step"),
    ("campaign/step3g-blend", "3g", "blend of 1 and 3b", "step"),
    ("campaign/step4-kanon4", "4", "expression bank, all blendshapes", "step"),
    ("campaign/step4c-select8", "4c-8", "bank, emotion + gaze, 8 neighbours", "step"),
    ("campaign/step4c-select16", "4c-16", "bank, emotion + gaze, 16 neighbours", "step"),
    ("campaign/step4c-select4", "4c", "bank, emotion + gaze, 4 neighbours", "step"),
    ("campaign/step6-gen1-bank", "6-calm", "4c with the step-1 generator alone", "step"),
    ("campaign/step6-gen3b-bank", "6-expr", "4c with the step-3b generator alone", "step"),
    ("campaign/step6-routed", "6", "generator chosen by emotion", "step"),
    ("campaign/step7-texture", "7", "+ the emotion's texture: shipped, OpenVINO", "shipped"),
    ("campaign/step7-texture-onnxruntime", "7-ort", "shipped, ONNX Runtime", "shipped"),
    ("campaign/diag-random-expression", "rand", "a random expression (diagnostic)", "diagnostic"),
    ("eval-blur", "blur", "Gaussian blur, sigma = face / 10", "baseline"),
    ("eval-pixelate", "pix", "pixelate, 10 blocks", "baseline"),
)
BLUR_RUNS = ("campaign/blur-s0.00625", "campaign/blur-s0.0125", "campaign/blur-s0.018", "campaign/blur-s0.025",
             "campaign/blur-s0.05", "eval-blur")
GENERATOR_LEVELS = (("campaign/step7-texture", "generators + texture, shipped (step 7)"),
                    ("campaign/step6-routed", "generators chosen by emotion (step 6)"),
                    ("campaign/step3b-own-landmarks", "one generator, own landmarks"))
TEXTURE_REPORT = REPORTS / "expression_texture.json"
TARGET_RANK1, TARGET_AGREEMENT, CHANCE = 5.0, 70.0, 2.5
CONFUSION_RUN = "campaign/step7-texture"
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def _metrics(folder: str) -> dict | None:
    path = REPORTS / folder / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(m: dict, part: str, key: str):
    v = (m.get(part) or {}).get(key)
    return None if v is None else 100.0 * v


def frontier_points(runs=FRONTIER_RUNS):
    points, missing = [], []
    for folder, code, label, kind in runs:
        m = _metrics(folder)
        r1 = _pct(m, "identity", "rank1") if m else None
        ag = _pct(m, "expression", "agreement") if m else None
        if r1 is None or ag is None:
            missing.append(folder)
            continue
        points.append((r1, ag, code, label, kind))
    return points, missing


def blur_curve(runs=BLUR_RUNS):
    curve, missing = [], []
    for folder in runs:
        m = _metrics(folder)
        sigma = (m or {}).get("settings", {}).get("blur_sigma", "")
        ag = _pct(m, "expression", "agreement") if m else None
        if ag is None or not sigma.startswith("face size / "):
            missing.append(folder)
            continue
        curve.append((1.0 / float(sigma.split("/")[-1]), ag))
    return sorted(curve), missing


def plot(out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points, missing = frontier_points()
    curve, missing_blur = blur_curve()
    levels = [(l, _pct(m, "expression", "agreement")) for f, l in GENERATOR_LEVELS if (m := _metrics(f))]
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(20, 6), dpi=110, gridspec_kw={"width_ratios": [1.35, 1, 1]})

    ax.axvspan(0, TARGET_RANK1, ymin=TARGET_AGREEMENT / 100, ymax=1, color="tab:green", alpha=0.12, label="issue 3 target")
    ax.axvline(CHANCE, color="grey", ls=":", lw=1)
    ax.text(CHANCE + 0.2, 3, "chance", color="grey", fontsize=8)
    style = {"step": ("o", "tab:blue"), "shipped": ("*", "tab:red"), "diagnostic": ("D", "tab:purple"),
             "baseline": ("s", "tab:grey")}
    for n, (r1, ag, code, label, kind) in enumerate(points):
        marker, colour = style[kind]
        ax.plot(r1, ag, marker, color=colour, ms=12 if kind == "shipped" else 7, label=f"{code}: {label}")
        # Neighbouring steps sit close together: alternate their codes above and below the points.
        ax.annotate(code, (r1, ag), textcoords="offset points", xytext=(4, 7 if n % 2 else -12), fontsize=7.5)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([2, 3, 4, 5, 7, 10, 20])
    ax.set_xticklabels(["2", "3", "4", "5", "7", "10", "20"])
    ax.set_xlim(1.8, 32)
    ax.set_ylim(0, 100)
    ax.set_xlabel("rank-1 identification, % (dlib; lower is more private)")
    ax.set_ylabel("expression agreement, % (independent FER judge)")
    ax.set_title("Campaign steps: privacy against expression")
    ax.legend(loc="upper right", fontsize=6.5, framealpha=0.9)
    ax.grid(alpha=0.3)

    if curve:
        xs, ys = zip(*curve)
        bx.plot(xs, ys, "s-", color="tab:grey", label="real face, Gaussian blur")
    for (label, ag), ls in zip(levels, ("-", "--", ":", "-.")):
        bx.axhline(ag, color="tab:red", ls=ls, lw=1.2, label=f"{label}: {ag:.1f} %")
    bx.axhline(TARGET_AGREEMENT, color="tab:green", lw=1.2, label=f"target {TARGET_AGREEMENT:g} %")
    bx.set_xscale("log")
    bx.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if curve:
        bx.set_xticks(xs, [f"1/{1 / x:.0f}" for x in xs])
    bx.set_xlabel("blur sigma, fraction of the face size (the judge sees the face at about 60 px)")
    bx.set_ylabel("expression agreement, %")
    bx.set_ylim(0, 100)
    bx.set_title("How much detail the judge needs")
    bx.legend(loc="lower left", fontsize=8)
    bx.grid(alpha=0.3)

    texture_missing = [] if plot_texture_gains(cx) else [str(TEXTURE_REPORT.relative_to(REPORTS))]

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return missing + missing_blur + texture_missing


def texture_curve(report: dict):
    """From tools.fit_expression_texture's report: (gains, overall agreement with that gain for every
    emotion, {emotion: agreement per gain}, agreement with the chosen gains, ceiling)."""
    by_gain = report["tuning_agreement_by_gain"]
    counts = report["tuning_faces_per_emotion_drawn"]
    gains = sorted(float(g) for g in by_gain)
    rows = {e: [by_gain[f"{g:g}"][e] for g in gains] for e in counts}
    total = sum(counts.values())
    overall = [sum(counts[e] * (rows[e][i] or 0.0) for e in counts) / total for i in range(len(gains))]
    return gains, overall, rows, report["tuning_agreement_chosen"], report["agent_reading_matches_judge_on_real_face"]


def plot_texture_gains(cx) -> bool:
    """Right panel: agreement against the texture's gain on the tuning faces, and what bounds it."""
    if not TEXTURE_REPORT.is_file():
        return False
    report = json.loads(TEXTURE_REPORT.read_text())
    if "agent_reading_matches_judge_on_real_face" not in report:
        return False
    gains, overall, rows, chosen, ceiling = texture_curve(report)
    for e, ys in rows.items():
        cx.plot(gains, [100 * (y or 0) for y in ys], lw=0.8, alpha=0.55, label=e)
    cx.plot(gains, [100 * y for y in overall], "o-", color="black", lw=2, label="all faces, one gain for every emotion")
    cx.axhline(100 * chosen, color="tab:red", lw=1.2, label=f"each emotion at its own gain (shipped): {100 * chosen:.1f} %")
    cx.axhline(100 * ceiling, color="tab:purple", ls="--", lw=1.2,
               label=f"agent's emotion = judge's, real face: {100 * ceiling:.1f} %")
    cx.axhline(TARGET_AGREEMENT, color="tab:green", lw=1.2, label=f"target {TARGET_AGREEMENT:g} %")
    cx.set_xlabel("expression texture gain (on the FER val faces the evaluation does not score)", fontsize=9)
    cx.set_ylabel("expression agreement, %")
    cx.set_ylim(0, 100)
    cx.set_title("Step 7: the emotion's shading, and what bounds it")
    cx.legend(loc="lower right", fontsize=6.5, framealpha=0.9)
    cx.grid(alpha=0.3)
    return True


def confusion(folder: str = CONFUSION_RUN):
    """(7, 7) counts: rows the judge's label of the original, columns its label of the anonymized face."""
    import numpy as np

    path = REPORTS / folder / "items.csv"
    if not path.is_file():
        return None
    counts = np.zeros((len(LABELS), len(LABELS)), int)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["part"] == "expression":
                counts[LABELS.index(row["original"]), LABELS.index(row["anonymized"])] += 1
    return counts


def plot_confusion(out: Path, folder: str = CONFUSION_RUN) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confusion(folder)
    if counts is None:
        return False
    share = counts / counts.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.55 else "black")
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(len(LABELS)), [f"{l} ({n})" for l, n in zip(LABELS, counts.sum(1))])
    ax.set_xlabel("judge's label of the anonymized face")
    ax.set_ylabel("judge's label of the original (faces)")
    ax.set_title(f"Where expressions go, % of each row ({folder.split('/')[-1]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.plot_campaign", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPORTS / "campaign" / "frontier.png")
    ap.add_argument("--confusion-out", type=Path, default=REPORTS / "campaign" / "expression_confusion.png")
    args = ap.parse_args(argv)
    missing = plot(args.out)
    for folder in missing:
        print(f"left out (no metrics.json with the figures): reports/{folder}", file=sys.stderr)
    print(f"-> {args.out}")
    if plot_confusion(args.confusion_out):
        print(f"-> {args.confusion_out}")
    else:
        print(f"no reports/{CONFUSION_RUN}/items.csv: rerun that evaluation for the confusion picture", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
