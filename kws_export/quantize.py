"""Static int8 quantization of the streaming step (onnxruntime QDQ, per-channel weights).

What is quantized (int8 weights per output channel, uint8 activations, run as QGemm):
the GRU cell's matrix products (every layer, every step), the attention energy and the
classifier.  The first GRU layer's input — conv features spanning tens, where everything
else spans +-1 — and its weights are each split in two (coarse rounding + remainder;
three int8 products, see export_onnx._two_pass), which keeps them as exact as 16 bits.
What stays float32, on purpose: the log-mel frontend (quantizing its DFT products makes
decisions disagree with float32 on ~9% of steps: a log needs the dynamic range), the
conv (a few hundred weights; its 8-bit input and output roundings cost more probability
than the rest of the model), the element-wise gate arithmetic, the GRU hidden state
itself (only the copy that enters a Gemm is quantized, so rounding error does not
accumulate in the recurrence) and the attention pooling (a product of two activations).
Gemm outputs stay float32 too (QGemm with a float output): re-quantizing gate
pre-activations would add a second rounding.

Calibration feeds real stream states: the float32 graph is run step by step over the
calibration audio and every step's chunk and incoming states are recorded.  That audio is
an input: a folder of wavs (``wav_streams``) or streams an ``AudioSource`` made (the
installed ``kws-export`` passes training's synthesized speech); nothing here makes audio.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import onnx

from kws_export import onnx_graph
from kws_export.errors import KWSError
from kws_export.onnx_run import run_stream, session, stream_states  # noqa: F401 (stream_states: part of this API)

QUANTIZED_OPS = ["Gemm", "MatMul"]
FLOAT_PREFIXES = (onnx_graph.FRONTEND_TAG, onnx_graph.FLOAT_TAG)


# Calibration ---------------------------------------------------------------------------------
def wav_streams(calib_dir: str | Path, sample_rate: int) -> list[np.ndarray]:
    """Every .wav under ``calib_dir`` (sorted), resampled to the model's rate."""
    from kws_export.audio import read_wav

    root = Path(calib_dir)
    if not root.is_dir():
        raise KWSError(f"{root}: calibration directory not found")
    wavs = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    if not wavs:
        raise KWSError(f"{root}: no .wav files to calibrate with")
    return [read_wav(p, sample_rate)[0] for p in wavs]


