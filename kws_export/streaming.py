"""The streaming pieces of the CRNN, each with an offline twin (docs/streaming.md).

A step consumes ``stride_t * hop`` samples per conv step and carries four kinds of
state: the audio tail (framing), the mel tail (conv), the GRU hidden state and the
attention ring (and a fifth, the running log-mel level, when the config levels its
input).  Every function below takes tensors, not modules, so the TorchScript exporter
scripts them unchanged; ``CRNN.init_state/step/stream_reference`` are thin
wrappers that pass the model's own parameters (``params(model)``).

The streaming log-mel computes its DFT exactly as the exported ONNX graph does: a
two-stage mixed-radix factorization n_fft = N1 x N2 (400 = 20 x 20) in float32, with the
same constants.  Two float32 DFT algorithms differ by up to ~1e-3 in the log of bins
60 dB below a frame's peak (rounding of the strong bins leaks into the weak ones), which
a model can turn into 1e-5 of probability; one algorithm on both sides keeps PyTorch and
ONNX within ~1e-6 of log-mel.  Against torch.fft.rfft it is equally accurate (see
tests/test_streaming.py and docs/streaming.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kws_export.config import CRNNConfig
from kws_export.errors import KWSError
from kws_export.frontend import LOG_CLAMP

# Energy of an empty attention slot: exp(FILL - max) underflows to exactly 0 in float32
# for any energy a Linear-Tanh-Linear head produces, so empty slots get zero weight
# (|energy| <= sum|w2| + |b2|, far below 1e4 for any trained head).
ENERGY_FILL = -1.0e4
# log-mel of silence: power 0 is clamped to 1e-9 before the log.
SILENCE_LOGMEL = float(torch.log(torch.tensor(LOG_CLAMP[0], dtype=torch.float32)))


@dataclass(frozen=True)
class StreamSpec:
    """Sizes of the streaming step (seminar values in comments)."""

    step_samples: int      # 1280: samples per conv step, stride_t * hop
    audio_tail: int        # 240: n_fft - hop samples the next frame still needs
    mel_tail: int          # 12: kernel_t - stride_t frames the next conv column still needs
    frames_per_step: int   # 8: stride_t
    window_steps: int      # 11: attention window W in conv steps
    n_mels: int
    hidden: int
    gru_layers: int
    sample_rate: int
    hop: int
    n_fft: int
    level: bool = False    # a running per-bin log-mel level is subtracted (CRNNConfig.level_norm_ms)

    @property
    def prefix_samples(self) -> int:
        """Zero samples that implicitly precede the stream (2,160)."""
        return self.mel_tail * self.hop + self.audio_tail

    @property
    def window_ms(self) -> float:
        return 1000.0 * self.window_steps * self.step_samples / self.sample_rate

    def state_shapes(self, batch: int = 1) -> Dict[str, Tuple[int, ...]]:
        """Every state is batch-first; one hidden state per GRU layer (gru_h0, gru_h1, ...)."""
        shapes: Dict[str, Tuple[int, ...]] = {
            "audio_tail": (batch, self.audio_tail),
            "mel_tail": (batch, self.n_mels, self.mel_tail),
        }
        if self.level:
            shapes["mel_level"] = (batch, self.n_mels)
        for layer in range(self.gru_layers):
            shapes["gru_h" + str(layer)] = (batch, self.hidden)
        shapes["att_out"] = (batch, self.window_steps, self.hidden)
        shapes["att_energy"] = (batch, self.window_steps)
        return shapes

    def state_inits(self) -> Dict[str, float]:
        inits = {name: 0.0 for name in self.state_shapes()}
        inits["mel_tail"] = SILENCE_LOGMEL
        if self.level:
            # silence heard against a level of silence: the tail holds levelled zeros
            inits["mel_tail"] = 0.0
            inits["mel_level"] = SILENCE_LOGMEL
        inits["att_energy"] = ENERGY_FILL
        return inits

    def states(self, batch: int = 1) -> List[dict]:
        """The ``kws.states`` list: name, shape, init fill value."""
        inits = self.state_inits()
        return [{"name": n, "shape": list(s), "init": inits[n]} for n, s in self.state_shapes(batch).items()]


def stream_spec(config: CRNNConfig, window_ms: float | None = None) -> StreamSpec:
    """Derive the step sizes; ``window_ms`` overrides the attention window (default: the
    number of conv steps one training clip produces offline, 11 for 1 s)."""
    kt, st = config.kernel[1], config.stride[1]
    if kt < st:
        raise KWSError(f"cannot stream a conv whose time kernel {kt} is shorter than its time stride {st}")
    if config.n_fft < config.hop:
        raise KWSError(f"cannot stream with n_fft {config.n_fft} shorter than hop {config.hop}")
    step = st * config.hop
    if window_ms is None:
        window = config.clip_steps
    else:
        if not window_ms > 0:
            raise KWSError(f"window must be positive, got {window_ms} ms")
        window = max(1, int(round(window_ms * config.sample_rate / 1000.0 / step)))
    return StreamSpec(step, config.n_fft - config.hop, kt - st, st, window, config.n_mels,
                      config.hidden, config.gru_layers, config.sample_rate, config.hop, config.n_fft,
                      config.level_norm_ms > 0)


def init_state(spec: StreamSpec, batch: int = 1) -> Dict[str, Tensor]:
    """The state of a detector that has heard only silence."""
    inits = spec.state_inits()
    return {name: torch.full(shape, inits[name], dtype=torch.float32) for name, shape in spec.state_shapes(batch).items()}


def params(model: nn.Module) -> Dict[str, Tensor]:
    """Parameters and frontend buffers by state-dict name, plus the streaming DFT's
    kernels (``dft.*``): what the functions below read."""
    p = dict(model.named_parameters())
    p["frontend.window"] = model.frontend.window
    p["frontend.fb"] = model.frontend.fb
    cfg = model.config
    for name, value in dft_kernels(cfg.n_fft, cfg.hop, model.frontend.fb).items():
        p[name] = value.to(model.frontend.fb.device)
    if cfg.level_norm_ms > 0:
        p["level.rate"] = torch.tensor(cfg.level_rate, dtype=torch.float32, device=model.frontend.fb.device)
    return p


# The streaming DFT -----------------------------------------------------------------------
def split_fft(n_fft: int, hop: int) -> Tuple[int, int]:
    """n_fft = N1 * N2 with N2 dividing hop (frames start on N2-sample block boundaries)
    and N1 as close to sqrt(n_fft) as that allows; (n_fft, 1) is a plain dense DFT."""
    best = (n_fft, 1)
    for n2 in range(1, n_fft + 1):
        if n_fft % n2 == 0 and hop % n2 == 0:
            n1 = n_fft // n2
            if abs(math.log(n1 / math.sqrt(n_fft))) < abs(math.log(best[0] / math.sqrt(n_fft))):
                best = (n1, n2)
    return best


def _cos_sin(k_times_n: Tensor, n: int) -> Tuple[Tensor, Tensor]:
    """cos, sin of 2*pi*(k*n mod n)/n in float32: the integer product is reduced exactly
    first (the ONNX graph computes the very same ops)."""
    ang = (k_times_n % n).to(torch.float32) * torch.tensor(2.0 * math.pi / n, dtype=torch.float32)
    return torch.cos(ang), torch.sin(ang)


def dft_kernels(n_fft: int, hop: int, fb: Tensor) -> Dict[str, Tensor]:
    """Stage-1 grouped-conv kernel, stage-2 matrix and the mel matrix of the streaming DFT.

    A frame sample is n = N2*n1 + n2.  Stage 1, one grouped conv (group n2, taps n1,
    periodic Hann window and twiddles folded in):
        A[n2, k1] = sum_n1 x[n] w[n] exp(-2j*pi*k1*n/n_fft)        -> "dft.w1" [N2*2*N1, 1, N1]
    Stage 2, one matrix shared by every k1:
        X[k1 + N1*k2] = sum_n2 A[n2, k1] exp(-2j*pi*n2*k2/N2)      -> "dft.t2" [2*K2, 2*N2]
    for k2 < K2 = (n_fft/2) // N1 + 1.  "dft.fb" [n_mels, 2*K2*N1] is ``fb`` at those bins
    (re and im rows alike, zero above Nyquist), so power and mel are one product."""
    n1, n2 = split_fft(n_fft, hop)
    k2n = (n_fft // 2) // n1 + 1
    n = torch.arange(n2).unsqueeze(1) + torch.arange(n1).unsqueeze(0) * n2                  # [n2, n1]
    c, s = _cos_sin(n.unsqueeze(1) * torch.arange(n1).reshape(1, n1, 1), n_fft)            # [n2, k1, n1]
    ang_w = n.to(torch.float32) * torch.tensor(2.0 * math.pi / n_fft, dtype=torch.float32)
    window = (0.5 - torch.cos(ang_w) * 0.5).unsqueeze(1)                                    # periodic Hann
    w1 = torch.stack([c * window, -(s * window)], dim=1).reshape(2 * n1 * n2, 1, n1)
    c, s = _cos_sin(torch.arange(k2n).unsqueeze(1) * torch.arange(n2).unsqueeze(0), n2)    # [k2, n2]
    # (a_re + j a_im)(cos - j sin): re = a_re cos + a_im sin, im = a_im cos - a_re sin
    t2 = torch.cat([torch.stack([c, s], dim=-1), torch.stack([-s, c], dim=-1)], dim=0).reshape(2 * k2n, 2 * n2)
    bins = (torch.arange(k2n).unsqueeze(1) * n1 + torch.arange(n1).unsqueeze(0)).reshape(-1)  # k1 + N1*k2
    padded = torch.cat([fb, fb.new_zeros(n1, fb.shape[1])])      # bins above n_fft/2 weigh 0
    fb_bins = padded[bins.clamp(max=fb.shape[0])].t()
    return {"dft.w1": w1, "dft.t2": t2, "dft.fb": torch.cat([fb_bins, fb_bins], dim=1).contiguous()}


# Framing ---------------------------------------------------------------------------------
def chunk_buffer(audio_tail: Tensor, chunk: Tensor) -> Tuple[Tensor, Tensor]:
    """(batch, n_fft-hop) tail + (batch, k*step) chunk -> the samples this call frames
    (batch, n_fft-hop + k*step) and the new tail: the first new frame starts n_fft-hop
    samples before the chunk, the last one ends with it."""
    buffer = torch.cat([audio_tail, chunk], dim=-1)
    return buffer, buffer[:, buffer.shape[-1] - audio_tail.shape[-1]:]


def stream_buffer(audio: Tensor, prefix: int) -> Tensor:
    """Offline twin: the whole stream behind its zero prefix."""
    return F.pad(audio, (prefix, 0))


def frames_of(buffer: Tensor, n_fft: int, hop: int) -> Tensor:
    """Uncentred frames (batch, F, n_fft) of a buffer: frame j = buffer[j*hop : j*hop+n_fft]."""
    return buffer.unfold(-1, n_fft, hop)


def logmel_buffer(buffer: Tensor, w1: Tensor, t2: Tensor, fb: Tensor, hop: int) -> Tensor:
    """Buffer (batch, L) -> log-mel (batch, n_mels, (L - n_fft)//hop + 1) of its uncentred
    frames, with the mixed-radix DFT of ``dft_kernels`` (L a multiple of N2)."""
    n2 = t2.shape[1] // 2
    n1 = w1.shape[2]
    batch = buffer.shape[0]
    blocks = buffer.reshape(batch, -1, n2).transpose(1, 2)                   # [B, N2, L/N2]
    a = F.conv1d(blocks, w1, stride=hop // n2, groups=n2)                    # [B, (n2, re/im, k1), F]
    y = torch.matmul(t2, a.reshape(batch, 2 * n2, -1))                       # [B, (re/im, k2), (k1, F)]
    power = (y * y).reshape(batch, fb.shape[1], -1)                          # [B, (re/im, k2, k1), F]
    return torch.log(torch.matmul(fb, power).clamp(1e-9, 1e9))


def logmel(frames: Tensor, window: Tensor, fb: Tensor) -> Tensor:
    """(batch, frames, n_fft) -> (batch, n_mels, frames): the LogMel.power + mel_log maths
    (clamp = frontend.LOG_CLAMP, written out because TorchScript cannot read globals)."""
    spec = torch.fft.rfft(frames * window)
    power = spec.real.square() + spec.imag.square()
    return torch.log(torch.matmul(power, fb).clamp(1e-9, 1e9)).transpose(-1, -2)


# Level normalisation (CRNNConfig.level_norm_ms) -------------------------------------------
def level_kernels(rate: Tensor, frames: int) -> Tuple[Tensor, Tensor]:
    """The running level over ``frames`` new frames as one product: with a the rate,
    level_j = sum_{i<=j} a (1-a)^(j-i) x_i + (1-a)^(j+1) level_before, so
    levels = x @ K.T + level_before * d with K[j, i] = a (1-a)^(j-i) (i <= j) and
    d[j] = (1-a)^(j+1).  The exported step bakes the same K and d in as constants."""
    j = torch.arange(frames, device=rate.device)
    lag = j.unsqueeze(1) - j.unsqueeze(0)
    keep = 1.0 - rate
    k = torch.where(lag >= 0, rate * keep ** lag.clamp(min=0).to(rate.dtype), torch.zeros_like(rate))
    return k, keep ** (j + 1).to(rate.dtype)


def level_block(mel: Tensor, level: Tensor, rate: Tensor) -> Tuple[Tensor, Tensor]:
    """(batch, n_mels, F) log-mel and the (batch, n_mels) level before it -> the log-mel
    minus the running level at each frame (the frame itself included) and the new level."""
    k, d = level_kernels(rate, mel.shape[-1])
    levels = torch.matmul(mel, k.t()) + level.unsqueeze(-1) * d
    return mel - levels, levels[:, :, -1]


def level_stream(mel: Tensor, level: Tensor, rate: Tensor, block: int = 64) -> Tuple[Tensor, Tensor]:
    """``level_block`` over any number of frames, on blocks of ``block`` frames in turn: one
    (block x block) product each keeps memory flat and the powers of 1 - a far from
    underflow.  The offline twin of a whole stream, and what the step runs on its chunk."""
    out: List[Tensor] = []
    for start in range(0, mel.shape[-1], block):
        levelled, level = level_block(mel[:, :, start:start + block], level, rate)
        out.append(levelled)
    return (torch.cat(out, dim=-1) if out else mel), level


def level_from_silence(mel: Tensor, rate: Tensor) -> Tensor:
    """A whole stream levelled as the step levels it from ``init_state``: the level starts
    at the log-mel of silence (the offline twin of the ``mel_level`` state)."""
    return level_stream(mel, mel.new_full(mel.shape[:2], SILENCE_LOGMEL), rate)[0]


def level_clip(mel: Tensor, rate: Tensor) -> Tensor:
    """A clip on its own (the offline model) has no past to run a level over: the level
    starts at the clip's per-bin mean over frames and runs through the clip as in a stream,
    so the clip is levelled as a detector that had been hearing its level would level it."""
    return level_stream(mel, mel.mean(dim=-1), rate)[0]


# Conv column -----------------------------------------------------------------------------
def conv_features(mel: Tensor, weight: Tensor, bias: Tensor, stride: List[int]) -> Tensor:
    """(batch, n_mels, frames) -> (batch, steps, channels*conv_freq), seminar flatten order."""
    out = F.conv2d(mel.unsqueeze(1), weight, bias, stride)
    return out.flatten(1, 2).transpose(-1, -2)


def conv_columns(mel_tail: Tensor, mel_new: Tensor, weight: Tensor, bias: Tensor, stride: List[int]) -> Tuple[Tensor, Tensor]:
    """mel tail (batch, n_mels, kt-st) + new frames (batch, n_mels, k*st) ->
    features (batch, k, channels*conv_freq) and the new mel tail."""
    window = torch.cat([mel_tail, mel_new], dim=-1)
    return conv_features(window, weight, bias, stride), window[:, :, window.shape[-1] - mel_tail.shape[-1]:]


# GRU -------------------------------------------------------------------------------------
def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """One torch.nn.GRU step as two matrix products (the ones int8 quantizes); gates r, z, n."""
    gi = torch.matmul(x, w_ih.t()) + b_ih
    gh = torch.matmul(h, w_hh.t()) + b_hh
    hid = h.shape[-1]
    rz = torch.sigmoid(gi[:, : 2 * hid] + gh[:, : 2 * hid])
    r, z = rz[:, :hid], rz[:, hid:]
    n = torch.tanh(gi[:, 2 * hid:] + r * gh[:, 2 * hid:])
    return n + z * (h - n)


def gru_step(x: Tensor, state: Dict[str, Tensor], p: Dict[str, Tensor], layers: int) -> Tensor:
    """x (batch, input) -> top-layer output (batch, hidden); updates ``state["gru_h<l>"]``
    in the dict (not the tensors).  Eval semantics: no inter-layer dropout."""
    inp = x
    for layer in range(layers):
        s = str(layer)
        inp = gru_cell(inp, state["gru_h" + s], p["gru.weight_ih_l" + s], p["gru.weight_hh_l" + s],
                       p["gru.bias_ih_l" + s], p["gru.bias_hh_l" + s])
        state["gru_h" + s] = inp
    return inp


# Attention ring --------------------------------------------------------------------------
def attention_energy(out: Tensor, p: Dict[str, Tensor]) -> Tensor:
    """(..., hidden) -> (...): a GRU output's attention energy, computed once per step."""
    hid = torch.tanh(F.linear(out, p["attention.energy.0.weight"], p["attention.energy.0.bias"]))
    return F.linear(hid, p["attention.energy.2.weight"], p["attention.energy.2.bias"]).squeeze(-1)


def ring_push(att_out: Tensor, att_energy: Tensor, out: Tensor, energy: Tensor) -> Tuple[Tensor, Tensor]:
    """Drop the oldest of the W stored outputs and energies, append the newest.  Softmax
    pooling ignores order, so a shift buffer is as good as a ring index and exports simply."""
    att_out = torch.cat([att_out[:, 1:], out.unsqueeze(1)], dim=1)
    att_energy = torch.cat([att_energy[:, 1:], energy.unsqueeze(1)], dim=1)
    return att_out, att_energy


def ring_context(att_out: Tensor, att_energy: Tensor) -> Tensor:
    """Softmax over the W stored energies, weighted sum of the stored outputs."""
    alpha = torch.softmax(att_energy, dim=-1)
    return (att_out * alpha.unsqueeze(-1)).sum(dim=1)


def window_context(outs: Tensor, energies: Tensor, window: int) -> Tensor:
    """Offline twin of the ring: outputs (batch, T, hidden) and energies (batch, T) ->
    (batch, T, hidden), attention at every step over the last ``window`` outputs (fewer
    at the start, padded with the same fill the ring starts with)."""
    padded_out = F.pad(outs, (0, 0, window - 1, 0))
    padded_e = F.pad(energies, (window - 1, 0), value=ENERGY_FILL)
    win_out = padded_out.unfold(1, window, 1)                    # (batch, T, hidden, W)
    alpha = torch.softmax(padded_e.unfold(1, window, 1), dim=-1)  # (batch, T, W)
    return torch.matmul(win_out, alpha.unsqueeze(-1)).squeeze(-1)


def keyword_prob(context: Tensor, p: Dict[str, Tensor]) -> Tensor:
    """softmax(classifier(context))[keyword], keyword = class 1 as in the seminar."""
    return torch.softmax(F.linear(context, p["classifier.weight"], p["classifier.bias"]), dim=-1)[..., 1]


# The whole chain -------------------------------------------------------------------------
def step(chunk: Tensor, state: Dict[str, Tensor], p: Dict[str, Tensor], n_fft: int, hop: int,
         stride: List[int], layers: int) -> Tuple[Tensor, Dict[str, Tensor]]:
    """One call: chunk (batch, k*step_samples) -> probabilities (batch, k), new state."""
    new = state.copy()  # the caller's dict and tensors are left as they were
    buffer, new["audio_tail"] = chunk_buffer(state["audio_tail"], chunk)
    mel = logmel_buffer(buffer, p["dft.w1"], p["dft.t2"], p["dft.fb"], hop)
    if "level.rate" in p:
        mel, new["mel_level"] = level_stream(mel, state["mel_level"], p["level.rate"])
    feats, new["mel_tail"] = conv_columns(state["mel_tail"], mel, p["conv.0.weight"], p["conv.0.bias"], stride)
    probs: List[Tensor] = []
    for t in range(feats.shape[1]):
        out = gru_step(feats[:, t], new, p, layers)
        new["att_out"], new["att_energy"] = ring_push(new["att_out"], new["att_energy"], out, attention_energy(out, p))
        probs.append(keyword_prob(ring_context(new["att_out"], new["att_energy"]), p))
    return torch.stack(probs, dim=1), new


def reference(audio: Tensor, gru: nn.GRU, p: Dict[str, Tensor], spec: StreamSpec, stride: List[int],
              mel_transform: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Offline reference of exactly the streaming semantics: (batch, samples) ->
    (batch, samples // step_samples).  Batched and differentiable; it runs ``gru`` (the
    model's nn.GRU, fast and with its training-mode dropout) over the whole stream from a
    zero state, which is what the never-reset streaming GRU computes.  ``mel_transform``
    (training only: a feature augmentation) maps the (batch, n_mels, frames) log-mel."""
    return reference_outputs(audio, gru, p, spec, stride, mel_transform)[0]


def reference_outputs(audio: Tensor, gru: nn.GRU, p: Dict[str, Tensor], spec: StreamSpec, stride: List[int],
                      mel_transform: Optional[Callable[[Tensor], Tensor]] = None) -> Tuple[Tensor, Tensor]:
    """``reference`` and the last GRU layer's output at every step, (batch, steps, hidden):
    what a training loss on the student's representation reads."""
    steps = audio.shape[-1] // spec.step_samples
    if steps == 0:
        return audio.new_zeros(audio.shape[0], 0), audio.new_zeros(audio.shape[0], 0, gru.hidden_size)
    audio = audio[:, : steps * spec.step_samples]
    mel = logmel_buffer(stream_buffer(audio, spec.prefix_samples), p["dft.w1"], p["dft.t2"], p["dft.fb"], spec.hop)
    if mel_transform is not None:
        mel = mel_transform(mel)
    if "level.rate" in p:
        mel = level_from_silence(mel, p["level.rate"])
    outs, _ = gru(conv_features(mel, p["conv.0.weight"], p["conv.0.bias"], stride))
    context = window_context(outs, attention_energy(outs, p), spec.window_steps)
    return keyword_prob(context, p), outs


def check_state(state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Name the state and the shape it should have, rather than failing deep in a MatMul.
    The attention ring's length (dim 1 of att_*) is the window the state was made with."""
    window = state["att_energy"].shape[1] if isinstance(state.get("att_energy"), Tensor) and state["att_energy"].dim() == 2 else None
    for name, ref in expected.items():
        got = state.get(name)
        if not isinstance(got, Tensor):
            raise KWSError(f"streaming state is missing {name} (expected shape {tuple(ref.shape)})")
        want = list(ref.shape)
        if name.startswith("att_") and window is not None:
            want[1] = window
        if list(got.shape) != want:
            raise KWSError(f"streaming state {name} has shape {tuple(got.shape)}, expected {tuple(want)}")


def check_chunk(chunk: Tensor, step_samples: int) -> None:
    if chunk.dim() != 2 or chunk.shape[-1] == 0 or chunk.shape[-1] % step_samples:
        raise KWSError(f"a streaming chunk must be (batch, k * {step_samples}) samples, got {tuple(chunk.shape)}")
