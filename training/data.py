"""Speech Commands v0.01/v0.02 folders as a torch Dataset (real recordings or `kws-train synth`).

Layout: one folder per word holding ``<speaker>_nohash_<n>.wav`` (or ``.flac``, as real corpora
ship them) files, ``_background_noise_/``
and optionally ``validation_list.txt`` / ``testing_list.txt``.  The keyword's folder (found by
the keyword's slug) is label 1, every other word label 0.  Splits come from the two lists, or
from a seeded speaker-disjoint random split when ``random_split_seed`` is given.

Folders starting with ``_`` are not words: ``SpeechCommands`` skips them.  The synthetic
corpus's ``_phrases_/`` holds longer (2 s) multi-word negatives that do not fit a 1 s clip
pipeline; ``phrase_clips`` / ``load_phrases`` list and load them with their split.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kws_export.audio import read_wav
from kws_export.errors import KWSError
from training.synth import MANIFEST, NOISE_FOLDER, PHRASE_FOLDER, TESTING_LIST, VALIDATION_LIST, slug

SPLITS = ("train", "validation", "test")
AUDIO_SUFFIXES = (".wav", ".flac")  # what soundfile reads losslessly; FLAC is half the size


def audio_files(folder: Path) -> list[Path]:
    """The audio files (``AUDIO_SUFFIXES``, any case) directly in ``folder``, sorted by name.
    Anything named like audio is listed, a folder too, so that reading it fails loudly with
    its name instead of the clip going missing without a word."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES), key=lambda p: p.name)


