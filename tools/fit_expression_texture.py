"""Fit the expression textures: what each emotion looks like in shading, averaged over many faces.

The generator draws a face from landmark contours, and contours do not carry the furrowed brow of
anger, the raised cheeks of a smile or the dark open mouth of surprise: those are shading, and the
independent expression judge reads them, so with the person's own landmarks the generator reached
only about 54 % agreement. This tool measures the missing shading once, offline.

1. Textures. For each of the seven FER2013 emotions: the mean aligned grey crop (tools.prepare_expressions,
   framed like the generator's crop) of the FER2013 train faces labelled with it that the agent's
   emotion classifier also reads as it with a score above ``--prototype`` (its plainest faces), minus
   the mean of the seven, and minus each texture's own mean over the face oval: brightness is the
   tone matcher's job (agent/composition/compose.py), and a texture that darkened the whole face would make it a
   different face, not a different expression.
2. Gains. The agent adds the texture of the emotion a face is drawn as, times that emotion's gain.
   Each gain is chosen from ``--gains`` on the FER2013 val faces that tools.evaluate does not score
   (with its default --fer-limit and --seed), by the independent judge's agreement there: the faces
   the evaluation scores never tune what it measures. The largest gain offered stays at 6 because
   beyond it the shading no longer looks like skin (sample sheet in the report folder).

Each texture is a mean over hundreds to thousands of faces, so it holds no one's face; what the
agent adds to a face depends only on the emotion it publishes for it anyway.

    python -m tools.fit_expression_texture      # -> models/expression_texture.npz, models/SHA256SUMS,
                                                #    reports/expression_texture.json and .png (about 4 min)

Needs FER2013 train as analysed by tools.prepare_expressions (its cache), and the shared FER2013 val
zip and judge for the gains. A rerun gives the same file.
"""

from __future__ import annotations

import argparse
import copy
import zipfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from agent.composition.guard import seal
from agent.config import Config, InferenceConfig
from agent.expression.classifier import EmotionClassifier
from agent.pipeline import Anonymizer
from agent.runtime.manifest import load_manifest
from agent.synthesis.align import CROP_SIZE
from agent.synthesis.render import RENDERED_INDICES
from agent.synthesis.shape import ShapeNormalizer, features
from agent.synthesis.texture import EXPRESSION_TEXTURE, ExpressionTexture
from agent.synthesis.topology import FACE_OVAL_POLYGON
from agent.types import EMOTIONS
from tools.datasets import CACHE, FER_VAL_ZIP
from tools.evaluation.expression import ExpressionJudge, fer_items, fer_rgb
from tools.model_files import MODELS, ROOT, update_sums
from tools.reports import write_report


def emotion_textures(crops: np.ndarray, labels: np.ndarray, oval: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) aligned grey crops and labels (EMOTIONS indices) -> ((7, S, S) textures, (7,) counts).

    Each emotion's mean crop minus the mean of the seven means: only what tells the emotions apart
    remains. With ``oval`` ((S, S) weights), each texture's weighted mean over it is removed too, so
    a texture changes shading, not the face's overall brightness.
    """
    crops = np.asarray(crops, np.float64)
    labels = np.asarray(labels)
    counts = np.array([(labels == c).sum() for c in range(len(EMOTIONS))])
    if (counts == 0).any():
        missing = [EMOTIONS[c] for c in np.flatnonzero(counts == 0)]
        raise ValueError(f"no faces of {missing}: every emotion needs faces to have a texture")
    means = np.stack([crops[labels == c].mean(0) for c in range(len(EMOTIONS))])
    textures = means - means.mean(0)
    if oval is not None:
        w = np.asarray(oval, np.float64)
        textures -= ((textures * w).sum((1, 2)) / w.sum())[:, None, None]
    return textures, counts


def face_oval(size: int) -> np.ndarray:
    """(size, size) float mask of the face oval the agent pastes, on the average face of the shape model."""
    shape = ShapeNormalizer(1.0)
    points = shape.average_landmarks(features({}, np.eye(4))[None])[0] * (size / CROP_SIZE)
    rows = np.searchsorted(RENDERED_INDICES, FACE_OVAL_POLYGON)
    mask = np.zeros((size, size), np.float32)
    cv2.fillPoly(mask, [np.round(points[rows] * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    return mask


def choose_gains(agree: np.ndarray, drawn: np.ndarray, gains: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per emotion, the gain under which the most faces drawn as it agree.

    ``agree``: (len(gains), N) bool, face n's verdict under gain g applied to every face; ``drawn``:
    (N,) the emotion index each face is drawn as. A face's texture is its own emotion's only, so each
    emotion's gain can be chosen on its own faces. Ties and emotions with no faces take the smallest
    gain. Returns ((7,) gains, (len(gains), 7) agreement rates)."""
    agree, drawn = np.asarray(agree, bool), np.asarray(drawn)
    rates = np.full((len(gains), len(EMOTIONS)), np.nan)
    chosen = np.zeros(len(EMOTIONS))
    for e in range(len(EMOTIONS)):
        m = drawn == e
        if not m.any():
            chosen[e] = min(gains)
            continue
        rates[:, e] = agree[:, m].mean(1)
        best = max(range(len(gains)), key=lambda i: (rates[i, e], -gains[i]))
        chosen[e] = gains[best]
    return chosen, rates


