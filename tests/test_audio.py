"""kws_export.audio: strict wav reading, band-limited resampling, atomic 16-bit writing."""

import math

import numpy as np
import pytest
import soundfile as sf

from kws_export import audio
from kws_export.audio import read_wav, resample, write_wav
from kws_export.errors import KWSError


def tone(freq, sr, seconds=0.5, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_freq(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[int(np.argmax(spec))]


def one_line_error(exc_info, path):
    msg = str(exc_info.value)
    assert str(path) in msg and "\n" not in msg
    return msg


# Reading ---------------------------------------------------------------------------------
@pytest.mark.parametrize("subtype, tol", [("PCM_U8", 1 / 64), ("PCM_16", 1e-4), ("PCM_24", 1e-6), ("PCM_32", 1e-6),
                                          ("FLOAT", 1e-7), ("DOUBLE", 1e-7)])
def test_reads_every_sample_format_as_float32(tmp_path, subtype, tol):
    x = tone(440, 16000)
    p = tmp_path / f"{subtype}.wav"
    sf.write(p, x, 16000, subtype=subtype)
    y, sr = read_wav(p)
    assert sr == 16000 and y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= tol


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(300, 16000, amp=0.6), tone(300, 16000, amp=0.2)
    p = tmp_path / "stereo.wav"
    sf.write(p, np.stack([left, -right], axis=1), 16000, subtype="PCM_24")
    y, _ = read_wav(p)
    np.testing.assert_allclose(y, (left - right) / 2, atol=1e-6)


def test_float_beyond_full_scale_is_clipped(tmp_path):
    p = tmp_path / "loud.wav"
    sf.write(p, np.array([0.5, 1.5, -2.0, 0.0], np.float32), 16000, subtype="FLOAT")
    y, _ = read_wav(p)
    assert y.tolist() == [0.5, 1.0, -1.0, 0.0]


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled_keeping_pitch_and_level(tmp_path, sr):
    p = tmp_path / f"{sr}.wav"
    sf.write(p, tone(1000, sr), sr, subtype="PCM_16")
    y, out_sr = read_wav(p, sample_rate=16000)
    assert out_sr == 16000 and len(y) == math.ceil(len(tone(1000, sr)) * 16000 / sr)
    assert abs(peak_freq(y, 16000) - 1000) < 5
    assert np.sqrt(2 * np.mean(y[400:-400] ** 2)) == pytest.approx(0.5, rel=0.01)
    native, native_sr = read_wav(p)
    assert native_sr == sr  # no rate asked: the file's own


def test_resampler_removes_what_would_alias():
    x = tone(10000, 48000, seconds=1.0)  # above the 8 kHz Nyquist of 16 kHz
    y = resample(x, 48000, 16000)
    assert np.sqrt(np.mean(y[200:-200] ** 2)) < 0.5 / math.sqrt(2) * 10 ** (-40 / 20)
    passband = resample(tone(3000, 48000, seconds=1.0), 48000, 16000)
    assert np.sqrt(2 * np.mean(passband[200:-200] ** 2)) == pytest.approx(0.5, rel=0.005)


def test_polyphase_and_direct_kernels_agree(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3000)).astype(np.float32)
    fast = resample(x, 22050, 16000)
    monkeypatch.setattr(audio, "_MAX_POLYPHASE_ENTRIES", 0)  # force per-sample evaluation
    slow = resample(x, 22050, 16000)
    assert fast.shape == slow.shape == (2, math.ceil(3000 * 16000 / 22050))
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    # co-prime rates (16000 phases) take the direct path and still give the right length
    assert resample(x[0], 16001, 16000).shape == (3000,)
    assert np.array_equal(resample(x, 16000, 16000), x)


def test_zero_length_and_tiny_inputs():
    assert resample(np.zeros(0, np.float32), 8000, 16000).shape == (0,)
    assert resample(np.ones(1, np.float32), 8000, 16000).shape == (2,)


# Refusals --------------------------------------------------------------------------------
def _wav_bytes(tmp_path, n=16000):
    p = tmp_path / "good.wav"
    sf.write(p, tone(440, 16000, seconds=n / 16000), 16000, subtype="PCM_16")
    return p.read_bytes()


def test_missing_directory_and_empty_files_are_refused(tmp_path):
    for path, words in ((tmp_path / "nope.wav", "not found"), (tmp_path, "directory")):
        with pytest.raises(KWSError) as e:
            read_wav(path)
        assert words in one_line_error(e, path)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(KWSError) as e:
        read_wav(empty)
    assert "empty" in one_line_error(e, empty)


def test_truncated_files_are_refused(tmp_path):
    data = _wav_bytes(tmp_path)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])  # libsndfile alone would return half the samples
    with pytest.raises(KWSError) as e:
        read_wav(cut)
    assert "truncated" in one_line_error(e, cut)
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(data[:44])
    with pytest.raises(KWSError) as e:
        read_wav(header_only)
    assert "truncated" in one_line_error(e, header_only)
    stub = tmp_path / "stub.wav"
    stub.write_bytes(data[:30])
    with pytest.raises(KWSError) as e:
        read_wav(stub)
    assert "not a readable audio file" in one_line_error(e, stub)


def test_text_file_is_refused(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is not audio\n" * 20)
    with pytest.raises(KWSError) as e:
        read_wav(p)
    assert "not a readable audio file" in one_line_error(e, p)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused(tmp_path, bad):
    p = tmp_path / "nan.wav"
    sf.write(p, np.array([0.1, bad, 0.2], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(KWSError) as e:
        read_wav(p)
    assert "NaN or infinite" in one_line_error(e, p)


def test_zero_length_audio_is_refused(tmp_path):
    p = tmp_path / "zero.wav"
    sf.write(p, np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(KWSError) as e:
        read_wav(p)
    assert "no samples" in one_line_error(e, p)


def test_streaming_writer_lengths_are_accepted(tmp_path):
    data = bytearray(_wav_bytes(tmp_path, n=800))
    i = data.index(b"data")
    data[i + 4:i + 8] = (0xFFFFFFFF).to_bytes(4, "little")  # "unknown length" left by a live recorder
    p = tmp_path / "live.wav"
    p.write_bytes(bytes(data))
    y, _ = read_wav(p)
    assert len(y) == 800


# Writing ---------------------------------------------------------------------------------
def test_write_is_16bit_mono_exact_and_deterministic(tmp_path):
    x = tone(440, 16000)
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    write_wav(a, x, 16000)
    write_wav(b, x, 16000)
    info = sf.info(a)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", len(x))
    assert a.read_bytes() == b.read_bytes()
    y, _ = read_wav(a)
    assert np.abs(y - x).max() <= 1 / 32767
    q = audio.to_pcm16(np.array([1.5, -1.5, 0.5]))
    assert q.tolist() == [32767, -32767, 16384]  # clipped, rounded to nearest
    write_wav(a, q, 16000)  # int16 is written as is
    assert sf.read(a, dtype="int16")[0].tolist() == q.tolist()


def test_failed_write_leaves_nothing_behind(tmp_path):
    dest = tmp_path / "keep.wav"
    write_wav(dest, tone(440, 16000), 16000)
    before = dest.read_bytes()
    with pytest.raises(KWSError) as e:
        write_wav(dest, np.array([0.0, np.nan]), 16000)
    assert "NaN" in one_line_error(e, dest)
    with pytest.raises(KWSError):
        write_wav(dest, np.zeros(0), 16000)
    with pytest.raises(KWSError) as e:
        write_wav(tmp_path / "missing" / "x.wav", tone(440, 16000), 16000)
    assert "does not exist" in str(e.value)
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.wav"]
