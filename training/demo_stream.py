"""The course's demo recording, synthesized: speech, the keyword, more speech (~10-20 s).

    python -m training.demo_stream --out demo.wav [--keyword sheila] [--seed 0]

Two tracks of sentences by different synthetic voices with the keyword, said by a third,
glued between them over a quiet noise floor.  Needs only espeak-ng and/or flite (no corpus).
Prints where the keyword is, in seconds.
"""

from __future__ import annotations


import click
import numpy as np

from kws_export.audio import write_wav
from kws_export.cli_support import run_click_and_exit
from kws_export.errors import KWSError
from training.synth import (SAMPLE_RATE, SENTENCES, _words, available_engines, check_keyword, list_voices, make_noise, run_isolated,
                            speech_span, synthesize)

# Voices that sound most like a person; the demo picks among the ones installed.
PREFERRED = ("flite-slt", "flite-rms", "flite-awb", "flite-kal16", "espeak-en-us+m3", "espeak-en-gb+f2",
             "espeak-en-us+f4", "espeak-en-gb-x-rp+m1", "espeak-en-us-nyc+m7", "espeak-en-029+f5")


def _rms_normalise(x: np.ndarray, db: float) -> np.ndarray:
    a, b = speech_span(x)
    rms = float(np.sqrt(np.mean(x[a:b].astype(np.float64) ** 2))) if b > a else 0.0
    return x * (10 ** (db / 20) / rms) if rms > 0 else x


def _track(text_pool: list[str], voice, rng: np.random.Generator, min_s: float) -> np.ndarray:
    parts, total = [], 0
    order = rng.permutation(len(text_pool))
    for k in order:
        x = synthesize(text_pool[int(k)], voice, rate=float(rng.uniform(0.9, 1.1)))
        a, b = speech_span(x)
        parts += [x[a:b], np.zeros(int(rng.uniform(0.25, 0.5) * SAMPLE_RATE), np.float32)]
        total += b - a
        if total >= min_s * SAMPLE_RATE:
            break
    return np.concatenate(parts[:-1])


def make_demo(keyword: str = "sheila", seed: int = 0, voices: list[str] | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """(audio float32 at 16 kHz, (start_s, end_s) of the keyword), the same for a seed.
    ``voices``: voice ids to draw the three talkers from (e.g. a corpus's held-out test
    voices) instead of the PREFERRED ones."""
    return run_isolated(_demo_audio, keyword, seed, list(voices) if voices else None)


def _demo_audio(keyword: str, seed: int, only: list[str] | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    engines = available_engines()
    if not engines:
        raise KWSError("no speech synthesizer found: install one with `sudo apt-get install espeak-ng flite`")
    if "espeak" in engines:
        check_keyword(keyword)
    voices = {v.id: v for v in list_voices(engines)}
    if only is not None:
        preferred = [voices[i] for i in only if i in voices]
        if not preferred:
            raise KWSError(f"none of the demo voices is installed ({', '.join(only[:3])} ...)")
    else:
        preferred = [voices[i] for i in PREFERRED if i in voices] or list(voices.values())
    rng = np.random.default_rng(seed)
    pick = [preferred[int(i)] for i in rng.choice(len(preferred), size=min(3, len(preferred)), replace=False)]
    while len(pick) < 3:
        pick.append(pick[-1])
    sentences = [s for s in SENTENCES if not set(_words(s)) & set(_words(keyword))]
    first = _rms_normalise(_track(sentences, pick[0], rng, 5.0), -22.0)
    second = _rms_normalise(_track(sentences, pick[2], rng, 5.0), -22.0)
    kw = synthesize(keyword, pick[1], rate=0.9)
    a, b = speech_span(kw)
    if b <= a:
        raise KWSError(f"keyword {keyword!r} yields no audio from {pick[1].id}")
    kw = _rms_normalise(kw[a:b], -20.0)
    gap = lambda s: np.zeros(int(s * SAMPLE_RATE), np.float32)  # noqa: E731
    pieces = [gap(0.6), first, gap(float(rng.uniform(0.5, 0.8))), kw, gap(float(rng.uniform(0.5, 0.8))), second, gap(0.8)]
    start = sum(len(p) for p in pieces[:3])
    audio = np.concatenate(pieces).astype(np.float64)
    floor = make_noise("pink_noise", len(audio) / SAMPLE_RATE, seed).astype(np.float64)
    audio += floor * 10 ** ((-55.0 + 20.0) / 20)  # make_noise is at -20 dBFS: bring it to -55
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    return audio, (start / SAMPLE_RATE, (start + len(kw)) / SAMPLE_RATE)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Wav file to write (16 kHz, mono, 16-bit).")
@click.option("--keyword", default="sheila", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
def cli(out: str, keyword: str, seed: int) -> None:
    """Synthesize the demo stream: speech, KEYWORD, speech."""
    audio, (a, b) = make_demo(keyword, seed)
    write_wav(out, audio, SAMPLE_RATE)
    click.echo(f"{out}: {len(audio) / SAMPLE_RATE:.1f} s, keyword {keyword!r} at {a:.2f}-{b:.2f} s")


def main(argv: list[str] | None = None) -> None:
    run_click_and_exit(cli, "demo_stream", argv)


if __name__ == "__main__":
    main()
