"""A small ONNX graph builder and the in-graph log-mel frontend.

The exporters write their graphs by hand rather than tracing torch: a streaming step
must be a flat graph of plain ops (every matrix product a MatMul/Gemm/Conv that static
int8 can quantize), names must be short (the int8 student has a 20 KB budget), and the
frontend's constants (DFT twiddles, window, filterbank, frame indices) are *computed in
the graph* from a handful of scalars.  onnxruntime constant-folds them when it loads
the session, so they cost nothing per step and almost nothing on disk.

Frontend algorithm (streaming.dft_kernels documents it; docs/streaming.md has the
measurements): a two-stage mixed-radix DFT, n_fft = N1 x N2 (400 = 20 x 20):
  framing + stage 1: one grouped Conv over N2-sample blocks of the buffer, window and
                     twiddles folded into its kernel
  stage 2:           one MatMul shared by every k1, only the bins 0 .. n_fft/2 (+ a few)
  power + mel:       square, then one MatMul with the filterbank evaluated at the same
                     (permuted) bins, re and im rows alike, zero above Nyquist.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kws_export.streaming import split_fft

OPSET = 17
FRONTEND_TAG = "fe"  # node-name prefixes of nodes the int8 quantizer leaves in float32:
FLOAT_TAG = "fp"     # the frontend, and the few model nodes kept float on purpose


class Graph:
    """Accumulates nodes and initializers with short generated names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}
        self._named: set[str] = set()
        self.tag = "n"

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def input(self, name: str, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def output(self, name: str, shape: Sequence[int | str], source: str) -> None:
        self.op("Identity", source, out=name)
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))

    def const(self, value, dtype=np.float32, name: str | None = None) -> str:
        """An initializer; small constants are shared by value, named ones by name (a
        repeated name returns the first initializer: callers name tensors they reuse)."""
        if name is not None and name in self._named:
            return name
        arr = np.asarray(value, dtype=dtype)
        key = None
        if name is None and arr.size <= 8:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = name or self._name("c")
        self.inits.append(numpy_helper.from_array(arr, name))
        self._named.add(name)
        if key is not None:
            self._consts[key] = name
        return name

    def i64(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def op(self, op_type: str, *inputs: str, out: str | None = None, outs: int = 1, **attrs):
        name = self._name(self.tag)
        outputs = [out] if out else [f"{name}_{i}" if outs > 1 else name for i in range(outs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return outputs[0] if outs == 1 else outputs

    def reshape(self, x: str, *shape: int) -> str:
        return self.op("Reshape", x, self.i64(*shape))

    def model(self, doc: str = "") -> onnx.ModelProto:
        used = {name for node in self.nodes for name in node.input}
        inits = [t for t in self.inits if t.name in used]
        graph = helper.make_graph(self.nodes, "kws", self.inputs, self.outputs, inits, doc_string=doc)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kws-edge")
        model.ir_version = 8  # readable by onnxruntime >= 1.14, e.g. older Raspberry Pi wheels
        return model


# In-graph constants ----------------------------------------------------------------------
def _arange(g: Graph, n: int) -> str:
    return g.op("Range", g.const(0, np.int64), g.const(n, np.int64), g.const(1, np.int64))


def _outer(g: Graph, a: str, b: str, op: str) -> str:
    """a [n] (op) b [m] -> [n, m]."""
    return g.op(op, g.op("Unsqueeze", a, g.i64(1)), g.op("Unsqueeze", b, g.i64(0)))


def _angle_cos_sin(g: Graph, k_times_n: str, n: int) -> tuple[str, str]:
    """cos and sin of 2*pi*(k*n mod n)/n: the integer product is reduced exactly first."""
    ang = g.op("Mul", g.op("Cast", g.op("Mod", k_times_n, g.const(n, np.int64)), to=TensorProto.FLOAT),
               g.const(2.0 * math.pi / n))
    return g.op("Cos", ang), g.op("Sin", ang)


def _dft_kernels(g: Graph, n_fft: int, n1: int, n2: int) -> tuple[str, str, int]:
    """streaming.dft_kernels' "dft.w1" and "dft.t2", built in-graph with the same float32 ops."""
    k2n = (n_fft // 2) // n1 + 1
    n = _outer(g, _arange(g, n2), g.op("Mul", _arange(g, n1), g.const(n2, np.int64)), "Add")   # [n2, n1]
    kn = g.op("Mul", g.op("Unsqueeze", n, g.i64(1)), g.reshape(_arange(g, n1), 1, n1, 1))       # [n2, k1, n1]
    c, s = _angle_cos_sin(g, kn, n_fft)
    ang_w = g.op("Mul", g.op("Cast", n, to=TensorProto.FLOAT), g.const(2.0 * math.pi / n_fft))
    window = g.op("Unsqueeze", g.op("Sub", g.const(0.5), g.op("Mul", g.op("Cos", ang_w), g.const(0.5))), g.i64(1))  # periodic Hann
    re = g.op("Mul", c, window)
    im = g.op("Neg", g.op("Mul", s, window))
    w1 = g.reshape(g.op("Concat", g.op("Unsqueeze", re, g.i64(1)), g.op("Unsqueeze", im, g.i64(1)), axis=1), 2 * n1 * n2, 1, n1)
    c, s = _angle_cos_sin(g, _outer(g, _arange(g, k2n), _arange(g, n2), "Mul"), n2)            # [k2, n2]
    stack = lambda a, b: g.op("Concat", g.op("Unsqueeze", a, g.i64(2)), g.op("Unsqueeze", b, g.i64(2)), axis=2)
    # (a_re + j a_im) * (cos - j sin): re = a_re cos + a_im sin, im = a_im cos - a_re sin
    t2 = g.reshape(g.op("Concat", stack(c, s), stack(g.op("Neg", s), c), axis=0), 2 * k2n, 2 * n2)
    return w1, t2, k2n


def mel_matrix(g: Graph, f_pts: np.ndarray, bins: str, bin_hz: float) -> str:
    """HTK triangles [n_mels, len(bins)] at ``bins`` (int64 DFT bin numbers): the
    frontend.mel_filterbank maths, same float32 ops, on its n_mels+2 edge frequencies.
    Bins above Nyquist get exactly 0 from the triangle formula itself."""
    fp = g.const(f_pts.astype(np.float32))
    freqs = g.op("Mul", g.op("Cast", bins, to=TensorProto.FLOAT), g.const(bin_hz))
    slopes = _outer(g, fp, freqs, "Sub")                       # [n_mels+2, bins]
    n = len(f_pts)
    diff = g.op("Unsqueeze", g.op("Sub", g.op("Slice", fp, g.i64(1), g.i64(n)), g.op("Slice", fp, g.i64(0), g.i64(n - 1))), g.i64(1))
    down = g.op("Div", g.op("Neg", g.op("Slice", slopes, g.i64(0), g.i64(n - 2))), g.op("Slice", diff, g.i64(0), g.i64(n - 2)))
    up = g.op("Div", g.op("Slice", slopes, g.i64(2), g.i64(n)), g.op("Slice", diff, g.i64(1), g.i64(n - 1)))
    return g.op("Max", g.const(0.0), g.op("Min", down, up))


def logmel(g: Graph, buf: str, length: int | None, n_fft: int, hop: int, f_pts: np.ndarray, sample_rate: int,
           frames: str | None = None) -> str:
    """Waveform buffer [B, L] -> log-mel [B, n_mels, (L - n_fft) // hop + 1], frames
    uncentred (frame j = buf[:, j*hop : j*hop + n_fft]).  L must be a multiple of N2;
    ``length`` is L when static.  ``frames`` (an int64 scalar tensor) trims the output
    to that many frames (the offline graph pads L up to a multiple of N2)."""
    n1, n2 = split_fft(n_fft, hop)
    w1, t2, k2n = _dft_kernels(g, n_fft, n1, n2)
    blocks = g.reshape(buf, 0, length // n2 if length else -1, n2)               # [B, L/N2, N2]
    x = g.op("Transpose", blocks, perm=[0, 2, 1])                                  # [B, N2, L/N2]
    a = g.op("Conv", x, w1, group=n2, strides=[hop // n2], kernel_shape=[n1])     # [B, (n2, re/im, k1), F]
    if frames is not None:
        a = g.op("Slice", a, g.i64(0), frames, g.i64(2))
    y = g.op("MatMul", t2, g.reshape(a, 0, 2 * n2, -1))                           # [B, 2*K2, N1*F]
    power = g.reshape(g.op("Mul", y, y), 0, 2 * k2n * n1, -1)                     # [B, (re/im, k2, k1), F]
    k = g.op("Add", g.op("Unsqueeze", g.op("Mul", _arange(g, k2n), g.const(n1, np.int64)), g.i64(1)),
             g.op("Unsqueeze", _arange(g, n1), g.i64(0)))                          # [k2, k1] -> k1 + N1*k2
    bins = g.reshape(g.op("Concat", k, k, axis=0), -1)                             # re and im share the bin
    mel = g.op("MatMul", mel_matrix(g, f_pts, bins, sample_rate / n_fft), power)  # [B, n_mels, F]
    return g.op("Log", g.op("Clip", mel, g.const(1e-9), g.const(1e9)))


def drop_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove Identity nodes.  They steer the int8 quantizer (a Gemm reads a copy that may
    be rounded while the float original feeds the gate arithmetic) and name graph outputs;
    afterwards they are dead weight: onnxruntime keeps those that read a graph input, at
    a few hundred ns each per step."""
    graph = model.graph
    outputs = {v.name for v in graph.output}
    inputs = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    nodes = list(graph.node)
    producer = {o: n for n in nodes for o in n.output}
    rename: dict[str, str] = {}
    keep_nodes = []
    for node in nodes:
        if node.op_type != "Identity":
            keep_nodes.append(node)
            continue
        src, dst = node.input[0], node.output[0]
        if dst not in outputs:
            rename[dst] = src  # consumers read the original
        elif src not in inputs and src not in outputs and src in producer and sum(
                1 for n in nodes if n.op_type == "Identity" and n.input[0] == src and n.output[0] in outputs) == 1:
            rename[src] = dst  # the producer writes the graph output directly
        else:
            keep_nodes.append(node)
            continue

    def resolve(name: str) -> str:
        seen = set()
        while name in rename and name not in seen:
            seen.add(name)
            name = rename[name]
        return name

    for node in keep_nodes:
        node.input[:] = [resolve(n) for n in node.input]
        node.output[:] = [resolve(n) for n in node.output]
    del graph.node[:]
    graph.node.extend(keep_nodes)
    return model


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """No Identity nodes, shortest names for every internal tensor, no node names, no
    value_info: the quantizer's long generated names would otherwise be a quarter of a
    tiny int8 file.  Graph inputs and outputs keep their names (they are the contract)."""
    drop_identities(model)
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            i, s = len(names), ""
            while True:
                s = "abcdefghijklmnopqrstuvwxyz"[i % 26] + s
                i = i // 26 - 1
                if i < 0:
                    break
            while s in keep:  # never collide with a contract name
                s = "_" + s
            names[name] = s
        return names[name]

    for t in graph.initializer:
        t.name = short(t.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    return model
