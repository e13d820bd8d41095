"""The CRNN keyword spotter: one definition for training, streaming and export.

Submodule names (``conv.0``, ``gru``, ``attention.energy.{0,2}``, ``classifier``) are
the seminar's, so a seminar state dict loads with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from kws_export import streaming
from kws_export.config import CRNNConfig
from kws_export.frontend import LogMel


class Attention(nn.Module):
    """Additive self-attention pooling over time: Linear-Tanh-Linear energies, softmax."""

    def __init__(self, hidden: int):
        super().__init__()
        self.energy = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, time, hidden) -> (batch, time) attention distribution."""
        return torch.softmax(self.energy(x).squeeze(-1), dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.weights(x)
        return (x * alpha.unsqueeze(-1)).sum(dim=-2), alpha


class CRNN(nn.Module):
    """log-mel -> Conv2d -> flatten -> GRU -> attention -> Linear."""

    def __init__(self, config: CRNNConfig):
        super().__init__()
        self.config = config
        self.frontend = LogMel(config)
        self.conv = nn.Sequential(
            nn.Conv2d(1, config.channels, kernel_size=config.kernel, stride=config.stride),
            nn.Flatten(start_dim=1, end_dim=2),
        )
        self.gru = nn.GRU(
            input_size=config.gru_input,
            hidden_size=config.hidden,
            num_layers=config.gru_layers,
            dropout=config.dropout if config.gru_layers > 1 else 0.0,
            batch_first=True,
        )
        self.attention = Attention(config.hidden)
        self.classifier = nn.Linear(config.hidden, config.num_classes)

    # Offline path (whole clips) ------------------------------------------------------
    def conv_features(self, logmel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) -> (batch, steps, channels * conv_freq)."""
        return self.conv(logmel.unsqueeze(1)).transpose(-1, -2)

    def level(self, logmel: torch.Tensor) -> torch.Tensor:
        """A clip's log-mel as the conv sees it: levelled when the config levels its input
        (``CRNNConfig.level_norm_ms``, ``streaming.level_clip``), else unchanged."""
        if self.config.level_norm_ms <= 0:
            return logmel
        return streaming.level_clip(logmel, torch.tensor(self.config.level_rate, device=logmel.device))

    def forward_features(self, logmel: torch.Tensor, return_attention: bool = False):
        """Seminar ``CRNN.forward``: log-mel in, class logits out (optionally the
        attention distribution too, for attention distillation)."""
        gru_out, _ = self.gru(self.conv_features(self.level(logmel)))
        context, alpha = self.attention(gru_out)
        logits = self.classifier(context)
        return (logits, alpha) if return_attention else logits

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) waveform -> (batch, num_classes) logits."""
        return self.forward_features(self.frontend(audio))

    def keyword_prob(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch,) probability of the keyword (class 1)."""
        return torch.softmax(self.forward(audio), dim=-1)[:, 1]

    # Streaming mode (docs/streaming.md; the pieces live in kws_export/streaming.py) ----
    def stream_spec(self, window_ms: float | None = None) -> streaming.StreamSpec:
        return streaming.stream_spec(self.config, window_ms)

    def init_state(self, batch: int = 1, window_ms: float | None = None) -> dict[str, torch.Tensor]:
        """State of a detector that has heard only silence (dict of batch-first tensors)."""
        return streaming.init_state(self.stream_spec(window_ms), batch)

    def step(self, chunk: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """chunk (batch, k * step_samples) -> (P(keyword) per step (batch, k), new state).
        The attention window is the one ``state`` was made with."""
        spec = self.stream_spec()
        streaming.check_chunk(chunk, spec.step_samples)
        streaming.check_state(state, streaming.init_state(spec, chunk.shape[0]))
        return streaming.step(chunk, state, streaming.params(self), spec.n_fft, spec.hop,
                              list(self.config.stride), self.config.gru_layers)

    def stream_reference(self, audio: torch.Tensor, window_ms: float | None = None, mel_transform=None) -> torch.Tensor:
        """(batch, samples) -> (batch, samples // step_samples): what ``step`` emits over
        the whole stream, computed offline in one batched, differentiable pass
        (``mel_transform``: a training-time augmentation of its log-mel, see
        ``streaming.reference``)."""
        return streaming.reference(audio, self.gru, streaming.params(self), self.stream_spec(window_ms),
                                   list(self.config.stride), mel_transform)

    def stream_reference_outputs(self, audio: torch.Tensor, mel_transform=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``stream_reference`` and the GRU's output at every step (``streaming.reference_outputs``)."""
        return streaming.reference_outputs(audio, self.gru, streaming.params(self), self.stream_spec(None),
                                           list(self.config.stride), mel_transform)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
