"""Real recorded speech: the development set (``../shared/real``, docs/real_speech.md).

A *development* set: measure on it, choose checkpoints and thresholds with it, never train on
it (nothing here is reachable from a gradient step, an augmentation pool or a mining pass).

Layout (``DIR`` = ``--real DIR``, default ``../shared/real`` relative to the repository root)::

    DIR/speech_commands_test_v0.02/<word>/<speaker>_nohash_<n>.flac   1 s clips, 35 word folders
    DIR/speech_commands_test_v0.02/_silence_/*.flac                   noise only, not speech
    DIR/wake_phrases/<phrase>/*.flac                                  2-3 s clips (alexa, jarvis, view_glass)

The keyword's folder is its slug (``"view glass"`` -> ``view_glass``) in either part; every other
speech clip is a negative.

Clip metric (``evaluate_clips``): AU-FA-FR (the seminar's), recall at 0.1% and 1% false accepts
and the figures at the model's threshold, over the speech clips of the part that holds the
keyword: for a Speech Commands word all 4,312 ``speech_commands_test_v0.02`` speech clips (the
issue's definition); for a wake phrase all speech clips of both parts (its positives live in
``wake_phrases``, and the Speech Commands words are its everyday negatives).  A scorer sees
windows of its own length: a clip no longer than the window is zero-padded at the end (the
seminar's padding) and scored once; a longer clip is scored on windows every ``CLIP_HOP_S``
(the last one ending with the clip) and keeps its highest probability, as a detector would.
``_silence_`` is reported on its own (highest probability, clips accepted); for a Speech
Commands keyword the wake phrases are reported the same way as extra real negatives.

Real stream (``build_stream``, ``evaluate_stream``): every speech clip of both parts, shuffled
with a seed and concatenated (about 2.07 h, 16 "sheila"), played through a streaming scorer that
is never reset.  A detection (probability >= threshold, then ``REFRACTORY_S`` of silence, as
``runtime/detect.py`` does) inside a keyword clip or up to ``TOLERANCE_S`` after it is a hit,
any other a false alarm.  Reported at the model's threshold and as a sweep: the lowest
threshold with at most 2 / 1 / 0.5 false alarms per hour and the hits there.

Two-stage detection (``verified_events``, ``evaluate_verified``): the offline twin of
``runtime.detect.VerifiedDetector`` on the two models' tracks of the same real stream (a cheap
first stage proposes at a low trigger, the verifier confirms), swept over the verifier's
threshold, with the verifications per hour it costs.

Scorers are small interfaces so any model family plugs in:
* ``ClipScorer(score, window_samples)``: ``score(float32 [N, window_samples]) -> [N]``;
* a stream scorer: ``process(samples) -> probabilities of the steps completed``, ``flush()``,
  ``step_seconds`` and ``threshold`` (the model's own, or None) - ``DetectorStream`` runs a
  streaming ONNX export through ``runtime.detect.Detector`` (model-agnostic, the shipped
  path), ``training.evaluate.CRNNStreamer`` a CRNN checkpoint in process, and
  ``CallableStream(fn, step_seconds)`` wraps a function of a whole stream.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from kws_export.audio import read_wav
from kws_export.errors import KWSError
from training.data import AUDIO_SUFFIXES, audio_files
from training.metrics import au_fa_fr, detect_events, frr_at_far, score_events

SC_DIR = "speech_commands_test_v0.02"
WAKE_DIR = "wake_phrases"
SILENCE_DIR = "_silence_"
DEFAULT_REAL = Path("..") / "shared" / "real"  # relative to the repository root
CLIP_HOP_S = 0.1
REFRACTORY_S = 1.0
TOLERANCE_S = 1.0
PIECE_SECONDS = 60.0
FAR_POINTS = {"0.1pct": 0.001, "1pct": 0.01}
SWEEP_FA_PER_HOUR = (2.0, 1.0, 0.5)
CURVE_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)  # the trade-off at a glance
# Two-stage detection defaults (runtime.detect.VerifiedDetector's): a first-stage trigger low
# enough to pass nearly every keyword, the verifier's last 8 steps (640 ms) checked 4 steps
# (320 ms) after the trigger, when the word has been heard.
VERIFY_TRIGGER = 0.2
VERIFY_WINDOW_STEPS = 8
VERIFY_DELAY_STEPS = 4
SWEEP_GRID = np.unique(np.round(np.concatenate([np.arange(0.01, 0.99, 0.01), [0.99, 0.995, 0.998, 0.999]]), 3))


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def default_real_dir() -> Path:
    """``../shared/real`` next to the repository (a user's clone usually has none)."""
    return (repo_root() / DEFAULT_REAL).resolve()


def shown_dir(root: str | Path) -> str:
    """How a dev-set folder is recorded in metadata and cards: the default one as
    ``../shared/real`` (where it lies beside any clone), another one as given."""
    try:
        if Path(root).resolve() == default_real_dir():
            return DEFAULT_REAL.as_posix()
    except OSError:
        pass
    return str(root)


def real_absent_reason(path: str | Path | None = None) -> str | None:
    """None when the dev set is there, else why not (for test skips)."""
    root = Path(path) if path is not None else default_real_dir()
    if not (root / SC_DIR).is_dir():
        return f"real dev set not found at {root} (needs {SC_DIR}/; see docs/real_speech.md)"
    return None


def slug(keyword: str) -> str:
    """The keyword's folder name: lower case, runs of other characters -> '_'."""
    from training.synth import slug as synth_slug

    return synth_slug(keyword)


# The dev set --------------------------------------------------------------------------------------
@dataclass
class RealDevSet:
    """The listing of the dev set for one keyword (decoded on ``load()``, int16 in memory)."""

    root: Path
    keyword: str
    keyword_folder: str
    keyword_part: str            # SC_DIR or WAKE_DIR: where the positives are
    sample_rate: int
    relpaths: list               # speech clips, SC words then wake phrases, sorted
    parts: np.ndarray            # per speech clip: 0 = SC_DIR, 1 = WAKE_DIR
    labels: np.ndarray           # per speech clip: 1 = keyword
    silence: list                # relpaths of the _silence_ clips
    audio: list | None = None    # int16 arrays, speech clips then silence clips

    def __len__(self) -> int:
        return len(self.relpaths)

    @property
    def clip_indices(self) -> np.ndarray:
        """The speech clips the clip metric scores (see the module docstring)."""
        if self.keyword_part == SC_DIR:
            return np.flatnonzero(self.parts == 0)
        return np.arange(len(self))

    def load(self, workers: int = 2) -> "RealDevSet":
        """Decode every clip once (FLAC or wav, resampled if needed) as int16."""
        if self.audio is None:
            paths = [self.root / r for r in (*self.relpaths, *self.silence)]

            def read(p: Path) -> np.ndarray:
                x, _ = read_wav(p, self.sample_rate)
                return np.round(np.clip(x, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)

            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                self.audio = list(pool.map(read, paths))
        return self

    def wave(self, i: int) -> np.ndarray:
        """Speech clip ``i`` as float32 in [-1, 1]."""
        return self._audio()[i].astype(np.float32) / np.float32(32768.0)

    def silence_wave(self, j: int) -> np.ndarray:
        return self._audio()[len(self) + j].astype(np.float32) / np.float32(32768.0)

    def lengths(self) -> np.ndarray:
        return np.array([a.size for a in self._audio()[: len(self)]], dtype=np.int64)

    def _audio(self) -> list:
        if self.audio is None:
            self.load()
        return self.audio

    def describe(self) -> dict:
        idx = self.clip_indices
        return {"dir": shown_dir(self.root), "keyword": self.keyword, "keyword_folder": f"{self.keyword_part}/{self.keyword_folder}",
                "speech_clips": len(self), "speech_commands_clips": int((self.parts == 0).sum()),
                "wake_phrase_clips": int((self.parts == 1).sum()), "keyword_clips": int(self.labels.sum()),
                "clip_metric_clips": int(idx.size), "silence_clips": len(self.silence)}


def _word_folders(part: Path) -> list[str]:
    return sorted(d.name for d in part.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))


def open_real(path: str | Path | None, keyword: str, sample_rate: int = 16000) -> RealDevSet:
    """List the dev set at ``path`` (None: ``../shared/real`` next to the repository) for
    ``keyword``; bad folders and keywords without clips are one-line KWSErrors."""
    root = Path(path) if path is not None else default_real_dir()
    shown = str(path) if path is not None else f"{root} (the default ../shared/real)"
    if not root.exists():
        raise KWSError(f"{shown}: real dev set not found (give --real DIR)")
    if not root.is_dir():
        raise KWSError(f"{shown}: is not a folder (expected the real dev set: {SC_DIR}/ and {WAKE_DIR}/)")
    sc = root / SC_DIR
    if not sc.is_dir():
        raise KWSError(f"{shown}: not the real dev set layout (no {SC_DIR}/ folder)")
    folder = slug(keyword)
    if not folder:
        raise KWSError(f"keyword {keyword!r} has no letters or digits (a-z, 0-9) to name its folder")
    rel, parts = [], []
    folders: dict[str, list[str]] = {}
    for k, part in enumerate((SC_DIR, WAKE_DIR)):
        base = root / part
        if not base.is_dir():
            continue
        folders[part] = _word_folders(base)
        for word in folders[part]:
            files = audio_files(base / word)
            rel.extend(f"{part}/{word}/{p.name}" for p in files)
            parts.extend([k] * len(files))
    if not any(r.startswith(SC_DIR + "/") for r in rel):
        raise KWSError(f"{shown}: not the real dev set layout (no .flac or .wav clips in {SC_DIR}/<word>/)")
    homes = [part for part in (SC_DIR, WAKE_DIR) if folder in folders.get(part, [])]
    if not homes:
        words = ", ".join(w for ws in folders.values() for w in ws)
        raise KWSError(f"{shown}: no clips for keyword {keyword!r} (no folder '{folder}' in {SC_DIR}/ or {WAKE_DIR}/; "
                       f"folders: {words})")
    if len(homes) > 1:
        raise KWSError(f"{shown}: keyword folder '{folder}' is in both {SC_DIR}/ and {WAKE_DIR}/")
    home = homes[0]
    labels = np.array([1 if r.split("/")[:2] == [home, folder] else 0 for r in rel], dtype=np.int64)
    if not labels.any():
        raise KWSError(f"{shown}: no clips for keyword {keyword!r} ({home}/{folder}/ holds no .flac or .wav)")
    silence_dir = sc / SILENCE_DIR
    silence = [f"{SC_DIR}/{SILENCE_DIR}/{p.name}" for p in audio_files(silence_dir)] if silence_dir.is_dir() else []
    return RealDevSet(root, keyword, folder, home, int(sample_rate), rel, np.array(parts, dtype=np.int64), labels, silence)


def open_negatives(path: str | Path, keyword: str, sample_rate: int = 16000) -> RealDevSet:
    """Real recordings that never say ``keyword``, as a dev set without positives: every .flac /
    .wav under ``path`` (recursively), all labelled negative.  Skipped: folders starting with
    "." or "_" (silence, background noise: the dev set's stream skips them too) and folders
    whose name shares a word with the keyword (``wake_phrases/view_glass`` for "view": they may
    say it).  The real dev set itself qualifies when it does not hold the keyword."""
    root = Path(path)
    if not root.is_dir():
        raise KWSError(f"{path}: negatives folder not found (give a folder of .wav / .flac recordings without the keyword)")
    words = set(slug(keyword).split("_"))
    rel: list[str] = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith((".", "_")) and not words & set(slug(x).split("_")))
        here = Path(d)
        rel.extend(str((here / f).relative_to(root)) for f in files if Path(f).suffix.lower() in AUDIO_SUFFIXES)
    if not rel:
        raise KWSError(f"{path}: no .wav or .flac recordings in it (folders starting with '.' or '_', or named with a "
                       f"word of the keyword, are skipped)")
    rel.sort()
    n = len(rel)
    return RealDevSet(root, keyword, slug(keyword), "", int(sample_rate), rel, np.zeros(n, np.int64), np.zeros(n, np.int64), [])


