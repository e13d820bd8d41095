"""ONNX export: the offline clip graph and the stateful streaming step.

Offline:   audio float32 [batch, samples] (both dynamic) -> prob [batch]
Streaming: audio float32 [1, chunk_samples] + one input per state
           -> prob [steps_per_call] + ``<state>_next`` per state
Both carry the log-mel frontend in the graph (kws_export/onnx_graph.py) and ``kws.*``
metadata, so a user needs nothing but the .onnx file.  The streaming GRU is an explicit
cell of Gemm nodes (two per layer and step) so that static int8 quantizes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import helper

from kws_export import onnx_graph, streaming
from kws_export.card import card_data, card_metrics
from kws_export.checkpoint import Checkpoint
from kws_export.config import CRNNConfig
from kws_export.errors import KWSError
from kws_export.fileio import atomic_output, check_writable, sha256_file
from kws_export.frontend import mel_points_hz
from kws_export.model import CRNN, count_parameters
from kws_export.onnx_graph import Graph
from kws_export.streaming import StreamSpec

if TYPE_CHECKING:
    from kws_export.audio import AudioSource

FORMAT_VERSION = 1
OPSETS = (17, 18, 19, 20, 21)
_IR_VERSION = {17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class StreamLayout:
    spec: StreamSpec
    steps_per_call: int

    @property
    def chunk_samples(self) -> int:
        return self.spec.step_samples * self.steps_per_call


def stream_layout(config: CRNNConfig, chunk_ms: float | None = None, window_ms: float | None = None) -> StreamLayout:
    """Validate --chunk-ms (a positive multiple of one step) and --window-ms."""
    from kws_export.streaming import stream_spec

    spec = stream_spec(config, window_ms)
    steps = 1
    if chunk_ms is not None:
        step_ms = 1000.0 * spec.step_samples / config.sample_rate
        ratio = chunk_ms / step_ms
        steps = int(round(ratio))
        if steps < 1 or abs(ratio - steps) > 1e-6:
            raise KWSError(f"chunk of {chunk_ms:g} ms is not a positive multiple of the {step_ms:g} ms step")
    return StreamLayout(spec, steps)


def mel_edges(config: CRNNConfig) -> np.ndarray:
    """The n_mels+2 HTK edge frequencies, computed as frontend.mel_filterbank does."""
    return mel_points_hz(config.n_mels, config.sample_rate).numpy()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


class _Weights:
    """The model's tensors as graph initializers (short names: they count in a 20 KB file)."""

    def __init__(self, g: Graph, model: CRNN):
        sd = model.state_dict()
        cfg = model.config
        self.conv_w = g.const(_np(sd["conv.0.weight"]), name="conv_w")
        self.conv_b = g.const(_np(sd["conv.0.bias"]), name="conv_b")
        self.gru = []
        for layer in range(cfg.gru_layers):
            self.gru.append(tuple(g.const(_np(sd[f"gru.{k}_l{layer}"]), name=f"g{layer}_{short}")
                                  for k, short in (("weight_ih", "wi"), ("weight_hh", "wh"), ("bias_ih", "bi"), ("bias_hh", "bh"))))
        self.a1_w = g.const(_np(sd["attention.energy.0.weight"]), name="a1_w")
        self.a1_b = g.const(_np(sd["attention.energy.0.bias"]), name="a1_b")
        self.a2_w = g.const(_np(sd["attention.energy.2.weight"]), name="a2_w")
        self.a2_b = g.const(_np(sd["attention.energy.2.bias"]), name="a2_b")
        w, b = _np(sd["classifier.weight"]), _np(sd["classifier.bias"])
        self.binary = cfg.num_classes == 2
        if self.binary:
            # softmax([l0, l1])[1] == sigmoid(l1 - l0): one output row instead of two
            self.cls_w = g.const(w[1:2] - w[0:1], name="cls_w")
            self.cls_b = g.const(b[1:2] - b[0:1], name="cls_b")
        else:
            self.cls_w = g.const(w, name="cls_w")
            self.cls_b = g.const(b, name="cls_b")


