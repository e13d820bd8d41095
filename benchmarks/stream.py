"""The benchmark stream: synthesized speech commands with the keyword now and then, over noise.

Every engine and every model runs on the same audio.  It is made the way the project makes
its evaluation streams (training/streams.py ``make_stream``), from 1 s clips of the 30
Speech Commands words spoken by synthetic voices (espeak-ng / flite), so the detector sees
speech, pauses and noise rather than a synthetic signal; a fixed seed makes it the same
stream on every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kws_export.errors import KWSError

VOICES = 6            # voices per word: enough variety, synthesis stays well under a second
KEYWORD_EVERY_S = 10.0


def _clip(x: np.ndarray, samples: int) -> np.ndarray:
    """The spoken part of ``x`` centred in ``samples`` (cut if longer)."""
    from training.synth import speech_span

    a, b = speech_span(x)
    x = x[a:b][:samples]
    out = np.zeros(samples, np.float32)
    start = (samples - len(x)) // 2
    out[start:start + len(x)] = x
    return out


def speech_clips(keyword: str, sample_rate: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(clips [N, sample_rate], labels [N]: 1 = keyword): the keyword and every other
    Speech Commands word, each spoken by a few voices picked with ``seed``."""
    from training import synth

    voices = sorted(synth.list_voices(), key=lambda v: v.id)
    if not voices:
        raise KWSError("no speech synthesizer found for the benchmark stream: install espeak-ng or flite "
                       "(sudo apt-get install espeak-ng flite)")
    rng = np.random.default_rng(seed)
    pick = [voices[int(i)] for i in rng.choice(len(voices), size=min(VOICES, len(voices)), replace=False)]
    words = [keyword] + [w for w in synth.SPEECH_COMMANDS_WORDS if w != keyword]
    clips, labels = [], []
    for word in words:
        for voice in pick:
            x = synth.synthesize(word, voice, rate=float(rng.uniform(0.85, 1.15)))
            if synth.SAMPLE_RATE != sample_rate:
                from kws_export.audio import resample

                x = resample(x, synth.SAMPLE_RATE, sample_rate)
            if len(x):
                clips.append(_clip(x, sample_rate))
                labels.append(int(word == keyword))
    if not any(labels):
        raise KWSError(f"the speech synthesizer produced no audio for the keyword {keyword!r}")
    return np.stack(clips), np.asarray(labels)


def benchmark_stream(seconds: float, keyword: str, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """float32 mono audio of ``seconds`` at ``sample_rate``."""
    from training.streams import make_stream
    from training.synth import make_noise

    if not seconds > 0:
        raise KWSError(f"stream length must be positive, got {seconds} s")
    clips, labels = speech_clips(keyword, sample_rate, seed)
    noise = make_noise("pink_noise", min(float(seconds), 30.0), seed)  # looped by make_stream
    if sample_rate != 16000:
        from kws_export.audio import resample

        noise = resample(noise, 16000, sample_rate)
    audio, _spans = make_stream((clips, labels), duration_s=float(seconds), keyword_every_s=KEYWORD_EVERY_S,
                                seed=seed, noises=[noise], sample_rate=sample_rate)
    return audio.astype(np.float32)


def write_long_wav(path: Path, audio: np.ndarray, seconds: float, sample_rate: int) -> Path:
    """``audio`` repeated to ``seconds``, as a 16-bit wav (what detect.py's memory is measured on)."""
    from kws_export.audio import write_wav

    n = int(round(seconds * sample_rate))
    reps = -(-n // len(audio))
    return write_wav(path, np.tile(audio, reps)[:n], sample_rate)
