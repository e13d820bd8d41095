"""Broad negatives: a large English vocabulary, random multi-word phrases drawn from it, and
phrases that sound close to the keyword, computed from the keyword's text.

Real speech is mostly frequent words strung together, so a model trained on a few dozen
single words false-alarms on ordinary talk.  ``load_vocabulary`` gives a frequency-ranked
word list (``wordfreq`` when installed, else Debian's ``wamerican`` word list, else the words
of this project's own sentences); ``random_phrase`` strings 2-5 of its words together, drawn
by a flattened Zipf law (half the draws come from the ~1,000 most frequent words).

``near_phrases`` finds, through espeak-ng's phonemes, words and word pairs that share sounds
with the keyword: strong rhymes (``tequila`` for "sheila"), words ending in its last syllable
(``delilah``), words starting like it (``sheep``, ``shield``), words holding a 3-phoneme run of
it, pairs split across a word boundary (``she laughed``, ``shy law``) and, for a multi-word
keyword, each word alone or replaced by a neighbour (``say nova``, ``hey over`` for "hey nova").
``contains_keyword`` keeps the keyword (and anything espeak-ng pronounces with the keyword's
phonemes inside) out of every negative.

Everything is deterministic: lists are built in a fixed order and phrases are drawn from a
numpy Generator the caller seeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

WAMERICAN = Path("/usr/share/dict/american-english")
VOCAB_SOURCES = ("auto", "wordfreq", "wamerican", "builtin")
DEFAULT_VOCAB_SIZE = 20000
_WORD_RE = re.compile(r"^[a-z]+(?:'[a-z]+)?$")
_SINGLE_LETTERS = {"a", "i"}


@dataclass(frozen=True)
class Vocabulary:
    """Words, most frequent first when ``ranked``; ``weights`` sum to 1 (the draw probabilities)."""

    words: tuple[str, ...]
    weights: np.ndarray = field(repr=False, compare=False)
    source: str
    version: str
    ranked: bool

    def draw(self, rng: np.random.Generator, n: int) -> list[str]:
        idx = rng.choice(len(self.words), size=n, p=self.weights)
        return [self.words[int(i)] for i in idx]


def _clean(words: Sequence[str]) -> list[str]:
    out, seen = [], set()
    for w in words:
        if not _WORD_RE.match(w) or (len(w) == 1 and w not in _SINGLE_LETTERS) or w in seen:
            continue
        if not re.search(r"[aeiouy]", w):  # acronyms and abbreviations ("mr", "st") are read letter by letter
            continue
        seen.add(w)
        out.append(w)
    return out


def _zipf_weights(n: int, offset: float = 50.0) -> np.ndarray:
    """p(rank) ~ 1 / (rank + offset): Zipf's law, flattened at the top so "the" is not 10 % of words."""
    w = 1.0 / (np.arange(n, dtype=np.float64) + offset)
    return w / w.sum()


def _builtin_words() -> list[str]:
    from training.synth import SENTENCES, SPEECH_COMMANDS_WORDS

    return _clean([w for s in SENTENCES for w in re.findall(r"[a-z']+", s.lower())] + list(SPEECH_COMMANDS_WORDS))


def load_vocabulary(size: int = DEFAULT_VOCAB_SIZE, source: str = "auto") -> Vocabulary:
    """The English vocabulary phrases are drawn from.

    ``source``: ``wordfreq`` (the ``wordfreq`` package: frequency-ranked, the best; install with
    ``pip install 'kws-edge[vocab]'``), ``wamerican`` (``/usr/share/dict/american-english``
    from Debian's ``wamerican``: not ranked, so shorter words are drawn more often, as short
    words are the frequent ones), ``builtin`` (~300 words of this project's sentences), or
    ``auto``: the first of these that is available.
    """
    from kws_export.errors import KWSError

    if source not in VOCAB_SOURCES:
        raise KWSError(f"unknown vocabulary {source!r} (use one of {', '.join(VOCAB_SOURCES)})")
    if size < 10:
        raise KWSError(f"vocabulary size must be at least 10 (got {size})")
    if source in ("auto", "wordfreq"):
        try:
            import importlib.metadata

            import wordfreq
        except ImportError:
            if source == "wordfreq":
                raise KWSError("vocabulary wordfreq is not installed: install it with `pip install 'kws-edge[vocab]'`") from None
        else:
            words = _clean(wordfreq.top_n_list("en", int(size * 1.3) + 100))[:size]
            return Vocabulary(tuple(words), _zipf_weights(len(words)), "wordfreq", importlib.metadata.version("wordfreq"), True)
    if source in ("auto", "wamerican"):
        if WAMERICAN.is_file():
            raw = [line.strip() for line in WAMERICAN.read_text(encoding="utf-8", errors="replace").splitlines()]
            words = sorted((w for w in _clean(raw) if "'" not in w and len(w) <= 10), key=lambda w: (len(w), w))[:size]
            w = np.exp(-0.35 * np.array([len(x) for x in words], dtype=np.float64))
            return Vocabulary(tuple(words), w / w.sum(), "wamerican", str(WAMERICAN.stat().st_size), False)
        if source == "wamerican":
            raise KWSError(f"vocabulary wamerican is not installed ({WAMERICAN} missing): install it with `sudo apt-get install wamerican`")
    words = _builtin_words()
    return Vocabulary(tuple(words), np.full(len(words), 1.0 / len(words)), "builtin", "1", False)