def _keyword_prob(g: Graph, wt: _Weights, context: str) -> str:
    """context [n, hidden] -> P(keyword) [n, 1]."""
    logits = g.op("Gemm", context, wt.cls_w, wt.cls_b, transB=1)
    if wt.binary:
        return g.op("Sigmoid", logits)
    return g.op("Slice", g.op("Softmax", logits, axis=1), g.i64(1), g.i64(2), g.i64(1))


# Streaming step -----------------------------------------------------------------------------
FLOAT_TAG = onnx_graph.FLOAT_TAG


def build_streaming(model: CRNN, layout: StreamLayout, feat_quant: tuple[float, int] | None = None) -> onnx.ModelProto:
    """The streaming step graph.  ``feat_quant`` (uint8 scale, zero point of the conv
    features, from calibration) builds the int8 variant's two-pass GRU input: see
    ``_two_pass``; without it the graph is the plain float32 step."""
    cfg, spec, k = model.config, layout.spec, layout.steps_per_call
    g = Graph()
    wt = _Weights(g, model)
    shapes = spec.state_shapes(1)
    audio = g.input("audio", [1, layout.chunk_samples])
    state = {name: g.input(name, list(shape)) for name, shape in shapes.items()}
    nxt: dict[str, str] = {}

    # Frontend: audio tail + chunk -> 8k new uncentred frames -> log-mel (fp32 under int8).
    g.tag = onnx_graph.FRONTEND_TAG
    buf_len = spec.audio_tail + layout.chunk_samples
    buf = g.op("Concat", state["audio_tail"], audio, axis=1)
    nxt["audio_tail"] = g.op("Slice", buf, g.i64(layout.chunk_samples), g.i64(buf_len), g.i64(1))
    mel = onnx_graph.logmel(g, buf, buf_len, cfg.n_fft, cfg.hop, mel_edges(cfg), cfg.sample_rate)
    if spec.level:
        mel, nxt["mel_level"] = _level_block(g, mel, state["mel_level"], cfg.level_rate, k * spec.frames_per_step)
    g.tag = "n"

    # Conv columns over the mel tail + new frames.
    frames = spec.mel_tail + k * spec.frames_per_step
    window = g.op("Concat", state["mel_tail"], mel, axis=2) if spec.mel_tail else mel
    nxt["mel_tail"] = g.op("Slice", window, g.i64(k * spec.frames_per_step), g.i64(frames), g.i64(2))
    g.tag = FLOAT_TAG  # the conv stays float32 under int8: its output feeds the two-pass GRU input
    conv = g.op("Conv", g.op("Unsqueeze", window, g.i64(1)), wt.conv_w, wt.conv_b,
                kernel_shape=list(cfg.kernel), strides=list(cfg.stride))               # [1, C, F', k]
    g.tag = "n"
    if k == 1:
        feats = [g.reshape(conv, 1, cfg.gru_input)]
    else:
        cols = g.reshape(g.op("Transpose", conv, perm=[0, 3, 1, 2]), k, cfg.gru_input)
        feats = g.op("Split", cols, g.i64(*([1] * k)), axis=0, outs=k)

    h = [state[f"gru_h{layer}"] for layer in range(cfg.gru_layers)]
    att_out, att_energy = state["att_out"], state["att_energy"]
    W, H = spec.window_steps, cfg.hidden
    probs = []
    for t in range(k):
        x = feats[t]
        for layer, (wi, wh, bi, bh) in enumerate(wt.gru):
            two_pass = (*feat_quant, _np(model.gru.weight_ih_l0)) if layer == 0 and feat_quant else None
            x = h[layer] = _gru_cell(g, x, h[layer], wi, wh, bi, bh, H, two_pass)
        energy = g.op("Gemm", g.op("Tanh", g.op("Gemm", g.op("Identity", x), wt.a1_w, wt.a1_b, transB=1)),
                      wt.a2_w, wt.a2_b, transB=1)                                           # [1, 1]
        newest = g.op("Unsqueeze", x, g.i64(1))                                            # [1, 1, H]
        if W > 1:
            att_out = g.op("Concat", g.op("Slice", att_out, g.i64(1), g.i64(W), g.i64(1)), newest, axis=1)
            att_energy = g.op("Concat", g.op("Slice", att_energy, g.i64(1), g.i64(W), g.i64(1)), energy, axis=1)
        else:
            att_out, att_energy = newest, energy
        alpha = g.op("Unsqueeze", g.op("Softmax", att_energy, axis=1), g.i64(1))          # [1, 1, W]
        g.tag = FLOAT_TAG  # two activations multiplied: left in float32 under int8
        context = g.reshape(g.op("MatMul", alpha, att_out), 1, H)
        g.tag = "n"
        probs.append(_keyword_prob(g, wt, context))
    for layer in range(cfg.gru_layers):
        nxt[f"gru_h{layer}"] = h[layer]
    nxt["att_out"], nxt["att_energy"] = att_out, att_energy

    prob = g.op("Concat", *probs, axis=0) if k > 1 else probs[0]
    g.output("prob", [k], g.reshape(prob, k))
    for name, shape in shapes.items():
        g.output(f"{name}_next", list(shape), nxt[name])
    return g.model("kws-edge streaming step: see docs/streaming.md")


