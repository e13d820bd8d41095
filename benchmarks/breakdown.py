"""Where the int8 streaming student's time, memory and bytes go (issue 7: "which part costs what").

Time, per 80 ms step, all CPU time on one thread, each a measured difference:
- Python of the Detector: ``Detector.process`` one chunk per call minus the runtime's own
  inner loop (``StreamingModel.run`` over all chunks: audio copy + ``run_with_iobinding``);
- onnxruntime's per-call floor: that same loop on a graph with the same inputs, outputs
  and metadata whose nodes do nothing (Identity / ConstantOfShape);
- graph execution: the inner loop minus the floor, split into the log-mel frontend (its
  subgraph extracted and run alone, minus that subgraph's own floor) and the rest;
- an onnxruntime profile (``SessionOptions.enable_profiling``) of the graph as onnxruntime
  optimizes it: node count per call and kernel time by operator, frontend vs network.
  Profiling adds its own cost to every node, so it gives shares, not absolute times.
Remedies measured on the same stream: several steps per call (``--chunk-ms``), a whole
stream handed to ``process`` at once, ``session.run`` with a feed dict, session options.
Bytes: the int8 file by part (weights, nodes, metadata).  Memory: memory.rss_stages.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

FRONTEND, NETWORK = "frontend", "network"


# Sessions and a generic double-buffered loop ------------------------------------------------------
def session(model: onnx.ModelProto | Path, **options):
    """An onnxruntime session with runtime/detect.py's options, changed by ``options``
    (SessionOptions attributes, plus ``config={key: value}`` session config entries)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    for key, value in options.pop("config", {}).items():
        opts.add_session_config_entry(key, value)
    for key, value in options.items():
        setattr(opts, key, value)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


class BareLoop:
    """``audio`` rebound per call, every ``X``/``X_next`` pair double-buffered, every
    other input fixed and every output written into a pre-allocated array: the cheapest
    way to call onnxruntime from Python (what runtime/detect.py does)."""

    def __init__(self, sess, inits: dict[str, float]):
        import onnxruntime as ort

        self.sess = sess
        ins = sess.get_inputs()
        self.chunk = int(next(i for i in ins if i.name == "audio").shape[1])
        self.audio = np.zeros((1, self.chunk), np.float32)
        feeds = {i.name: np.full(i.shape, inits.get(i.name, 0.0), np.float32) for i in ins if i.name != "audio"}
        names = [o.name for o in sess.get_outputs()]
        first = dict(zip(names, sess.run(None, {"audio": self.audio, **feeds})))
        self.output_shapes = {n: list(v.shape) for n, v in first.items()}
        paired = [n for n in feeds if n + "_next" in first]
        sets = [{n: feeds[n].copy() for n in paired} for _ in range(2)]
        audio_value = ort.OrtValue.ortvalue_from_numpy(self.audio)
        fixed = {n: ort.OrtValue.ortvalue_from_numpy(v) for n, v in feeds.items() if n not in paired}
        outs = {n: ort.OrtValue.ortvalue_from_numpy(np.empty_like(v)) for n, v in first.items()
                if not (n.endswith("_next") and n[:-5] in paired)}
        self.bindings = []
        for b in range(2):
            binding = sess.io_binding()
            binding.bind_ortvalue_input("audio", audio_value)
            for n, v in fixed.items():
                binding.bind_ortvalue_input(n, v)
            for n, v in outs.items():
                binding.bind_ortvalue_output(n, v)
            for n in paired:
                binding.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(sets[b][n]))
                binding.bind_ortvalue_output(n + "_next", ort.OrtValue.ortvalue_from_numpy(sets[1 - b][n]))
            self.bindings.append(binding)

    def cpu_s(self, chunks: np.ndarray) -> float:
        audio, run, bindings = self.audio[0], self.sess.run_with_iobinding, self.bindings
        cur = 0
        t0 = time.process_time_ns()
        for chunk in chunks:
            audio[:] = chunk
            run(bindings[cur])
            cur = 1 - cur
        return (time.process_time_ns() - t0) / 1e9


