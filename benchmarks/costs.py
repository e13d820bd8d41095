"""Static costs of a model: parameters, MACs per second of audio (network and frontend)."""

from __future__ import annotations

from kws_export.config import CRNNConfig
from kws_export.model import CRNN
from kws_export.streaming import split_fft
from training import macs


def graph_frontend_macs_per_frame(config: CRNNConfig) -> int:
    """MACs per frame of the frontend as the exported graph computes it: the two-stage
    mixed-radix DFT of kws_export/streaming.py (n_fft = N1 x N2), power, mel product.
    training/macs.py counts a dense DFT (the upper bound); this is what actually runs."""
    n1, n2 = split_fft(config.n_fft, config.hop)
    k2 = (config.n_fft // 2) // n1 + 1
    stage1 = 2 * n1 * n1 * n2         # grouped conv: n2 groups x (re, im) x n1 bins k1 x n1 taps
    stage2 = (2 * k2) * (2 * n2) * n1  # one [2*K2, 2*N2] matrix per k1
    power = 2 * k2 * n1
    mel = config.n_mels * 2 * k2 * n1  # filterbank at the (permuted) bins, re and im rows
    return stage1 + stage2 + power + mel


def model_costs(model: CRNN) -> dict:
    cfg = model.config
    fps = macs.frames_per_second(cfg)
    return {
        "params": macs.count_params(model),
        "macs_per_second_network": macs.network_macs_per_second(cfg),
        "macs_per_second_frontend": macs.frontend_macs_per_second(cfg),
        "macs_per_second_frontend_graph": graph_frontend_macs_per_frame(cfg) * fps,
        "macs_per_step_network": macs.network_macs_per_step(cfg),
        "steps_per_second": macs.steps_per_second(cfg),
    }