def _level_block(g: Graph, mel: str, level: str, rate: float, frames: int) -> tuple[str, str]:
    """``streaming.level_block`` over the call's ``frames`` new frames: the same K and d,
    computed by the same torch code, as constants (float32, like the rest of the frontend)."""
    k, d = streaming.level_kernels(torch.tensor(rate, dtype=torch.float32), frames)
    levels = g.op("Add", g.op("MatMul", mel, g.const(_np(k.t().contiguous()), name="level_kt")),
                  g.op("Mul", g.op("Unsqueeze", level, g.i64(2)), g.const(_np(d), name="level_d")))  # [1, M, F]
    last = g.op("Squeeze", g.op("Slice", levels, g.i64(frames - 1), g.i64(frames), g.i64(2)), g.i64(2))
    return g.op("Sub", mel, levels), last


def _gru_cell(g: Graph, x: str, h: str, wi: str, wh: str, bi: str, bh: str, hidden: int,
              two_pass: tuple | None = None) -> str:
    """torch.nn.GRU's cell (gates r, z, n) with its two matrix products as Gemm nodes.

    The Gemm inputs are Identity copies: int8 quantizes the copy a Gemm reads while the
    gate arithmetic keeps the float32 original, so rounding never enters the recurrence
    (onnx_graph.compact removes the Identity nodes once the quantizer has seen them)."""
    if two_pass:
        gi = _two_pass(g, x, two_pass[2], bi, two_pass[:2], wi)
    else:
        gi = g.op("Gemm", g.op("Identity", x), wi, bi, transB=1)
    gh = g.op("Gemm", g.op("Identity", h), wh, bh, transB=1)
    gi_rz, gi_n = g.op("Split", gi, g.i64(2 * hidden, hidden), axis=1, outs=2)
    gh_rz, gh_n = g.op("Split", gh, g.i64(2 * hidden, hidden), axis=1, outs=2)
    r, z = g.op("Split", g.op("Sigmoid", g.op("Add", gi_rz, gh_rz)), g.i64(hidden, hidden), axis=1, outs=2)
    n = g.op("Tanh", g.op("Add", gi_n, g.op("Mul", r, gh_n)))
    return g.op("Add", n, g.op("Mul", z, g.op("Sub", h, n)))   # (1 - z) * n + z * h


def _two_pass(g: Graph, x: str, w: np.ndarray, b: str, quant: tuple[float, int], name: str) -> str:
    """x @ w.T + b with x and w each split in two so that int8 products reach ~16-bit
    accuracy: x = its uint8 rounding (fixed scale and zero point, ``quant``) + the
    remainder, which the quantizer calibrates to a ~255x finer scale; w = its int8
    rounding (per row, scale max|row|/127; the quantizer's symmetric uint8 grid,
    max|row|/127.5, stores it within half a step) + the remainder, quantized to a ~255x
    finer scale.  Three int8 Gemm:
    coarse x with both weight parts, fine x with the coarse weights (fine x fine is below
    float32 noise).  The conv features feeding the first GRU layer span tens where all
    else the int8 graph quantizes spans +-1; one 8-bit pass of either costs ~0.02-0.03
    of probability on a small student, the split keeps the whole int8 step within ~0.01."""
    absmax = np.abs(w).max(axis=1, keepdims=True)
    step = np.where(absmax > 0, absmax / np.float32(127), np.float32(1)).astype(np.float32)
    w_hi = (np.round(w / step) * step).astype(np.float32)
    w_lo = (w - w_hi).astype(np.float32)
    hi, lo = g.const(w_hi, name=f"{name}_whi"), g.const(w_lo, name=f"{name}_wlo")
    scale, zero = g.const(quant[0]), g.const(quant[1], np.uint8)
    g.tag = FLOAT_TAG
    coarse = g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero), scale, zero)
    rest = g.op("Sub", x, coarse)
    g.tag = "n"
    coarse_in = g.op("Identity", coarse)  # quantize.py pins its scale to ``quant``: no second rounding
    out = g.op("Add", g.op("Gemm", coarse_in, hi, b, transB=1), g.op("Gemm", coarse_in, lo, transB=1))
    return g.op("Add", out, g.op("Gemm", g.op("Identity", rest), hi, transB=1))