def sample_hours(dev: RealDevSet, hours: float, seed: int = 0) -> np.ndarray:
    """Indices of a seeded random subset of ``dev``'s recordings at most ``hours`` long in all
    (all of them when they are shorter; at least one), in their listed order."""
    lengths = dev.lengths()
    order = np.random.default_rng(seed).permutation(lengths.size)
    keep = np.cumsum(lengths[order]) <= hours * 3600 * dev.sample_rate
    keep[0] = True
    return np.sort(order[keep])


# Clips ------------------------------------------------------------------------------------------
@dataclass
class ClipScorer:
    """Keyword probabilities of fixed-length windows: ``score(float32 [N, window_samples]) -> [N]``."""

    score: Callable[[np.ndarray], np.ndarray]
    window_samples: int
    sample_rate: int = 16000
    batch_size: int = 256
    pad: str = "end"  # where a short clip's zeros go: "end" (the seminar's), "start" (a detector's
    # view: the clip has just been heard, as the embedding model is trained)


def crnn_clip_scorer(model, device="cpu", batch_size: int = 512) -> ClipScorer:
    """A CRNN's offline clip model (each window on its own, GRU from zero)."""
    import torch

    model = model.to(device).eval()

    @torch.no_grad()
    def score(batch: np.ndarray) -> np.ndarray:
        return model.keyword_prob(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    c = model.config
    return ClipScorer(score, int(c.clip_samples), int(c.sample_rate), batch_size)


def embedding_clip_scorer(model, batch_size: int = 64) -> ClipScorer:
    """The speech-embedding model: its 1.99 s window ending with the clip (zeros before it)."""
    def score(batch: np.ndarray) -> np.ndarray:
        return model.keyword_prob(batch).numpy()

    c = model.config
    return ClipScorer(score, int(c.clip_samples), int(c.sample_rate), batch_size, pad="start")


def clip_scorer_for(model, device="cpu") -> ClipScorer:
    from kws_export.embedding import EmbeddingKWS

    return embedding_clip_scorer(model) if isinstance(model, EmbeddingKWS) else crnn_clip_scorer(model, device)


def clip_windows(x: np.ndarray, window: int, hop: int, pad: str = "end") -> np.ndarray:
    """[W, window] windows of one clip: the clip zero-padded (at the end, or at the start)
    when it is no longer than ``window``, else windows every ``hop`` samples, the last one
    ending with the clip."""
    x = np.asarray(x, dtype=np.float32)
    if x.size <= window:
        out = np.zeros((1, window), np.float32)
        if pad == "start":
            out[0, window - x.size:] = x
        else:
            out[0, : x.size] = x
        return out
    starts = list(range(0, x.size - window + 1, hop))
    if starts[-1] != x.size - window:
        starts.append(x.size - window)
    return np.stack([x[s:s + window] for s in starts])


def score_clips(scorer: ClipScorer, waves: Sequence[np.ndarray] | Iterator[np.ndarray], hop_s: float = CLIP_HOP_S) -> np.ndarray:
    """One probability per clip: the highest over its windows (one window for clips that fit)."""
    hop = max(1, int(round(hop_s * scorer.sample_rate)))
    best: list[float] = []
    buf: list[np.ndarray] = []
    owners: list[int] = []

    def run() -> None:
        probs = np.asarray(scorer.score(np.concatenate(buf)), dtype=np.float64).reshape(-1)
        if probs.size != len(owners):
            raise KWSError(f"clip scorer returned {probs.size} probabilities for {len(owners)} windows")
        for o, p in zip(owners, probs):
            best[o] = max(best[o], float(p))
        buf.clear()
        owners.clear()

    for i, x in enumerate(waves):
        w = clip_windows(x, scorer.window_samples, hop, scorer.pad)
        best.append(-math.inf)
        buf.append(w)
        owners.extend([i] * len(w))
        if len(owners) >= scorer.batch_size:
            run()
    if owners:
        run()
    return np.asarray(best, dtype=np.float64)


def _recall_at_far(probs: np.ndarray, labels: np.ndarray, far: float) -> dict:
    frr, t = frr_at_far(probs, labels, far)
    neg = probs[labels == 0]
    return {"recall": 1.0 - frr, "threshold": t, "false_accepts": int((neg >= t).sum()), "negatives": int(neg.size)}


def clip_figures(probs: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict:
    """AU-FA-FR, recall at the FAR points and (given a threshold) the figures there."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    pos, neg = int(labels.sum()), int((labels == 0).sum())
    if pos == 0 or neg == 0:
        raise KWSError(f"the real clips need keyword and other clips (have {pos} and {neg})")
    out = {"clips": int(labels.size), "keyword_clips": pos, "au_fa_fr": au_fa_fr(probs, labels)}
    for name, far in FAR_POINTS.items():
        r = _recall_at_far(probs, labels, far)
        out[f"recall_at_{name}_far"] = r["recall"]
        out[f"threshold_at_{name}_far"] = r["threshold"]
        out[f"false_accepts_at_{name}_far"] = r["false_accepts"]
    if threshold is not None:
        hit = probs >= threshold
        out["at_threshold"] = {"threshold": float(threshold), "recall": float(hit[labels == 1].mean()),
                               "false_accepts": int(hit[labels == 0].sum()), "far": float(hit[labels == 0].mean())}
    return out


def _negatives(probs: np.ndarray, threshold: float | None) -> dict:
    out = {"clips": int(probs.size), "max_prob": float(probs.max()) if probs.size else None}
    if threshold is not None:
        out["accepted_at_threshold"] = int((probs >= threshold).sum())
    return out


def evaluate_clips(dev: RealDevSet, scorer: ClipScorer, threshold: float | None = None,
                   extra_negatives: bool = True) -> dict:
    """The clip metric over ``dev.clip_indices``; with ``extra_negatives`` also the silence
    clips (and, for a Speech Commands keyword, the wake phrases: ~17k windows, the slow part)
    as negatives reported on their own."""
    if scorer.sample_rate != dev.sample_rate:
        raise KWSError(f"the scorer runs at {scorer.sample_rate} Hz, the dev set was read at {dev.sample_rate} Hz")
    dev.load()
    idx = dev.clip_indices
    probs = score_clips(scorer, (dev.wave(int(i)) for i in idx))
    out = {**clip_figures(probs, dev.labels[idx], threshold), "window_samples": scorer.window_samples, "hop_s": CLIP_HOP_S}
    if extra_negatives:
        out["silence"] = _negatives(score_clips(scorer, (dev.silence_wave(j) for j in range(len(dev.silence)))), threshold)
        wake = np.flatnonzero(dev.parts == 1)
        if dev.keyword_part == SC_DIR and wake.size:
            out["wake_phrases_negatives"] = _negatives(score_clips(scorer, (dev.wave(int(i)) for i in wake)), threshold)
    return out


# The stream ---------------------------------------------------------------------------------------
@dataclass
class RealStream:
    """A play order of speech clips; the audio is made piece by piece (``pieces``)."""

    order: np.ndarray      # speech-clip indices in play order
    starts: np.ndarray     # first sample of each played clip
    lengths: np.ndarray
    spans: list            # (start_s, end_s) of each keyword clip, in play order
    sample_rate: int
    seed: int

    @property
    def samples(self) -> int:
        return int(self.lengths.sum())

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def pieces(self, dev: RealDevSet, piece_samples: int) -> Iterator[np.ndarray]:
        """The concatenated stream as float32 pieces of ``piece_samples`` (the last shorter);
        only one piece is ever in memory."""
        buf = np.empty(piece_samples, np.float32)
        fill = 0
        for i in self.order:
            x = dev.wave(int(i))
            pos = 0
            while pos < x.size:
                n = min(piece_samples - fill, x.size - pos)
                buf[fill:fill + n] = x[pos:pos + n]
                fill += n
                pos += n
                if fill == piece_samples:
                    yield buf.copy()
                    fill = 0
        if fill:
            yield buf[:fill].copy()


def build_stream(dev: RealDevSet, seed: int = 0, indices: Sequence[int] | None = None) -> RealStream:
    """Every speech clip (or those of ``indices``), shuffled with ``seed``, back to back."""
    idx = np.arange(len(dev)) if indices is None else np.asarray(list(indices), dtype=np.int64)
    if idx.size == 0:
        raise KWSError("the real stream needs at least one clip")
    order = idx[np.random.default_rng(seed).permutation(idx.size)]
    lengths = dev.lengths()[order]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    sr = dev.sample_rate
    spans = [(float(s) / sr, float(s + n) / sr) for i, s, n in zip(order, starts, lengths) if dev.labels[i] == 1]
    return RealStream(order, starts, lengths, spans, sr, int(seed))


class DetectorStream:
    """A streaming ONNX export through ``runtime.detect.Detector`` (smooth 1, no refractory
    inside: events are made from the probabilities here, with the same rule)."""

    def __init__(self, path: str | Path, threads: int = 1):
        from runtime.detect import DetectError, Detector

        try:
            self.detector = Detector(str(path), threshold=None, smooth=1, refractory_ms=0.0, keep_history=True,
                                     threads=threads)
        except DetectError as exc:
            raise KWSError(str(exc)) from None
        d = self.detector
        self.path = str(path)
        self.keyword = d.keyword
        self.sample_rate = d.sample_rate
        self.step_seconds = d.step_samples / d.sample_rate
        self.threshold = float(d.threshold)
        self.patience = int(d.patience)  # the model's kws.patience (applied to the track in stream_figures)
        self._seen = 0

    def _new(self) -> np.ndarray:
        p = self.detector.probs
        out = p[self._seen:]
        self._seen = p.size
        return out

    def process(self, samples) -> np.ndarray:
        self.detector.process(np.asarray(samples, dtype=np.float32))
        return self._new()

    def flush(self) -> np.ndarray:
        self.detector.flush()
        return self._new()


class CallableStream:
    """``fn(float32 [samples]) -> per-step probabilities`` of a whole stream, stamped at the
    end of each step's audio.  Buffers the stream and calls ``fn`` once at ``flush`` (memory:
    the whole stream as float32; use it for short streams or models without a streamer)."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], step_seconds: float, threshold: float | None = None):
        self.fn, self.step_seconds, self.threshold = fn, float(step_seconds), threshold
        self._parts: list[np.ndarray] = []

    def process(self, samples) -> np.ndarray:
        self._parts.append(np.asarray(samples, dtype=np.float32).reshape(-1).copy())
        return np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        audio = np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)
        self._parts = []
        return np.asarray(self.fn(audio), dtype=np.float32).reshape(-1)


