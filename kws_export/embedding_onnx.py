"""ONNX exports of the speech-embedding model: the frozen graphs inlined, the head appended.

Streaming (what ``runtime/detect.py`` runs, the same ``kws.*`` contract as the CRNN files):
one 80 ms chunk per call, states ``audio_tail`` [1, 480], ``mel_ring`` [1, 76, 32] and
``emb_ring`` [1, 16, 96]; exactly ``EmbeddingKWS.step``.  Offline: ``audio`` [batch, 31840]
-> ``prob`` [batch] is not provided, because the mel graph's 80 dB floor is taken over its
whole input batch (openWakeWord runs it one clip at a time): a batched offline graph would
silently change the features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kws_export.card import card_data, card_metrics
from kws_export.embedding import (
    CONTEXT_SAMPLES, EMBEDDING_DIM, INT16_SCALE, MEL_BANDS, MEL_STRIDE, MEL_WINDOW,
    STEP_SAMPLES, EmbeddingKWS, count_parameters, frozen_graphs_card, stream_states,
)
from kws_export.errors import KWSError
from kws_export.fileio import sha256_file

OPSET = 13  # the frozen graphs' own opset
FORMAT_VERSION = 1


def _inline(graph: onnx.GraphProto, prefix: str, inputs: dict[str, str], outputs: dict[str, str]):
    """The nodes and initializers of ``graph`` with every name prefixed, except its inputs
    and outputs, which are renamed to the given tensors."""
    rename = {**inputs, **outputs}

    def name(n: str) -> str:
        return rename.get(n, f"{prefix}/{n}") if n else n

    nodes = []
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        del new.output[:]
        new.input.extend(name(i) for i in node.input)
        new.output.extend(name(o) for o in node.output)
        new.name = f"{prefix}/{node.name}" if node.name else ""
        nodes.append(new)
    inits = []
    for t in graph.initializer:
        new = onnx.TensorProto()
        new.CopyFrom(t)
        new.name = name(t.name)
        inits.append(new)
    return nodes, inits


def build_streaming(model: EmbeddingKWS) -> onnx.ModelProto:
    cfg = model.config
    graphs = {k: onnx.load_from_string(v) for k, v in model.graphs().items()}
    mel_g, emb_g = graphs["melspectrogram"].graph, graphs["embedding_model"].graph
    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    # audio: the previous 480 samples + this chunk, as the int16 values the mel graph expects
    x = node("Concat", ["audio_tail", "audio"], "frame_audio", axis=1)
    node("Slice", [x, const("tail_start", np.array([STEP_SAMPLES], np.int64)),
                   const("tail_end", np.array([STEP_SAMPLES + CONTEXT_SAMPLES], np.int64)),
                   const("time_axis", np.array([1], np.int64))], "audio_tail_next")
    scaled = node("Mul", [x, const("int16_scale", np.float32(INT16_SCALE))], "scaled")
    pcm = node("Clip", [node("Round", [scaled], "rounded"), const("pcm_min", np.float32(-32768)),
                        const("pcm_max", np.float32(32767))], "pcm")
    mel_nodes, mel_inits = _inline(mel_g, "mel", {mel_g.input[0].name: pcm}, {mel_g.output[0].name: "mel_raw"})
    nodes += mel_nodes
    inits += mel_inits
    mel = node("Add", [node("Div", ["mel_raw", const("ten", np.float32(10))], "mel_div"), const("two", np.float32(2))], "mel_scaled")
    mel = node("Reshape", [mel, const("mel_shape", np.array([1, MEL_STRIDE, MEL_BANDS], np.int64))], "mel_new")
    ring = node("Concat", ["mel_ring", mel], "mel_concat", axis=1)
    node("Slice", [ring, const("mel_from", np.array([MEL_STRIDE], np.int64)),
                   const("mel_to", np.array([MEL_STRIDE + MEL_WINDOW], np.int64)), "time_axis"], "mel_ring_next")
    emb_in = node("Unsqueeze", ["mel_ring_next", const("last_axis", np.array([3], np.int64))], "emb_input")
    emb_nodes, emb_inits = _inline(emb_g, "emb", {emb_g.input[0].name: emb_in}, {emb_g.output[0].name: "emb_raw"})
    nodes += emb_nodes
    inits += emb_inits
    e = node("Reshape", ["emb_raw", const("emb_shape", np.array([1, 1, EMBEDDING_DIM], np.int64))], "emb_new")
    ering = node("Concat", ["emb_ring", e], "emb_concat", axis=1)
    node("Slice", [ering, const("emb_from", np.array([1], np.int64)),
                   const("emb_to", np.array([1 + cfg.n_embeddings], np.int64)), "time_axis"], "emb_ring_next")
    h = node("Reshape", ["emb_ring_next", const("flat_shape", np.array([1, cfg.n_embeddings * EMBEDDING_DIM], np.int64))], "head_in")
    layers = model.head_weights()
    for i, (w, b) in enumerate(layers):
        h = node("Gemm", [h, const(f"head_w{i}", w), const(f"head_b{i}", b)], f"head_{i}", transB=1)
        if i < len(layers) - 1:
            h = node("Relu", [h], f"head_relu{i}")
    p = node("Sigmoid", [h], "prob_2d")
    node("Reshape", [p, const("prob_shape", np.array([1], np.int64))], "prob")

    f32 = TensorProto.FLOAT
    states = stream_states(cfg)
    inputs = [helper.make_tensor_value_info("audio", f32, [1, STEP_SAMPLES])]
    inputs += [helper.make_tensor_value_info(n, f32, list(s)) for n, s, _ in states]
    outputs = [helper.make_tensor_value_info("prob", f32, [1])]
    outputs += [helper.make_tensor_value_info(f"{n}_next", f32, list(s)) for n, s, _ in states]
    graph = helper.make_graph(nodes, "kws_embedding_stream", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", OPSET)]
    opsets += [o for o in graphs["embedding_model"].opset_import if o.domain not in ("",)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="kws-edge")
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def streaming_metadata(ckpt, model: EmbeddingKWS, source: str | Path, threshold: float) -> dict[str, Any]:
    cfg = model.config
    card = {
        "source_kind": ckpt.kind, "arch": "embedding", "config": cfg.to_dict(), "params": count_parameters(model),
        "frozen_graphs": frozen_graphs_card(),
        "metrics": card_metrics(ckpt.metadata.get("metrics", {})), "data": card_data(ckpt.metadata.get("data_recipe", {})),
    }
    for key in ("name", "role", "created", "command", "threshold_source"):
        if key in ckpt.metadata:
            card[key] = ckpt.metadata[key]
    return {
        "kws.format_version": FORMAT_VERSION,
        "kws.graph": "streaming",
        "kws.arch": "embedding",
        "kws.keyword": str(ckpt.metadata.get("keyword", cfg.keyword)),
        "kws.sample_rate": cfg.sample_rate,
        "kws.threshold": threshold,
        "kws.source_sha256": sha256_file(source),
        "kws.model_card": card,
        "kws.chunk_samples": STEP_SAMPLES,
        "kws.step_samples": STEP_SAMPLES,
        "kws.steps_per_call": 1,
        "kws.window_ms": round(cfg.clip_samples / cfg.sample_rate * 1000),
        "kws.prefix_samples": CONTEXT_SAMPLES,
        "kws.states": [{"name": n, "shape": list(s), "init": v} for n, s, v in stream_states(cfg)],
    }


def check_stream_options(chunk_ms: float | None, window_ms: float | None) -> None:
    if chunk_ms not in (None, STEP_SAMPLES / 16.0) or window_ms is not None:
        raise KWSError("the embedding model streams one 80 ms step per call over its 16-embedding window "
                       "(--chunk-ms and --window-ms do not apply)")


def self_check(proto: onnx.ModelProto, model: EmbeddingKWS, seconds: float = 2.0) -> float:
    """Run a chirp in noise through the graph and the numpy reference step; never write a wrong file."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    sr = model.config.sample_rate
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(0)
    audio = (0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    ref_state = model.init_state()
    state = {k: v.copy() for k, v in ref_state.items()}
    diff = 0.0
    for i in range(len(audio) // STEP_SAMPLES):
        chunk = audio[i * STEP_SAMPLES:(i + 1) * STEP_SAMPLES]
        want, ref_state = model.step(chunk, ref_state)
        out = sess.run(None, {"audio": chunk[None], **state})
        names = [o.name for o in sess.get_outputs()]
        got = dict(zip(names, out))
        state = {k: got[f"{k}_next"] for k in state}
        diff = max(diff, abs(float(got["prob"][0]) - want))
    if not diff <= 1e-4:
        raise KWSError(f"internal error: the exported graph differs from the reference step by {diff:.2e} (please report)")
    return diff