# Offline clip graph ---------------------------------------------------------------------------
def build_offline(model: CRNN) -> onnx.ModelProto:
    """The offline model: centred (reflect-padded) frames, GRU from zero per clip."""
    cfg = model.config
    g = Graph()
    wt = _Weights(g, model)
    audio = g.input("audio", ["batch", "samples"])
    H = cfg.hidden
    _, n2 = onnx_graph.split_fft(cfg.n_fft, cfg.hop)
    pad = cfg.n_fft // 2

    g.tag = onnx_graph.FRONTEND_TAG
    samples = g.op("Slice", g.op("Shape", audio), g.i64(1), g.i64(2))                     # [1]
    padded = g.op("Pad", audio, g.i64(0, pad, 0, pad), mode="reflect")                       # torch.stft(center=True)
    # Right-pad with zeros to a multiple of N2 (the conv reads N2-sample blocks), then trim
    # the frames back to torch's count, samples // hop + 1.
    extra = g.op("Mod", g.op("Sub", g.const([n2], np.int64), g.op("Mod", g.op("Add", samples, g.i64(2 * pad)), g.const([n2], np.int64))),
                 g.const([n2], np.int64))
    padded = g.op("Pad", padded, g.op("Concat", g.i64(0, 0, 0), extra, axis=0))
    frames = g.op("Add", g.op("Div", samples, g.i64(cfg.hop)), g.i64(1))
    mel = onnx_graph.logmel(g, padded, None, cfg.n_fft, cfg.hop, mel_edges(cfg), cfg.sample_rate, frames=frames)
    if cfg.level_norm_ms > 0:
        mel = _level_clip(g, mel, frames, cfg.level_rate)
    g.tag = "n"

    conv = g.op("Conv", g.op("Unsqueeze", mel, g.i64(1)), wt.conv_w, wt.conv_b,
                kernel_shape=list(cfg.kernel), strides=list(cfg.stride))                    # [B, C, F', T]
    x = g.op("Transpose", g.reshape(conv, 0, cfg.gru_input, -1), perm=[2, 0, 1])           # [T, B, I]
    sd = model.state_dict()
    for layer in range(cfg.gru_layers):
        w, r = _zrh(sd[f"gru.weight_ih_l{layer}"], H), _zrh(sd[f"gru.weight_hh_l{layer}"], H)
        b = np.concatenate([_zrh(sd[f"gru.bias_ih_l{layer}"], H), _zrh(sd[f"gru.bias_hh_l{layer}"], H)])
        y = g.op("GRU", x, g.const(w[None], name=f"G{layer}_w"), g.const(r[None], name=f"G{layer}_r"),
                 g.const(b[None], name=f"G{layer}_b"), hidden_size=H, linear_before_reset=1, outs=2)[0]
        x = g.op("Squeeze", y, g.i64(1))                                                    # [T, B, H]
    hid = g.op("Tanh", g.op("Add", g.op("MatMul", x, g.const(_np(sd["attention.energy.0.weight"]).T)), wt.a1_b))
    energy = g.op("Add", g.op("MatMul", hid, g.const(_np(sd["attention.energy.2.weight"]).T)), wt.a2_b)  # [T, B, 1]
    alpha = g.op("Softmax", energy, axis=0)
    context = g.op("ReduceSum", g.op("Mul", x, alpha), g.i64(0), keepdims=0)                # [B, H]
    prob = _keyword_prob(g, wt, context)
    g.output("prob", ["batch"], g.reshape(prob, -1))
    return g.model("kws-edge offline clip model: waveform batch -> P(keyword)")