def record_feeds(fp32: onnx.ModelProto, streams: Iterable[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Run the float32 streaming graph over each stream and keep every step's inputs."""
    sess = session(fp32)
    feeds: list[dict] = []
    for audio in streams:
        run_stream(sess, audio, record=feeds)
    if not feeds:
        raise KWSError("calibration audio is shorter than one streaming chunk")
    return feeds


class FeedReader:
    """onnxruntime CalibrationDataReader over recorded feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self.feeds = feeds
        self._it: Iterator = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


# Quantization ---------------------------------------------------------------------------------
def float_nodes(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.name.startswith(FLOAT_PREFIXES)]


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs a pre-processing advice on every call; we feed it an
    already-clean graph (pre-processing would fold the in-graph frontend constants into
    large initializers, which is exactly what the small file avoids)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def uint8_params(lo: float, hi: float) -> tuple[float, int]:
    """onnxruntime's asymmetric uint8 scale and zero point for the range [lo, hi]."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = float(np.float32(max(hi - lo, 1e-8) / 255.0))
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def feature_bounds(model) -> tuple[float, float]:
    """Bounds no conv feature can leave for audio in [-1, 1]: the coarse pass of the
    two-pass GRU input uses them, so it never clips (a clipped coarse value would leave
    an error the fine pass cannot hold).  Calibration ranges are not enough: a stream's
    first steps, half silence, reach values no calibration stream did.

    log-mel >= log(1e-9) (the clamp) and <= log(max_m sum_k fb[k, m] * (sum w)^2): a
    windowed frame of samples in [-1, 1] has |X_k| <= sum of the window."""
    fb = model.frontend.fb.double()
    top = float(np.log(float(fb.sum(dim=0).max()) * float(model.frontend.window.double().sum()) ** 2))
    low = float(np.log(1e-9))
    w = model.conv[0].weight.detach().double().flatten(1)
    b = model.conv[0].bias.detach().double()
    hi = b + (w.clamp(min=0) * top + w.clamp(max=0) * low).sum(dim=1)
    lo = b + (w.clamp(min=0) * low + w.clamp(max=0) * top).sum(dim=1)
    return float(lo.min()), float(hi.max())


def pinned_scales(model: onnx.ModelProto) -> dict[str, list[dict]]:
    """TensorQuantOverrides for the two passes of a two-pass input, found by structure:
    the Identity copying an explicit DequantizeLinear output (the coarse pass) reuses its
    scale and zero point (no second rounding); the Identity copying ``x - coarse`` (the
    fine pass, always within half a coarse step) gets that half step over 255 levels."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    pinned = {}
    for n in model.graph.node:
        src = producer.get(n.input[0]) if n.op_type == "Identity" else None
        if src is None:
            continue
        if src.op_type == "DequantizeLinear":
            pinned[n.output[0]] = [{"scale": inits[src.input[1]].astype(np.float32), "zero_point": inits[src.input[2]].astype(np.uint8)}]
        elif src.op_type == "Sub" and producer.get(src.input[1]) is not None and producer[src.input[1]].op_type == "DequantizeLinear":
            coarse = float(inits[producer[src.input[1]].input[1]])
            pinned[n.output[0]] = [{"scale": np.array(coarse / 255.0, np.float32), "zero_point": np.array(128, np.uint8)}]
    return pinned


def quantize_streaming(fp32: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """QDQ int8 copy of a streaming graph (metadata kept)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader = FeedReader(feeds)
    with tempfile.TemporaryDirectory(prefix="kws-int8-") as tmp, _quiet():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(fp32, str(src))
        quantize_static(
            str(src), str(dst), reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            # uint8 weights (U8U8), not int8: onnxruntime's U8S8 kernels saturate their int16
            # sums on x86 CPUs with AVX2 but no VNNI (this student's static int8 moved its
            # probability by up to 0.29 there, against 0.009 as U8U8), and a file must be right
            # on whatever CPU runs it.
            weight_type=QuantType.QUInt8,
            nodes_to_exclude=float_nodes(fp32),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"],
                "WeightSymmetric": True,
                "TensorQuantOverrides": pinned_scales(fp32),
            },
        )
        model = onnx.load(str(dst))
    del model.metadata_props[:]
    model.metadata_props.extend(fp32.metadata_props)
    model.producer_name = fp32.producer_name
    return model


# Weight-only int8 --------------------------------------------------------------------------------
WEIGHT_INPUTS = {"Gemm": 1, "MatMul": 1, "Conv": 1}  # the operand that is a weight matrix


def _int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per row (output channel): (q, scale[rows])."""
    rows = w.reshape(w.shape[0], -1)
    absmax = np.abs(rows).max(axis=1)
    scale = np.where(absmax > 0, absmax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.round(rows / scale[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
    return q, scale


def int8_weights(fp32: onnx.ModelProto, fine: Sequence[str] = ("conv_w", "g0_wi")) -> onnx.ModelProto:
    """Copy of ``fp32`` whose weight matrices are stored as int8 (symmetric, one scale per
    output channel) and turned back into float32 by ``Cast`` and ``Mul`` nodes.

    Those nodes read only initializers, so onnxruntime constant-folds them when a session
    loads: every step then runs the float32 graph itself, with the rounded weights.  On a
    student this small, integer kernels are slower than float32 ones (per-node overhead,
    not arithmetic, bounds a step; see benchmarks/results.md), so this is the int8 file
    that is both small and fast; static int8 (``int8_streaming``) is the one that computes
    in int8.  Nothing needs calibration: activations stay float32.  Biases and the
    frontend's scalars stay float32 (a few hundred bytes).

    ``fine`` names weights stored as two int8 tensors (the rounding and its remainder at a
    127x finer scale: ~15 bits): the conv's and the first GRU layer's input weights, the
    two that multiply inputs spanning tens (log-mel, conv features).  They are most of the
    8-bit error (the shipped teacher's |dprob| 0.020 -> 0.002) for about 1 KB per 1,000
    weights.
    """
    import json

    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weights = []
    for node in graph.node:
        index = WEIGHT_INPUTS.get(node.op_type)
        if index is None or len(node.input) <= index:
            continue
        name = node.input[index]
        if name in inits and name not in weights and inits[name].data_type == TensorProto.FLOAT:
            weights.append(name)
    cast_nodes, quantized = [], []
    for name in weights:
        w = numpy_helper.to_array(inits[name])
        if w.ndim < 2:
            continue
        graph.initializer.remove(inits[name])
        shape = [-1] + [1] * (w.ndim - 1)
        residual, terms = w, []
        for i in range(2 if name in fine else 1):  # level 2 stores what level 1's rounding left
            q, scale = _int8_rows(residual)
            residual = residual - q.astype(np.float32) * scale.reshape(shape)
            graph.initializer.extend([numpy_helper.from_array(q, f"{name}_q8{i}"),
                                      numpy_helper.from_array(scale.reshape(shape), f"{name}_qs{i}")])
            terms.append(f"{name}_qw{i}")
            cast_nodes += [helper.make_node("Cast", [f"{name}_q8{i}"], [f"{name}_qf{i}"], to=TensorProto.FLOAT),
                           helper.make_node("Mul", [f"{name}_qf{i}", f"{name}_qs{i}"], [terms[-1]])]
        if len(terms) > 1:
            cast_nodes.append(helper.make_node("Add", terms, [name]))
        else:
            cast_nodes[-1].output[0] = name
        quantized.append(name)
    nodes = cast_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    model.metadata_props.append(onnx.StringStringEntryProto(key="kws.quantization", value=json.dumps({
        "format": "int8 weights", "weights": "int8, symmetric, one scale per output channel",
        "activations": "float32", "int8": f"{len(quantized)} weight matrices (conv, GRU, attention, classifier)",
        "two_level": [n for n in quantized if n in fine],
        "float32": "arithmetic (the weights are dequantized once, when the session loads), biases, frontend",
    }, sort_keys=True)))
    return model