# Phonemes ---------------------------------------------------------------------------------
_MULTI = ("tʃ", "dʒ", "eɪ", "aɪ", "oʊ", "aʊ", "ɔɪ", "əʊ", "ɪə", "eə", "ʊə", "aɪə", "aʊə")
_MODIFIERS = set("ːˑ̃ʰʲʷ̩̯")
_VOWEL_CHARS = set("aeiouyæɑɒɔəɛɜɐɪʊʌᵻɚɝøœɯɨ")
_STRESS = set("ˈˌ")


def ipa_tokens(ipa: str) -> tuple[list[str], int]:
    """(phoneme tokens, index of the primary-stressed vowel or -1) of an espeak IPA string;
    affricates and diphthongs are one token, length marks stay on their vowel."""
    tokens: list[str] = []
    stressed, pending = -1, False
    i = 0
    s = re.sub(r"[\s_,.!?;:'-]", "", ipa)
    while i < len(s):
        c = s[i]
        if c in _STRESS:
            pending = pending or c == "ˈ"
            i += 1
            continue
        tok = next((m for m in sorted(_MULTI, key=len, reverse=True) if s.startswith(m, i)), c)
        i += len(tok)
        while i < len(s) and s[i] in _MODIFIERS:
            tok += s[i]
            i += 1
        if pending and tok[0] in _VOWEL_CHARS and stressed < 0:
            stressed, pending = len(tokens), False
        tokens.append(tok)
    return tokens, stressed


def _is_vowel(tok: str) -> bool:
    return tok[0] in _VOWEL_CHARS


