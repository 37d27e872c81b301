"""Verification figures from scores alone: the equal error rate and its threshold."""

from __future__ import annotations

import numpy as np


def equal_error_rate(genuine, impostor) -> tuple[float, float]:
    """(EER, threshold) for distances: a pair is called "same person" when its distance is <= threshold.

    The threshold sweeps every observed distance; at each, FRR = share of genuine pairs above it and
    FAR = share of impostor pairs at or below it. The EER is taken where the two cross (the mean of
    FAR and FRR at the threshold where they are closest), and the threshold there is returned.
    """
    g = np.sort(np.asarray(genuine, np.float64))
    i = np.sort(np.asarray(impostor, np.float64))
    if len(g) == 0 or len(i) == 0:
        raise ValueError("equal_error_rate needs genuine and impostor scores")
    t = np.unique(np.concatenate([g, i]))
    frr = 1.0 - np.searchsorted(g, t, side="right") / len(g)
    far = np.searchsorted(i, t, side="right") / len(i)
    k = int(np.argmin(np.abs(far - frr)))
    return float((far[k] + frr[k]) / 2), float(t[k])


def rates_at(genuine, impostor, threshold: float) -> dict:
    """False accept and false reject rates at ``threshold`` (distance <= threshold: same person)."""
    g, i = np.asarray(genuine), np.asarray(impostor)
    return {"far": float((i <= threshold).mean()), "frr": float((g > threshold).mean())}


def pair_distances(desc: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances of every genuine pair and every impostor pair among ``desc`` (each pair once)."""
    d = np.asarray(desc, np.float64)
    ids = np.asarray(ids)
    sq = (d * d).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * d @ d.T, 0))
    iu = np.triu_indices(len(d), 1)
    same = ids[iu[0]] == ids[iu[1]]
    return dist[iu][same], dist[iu][~same]
