"""Log-mel frontend, numerically identical to the seminar's torchaudio pipeline.

torchaudio's ``MelSpectrogram(16000, n_fft=400, win_length=400, hop_length=160,
n_mels=40)`` followed by ``log(clamp(x, 1e-9, 1e9))``, rebuilt in plain torch because
the registry's torchaudio cannot import against a CPU torch.  The pipeline is split into
framing, power spectrum, mel projection and log so that the streaming step (which frames
without centring) and the exporters reuse the very same pieces.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kws_export.config import CRNNConfig

LOG_CLAMP = (1e-9, 1e9)


def hann_window(n: int) -> torch.Tensor:
    """Periodic Hann window, as ``torch.hann_window(n)`` (torchaudio's default)."""
    return torch.hann_window(n, periodic=True, dtype=torch.float32)


def hz_to_mel_htk(freq):
    """HTK mel of ``freq``: a float (math, as torchaudio computes the scale's ends) or a
    tensor, elementwise."""
    if isinstance(freq, torch.Tensor):
        return 2595.0 * torch.log10(1.0 + freq / 700.0)
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def mel_to_hz_htk(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_points_hz(n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The filterbank's n_mels + 2 triangle corners in Hz (entries 1..n_mels are the band
    centres), equally spaced on the HTK mel scale from ``f_min`` to ``f_max`` (Nyquist)."""
    f_max = float(sample_rate // 2) if f_max is None else f_max
    return mel_to_hz_htk(torch.linspace(hz_to_mel_htk(f_min), hz_to_mel_htk(f_max), n_mels + 2, dtype=dtype))


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """HTK-scale triangular filterbank without normalisation, shape (n_freqs, n_mels).

    Follows torchaudio.functional.melscale_fbanks step by step in float32, so the
    result matches it bit for bit rather than merely approximately.
    """
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    f_pts = mel_points_hz(n_mels, sample_rate, f_min, f_max)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down, up))


class LogMel(nn.Module):
    """Waveform (batch, samples) -> log-mel (batch, n_mels, frames).

    Buffers are non-persistent: they are a pure function of the config, and keeping
    them out of the state dict lets seminar state dicts load with ``strict=True``.
    """

    def __init__(self, config: CRNNConfig):
        super().__init__()
        self.n_fft = config.n_fft
        self.hop = config.hop
        self.register_buffer("window", hann_window(config.n_fft), persistent=False)
        self.register_buffer(
            "fb", mel_filterbank(config.n_fft // 2 + 1, config.n_mels, config.sample_rate), persistent=False
        )

    def frame(self, audio: torch.Tensor, center: bool = True) -> torch.Tensor:
        """(batch, samples) -> (batch, frames, n_fft).  ``center`` reflect-pads n_fft//2
        on both sides like torch.stft; the streaming path frames without centring."""
        if center:
            pad = self.n_fft // 2
            audio = torch.nn.functional.pad(audio.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        return audio.unfold(-1, self.n_fft, self.hop)

    def power(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., n_fft) frames -> (..., n_fft//2+1) power spectrum of the windowed frames."""
        spec = torch.fft.rfft(frames * self.window)
        return spec.real.square() + spec.imag.square()

    def mel_log(self, power: torch.Tensor) -> torch.Tensor:
        """(..., frames, freqs) power -> (..., n_mels, frames) log-mel."""
        mel = torch.matmul(power, self.fb)
        return torch.log(mel.clamp(*LOG_CLAMP)).transpose(-1, -2)

    def forward(self, audio: torch.Tensor, center: bool = True) -> torch.Tensor:
        return self.mel_log(self.power(self.frame(audio, center)))
