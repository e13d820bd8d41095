"""Describe an exported ONNX file: kws metadata, inputs/outputs, quantized node count."""

from __future__ import annotations

import json
from pathlib import Path

from kws_export.errors import KWSError
from kws_export.fileio import check_readable

QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}


def load_onnx_model(path: str | Path):
    import onnx

    p = check_readable(path, "ONNX model")
    try:
        return onnx.load(str(p))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise KWSError(f"{p}: not an ONNX model ({first})") from None


def kws_metadata(model) -> dict[str, object]:
    """The ``kws.*`` metadata_props, JSON values decoded."""
    meta: dict[str, object] = {}
    for prop in model.metadata_props:
        if not prop.key.startswith("kws."):
            continue
        try:
            meta[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            meta[prop.key] = prop.value
    return meta


def _shape(value_info) -> list:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def int8_products(model) -> int:
    """Matrix products (Gemm, MatMul, Conv) whose two operands are both dequantized int8:
    onnxruntime runs these as integer kernels (QGemm, QLinearMatMul, QLinearConv)."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return sum(
        1 for n in model.graph.node
        if n.op_type in ("Gemm", "MatMul", "Conv") and all(producer.get(i) == "DequantizeLinear" for i in n.input[:2])
    )


def int8_weight_tensors(model) -> int:
    """int8 initializers: weights stored as int8 (``kws-export onnx --int8-mode weights``)."""
    from onnx import TensorProto

    return sum(1 for t in model.graph.initializer if t.data_type == TensorProto.INT8)


def check_kws_export(model, path: str | Path) -> dict[str, object]:
    """Refuse an ONNX that is not a kws-edge export, or whose graph inputs disagree with
    its own kws.* metadata (what the runtime would feed it); return the metadata."""
    meta = kws_metadata(model)
    if "kws.format_version" not in meta:
        raise KWSError(f"{path}: not a kws-edge export (no kws.* metadata)")
    inputs = {i.name: _shape(i) for i in model.graph.input}
    expected = {"audio"}
    states = meta.get("kws.states")
    if states is not None:
        try:
            declared = {str(st["name"]): [int(d) for d in st["shape"]] for st in states}
        except (TypeError, KeyError, ValueError):
            raise KWSError(f"{path}: kws.states metadata is malformed") from None
        expected |= set(declared)
        for name, shape in declared.items():
            if name in inputs and inputs[name] != shape:
                raise KWSError(f"{path}: input {name} has shape {inputs[name]}, its kws.states metadata says {shape}")
    if set(inputs) != expected:
        raise KWSError(f"{path}: graph inputs {sorted(inputs)} do not match its kws.* metadata (expected {sorted(expected)})")
    return meta


def describe_onnx(path: str | Path) -> dict:
    model = load_onnx_model(path)
    check_kws_export(model, path)
    ops = [n.op_type for n in model.graph.node]
    return {
        "path": str(path),
        "kind": "onnx",
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "inputs": {i.name: _shape(i) for i in model.graph.input},
        "outputs": {o.name: _shape(o) for o in model.graph.output},
        "nodes": len(ops),
        "quantized_nodes": sum(op in QUANT_OPS for op in ops),
        "int8_products": int8_products(model),
        "int8_weights": int8_weight_tensors(model),
        "metadata": kws_metadata(model),
        "size_bytes": Path(path).stat().st_size,
    }