def stream_track(dev: RealDevSet, stream: RealStream, scorer, piece_seconds: float = PIECE_SECONDS) -> np.ndarray:
    """Per-step probabilities of the whole stream, never reset between clips or pieces."""
    piece = max(1, int(round(piece_seconds * stream.sample_rate)))
    parts = [np.asarray(scorer.process(x), dtype=np.float32) for x in stream.pieces(dev, piece)]
    parts.append(np.asarray(scorer.flush(), dtype=np.float32))
    return np.concatenate(parts)


def patience_scores(probs: np.ndarray, patience: int) -> np.ndarray:
    """The value a threshold meets at each step when the detector waits for ``patience``
    steps in a row at or above it (``runtime.detect.Detector``'s patience): the minimum of
    the last ``patience`` probabilities, -inf before ``patience`` steps have been seen."""
    probs = np.asarray(probs, np.float64)
    if patience <= 1 or probs.size == 0:
        return probs
    out = np.full(probs.shape, -np.inf)
    if probs.size >= patience:
        out[patience - 1:] = np.lib.stride_tricks.sliding_window_view(probs, patience).min(axis=1)
    return out


def add_sweep(out: dict, at: Callable[[float], dict], threshold: float | None, choose_fa_per_hour: float | None = None,
              what: str = "threshold") -> dict:
    """``out`` with ``sweep`` (``at``, the figures at a threshold, over SWEEP_GRID: for each
    false-alarm target of SWEEP_FA_PER_HOUR and ``choose_fa_per_hour`` the lowest grid
    threshold from which on every higher one stays within it) and ``at_threshold`` (at
    ``threshold``, or at the one ``choose_fa_per_hour`` picks, with ``threshold_source``)."""
    grid = [at(float(t)) for t in SWEEP_GRID]
    fa = np.array([g["false_alarms_per_hour"] for g in grid])
    sweep, chosen = [], None
    for target in sorted({*SWEEP_FA_PER_HOUR, *([choose_fa_per_hour] if choose_fa_per_hour is not None else [])}, reverse=True):
        tail_ok = np.flip(np.logical_and.accumulate(np.flip(fa <= target + 1e-12)))
        first = np.flatnonzero(tail_ok)
        row = {"max_false_alarms_per_hour": target}
        row.update(grid[int(first[0])] if first.size else {"threshold": None, "hits": 0, "recall": 0.0})
        sweep.append(row)
        if target == choose_fa_per_hour:
            if row["threshold"] is None:
                raise KWSError(f"no {what} up to {SWEEP_GRID[-1]} keeps the real stream at <= {target} false alarms per hour")
            chosen = row["threshold"]
    if chosen is not None:
        threshold = chosen
        out["threshold_source"] = f"real stream: lowest {what} with <= {choose_fa_per_hour:g} false alarms per hour"
    if threshold is not None:
        out["at_threshold"] = at(float(threshold))
    out["sweep"] = sweep
    return out