def _levenshtein(a: Sequence[str], b: Sequence[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


class Phonemizer:
    """Cached espeak-ng IPA tokens per text (``ipa(text)`` is ``EspeakEngine.ipa``)."""

    def __init__(self, ipa: Callable[[str], str]):
        self._ipa = ipa
        self._cache: dict[str, tuple[list[str], int]] = {}

    def __call__(self, text: str) -> tuple[list[str], int]:
        if text not in self._cache:
            self._cache[text] = ipa_tokens(self._ipa(text))
        return self._cache[text]

    def flat(self, text: str) -> str:
        return " ".join(self(text)[0])


def _contains(hay: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(hay[i:i + n]) == list(needle) for i in range(len(hay) - n + 1))


def contains_keyword(text: str, keyword: str, phonemize: Phonemizer) -> bool:
    """True when ``text`` says the keyword: its words in order, or the keyword's phoneme
    sequence anywhere across the text's words ("shee la" for "sheila")."""
    tw, kw = re.findall(r"[a-z0-9']+", text.lower()), re.findall(r"[a-z0-9']+", keyword.lower())
    if kw and any(tw[i:i + len(kw)] == kw for i in range(len(tw) - len(kw) + 1)):
        return True
    if "".join(kw) and "".join(kw) in "".join(tw):
        return True
    return _contains(phonemize(text)[0], phonemize(keyword)[0])


# Near phrases -----------------------------------------------------------------------------
def _word_neighbours(word: str, vocab: Sequence[str], phonemize: Phonemizer, per_family: int) -> dict[str, list[str]]:
    """Families of vocabulary words that share sounds with one keyword word."""
    k, sv = phonemize(word)
    vowels = [i for i, t in enumerate(k) if _is_vowel(t)]
    fam: dict[str, list[str]] = {"rhyme": [], "last_syllable": [], "onset": [], "inner": [], "close": []}
    if not k or not vowels:
        return fam
    sv = sv if sv >= 0 else vowels[0]
    rime = k[sv:]                                              # sheila: iː l ə
    last_v = vowels[-1]
    last_syl = k[max(0, last_v - 1):] if last_v > 0 and not _is_vowel(k[last_v - 1]) else k[last_v:]  # l ə
    first = k[:vowels[0] + 1]                                  # ʃ iː
    if len(first) < 2:                                         # a bare vowel is too weak: ə of alexa -> ə l
        first = k[:vowels[0] + 2]
    windows = [k[i:i + 3] for i in range(len(k) - 2) if any(_is_vowel(t) for t in k[i:i + 3])]
    for w in vocab:
        if w == word:
            continue
        t, _ = phonemize(w)
        if not t or t == k or _contains(t, k):
            continue
        if len(rime) >= 2 and len(t) > len(rime) and t[-len(rime):] == rime:
            fam["rhyme"].append(w)
        elif len(vowels) > 1 and len(t) >= len(last_syl) and t[-len(last_syl):] == last_syl:
            fam["last_syllable"].append(w)
        elif len(t) > len(first) - (len(vowels) == 1) and t[:len(first)] == first:
            fam["onset"].append(w)
        elif any(_contains(t, win) for win in windows):
            fam["inner"].append(w)
        elif abs(len(t) - len(k)) <= 2 and _levenshtein(t, k) <= max(1, int(0.4 * len(k))):
            fam["close"].append(w)
    return {name: words[:per_family] for name, words in fam.items()}


def _split_pairs(keyword: str, vocab: Sequence[str], phonemize: Phonemizer, limit: int) -> list[str]:
    """Two-word phrases that run over the keyword's sounds across a word boundary:
    a word sounding like its start (or its onset with another vowel) + a word starting
    with the sound that follows ("she laughed", "shy law")."""
    k, _ = phonemize(keyword)
    vowels = [i for i, t in enumerate(k) if _is_vowel(t)]
    if len(vowels) < 2 and len(k) < 3:
        return []
    heads_exact: dict[int, list[str]] = {}
    heads_vowel: dict[int, list[str]] = {}
    tails: dict[str, list[str]] = {}
    cuts = sorted({v + 1 for v in vowels[:-1]} | {v + 2 for v in vowels[:-1] if v + 2 < len(k)})
    for w in vocab:
        t, _ = phonemize(w)
        if not t:
            continue
        for c in cuts:
            if t == k[:c]:
                heads_exact.setdefault(c, []).append(w)
            elif len(t) == c and t[:c - 1] == k[:c - 1] and _is_vowel(t[c - 1]) and _is_vowel(k[c - 1]):
                heads_vowel.setdefault(c, []).append(w)
            elif c >= 2 and len(t) == c and t[0] == k[0] and _is_vowel(t[1]) and t[1] != k[1] and t[2:] == k[2:c]:
                heads_vowel.setdefault(c, []).append(w)
        if len(t) >= 2:
            tails.setdefault(t[0], []).append(w)
    out: list[str] = []
    for c in cuts:
        if c >= len(k):
            continue
        heads = heads_exact.get(c, [])[:6] + heads_vowel.get(c, [])[:6]
        tail_words = [w for w in tails.get(k[c], []) if phonemize(w)[0][:2] == k[c:c + 2]][:8]
        tail_words += [w for w in tails.get(k[c], []) if w not in tail_words][:8]
        for h in heads:
            for tw in tail_words:
                out.append(f"{h} {tw}")
    return out[:limit]


def near_phrases(keyword: str, vocab: Sequence[str], phonemize: Phonemizer, orthographic: Sequence[str] = (),
                 per_family: int = 60) -> dict[str, list[str]]:
    """Families of words and short phrases that sound close to ``keyword`` but are not it.

    ``vocab`` is searched in order (most frequent first), ``orthographic`` adds the rule-based
    confusables of ``training.synth.confusable_words``.  Works for any English keyword; a
    multi-word keyword also gives each word alone, each word replaced by its neighbours, and
    the words in another order.  Nothing returned contains the keyword (``contains_keyword``).
    """
    words = re.findall(r"[a-z0-9']+", keyword.lower())
    families: dict[str, list[str]] = {}
    if not words:
        return families
    per_word = [_word_neighbours(w, vocab, phonemize, per_family) for w in words]
    if len(words) == 1:
        families.update(per_word[0])
    else:
        families["single_word"] = list(words)
        if len(words) > 1:
            families["reordered"] = [" ".join(words[i:] + words[:i]) for i in range(1, len(words))]
            families["reordered"].append(" ".join(reversed(words)))
        for i, fams in enumerate(per_word):
            swapped = []
            for fam in ("rhyme", "last_syllable", "onset", "close", "inner"):
                swapped += [" ".join(words[:i] + [alt] + words[i + 1:]) for alt in fams.get(fam, [])[:per_family // 3]]
            families[f"swap_{i}"] = swapped
            families[f"word_{i}"] = [w for fam in fams.values() for w in fam][:per_family]
    families["split"] = _split_pairs(keyword, vocab, phonemize, per_family)
    families["orthographic"] = list(orthographic)
    out: dict[str, list[str]] = {}
    for name, items in families.items():
        seen: set[str] = set()
        kept = []
        for item in items:
            if item in seen or contains_keyword(item, keyword, phonemize):
                continue
            seen.add(item)
            kept.append(item)
        if kept:
            out[name] = kept
    return out


def random_phrase(vocab: Vocabulary, rng: np.random.Generator, min_words: int = 2, max_words: int = 5) -> str:
    return " ".join(vocab.draw(rng, int(rng.integers(min_words, max_words + 1))))


def near_phrase(families: dict[str, list[str]], vocab: Vocabulary, rng: np.random.Generator, max_words: int = 5) -> str:
    """One near item (a family drawn with p ~ sqrt(its size), then an item), with 0-2 random
    words around it: a family of one word ("tequila") is not a sixth of all near phrases."""
    names = sorted(families)
    p = np.sqrt(np.array([len(families[n]) for n in names], dtype=np.float64))
    fam = families[names[int(rng.choice(len(names), p=p / p.sum()))]]
    item = fam[int(rng.integers(len(fam)))]
    room = max(0, max_words - len(item.split()))
    before = int(rng.integers(0, min(2, room) + 1))
    after = int(rng.integers(0, min(2, room - before) + 1))
    return " ".join(vocab.draw(rng, before) + [item] + vocab.draw(rng, after))
