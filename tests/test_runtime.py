"""runtime/detect.py against small ONNX graphs that follow the streaming contract
(docs/streaming.md): buffering, chunk-size invariance, metadata and state handling,
detection logic, wav decoding, resampling, stdin, the microphone loop, errors, imports."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.detect import Detector, DetectError, Resampler, WavReader

ROOT = Path(__file__).resolve().parents[1]
DETECT = ROOT / "runtime" / "detect.py"
RATE, STEP, TAIL = 16000, 160, 5


# Contract graphs ---------------------------------------------------------------------------------
def build_model(path, *, steps=1, step=STEP, rate=RATE, kind="energy", threshold=0.5, keyword="sheila",
                meta=None, drop_meta=(), mutate=None):
    """A streaming ONNX following the contract.

    kind="energy": three states (float ``level`` [1], float ``tail`` [1, TAIL], int64
    ``calls`` [1]) with non-zero initial fills; per step ``level = 0.8 level + 3 mean(x^2)``,
    ``d = mean|x[:TAIL] - tail|``, ``tail = x[-TAIL:]``, ``p = sigmoid(8 level + 0.5 d - 2)``.
    kind="dc": no state, ``p = clip(mean(x), 0, 1)`` per step, so a test dictates the
    probabilities exactly.  ``steps`` steps per call (unrolled)."""
    chunk = steps * step
    nodes, inits, probs = [], [], []

    def const(value, dtype=np.float32):
        name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(op, ins, **attrs):
        out = f"n{len(nodes)}"
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    def cut(x, a, b):
        return node("Slice", [x, const([a], np.int64), const([b], np.int64), const([1], np.int64)])

    inputs = [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, chunk])]
    outputs = [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [steps])]
    states = []
    if kind == "energy":
        states = [{"name": "level", "shape": [1], "init": 0.25}, {"name": "tail", "shape": [1, TAIL], "init": -0.5},
                  {"name": "calls", "shape": [1], "init": 3}]
        inputs += [helper.make_tensor_value_info("level", TensorProto.FLOAT, [1]),
                   helper.make_tensor_value_info("tail", TensorProto.FLOAT, [1, TAIL]),
                   helper.make_tensor_value_info("calls", TensorProto.INT64, [1])]
        level, tail = "level", "tail"
        for s in range(steps):
            x = cut("audio", s * step, (s + 1) * step)
            energy = node("ReduceMean", [node("Mul", [x, x])], axes=[1], keepdims=0)
            level = node("Add", [node("Mul", [level, const([0.8])]), node("Mul", [energy, const([3.0])])])
            d = node("ReduceMean", [node("Abs", [node("Sub", [cut(x, 0, TAIL), tail])])], axes=[1], keepdims=0)
            tail = cut(x, step - TAIL, step)
            z = node("Add", [node("Add", [node("Mul", [level, const([8.0])]), node("Mul", [d, const([0.5])])]), const([-2.0])])
            probs.append(node("Sigmoid", [z]))
        nodes += [helper.make_node("Identity", [level], ["level_next"]),
                  helper.make_node("Identity", [tail], ["tail_next"]),
                  helper.make_node("Add", ["calls", const([1], np.int64)], ["calls_next"])]
        outputs += [helper.make_tensor_value_info("level_next", TensorProto.FLOAT, [1]),
                    helper.make_tensor_value_info("tail_next", TensorProto.FLOAT, [1, TAIL]),
                    helper.make_tensor_value_info("calls_next", TensorProto.INT64, [1])]
    else:
        for s in range(steps):
            mean = node("ReduceMean", [cut("audio", s * step, (s + 1) * step)], axes=[1], keepdims=0)
            probs.append(node("Clip", [mean, const(0.0), const(1.0)]))
    nodes.append(helper.make_node("Concat", probs, ["prob"], axis=0))
    model = helper.make_model(helper.make_graph(nodes, "contract", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    md = {"kws.format_version": 1, "kws.keyword": keyword, "kws.sample_rate": rate, "kws.chunk_samples": chunk,
          "kws.step_samples": step, "kws.window_ms": 1000, "kws.threshold": threshold, "kws.states": states,
          "kws.source_sha256": "0" * 64, "kws.model_card": "contract test graph"}
    md.update(meta or {})
    for key in drop_meta:
        del md[key]
    for key, value in md.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value if isinstance(value, str) else json.dumps(value)
    if mutate:
        mutate(model)
    onnx.save(model, str(path))
    return Path(path)


def energy_reference(x, steps=1, step=STEP):
    """The energy graph's probabilities in float64 numpy, tail zero-padded to whole chunks."""
    chunk = steps * step
    x = np.asarray(x, np.float64)
    x = np.concatenate([x, np.zeros(-len(x) % chunk)])
    level, tail, out = 0.25, np.full(TAIL, -0.5), []
    for s in range(len(x) // step):
        xs = x[s * step:(s + 1) * step]
        level = 0.8 * level + 3.0 * np.mean(xs * xs)
        d = np.mean(np.abs(xs[:TAIL] - tail))
        tail = xs[-TAIL:]
        out.append(1.0 / (1.0 + np.exp(-(8.0 * level + 0.5 * d - 2.0))))
    return np.array(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "energy1": build_model(d / "energy1.onnx", steps=1),
        "energy4": build_model(d / "energy4.onnx", steps=4),
        "dc1": build_model(d / "dc1.onnx", kind="dc", steps=1),
        "dc4": build_model(d / "dc4.onnx", kind="dc", steps=4, threshold=0.2),
    }


def bursty(seconds=3.0, seed=0, rate=RATE):
    """Quiet noise with two loud bursts: a stream with something to detect."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * rate)) * 0.05
    for start in (0.6, 1.9):
        a = int(start * rate)
        x[a:a + rate // 4] *= 10
    return x.astype(np.float32)


def feed_all(det, x):
    return det.process(x) + det.flush()


def feed_random(det, x, rng):
    events, i = [], 0
    while i < len(x):
        n = int(rng.choice([0, 1, 7, 159, 160, 161, 640, 1000, int(rng.integers(0, 5000))]))
        events += det.process(x[i:i + n])
        i += n
    return events + det.flush()


# Streaming through the API -----------------------------------------------------------------------
@pytest.mark.parametrize("name,steps", [("energy1", 1), ("energy4", 4)])
def test_probabilities_follow_the_graph_with_initial_states(models, name, steps):
    x = bursty(seconds=2.03)  # not a whole number of chunks
    det = Detector(models[name])
    events = feed_all(det, x)
    ref = energy_reference(x, steps)
    n_steps = -(-len(x) // STEP)  # padding-only steps of the last call are not reported
    assert len(det.probs) == n_steps
    np.testing.assert_allclose(det.probs, ref[:n_steps], atol=2e-6)
    np.testing.assert_allclose(det.times, np.arange(1, n_steps + 1) * STEP / RATE)
    # one call per chunk, counted by an int64 state that starts at 3
    assert det.get_state()["calls"].tolist() == [3 + -(-len(x) // (steps * STEP))]
    assert det.get_state()["calls"].dtype == np.int64
    assert [e["time"] for e in events] and all(e["keyword"] == "sheila" for e in events)


@pytest.mark.parametrize("name", ["energy1", "energy4"])
def test_random_chunking_gives_identical_results(models, name):
    x = bursty(seconds=4.0, seed=1)
    whole = Detector(models[name], smooth=3)
    events_whole = feed_all(whole, x)
    for seed in range(3):
        det = Detector(models[name], smooth=3)
        events = feed_random(det, x, np.random.default_rng(seed))
        assert np.array_equal(det.probs, whole.probs)
        assert np.array_equal(det.scores, whole.scores)
        assert np.array_equal(det.times, whole.times)
        assert events == events_whole


def test_int16_input_and_shapes(models):
    x = (bursty(seconds=1.0) * 32767).astype(np.int16)
    a, b = Detector(models["energy1"]), Detector(models["energy1"])
    feed_all(a, x)
    feed_all(b, x.astype(np.float32) / 32768.0)
    assert np.array_equal(a.probs, b.probs)
    c = Detector(models["energy1"])
    feed_all(c, x.astype(np.float32)[:, None] / 32768.0)  # a (n, 1) column is mono too
    assert np.array_equal(a.probs, c.probs)
    with pytest.raises(DetectError, match="mono"):
        a.process(np.zeros((100, 2), np.float32))
    with pytest.raises(DetectError, match="int16"):
        a.process(np.zeros(100, np.int32))


def test_reset_and_independent_instances(models):
    x, y = bursty(seconds=2.0, seed=2), bursty(seconds=2.0, seed=3)
    fresh_x, fresh_y = Detector(models["energy4"]), Detector(models["energy4"])
    feed_all(fresh_x, x)
    feed_all(fresh_y, y)
    a, b = Detector(models["energy4"]), Detector(models["energy4"])
    for i in range(0, len(x), 999):  # interleaved: no state may leak between instances
        a.process(x[i:i + 999])
        b.process(y[i:i + 999])
    a.flush()
    b.flush()
    assert np.array_equal(a.probs, fresh_x.probs) and np.array_equal(b.probs, fresh_y.probs)
    a.process(y[:1234])  # leaves a half-filled chunk and a moved state behind
    a.reset()
    feed_all(a, x)
    assert np.array_equal(a.probs, fresh_x.probs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_block_raises_and_leaves_state_unchanged(models, bad):
    x = bursty(seconds=2.0, seed=4)
    ref = Detector(models["energy4"])
    feed_all(ref, x)
    det = Detector(models["energy4"])
    det.process(x[:1000])  # 1000 = 1 chunk + a partial one in the buffer
    state = det.get_state()
    poisoned = x[1000:3000].copy()
    poisoned[777] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        det.process(poisoned)
    assert all(np.array_equal(v, state[k]) for k, v in det.get_state().items())
    det.process(x[1000:])
    det.flush()
    assert np.array_equal(det.probs, ref.probs)
    Detector(models["dc1"]).process(np.full(10, 1e30, np.float32))  # huge but finite is not refused


def test_state_api(models):
    x = bursty(seconds=2.0, seed=5)
    cut = 640 * 10  # a chunk boundary: the sample buffer is empty there
    ref = Detector(models["energy4"])
    feed_all(ref, x)
    a = Detector(models["energy4"])
    a.process(x[:cut])
    saved = a.get_state()
    saved["tail"][...] = 123.0  # get_state hands out copies
    assert not np.array_equal(a.get_state()["tail"], saved["tail"])
    saved = a.get_state()
    b = Detector(models["energy4"])
    b.set_state(saved)
    b.process(x[cut:])
    b.flush()
    assert np.array_equal(b.probs, ref.probs[cut // STEP:])
    with pytest.raises(DetectError, match=r"state 'tail' has shape \[1, 7\], the model expects \[1, 5\]"):
        b.set_state({**saved, "tail": np.zeros((1, 7), np.float32)})
    with pytest.raises(DetectError, match="do not match"):
        b.set_state({"level": saved["level"]})
    with pytest.raises(DetectError, match="NaN"):
        b.set_state({**saved, "level": np.array([np.nan], np.float32)})
    before = b.get_state()
    with pytest.raises(DetectError):  # a bad set changes nothing, not even the good entries
        b.set_state({"level": np.array([9.0], np.float32), "tail": np.zeros((2, 5)), "calls": np.array([0])})
    assert all(np.array_equal(v, before[k]) for k, v in b.get_state().items())


def test_threshold_refractory_and_smoothing(models):
    from training.metrics import detect_events  # the evaluation uses the same event rule

    # dc model: step k's probability is the value we put in its 160 samples
    levels = np.zeros(300)
    levels[[10, 11, 12, 60, 130, 131, 200]] = [0.9, 0.95, 0.9, 0.99, 0.6, 0.8, 0.7]
    x = np.repeat(levels, STEP).astype(np.float32)
    det = Detector(models["dc1"], threshold=0.65)
    events = feed_all(det, x)
    np.testing.assert_allclose(det.probs, levels, atol=1e-6)
    # 60 is within 1 s of 10; 130 is below threshold, 131 fires; 200 is refractory again
    assert [round(e["time"], 6) for e in events] == [0.11, 1.32]
    assert [round(e["prob"], 6) for e in events] == [0.9, 0.8]
    expected = detect_events(det.probs, STEP / RATE, 0.65, 1.0)
    np.testing.assert_allclose([e["time"] for e in events], expected)
    # no refractory: every step at or above the threshold
    det = Detector(models["dc1"], threshold=0.65, refractory_ms=0)
    assert len(feed_all(det, x)) == 6
    # smoothing over 3 steps, fewer at the stream start
    levels = np.array([0.0, 0.9, 0.9, 0.9, 0.0, 0.0])
    det = Detector(models["dc1"], threshold=0.85, smooth=3)
    events = feed_all(det, np.repeat(levels, STEP).astype(np.float32))
    np.testing.assert_allclose(det.scores, [0.0, 0.45, 0.6, 0.9, 0.6, 0.3], atol=1e-6)
    assert [round(e["time"], 6) for e in events] == [0.04]
    det = Detector(models["dc1"], threshold=0.85, smooth=1)
    assert [round(e["time"], 6) for e in feed_all(det, np.repeat(levels, STEP).astype(np.float32))] == [0.02]
    for bad in ({"threshold": 1.5}, {"smooth": 0}, {"refractory_ms": -1}):
        with pytest.raises(DetectError):
            Detector(models["dc1"], **bad)


def test_patience_waits_for_steps_in_a_row_and_matches_the_evaluation(models):
    """--patience N (openWakeWord's patience): an event needs N steps in a row at or above the
    threshold; the streaming detector, in any chunking, fires exactly where the evaluation's
    offline rule (training.real.patience_scores, then detect_events) does."""
    from training.metrics import detect_events
    from training.real import patience_scores

    levels = np.zeros(600)  # 10 ms steps; runs of 2, 4, 1+1+1 and 6 steps, more than 1 s apart
    levels[[10, 11, 150, 151, 152, 153, 300, 302, 304, 450, 451, 452, 453, 454, 455]] = 0.9
    x = np.repeat(levels, STEP).astype(np.float32)
    step_s = STEP / RATE
    for patience, fired in ((1, [10, 150, 300, 450]), (2, [11, 151, 451]), (3, [152, 452]), (4, [153, 453]), (7, [])):
        det = Detector(models["dc1"], threshold=0.65, patience=patience)
        events = feed_all(det, x)
        assert [round(e["time"] / step_s) - 1 for e in events] == fired, patience
        offline = detect_events(patience_scores(det.probs, patience), step_s, 0.65, 1.0)
        np.testing.assert_allclose([e["time"] for e in events], offline)
        for seed in range(2):  # the run of steps is carried across calls
            again = Detector(models["dc1"], threshold=0.65, patience=patience)
            assert feed_random(again, x, np.random.default_rng(seed)) == events
    # on a real-looking track, in the multi-step graph, with smoothing before the patience
    y = bursty(seconds=6.0, seed=3)
    whole = Detector(models["energy4"], threshold=0.6, patience=3, smooth=2)
    events = feed_all(whole, y)
    offline = detect_events(patience_scores(whole.scores, 3), step_s, 0.6, 1.0)
    np.testing.assert_allclose([e["time"] for e in events], offline)
    assert feed_random(Detector(models["energy4"], threshold=0.6, patience=3, smooth=2), y, np.random.default_rng(5)) == events
    np.testing.assert_array_equal(patience_scores(np.array([0.2, 0.9, 0.5, 0.7]), 2), [-np.inf, 0.2, 0.5, 0.5])
    for bad in (0, 1.5, -2):
        with pytest.raises(DetectError):
            Detector(models["dc1"], patience=bad)


def test_default_threshold_is_the_models(tmp_path):
    m = build_model(tmp_path / "t.onnx", kind="dc", threshold=0.37, keyword="marvin")
    det = Detector(m)
    assert det.threshold == pytest.approx(0.37) and det.keyword == "marvin"
    assert det.metadata["kws.model_card"] == "contract test graph"


# Refusing models that break the contract -----------------------------------------------------------
def _rename_audio(model):
    model.graph.input[0].name = "waveform"
    for n in model.graph.node:
        n.input[:] = ["waveform" if i == "audio" else i for i in n.input]


def _drop_tail_output(model):
    del model.graph.output[2]


BAD_MODELS = {
    "no_states": ({"drop_meta": ["kws.states"]}, "kws.states missing"),
    "no_rate": ({"drop_meta": ["kws.sample_rate", "kws.chunk_samples"]}, "kws.sample_rate, kws.chunk_samples missing"),
    "renamed_audio": ({"mutate": _rename_audio}, "inputs are"),
    "state_not_in_meta": ({"meta": {"kws.states": [{"name": "level", "shape": [1], "init": 0}]}}, "inputs are"),
    "state_shape": ({"meta": {"kws.states": [{"name": "level", "shape": [1], "init": 0.25},
                                             {"name": "tail", "shape": [1, 7], "init": 0},
                                             {"name": "calls", "shape": [1], "init": 3}]}}, r"'tail' has shape \[1, 5\]"),
    "missing_output": ({"mutate": _drop_tail_output}, "tail_next"),
    "chunk_mismatch": ({"meta": {"kws.chunk_samples": 320}}, r"'audio' has shape \[1, 160\], metadata says \[1, 320\]"),
    "not_multiple": ({"meta": {"kws.step_samples": 150}}, "not a positive multiple"),
    "newer_format": ({"meta": {"kws.format_version": 99}}, "format version 99 is newer"),
    "bad_states_json": ({"meta": {"kws.states": "not json"}}, "kws.states is not a JSON list"),
    "steps_mismatch": ({"meta": {"kws.steps_per_call": 2}}, "kws.steps_per_call 2 disagrees"),
    "threshold_range": ({"meta": {"kws.threshold": 1.5}}, "threshold 1.5 is not a probability"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_contract_violations_are_refused(tmp_path, case):
    kwargs, message = BAD_MODELS[case]
    path = build_model(tmp_path / f"{case}.onnx", **kwargs)
    with pytest.raises(DetectError, match=message) as err:
        Detector(path)
    assert str(path) in str(err.value)
    wav = write_wav(tmp_path / "a.wav", np.zeros((1600, 1)), RATE, "s16")
    r = run_detect("--model", path, wav)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and str(path) in r.stderr and "Traceback" not in r.stderr


def test_unloadable_model_files(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    wav = write_wav(tmp_path / "a.wav", np.zeros((1600, 1)), RATE, "s16")
    for path, message in ((text, "not a loadable ONNX model"), (tmp_path / "missing.onnx", "model not found")):
        r = run_detect("--model", path, wav)
        assert r.returncode == 2 and r.stderr.count("\n") == 1
        assert str(path) in r.stderr and message in r.stderr


# Wav files ---------------------------------------------------------------------------------------
FORMATS = {  # name: (tag, bits, quantize float -> stored array, decode stored -> float)
    "u8": (1, 8, lambda x: np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8), lambda q: (q.astype(np.float64) - 128) / 128),
    "s16": (1, 16, lambda x: np.clip(np.round(x * 32768), -32768, 32767).astype("<i2"), lambda q: q / 32768.0),
    "s24": (1, 24, lambda x: np.clip(np.round(x * 2**23), -2**23, 2**23 - 1).astype(np.int64), lambda q: q / 2.0**23),
    "s32": (1, 32, lambda x: np.clip(np.round(x * 2**31), -2**31, 2**31 - 1).astype("<i4"), lambda q: q / 2.0**31),
    "f32": (3, 32, lambda x: x.astype("<f4"), lambda q: q.astype(np.float64)),
    "f64": (3, 64, lambda x: x.astype("<f8"), lambda q: q.astype(np.float64)),
}


def write_wav(path, x, rate, fmt, extensible=False, extra_chunk=None, data_size=None):
    """Write (frames, channels) float data as a wav with our own header; returns the path.
    Also returns the exactly decoded values through ``write_wav.decoded``."""
    tag, bits, quantize, decode = FORMATS[fmt]
    x = np.asarray(x, np.float64)
    channels = x.shape[1]
    q = quantize(x)
    write_wav.decoded = decode(q)
    if fmt == "s24":
        u = (q.astype(np.int64) & 0xFFFFFF).reshape(-1)
        data = np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], axis=1).astype(np.uint8).tobytes()
    else:
        data = q.tobytes()
    block = channels * bits // 8
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt_chunk = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0)
        fmt_chunk += struct.pack("<H", tag) + guid_tail
    else:
        fmt_chunk = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    if extra_chunk is not None:
        body += b"LIST" + struct.pack("<I", len(extra_chunk)) + extra_chunk + b"\x00" * (len(extra_chunk) & 1)
    body += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return Path(path)


def read_all(path, block=32768):
    reader = WavReader(path)
    try:
        return np.concatenate(list(reader.blocks(block))), reader
    finally:
        reader.close()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("extensible", [False, True])
@pytest.mark.parametrize("channels", [1, 2, 5])
def test_wav_formats_decode_exactly(tmp_path, fmt, extensible, channels):
    rng = np.random.default_rng(channels)
    x = np.clip(rng.standard_normal((3001, channels)) * 0.3, -1, 0.999)
    path = write_wav(tmp_path / "x.wav", x, 22050, fmt, extensible=extensible, extra_chunk=b"odd")
    expected = write_wav.decoded.mean(axis=1)
    got, reader = read_all(path, block=1000)
    assert (reader.sample_rate, reader.channels, reader.frames) == (22050, channels, 3001)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got.dtype == np.float32


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_matches_soundfile(tmp_path, subtype):
    sf = pytest.importorskip("soundfile")
    rng = np.random.default_rng(7)
    x = np.clip(rng.standard_normal((4410, 3)) * 0.3, -1, 0.99)
    path = tmp_path / "sf.wav"
    sf.write(path, x, 44100, subtype=subtype)  # 3 channels: soundfile writes WAVE_FORMAT_EXTENSIBLE
    ref, rate = sf.read(path, dtype="float64")
    got, reader = read_all(path)
    assert reader.sample_rate == rate
    np.testing.assert_allclose(got, ref.mean(axis=1), atol=1e-6)


def test_streamed_wav_without_sizes(tmp_path):
    x = np.linspace(-0.5, 0.5, 1000)[:, None]
    path = write_wav(tmp_path / "s.wav", x, RATE, "s16", data_size=0xFFFFFFFF)
    got, reader = read_all(path)
    assert reader.frames == 1000
    np.testing.assert_allclose(got, write_wav.decoded[:, 0], atol=1e-7)


def _bad_wavs(tmp_path):
    good = write_wav(tmp_path / "good.wav", np.full((4000, 2), 0.1), RATE, "f32").read_bytes()
    nan = np.full((4000, 1), 0.1)
    nan[3200] = np.nan
    inf = np.full((4000, 1), 0.1)
    inf[10] = np.inf
    cases = {
        "empty.wav": (b"", "empty file"),
        "text.wav": (b"hello, this is text\n" * 3, "not a RIFF/WAVE file"),
        "header_only.wav": (good[:30], "truncated wav"),
        "cut.wav": (good[: len(good) // 2], "truncated wav: data chunk declares 32000 bytes"),
        "nodata.wav": (good[:44 - 8], "truncated wav: no data chunk"),
        "nan.wav": (write_wav(tmp_path / "n", nan, RATE, "f32").read_bytes(), "NaN or Inf samples (first at 0.200 s)"),
        "inf.wav": (write_wav(tmp_path / "i", inf, RATE, "f64").read_bytes(), "NaN or Inf samples"),
        "alaw.wav": (good[:20] + struct.pack("<H", 6) + good[22:], "unsupported wav encoding: format tag 0x6"),
        "nosamples.wav": (write_wav(tmp_path / "z", np.zeros((0, 1)), RATE, "s16").read_bytes(), "no audio samples"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
    return cases


def test_bad_wavs_are_one_line_errors(tmp_path, models):
    cases = _bad_wavs(tmp_path)
    good = write_wav(tmp_path / "fine.wav", np.full((4000, 1), 0.9), RATE, "s16")
    for name, (_, message) in cases.items():
        path = tmp_path / name
        with pytest.raises(DetectError, match=re.escape(message)):
            WavReader(path)
        # the bad file comes second: nothing is printed for the good one before failing
        r = run_detect("--model", models["dc1"], good, path, "--threshold", "0.5")
        assert r.returncode == 2, name
        assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert str(path) in r.stderr and message in r.stderr
    for path, message in ((tmp_path / "missing.wav", "audio file not found"), (tmp_path, "is a directory")):
        r = run_detect("--model", models["dc1"], path)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


# Resampling ----------------------------------------------------------------------------------------
def _amplitude(y, freq, rate):
    y = y[len(y) // 4: 3 * len(y) // 4]  # away from the edges
    t = np.arange(len(y)) / rate
    return 2 * abs(np.mean(y * np.exp(-2j * np.pi * freq * t)))


def _resample(x, rate_in, rate_out):
    r = Resampler(rate_in, rate_out)
    return np.concatenate([r.process(x), r.flush()]).astype(np.float64)


@pytest.mark.parametrize("rate_in", [8000, 22050, 44100, 48000, 44101])  # 44101: 16,000 phases, interpolated
def test_resampler_passband_and_length(rate_in):
    t = np.arange(rate_in) / rate_in
    top = 0.8 * min(rate_in, RATE) / 2
    for freq in (440.0, 2500.0, top):
        y = _resample(np.sin(2 * np.pi * freq * t), rate_in, RATE)
        assert len(y) == RATE
        assert abs(_amplitude(y, freq, RATE) - 1.0) < 1e-3, freq
    assert np.allclose(_resample(np.full(5000, 0.25), rate_in, RATE)[200:-200], 0.25, atol=1e-6)  # DC gain 1
    n = 12345
    assert len(_resample(np.zeros(n), rate_in, RATE)) == -(-n * RATE // rate_in)


@pytest.mark.parametrize("rate_in", [22050, 44100, 48000, 44101])
def test_resampler_suppresses_aliases(rate_in):
    """Tones above the new Nyquist frequency must not fold back into the band."""
    t = np.arange(rate_in) / rate_in
    for freq in (8300.0, 12000.0, 0.95 * rate_in / 2):
        y = _resample(np.sin(2 * np.pi * freq * t), rate_in, RATE)
        alias = abs((freq + RATE / 2) % RATE - RATE / 2)
        assert 20 * np.log10(_amplitude(y, alias, RATE) + 1e-15) < -70, freq
        assert np.sqrt(np.mean(y[RATE // 4: -RATE // 4] ** 2)) < 1e-3  # nothing at any frequency


@pytest.mark.parametrize("rate_in", [44100, 44101])
def test_resampler_block_invariance(rate_in):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(rate_in * 2)
    whole = _resample(x, rate_in, RATE)
    r = Resampler(rate_in, RATE)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(0, 3000))
        parts.append(r.process(x[i:i + n]))
        i += n
    parts.append(r.flush())
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-12)


def test_interpolated_phases_match_the_exact_table():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(44100)
    exact, coarse = Resampler(44100, RATE), Resampler(44100, RATE, max_phases=100)  # 160 phases exist
    assert exact.exact and not coarse.exact and coarse.filters.shape[0] == 101
    a = np.concatenate([exact.process(x), exact.flush()])
    b = np.concatenate([coarse.process(x), coarse.flush()])
    assert len(a) == len(b) and np.abs(a - b).max() < 5e-5
    assert Resampler(44101, RATE).filters.shape[0] == 1025  # not 16,000 rows


def _band_limited(rate, seconds=2.5):
    """The same continuous signal at any sample rate: tones below 3.5 kHz in two bursts."""
    t = np.arange(int(seconds * rate)) / rate
    env = 0.05 + 0.5 * (np.exp(-((t - 0.7) / 0.1) ** 2) + np.exp(-((t - 1.8) / 0.1) ** 2))
    return env * (np.sin(2 * np.pi * 300 * t) + 0.5 * np.sin(2 * np.pi * 1234 * t + 1) + 0.3 * np.sin(2 * np.pi * 3300 * t))


@pytest.mark.parametrize("rate_in,channels", [(8000, 1), (44100, 2), (48000, 1)])
def test_resampled_file_gives_the_native_rate_probabilities(tmp_path, models, rate_in, channels):
    native = write_wav(tmp_path / "native.wav", _band_limited(RATE)[:, None] * 0.5, RATE, "f32")
    x = np.repeat(_band_limited(rate_in)[:, None] * 0.5, channels, axis=1)
    other = write_wav(tmp_path / f"r{rate_in}.wav", x, rate_in, "s24")
    out = {}
    for path in (native, other):
        r = run_detect("--model", models["energy1"], path, "--json", "--threshold", "0.9", "--plot", tmp_path / f"{path.stem}.png")
        assert r.returncode == 0, r.stderr
        out[path] = [json.loads(line) for line in r.stdout.splitlines()]
    det_native, det_other = Detector(models["energy1"]), Detector(models["energy1"])
    from runtime.detect import wav_source

    for det, path in ((det_native, native), (det_other, other)):
        for block in wav_source(WavReader(path), RATE):
            det.process(block)
        det.flush()
    assert len(det_other.probs) == len(det_native.probs)
    np.testing.assert_allclose(det_other.probs[5:-5], det_native.probs[5:-5], atol=2e-3)
    assert [e["time"] for e in out[native]] == [e["time"] for e in out[other]] and len(out[native]) == 2


# The command line ----------------------------------------------------------------------------------
def run_detect(*args, input=None, env=None, cwd=None, script=DETECT):
    """Run detect.py as a script; stdout and stderr come back as text."""
    r = subprocess.run([sys.executable, str(script), *map(str, args)], input=input, capture_output=True,
                       env=env, cwd=cwd, timeout=120)
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
    return r


def test_cli_plain_json_and_options(tmp_path, models):
    levels = np.zeros(250)
    levels[[20, 150]] = [0.8, 0.95]
    a = write_wav(tmp_path / "a.wav", np.repeat(levels, STEP)[:, None], RATE, "f32")
    r = run_detect("--model", models["dc1"], a, "--threshold", "0.7")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines() == ["0.21 s  0.800  sheila", "1.51 s  0.950  sheila"]
    r = run_detect("--model", models["dc1"], a, a, "--threshold", "0.9", "--json")
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines == [{"time": 1.51, "prob": 0.95, "keyword": "sheila", "source": str(a)}] * 2
    r = run_detect("--model", models["dc1"], a, "--threshold", "0.7", "--refractory-ms", "2000", "--json")
    assert [json.loads(line)["time"] for line in r.stdout.splitlines()] == [0.21]
    # a 2-step moving average halves the single-step peaks: 0.4 stays below 0.45, 0.475 fires
    r = run_detect("--model", models["dc1"], a, "--threshold", "0.45", "--smooth", "2", "--json")
    assert [(e["time"], e["prob"]) for e in map(json.loads, r.stdout.splitlines())] == [(1.51, 0.475)]
    r = run_detect("--model", models["dc1"], a)  # model threshold 0.5
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2
    r = run_detect("--model", models["dc1"], a, a, "--threshold", "0.9")
    assert r.stdout.splitlines() == [f"{a}  1.51 s  0.950  sheila"] * 2
    r = run_detect("--model", models["dc1"], a, "--threshold", "0.7", "--patience", "2", "--json")
    assert r.returncode == 0 and r.stdout == ""  # single-step peaks never last two steps
    for bad in (["--smooth", "0"], ["--threshold", "2"], ["--patience", "0"], []):
        r = run_detect("--model", models["dc1"], *([a] if bad else []), *bad)
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1


def test_stdin_stream_ending_mid_chunk(models):
    # dc4: 4 steps (640 samples) per call; the only loud samples are the last 40 of a
    # 1000-sample stream, inside a chunk that only the padded flush processes.
    x = np.zeros(1000, np.int16)
    x[-40:] = 29491  # 0.9
    payload = x.tobytes() + b"\x01"  # and half a sample
    r = run_detect("--model", models["dc4"], "-", "--json", input=payload)
    assert r.returncode == 0
    assert "half a 16-bit sample" in r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    det = Detector(models["dc4"])
    events = feed_all(det, x)
    assert len(det.probs) == 7 and det.probs[-1] == pytest.approx(0.9 / 4, abs=1e-4)
    assert [(e["time"], e["source"]) for e in lines] == [(0.07, "-")] == [(e["time"], "-") for e in events]
    r = run_detect("--model", models["dc4"], "-", input=b"")  # an empty stream is a clean run
    assert r.returncode == 0 and r.stdout == ""


def test_stdin_matches_the_api_on_a_long_stream(models):
    x = (bursty(seconds=5.0, seed=9) * 32767).astype(np.int16)
    r = run_detect("--model", models["energy4"], "-", "--json", "--threshold", "0.95", input=x.tobytes())
    det = Detector(models["energy4"], threshold=0.95)
    events = feed_all(det, x)
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(events) >= 2
    assert [e["time"] for e in got] == [round(e["time"], 6) for e in events]
    assert [e["prob"] for e in got] == [round(e["prob"], 6) for e in events]


FAKE_SOUNDDEVICE = '''
import os
import numpy as np

_x = np.load(os.environ["FAKE_MIC_AUDIO"])
_rate = int(os.environ["FAKE_MIC_RATE"])
class PortAudioError(Exception):
    pass
def query_devices(kind=None):
    return {"name": "fake", "default_samplerate": float(_rate)}
class InputStream:
    def __init__(self, samplerate, channels, dtype, blocksize):
        if samplerate != _rate or os.environ.get("FAKE_MIC_BROKEN"):
            raise PortAudioError("Invalid sample rate")
        assert channels == 1 and dtype == "float32"
        self.pos = 0
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def read(self, n):
        if self.pos >= len(_x):
            raise KeyboardInterrupt  # the user presses Ctrl-C
        block = _x[self.pos:self.pos + n].astype(np.float32)[:, None]
        self.pos += n
        return block, False
'''


@pytest.mark.parametrize("device_rate", [RATE, 48000])
def test_mic_loop_with_a_fake_device(tmp_path, models, device_rate):
    (tmp_path / "sounddevice.py").write_text(FAKE_SOUNDDEVICE)
    x = _band_limited(device_rate) * 0.5
    np.save(tmp_path / "mic.npy", x)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FAKE_MIC_AUDIO": str(tmp_path / "mic.npy"), "FAKE_MIC_RATE": str(device_rate)}
    r = run_detect("--model", models["energy1"], "--mic", "--json", "--threshold", "0.9", env=env)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["source"] for e in got] == ["mic", "mic"]
    ref = Detector(models["energy1"], threshold=0.9)
    events = feed_all(ref, _band_limited(RATE) * 0.5)
    assert [e["time"] for e in got] == [round(e["time"], 6) for e in events]


def test_mic_that_cannot_open(tmp_path, models):
    (tmp_path / "sounddevice.py").write_text(FAKE_SOUNDDEVICE)
    np.save(tmp_path / "mic.npy", np.zeros(10))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FAKE_MIC_AUDIO": str(tmp_path / "mic.npy"),
           "FAKE_MIC_RATE": "48000", "FAKE_MIC_BROKEN": "1"}
    r = run_detect("--model", models["dc1"], "--mic", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "cannot open the default microphone (Invalid sample rate)" in r.stderr


def test_mic_without_sounddevice(tmp_path, models):
    (tmp_path / "sounddevice.py").write_text("raise ImportError('No module named sounddevice')\n")
    r = run_detect("--model", models["dc1"], "--mic", env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "pip install sounddevice" in r.stderr


def test_plot_is_written_atomically(tmp_path, models):
    levels = np.zeros(300)
    levels[100:110] = 0.9
    a = write_wav(tmp_path / "a.wav", np.repeat(levels, STEP)[:, None], RATE, "s16")
    out = tmp_path / "plots" / "p.png"
    r = run_detect("--model", models["dc1"], a, "--plot", out)
    assert r.returncode == 2 and "does not exist" in r.stderr and r.stdout == ""  # checked before any work
    out.parent.mkdir()
    r = run_detect("--model", models["dc1"], a, "-", "--plot", out, "--smooth", "3", input=np.zeros(5000, np.int16).tobytes())
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.png"]  # no temporary left behind


def _read_probs(path):
    import csv
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.mark.parametrize("name,smooth", [("energy1", 1), ("energy4", 3)])
def test_probs_csv_has_every_step_of_every_input(tmp_path, models, name, smooth):
    """--probs: a header, one row per reported step per input (each its own stream, steps
    from 0), time = (step + 1) x step_samples / rate (docs/streaming.md), and the values
    the Detector holds, bit for bit after the round trip through text."""
    x = bursty(seconds=2.0, seed=3)
    wav = write_wav(tmp_path / "a.wav", x[:, None], RATE, "f32")
    pcm = (bursty(seconds=1.3, seed=4) * 32767).astype(np.int16)[:20_830]  # ends mid-chunk and mid-step
    out = tmp_path / "p.csv"
    r = run_detect("--model", models[name], wav, "-", "--smooth", smooth, "--threshold", "0.9", "--probs", out,
                   input=pcm.tobytes())
    assert r.returncode == 0, r.stderr
    header, rows = _read_probs(out)
    assert header == ["source", "step", "time", "prob", "score"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "p.csv"]  # no temporary left behind
    for source, audio in ((str(wav), np.clip(x, -1.0, 1.0)), ("-", pcm)):  # the wav reader clips float samples
        det = Detector(models[name], smooth=smooth, threshold=0.9)
        feed_all(det, audio)
        mine = [row for row in rows if row[0] == source]
        assert len(mine) == len(det.probs) == -(-len(audio) // STEP)  # padding-only steps are not reported
        assert [int(row[1]) for row in mine] == list(range(len(mine)))
        times = np.array([float(row[2]) for row in mine])
        assert np.array_equal(times, (np.arange(len(mine)) + 1) * STEP / RATE)
        assert np.array_equal(times, det.times)
        assert np.array_equal(np.array([row[3] for row in mine], dtype=np.float32), det.probs)
        assert np.array_equal(np.array([row[4] for row in mine], dtype=det.scores.dtype), det.scores)  # float32, or float64 averages
        if smooth == 1:
            assert [row[3] for row in mine] == [row[4] for row in mine]
    assert len(rows) == sum(1 for row in rows if row[0] in (str(wav), "-"))


def test_probs_output_errors_are_one_line_before_any_work(tmp_path, models):
    a = write_wav(tmp_path / "a.wav", bursty(seconds=1.0)[:, None], RATE, "s16")
    cases = {
        tmp_path / "missing" / "p.csv": "does not exist",
        tmp_path: "is a directory, expected a CSV file path for --probs",
        Path("/proc/kws-probs.csv"): "cannot write the probabilities",  # exists, but nothing can be created there (even as root)
    }
    for path, message in cases.items():
        r = run_detect("--model", models["dc1"], a, "--threshold", "0.0", "--probs", path)
        assert r.returncode == 2 and r.stdout == "", (path, r.stderr)  # threshold 0 would print detections
        assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    # an existing file is replaced whole, and keeps no temporary beside it
    out = tmp_path / "p.csv"
    out.write_text("old contents\n" * 1000)
    r = run_detect("--model", models["dc1"], a, "--probs", out)
    assert r.returncode == 0, r.stderr
    header, rows = _read_probs(out)
    assert header[0] == "source" and len(rows) == RATE // STEP
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "p.csv"]


def test_runs_alone_and_imports_only_numpy_and_onnxruntime(tmp_path, models):
    """Copied alone (as onto a Pi) and run on a file in a fresh interpreter: torch,
    kws_export, training, onnx and the optional packages must not have been imported."""
    alone = tmp_path / "pi"
    alone.mkdir()
    shutil.copy(DETECT, alone / "detect.py")
    wav = write_wav(tmp_path / "a.wav", _band_limited(44100)[:, None] * 0.5, 44100, "s16")
    probe = textwrap.dedent(f"""
        import json, runpy, sys
        sys.argv = ["detect.py", "--model", {str(models['energy1'])!r}, {str(wav)!r}, "--threshold", "0.9"]
        try:
            runpy.run_path("detect.py", run_name="__main__")
        except SystemExit as exc:
            code = exc.code
        tops = sorted({{m.split(".")[0] for m in sys.modules}})
        print(json.dumps({{"code": code, "modules": tops}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", probe], cwd=alone, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    report = json.loads(lines[-1])
    assert report["code"] == 0 and len(lines) == 3  # two detections, then the report
    forbidden = {"torch", "kws_export", "training", "onnx", "scipy", "soundfile", "matplotlib", "sounddevice", "runtime"}
    assert not forbidden & set(report["modules"])
    assert {"numpy", "onnxruntime"} <= set(report["modules"])


def test_ten_minute_file_memory(tmp_path, models):
    """Peak RSS of a 10-minute 44.1 kHz stereo file stays within a few MB of a 1-second one:
    the file is streamed and resampled block by block, never held whole."""
    rng = np.random.default_rng(0)
    long_wav, short_wav = tmp_path / "long.wav", tmp_path / "short.wav"
    rate, seconds = 44100, 600
    nbytes = rate * seconds * 4
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + nbytes, b"WAVE", b"fmt ", 16, 1, 2, rate, rate * 4, 4, 16, b"data", nbytes)
    with open(long_wav, "wb") as f:
        f.write(header)
        block = (rng.standard_normal((rate * 10, 2)) * 3000).astype("<i2").tobytes()
        for _ in range(seconds // 10):
            f.write(block)
    write_wav(short_wav, rng.standard_normal((rate, 2)) * 0.1, rate, "s16")
    peak = {}
    for path in (short_wav, long_wav):
        code = (f"import resource, runpy, sys; sys.argv = ['detect.py', '--model', {str(models['energy4'])!r}, {str(path)!r}, '--json']\n"
                f"try:\n    runpy.run_path({str(DETECT)!r}, run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        peak[path] = int(r.stdout.splitlines()[-1]) / 1024  # MB
    assert peak[long_wav] - peak[short_wav] < 20, peak


def test_info_prints_what_the_model_needs(models):
    r = run_detect("--model", models["energy4"], "--info")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["sample_rate"], info["chunk_samples"], info["step_samples"], info["steps_per_call"]) == (RATE, 640, STEP, 4)
    assert info["keyword"] == "sheila" and info["threshold"] == 0.5 and info["patience"] == 1
    assert info["states"] == {"level": [1], "tail": [1, TAIL], "calls": [1]}