def _level_clip(g: Graph, mel: str, frames: str, rate: float) -> str:
    """``streaming.level_clip`` for a clip of ``frames`` (dynamic) frames: the level starts
    at the clip's per-bin mean and runs through it, as one product with the [T, T] matrix
    K[j, i] = a (1-a)^(j-i) of ``streaming.level_kernels``, built in the graph (T x T floats:
    the offline graph is for clips, the streaming step for streams)."""
    t = g.op("Cast", frames, to=onnx.TensorProto.FLOAT)
    mean = g.op("Div", g.op("ReduceSum", mel, g.i64(2), keepdims=1), t)                     # [B, M, 1]
    j = g.op("Range", g.const(0.0), g.op("Squeeze", t, g.i64(0)), g.const(1.0))              # [T]
    lag = g.op("Sub", g.op("Unsqueeze", j, g.i64(1)), g.op("Unsqueeze", j, g.i64(0)))        # [T, T]
    rate_c, keep = g.const(np.float32(rate)), g.const(np.float32(1.0) - np.float32(rate))
    k = g.op("Where", g.op("GreaterOrEqual", lag, g.const(0.0)),
             g.op("Mul", rate_c, g.op("Pow", keep, g.op("Max", lag, g.const(0.0)))), g.const(0.0))
    d = g.op("Pow", keep, g.op("Add", j, g.const(1.0)))                                      # [T]
    levels = g.op("Add", g.op("MatMul", mel, g.op("Transpose", k, perm=[1, 0])), g.op("Mul", mean, d))
    return g.op("Sub", mel, levels)


def _zrh(w: torch.Tensor, hidden: int) -> np.ndarray:
    """torch gate order (r, z, n) -> ONNX (z, r, h)."""
    r, z, n = _np(w).reshape(3, hidden, *w.shape[1:])
    return np.concatenate([z, r, n])


# Metadata and writing ---------------------------------------------------------------------
def threshold_of(ckpt: Checkpoint) -> float:
    """The recommended decision threshold stored by training, else 0.5."""
    value = ckpt.metadata.get("threshold")
    try:
        t = float(value)
    except (TypeError, ValueError):
        return DEFAULT_THRESHOLD
    return t if 0.0 <= t <= 1.0 else DEFAULT_THRESHOLD


def patience_of(ckpt) -> dict[str, Any]:
    """``{"kws.patience": N}`` when training stored a detection patience above 1 (steps in a
    row at the threshold, with which the threshold was chosen), else nothing."""
    value = ckpt.metadata.get("patience")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 1:
        return {}
    return {"kws.patience": value}


def model_card(ckpt: Checkpoint, model: CRNN) -> dict[str, Any]:
    meta = ckpt.metadata
    card: dict[str, Any] = {
        "source_kind": ckpt.kind,
        "config": ckpt.config.to_dict(),
        "params": count_parameters(model),
        "metrics": card_metrics(meta.get("metrics", {})),
        "data": card_data(meta.get("data_recipe", meta.get("data", {}))),
    }
    for key in ("name", "role", "teacher", "parent", "created", "command", "threshold_source"):
        if key in meta:
            card[key] = meta[key]
    return card