def stream_figures(probs: np.ndarray, stream: RealStream, step_seconds: float, threshold: float | None,
                   choose_fa_per_hour: float | None = None, patience: int = 1) -> dict:
    """Hits, recall and false alarms per hour at ``threshold`` and the sweep.  With
    ``choose_fa_per_hour`` the threshold is chosen here instead: the sweep's lowest with at
    most that many false alarms per hour (``threshold_source`` says so).  ``patience``: a
    detection needs that many steps in a row at or above the threshold."""
    duration = stream.seconds
    expected = math.ceil(stream.samples / (step_seconds * stream.sample_rate) - 1e-9)
    if abs(probs.size - expected) > 1:
        raise KWSError(f"the stream scorer returned {probs.size} steps for {expected} steps of audio")
    probs = patience_scores(probs, patience)

    def at(t: float) -> dict:
        events = detect_events(probs, step_seconds, t, REFRACTORY_S)
        s = score_events(events, stream.spans, duration, t, TOLERANCE_S).as_dict()
        return {k: s[k] for k in ("threshold", "hits", "keywords", "recall", "false_alarms", "false_alarms_per_hour",
                                  "duplicate_detections", "detections")}

    out = {"hours": duration / 3600.0, "clips": int(stream.order.size), "keywords": len(stream.spans),
           "seed": stream.seed, "step_seconds": step_seconds, "refractory_s": REFRACTORY_S, "tolerance_s": TOLERANCE_S,
           "patience": int(patience)}
    add_sweep(out, at, threshold, choose_fa_per_hour)
    out["curve"] = [{k: r[k] for k in ("threshold", "hits", "false_alarms_per_hour")}
                    for r in (at(t) for t in CURVE_THRESHOLDS)]
    return out


