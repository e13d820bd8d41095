"""training.data.SpeechCommands over the tiny synthetic corpus and a hand-made real-style folder."""

import numpy as np
import pytest
import soundfile as sf
import torch

from kws_export.errors import KWSError
from test_synth import build_tiny_corpus, manifest
from training.data import SpeechCommands, fit_length, speaker_of


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return build_tiny_corpus(tmp_path_factory.getbasetemp())


def write(path, x, sr, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, subtype=subtype)


@pytest.fixture
def real_style(tmp_path):
    """Speech Commands v0.02 conventions: hashed speakers, lists, noise folder, stray files."""
    root = tmp_path / "speech_commands_v0.02"
    rng = np.random.default_rng(0)
    speakers = ["0a7c2a8d", "0b09edd3", "1c3f4b2a", "2d4e5f60", "3e5f6a7b"]
    for word in ("sheila", "yes", "no"):
        for s in speakers:
            for n in range(2):
                write(root / word / f"{s}_nohash_{n}.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    # an 8 kHz stereo clip and a 0.5 s clip: resampled / mixed / padded
    write(root / "yes" / "4f6a7b8c_nohash_0.wav", np.stack([np.full(8000, 0.25), np.full(8000, 0.75)], 1), 8000, "PCM_24")
    write(root / "no" / "5a6b7c8d_nohash_0.wav", np.full(8000, 0.5, np.float32), 16000)
    write(root / "_background_noise_" / "running_tap.wav", (0.1 * rng.standard_normal(44100)).astype(np.float32), 44100)
    (root / "_background_noise_" / "README.md").write_text("noises")
    (root / "README.md").write_text("readme")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "validation_list.txt").write_text("sheila/0b09edd3_nohash_0.wav\nsheila/0b09edd3_nohash_1.wav\nyes/0b09edd3_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("sheila/1c3f4b2a_nohash_0.wav\nno/1c3f4b2a_nohash_1.wav\n\n")
    return root


# Synthetic corpus ------------------------------------------------------------------------
def test_list_split_matches_manifest(tiny_corpus):
    rows = manifest(tiny_corpus)
    total = 0
    for split in ("train", "validation", "test"):
        ds = SpeechCommands(tiny_corpus, split=split, keyword="sheila")
        expected = sorted(r["path"] for r in rows if r["split"] == split)
        assert ds.relpaths == expected
        assert ds.labels.tolist() == [1 if p.startswith("sheila/") else 0 for p in expected]
        assert ds.speakers == [p.split("/")[1].split("_nohash_")[0] for p in expected]
        pos, neg = ds.counts()
        assert pos > 0 and neg > 0
        total += len(ds)
    assert total == len(rows)


def test_random_split_is_speaker_disjoint_and_reproducible(tiny_corpus):
    def splits(seed):
        return {s: SpeechCommands(tiny_corpus, split=s, random_split_seed=seed) for s in ("train", "validation", "test")}

    a, b, c = splits(7), splits(7), splits(8)
    spk = {s: set(d.speakers) for s, d in a.items()}
    assert not spk["train"] & spk["validation"] and not spk["train"] & spk["test"] and not spk["validation"] & spk["test"]
    assert sum(len(d) for d in a.values()) == len(manifest(tiny_corpus))
    for s in a:
        assert a[s].relpaths == b[s].relpaths
        assert a[s].counts()[0] > 0  # every split holds keyword clips
    assert any(a[s].relpaths != c[s].relpaths for s in a)


def test_items_and_load_all_agree(tiny_corpus):
    ds = SpeechCommands(tiny_corpus, split="validation")
    first = [ds[i] for i in range(len(ds))]
    waves, labels = ds.load_all(workers=2)
    assert waves.shape == (len(ds), 16000) and waves.dtype == np.float32 and labels.dtype == np.int64
    for i, (x, y) in enumerate(first):
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (16000,)
        assert y == labels[i]
        assert np.array_equal(x.numpy(), waves[i])
        cached, _ = ds[i]
        assert torch.equal(cached, x)
    assert ds.load_all()[0] is waves  # decoded once


def test_background_noises(tiny_corpus):
    noises = SpeechCommands(tiny_corpus, split="test").background_noises()
    assert len(noises) == 6 and all(n.dtype == np.float32 and n.shape == (32000,) for n in noises)


# Real-style folder ----------------------------------------------------------------------
def test_real_layout_lists_speakers_resampling_and_padding(real_style):
    val = SpeechCommands(real_style, split="validation", keyword="Sheila")
    assert val.relpaths == ["sheila/0b09edd3_nohash_0.wav", "sheila/0b09edd3_nohash_1.wav", "yes/0b09edd3_nohash_0.wav"]
    assert val.labels.tolist() == [1, 1, 0] and set(val.speakers) == {"0b09edd3"}
    test = SpeechCommands(real_style, split="test")
    assert len(test) == 2
    train = SpeechCommands(real_style, split="train")
    assert len(train) == 3 * 5 * 2 + 2 - 5
    i = train.relpaths.index("yes/4f6a7b8c_nohash_0.wav")
    x, y = train[i]
    assert y == 0 and x.shape == (16000,)
    assert float(x[4000:12000].mean()) == pytest.approx(0.5, abs=2e-3)  # stereo mixed, 8 kHz -> 16 kHz
    j = train.relpaths.index("no/5a6b7c8d_nohash_0.wav")
    short, _ = train[j]
    assert float(short[:8000].min()) == pytest.approx(0.5, abs=1e-4) and float(short[8000:].abs().max()) == 0.0
    noises = train.background_noises()
    assert len(noises) == 1 and noises[0].shape == (16000,)  # 1 s at 44.1 kHz -> 16 kHz


def test_random_split_on_real_layout(real_style):
    parts = {s: SpeechCommands(real_style, split=s, random_split_seed=0) for s in ("train", "validation", "test")}
    spk = {s: set(d.speakers) for s, d in parts.items()}
    assert not spk["train"] & (spk["validation"] | spk["test"])
    assert all(d.counts()[0] > 0 for d in parts.values())


def test_bad_folders_are_one_line_errors(real_style, tmp_path):
    cases = [
        (lambda: SpeechCommands(tmp_path / "missing"), "not found"),
        (lambda: SpeechCommands(real_style, keyword="marvin"), "no folder 'marvin'"),
        (lambda: SpeechCommands(real_style, split="dev"), "unknown split"),
    ]
    (real_style / "testing_list.txt").unlink()
    cases.append((lambda: SpeechCommands(real_style), "no testing_list.txt"))
    for make, words in cases:
        with pytest.raises(KWSError) as e:
            make()
        assert words in str(e.value) and "\n" not in str(e.value)
    ds = SpeechCommands(real_style, random_split_seed=1)  # the random split needs no lists
    broken = ds.files[0]
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(KWSError, match="truncated"):
        ds.load_all()


def test_helpers():
    assert speaker_of("yes/0a7c2a8d_nohash_3.wav") == "0a7c2a8d"
    assert speaker_of("sheila/espeak-en-us+f3_nohash_0.wav") == "espeak-en-us+f3"
    assert speaker_of("mine/recording.wav") == "recording"
    assert fit_length(np.ones(3, np.float32), 5).tolist() == [1, 1, 1, 0, 0]
    assert fit_length(np.ones(7, np.float32), 5).shape == (5,)


# FLAC (real corpora ship it) ---------------------------------------------------------------
def test_flac_clips_load_like_wav(tmp_path):
    """A FLAC-only folder and a mixed wav/FLAC folder list and decode like wavs (16-bit FLAC is
    lossless: the samples come back exactly)."""
    rng = np.random.default_rng(3)
    root = tmp_path / "flac_corpus"
    clips = {}
    for word in ("sheila", "yes", "no"):
        for s in ("0a7c2a8d", "0b09edd3", "1c3f4b2a", "2d4e5f60"):
            x = (np.round(rng.uniform(-0.3, 0.3, 16000) * 32768) / 32768).astype(np.float32)
            name = f"{word}/{s}_nohash_0.flac"
            write(root / name, x, 16000)
            clips[name] = x
    write(root / "yes" / "3e5f6a7b_nohash_0.wav", np.full(16000, 0.25, np.float32), 16000)
    write(root / "no" / "4f6a7b8c_nohash_0.FLAC", np.full(12000, -0.25, np.float32), 16000)  # short, upper-case suffix
    write(root / "_background_noise_" / "tap.flac", (0.1 * rng.standard_normal(32000)).astype(np.float32), 16000)
    (root / "yes" / "notes.txt").write_text("not audio")
    parts = [SpeechCommands(root, split=s, random_split_seed=0) for s in ("train", "validation", "test")]
    listed = sorted(r for d in parts for r in d.relpaths)
    assert listed == sorted([*clips, "yes/3e5f6a7b_nohash_0.wav", "no/4f6a7b8c_nohash_0.FLAC"])
    for ds in parts:
        waves, labels = ds.load_all()
        for r, w, y in zip(ds.relpaths, waves, labels):
            assert y == (1 if r.startswith("sheila/") else 0)
            if r in clips:
                assert np.array_equal(w, clips[r])
            elif r.endswith(".FLAC"):
                assert float(w[:12000].max()) == pytest.approx(-0.25) and float(np.abs(w[12000:]).max()) == 0.0
            else:
                assert float(w.min()) == pytest.approx(0.25)
    noises = parts[0].background_noises()
    assert len(noises) == 1 and noises[0].shape == (32000,)


def test_flac_only_folder_without_audio_is_one_line_error(tmp_path):
    (tmp_path / "c" / "sheila").mkdir(parents=True)
    (tmp_path / "c" / "sheila" / "a.txt").write_text("x")
    with pytest.raises(KWSError, match=r"no \.wav or \.flac files") as e:
        SpeechCommands(tmp_path / "c", random_split_seed=0)
    assert "\n" not in str(e.value)
