"""Build course-shaped files the way students have them, without torchaudio.

The seminar CRNN below is the course code verbatim in structure; ``FakeMelSpectrogram``
mirrors torchaudio's module tree (``spectrogram.window``, ``mel_scale.fb``) and maths.
"""

from __future__ import annotations

import torch
from torch import nn

from kws_export.frontend import hann_window, mel_filterbank


class SeminarAttention(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.energy = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))

    def forward(self, input):
        energy = self.energy(input)
        alpha = torch.softmax(energy, dim=-2)
        return (input * alpha).sum(dim=-2)


class SeminarCRNN(nn.Module):
    def __init__(self, n_mels=40, channels=8, kernel=(5, 20), stride=(2, 8), hidden=64, layers=2):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=kernel, stride=stride),
            nn.Flatten(start_dim=1, end_dim=2),
        )
        freq = (n_mels - kernel[0]) // stride[0] + 1
        self.gru = nn.GRU(freq * channels, hidden, num_layers=layers, dropout=0.1, batch_first=True)
        self.attention = SeminarAttention(hidden)
        self.classifier = nn.Linear(hidden, 2)

    def forward(self, input):
        input = input.unsqueeze(dim=1)
        conv_output = self.conv(input).transpose(-1, -2)
        gru_output, _ = self.gru(conv_output)
        return self.classifier(self.attention(gru_output))


class _Spectrogram(nn.Module):
    def __init__(self, n_fft, hop):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", hann_window(n_fft))

    def forward(self, x):
        spec = torch.stft(x, self.n_fft, self.hop, self.n_fft, self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        return spec.abs().pow(2.0)


class _MelScale(nn.Module):
    def __init__(self, fb):
        super().__init__()
        self.register_buffer("fb", fb)

    def forward(self, spec):
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)


class FakeMelSpectrogram(nn.Module):
    def __init__(self, sample_rate=16000, n_fft=400, hop=160, n_mels=40):
        super().__init__()
        self.spectrogram = _Spectrogram(n_fft, hop)
        self.mel_scale = _MelScale(mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate))

    def forward(self, x):
        return self.mel_scale(self.spectrogram(x))


class LogMelSpec(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.melspec = FakeMelSpectrogram(**kw)

    def forward(self, x):
        return torch.log(self.melspec(x).clamp(min=1e-9, max=1e9))


class CourseStreamModel(nn.Module):
    """The deployment shape of the course's ``stream.py``: waveform batch -> P(keyword)."""

    def __init__(self, crnn: SeminarCRNN, **spec_kw):
        super().__init__()
        self.m = crnn
        self.spec = LogMelSpec(**spec_kw)

    def forward(self, x):
        return torch.softmax(self.m(self.spec(x)), dim=-1)[:, 1]


def make_course_torchscript(path, crnn: SeminarCRNN | None = None, **spec_kw):
    torch.manual_seed(0)
    module = CourseStreamModel(crnn or SeminarCRNN(), **spec_kw).eval()
    scripted = torch.jit.script(module)
    scripted.save(str(path))
    return module
