"""Detection metrics: the seminar's AU-FA-FR (fast and exact), FRR at a fixed false-accept
rate, and streaming recall / false alarms per hour on long streams.

Conventions
-----------
* A clip is accepted at threshold ``t`` when ``prob >= t`` (the seminar's ``probs >= prob``).
* ``au_fa_fr`` follows the DLA seminar exactly: FA and FR are counts divided by the number of
  *all* clips, the curve is swept over the thresholds ``[0, sorted probs..., 1]`` and the
  area is ``-trapz(FR, x=FA)``.
* ``frr_at_far`` uses the usual per-class rates: FAR = false accepts / negatives,
  FRR = false rejects / positives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from kws_export.errors import KWSError



def _as_numpy(x, name: str) -> np.ndarray:
    """Accept a tensor, an array, a list of numbers or a list of batch tensors (the seminar
    collects per-batch tensors in a list) and return a flat float64/int64 array."""
    if isinstance(x, (list, tuple)) and x and all(isinstance(t, torch.Tensor) for t in x):
        x = torch.cat([t.reshape(-1) for t in x])
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x).reshape(-1)
    if arr.dtype == object:
        raise KWSError(f"{name}: expected numbers, got {arr.dtype}")
    return arr


def _check_pair(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p = _as_numpy(probs, "probs").astype(np.float64)
    y = _as_numpy(labels, "labels")
    if p.shape != y.shape:
        raise KWSError(f"probs and labels differ in length ({p.size} vs {y.size})")
    if p.size == 0:
        raise KWSError("no clips to score")
    if not np.isfinite(p).all():
        raise KWSError("probs contain NaN or Inf")
    yb = y.astype(np.int64)
    if not np.isin(yb, (0, 1)).all() or not np.array_equal(yb, y):
        raise KWSError("labels must be 0 (rest) or 1 (keyword)")
    return p, yb


def fa_fr_curve(probs, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seminar's curve: thresholds ``[0, sorted probs, 1]`` and, at each, FA and FR as
    fractions of all clips.  O(n log n): one sort per class, then a binary search per
    threshold, which counts ties exactly as the brute force's ``probs >= t`` does."""
    p, y = _check_pair(probs, labels)
    n = p.size
    thresholds = np.concatenate(([0.0], np.sort(p), [1.0]))
    neg = np.sort(p[y == 0])
    pos = np.sort(p[y == 1])
    # negatives with p >= t are false accepts; positives with p < t are false rejects
    fa = (neg.size - np.searchsorted(neg, thresholds, side="left")) / n
    fr = np.searchsorted(pos, thresholds, side="left") / n
    return thresholds, fa, fr


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """``np.trapz(y, x)`` (renamed across numpy versions, so spelled out here)."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def au_fa_fr(probs, labels) -> float:
    """Area under the FR-vs-FA curve, the seminar's metric (lower is better, 0 is perfect)."""
    _, fa, fr = fa_fr_curve(probs, labels)
    return -trapezoid(fr, fa) + 0.0  # + 0.0: a perfect score prints as 0, not -0


def frr_at_far(probs, labels, far: float = 0.01) -> tuple[float, float]:
    """(FRR, threshold) at the lowest threshold whose false-accept rate is <= ``far``.

    FAR and FRR are per-class rates.  Thresholds are the distinct scores plus one just
    above the maximum (accept nothing), so the constraint can always be met."""
    p, y = _check_pair(probs, labels)
    neg = np.sort(p[y == 0])
    pos = np.sort(p[y == 1])
    if neg.size == 0 or pos.size == 0:
        raise KWSError("frr_at_far needs both keyword and non-keyword clips")
    cands = np.unique(np.concatenate((p, [np.nextafter(p.max(), np.inf)])))
    far_at = (neg.size - np.searchsorted(neg, cands, side="left")) / neg.size
    ok = np.nonzero(far_at <= far + 1e-12)[0]
    t = float(cands[ok[0]])  # FAR is non-increasing in t: the first ok one has the best FRR
    frr = float(np.searchsorted(pos, t, side="left") / pos.size)
    return frr, t


# Streaming metrics ---------------------------------------------------------------------------
@dataclass
class StreamScore:
    threshold: float
    recall: float
    keywords: int
    hits: int
    detections: int
    false_alarms: int
    duplicate_detections: int
    hours: float
    false_alarms_per_hour: float
    precision: float
    f1: float

    def as_dict(self) -> dict:
        return asdict(self)


