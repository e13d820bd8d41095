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
def synth(keyword: str, out: str, per_word: int, keyword_count: int, seed: int, workers: int, force: bool) -> None:
    """Synthesize a Speech Commands-style corpus for KEYWORD with espeak-ng and flite.

    Writes one folder of 1 s / 16 kHz / mono / 16-bit wavs per word (the keyword, the 30
    Speech Commands v0.01 words, confusable words derived from the keyword),
    _background_noise_/, validation_list.txt, testing_list.txt (voices disjoint from train),
    manifest.csv and synth.json.
    """
    from training.synth import synth_corpus  # numpy/ctypes only when the command runs

    path = synth_corpus(out, keyword, per_word=per_word, keyword_count=keyword_count, seed=seed,
                        workers=workers, force=force, progress=True)
    click.echo(f"corpus for {keyword!r} written to {path}")


COMMANDS = [synth]