def set_metadata(model: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Strings as they are, everything else as JSON."""
    del model.metadata_props[:]
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=text))


def base_metadata(ckpt: Checkpoint, model: CRNN, source: str | Path, graph: str) -> dict[str, Any]:
    cfg = ckpt.config
    return {
        "kws.format_version": FORMAT_VERSION,
        "kws.graph": graph,
        "kws.keyword": str(ckpt.metadata.get("keyword", cfg.keyword)),
        "kws.sample_rate": cfg.sample_rate,
        "kws.threshold": threshold_of(ckpt),
        "kws.source_sha256": sha256_file(source),
        "kws.model_card": model_card(ckpt, model),
    }


def streaming_metadata(ckpt: Checkpoint, model: CRNN, source: str | Path, layout: StreamLayout) -> dict[str, Any]:
    meta = base_metadata(ckpt, model, source, "streaming")
    meta.update({
        "kws.chunk_samples": layout.chunk_samples,
        "kws.step_samples": layout.spec.step_samples,
        "kws.steps_per_call": layout.steps_per_call,
        "kws.window_ms": layout.spec.window_ms,
        "kws.prefix_samples": layout.spec.prefix_samples,
        "kws.states": layout.spec.states(1),
        **patience_of(ckpt),
    })
    return meta


def offline_metadata(ckpt: Checkpoint, model: CRNN, source: str | Path) -> dict[str, Any]:
    meta = base_metadata(ckpt, model, source, "offline")
    meta["kws.window_ms"] = ckpt.config.window_ms
    meta["kws.clip_samples"] = ckpt.config.clip_samples
    return meta


def finalize(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    if opset not in OPSETS:
        raise KWSError(f"opset {opset} is not supported (choose one of {', '.join(map(str, OPSETS))})")
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", opset))
    model.ir_version = _IR_VERSION[opset]
    onnx.checker.check_model(model)
    return model


def save_onnx(model: onnx.ModelProto, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        onnx.save(model, str(tmp))


def export_graph(ckpt: Checkpoint, source: str | Path, streaming: bool, chunk_ms: float | None = None,
                 window_ms: float | None = None, opset: int = onnx_graph.OPSET) -> tuple[onnx.ModelProto, StreamLayout | None]:
    """Build the (fp32) graph with its metadata; nothing is written."""
    model = ckpt.build_model()
    if streaming:
        layout = stream_layout(ckpt.config, chunk_ms, window_ms)
        proto = build_streaming(model, layout)
        set_metadata(proto, streaming_metadata(ckpt, model, source, layout))
    else:
        if chunk_ms is not None or window_ms is not None:
            raise KWSError("--chunk-ms and --window-ms apply to --streaming exports only")
        layout = None
        proto = build_offline(model)
        set_metadata(proto, offline_metadata(ckpt, model, source))
    return finalize(proto, opset), layout


INT8_MODES = ("static", "weights")
CALIBRATION_SECONDS = 30.0  # per stream, of an AudioSource's two (loud and near-silent): 750 steps


def export_onnx_file(ckpt_path: str | Path, out: str | Path, streaming: bool = False, int8: bool = False,
                     calib: str | Path | None = None, chunk_ms: float | None = None, window_ms: float | None = None,
                     opset: int = onnx_graph.OPSET, stride=None, seed: int = 0, int8_mode: str = "static",
                     speech: AudioSource | None = None) -> dict[str, Any]:
    """``kws-export onnx``: load, build, (quantize), self-check, write atomically, describe.
    ``int8_mode``: "static" (calibrated QDQ, int8 arithmetic) or "weights" (int8 storage,
    float32 arithmetic; see quantize.int8_weights).  Static int8 calibrates on the wavs
    under ``calib`` or, without it, on two 30 s streams from ``speech`` (``seed``); with
    neither it is a one-line error."""
    from kws_export.checkpoint import load_checkpoint
    from kws_export.onnx_info import describe_onnx

    if int8 and not streaming:
        raise KWSError("--int8 quantizes the streaming step: add --streaming")
    if int8_mode not in INT8_MODES:
        raise KWSError(f"--int8-mode must be one of {', '.join(INT8_MODES)}, not {int8_mode!r}")
    if int8_mode != "static" and not int8:
        raise KWSError(f"--int8-mode {int8_mode} applies to --int8: add --int8")
    if calib is not None and not (int8 and int8_mode == "static"):
        raise KWSError("--calib is calibration audio for --int8 (static mode)")
    if int8 and int8_mode == "static" and calib is None and speech is None:
        raise KWSError("static --int8 needs calibration audio: pass --calib DIR of wavs "
                       "(or --int8-mode weights, which needs none)")
    check_writable(out)
    ckpt = load_checkpoint(ckpt_path, stride)
    if ckpt.is_embedding:
        return _export_embedding(ckpt, ckpt_path, out, streaming, int8, int8_mode, chunk_ms, window_ms)
    proto, layout = export_graph(ckpt, ckpt_path, streaming, chunk_ms, window_ms, opset)
    _self_check(proto, ckpt.build_model(), layout)
    if int8 and int8_mode == "weights":
        from kws_export.quantize import int8_weights

        proto = int8_weights(proto)
    elif int8:
        rate = ckpt.config.sample_rate
        if calib is not None:
            from kws_export.quantize import wav_streams

            audio, source = wav_streams(calib, rate), "wav files"
        else:
            keyword = str(ckpt.metadata.get("keyword", ckpt.config.keyword))
            audio, source = speech.streams(keyword, rate, CALIBRATION_SECONDS, seed), speech.name
        proto = int8_streaming(ckpt.build_model(), layout, proto, audio, source)
    save_onnx(onnx_graph.compact(proto), out)
    return describe_onnx(out)


def _export_embedding(ckpt: Checkpoint, source, out, streaming: bool, int8: bool, int8_mode: str,
                      chunk_ms, window_ms) -> dict[str, Any]:
    """The speech-embedding model: streaming fp32, or int8 weights (its graphs are mostly conv weights)."""
    from kws_export import embedding_onnx
    from kws_export.onnx_info import describe_onnx

    if not streaming:
        raise KWSError("the embedding model exports as a streaming step only (add --streaming): its mel graph "
                       "normalises over its whole input, so a batched offline graph would change the features")
    if int8 and int8_mode != "weights":
        raise KWSError("static int8 is not supported for the embedding model: use --int8 --int8-mode weights")
    embedding_onnx.check_stream_options(chunk_ms, window_ms)
    model = ckpt.build_model()
    proto = embedding_onnx.build_streaming(model)
    set_metadata(proto, {**embedding_onnx.streaming_metadata(ckpt, model, source, threshold_of(ckpt)), **patience_of(ckpt)})
    embedding_onnx.self_check(proto, model)
    if int8:
        from kws_export.quantize import int8_weights

        proto = int8_weights(proto)
    save_onnx(proto, out)
    return describe_onnx(out)


def int8_streaming(model: CRNN, layout: StreamLayout, fp32: onnx.ModelProto, audio, source: str) -> onnx.ModelProto:
    """The static int8 streaming step: calibrate on ``audio`` (a list of streams) with the
    float32 graph's real states, rebuild the graph with the two-pass GRU input, quantize."""
    from kws_export import quantize

    feeds = quantize.record_feeds(fp32, audio)
    feat_quant = quantize.uint8_params(*quantize.feature_bounds(model))
    graph = build_streaming(model, layout, feat_quant)
    graph.metadata_props.extend(fp32.metadata_props)
    graph = finalize(graph, max(o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")))
    q = quantize.quantize_streaming(graph, feeds)
    q.metadata_props.append(onnx.StringStringEntryProto(key="kws.quantization", value=json.dumps({
        "format": "QDQ", "weights": "int8, per output channel", "activations": "uint8, per tensor",
        "int8": "GRU cells (input in two passes), attention energy, classifier",
        "float32": "log-mel frontend, conv, gate arithmetic, attention pooling",
        "calibration": source, "calibration_steps": len(feeds),
    }, sort_keys=True)))
    return q


def _self_check(proto: onnx.ModelProto, model: CRNN, layout: StreamLayout | None) -> None:
    """Run 2 s of a chirp in noise through the graph and PyTorch: an exporter bug must
    never reach a file.  (kws-export verify is the thorough, user-facing check.)"""
    from kws_export.onnx_run import run_stream, session

    sr = model.config.sample_rate
    t = np.arange(2 * sr) / sr
    rng = np.random.default_rng(0)
    audio = (0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    sess = session(proto)
    with torch.no_grad():
        if layout is not None:
            got = run_stream(sess, audio)
            want = model.stream_reference(torch.from_numpy(audio)[None], layout.spec.window_ms)[0].numpy()[: len(got)]
        else:
            batch = np.stack([audio[:sr], audio[sr // 2: sr // 2 + sr]])
            got = sess.run(["prob"], {"audio": batch})[0]
            want = model.keyword_prob(torch.from_numpy(batch)).numpy()
    diff = float(np.abs(got - want).max())
    if not diff <= 1e-4:
        raise KWSError(f"internal error: the exported graph differs from PyTorch by {diff:.2e} (please report)")
