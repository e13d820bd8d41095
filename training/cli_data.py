"""Data commands of kws-train (synth)."""

from __future__ import annotations

import click


@click.command("synth")
@click.option("--keyword", required=True, help='Keyword text, e.g. "sheila" or "hey jarvis".')
@click.option("--out", "out", required=True, type=click.Path(path_type=str), help="Corpus directory to create.")
@click.option("--per-word", default=200, show_default=True, type=click.IntRange(min=1), help="Clips per negative word (commands and confusables).")
@click.option("--keyword-count", default=2000, show_default=True, type=click.IntRange(min=3), help="Clips of the keyword.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same wav bytes.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Parallel synthesis processes.")
@click.option("--force", is_flag=True, help="Replace a corpus in a non-empty --out (other files there are kept).")
@click.option("--phrases", default=2000, show_default=True, type=click.IntRange(min=0),
              help="Multi-word negative clips in _phrases_/ (half phonetically close to the keyword); 0: none.")
@click.option("--phrase-seconds", default=2.0, show_default=True, type=click.FloatRange(1.0, 10.0), help="Length of each phrase clip.")
@click.option("--near-fraction", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of the phrases that sound close to the keyword (rhymes, shared syllables, word pairs).")
@click.option("--vocabulary", default="auto", show_default=True, type=click.Choice(["auto", "wordfreq", "wamerican", "builtin"]),
              help="Word list of the phrases: wordfreq (frequency-ranked, extra [vocab]), Debian's wamerican, or built-in; auto: the first available.")
@click.option("--engines", default="espeak,flite", show_default=True,
              help="Comma-separated speech engines: espeak, flite, and with the [neural] extra piper, hibari.")
@click.option("--holdout-engine", default="auto", show_default=True,
              help="Engine whose voices all go to validation (never heard in training); auto: the last neural engine when "
                   "two are used, else none; 'none' to disable.")
@click.option("--engine-weight", "engine_weight", multiple=True, metavar="ENGINE=W",
              help="How often an engine's voices are drawn, relative to the others (defaults: espeak 0.7, flite 0.3, "
                   "piper 0.2, hibari 0.2); repeat for several.")
def synth(keyword: str, out: str, per_word: int, keyword_count: int, seed: int, workers: int, force: bool, phrases: int,
          phrase_seconds: float, near_fraction: float, vocabulary: str, engines: str, holdout_engine: str,
          engine_weight: tuple[str, ...]) -> None:
    """Synthesize a Speech Commands-style corpus for KEYWORD with espeak-ng and flite.

    Writes one folder of 1 s / 16 kHz / mono / 16-bit wavs per word (the keyword, the 30
    Speech Commands v0.01 words, confusable words derived from the keyword),
    _phrases_/ (longer multi-word negatives), _background_noise_/, validation_list.txt,
    testing_list.txt (voices disjoint from train), manifest.csv and synth.json.
    """
    from kws_export.errors import KWSError
    from training.synth import synth_corpus  # numpy/ctypes only when the command runs

    names = [e.strip() for e in engines.split(",") if e.strip()]
    if not names:
        raise KWSError("--engines: give at least one engine (espeak, flite, piper, hibari)")
    weights = {}
    for item in engine_weight:
        name, _, value = item.partition("=")
        try:
            w = float(value)
        except ValueError:
            w = float("nan")
        if name.strip() not in names or not w > 0 or w == float("inf"):
            raise KWSError(f"--engine-weight {item!r}: give ENGINE=W with one of --engines ({', '.join(names)}) and W > 0")
        weights[name.strip()] = w
    path = synth_corpus(out, keyword, per_word=per_word, keyword_count=keyword_count, seed=seed,
                        workers=workers, force=force, progress=True, engines=names, phrases=phrases,
                        phrase_seconds=phrase_seconds, near_fraction=near_fraction, vocabulary=vocabulary,
                        holdout_engine=holdout_engine, engine_weights=weights or None)
    click.echo(f"corpus for {keyword!r} written to {path}")


COMMANDS = [synth]
