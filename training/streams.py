"""Long test streams: negative words over background noise with the keyword inserted now and then.

``make_stream`` is what streaming recall and false alarms per hour are measured on (and what
soak tests run through the detector): clips of one split placed one after another with random
pauses, a keyword clip roughly every ``keyword_every_s`` seconds, one continuous noise bed at
a random SNR.  It returns the audio and the (start_s, end_s) of every spoken keyword.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from kws_export.errors import KWSError
from training.synth import speech_span


def fade_ramp(clip_samples: int, sample_rate: int) -> np.ndarray:
    """A 5 ms raised-cosine ramp (at most a quarter clip): glued clips must not click."""
    fade = min(clip_samples // 4, int(0.005 * sample_rate))
    return (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))).astype(np.float32)


def place_clip(audio: np.ndarray, clip: np.ndarray, start: int, ramp: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int, int]:
    """Add ``clip`` into ``audio`` at ``start``, faded in and out by ``ramp``; return the
    faded clip and its speech span (a, b) in samples from the clip's start."""
    c = clip.copy()
    if len(ramp):
        c[:len(ramp)] *= ramp
        c[-len(ramp):] *= ramp[::-1]
    audio[start:start + len(c)] += c
    a, b = speech_span(c, sample_rate)
    return c, a, b


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _clips_and_labels(source) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    if hasattr(source, "load_all"):
        waves, labels = source.load_all()
        noises = source.background_noises() if hasattr(source, "background_noises") else []
    else:
        try:
            waves, labels = source
        except (TypeError, ValueError):
            raise KWSError("make_stream needs a SpeechCommands dataset or a (clips, labels) pair") from None
        noises = []
    waves = _to_numpy(waves)
    if waves.dtype == np.int16:
        waves = waves.astype(np.float32) / 32768.0
    labels = _to_numpy(labels).reshape(-1)
    if waves.ndim != 2 or len(waves) != len(labels) or len(waves) == 0:
        raise KWSError(f"make_stream needs clips (N, samples) with N labels, got {waves.shape} and {labels.shape}")
    return waves.astype(np.float32, copy=False), labels, list(noises)


def make_stream(source, *, duration_s: float = 60.0, keyword_every_s: float | None = 10.0, seed: int = 0,
                noises: Sequence[np.ndarray] | None = None, sample_rate: int = 16000, snr_db: tuple[float, float] = (10.0, 30.0),
                gap_s: tuple[float, float] = (0.3, 2.0), keyword_label: int = 1) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """(audio float32 [duration_s * sample_rate], [(start_s, end_s) of each keyword]).

    ``source``: a SpeechCommands dataset (its clips and background noises) or ``(clips,
    labels)``.  Keywords come every ``keyword_every_s`` x U(0.5, 1.5) seconds; ``None`` or 0
    makes a keyword-free stream for false-alarm counting.  Spans are the spoken part of the
    inserted clip (10 ms energy frames within 40 dB of its loudest), not the whole second.
    """
    waves, labels, own_noises = _clips_and_labels(source)
    noises = list(own_noises if noises is None else noises)
    rng = np.random.default_rng(seed)
    total = int(round(duration_s * sample_rate))
    if total <= 0:
        raise KWSError(f"stream duration must be positive (got {duration_s} s)")
    t = waves.shape[1]
    pos = np.nonzero(labels == keyword_label)[0]
    neg = np.nonzero(labels != keyword_label)[0]
    every = float(keyword_every_s or 0.0)
    if every > 0 and len(pos) == 0:
        raise KWSError("cannot insert keywords: the clips hold no keyword clip")
    audio = np.zeros(total, dtype=np.float32)
    ramp = fade_ramp(t, sample_rate)
    spans: list[tuple[float, float]] = []
    powers: list[float] = []
    cursor = int(rng.uniform(0.2, 1.0) * sample_rate)
    next_keyword = every * rng.uniform(0.5, 1.5) * sample_rate if every > 0 else math.inf
    while cursor + t <= total:
        is_keyword = cursor >= next_keyword
        if is_keyword:
            i = int(pos[rng.integers(len(pos))])
            next_keyword = cursor + every * rng.uniform(0.5, 1.5) * sample_rate
        elif len(neg):
            i = int(neg[rng.integers(len(neg))])
        else:
            i = -1  # only keyword clips given: leave the slot to the noise
        if i >= 0:
            c, a, b = place_clip(audio, waves[i], cursor, ramp, sample_rate)
            if b > a:
                powers.append(float(np.mean(c[a:b].astype(np.float64) ** 2)))
                if is_keyword:
                    spans.append((float((cursor + a) / sample_rate), float((cursor + b) / sample_rate)))
        cursor += t + int(rng.uniform(*gap_s) * sample_rate)
    noise = _noise_bed(noises, total, rng)
    p_sig = float(np.mean(powers)) if powers else 10 ** (-40 / 10)
    snr = rng.uniform(*snr_db)
    noise *= math.sqrt(p_sig / 10 ** (snr / 10) / max(float(np.mean(noise.astype(np.float64) ** 2)), 1e-12))
    audio += noise
    np.clip(audio, -1.0, 1.0, out=audio)
    return audio, spans


def _noise_bed(noises: Sequence[np.ndarray], total: int, rng: np.random.Generator) -> np.ndarray:
    """One background noise file looped from a random point, or white noise if none."""
    usable = [np.asarray(n, dtype=np.float32).reshape(-1) for n in noises if np.asarray(n).size > 0]
    if not usable:
        return rng.standard_normal(total).astype(np.float32)
    a = usable[int(rng.integers(len(usable)))]
    return np.resize(np.roll(a, -int(rng.integers(a.size))), total).astype(np.float32)
