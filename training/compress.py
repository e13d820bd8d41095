"""Compressed variants of a trained CRNN for the comparison report: fp16 weights and a
simulated static int8 model.

The int8 simulation mirrors what the static QDQ export quantizes (docs/streaming.md): the
log-mel frontend stays fp32; every matrix product (conv, the GRU's input and hidden
products, attention energy, classifier) takes int8 weights, symmetric per output channel,
and uint8 activations, asymmetric per tensor, with ranges calibrated (min/max) on training
audio.  Values are quantized and dequantized in float32 ("fake quantization"), so the
numbers it produces are the ones integer kernels would give up to accumulation rounding.
It runs both offline (clips) and in streaming mode (the ``stream_reference`` semantics),
so the report can score it exactly like the fp32 models.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from kws_export import streaming
from kws_export.model import CRNN


def fp16_model(model: CRNN) -> CRNN:
    """A copy whose weights went through float16 (storage precision; compute stays fp32)."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.half().float())
    return m


def quantize_weight(w: Tensor) -> Tensor:
    """Symmetric int8 per output channel (dim 0), returned dequantized."""
    flat = w.reshape(w.shape[0], -1)
    scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    return (torch.round(flat / scale).clamp(-127, 127) * scale).reshape(w.shape)


def fake_quant(x: Tensor, lo: float, hi: float) -> Tensor:
    """Asymmetric uint8 over [lo, hi] (widened to hold 0, as ONNX requires)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    zp = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


class Int8SimCRNN(CRNN):
    """A CRNN with int8 weights and calibrated uint8 activations at every matrix product."""

    def __init__(self, model: CRNN):
        super().__init__(model.config)
        self.load_state_dict(model.state_dict())
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    p.copy_(quantize_weight(p))
        self.ranges: dict[str, list[float]] = {}
        self.calibrating = False
        self.eval()

    # Activation quantization points -------------------------------------------------------------
    def _q(self, name: str, x: Tensor) -> Tensor:
        if self.calibrating:
            lo, hi = float(x.min()), float(x.max())
            r = self.ranges.setdefault(name, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
            return x
        lo, hi = self.ranges[name]
        return fake_quant(x, lo, hi)

    def _gru(self, feats: Tensor) -> Tensor:
        """Explicit GRU over (batch, T, input) with quantized product inputs; eval semantics."""
        p = dict(self.named_parameters())
        b, steps, _ = feats.shape
        h = [feats.new_zeros(b, self.config.hidden) for _ in range(self.config.gru_layers)]
        outs = []
        for t in range(steps):
            x = self._q("gru_in", feats[:, t])
            for layer in range(self.config.gru_layers):
                s = str(layer)
                hq = self._q(f"h{s}", h[layer])
                h[layer] = streaming.gru_cell(x, hq, p["gru.weight_ih_l" + s], p["gru.weight_hh_l" + s],
                                              p["gru.bias_ih_l" + s], p["gru.bias_hh_l" + s])
                x = self._q(f"h{s}", h[layer])
            outs.append(h[-1])
        return torch.stack(outs, dim=1)

    def _energy(self, outs: Tensor) -> Tensor:
        e0, e2 = self.attention.energy[0], self.attention.energy[2]
        hid = torch.tanh(nn.functional.linear(self._q("att_in", outs), e0.weight, e0.bias))
        return nn.functional.linear(self._q("tanh", hid), e2.weight, e2.bias).squeeze(-1)

    def _classify(self, context: Tensor) -> Tensor:
        return self.classifier(self._q("context", context))

    # Offline and streaming paths ---------------------------------------------------------------
    def forward_features(self, logmel: Tensor, return_attention: bool = False):
        feats = self.conv_features(self._q("mel", self.level(logmel)))
        outs = self._gru(feats)
        alpha = torch.softmax(self._energy(outs), dim=-1)
        logits = self._classify((outs * alpha.unsqueeze(-1)).sum(dim=-2))
        return (logits, alpha) if return_attention else logits

    def stream_reference(self, audio: Tensor, window_ms: float | None = None) -> Tensor:
        spec = self.stream_spec(window_ms)
        steps = audio.shape[-1] // spec.step_samples
        audio = audio[:, : steps * spec.step_samples]
        # uncentred frames after the zero prefix: the streaming frontend, computed with LogMel
        mel = self.frontend(nn.functional.pad(audio, (spec.prefix_samples, 0)), center=False)
        if spec.level:
            mel = streaming.level_from_silence(mel, torch.tensor(self.config.level_rate))
        feats = self.conv_features(self._q("mel", mel))
        outs = self._gru(feats)
        context = streaming.window_context(outs, self._energy(outs), spec.window_steps)
        return torch.softmax(self._classify(context), dim=-1)[..., 1]

    @torch.no_grad()
    def calibrate(self, clips: Tensor, stream: Tensor | None = None) -> "Int8SimCRNN":
        """Record activation ranges on float clips [N, samples] (and optionally one stream,
        so the never-reset GRU state's range is covered too)."""
        self.ranges = {}
        self.calibrating = True
        try:
            for start in range(0, clips.shape[0], 256):
                self.forward(clips[start:start + 256])
            if stream is not None:
                self.stream_reference(stream.reshape(1, -1))
        finally:
            self.calibrating = False
        return self


def int8_sim_model(model: CRNN, calib_clips: Tensor, calib_stream: Tensor | None = None) -> Int8SimCRNN:
    return Int8SimCRNN(model.cpu().eval()).calibrate(calib_clips, calib_stream)