def speaker_of(path: str | os.PathLike) -> str:
    """Speaker id of a Speech Commands file: the hash before ``_nohash_`` (the voice id for
    synthetic clips); a file without the marker is its own speaker."""
    stem = Path(path).stem
    return stem.split("_nohash_", 1)[0] if "_nohash_" in stem else stem


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Pad with zeros at the end (as the seminar does) or cut to exactly ``n`` samples."""
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])


def random_speaker_split(speakers: list[str], labels: np.ndarray, seed: int, val_fraction: float = 0.1,
                         test_fraction: float = 0.1) -> dict[str, str]:
    """Speaker -> split, reproducible from ``seed``.  Speakers who said the keyword and those who
    did not are split separately so validation and test both hold keyword clips."""
    rng = np.random.default_rng(seed)
    keyword_speakers = sorted({s for s, lab in zip(speakers, labels) if lab == 1})
    others = sorted(set(speakers) - set(keyword_speakers))
    out: dict[str, str] = {}
    for group in (keyword_speakers, others):
        order = [group[i] for i in rng.permutation(len(group))]
        n = len(order)
        n_val = max(1, int(round(val_fraction * n))) if n >= 3 else 0
        n_test = max(1, int(round(test_fraction * n))) if n >= 3 else 0
        for i, s in enumerate(order):
            out[s] = "validation" if i < n_val else "test" if i < n_val + n_test else "train"
    return out


class SpeechCommands(Dataset):
    """``ds[i] -> (waveform float32 tensor [clip_samples], label)``.

    Attributes: ``files`` (paths), ``labels`` (int64 array), ``speakers`` and ``words`` (per
    item), ``keyword_folder``.  ``load_all()`` decodes the split once into memory (training
    runs many epochs on CPU; decoding wavs every epoch would be the bottleneck), after which
    ``__getitem__`` serves from memory too.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", keyword: str = "sheila", sample_rate: int = 16000,
                 clip_samples: int = 16000, random_split_seed: int | None = None, val_fraction: float = 0.1,
                 test_fraction: float = 0.1):
        self.root = Path(root)
        if split not in SPLITS:
            raise KWSError(f"unknown split {split!r} (use one of {', '.join(SPLITS)})")
        if not self.root.exists():
            raise KWSError(f"{self.root}: data folder not found")
        if not self.root.is_dir():
            raise KWSError(f"{self.root}: is not a folder (expected a Speech Commands style folder)")
        self.split = split
        self.keyword = keyword
        self.keyword_folder = slug(keyword)
        if not self.keyword_folder:
            raise KWSError(f"keyword {keyword!r} has no letters or digits (a-z, 0-9) to name its folder")
        self.sample_rate = int(sample_rate)
        self.clip_samples = int(clip_samples)
        folders = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
        if self.keyword_folder not in folders:
            shown = ", ".join(folders[:12]) + (" ..." if len(folders) > 12 else "")
            raise KWSError(f"{self.root}: no folder '{self.keyword_folder}' for keyword {keyword!r} (folders: {shown or 'none'})")
        rel: list[str] = []
        for word in folders:
            rel.extend(f"{word}/{p.name}" for p in audio_files(self.root / word))
        if not rel:
            raise KWSError(f"{self.root}: no .wav or .flac files in any word folder")
        all_labels = np.array([1 if r.split("/", 1)[0] == self.keyword_folder else 0 for r in rel], dtype=np.int64)
        all_speakers = [speaker_of(r) for r in rel]
        if random_split_seed is None:
            assigned = self._list_split(rel)
        else:
            by_speaker = random_speaker_split(all_speakers, all_labels, int(random_split_seed), val_fraction, test_fraction)
            assigned = [by_speaker[s] for s in all_speakers]
        keep = [i for i, s in enumerate(assigned) if s == split]
        self.relpaths = [rel[i] for i in keep]
        self.files = [self.root / r for r in self.relpaths]
        self.labels = all_labels[keep]
        self.speakers = [all_speakers[i] for i in keep]
        self.words = [r.split("/", 1)[0] for r in self.relpaths]
        self._cache: np.ndarray | None = None

    def _list_split(self, rel: list[str]) -> list[str]:
        lists = {}
        for name, split in ((VALIDATION_LIST, "validation"), (TESTING_LIST, "test")):
            path = self.root / name
            if not path.is_file():
                raise KWSError(f"{self.root}: no {name}; use a speaker-disjoint random split (random_split_seed / --split-seed)")
            try:
                lines = path.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise KWSError(f"{path}: cannot read the split list ({exc})") from None
            for line in lines:
                entry = line.strip().replace("\\", "/")
                if entry:
                    lists[entry] = split
        return [lists.get(r, "train") for r in rel]

    # Items ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> np.ndarray:
        """Decode item ``i``: mono, resampled, padded/cut to ``clip_samples`` (float32)."""
        x, _ = read_wav(self.files[i], self.sample_rate)
        return fit_length(x, self.clip_samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._cache[i] if self._cache is not None else self.load(i)
        return torch.from_numpy(np.array(x, dtype=np.float32)), int(self.labels[i])

    def load_all(self, workers: int = 2, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """All clips of the split as ``(float32 [N, clip_samples], int64 labels [N])``, decoded
        once (threads: libsndfile and numpy release the GIL) and kept for ``__getitem__``."""
        if self._cache is None:
            out = np.zeros((len(self), self.clip_samples), dtype=np.float32)

            def fill(i: int) -> None:
                out[i] = self.load(i)

            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(self), unit="wav", desc=f"load {self.split}", leave=False)
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for _ in pool.map(fill, range(len(self))):
                    if bar is not None:
                        bar.update(1)
            if bar is not None:
                bar.close()
            self._cache = out
        return self._cache, self.labels

    # Corpus-level helpers ---------------------------------------------------------------
    def background_noises(self) -> list[np.ndarray]:
        """float32 arrays of every wav/flac in ``_background_noise_/`` at ``sample_rate`` ([] if none)."""
        folder = self.root / NOISE_FOLDER
        if not folder.is_dir():
            return []
        return [read_wav(p, self.sample_rate)[0] for p in audio_files(folder)]

    def counts(self) -> tuple[int, int]:
        """(keyword clips, other clips) in this split."""
        pos = int(self.labels.sum())
        return pos, len(self) - pos

    def __repr__(self) -> str:
        pos, neg = self.counts()
        return (f"SpeechCommands({str(self.root)!r}, split={self.split!r}, keyword={self.keyword!r}: "
                f"{len(self)} clips, {pos} keyword, {neg} other, {len(set(self.speakers))} speakers)")


# Phrase negatives -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PhraseClip:
    """One clip of ``_phrases_/``: what was said, ``kind`` (``phrase``: random words,
    ``near_phrase``: sounds close to the keyword), its split, voice and engine."""

    path: Path
    text: str
    kind: str
    split: str
    voice: str
    engine: str


def phrase_clips(root: str | os.PathLike, split: str | None = None) -> list[PhraseClip]:
    """The multi-word negative clips of a synthetic corpus (``_phrases_/``, all label 0), from
    its ``manifest.csv``, optionally of one split (voice-disjoint like the word clips); [] for a
    corpus without phrases."""
    root = Path(root)
    if split is not None and split not in SPLITS:
        raise KWSError(f"unknown split {split!r} (use one of {', '.join(SPLITS)})")
    manifest = root / MANIFEST
    if not (root / PHRASE_FOLDER).is_dir():
        return []
    if not manifest.is_file():
        raise KWSError(f"{root}: has {PHRASE_FOLDER}/ but no {MANIFEST} (the phrases' splits are listed there)")
    out = []
    with open(manifest, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row.get("path", "").startswith(PHRASE_FOLDER + "/") or (split is not None and row["split"] != split):
                continue
            out.append(PhraseClip(root / row["path"], row["word"], row["kind"], row["split"], row["voice"], row["engine"]))
    return out


def load_phrases(root: str | os.PathLike, split: str | None = None, sample_rate: int = 16000,
                 seconds: float | None = None, workers: int = 2) -> tuple[np.ndarray, list[PhraseClip]]:
    """(float32 [N, samples], clips) of ``phrase_clips(root, split)``, each padded/cut to
    ``seconds`` (default: the corpus's phrase length, 2 s)."""
    clips = phrase_clips(root, split)
    if seconds is None:
        x, sr = read_wav(clips[0].path) if clips else (np.zeros(2 * sample_rate), sample_rate)
        seconds = len(x) / sr
    n = int(round(seconds * sample_rate))
    out = np.zeros((len(clips), n), dtype=np.float32)

    def fill(i: int) -> None:
        out[i] = fit_length(read_wav(clips[i].path, sample_rate)[0], n)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(fill, range(len(clips))))
    return out, clips