def evaluate_stream(dev: RealDevSet, scorer, threshold: float | None = None, seed: int = 0,
                    indices: Sequence[int] | None = None, piece_seconds: float = PIECE_SECONDS,
                    choose_fa_per_hour: float | None = None, patience: int | None = None,
                    tracks: dict | None = None) -> dict:
    """The real stream through ``scorer`` at ``threshold`` (default: the scorer's own, or the
    one ``choose_fa_per_hour`` picks on this stream) and ``patience`` (default: the scorer's
    own, else 1)."""
    if getattr(scorer, "sample_rate", dev.sample_rate) != dev.sample_rate:
        raise KWSError(f"the stream model runs at {scorer.sample_rate} Hz, the dev set was read at {dev.sample_rate} Hz")
    stream = build_stream(dev.load(), seed, indices)
    probs = stream_track(dev, stream, scorer, piece_seconds)
    if tracks is not None:  # the caller keeps the per-step probabilities (e.g. for the two-stage figures)
        tracks["stream"] = probs
    t = threshold if threshold is not None else getattr(scorer, "threshold", None)
    n = patience if patience is not None else int(getattr(scorer, "patience", 1))
    return stream_figures(probs, stream, float(scorer.step_seconds), t, choose_fa_per_hour, n)


# One checkpoint on the whole dev set (what `kws-train eval --real` and `report --real` run) --------
def evaluate_real(model, dev: RealDevSet, threshold: float | None, onnx: str | Path | None = None,
                  stream: bool = True, seed: int = 0, device="cpu", choose_fa_per_hour: float | None = None,
                  threads: int = 1, extra_negatives: bool = True, patience: int | None = None,
                  tracks: dict | None = None) -> dict:
    """Clips through ``model``'s offline clip model; the stream through the streaming ONNX
    export ``onnx`` (runtime Detector) when given, else through the model in process
    (``CRNNStreamer``, the same semantics).  ``threshold`` is the model's; the ONNX's own
    ``kws.threshold`` is used for its stream when ``threshold`` is None.  With
    ``choose_fa_per_hour`` the threshold is chosen on the real stream and used for the clip
    figures too.  ``tracks``: a dict that receives the stream's per-step probabilities as
    ``"stream"``.  Returns the ``"real"`` section of the eval JSON."""
    from training.evaluate import streamer_for

    out: dict = {"dev_set": dev.describe()}
    if choose_fa_per_hour is not None and not stream:
        raise KWSError("choosing the threshold on the real stream needs the stream (drop --no-real-stream)")
    source = None
    if stream:
        if onnx is not None:
            scorer = DetectorStream(onnx, threads=threads)
            if slug(scorer.keyword) != dev.keyword_folder:
                raise KWSError(f"{onnx}: detects {scorer.keyword!r}, the evaluation is for {dev.keyword!r}")
            model_name = str(onnx)
        else:
            scorer = streamer_for(model, device)
            model_name = f"checkpoint, in-process streaming (training.evaluate.{type(scorer).__name__})"
        s = evaluate_stream(dev, scorer, threshold, seed, choose_fa_per_hour=choose_fa_per_hour, patience=patience,
                            tracks=tracks)
        s["model"] = model_name
        if choose_fa_per_hour is not None:
            threshold, source = s["at_threshold"]["threshold"], s["threshold_source"]
        elif threshold is None:
            threshold = scorer.threshold
        out["stream"] = s
    out["clips"] = evaluate_clips(dev, clip_scorer_for(model, device), threshold, extra_negatives)
    out["threshold"] = threshold
    if source is not None:
        out["threshold_source"] = source
    return out


