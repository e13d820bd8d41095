"""Seeded, vectorised training augmentation on waveform batches (torch), and long sequences.

Waveform chain, each step switchable in ``AugmentConfig``: speed perturbation (band-limited
polyphase resampling, the same kernel as ``kws_export.audio.resample``) -> time shift ->
reverberation (synthetic exponentially decaying noise RIRs, FFT convolution) -> background
noise at a random SNR -> microphone EQ (a random smooth 7-band response) -> gain.  On the log-mel:
the VTLP frequency warp (off by default), then SpecAugment's masks.  Every random draw comes from
the ``torch.Generator`` passed in (CPU), so a seed reproduces a batch exactly on any device.

``make_long_sequence`` glues clips with noise between them so streaming models learn to run
for minutes without a state reset; it returns per-clip labels and sample positions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kws_export.audio import sinc_resample_kernel
from kws_export.errors import KWSError
from kws_export.frontend import hz_to_mel_htk, mel_to_hz_htk
from training.streams import fade_ramp, place_clip

SPEED_STEPS = 100  # speed factors are quantised to 1/100: one small polyphase kernel each


@dataclass
class AugmentConfig:
    """What to apply and how strongly; ranges are (low, high) drawn uniformly per example."""

    noise: bool = True
    noise_prob: float = 0.8
    snr_db: tuple[float, float] = (0.0, 25.0)
    gain: bool = True
    gain_db: tuple[float, float] = (-12.0, 6.0)
    shift: bool = True
    shift_s: float = 0.1
    speed: bool = True
    speed_prob: float = 0.5
    speed_range: tuple[float, float] = (0.9, 1.1)
    reverb: bool = True
    reverb_prob: float = 0.3
    rt60_s: tuple[float, float] = (0.15, 0.8)
    drr_db: tuple[float, float] = (-2.0, 12.0)
    specaugment: bool = True
    freq_masks: int = 2
    freq_mask_width: int = 6
    time_masks: int = 2
    time_mask_width: int = 10
    # A microphone's / room's colouring of everything it hears (speech and noise alike):
    # synthetic voices are studio-flat, real recordings are not.
    eq: bool = False
    eq_prob: float = 0.5
    eq_db: tuple[float, float] = (-10.0, 10.0)
    # Vocal tract length perturbation on the log-mel: a speaker's formants sit higher or lower
    # (a warp of the frequency axis by alpha, bent back to reach Nyquist), on the student's
    # features only, so a teacher's targets for the audio stay valid.
    vtlp: bool = False
    vtlp_prob: float = 0.8
    vtlp_range: tuple[float, float] = (0.9, 1.1)

    @classmethod
    def none(cls) -> "AugmentConfig":
        """Everything off (evaluation, or a baseline run)."""
        return cls(noise=False, gain=False, shift=False, speed=False, reverb=False, specaugment=False, eq=False, vtlp=False)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KWSError(f"unknown augmentation settings {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# Random draws (always on the CPU generator, then moved: same numbers on any device) -------
def _uniform(n: int, lo_hi: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _chosen(n: int, prob: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) < prob


# Individual operations --------------------------------------------------------------------
def resample_batch(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """(B, T) from rate ``orig`` to ``new`` (windowed-sinc polyphase, as kws_export.audio)."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    if orig == new:
        return x.clone()
    kernel, width = sinc_resample_kernel(orig, new)
    k = torch.tensor(kernel, dtype=x.dtype, device=x.device)[:, None, :]
    b, t = x.shape
    out = F.conv1d(F.pad(x[:, None, :], (width, width + orig)), k, stride=orig)  # (B, new, frames)
    return out.transpose(1, 2).reshape(b, -1)[:, : -(-new * t // orig)]


def speed_perturb(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Play each example ``factors[i]`` times faster (pitch and tempo together), keeping the
    length: a slower, longer result is centre-cropped, a shorter one centre-padded."""
    out = x.clone()
    steps = torch.round(factors * SPEED_STEPS).to(torch.int64)
    t = x.shape[1]
    for s in torch.unique(steps).tolist():
        if s == SPEED_STEPS:
            continue
        idx = torch.nonzero(steps == s).flatten().to(x.device)
        y = resample_batch(x[idx], int(s), SPEED_STEPS)
        n = y.shape[1]
        if n >= t:
            start = (n - t) // 2
            out[idx] = y[:, start:start + t]
        else:
            left = (t - n) // 2
            out[idx] = F.pad(y, (left, t - n - left))
    return out


def time_shift(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift example i right by ``shifts[i]`` samples (left if negative), zero-filled."""
    t = x.shape[1]
    idx = torch.arange(t, device=x.device)[None, :] - shifts.to(x.device)[:, None]
    valid = (idx >= 0) & (idx < t)
    return torch.gather(x, 1, idx.clamp(0, t - 1)) * valid


def synthetic_rirs(n: int, length: int, sample_rate: int, rt60: torch.Tensor, drr_db: torch.Tensor, cutoff_hz: torch.Tensor,
                   g: torch.Generator, n_fft: int) -> torch.Tensor:
    """Spectra (n, n_fft//2+1) of room impulse responses: a unit direct path plus a tail of
    Gaussian noise decaying by 60 dB over ``rt60`` seconds, low-passed at ``cutoff_hz``
    (walls absorb highs first), at ``drr_db`` direct-to-reverberant energy ratio."""
    t = torch.arange(1, length + 1, dtype=torch.float32) / sample_rate
    tail = torch.randn(n, length, generator=g) * torch.exp(-6.907755 * t[None, :] / rt60.float()[:, None])
    tail_spec = torch.fft.rfft(F.pad(tail, (1, n_fft - length - 1)), n=n_fft)
    # Causal one-pole low-pass (a zero-phase one would smear the tail to before the direct sound).
    omega = 2 * math.pi * torch.fft.rfftfreq(n_fft, 1.0 / sample_rate) / sample_rate
    pole = torch.exp(-2 * math.pi * cutoff_hz.float() / sample_rate)[:, None]
    lowpass = (1 - pole) / (1 - pole * torch.exp(-1j * omega[None, :]))
    tail_spec = tail_spec * lowpass
    power = tail_spec.abs() ** 2
    energy = (2 * power.sum(dim=1) - power[:, 0] - power[:, -1]) / n_fft  # Parseval over the one-sided spectrum
    scale = 10 ** (-drr_db.float() / 20) / torch.sqrt(energy.clamp_min(1e-12))
    return 1.0 + tail_spec * scale[:, None]


def reverberate(x: torch.Tensor, rt60: torch.Tensor, drr_db: torch.Tensor, cutoff_hz: torch.Tensor, g: torch.Generator,
                sample_rate: int = 16000) -> torch.Tensor:
    """Convolve each example with its own synthetic RIR (FFT), keep the first T samples and
    the example's RMS."""
    b, t = x.shape
    length = int(math.ceil(float(rt60.max()) * sample_rate))
    n_fft = 1 << (t + length).bit_length()
    h = synthetic_rirs(b, length, sample_rate, rt60, drr_db, cutoff_hz, g, n_fft).to(x.device)
    y = torch.fft.irfft(torch.fft.rfft(x.float(), n=n_fft) * h, n=n_fft)[:, :t]
    rms_in = x.float().pow(2).mean(dim=1).sqrt()
    rms_out = y.pow(2).mean(dim=1).sqrt().clamp_min(1e-12)
    return (y * (rms_in / rms_out)[:, None]).to(x.dtype)


EQ_CENTRES_HZ = (100.0, 220.0, 500.0, 1000.0, 2200.0, 5000.0, 10000.0)  # as audiomentations' SevenBandParametricEQ


def eq_curves(gains_db: torch.Tensor, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Amplitude responses (B, n_fft//2+1): each row's ``gains_db`` (B, 7) at EQ_CENTRES_HZ,
    linear in dB over log-frequency between them and flat beyond the outer ones."""
    centres = torch.log(torch.tensor(EQ_CENTRES_HZ, dtype=torch.float64))
    f = torch.log(torch.fft.rfftfreq(n_fft, 1.0 / sample_rate).to(torch.float64).clamp_min(EQ_CENTRES_HZ[0]))
    f = f.clamp(max=float(centres[-1]))
    hi = torch.searchsorted(centres, f).clamp(1, len(centres) - 1)
    w = ((f - centres[hi - 1]) / (centres[hi] - centres[hi - 1])).clamp(0, 1)
    g = gains_db.to(torch.float64)
    db = g[:, hi - 1] * (1 - w)[None, :] + g[:, hi] * w[None, :]
    return (10 ** (db / 20)).float()


def equalize(x: torch.Tensor, gains_db: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """Each example through its own smooth zero-phase EQ (``eq_curves``, applied by FFT with
    room for the short impulse response), keeping the example's RMS."""
    b, t = x.shape
    n_fft = 1 << (t + 2048 - 1).bit_length()
    h = eq_curves(gains_db, n_fft, sample_rate).to(x.device)
    y = torch.fft.irfft(torch.fft.rfft(x.float(), n=n_fft) * h, n=n_fft)[:, :t]
    rms_in = x.float().pow(2).mean(dim=1).sqrt()
    rms_out = y.pow(2).mean(dim=1).sqrt().clamp_min(1e-12)
    return (y * (rms_in / rms_out)[:, None]).to(x.dtype)


def random_eq(x: torch.Tensor, config: AugmentConfig, g: torch.Generator, sample_rate: int = 16000) -> torch.Tensor:
    """``equalize`` a random ``eq_prob`` share of the batch (gains uniform in ``eq_db``)."""
    b = x.shape[0]
    pick = _chosen(b, config.eq_prob, g)
    gains = _uniform(b * len(EQ_CENTRES_HZ), config.eq_db, g).reshape(b, -1)
    idx = torch.nonzero(pick).flatten()
    if idx.numel():
        x = x.clone()
        d = idx.to(x.device)
        x[d] = equalize(x[d], gains[idx], sample_rate)
    return x


class NoiseBank:
    """Background noises concatenated once, so a batch of random segments is one gather."""

    def __init__(self, noises: Sequence[np.ndarray] | None, min_samples: int):
        pieces, starts, lengths = [], [], []
        pos = 0
        for n in noises or []:
            a = np.asarray(n, dtype=np.float32).reshape(-1)
            if a.size == 0 or not np.isfinite(a).all():
                continue
            if a.size < min_samples:  # too short for a clip: loop it
                a = np.tile(a, int(math.ceil(min_samples / a.size)))
            pieces.append(a)
            starts.append(pos)
            lengths.append(a.size)
            pos += a.size
        self.bank = torch.from_numpy(np.concatenate(pieces)) if pieces else None
        self.starts = torch.tensor(starts, dtype=torch.int64)
        self.lengths = torch.tensor(lengths, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def sample(self, n: int, t: int, g: torch.Generator) -> torch.Tensor:
        """(n, t) random segments; white noise when the bank is empty."""
        if self.bank is None:
            return torch.randn(n, t, generator=g)
        which = torch.randint(len(self.starts), (n,), generator=g)
        room = (self.lengths[which] - t + 1).to(torch.float64)
        offset = (torch.rand(n, generator=g, dtype=torch.float64) * room).to(torch.int64)
        idx = (self.starts[which] + offset)[:, None] + torch.arange(t)[None, :]
        return self.bank[idx]


def add_noise(x: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor, silent_level_db: torch.Tensor) -> torch.Tensor:
    """x + noise scaled to ``snr_db`` below each example's power (an absolute level for silent clips)."""
    noise = noise.to(x.device, x.dtype)
    p_sig = x.double().pow(2).mean(dim=1)
    p_noise = noise.double().pow(2).mean(dim=1).clamp_min(1e-12)
    target = torch.where(p_sig > 1e-8, p_sig / 10 ** (snr_db.to(x.device) / 10), 10 ** (silent_level_db.to(x.device) / 10))
    return x + noise * torch.sqrt(target / p_noise).to(x.dtype)[:, None]


VTLP_BOUNDARY_HZ = 4800.0  # below it frequencies scale by alpha; above, linearly back to Nyquist (Jaitly & Hinton 2013)


def vtlp_frequencies(freqs: torch.Tensor, alpha: torch.Tensor, nyquist: float,
                     boundary: float = VTLP_BOUNDARY_HZ) -> torch.Tensor:
    """VTLP's piecewise-linear warp of ``freqs`` (F,) by each ``alpha`` (B,) -> (B, F):
    f * alpha up to ``boundary * min(alpha, 1) / alpha``, then a straight line to Nyquist."""
    a = alpha.to(torch.float64)[:, None]
    f = freqs.to(torch.float64)[None, :]
    knee = boundary * torch.clamp(a, max=1.0) / a
    upper = nyquist - (nyquist - boundary * torch.clamp(a, max=1.0)) / (nyquist - knee) * (nyquist - f)
    return torch.where(f <= knee, f * a, upper)


def vtlp_warp(logmel: torch.Tensor, alpha: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """(B, n_mels, frames) HTK log-mel (0 Hz to Nyquist) as spoken by a vocal tract
    ``alpha`` times shorter: the content at f moves to warp(f).  Each output band reads the
    band its centre came from (warp^-1 by ``alpha``'s reciprocal warp, a close inverse),
    interpolated linearly between neighbouring bands; alpha 1 returns the input."""
    b, m, _ = logmel.shape
    nyq = sample_rate / 2
    mel_pts = torch.linspace(0.0, hz_to_mel_htk(nyq), m + 2, dtype=torch.float64)
    centres = mel_to_hz_htk(mel_pts[1:-1])
    source = vtlp_frequencies(centres, 1.0 / alpha, nyq)                       # (B, M) Hz
    idx = (hz_to_mel_htk(source) - mel_pts[1]) / (mel_pts[2] - mel_pts[1])
    idx = idx.clamp(0, m - 1)
    lo = idx.floor().long().clamp(max=m - 2)
    w = (idx - lo).to(logmel.dtype).to(logmel.device)[:, :, None]
    lo = lo.to(logmel.device)[:, :, None].expand(-1, -1, logmel.shape[2])
    return torch.gather(logmel, 1, lo) * (1 - w) + torch.gather(logmel, 1, lo + 1) * w


def random_vtlp(logmel: torch.Tensor, config: AugmentConfig, g: torch.Generator, sample_rate: int = 16000) -> torch.Tensor:
    """``vtlp_warp`` with alpha uniform in ``config.vtlp_range`` on a ``vtlp_prob`` share of
    the batch (alpha 1 elsewhere); the input when ``config.vtlp`` is off (no draw)."""
    if not config.vtlp:
        return logmel
    b = logmel.shape[0]
    alpha = torch.where(_chosen(b, config.vtlp_prob, g), _uniform(b, config.vtlp_range, g), torch.ones(b, dtype=torch.float64))
    return vtlp_warp(logmel, alpha, sample_rate)


def spec_augment(logmel: torch.Tensor, config: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Frequency and time masks on (B, n_mels, frames), filled with each example's mean."""
    if not config.specaugment:
        return logmel
    b, m, f = logmel.shape
    mask = torch.zeros(b, m, f, dtype=torch.bool)
    for count, width, axis, size in ((config.freq_masks, config.freq_mask_width, 1, m), (config.time_masks, config.time_mask_width, 2, f)):
        ar = torch.arange(size)
        for _ in range(int(count)):
            w = torch.randint(0, int(width) + 1, (b,), generator=g)
            start = (torch.rand(b, generator=g) * (size - w + 1).float()).long()
            band = (ar[None, :] >= start[:, None]) & (ar[None, :] < (start + w)[:, None])  # (B, size)
            mask |= band[:, :, None] if axis == 1 else band[:, None, :]
    mask = mask.to(logmel.device)
    fill = logmel.mean(dim=(1, 2), keepdim=True).expand_as(logmel)
    return torch.where(mask, fill, logmel)


def reverberate_some(x: torch.Tensor, config: AugmentConfig, g: torch.Generator, sample_rate: int = 16000) -> torch.Tensor:
    """``x`` (B, T) with ``config.reverb_prob`` of its rows reverberated (RT60, direct-to-reverberant
    ratio and the reverb's low-pass cutoff drawn per row), in place."""
    b = x.shape[0]
    pick = _chosen(b, config.reverb_prob, g)
    rt60, drr, cutoff = _uniform(b, config.rt60_s, g), _uniform(b, config.drr_db, g), _uniform(b, (2000.0, 7000.0), g)
    idx = torch.nonzero(pick).flatten()
    if idx.numel():
        x[idx.to(x.device)] = reverberate(x[idx.to(x.device)], rt60[idx], drr[idx], cutoff[idx], g, sample_rate)
    return x


def room_and_microphone(x: torch.Tensor, config: AugmentConfig, g: torch.Generator, sample_rate: int = 16000) -> torch.Tensor:
    """The sequence-level acoustics of a glued long sequence (its clips and noise are in one
    room, heard by one microphone): ``reverberate_some`` when ``config.reverb``, then the
    random microphone EQ when ``config.eq``."""
    if config.reverb:
        x = reverberate_some(x, config, g, sample_rate)
    if config.eq:
        x = random_eq(x, config, g, sample_rate)
    return x


def augment_waves(x: torch.Tensor, config: AugmentConfig, noises: NoiseBank, g: torch.Generator,
                  sample_rate: int = 16000) -> torch.Tensor:
    """The waveform chain on a (B, T) batch; returns a new tensor clipped to [-1, 1]."""
    if x.dim() != 2:
        raise KWSError(f"augmentation expects a (batch, samples) waveform batch, got shape {tuple(x.shape)}")
    b, t = x.shape
    x = x.clone()
    if config.speed:
        factors = torch.where(_chosen(b, config.speed_prob, g), _uniform(b, config.speed_range, g), torch.ones(b, dtype=torch.float64))
        x = speed_perturb(x, factors)
    if config.shift:
        s = int(round(config.shift_s * sample_rate))
        x = time_shift(x, torch.randint(-s, s + 1, (b,), generator=g))
    if config.reverb:
        x = reverberate_some(x, config, g, sample_rate)
    if config.noise:
        pick = _chosen(b, config.noise_prob, g)
        snr, quiet = _uniform(b, config.snr_db, g), _uniform(b, (-55.0, -35.0), g)
        noise = noises.sample(b, t, g)
        idx = torch.nonzero(pick).flatten()
        if idx.numel():
            d = idx.to(x.device)
            x[d] = add_noise(x[d], noise[idx], snr[idx], quiet[idx])
    if config.eq:
        x = random_eq(x, config, g, sample_rate)
    if config.gain:
        x = x * (10 ** (_uniform(b, config.gain_db, g) / 20)).to(x.device, x.dtype)[:, None]
    return x.clamp(-1.0, 1.0)


class Augmenter:
    """Holds the config, the noise bank and a seeded generator.

    ``waves(batch)`` / ``spec(logmel)`` draw from the own generator unless one is passed, so
    a run is reproducible from ``seed`` alone.
    """

    def __init__(self, config: AugmentConfig | None = None, noises: Sequence[np.ndarray] | None = None,
                 sample_rate: int = 16000, seed: int = 0, clip_samples: int = 16000):
        self.config = config or AugmentConfig()
        self.sample_rate = int(sample_rate)
        self.noises = NoiseBank(noises, clip_samples)
        self.generator = torch.Generator().manual_seed(int(seed))

    def waves(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return augment_waves(batch, self.config, self.noises, generator or self.generator, self.sample_rate)

    def spec(self, logmel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g = generator or self.generator
        return spec_augment(random_vtlp(logmel, self.config, g, self.sample_rate), self.config, g)

    def stream_features(self, generator: torch.Generator | None = None):
        """What a streaming training pass does to its log-mel (``CRNN.stream_reference``'s
        ``mel_transform``): the VTLP warp when it is on (one alpha per sequence), else
        None.  No masks: a stream's targets are per step."""
        if not self.config.vtlp:
            return None
        g = generator or self.generator
        return lambda mel: random_vtlp(mel, self.config, g, self.sample_rate)

    __call__ = waves

    def describe(self) -> dict:
        return {**self.config.to_dict(), "noise_files": len(self.noises)}


# Long sequences ---------------------------------------------------------------------------
class LongSequence(NamedTuple):
    audio: torch.Tensor       # (L,) float32
    labels: torch.Tensor      # (n,) int64, one per glued clip
    positions: torch.Tensor   # (n, 2) int64 [start, end) of each clip in ``audio``
    speech: torch.Tensor      # (n, 2) int64 [start, end) of the spoken part of each clip


def _as_numpy(clips) -> np.ndarray:
    if isinstance(clips, torch.Tensor):
        clips = clips.detach().cpu().numpy()
    a = np.asarray(clips)
    if a.dtype == np.int16:
        return a.astype(np.float32) / 32768.0
    return a.astype(np.float32, copy=False)


def make_long_sequence(clips, labels, noises: Sequence[np.ndarray] | NoiseBank | None = None, *, n_clips: int = 8,
                       duration_s: float | None = None, gap_s: tuple[float, float] = (0.1, 1.0),
                       snr_db: tuple[float, float] = (5.0, 30.0), keyword_prob: float | None = None,
                       sample_rate: int = 16000, generator: torch.Generator | None = None, seed: int | None = None) -> LongSequence:
    """Random clips glued with random gaps over continuous background noise.

    ``duration_s`` fixes the length (as many clips as fit, so sequences stack into a batch);
    otherwise ``n_clips`` clips are used.  ``keyword_prob`` draws each slot from the label-1
    clips with that probability (default: uniformly from all clips).  Clips get 5 ms fades.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else int(seed))
    waves = _as_numpy(clips)
    labs = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(-1)
    if waves.ndim != 2 or len(waves) != len(labs) or len(waves) == 0:
        raise KWSError(f"need clips (N, samples) with N labels, got {waves.shape} and {labs.shape}")
    t = waves.shape[1]
    pos_idx, neg_idx = np.nonzero(labs == 1)[0], np.nonzero(labs != 1)[0]
    gap = lambda: int(float(_uniform(1, gap_s, g)[0]) * sample_rate)  # noqa: E731

    def pick() -> int:
        if keyword_prob is not None and len(pos_idx) and len(neg_idx):
            pool = pos_idx if float(torch.rand(1, generator=g)) < keyword_prob else neg_idx
            return int(pool[int(torch.randint(len(pool), (1,), generator=g))])
        return int(torch.randint(len(waves), (1,), generator=g))

    layout: list[tuple[int, int]] = []  # (clip index, start)
    cursor = gap()
    if duration_s is not None:
        total = int(round(duration_s * sample_rate))
        while cursor + t <= total:
            layout.append((pick(), cursor))
            cursor += t + gap()
    else:
        for _ in range(int(n_clips)):
            layout.append((pick(), cursor))
            cursor += t + gap()
        total = cursor
    audio = np.zeros(total, dtype=np.float32)
    ramp = fade_ramp(t, sample_rate)
    speech, powers = [], []
    for i, start in layout:
        c, a, b = place_clip(audio, waves[i], start, ramp, sample_rate)
        speech.append((start + a, start + b))
        if b > a:
            powers.append(float(np.mean(c[a:b] ** 2)))
    bank = noises if isinstance(noises, NoiseBank) else NoiseBank(noises, 1)
    if total:
        if len(bank) == 0:
            noise = torch.randn(total, generator=g, dtype=torch.float64).numpy()
        else:
            noise = _looped_noise(bank, total, g)
        p_sig = float(np.mean(powers)) if powers else 10 ** (-40 / 10)
        snr = float(_uniform(1, snr_db, g)[0])
        noise *= math.sqrt(p_sig / 10 ** (snr / 10) / max(float(np.mean(noise ** 2)), 1e-12))
        audio = np.clip(audio + noise, -1.0, 1.0).astype(np.float32)
    positions = torch.tensor([(s, s + t) for _, s in layout], dtype=torch.int64).reshape(-1, 2)
    return LongSequence(torch.from_numpy(audio), torch.tensor([labs[i] for i, _ in layout], dtype=torch.int64),
                        positions, torch.tensor(speech, dtype=torch.int64).reshape(-1, 2))


def _looped_noise(bank: NoiseBank, total: int, g: torch.Generator) -> np.ndarray:
    """``total`` samples of one random noise file, from a random point, looped as needed."""
    which = int(torch.randint(len(bank), (1,), generator=g))
    a = bank.bank[int(bank.starts[which]): int(bank.starts[which] + bank.lengths[which])].numpy()
    start = int(torch.randint(a.size, (1,), generator=g))
    return np.resize(np.roll(a, -start), total).astype(np.float64)


def make_long_batch(clips, labels, noises=None, *, batch_size: int, duration_s: float, generator: torch.Generator | None = None,
                    seed: int | None = None, **kw) -> tuple[torch.Tensor, list[LongSequence]]:
    """``batch_size`` sequences of exactly ``duration_s``: (B, L) audio and the per-sequence records."""
    g = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else int(seed))
    bank = noises if isinstance(noises, NoiseBank) else NoiseBank(noises, 1)
    seqs = [make_long_sequence(clips, labels, bank, duration_s=duration_s, generator=g, **kw) for _ in range(batch_size)]
    return torch.stack([s.audio for s in seqs]), seqs