def detect_events(probs, step_seconds: float, threshold: float, refractory_s: float = 1.0) -> np.ndarray:
    """Event times (s) of a detector that fires when ``prob >= threshold`` and then stays
    silent for ``refractory_s`` (one event per utterance, as the runtime does).

    Probability i is stamped at the end of its step's audio: ``(i + 1) * step_seconds``."""
    p = _as_numpy(probs, "probs").astype(np.float64)
    above = np.nonzero(p >= threshold)[0]
    times = (above + 1) * step_seconds
    events: list[float] = []
    last = -np.inf
    for t in times:  # loops over above-threshold steps only
        if t - last >= refractory_s - 1e-9:
            events.append(t)
            last = t
    return np.asarray(events, dtype=np.float64)


def score_events(
    events: np.ndarray,
    spans: Sequence[tuple[float, float]],
    duration_s: float,
    threshold: float,
    tolerance_s: float = 1.0,
) -> StreamScore:
    """A keyword spoken over [start, end] counts as found when an event lands in
    [start, end + tolerance_s] (the model attends over a 1 s window, so it may answer up
    to a window after the word ends).  Events outside every such interval are false alarms;
    extra events inside an already-found interval are counted as duplicates, not as alarms."""
    spans_arr = np.asarray(list(spans), dtype=np.float64).reshape(-1, 2)
    found = np.zeros(len(spans_arr), dtype=bool)
    false_alarms = duplicates = 0
    for t in events:
        inside = np.nonzero((spans_arr[:, 0] <= t) & (t <= spans_arr[:, 1] + tolerance_s))[0]
        if inside.size == 0:
            false_alarms += 1
        elif found[inside].all():
            duplicates += 1
        else:
            found[inside[~found[inside]][0]] = True
    hours = duration_s / 3600.0
    hits = int(found.sum())
    recall = hits / len(spans_arr) if len(spans_arr) else float("nan")
    precision = hits / (hits + false_alarms) if hits + false_alarms else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return StreamScore(
        threshold=float(threshold), recall=float(recall), keywords=int(len(spans_arr)), hits=hits,
        detections=int(len(events)), false_alarms=int(false_alarms), duplicate_detections=int(duplicates),
        hours=float(hours), false_alarms_per_hour=float(false_alarms / hours) if hours > 0 else float("nan"),
        precision=float(precision), f1=float(f1),
    )


def streaming_metrics(
    probs,
    spans: Sequence[tuple[float, float]],
    step_seconds: float,
    threshold: float,
    refractory_s: float = 1.0,
    tolerance_s: float = 1.0,
    duration_s: float | None = None,
) -> StreamScore:
    """Recall and false alarms per hour of a per-step probability track over a stream whose
    keywords occupy ``spans`` (seconds)."""
    p = _as_numpy(probs, "probs")
    if duration_s is None:
        duration_s = p.size * step_seconds
    events = detect_events(p, step_seconds, threshold, refractory_s)
    return score_events(events, spans, duration_s, threshold, tolerance_s)


def choose_stream_threshold(
    probs,
    spans: Sequence[tuple[float, float]],
    step_seconds: float,
    refractory_s: float = 1.0,
    tolerance_s: float = 1.0,
    grid: Iterable[float] | None = None,
) -> tuple[float, StreamScore]:
    """The threshold that maximises event F1 on a (validation) stream.  Several thresholds
    usually tie on a plateau; the middle of the best plateau is the most robust choice for
    speech the model has not seen, so that is what is returned."""
    grid = np.round(np.arange(0.05, 0.96, 0.01), 2) if grid is None else np.asarray(list(grid))
    scores = [streaming_metrics(probs, spans, step_seconds, float(t), refractory_s, tolerance_s) for t in grid]
    f1 = np.array([s.f1 for s in scores])
    fa = np.array([s.false_alarms_per_hour for s in scores])
    # best F1 first, then fewest false alarms: among equals keep the central threshold
    best = np.nonzero((f1 >= f1.max() - 1e-12))[0]
    best = best[fa[best] <= fa[best].min() + 1e-12]
    pick = int(best[len(best) // 2])
    return float(grid[pick]), scores[pick]