# Two-stage detection: runtime.detect.VerifiedDetector's offline twin ------------------------------
def verified_events(first: np.ndarray, verifier: np.ndarray, trigger: float, threshold: float,
                    window_steps: int = VERIFY_WINDOW_STEPS, delay_steps: int = VERIFY_DELAY_STEPS,
                    refractory_steps: int = 13) -> tuple[np.ndarray, np.ndarray, int]:
    """(event steps, the verifier's probability at each, verifications) of the two-stage
    detector, from both models' per-step tracks of one stream (the verifier's as if it ran on
    every step: a finite-window verifier replayed from its initial state gives the same).  A
    first-stage step at or above ``trigger`` from ``next_allowed`` on is a candidate i; at
    j = i + delay_steps (or the last step) the verifier's max over steps j - window_steps + 1
    .. j decides; an event at j silences candidates until j + refractory_steps, a rejection
    until max(i + window_steps, j + 1)."""
    first = np.asarray(first, np.float64).reshape(-1)
    verifier = np.asarray(verifier, np.float64).reshape(-1)
    if verifier.size < first.size:
        raise KWSError(f"the verifier's track has {verifier.size} steps, the first stage's {first.size}")
    n = first.size
    steps, probs, verifications, next_allowed = [], [], 0, 0
    for i in np.flatnonzero(first >= trigger):  # candidates only
        if i < next_allowed:
            continue
        j = min(n - 1, int(i) + delay_steps)
        verifications += 1
        best = float(verifier[max(0, j - window_steps + 1):j + 1].max())
        if best >= threshold:
            steps.append(j)
            probs.append(best)
            next_allowed = j + refractory_steps
        else:
            next_allowed = max(int(i) + window_steps, j + 1)
    return np.asarray(steps, np.int64), np.asarray(probs, np.float64), verifications