def prototype_faces(crops: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Which faces the agent's classifier reads as their own label with a score above ``threshold``."""
    spec = load_manifest().emotion
    clf = EmotionClassifier(InferenceConfig(backend="onnxruntime"), spec.classifier, spec.flip_tta)
    scores = np.concatenate([clf.probabilities(crops[i:i + 512]) for i in tqdm(range(0, len(crops), 512), desc="classify")])
    return scores[np.arange(len(labels)), labels] > threshold


def tune_gains(textures: np.ndarray, gains: list[float], fer_limit: int, seed: int) -> dict:
    """Anonymize the FER val faces tools.evaluate does not score once, then judge them under each gain."""
    scored = {name for name, _ in fer_items(fer_limit, seed)}
    names = [name for name, _ in fer_items(0, seed) if name not in scored]
    judge = ExpressionJudge()
    # The shipped pipeline without its texture: each candidate gain is applied to the same generated faces.
    untextured = load_manifest().override(generator={"texture_gain": 0.0})
    anonymizer = Anonymizer(Config(inference=InferenceConfig(threads=1)), mode="image", manifest=untextured)
    tex = ExpressionTexture.from_arrays(textures, np.ones(len(EMOTIONS)))
    cases = []
    try:
        with zipfile.ZipFile(FER_VAL_ZIP) as z:
            for name in tqdm(names, desc="anonymize FER val (not scored)", unit="img"):
                rgb = fer_rgb(z, name)  # exactly as tools.evaluate feeds the method
                r = anonymizer.process(rgb)
                if r.faces and r.jobs[0].drawn_emotion is not None:  # as tools.evaluate: faces MediaPipe finds
                    cases.append((rgb, judge.label(rgb), r.jobs, r.analysis))
    finally:
        anonymizer.close()
    drawn = np.array([int(np.argmax(jobs[0].drawn_emotion)) for _, _, jobs, _ in cases])
    agree = np.zeros((len(gains), len(cases)), bool)
    g_spec = untextured.generator
    for gi, g in enumerate(gains):
        for n, (rgb, original, jobs, analysis) in enumerate(tqdm(cases, desc=f"judge gain {g:g}", leave=False)):
            shaded = []
            for j in jobs:
                j = copy.copy(j)
                if j.generated is not None and j.drawn_emotion is not None:
                    j.generated = tex.apply(j.generated, j.drawn_emotion, g)
                shaded.append(j)
            out = seal(rgb, analysis, shaded, g_spec.feather, g_spec.tone_match, g_spec.surround)
            agree[gi, n] = judge.label(np.asarray(out.pixels)) == original
    chosen, rates = choose_gains(agree, drawn, gains)
    picked = np.array([agree[gains.index(chosen[e]), n] for n, e in enumerate(drawn)])
    # A texture can only carry the emotion the agent reads: where its reading of the real face differs
    # from the judge's, shading the face as the agent's emotion cannot make the judge agree. The share
    # of faces where the two readings match bounds what any gain can reach.
    same = np.array([EMOTIONS[e] == original for e, (_, original, _, _) in zip(drawn, cases)])
    return {"chosen": chosen, "faces": len(cases), "faces_per_emotion": np.bincount(drawn, minlength=len(EMOTIONS)),
            "rates": rates, "agreement_untextured": float(agree[gains.index(0.0)].mean()) if 0.0 in gains else None,
            "agreement_chosen": float(picked.mean()), "readings_match": float(same.mean()),
            "readings_match_per_emotion": [float(same[drawn == e].mean()) if (drawn == e).any() else None
                                           for e in range(len(EMOTIONS))],
            "agreement_chosen_where_readings_match": float(picked[same].mean()),
            "agreement_chosen_where_they_differ": float(picked[~same].mean())}


def texture_sheet(textures: np.ndarray, gains: np.ndarray | None = None, scale: int = 3) -> np.ndarray:
    """The textures side by side (times their gains), grey 128 = nothing added, with their names."""
    shown = textures * (np.asarray(gains)[:, None, None] if gains is not None else 1.0)
    span = max(float(np.abs(shown).max()), 1e-6)
    tiles = []
    for i, (name, t) in enumerate(zip(EMOTIONS, shown)):
        tile = np.clip(128 + t * (127 / span), 0, 255).astype(np.uint8)
        tile = cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        label = np.full((18, tile.shape[1]), 255, np.uint8)
        text = name if gains is None else f"{name} x{gains[i]:g}"
        cv2.putText(label, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1, cv2.LINE_AA)
        tiles.append(np.vstack([tile, label]))
    return np.hstack(tiles)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.fit_expression_texture", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fer", type=Path, default=CACHE / "fer_train.npz", help="FER2013 train as analysed by tools.prepare_expressions")
    ap.add_argument("--prototype", type=float, default=0.8,
                    help="average only faces the agent's classifier reads as their label with a score above this")
    ap.add_argument("--gains", default="0,1,2,3,4,5,6", help="gains each emotion's is chosen from")
    ap.add_argument("--fer-limit", type=int, default=1000, help="tools.evaluate's --fer-limit: its faces are left out of tuning")
    ap.add_argument("--seed", type=int, default=0, help="tools.evaluate's --seed")
    ap.add_argument("--models", type=Path, default=MODELS)
    ap.add_argument("--report", type=Path, default=ROOT / "reports/expression_texture.json")
    args = ap.parse_args(argv)
    if not args.fer.is_file():
        ap.error(f"{args.fer} not found: run python -m tools.prepare_expressions first")
    gains = sorted({float(g) for g in args.gains.split(",")} | {0.0})
    with np.load(args.fer) as d:
        if tuple(str(c) for c in d["classes"]) != EMOTIONS:
            ap.error(f"{args.fer} labels {list(d['classes'])}, not {list(EMOTIONS)}")
        found = d["found"]  # only faces MediaPipe aligned: the others' crops are framed by a median guess
        crops, labels = d["crops"][found], d["labels"][found]
    plain = prototype_faces(crops, labels, args.prototype)
    textures, counts = emotion_textures(crops[plain], labels[plain], face_oval(crops.shape[1]))
    tuned = tune_gains(textures, gains, args.fer_limit, args.seed)

    args.models.mkdir(parents=True, exist_ok=True)
    out = args.models / EXPRESSION_TEXTURE
    np.savez(out, textures=textures.astype(np.float32), gains=tuned["chosen"].astype(np.float32),
             emotions=np.array(EMOTIONS), faces=counts.astype(np.int32))
    update_sums(args.models, [out.name])
    shipped = ExpressionTexture(args.models)  # loads as the agent will, checksum included
    sheet = args.report.with_suffix(".png")
    sheet.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(sheet), texture_sheet(shipped.textures, shipped.gains))
    write_report(args.report, {
        "source": args.fer.name, "faces_aligned": int(len(crops)), "prototype_threshold": args.prototype,
        "faces_averaged_per_emotion": {e: int(n) for e, n in zip(EMOTIONS, counts)},
        "crop_size": int(textures.shape[1]),
        "grey_levels_rms": {e: round(float(np.sqrt((t * t).mean())), 2) for e, t in zip(EMOTIONS, textures)},
        "gains_offered": gains,
        "gains": {e: float(g) for e, g in zip(EMOTIONS, tuned["chosen"])},
        "tuning_faces": tuned["faces"],
        "tuning_faces_per_emotion_drawn": {e: int(n) for e, n in zip(EMOTIONS, tuned["faces_per_emotion"])},
        "tuning_agreement_by_gain": {f"{g:g}": {e: (None if np.isnan(r) else round(float(r), 4))
                                                 for e, r in zip(EMOTIONS, row)} for g, row in zip(gains, tuned["rates"])},
        "tuning_agreement_untextured": tuned["agreement_untextured"],
        "tuning_agreement_chosen": tuned["agreement_chosen"],
        "agent_reading_matches_judge_on_real_face": tuned["readings_match"],
        "agent_reading_matches_judge_per_emotion_drawn": dict(zip(EMOTIONS, tuned["readings_match_per_emotion"])),
        "tuning_agreement_chosen_where_readings_match": tuned["agreement_chosen_where_readings_match"],
        "tuning_agreement_chosen_where_they_differ": tuned["agreement_chosen_where_they_differ"],
        "model": out.name, "size_kb": round(out.stat().st_size / 1e3, 1), "picture": sheet.name,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
