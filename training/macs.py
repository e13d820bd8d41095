"""Cost of a CRNN: parameters, multiply-accumulates per second of audio, weight bytes.

MACs are counted for the *streaming* detector (docs/streaming.md), which is what runs on
the device: every conv step (``stride_t * hop`` samples, 80 ms for the seminar config)
costs one conv column, one GRU step per layer, one attention energy, a softmax-weighted
sum over the W stored GRU outputs and the classifier.  The frontend is counted
separately because its cost depends on how the DFT is implemented; the figure here is
the dense-DFT one (a real DFT as a matrix product), the upper bound an exporter may beat.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kws_export.config import CRNNConfig

# Bytes per output channel of a per-channel int8 weight: an fp32 scale and an int8 zero point.
INT8_CHANNEL_OVERHEAD = 4 + 1


def steps_per_second(config: CRNNConfig) -> float:
    return config.sample_rate / (config.stride[1] * config.hop)


def frames_per_second(config: CRNNConfig) -> float:
    return config.sample_rate / config.hop


def network_macs_per_step(config: CRNNConfig, density: dict[str, float] | None = None) -> dict[str, int]:
    """MACs of one streaming step, by part.  ``density`` (fraction of non-zero weights per
    part, from pruning) scales the weight products of that part."""
    d = {"conv": 1.0, "gru": 1.0, "attention": 1.0, "classifier": 1.0, **(density or {})}
    kf, kt = config.kernel
    h = config.hidden
    w = config.clip_steps  # the attention window W in steps
    conv = config.channels * config.conv_freq * kf * kt
    gru = 0
    gru_elementwise = 0
    for layer in range(config.gru_layers):
        inp = config.gru_input if layer == 0 else h
        gru += 3 * h * (inp + h)  # W_ih x and W_hh h for the r, z, n gates
        gru_elementwise += 3 * h  # r*(W_hn h), z*h and (1-z)*n
    energy = h * h + h  # Linear(h, h) -> tanh -> Linear(h, 1) for the new output only
    pooled = w * h  # softmax-weighted sum of the W stored outputs
    classifier = h * config.num_classes
    parts = {
        "conv": round(conv * d["conv"]),
        "gru": round(gru * d["gru"]) + gru_elementwise,
        "attention": round(energy * d["attention"]) + pooled,
        "classifier": round(classifier * d["classifier"]),
    }
    parts["total"] = sum(parts.values())
    return parts


def network_macs_per_second(config: CRNNConfig, density: dict[str, float] | None = None) -> float:
    return network_macs_per_step(config, density)["total"] * steps_per_second(config)


def frontend_macs_per_frame(config: CRNNConfig) -> dict[str, int]:
    """Dense real DFT: Hann window, cos and sin rows for n_fft//2+1 bins, power, mel matrix."""
    bins = config.n_fft // 2 + 1
    parts = {
        "window": config.n_fft,
        "dft": 2 * bins * config.n_fft,
        "power": 2 * bins,
        "mel": bins * config.n_mels,
    }
    parts["total"] = sum(parts.values())
    return parts


def frontend_macs_per_second(config: CRNNConfig) -> float:
    return frontend_macs_per_frame(config)["total"] * frames_per_second(config)


def fft_frontend_macs_per_second(config: CRNNConfig) -> float:
    """Rough figure for an FFT-based frontend (~2 n log2 n real MACs per frame) plus the
    dense mel product; for comparison with the dense-DFT number only."""
    bins = config.n_fft // 2 + 1
    per_frame = config.n_fft + 2 * config.n_fft * math.log2(config.n_fft) + 2 * bins + bins * config.n_mels
    return per_frame * frames_per_second(config)


def export_frontend_macs_per_second(config: CRNNConfig) -> float | None:
    """MACs of the frontend the streaming export actually runs (a mixed-radix DFT whose
    stage kernels ``kws_export.streaming.dft_kernels`` builds: a grouped conv, one shared
    matrix, power, mel), counted from the kernels' shapes; None if unavailable."""
    try:
        from kws_export.frontend import LogMel
        from kws_export.streaming import dft_kernels

        k = dft_kernels(config.n_fft, config.hop, LogMel(config).fb)
        w1, t2, fb = k["dft.w1"], k["dft.t2"], k["dft.fb"]
    except Exception:  # the export's frontend is not there (or has changed shape)
        return None
    n1 = w1.shape[-1]
    per_frame = w1.numel() + t2.numel() * n1 + fb.shape[1] + fb.numel()
    return float(per_frame * frames_per_second(config))


# Sizes ---------------------------------------------------------------------------------------------
def parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p.detach()) for n, p in model.named_parameters()]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for _, p in parameters(model))


def fp32_bytes(model: nn.Module) -> int:
    return 4 * count_params(model)


def fp16_bytes(model: nn.Module) -> int:
    return 2 * count_params(model)


def int8_bytes(model: nn.Module) -> int:
    """Estimated int8 weight payload: one byte per value, plus an fp32 scale and an int8
    zero point per output channel of every weight matrix / conv kernel (per-channel
    quantization), and one scale + zero point per bias vector."""
    total = 0
    for _, p in parameters(model):
        channels = p.shape[0] if p.dim() >= 2 else 1
        total += p.numel() + INT8_CHANNEL_OVERHEAD * channels
    return total


def sparse_bytes(model: nn.Module, bytes_per_value: int = 4) -> int:
    """Storage of a pruned model: non-zero values plus a one-bit-per-weight mask."""
    total = 0
    for _, p in parameters(model):
        nnz = int(torch.count_nonzero(p))
        total += nnz * bytes_per_value + math.ceil(p.numel() / 8)
    return total


def part_density(model: nn.Module) -> dict[str, float]:
    """Fraction of non-zero weight entries per network part (1.0 for a dense model)."""
    groups = {"conv": "conv.", "gru": "gru.", "attention": "attention.", "classifier": "classifier."}
    out = {}
    for part, prefix in groups.items():
        ws = [p for n, p in parameters(model) if n.startswith(prefix) and p.dim() >= 2]
        numel = sum(p.numel() for p in ws)
        out[part] = float(sum(int(torch.count_nonzero(p)) for p in ws) / numel) if numel else 1.0
    return out


def model_costs(model: nn.Module) -> dict:
    """Everything `kws-train eval` reports about cost, for a CRNN."""
    config: CRNNConfig = model.config
    density = part_density(model)
    sparse = any(v < 0.999 for v in density.values())
    costs = {
        "params": count_params(model),
        "macs_per_second_network": network_macs_per_second(config),
        "macs_per_second_frontend": frontend_macs_per_second(config),
        "macs_per_second_frontend_export": export_frontend_macs_per_second(config),
        "macs_per_step_network": network_macs_per_step(config),
        "fp32_bytes": fp32_bytes(model),
        "fp16_bytes": fp16_bytes(model),
        "int8_bytes": int8_bytes(model),
        "steps_per_second": steps_per_second(config),
    }
    if sparse:
        costs["weight_density"] = density
        costs["macs_per_second_network_sparse"] = network_macs_per_second(config, density)
        costs["sparse_fp32_bytes"] = sparse_bytes(model, 4)
    return costs