def verified_figures(first: np.ndarray, verifier: np.ndarray, stream: RealStream, step_seconds: float,
                     threshold: float | None, trigger: float = VERIFY_TRIGGER, window_steps: int = VERIFY_WINDOW_STEPS,
                     delay_steps: int = VERIFY_DELAY_STEPS, choose_fa_per_hour: float | None = None,
                     replay_steps: int | None = None) -> dict:
    """``stream_figures`` for the two-stage detector: hits and false alarms per hour at the
    verifier's ``threshold`` (or the one ``choose_fa_per_hour`` picks) and the sweep over it,
    plus how often the verifier runs (``replay_steps``: verifier steps per verification)."""
    hours = stream.seconds / 3600.0
    refractory_steps = math.ceil(REFRACTORY_S / step_seconds - 1e-9)

    def at(t: float) -> dict:
        steps, _, n = verified_events(first, verifier, trigger, t, window_steps, delay_steps, refractory_steps)
        s = score_events((steps + 1) * step_seconds, stream.spans, stream.seconds, t, TOLERANCE_S).as_dict()
        row = {k: s[k] for k in ("threshold", "hits", "keywords", "recall", "false_alarms", "false_alarms_per_hour",
                                 "duplicate_detections", "detections")}
        row["verifications_per_hour"] = n / hours
        if replay_steps:
            row["verifier_step_share"] = n * replay_steps / max(1, first.size)  # of the steps it would run always
        return row

    out = {"hours": hours, "keywords": len(stream.spans), "seed": stream.seed, "step_seconds": step_seconds,
           "trigger": trigger, "window_steps": window_steps, "delay_steps": delay_steps,
           "refractory_steps": refractory_steps, "replay_steps": replay_steps}
    return add_sweep(out, at, threshold, choose_fa_per_hour, "verifier threshold")


