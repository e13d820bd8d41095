"""Static costs of a model: parameters, MACs per second of audio (network and frontend).

The CRNN's are computed from its config (``training/macs.py``); the speech-embedding model's
are counted from its ONNX graphs' shapes (``benchmarks/onnx_macs.py``): per 80 ms step one
mel call on 1,760 samples, one embedding of a 76 x 32 mel window and the head.
"""

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


def embedding_costs(model, export_path=None) -> dict:
    """The speech-embedding model (``kws_export.embedding.EmbeddingKWS``): parameters
    (trained head + frozen graphs) and MACs per step and per second of audio; with the
    streaming export, the MACs counted over that whole graph too (a cross-check: the same
    graphs inlined, plus the head)."""
    from kws_export.embedding import STEP_SAMPLES, count_parameters
    from benchmarks.onnx_macs import embedding_step_macs, graph_macs

    params = count_parameters(model)
    head = sum(int(w.size) for w, _ in model.head_weights())  # one MAC per weight of each Linear
    step = embedding_step_macs(model.graphs(), model.config.n_embeddings, head=head)
    steps_per_second = model.config.sample_rate / STEP_SAMPLES
    out = {
        "params": params["trained"] + params["frozen"],
        "params_trained": params["trained"],
        "params_frozen": params["frozen"],
        "macs_per_step": step,
        "steps_per_second": steps_per_second,
        "macs_per_second": step["total"] * steps_per_second,
    }
    if export_path is not None:
        out["macs_per_second_export_graph"] = graph_macs(export_path, None, str(export_path))["total"] * steps_per_second
    return out
