"""training.augment and training.streams: each operation does what it says, seeds reproduce."""

import numpy as np
import pytest
import torch

from training.augment import (EQ_CENTRES_HZ, AugmentConfig, Augmenter, NoiseBank, augment_waves, equalize, make_long_batch,
                              make_long_sequence, random_eq, random_vtlp, reverberate, spec_augment, speed_perturb, time_shift,
                              vtlp_frequencies, vtlp_warp)
from training.streams import make_stream

SR = 16000


def only(name, **kw) -> AugmentConfig:
    cfg = AugmentConfig.none()
    setattr(cfg, name, True)
    if hasattr(cfg, f"{name}_prob"):
        setattr(cfg, f"{name}_prob", 1.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def tones(batch=4, freq=500.0, amp=0.3):
    t = torch.arange(SR) / SR
    return (amp * torch.sin(2 * torch.pi * freq * t)).repeat(batch, 1)


def words(batch=8, seed=0):
    """Clips with a 0.4 s 'word' (a noise burst) somewhere in the middle."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, SR)
    for i in range(batch):
        start = 3000 + 400 * (i % 8)
        x[i, start:start + 6400] = 0.2 * torch.randn(6400, generator=g)
    return x


def peak_hz(x):
    spec = torch.fft.rfft(x * torch.hann_window(x.shape[-1]))
    return torch.fft.rfftfreq(x.shape[-1], 1 / SR)[spec.abs().argmax(dim=-1)]


def test_same_seed_same_batch_and_different_seed_differs():
    noises = [np.random.default_rng(1).standard_normal(3 * SR).astype(np.float32) * 0.1]
    x = words(16)
    a = Augmenter(AugmentConfig(reverb_prob=0.5), noises, seed=3)
    b = Augmenter(AugmentConfig(reverb_prob=0.5), noises, seed=3)
    first = [a.waves(x), a.waves(x)]
    assert torch.equal(first[0], b.waves(x)) and torch.equal(first[1], b.waves(x))
    assert not torch.equal(first[0], first[1])  # the generator moves on between batches
    assert not torch.equal(first[0], Augmenter(AugmentConfig(reverb_prob=0.5), noises, seed=4).waves(x))
    logmel = torch.randn(16, 40, 101)
    assert torch.equal(Augmenter(seed=9).spec(logmel), Augmenter(seed=9).spec(logmel))
    assert torch.equal(augment_waves(x, AugmentConfig.none(), NoiseBank(None, SR), torch.Generator()), x.clamp(-1, 1))


def test_gain_and_shift():
    x = words(4)
    y = Augmenter(only("gain", gain_db=(6.0, 6.0))).waves(x)
    torch.testing.assert_close(y, (x * 10 ** (6 / 20)).clamp(-1, 1))
    shifted = time_shift(x, torch.tensor([0, 100, -100, 16000]))
    assert torch.equal(shifted[0], x[0])
    assert torch.equal(shifted[1, 100:], x[1, :-100]) and torch.all(shifted[1, :100] == 0)
    assert torch.equal(shifted[2, :-100], x[2, 100:]) and torch.all(shifted[2, -100:] == 0)
    assert torch.all(shifted[3] == 0)
    moved = Augmenter(only("shift", shift_s=0.1), seed=1).waves(x)
    for i in range(4):  # every example is the original moved by at most 0.1 s
        assert any(torch.equal(moved[i], time_shift(x[i:i + 1], torch.tensor([s]))[0]) for s in range(-1600, 1601))


def test_speed_changes_pitch_and_keeps_length():
    y = speed_perturb(tones(2, 1000.0), torch.tensor([1.1, 0.9], dtype=torch.float64))
    assert y.shape == (2, SR)
    hz = peak_hz(y[:, 2000:-2000])
    assert abs(float(hz[0]) - 1100) < 10 and abs(float(hz[1]) - 900) < 10
    quick = Augmenter(only("speed", speed_range=(1.1, 1.1))).waves(words(2))
    assert (quick[:, :400].abs().sum() == 0) and (quick[:, -400:].abs().sum() == 0)  # shorter: padded both sides


def test_noise_hits_the_requested_snr():
    x = words(16)
    noise = [np.random.default_rng(0).standard_normal(5 * SR).astype(np.float32)]
    y = Augmenter(only("noise", snr_db=(10.0, 10.0)), noise, seed=0).waves(x)
    added = y - x
    snr = 10 * torch.log10(x.pow(2).mean(1) / added.pow(2).mean(1))
    torch.testing.assert_close(snr, torch.full((16,), 10.0), atol=0.05, rtol=0)
    silent = Augmenter(only("noise"), noise).waves(torch.zeros(4, SR))  # no speech: an absolute quiet level
    level = 10 * torch.log10(silent.pow(2).mean(1))
    assert torch.all((level > -56) & (level < -34))


def test_reverb_tail_follows_rt60_and_keeps_level():
    impulse = torch.zeros(2, SR)
    impulse[:, 1000] = 0.5
    g = torch.Generator().manual_seed(0)
    y = reverberate(impulse, torch.tensor([0.1, 0.6], dtype=torch.float64), torch.tensor([0.0, 0.0], dtype=torch.float64),
                    torch.tensor([6000.0, 6000.0], dtype=torch.float64), g)
    torch.testing.assert_close(y.pow(2).mean(1).sqrt(), impulse.pow(2).mean(1).sqrt())
    late = y[:, 1000 + int(0.2 * SR):1000 + int(0.3 * SR)].pow(2).sum(1) / y.pow(2).sum(1)
    assert late[0] < 1e-4 < late[1]  # 0.2-0.3 s after the impulse only the long room still rings
    assert torch.all(y[:, :1000].abs() < 1e-4)  # causal


def _level_db(x: torch.Tensor, freq: float) -> torch.Tensor:
    spec = torch.fft.rfft(x * torch.hann_window(x.shape[-1], periodic=False), dim=-1).abs()
    return 20 * torch.log10(spec[..., int(round(freq * x.shape[-1] / SR))])


def test_eq_shapes_the_spectrum_as_its_band_gains_say_and_keeps_the_level():
    t = torch.arange(SR) / SR
    x = (0.2 * torch.sin(2 * torch.pi * 500 * t) + 0.2 * torch.sin(2 * torch.pi * 5000 * t))[None].repeat(3, 1)
    gains = torch.zeros(3, len(EQ_CENTRES_HZ))
    gains[1, EQ_CENTRES_HZ.index(5000.0)] = -12.0            # a dull microphone
    gains[2, EQ_CENTRES_HZ.index(500.0)] = 6.0               # a boomy one
    y = equalize(x, gains)
    torch.testing.assert_close(y[0], x[0], atol=1e-5, rtol=0)  # flat: unchanged
    torch.testing.assert_close(y.pow(2).mean(1).sqrt(), x.pow(2).mean(1).sqrt(), rtol=1e-4, atol=0)
    tilt = (_level_db(y, 5000) - _level_db(y, 500)) - (_level_db(x, 5000) - _level_db(x, 500))
    assert abs(tilt[1] + 12.0) < 0.3 and abs(tilt[2] + 6.0) < 0.3, tilt


def test_random_eq_is_seeded_and_touches_only_the_chosen_share():
    x = words(4).repeat(8, 1)
    cfg = only("eq", eq_prob=0.5)
    a = random_eq(x, cfg, torch.Generator().manual_seed(3))
    b = random_eq(x, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    changed = (a - x).abs().amax(dim=1) > 1e-4
    assert 0 < int(changed.sum()) < len(x)
    assert torch.equal(random_eq(x, only("eq", eq_prob=0.0), torch.Generator()), x)
    y = augment_waves(x, only("eq"), NoiseBank(None, 1), torch.Generator().manual_seed(0))
    assert ((y - x).abs().amax(dim=1) > 1e-4).all()  # in the chain, with eq_prob 1 every clip is coloured
    assert not AugmentConfig().eq  # opt-in (the keyword recipe turns it on)


def test_spec_augment_masks_bands_with_the_mean():
    logmel = torch.randn(32, 40, 101)
    cfg = AugmentConfig(freq_masks=1, freq_mask_width=6, time_masks=1, time_mask_width=10)
    out = spec_augment(logmel, cfg, torch.Generator().manual_seed(0))
    changed = out != logmel
    fill = logmel.mean(dim=(1, 2))
    for i in range(32):
        assert torch.allclose(out[i][changed[i]], fill[i].expand(int(changed[i].sum())))
        rows = changed[i].all(dim=1).sum()
        cols = changed[i].all(dim=0).sum()
        assert rows <= 6 and cols <= 10
    assert changed.any()
    assert torch.equal(spec_augment(logmel, AugmentConfig.none(), torch.Generator()), logmel)


def test_vtlp_moves_a_tone_as_a_longer_or_shorter_vocal_tract_would():
    """The warped log-mel of a tone at f is (nearly) the log-mel of the tone at alpha * f:
    same loudest band, close profile; alpha 1 is the identity and Nyquist stays put."""
    from kws_export.config import CRNNConfig
    from kws_export.model import CRNN

    frontend = CRNN(CRNNConfig()).frontend
    for f, a in ((800.0, 1.1), (2000.0, 0.9), (3000.0, 1.08)):
        warped = vtlp_warp(frontend(tones(1, f)), torch.tensor([a]))[0].mean(dim=1)
        moved = frontend(tones(1, f * a))[0].mean(dim=1)
        plain = frontend(tones(1, f))[0].mean(dim=1)
        assert int(warped.argmax()) == int(moved.argmax()) != int(plain.argmax()), (f, a)
        assert (warped - moved).abs()[moved > moved.max() - 30].mean() < (plain - moved).abs()[moved > moved.max() - 30].mean()
    x = torch.randn(2, 40, 30)
    assert torch.equal(vtlp_warp(x, torch.ones(2)), x)
    edges = vtlp_frequencies(torch.tensor([0.0, 8000.0]), torch.tensor([0.9, 1.1]), 8000.0)
    torch.testing.assert_close(edges, torch.tensor([[0.0, 8000.0], [0.0, 8000.0]], dtype=torch.float64))


def test_random_vtlp_is_seeded_off_by_default_and_draws_nothing_when_off():
    x = torch.randn(16, 40, 20)
    cfg = only("vtlp", vtlp_prob=0.5)
    a = random_vtlp(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a, random_vtlp(x, cfg, torch.Generator().manual_seed(1)))
    changed = (a - x).abs().amax(dim=(1, 2)) > 1e-6
    assert 0 < int(changed.sum()) < len(x)
    g = torch.Generator().manual_seed(5)
    assert torch.equal(random_vtlp(x, AugmentConfig(), g), x)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(5)))
    assert not AugmentConfig().vtlp and not AugmentConfig.none().vtlp
    assert Augmenter(AugmentConfig()).stream_features() is None
    assert Augmenter(only("vtlp")).stream_features() is not None


def test_stream_reference_feeds_its_log_mel_through_the_transform():
    """``mel_transform`` sits between the streaming log-mel and the conv: a transform to the
    log of the clamp floor gives what silence gives; the identity changes nothing."""
    import math

    from kws_export.config import CRNNConfig
    from kws_export.model import CRNN

    torch.manual_seed(0)
    model = CRNN(CRNNConfig(channels=2, hidden=8, gru_layers=1)).eval()
    audio = 0.1 * torch.randn(2, 3 * SR)
    with torch.no_grad():
        plain = model.stream_reference(audio)
        torch.testing.assert_close(model.stream_reference(audio, mel_transform=lambda m: m.clone()), plain)
        floor = model.stream_reference(audio, mel_transform=lambda m: torch.full_like(m, math.log(1e-9)))
        torch.testing.assert_close(floor, model.stream_reference(torch.zeros_like(audio)))
        assert not torch.allclose(floor, plain)


def test_full_chain_runs_on_a_training_sized_batch():
    x = words(8).repeat(32, 1)  # 256 x 16000
    aug = Augmenter(AugmentConfig(reverb_prob=0.5, eq=True), [np.random.default_rng(0).standard_normal(60 * SR).astype(np.float32)])
    y = aug.waves(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and y.abs().max() <= 1.0


def test_config_round_trip():
    cfg = AugmentConfig(snr_db=(3.0, 9.0), reverb=False)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert Augmenter(cfg).describe()["snr_db"] == [3.0, 9.0]


# Long sequences and streams --------------------------------------------------------------
def clip_set(n=12):
    x = words(n).numpy()
    labels = np.array([i % 3 == 0 for i in range(n)], dtype=np.int64)
    return x, labels


def test_long_sequence_positions_labels_and_determinism():
    x, labels = clip_set()
    noises = [np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32)]  # shorter than the sequence: looped
    seq = make_long_sequence(x, labels, noises, duration_s=20.0, seed=4)
    again = make_long_sequence(x, labels, noises, duration_s=20.0, seed=4)
    assert torch.equal(seq.audio, again.audio) and torch.equal(seq.positions, again.positions)
    assert seq.audio.shape == (20 * SR,) and len(seq.labels) == len(seq.positions) >= 8
    pos = seq.positions.numpy()
    assert np.all(pos[1:, 0] >= pos[:-1, 1]) and pos[-1, 1] <= 20 * SR and np.all(pos[:, 1] - pos[:, 0] == SR)
    sp = seq.speech.numpy()
    assert np.all((sp[:, 0] >= pos[:, 0]) & (sp[:, 1] <= pos[:, 1]) & (sp[:, 1] > sp[:, 0]))
    for (a, b), label in zip(pos, seq.labels.tolist()):
        segment = seq.audio[a:b].numpy()
        assert label in (0, 1) and np.abs(segment).max() > 0.3  # a word burst is there
    batch, seqs = make_long_batch(x, labels, noises, batch_size=3, duration_s=5.0, seed=1, keyword_prob=1.0)
    assert batch.shape == (3, 5 * SR) and all(s.labels.tolist() == [1] * len(s.labels) for s in seqs)
    fixed = make_long_sequence(torch.from_numpy(x), torch.from_numpy(labels), None, n_clips=5, seed=0)
    tail = fixed.audio.shape[0] - int(fixed.positions[-1, 1])
    assert len(fixed.labels) == 5 and 0.1 * SR <= tail <= 1.0 * SR  # n_clips mode ends with one gap


def test_stream_places_keywords_where_it_says():
    x, labels = clip_set()
    noise = [np.random.default_rng(2).standard_normal(10 * SR).astype(np.float32)]
    audio, spans = make_stream((x, labels), duration_s=60.0, keyword_every_s=8.0, seed=3, noises=noise, snr_db=(20.0, 20.0))
    assert audio.dtype == np.float32 and audio.shape == (60 * SR,)
    assert 4 <= len(spans) <= 12
    assert all(0 <= a < b <= 60 and b - a == pytest.approx(0.44, abs=0.05) for a, b in spans)
    for a, b in spans:  # loud inside the span, the noise bed just before it
        inside = audio[int(a * SR):int(b * SR)]
        before = audio[int(a * SR) - 1600:int(a * SR) - 400]
        assert np.sqrt(np.mean(inside ** 2)) > 3 * np.sqrt(np.mean(before ** 2))
    same, same_spans = make_stream((torch.from_numpy(x), torch.from_numpy(labels)), duration_s=60.0, keyword_every_s=8.0,
                                   seed=3, noises=noise, snr_db=(20.0, 20.0))
    assert np.array_equal(audio, same) and spans == same_spans
    quiet, none = make_stream((x, labels), duration_s=30.0, keyword_every_s=None, seed=0)
    assert none == [] and quiet.shape == (30 * SR,)


def test_room_and_microphone_is_the_sequence_level_acoustics():
    """Reverberation on reverb_prob of the rows (the draws of augment_waves' reverb step), then
    the microphone EQ: what the streaming objective and the distillation bank apply to glued
    long sequences."""
    from training.augment import reverberate_some, room_and_microphone

    x = torch.randn(4, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    off = AugmentConfig(reverb=False, eq=False)
    assert torch.equal(room_and_microphone(x.clone(), off, torch.Generator().manual_seed(1)), x)
    every = AugmentConfig(reverb=True, reverb_prob=1.0, eq=False)
    y = room_and_microphone(x.clone(), every, torch.Generator().manual_seed(1))
    assert all(not torch.allclose(y[i], x[i]) for i in range(4))
    assert torch.equal(y, reverberate_some(x.clone(), every, torch.Generator().manual_seed(1)))
    none = AugmentConfig(reverb=True, reverb_prob=0.0, eq=True, eq_prob=1.0)
    z = room_and_microphone(x.clone(), none, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    reverberate_some(x.clone(), none, g)  # no row picked, the draws still made
    from training.augment import random_eq
    assert torch.equal(z, random_eq(x.clone(), none, g, 16000)) and not torch.allclose(z, x)