# Graph surgery -----------------------------------------------------------------------------------
def _static_shape(value_info) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def floor_model(model: onnx.ModelProto, output_shapes: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """A graph with ``model``'s inputs, outputs (names, shapes, types) and metadata whose
    nodes do no work: ``X_next = Identity(X)``, any other output ``ConstantOfShape``."""
    g = model.graph
    inputs = {i.name for i in g.input}
    shapes = output_shapes or {o.name: _static_shape(o) for o in g.output}
    nodes, inits = [], []
    for o in g.output:
        if o.name.endswith("_next") and o.name[:-5] in inputs:
            nodes.append(helper.make_node("Identity", [o.name[:-5]], [o.name]))
        else:
            shape = helper.make_tensor(f"{o.name}_shape", TensorProto.INT64, [len(shapes[o.name])], shapes[o.name])
            inits.append(shape)
            nodes.append(helper.make_node("ConstantOfShape", [shape.name], [o.name],
                                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])))
    outputs = [helper.make_tensor_value_info(o.name, TensorProto.FLOAT, shapes[o.name]) for o in g.output]
    graph = helper.make_graph(nodes, "floor", list(g.input), outputs, inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    for prop in model.metadata_props:
        out.metadata_props.append(prop)
    return out


def _ancestors(g, targets: set[str]) -> tuple[set[int], set[str]]:
    """Indices of the nodes ``targets`` are computed from, and the graph inputs they read."""
    producer = {out: i for i, node in enumerate(g.node) for out in node.output}
    graph_inputs = {i.name for i in g.input}
    nodes, inputs, todo = set(), set(), list(targets)
    while todo:
        name = todo.pop()
        if name in graph_inputs:
            inputs.add(name)
        elif name in producer and producer[name] not in nodes:
            nodes.add(producer[name])
            todo += [x for x in g.node[producer[name]].input if x]
    return nodes, inputs


def _frontend(model: onnx.ModelProto) -> tuple[set[int], str | None]:
    """The log-mel frontend's nodes (everything the Log and ``audio_tail_next`` are computed
    from: framing, DFT, power, mel, log, and the in-graph constants onnxruntime folds) and
    the Log's output; empty when the graph has no Log computed from the audio alone."""
    g = model.graph
    for node in g.node:
        if node.op_type == "Log":
            nodes, inputs = _ancestors(g, {node.output[0], "audio_tail_next"})
            if inputs <= {"audio", "audio_tail"} and "audio" in inputs:
                return nodes | {list(g.node).index(node)}, node.output[0]
    return set(), None


def frontend_nodes(model: onnx.ModelProto) -> set[int]:
    return _frontend(model)[0]


def frontend_submodel(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The frontend alone: (audio, audio_tail) -> (log-mel, audio_tail_next)."""
    nodes, log_out = _frontend(model)
    if not nodes:
        return None
    g = model.graph
    kept = [g.node[i] for i in sorted(nodes)]
    used = {x for n in kept for x in n.input}
    graph = helper.make_graph(
        kept, "frontend", [i for i in g.input if i.name in ("audio", "audio_tail")],
        [helper.make_tensor_value_info(log_out, TensorProto.FLOAT, None),
         next(o for o in g.output if o.name == "audio_tail_next")],
        [t for t in g.initializer if t.name in used])
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


# Profile -------------------------------------------------------------------------------------------
def profile(path: Path, chunks: np.ndarray, inits: dict[str, float]) -> dict:
    """Median kernel time per node from an onnxruntime profile of ``chunks`` calls, by
    operator and by part.  The exported file has no node names (they cost bytes), so a
    copy is named here: ``fe<i>`` for frontend nodes, ``nw<i>`` for the rest; nodes that
    onnxruntime creates when it fuses (QGemm, NCHWc convs) keep names derived from the
    network's tensors and count as network.  Medians, because a shared machine adds
    outliers; the profiler adds a few µs to every node, so these are relative costs."""
    import tempfile

    model = onnx.load(str(path))
    fe = frontend_nodes(model)
    for i, node in enumerate(model.graph.node):
        node.name = f"fe{i}" if i in fe else f"nw{i}"
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(model, enable_profiling=True, profile_file_prefix=str(Path(tmp) / "ort_profile"))
        BareLoop(sess, inits).cpu_s(chunks)
        events = json.loads(Path(sess.end_profiling()).read_text())
    durs: dict[str, list[float]] = collections.defaultdict(list)
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            durs[name].append(float(e["dur"]))
            ops[name] = e.get("args", {}).get("op_name", "?")
    runs = [float(e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [{"name": n, "part": FRONTEND if n.startswith("fe") else NETWORK, "op": ops[n],
              "median_us": float(np.median(d))} for n, d in durs.items()]
    nodes.sort(key=lambda r: -r["median_us"])
    by_op: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for r in nodes:
        by_op[(r["part"], r["op"])][0] += 1
        by_op[(r["part"], r["op"])][1] += r["median_us"]
    total = sum(r["median_us"] for r in nodes)
    return {
        "calls": len(runs),
        "nodes_in_file": len(model.graph.node),
        "nodes_per_call": {part: sum(r["part"] == part for r in nodes) for part in (FRONTEND, NETWORK)},
        "median_run_us": float(np.median(runs)) if runs else 0.0,
        "kernel_us": {part: sum(r["median_us"] for r in nodes if r["part"] == part) for part in (FRONTEND, NETWORK)},
        "share": {part: (sum(r["median_us"] for r in nodes if r["part"] == part) / total if total else 0.0)
                  for part in (FRONTEND, NETWORK)},
        "ops": [{"part": part, "op": op, "nodes": int(n), "median_us": us}
                for (part, op), (n, us) in sorted(by_op.items(), key=lambda kv: -kv[1][1])],
        "top_nodes": nodes[:8],
    }


# Size ----------------------------------------------------------------------------------------------
_DTYPES = {TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT32: "int32",
           TensorProto.FLOAT: "float32", TensorProto.INT64: "int64"}


def size_breakdown(path: Path) -> dict:
    """Bytes of an ONNX file by part: initializers by type, nodes, metadata by key, the rest."""
    m = onnx.load(str(path))
    g = m.graph
    inits: dict[str, int] = collections.Counter()
    for t in g.initializer:
        inits[_DTYPES.get(t.data_type, f"type {t.data_type}")] += t.ByteSize()
    meta = {p.key: p.ByteSize() for p in m.metadata_props}
    nodes = sum(n.ByteSize() for n in g.node)
    io = sum(v.ByteSize() for v in list(g.input) + list(g.output))
    total = path.stat().st_size
    parts = {**{f"initializers ({k})": v for k, v in sorted(inits.items(), key=lambda kv: -kv[1])},
             f"nodes ({len(g.node)})": nodes, "inputs/outputs": io,
             f"metadata ({len(meta)} keys)": sum(meta.values())}
    parts["other (headers, doc strings)"] = total - sum(parts.values())
    return {"total": total, "parts": parts, "metadata": dict(sorted(meta.items(), key=lambda kv: -kv[1]))}


# The whole breakdown -------------------------------------------------------------------------------
def _interleaved_us_per_step(jobs: dict[str, tuple], repeats: int) -> dict[str, float]:
    """``jobs``: name -> (fn, steps); fn runs a whole stream.  A warm-up call each, then
    ``repeats`` rounds of every job in turn (load from other processes spreads over all
    of them); the median CPU µs per 80 ms step of each."""
    for fn, _ in jobs.values():
        fn()
    cpu: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(max(1, repeats)):
        for name, (fn, _) in jobs.items():
            t0 = time.process_time_ns()
            fn()
            cpu[name].append((time.process_time_ns() - t0) / 1e3)
    return {name: float(np.median(cpu[name])) / steps for name, (_, steps) in jobs.items()}


OPTIONS = {
    "runtime/detect.py options": {},
    "ORT_ENABLE_EXTENDED (no layout transforms)": {"graph_optimization_level": "ORT_ENABLE_EXTENDED"},
    "no CPU memory arena": {"enable_cpu_mem_arena": False},
    "denormals as zero": {"config": {"session.set_denormal_as_zero": "1"}},
}


def runtime_breakdown(path: Path, audio: np.ndarray, work: Path, repeats: int,
                      variants: dict[str, Path] | None = None, profile_calls: int = 300) -> dict:
    """Everything in the module doc, for one streaming ONNX model."""
    import onnxruntime as ort

    from runtime.detect import Detector, StreamingModel

    det = Detector(str(path), keep_history=False)
    chunk, steps = det.chunk_samples, det.steps_per_call
    calls = len(audio) // chunk
    x = np.ascontiguousarray(audio[: calls * chunk], np.float32)
    chunks = x.reshape(calls, chunk)
    n_steps = calls * steps
    inits = {name: init for name, _, init in det.model.states}
    proto = onnx.load(str(path))
    model = det.model
    floor_path = work / f"{path.stem}.floor.onnx"
    onnx.save(floor_model(proto), str(floor_path))
    floor = StreamingModel(str(floor_path))
    plain = session(path)
    names = [o.name for o in plain.get_outputs()]

    def live():
        det.reset()
        for c in chunks:
            det.process(c)

    def at_once():
        det.reset()
        det.process(x)

    def feed_dict_loop():
        state = {name: np.full(shape, init, np.float32) for name, shape, init in det.model.states}
        for c in chunks:
            out = dict(zip(names, plain.run(None, {"audio": c[None], **state})))
            state = {k: out[k + "_next"] for k in state}

    jobs = {
        "detector_live": (live, n_steps),
        "detector_at_once": (at_once, n_steps),
        "runtime_loop": (lambda: (model.reset(), model.run(chunks)), n_steps),
        "floor": (lambda: (floor.reset(), floor.run(chunks)), n_steps),
        "session_run_feeds": (feed_dict_loop, n_steps),
    }
    fe_model = frontend_submodel(proto)
    if fe_model is not None:
        fe_loop = BareLoop(session(fe_model), inits)
        fe_floor = BareLoop(session(floor_model(fe_model, fe_loop.output_shapes)), inits)
        jobs["frontend_subgraph"] = (lambda: fe_loop.cpu_s(chunks), n_steps)
        jobs["frontend_floor"] = (lambda: fe_floor.cpu_s(chunks), n_steps)
    for label, opts in OPTIONS.items():
        opts = dict(opts)
        if "graph_optimization_level" in opts:
            opts["graph_optimization_level"] = getattr(ort.GraphOptimizationLevel, opts["graph_optimization_level"])
        loop = BareLoop(session(path, **opts), inits)
        jobs["option: " + label] = (lambda loop=loop: loop.cpu_s(chunks), n_steps)
    for label, vpath in (variants or {}).items():
        vdet = Detector(str(vpath), keep_history=False)
        vcalls = len(audio) // vdet.chunk_samples
        vchunks = np.ascontiguousarray(audio[: vcalls * vdet.chunk_samples], np.float32).reshape(vcalls, -1)

        def vlive(vdet=vdet, vchunks=vchunks):
            vdet.reset()
            for c in vchunks:
                vdet.process(c)
        jobs["chunk: " + label] = (vlive, vcalls * vdet.steps_per_call)

    measured = _interleaved_us_per_step(jobs, repeats)
    us = {k: measured[k] for k in ("detector_live", "detector_at_once", "runtime_loop", "floor", "session_run_feeds")}
    us["graph"] = us["runtime_loop"] - us["floor"]
    us["python_detector"] = us["detector_live"] - us["runtime_loop"]
    if fe_model is not None:
        us["frontend"] = max(0.0, measured["frontend_subgraph"] - measured["frontend_floor"])
        us["network"] = us["graph"] - us["frontend"]
    chunk_us = {f"{1000 * chunk // det.sample_rate} ms ({steps} step{'s' if steps > 1 else ''}/call)": us["detector_live"]}
    chunk_us.update({k[len("chunk: "):]: v for k, v in measured.items() if k.startswith("chunk: ")})
    option_us = {k[len("option: "):]: v for k, v in measured.items() if k.startswith("option: ")}
    prof = profile(path, chunks[:profile_calls], inits)
    return {"us_per_step": us, "session_options_us_per_step": option_us, "chunk_us_per_step": chunk_us,
            "profile": prof, "size": size_breakdown(path), "steps_per_second": det.sample_rate / det.step_samples}
