"""Running an exported graph with onnxruntime: a session, and the streaming step over audio.

Used by the export's self-check, by calibration (quantize) and by the verifier; it imports
no other kws_export module than errors, so any of them can use it without a cycle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from kws_export.errors import KWSError


def session(model: onnx.ModelProto | str | Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def stream_states(sess) -> list[dict]:
    """``kws.states`` of a streaming session (name, shape, init)."""
    meta = sess.get_modelmeta().custom_metadata_map
    if "kws.states" not in meta:
        raise KWSError("not a kws-edge streaming model (no kws.states metadata)")
    return json.loads(meta["kws.states"])


def run_stream(sess, audio: np.ndarray, record: list | None = None) -> np.ndarray:
    """P(keyword) per step over ``audio`` (whole chunks only), from the initial state.
    With ``record``, appends every call's input feed (chunk + incoming states)."""
    states = stream_states(sess)
    chunk = int(sess.get_inputs()[[i.name for i in sess.get_inputs()].index("audio")].shape[1])
    state = {s["name"]: np.full(s["shape"], s["init"], np.float32) for s in states}
    names = [o.name for o in sess.get_outputs()]
    audio = np.asarray(audio, np.float32).reshape(-1)
    probs = []
    for start in range(0, len(audio) - chunk + 1, chunk):
        feed = {"audio": audio[None, start:start + chunk], **state}
        if record is not None:
            record.append(feed)
        out = dict(zip(names, sess.run(None, feed)))
        probs.append(out["prob"])
        state = {name: out[name + "_next"] for name in state}
    return np.concatenate(probs) if probs else np.zeros(0, np.float32)
