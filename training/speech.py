"""Synthesized speech streams: kws-edge's default calibration and verification audio.

``kws_export`` makes no audio of its own (it depends on nothing in training); the installed
``kws-export`` command passes ``SYNTHESIZED`` to it (see ``training.export_cli``), as do
``scripts/export_all.py`` and the benchmarks.  A small corpus is rendered with
training.synth and strung into streams with training.streams: the keyword every few
seconds among other words, one stream over a noise bed at 10-30 dB SNR and one nearly
clean (35-60 dB), so calibration sees loud and near-silent frames alike.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np

from kws_export.audio import AudioSource, read_wav, resample
from kws_export.errors import KWSError

SYNTH_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "marvin", "seven")


@functools.lru_cache(maxsize=4)
def _synthetic_corpus(keyword: str, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Clips, labels and background noises of a small corpus made with training.synth
    (every clip rendered in a fresh process, so the bytes depend on the seed only)."""
    from training import synth  # numpy/ctypes and the voices only when audio is needed

    with tempfile.TemporaryDirectory(prefix="kws-calib-") as tmp:
        try:
            root = synth.synth_corpus(Path(tmp) / "corpus", keyword, per_word=2, keyword_count=16, seed=seed, workers=2,
                                      force=True, progress=False, words=SYNTH_WORDS, max_confusables=4, noise_seconds=20.0)
        except KWSError as exc:
            raise KWSError(f"cannot synthesize calibration audio ({exc}); pass --calib DIR of wavs") from None
        noise_dir = root / synth.NOISE_FOLDER
        clips, labels = [], []
        for wav in sorted(root.rglob("*.wav")):
            if wav.parent == noise_dir:
                continue
            clips.append(read_wav(wav, synth.SAMPLE_RATE)[0])
            labels.append(int(wav.parent.name == synth.slug(keyword)))
        noises = tuple(read_wav(w, synth.SAMPLE_RATE)[0] for w in sorted(noise_dir.glob("*.wav")))
    n = max(len(c) for c in clips)
    waves = np.stack([np.pad(c, (0, n - len(c))) for c in clips]).astype(np.float32)
    return waves, np.asarray(labels), noises


def synthetic_streams(keyword: str, sample_rate: int, seconds: float = 30.0, seed: int = 0) -> list[np.ndarray]:
    """Two streams of ``seconds`` each at ``sample_rate`` (see the module docstring); the
    corpus depends on the keyword and seed only and is made once per process."""
    from training.streams import make_stream

    waves, labels, noises = _synthetic_corpus(" ".join(keyword.split()), seed)
    out = []
    for i, snr in enumerate(((10.0, 30.0), (35.0, 60.0))):
        audio, _ = make_stream((waves, labels), duration_s=seconds, keyword_every_s=3.0, seed=seed * 7 + i,
                               noises=list(noises), snr_db=snr, gap_s=(0.1, 1.0))
        if sample_rate != 16000:
            audio = resample(audio, 16000, sample_rate)
        out.append(audio.astype(np.float32))
    return out


def synthetic_stream(keyword: str, sample_rate: int, seconds: float = 40.0, seed: int = 0) -> np.ndarray:
    """One stream of ``seconds``: the noisy and the clean synthetic stream back to back."""
    return np.concatenate(synthetic_streams(keyword, sample_rate, seconds / 2, seed))


SYNTHESIZED = AudioSource("synthesized speech", synthetic_streams)