def evaluate_verified(dev: RealDevSet, first_onnx: str | Path, verifier_onnx: str | Path, threshold: float | None = None,
                      seed: int = 0, trigger: float = VERIFY_TRIGGER, window_steps: int = VERIFY_WINDOW_STEPS,
                      delay_steps: int = VERIFY_DELAY_STEPS, choose_fa_per_hour: float | None = None,
                      threads: int = 1, indices: Sequence[int] | None = None,
                      verifier_track: np.ndarray | None = None, first_track: np.ndarray | None = None) -> dict:
    """The real stream through two streaming exports (``runtime.detect.Detector`` each, never
    reset) and the two-stage figures of ``verified_figures`` (threshold default: the
    verifier's ``kws.threshold``).  ``verifier_track`` / ``first_track``: a model's
    probabilities on this stream when already computed (e.g. the verifier's checkpoint in
    process, the first stage's export by ``evaluate_real``), instead of streaming it here."""
    first, verifier = DetectorStream(first_onnx, threads), DetectorStream(verifier_onnx, threads)
    for d in (first, verifier):
        if slug(d.keyword) != dev.keyword_folder:
            raise KWSError(f"{d.path}: detects {d.keyword!r}, the evaluation is for {dev.keyword!r}")
    if abs(first.step_seconds - verifier.step_seconds) > 1e-9:
        raise KWSError(f"{verifier_onnx}: steps {verifier.step_seconds * 1000:g} ms, {first_onnx} "
                       f"{first.step_seconds * 1000:g} ms: a verifier must step with the detector")
    from runtime.detect import DetectError, verifier_warmup_steps

    try:  # what runtime.detect.VerifiedDetector replays per verification (and refuses)
        replay = verifier_warmup_steps(verifier.detector.model) + window_steps
    except DetectError as exc:
        raise KWSError(str(exc)) from None
    stream = build_stream(dev.load(), seed, indices)
    a = stream_track(dev, stream, first) if first_track is None else first_track
    b = stream_track(dev, stream, verifier) if verifier_track is None else verifier_track
    t = verifier.threshold if threshold is None and choose_fa_per_hour is None else threshold
    out = verified_figures(a, b, stream, first.step_seconds, t, trigger, window_steps, delay_steps, choose_fa_per_hour,
                           replay)
    out.update({"model": str(first_onnx), "verifier": str(verifier_onnx)})
    if threshold is None and choose_fa_per_hour is None:
        out["threshold_source"] = f"{verifier_onnx}: kws.threshold"
    return out
