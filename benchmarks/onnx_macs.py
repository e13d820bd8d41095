"""Multiply-accumulates of an ONNX graph, counted from its tensor shapes.

``graph_macs(model, {input: shape})`` fixes the inputs' shapes, runs onnx shape inference
(with data propagation, so shapes computed inside the graph resolve) and counts, per node:

* ``Conv``: output elements x (input channels per group x kernel elements);
* ``MatMul``: output elements x the shared dimension K;
* ``Gemm``: M x N x K.

Those are the arithmetic of a speech model; element-wise operators (activations, adds,
pooling, the log of a mel spectrogram) are left out, as ``training/macs.py`` leaves them out
for the CRNN.  A matrix node whose shapes inference cannot resolve is a one-line KWSError,
never a silent zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kws_export.errors import KWSError

COUNTED = ("Conv", "MatMul", "Gemm")


def _load(model):
    import onnx

    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, (str, Path)):
        return onnx.load(str(model))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _shapes(proto) -> dict[str, list[int | None]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    shapes: dict[str, list[int | None]] = {}
    g = inferred.graph
    for vi in (*g.input, *g.value_info, *g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    for node in g.node:  # Constant nodes carry their shape in the attribute
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = list(a.t.dims)
    return shapes


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def graph_macs(model, input_shapes: dict[str, list[int]] | None = None, name: str = "graph") -> dict:
    """{"total": MACs of one run with these input shapes, "by_op": {op: MACs}, "nodes": {op: count}}."""
    proto = _load(model)
    for inp in proto.graph.input:
        if input_shapes and inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            want = list(input_shapes[inp.name])
            if len(dims) != len(want):
                raise KWSError(f"{name}: input {inp.name!r} has rank {len(dims)}, given shape {want}")
            for d, v in zip(dims, want):
                d.Clear()
                d.dim_value = int(v)
    shapes = _shapes(proto)
    by_op = {op: 0 for op in COUNTED}
    nodes = {op: 0 for op in COUNTED}
    for node in proto.graph.node:
        if node.op_type not in COUNTED:
            continue
        ins = [shapes.get(i) for i in node.input[:2]]
        out = shapes.get(node.output[0])
        if not (_known(out) and all(_known(s) for s in ins)):
            raise KWSError(f"{name}: cannot count the MACs of {node.op_type} node {node.name or node.output[0]!r} "
                           f"(shapes {ins} -> {out} not all known; give the inputs' shapes)")
        if node.op_type == "Conv":
            macs = int(np.prod(out)) * int(np.prod(ins[1][1:]))
        elif node.op_type == "MatMul":
            k = ins[0][-1] if len(ins[0]) > 1 else ins[0][0]
            macs = int(np.prod(out)) * int(k)
        else:  # Gemm: A [M, K] (or [K, M] with transA)
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            k = ins[0][0] if trans_a else ins[0][1]
            macs = int(np.prod(out)) * int(k)
        by_op[node.op_type] += macs
        nodes[node.op_type] += 1
    return {"total": int(sum(by_op.values())), "by_op": by_op, "nodes": nodes}


def parameter_count(model) -> int:
    """Elements of the graph's initializers (weights and constants)."""
    proto = _load(model)
    return int(sum(int(np.prod(t.dims)) if t.dims else 1 for t in proto.graph.initializer))


# The speech-embedding pipeline (openWakeWord's frozen graphs) --------------------------------------
def embedding_step_macs(graphs: dict[str, bytes], n_embeddings: int = 16, head: int | None = None) -> dict:
    """MACs of one 80 ms streaming step of the speech-embedding pipeline: one mel call on
    1760 samples (the 1280 new ones + 480 of context: 8 new frames), one embedding of a
    76 x 32 mel window, and the head over ``n_embeddings`` x 96 (``head``: its MACs, e.g. a
    linear head's 1,536; None: not counted here)."""
    from kws_export.embedding import CONTEXT_SAMPLES, MEL_BANDS, MEL_WINDOW, STEP_SAMPLES

    mel = graph_macs(graphs["melspectrogram"], {"input": [1, STEP_SAMPLES + CONTEXT_SAMPLES]}, "melspectrogram")
    emb = graph_macs(graphs["embedding_model"], {"input_1": [1, MEL_WINDOW, MEL_BANDS, 1]}, "embedding_model")
    out = {"melspectrogram": mel["total"], "embedding_model": emb["total"]}
    if head is not None:
        out["head"] = int(head)
    out["total"] = int(sum(out.values()))
    return out
