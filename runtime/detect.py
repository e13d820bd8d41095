#!/usr/bin/env python3
"""Streaming keyword detector for an exported kws-edge streaming ONNX model.

Needs only the Python standard library, numpy and onnxruntime (``sounddevice`` for
``--mic``, ``matplotlib`` for ``--plot``, both imported only when asked for), so this one
file and one ``.onnx`` are all a Raspberry Pi needs.  Everything model-specific (sample
rate, chunk size, states and their initial values, keyword, threshold) is read from the
model's ``kws.*`` metadata; see docs/streaming.md for the contract.

    python detect.py --model student.stream.int8.onnx recording.wav
    python detect.py --model M.onnx --probs probs.csv recording.wav   # every step's score, CSV
    arecord -f S16_LE -r 16000 -c 1 -t raw | python detect.py --model M.onnx --json -
    python detect.py --model M.onnx --mic
    python detect.py --model student.stream.int8w.onnx --verifier teacher.stream.onnx recording.wav  # two-stage

Python API::

    det = Detector("M.onnx", smooth=3)
    for block in blocks:            # any number of samples per call
        for event in det.process(block):
            print(event)            # {"time": s, "prob": p, "keyword": k}
    det.flush()                     # pad and process the tail of the stream
    det.times, det.probs, det.scores   # per-step history, for plotting
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import struct
import sys
import tempfile

import numpy as np
import onnxruntime as ort

FORMAT_VERSION = 1
REQUIRED_METADATA = (
    "kws.format_version", "kws.keyword", "kws.sample_rate", "kws.chunk_samples",
    "kws.step_samples", "kws.threshold", "kws.states",
)
_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32,
}


class DetectError(ValueError):
    """Bad input (model file, audio file, argument): the CLI prints it as one line, exit 2."""


# The streaming model -------------------------------------------------------------------------
def _meta_value(raw: str):
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # plain strings (a keyword) need not be JSON-quoted


class StreamingModel:
    """An onnxruntime session of a streaming export plus its carried state.

    ``run(chunks)`` feeds whole chunks and returns one probability per step.  States are
    double-buffered through two IOBindings (call i reads set A and writes set B, call i+1
    the reverse), so a call costs one audio copy and no allocation.
    """

    def __init__(self, path: str, threads: int = 1):
        self.path = str(path)
        _check_input_file(self.path, "model", "an ONNX model")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: keep stdout/stderr for detections
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several types for unreadable files
            raise DetectError(f"{self.path}: not a loadable ONNX model ({_ort_reason(exc, self.path)})") from None
        self._read_metadata()
        self._check_graph()
        self._allocate()
        self.reset()
        self._check_run()

    def _fail(self, what: str) -> DetectError:
        return DetectError(f"{self.path}: not a kws-edge streaming model: {what}")

    def _read_metadata(self) -> None:
        raw = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in REQUIRED_METADATA if k not in raw]
        if missing:
            raise self._fail(f"metadata {', '.join(missing)} missing (export it with `kws-export onnx --streaming`)")
        meta = {k: _meta_value(v) for k, v in raw.items() if k.startswith("kws.")}
        self.metadata = meta
        try:
            version = int(meta["kws.format_version"])
            self.keyword = raw["kws.keyword"] if isinstance(meta["kws.keyword"], (int, float, bool)) else str(meta["kws.keyword"])
            self.sample_rate = int(meta["kws.sample_rate"])
            self.chunk_samples = int(meta["kws.chunk_samples"])
            self.step_samples = int(meta["kws.step_samples"])
            self.threshold = float(meta["kws.threshold"])
            self.patience = int(meta.get("kws.patience", 1))  # optional: steps in a row at the threshold
        except (TypeError, ValueError) as exc:
            raise self._fail(f"bad metadata value ({exc})") from None
        if version > FORMAT_VERSION:
            raise self._fail(f"format version {version} is newer than this detect.py reads ({FORMAT_VERSION})")
        if min(self.sample_rate, self.chunk_samples, self.step_samples) <= 0 or self.chunk_samples % self.step_samples:
            raise self._fail(
                f"chunk_samples {self.chunk_samples} is not a positive multiple of step_samples {self.step_samples}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise self._fail(f"threshold {self.threshold} is not a probability")
        if self.patience < 1:
            raise self._fail(f"kws.patience {self.patience} is not a whole number of steps >= 1")
        self.steps_per_call = self.chunk_samples // self.step_samples
        declared = meta.get("kws.steps_per_call", self.steps_per_call)  # optional, informative
        if declared != self.steps_per_call:
            raise self._fail(f"kws.steps_per_call {declared} disagrees with chunk_samples / step_samples = {self.steps_per_call}")
        states = meta["kws.states"]
        try:
            self.states = [(str(s["name"]), tuple(int(d) for d in s["shape"]), float(s["init"])) for s in states]
        except (TypeError, KeyError, ValueError):
            raise self._fail('kws.states is not a JSON list of {"name", "shape", "init"}') from None
        names = [name for name, _, _ in self.states]
        if len(set(names)) != len(names) or "audio" in names:
            raise self._fail(f"kws.states has duplicate or reserved names {names}")

    def _check_graph(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        want_in = ["audio"] + [name for name, _, _ in self.states]
        if sorted(inputs) != sorted(want_in):
            raise self._fail(f"inputs are {sorted(inputs)}, metadata says {want_in}")
        want_out = ["prob"] + [f"{name}_next" for name, _, _ in self.states]
        absent = [name for name in want_out if name not in outputs]
        if absent:
            raise self._fail(f"outputs {absent} missing (has {sorted(outputs)})")

        def check(arg, shape, what):
            got = arg.shape
            fixed_ok = len(got) == len(shape) and all(not isinstance(g, int) or g == s for g, s in zip(got, shape))
            if not fixed_ok:
                raise self._fail(f"{what} '{arg.name}' has shape {got}, metadata says {list(shape)}")
            if arg.type not in _ORT_DTYPES:
                raise self._fail(f"{what} '{arg.name}' has unsupported type {arg.type}")

        check(inputs["audio"], (1, self.chunk_samples), "input")
        if inputs["audio"].type != "tensor(float)":
            raise self._fail(f"input 'audio' is {inputs['audio'].type}, expected tensor(float)")
        check(outputs["prob"], (self.steps_per_call,), "output")
        for name, shape, _ in self.states:
            check(inputs[name], shape, "state input")
            check(outputs[f"{name}_next"], shape, "state output")
            if outputs[f"{name}_next"].type != inputs[name].type:
                raise self._fail(f"state '{name}' changes type between input and output")
        self.state_dtypes = {name: _ORT_DTYPES[inputs[name].type] for name, _, _ in self.states}
        self._prob_dtype = _ORT_DTYPES[outputs["prob"].type]

    def _allocate(self) -> None:
        self._audio = np.zeros((1, self.chunk_samples), np.float32)
        self._prob = np.zeros(self.steps_per_call, self._prob_dtype)
        # Two complete state sets; binding b reads set b and writes set 1-b.
        self._sets = [
            {name: np.zeros(shape, self.state_dtypes[name]) for name, shape, _ in self.states} for _ in range(2)
        ]
        audio_value = ort.OrtValue.ortvalue_from_numpy(self._audio)
        prob_value = ort.OrtValue.ortvalue_from_numpy(self._prob)
        self._bindings = []
        for b in range(2):
            binding = self.session.io_binding()
            binding.bind_ortvalue_input("audio", audio_value)
            binding.bind_ortvalue_output("prob", prob_value)
            for name, _, _ in self.states:
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(self._sets[b][name]))
                binding.bind_ortvalue_output(f"{name}_next", ort.OrtValue.ortvalue_from_numpy(self._sets[1 - b][name]))
            self._bindings.append(binding)
        self._current = 0

    def _check_run(self) -> None:
        """One call on silence at load time: a graph that breaks its own declared shapes
        fails here with the file name, not in the middle of a stream."""
        try:
            self.run(np.zeros((1, self.chunk_samples), np.float32))
            outputs = self.session.run(None, {"audio": self._audio, **self.get_state()})
        except Exception as exc:
            raise self._fail(f"a streaming call fails ({_first_line(exc)})") from None
        names = [o.name for o in self.session.get_outputs()]
        got = dict(zip(names, outputs))
        if got["prob"].shape != (self.steps_per_call,):
            raise self._fail(f"output 'prob' has shape {list(got['prob'].shape)}, expected [{self.steps_per_call}]")
        for name, shape, _ in self.states:
            if got[f"{name}_next"].shape != shape:
                raise self._fail(f"output '{name}_next' has shape {list(got[name + '_next'].shape)}, expected {list(shape)}")
        self.reset()

    # State --------------------------------------------------------------------------------------
    def reset(self) -> None:
        for name, _, init in self.states:
            self._sets[self._current][name].fill(init)

    def get_state(self) -> dict[str, np.ndarray]:
        return {name: arr.copy() for name, arr in self._sets[self._current].items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        expected = {name: shape for name, shape, _ in self.states}
        if set(state) != set(expected):
            raise DetectError(f"state names {sorted(state)} do not match the model's {sorted(expected)}")
        converted = {}
        for name, shape in expected.items():
            arr = np.asarray(state[name])
            if arr.shape != shape:
                raise DetectError(f"state '{name}' has shape {list(arr.shape)}, the model expects {list(shape)}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise DetectError(f"state '{name}' holds NaN or Inf")
            converted[name] = arr.astype(self.state_dtypes[name], copy=False)
        for name, arr in converted.items():  # all checked first: a bad state changes nothing
            self._sets[self._current][name][...] = arr

    # Inference ----------------------------------------------------------------------------------
    def run(self, chunks: np.ndarray) -> np.ndarray:
        """(calls, chunk_samples) float32 -> (calls * steps_per_call,) probabilities."""
        out = np.empty((len(chunks), self.steps_per_call), np.float32)
        audio, prob, bindings, run = self._audio[0], self._prob, self._bindings, self.session.run_with_iobinding
        current = self._current
        for i, chunk in enumerate(chunks):
            audio[:] = chunk
            run(bindings[current])
            current = 1 - current
            self._current = current  # kept in step so an exception leaves a consistent state
            out[i] = prob
        return out.reshape(-1)

    def run_one(self, chunk: np.ndarray) -> np.ndarray:
        """One chunk (chunk_samples,) -> (steps_per_call,) probabilities: ``run`` without
        its loop and output array (a live stream calls once per chunk; issue 7 measured
        ~20 us of Python per call)."""
        self._audio[0] = chunk
        self.session.run_with_iobinding(self._bindings[self._current])
        self._current = 1 - self._current
        return self._prob.copy()


def _mono_samples(samples) -> np.ndarray:
    """Mono float32 samples from float in [-1, 1] or int16 (anything else: DetectError)."""
    x = np.asarray(samples)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise DetectError(f"expected mono samples (1-D), got an array of shape {x.shape}")
    if x.dtype == np.float32 and np.isfinite(x).all():  # the live case: skip the dtype checks and cast
        return x
    if x.dtype == np.int16:
        return x.astype(np.float32) / np.float32(32768.0)
    if x.dtype.kind not in "fiu" or (x.dtype.kind in "iu" and x.size):
        raise DetectError(f"samples must be float in [-1, 1] or int16, got {x.dtype}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise DetectError(f"samples hold NaN or Inf (first at index {bad}); the stream state is unchanged")
    return x.astype(np.float32, copy=False)


# The detector -------------------------------------------------------------------------------
class Detector:
    """Streaming keyword detector over a kws-edge streaming ONNX export.

    ``process(samples)`` takes any number of mono samples at the model's sample rate (float
    in [-1, 1] or int16), buffers them to whole chunks and returns the detections they
    complete, each ``{"time": seconds, "prob": p, "keyword": k}``.  An event fires when the
    (optionally smoothed) probability has been at or above ``threshold`` for ``patience``
    steps in a row (openWakeWord's patience; default: the model's ``kws.patience``, else 1);
    the detector then stays silent for ``refractory_ms`` (one event per utterance).  Times are the end of the step's audio
    in seconds from the start of the stream.  Instances share no state.
    """

    def __init__(self, model_path: str, threshold: float | None = None, smooth: int = 1,
                 refractory_ms: float = 1000.0, keep_history: bool = True, threads: int = 1,
                 patience: int | None = None):
        self.model = StreamingModel(model_path, threads=threads)
        m = self.model
        self.keyword, self.sample_rate = m.keyword, m.sample_rate
        self.chunk_samples, self.step_samples, self.steps_per_call = m.chunk_samples, m.step_samples, m.steps_per_call
        self.metadata = dict(m.metadata)
        self.threshold = m.threshold if threshold is None else float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise DetectError(f"threshold {self.threshold} is not in [0, 1]")
        if int(smooth) != smooth or smooth < 1:
            raise DetectError(f"smooth must be a whole number of steps >= 1, got {smooth}")
        if refractory_ms < 0:
            raise DetectError(f"refractory_ms must be >= 0, got {refractory_ms}")
        patience = m.patience if patience is None else patience
        if int(patience) != patience or patience < 1:
            raise DetectError(f"patience must be a whole number of steps >= 1, got {patience}")
        self.patience = int(patience)
        self.smooth = int(smooth)
        self.refractory_ms = float(refractory_ms)
        self._refractory_samples = self.refractory_ms * self.sample_rate / 1000.0
        self.keep_history = keep_history
        self._pending = np.zeros(self.chunk_samples, np.float32)
        self.reset()

    def reset(self) -> None:
        """Start a new stream: initial model state, empty buffers, time 0, no history."""
        self.model.reset()
        self._pending_len = 0
        self._steps_done = 0  # steps the model has consumed, padding included
        self._last_event_step: int | None = None
        self._last_above: int | None = None  # the last step at or above the threshold
        self._run = 0  # steps in a row at or above the threshold, up to that one
        self._recent = np.zeros(self.smooth - 1, np.float64)  # raw probabilities the moving average still needs
        self._history: list[tuple[int, np.ndarray, np.ndarray]] = []  # (first step, probs, scores)

    # State access (e.g. to checkpoint a live stream) --------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        """Copies of the model's carried states (not the sample buffer)."""
        return self.model.get_state()

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the model's carried states; wrong names or shapes raise DetectError."""
        self.model.set_state(state)

    # Streaming ----------------------------------------------------------------------------------
    def process(self, samples) -> list[dict]:
        x = self._as_samples(samples)
        chunk = self.chunk_samples
        start = self._pending_len
        filled = start + len(x)
        if filled < chunk:  # e.g. 80 ms blocks for a model taking several steps per call
            self._pending[start:filled] = x
            self._pending_len = filled
            return []
        if filled == chunk:  # the live case: the block completes exactly one chunk
            if start:
                self._pending[start:] = x
                x = self._pending
            self._pending_len = 0
            return self._emit_one(self.model.run_one(x))
        parts = []
        if self._pending_len:
            need = chunk - self._pending_len
            self._pending[self._pending_len:] = x[:need]
            x = x[need:]
            parts.append(self.model.run(self._pending[None, :]))
        whole = len(x) // chunk * chunk
        if whole:
            parts.append(self.model.run(x[:whole].reshape(-1, chunk)))
        tail = len(x) - whole
        self._pending[:tail] = x[whole:]
        self._pending_len = tail
        probs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self._emit(probs, len(probs))

    def flush(self) -> list[dict]:
        """End of stream: pad the buffered tail with silence and process it.  Steps made
        only of padding are not reported; time keeps counting them, so a stream that goes
        on after a flush stays aligned with the model state."""
        if not self._pending_len:
            return []
        real_steps = -(-self._pending_len // self.step_samples)
        self._pending[self._pending_len:] = 0.0
        probs = self.model.run(self._pending[None, :])
        self._pending_len = 0
        return self._emit(probs, real_steps)

    def _as_samples(self, samples) -> np.ndarray:
        return _mono_samples(samples)

    def _emit(self, probs: np.ndarray, report: int) -> list[dict]:
        first = self._steps_done
        self._steps_done += len(probs)
        probs = probs[:report]
        scores = self._smoothed(probs, first)
        if self.keep_history:  # run() returns fresh arrays: no copy needed
            self._history.append((first, probs, scores))
        events = []
        for i in (scores >= self.threshold).nonzero()[0]:  # loops over above-threshold steps only
            step = first + int(i)
            self._run = self._run + 1 if self._last_above == step - 1 else 1
            self._last_above = step
            if self._run < self.patience:
                continue
            last = self._last_event_step
            if last is None or (step - last) * self.step_samples >= self._refractory_samples:
                self._last_event_step = step
                events.append({"time": self._step_time(step), "prob": float(scores[i]), "keyword": self.keyword})
        return events

    def _emit_one(self, probs: np.ndarray) -> list[dict]:
        """``_emit`` for one call's fresh probabilities, scalar arithmetic where the steps
        are one (a live stream pays this per 80 ms; numpy's per-call cost would dominate)."""
        if self.smooth != 1 or self.patience != 1 or len(probs) != 1:
            return self._emit(probs, len(probs))
        step = self._steps_done
        self._steps_done = step + 1
        if self.keep_history:
            self._history.append((step, probs, probs))
        p = float(probs[0])
        if p < self.threshold:
            return []
        last = self._last_event_step
        if last is not None and (step - last) * self.step_samples < self._refractory_samples:
            return []
        self._last_event_step = step
        return [{"time": self._step_time(step), "prob": p, "keyword": self.keyword}]

    def _smoothed(self, probs: np.ndarray, first: int) -> np.ndarray:
        """Causal moving average over the last ``smooth`` steps (fewer at the stream start).
        Each window is summed on its own, so the result does not depend on how the stream
        was split into calls."""
        if self.smooth == 1:
            return probs
        n = self.smooth
        ext = np.concatenate([self._recent, probs.astype(np.float64)])
        sums = np.lib.stride_tricks.sliding_window_view(ext, n).sum(axis=1)
        seen = first + np.arange(1, len(probs) + 1)  # steps up to and including each
        self._recent = ext[len(ext) - (n - 1):]
        return sums / np.minimum(seen, n)

    def _step_time(self, step: int) -> float:
        return (step + 1) * self.step_samples / self.sample_rate

    # History, for plotting ----------------------------------------------------------------------
    @property
    def probs(self) -> np.ndarray:
        """Raw per-step probabilities since the last reset (``keep_history=True``)."""
        return np.concatenate([p for _, p, _ in self._history]) if self._history else np.zeros(0, np.float32)

    @property
    def scores(self) -> np.ndarray:
        """The smoothed probabilities the threshold is applied to."""
        return np.concatenate([s for _, _, s in self._history]) if self._history else np.zeros(0)

    @property
    def times(self) -> np.ndarray:
        """Time (s) of each entry of ``probs``: the end of its step's audio."""
        steps = [first + np.arange(len(p)) for first, p, _ in self._history]
        steps = np.concatenate(steps) if steps else np.zeros(0, np.int64)
        return (steps + 1) * self.step_samples / self.sample_rate


# Two-stage detection -------------------------------------------------------------------------
def verifier_warmup_steps(model: StreamingModel) -> int:
    """Steps of audio a verifier replayed from its initial state needs before its probabilities
    equal those of it running on every step: its receptive field (``kws.window_ms`` +
    ``kws.prefix_samples``) in steps, +1 for the carried prefix.  Only a model that forgets
    what lies outside that window can be replayed exactly: the embedding teacher's export
    (``kws.arch`` embedding); a CRNN's GRU carries everything it heard."""
    if model.metadata.get("kws.arch") != "embedding":
        raise DetectError(f"{model.path}: the verifier must see a finite window (an embedding teacher's streaming export); "
                          "this one carries recurrent state, so a replay would not equal it running on every step")
    try:
        window_ms = float(model.metadata["kws.window_ms"])
        prefix = int(model.metadata.get("kws.prefix_samples", 0))
    except (KeyError, TypeError, ValueError):
        raise DetectError(f"{model.path}: the verifier's metadata lacks kws.window_ms (its receptive field)") from None
    return math.ceil((window_ms * model.sample_rate / 1000.0 + prefix) / model.step_samples) + 1


class VerifiedDetector:
    """A cheap always-on detector proposes, a larger streaming model confirms (two-stage wake
    word detection: the large model's quality at little more than the small one's cost).

    Every step goes through the first stage (``model_path``, e.g. the int8 student).  A step
    whose probability reaches ``trigger`` (far below the first stage's own threshold, so that
    it misses almost no keyword) is a candidate.  ``delay_steps`` later, when the whole word
    has been heard, the verifier (``verifier_path``, e.g. the embedding teacher's streaming
    export) runs from its initial state over the buffered audio of the last ``warmup +
    window_steps`` steps; the candidate becomes a detection when one of the verifier's last
    ``window_steps`` probabilities reaches ``verifier_threshold`` (default: the verifier's
    ``kws.threshold``).  Then ``refractory_ms`` of silence; a rejected candidate lets the
    next one come ``window_steps`` after it, so the verified windows tile a long trigger.

    The verifier must see a finite window (``kws.window_ms`` + ``kws.prefix_samples``, as
    the embedding model does): ``warmup`` covers it, so the replayed probabilities equal
    those of the verifier running on every step, and the offline twin
    (``training.real.verified_events``) is exact.  Events are ``{"time", "prob", "keyword",
    "trigger_prob"}`` with the verifier's probability as ``prob``.
    """

    def __init__(self, model_path: str, verifier_path: str, trigger: float = 0.2, verifier_threshold: float | None = None,
                 window_steps: int = 8, delay_steps: int = 4, refractory_ms: float = 1000.0, threads: int = 1):
        self.first = StreamingModel(model_path, threads=threads)
        self.verifier = StreamingModel(verifier_path, threads=threads)
        f, v = self.first, self.verifier
        if (v.sample_rate, v.step_samples) != (f.sample_rate, f.step_samples):
            raise DetectError(f"{v.path}: the verifier steps {v.step_samples} samples at {v.sample_rate} Hz, the detector "
                              f"{f.step_samples} at {f.sample_rate} Hz: they must agree")
        if v.steps_per_call != 1:
            raise DetectError(f"{v.path}: the verifier must take one step per call (it takes {v.steps_per_call})")
        if str(v.keyword) != str(f.keyword):
            raise DetectError(f"{v.path}: the verifier's keyword {v.keyword!r} is not the detector's {f.keyword!r}")
        self.warmup = verifier_warmup_steps(v)
        for name, value in (("window_steps", window_steps), ("delay_steps", delay_steps)):
            if int(value) != value or value < (1 if name == "window_steps" else 0):
                raise DetectError(f"{name} must be a whole number of steps >= {1 if name == 'window_steps' else 0}, got {value}")
        if not 0.0 <= trigger <= 1.0:
            raise DetectError(f"trigger {trigger} is not in [0, 1]")
        self.verifier_threshold = v.threshold if verifier_threshold is None else float(verifier_threshold)
        if not 0.0 <= self.verifier_threshold <= 1.0:
            raise DetectError(f"verifier threshold {self.verifier_threshold} is not in [0, 1]")
        if refractory_ms < 0:
            raise DetectError(f"refractory_ms must be >= 0, got {refractory_ms}")
        self.keyword, self.sample_rate, self.step_samples = f.keyword, f.sample_rate, f.step_samples
        self.chunk_samples = f.chunk_samples
        self.trigger, self.window_steps, self.delay_steps = float(trigger), int(window_steps), int(delay_steps)
        self.refractory_steps = math.ceil(refractory_ms * self.sample_rate / 1000.0 / self.step_samples - 1e-9)
        self._keep = self.warmup + self.window_steps + self.first.steps_per_call  # steps of audio kept
        self._pending = np.zeros(self.chunk_samples, np.float32)
        self.reset()

    def reset(self) -> None:
        self.first.reset()
        self._pending_len = 0
        self._steps = 0                      # steps of the stream seen (a flush's padding-only steps not counted)
        self._audio = np.zeros(self._keep * self.step_samples, np.float32)  # the last _keep steps, oldest first
        self._audio_end = 0                  # the step after the last one in _audio
        self._candidate: tuple[int, float] | None = None  # (step, first-stage probability)
        self._next_allowed = 0               # the first step that may be a candidate
        self.verifications = 0

    def process(self, samples) -> list[dict]:
        x = _mono_samples(samples)
        chunk = self.chunk_samples
        events = []
        while len(x):
            n = min(chunk - self._pending_len, len(x))
            self._pending[self._pending_len:self._pending_len + n] = x[:n]
            self._pending_len += n
            x = x[n:]
            if self._pending_len == chunk:
                self._pending_len = 0
                events += self._chunk(self._pending, self.first.steps_per_call)
        return events

    def flush(self) -> list[dict]:
        """End of stream: pad the tail with silence; a candidate still waiting is verified on
        what was heard."""
        events = []
        if self._pending_len:
            real = -(-self._pending_len // self.step_samples)
            self._pending[self._pending_len:] = 0.0
            self._pending_len = 0
            events += self._chunk(self._pending, real)
        if self._candidate is not None:
            events += self._verify(self._steps - 1)
        return events

    def _chunk(self, chunk: np.ndarray, real_steps: int) -> list[dict]:
        probs = self.first.run_one(chunk)
        n = len(chunk)  # shift the buffer in place: this runs every 80 ms
        self._audio[:-n] = self._audio[n:]
        self._audio[-n:] = chunk
        first, events = self._steps, []
        self._steps += real_steps
        self._audio_end = first + len(probs)
        for i in range(real_steps):
            step = first + i
            if self._candidate is None and step >= self._next_allowed and probs[i] >= self.trigger:
                self._candidate = (step, float(probs[i]))
            if self._candidate is not None and step >= self._candidate[0] + self.delay_steps:
                events += self._verify(step)
        return events

    def _verify(self, step: int) -> list[dict]:
        """Replay the verifier from its initial state over the buffered steps up to ``step``
        (from the stream's start when it is younger than the window)."""
        cand, cand_prob = self._candidate
        self._candidate = None
        self.verifications += 1
        start = max(0, step + 1 - self.warmup - self.window_steps)
        oldest = self._audio_end - self._keep  # the step at _audio[0] (negative: before the stream)
        lo, hi = (start - oldest) * self.step_samples, (step + 1 - oldest) * self.step_samples
        self.verifier.reset()
        q = self.verifier.run(self._audio[lo:hi].reshape(-1, self.step_samples))[-self.window_steps:]
        best = float(q.max())
        if best >= self.verifier_threshold:
            self._next_allowed = step + self.refractory_steps
            return [{"time": (step + 1) * self.step_samples / self.sample_rate, "prob": best, "keyword": self.keyword,
                     "trigger_prob": cand_prob}]
        self._next_allowed = max(cand + self.window_steps, step + 1)
        return []


# Audio input: wav files ------------------------------------------------------------------------
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


class WavReader:
    """A RIFF/WAVE file read in blocks of float32 mono samples, without soundfile.

    PCM 8 (unsigned), 16, 24 and 32 bit, IEEE float 32 and 64 bit, plain or
    WAVE_FORMAT_EXTENSIBLE, any channel count (averaged to mono); float samples beyond full
    scale are clipped to [-1, 1].  The header is checked on open, and float files are
    scanned for NaN/Inf, so a bad file fails before any detection is printed.
    """

    def __init__(self, path: str):
        self.path = str(path)
        _check_input_file(self.path, "audio file", "a wav file", allow_empty=True)  # the header check names an empty one
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise DetectError(f"{self.path}: cannot read ({exc.strerror})") from None
        try:
            self._parse_header()
            if self.kind == "float":
                self._check_finite()
        except BaseException:
            self._file.close()
            raise

    def _fail(self, what: str) -> DetectError:
        return DetectError(f"{self.path}: {what}")

    def _parse_header(self) -> None:
        f = self._file
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise self._fail("empty file, expected a wav file")
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise self._fail("not a RIFF/WAVE file")
        fmt = None
        while True:
            chunk_head = f.read(8)
            if len(chunk_head) < 8:
                raise self._fail("truncated wav: no data chunk" if fmt else "truncated wav: no fmt chunk")
            cid, csize = chunk_head[:4], struct.unpack("<I", chunk_head[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(csize)
                if len(fmt) < 16:
                    raise self._fail("truncated wav: short fmt chunk")
                self._parse_fmt(fmt)
                f.seek(csize & 1, os.SEEK_CUR)  # chunks are padded to even sizes
            elif cid == b"data":
                if fmt is None:
                    raise self._fail("data chunk before the fmt chunk")
                self._data_start = f.tell()
                available = size - self._data_start
                if csize in (0xFFFFFFFF, 0) and available > 0:
                    csize = available - available % self.block_align  # streamed file: size never filled in
                if csize > available:
                    raise self._fail(f"truncated wav: data chunk declares {csize} bytes, the file holds {available}")
                if csize % self.block_align:
                    raise self._fail(f"truncated wav: {csize} data bytes is not a whole number of {self.block_align}-byte frames")
                self.frames = csize // self.block_align
                if self.frames == 0:
                    raise self._fail("wav holds no audio samples")
                return
            else:
                f.seek(csize + (csize & 1), os.SEEK_CUR)
                if f.tell() > size:
                    raise self._fail(f"truncated wav: chunk '{cid.decode('latin-1')}' runs past the end of the file")

    def _parse_fmt(self, fmt: bytes) -> None:
        tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
        if tag == _EXTENSIBLE:
            if len(fmt) < 40:
                raise self._fail("truncated wav: short WAVE_FORMAT_EXTENSIBLE fmt chunk")
            tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the real tag
        if channels == 0 or rate == 0:
            raise self._fail(f"wav header says {channels} channels at {rate} Hz")
        if tag == _PCM and bits in (8, 16, 24, 32):
            self.kind = "pcm"
        elif tag == _FLOAT and bits in (32, 64):
            self.kind = "float"
        else:
            name = {_PCM: "PCM", _FLOAT: "float"}.get(tag, f"format tag {tag:#x}")
            raise self._fail(f"unsupported wav encoding: {name} {bits}-bit (PCM 8/16/24/32 bit or float 32/64 bit)")
        if block_align != channels * bits // 8:
            raise self._fail(f"inconsistent wav header: block align {block_align} for {channels} x {bits}-bit")
        self.channels, self.sample_rate, self.bits, self.block_align = channels, rate, bits, block_align

    def _raw_blocks(self, frames_per_block: int):
        self._file.seek(self._data_start)
        left = self.frames
        while left:
            n = min(left, frames_per_block)
            data = self._file.read(n * self.block_align)
            if len(data) < n * self.block_align:
                raise self._fail("truncated wav: file ended early")
            left -= n
            yield data, n

    def _decode(self, data: bytes, n: int, clip: bool = True) -> np.ndarray:
        """Bytes of n frames -> (n, channels) float scaled to [-1, 1)."""
        bits = self.bits
        if self.kind == "float":
            x = np.frombuffer(data, "<f4" if bits == 32 else "<f8")
            if clip:  # as training and export read wavs (kws_export.audio): the model never saw more
                x = np.clip(x, -1.0, 1.0)
        elif bits == 8:
            x = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif bits == 16:
            x = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
        elif bits == 24:
            b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            x = (v - ((v & 0x800000) << 1)).astype(np.float32) / 8388608.0  # sign-extend 24 bit
        else:
            x = (np.frombuffer(data, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
        return x.reshape(n, self.channels)

    def _check_finite(self) -> None:
        done = 0
        for data, n in self._raw_blocks(65536):
            x = self._decode(data, n, clip=False)  # clipping would turn Inf into full scale
            bad = ~np.isfinite(x).all(axis=1)
            if bad.any():
                at = (done + int(np.flatnonzero(bad)[0])) / self.sample_rate
                raise self._fail(f"wav holds NaN or Inf samples (first at {at:.3f} s)")
            done += n

    def blocks(self, frames_per_block: int = 32768):
        """Yield float32 mono blocks (channels averaged)."""
        for data, n in self._raw_blocks(frames_per_block):
            x = self._decode(data, n)
            yield (x[:, 0] if self.channels == 1 else x.mean(axis=1)).astype(np.float32, copy=False)

    def close(self) -> None:
        self._file.close()

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


# Resampling ------------------------------------------------------------------------------------
class Resampler:
    """Streaming rational-ratio resampler: polyphase Kaiser-windowed sinc lowpass.

    Output sample n sits at input time t_n = n * rate_in / rate_out and is
    ``sum_k x[k] * h(t_n - k)`` with ``h`` a sinc lowpass at ``rolloff`` times the lower
    Nyquist frequency, windowed by a Kaiser window (beta 8.6: about 86 dB stopband).
    With zeros=32 the transition band ends below the lower Nyquist frequency, so
    nothing aliases.  Only ``up = rate_out / gcd`` fractional phases of t_n exist; up to
    ``max_phases`` of them their filters are tabulated exactly.  Beyond that (co-prime
    rates such as 44,101 -> 16,000 Hz have 16,000 phases) the filter is interpolated
    linearly between ``max_phases`` tabulated phases, which keeps the table small at an
    error around 1e-6.  Input arrives in blocks; the filter's input history is carried
    between them, so block boundaries do not change the output.
    """

    def __init__(self, rate_in: int, rate_out: int, zeros: int = 32, rolloff: float = 0.92, beta: float = 8.6,
                 max_phases: int = 1024):
        g = math.gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        cutoff = rolloff * 0.5 * min(rate_in, rate_out) / rate_in  # cycles per input sample
        self.half = int(math.ceil(zeros / (2.0 * cutoff)))  # filter half-length in input samples
        self.exact = self.up <= max_phases
        # Exact: row p is the filter for fraction p/up.  Interpolated: row i for i/max_phases,
        # one extra row for fraction 1 so that row i+1 always exists.
        fractions = np.arange(self.up) / self.up if self.exact else np.arange(max_phases + 1) / max_phases
        offsets = np.arange(-self.half + 1, self.half + 1)  # input index minus floor(t_n)
        tau = fractions[:, None] - offsets[None, :]  # t_n - k
        window = np.i0(beta * np.sqrt(np.clip(1.0 - (tau / self.half) ** 2, 0.0, None))) / np.i0(beta)
        h = 2.0 * cutoff * np.sinc(2.0 * cutoff * tau) * window
        self.filters = h / h.sum(axis=1, keepdims=True)  # unit DC gain in every phase
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(self.half, np.float64)  # silence before the stream
        self._buf_start = -self.half  # absolute input index of _buf[0]
        self._next = 0  # next output index
        self._n_in = 0

    def process(self, x: np.ndarray) -> np.ndarray:
        self._n_in += len(x)
        self._buf = np.concatenate([self._buf, np.asarray(x, np.float64)])
        return self._produce(final=False)

    def flush(self) -> np.ndarray:
        """The remaining output, the input continued by silence; then ready for a new stream."""
        self._buf = np.concatenate([self._buf, np.zeros(2 * self.half + 1)])
        out = self._produce(final=True)
        self.reset()
        return out

    def _produce(self, final: bool) -> np.ndarray:
        up, down, half = self.up, self.down, self.half
        buf_end = self._buf_start + len(self._buf)
        if final:
            end = -(-self._n_in * up // down)  # outputs covering the input: ceil(n_in * up / down)
        else:
            last_base = buf_end - 1 - half  # largest floor(t_n) whose window is all in the buffer
            end = (last_base * up + up - 1) // down + 1 if last_base >= 0 else 0
        count = end - self._next
        if count <= 0:
            return np.zeros(0, np.float32)
        out = np.empty(count, np.float64)
        windows = np.lib.stride_tricks.sliding_window_view(self._buf, 2 * half)
        if self.exact:
            # Outputs n, n+up, n+2up, ... share one filter phase and step `down` inputs
            # apart: one strided matrix-vector product per phase.
            for j in range(min(up, count)):
                n = self._next + j
                base, phase = divmod(n * down, up)
                first = base - half + 1 - self._buf_start
                rows = len(range(j, count, up))
                out[j::up] = windows[first:first + (rows - 1) * down + 1:down] @ self.filters[phase]
        else:
            phases = len(self.filters) - 1
            for start in range(0, count, 2048):  # bounded temporaries: 2048 x taps
                n = np.arange(self._next + start, self._next + min(count, start + 2048), dtype=np.int64)
                base, rem = np.divmod(n * down, up)
                pos = rem * (phases / up)
                i = np.minimum(pos.astype(np.int64), phases - 1)
                w = (pos - i)[:, None]
                coeffs = self.filters[i] * (1.0 - w) + self.filters[i + 1] * w
                out[start:start + len(n)] = np.einsum("ij,ij->i", windows[base - half + 1 - self._buf_start], coeffs)
        self._next = end
        keep_from = (end * down) // up - half + 1  # oldest input the next output needs
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start:]
            self._buf_start = keep_from
        return out.astype(np.float32)


# Sources: each yields float32 mono blocks at the model's sample rate -------------------------
def wav_source(reader: WavReader, rate: int):
    if reader.sample_rate == rate:
        yield from reader.blocks()
        return
    resampler = Resampler(reader.sample_rate, rate)
    for block in reader.blocks():
        yield resampler.process(block)
    yield resampler.flush()


def stdin_source(stream=None, block_bytes: int = 8192):
    """Raw signed 16-bit little-endian mono PCM; read1 returns what has arrived, so live
    audio is processed as it comes rather than when a large read fills up."""
    stream = stream if stream is not None else sys.stdin.buffer
    read = getattr(stream, "read1", stream.read)
    carry = b""
    while True:
        data = read(block_bytes)
        if not data:
            break
        data = carry + data
        even = len(data) & ~1
        carry = data[even:]
        if even:
            yield np.frombuffer(data[:even], "<i2").astype(np.float32) / np.float32(32768.0)
    if carry:
        print("detect.py: warning: stdin ended with half a 16-bit sample; dropped it", file=sys.stderr)


def mic_source(rate: int, block: int):
    """Default microphone via sounddevice; opened at the model's rate, or at the device's
    own rate and resampled when the device refuses the model's."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        raise DetectError(f"--mic needs the sounddevice package and PortAudio: pip install sounddevice ({_first_line(exc)})") from None
    resampler = None
    try:
        stream = sd.InputStream(samplerate=rate, channels=1, dtype="float32", blocksize=block)
    except Exception:
        try:
            device_rate = int(sd.query_devices(kind="input")["default_samplerate"])
            block = int(round(block * device_rate / rate))
            stream = sd.InputStream(samplerate=device_rate, channels=1, dtype="float32", blocksize=block)
        except Exception as exc:
            raise DetectError(f"cannot open the default microphone ({_first_line(exc)})") from None
        resampler = Resampler(device_rate, rate)
    with stream:
        while True:
            data, _overflowed = stream.read(block)
            x = np.asarray(data, np.float32).reshape(-1)
            yield x if resampler is None else resampler.process(x)


# Command line ----------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _ort_reason(exc: BaseException, path: str) -> str:
    """onnxruntime's load error without its codes and the path we already print, plus what
    the file looks like when it is a well-known other kind."""
    reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", _first_line(exc))
    reason = reason.replace(f"Load model from {path} failed:", "").strip().rstrip(".")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head == b"RIFF":
        reason += "; it is a wav file: give it as an INPUT, the model with --model"
    elif head[:2] == b"PK" or head[:1] == b"\x80":
        reason += "; it looks like a PyTorch checkpoint: export it with `kws-export onnx --streaming`"
    return reason


def _check_input_file(path: str, what: str, expected: str, allow_empty: bool = False) -> None:
    """One line for each way an input path can fail before its contents are read."""
    if not os.path.exists(path):
        raise DetectError(f"{path}: {what} not found")
    if os.path.isdir(path):
        raise DetectError(f"{path}: is a directory, expected {expected}")
    if not allow_empty and os.path.getsize(path) == 0:
        raise DetectError(f"{path}: empty file, expected {expected}")


def _check_output_path(path: str, option: str, what: str, kind: str) -> None:
    """Fail before any audio is processed when an output file could not be written.
    Creating a file is the only reliable test: permission bits do not stop root, and a
    read-only file system or an ACL does not show in them."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise DetectError(f"{path}: is a directory, expected {kind} path for {option}")
    if not os.path.isdir(parent):
        raise DetectError(f"{path}: output directory {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise DetectError(f"{path}: cannot write {what} ({exc.strerror} in {parent})") from None
    os.close(fd)
    os.unlink(probe)


def _check_plot_path(path: str) -> None:
    _check_output_path(path, "--plot", "the plot", "an image")


def _replace_atomically(path: str, what: str, write) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``:
    a failure leaves neither a partial file nor a temporary one."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise DetectError(f"{path}: cannot write {what} ({exc.strerror} in {parent})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the output is as readable as any new file
        os.replace(tmp, path)
    except BaseException as exc:
        os.unlink(tmp)
        if isinstance(exc, (ValueError, OSError)):  # matplotlib: unknown format; disk full, ...
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
            raise DetectError(f"{path}: cannot write {what} ({reason})") from None
        raise


PROBS_HEADER = ("source", "step", "time", "prob", "score")


def write_probs(path: str, tracks: list[dict]) -> None:
    """Every step of every source as CSV: ``source,step,time,prob,score`` (step from 0,
    time = the end of the step's audio in seconds, prob the model's probability, score
    the value the threshold was applied to: prob, or its moving average with --smooth).
    Numbers are written in their shortest round-trip form (float32 probabilities read
    back bit-exact).  Written to a temporary file and renamed."""

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(PROBS_HEADER)
            for track in tracks:
                source = track["source"]
                # str() of a numpy scalar is its shortest round trip (format() would widen a float32)
                out.writerows((source, step, str(t), str(p), str(s))
                              for step, (t, p, s) in enumerate(zip(track["times"], track["probs"], track["scores"])))

    _replace_atomically(path, "the probabilities", write)


def write_plot(path: str, tracks: list[dict], threshold: float, keyword: str, smooth: int) -> None:
    """Probability over time per source, the threshold, and the detections; written to a
    temporary file beside ``path`` and renamed, so a failure leaves no partial image."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DetectError("--plot needs matplotlib: pip install matplotlib") from None
    fig, axes = plt.subplots(len(tracks), 1, figsize=(11, 2.8 * len(tracks)), squeeze=False)
    for ax, track in zip(axes[:, 0], tracks):
        ax.plot(track["times"], track["probs"], lw=0.9, color="tab:blue", label=f"p({keyword})")
        if smooth > 1:
            ax.plot(track["times"], track["scores"], lw=1.2, color="tab:orange", label=f"moving average ({smooth} steps)")
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.2f}")
        for event in track["events"]:
            ax.axvline(event["time"], color="tab:green", lw=1, alpha=0.6)
        if track["events"]:
            ax.plot([e["time"] for e in track["events"]], [e["prob"] for e in track["events"]], "v",
                    color="tab:green", ms=8, label="detection")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(0, max(float(track["times"][-1]) if len(track["times"]) else 0.0, 1e-3))
        ax.set_ylabel("probability")
        ax.set_title(f"{track['source']}: {len(track['events'])} detection(s) of '{keyword}'", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    try:
        _replace_atomically(path, "the plot", lambda tmp: fig.savefig(tmp, format=fmt, dpi=110))
    finally:
        plt.close(fig)


def model_info(detector: Detector) -> dict:
    m = detector.model
    return {
        "model": m.path, "keyword": m.keyword, "sample_rate": m.sample_rate, "chunk_samples": m.chunk_samples,
        "step_samples": m.step_samples, "steps_per_call": m.steps_per_call, "threshold": m.threshold,
        "patience": m.patience,
        "window_ms": m.metadata.get("kws.window_ms"), "states": {name: list(shape) for name, shape, _ in m.states},
        "format_version": m.metadata.get("kws.format_version"), "source_sha256": m.metadata.get("kws.source_sha256"),
    }


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error (argparse adds the usage)
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _parse_args(argv):
    p = _Parser(
        prog="detect.py",
        description="Detect the keyword of a kws-edge streaming ONNX model in wav files, raw PCM on stdin, or the microphone.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="wav files (any rate, channels, 8/16/24/32-bit int or float), or - for raw S16_LE mono PCM at the model's rate on stdin")
    p.add_argument("--model", "-m", required=True, help="streaming ONNX from `kws-export onnx --streaming`")
    p.add_argument("--mic", action="store_true", help="listen to the default microphone (needs sounddevice); Ctrl-C stops")
    p.add_argument("--threshold", type=float, default=None, help="detection threshold (default: the model's kws.threshold)")
    p.add_argument("--smooth", type=int, default=1, metavar="N", help="moving average of the last N step probabilities (default 1: off)")
    p.add_argument("--patience", type=int, default=None, metavar="N",
                   help="fire only after N steps in a row at or above the threshold (default: the model's kws.patience, else 1)")
    p.add_argument("--refractory-ms", type=float, default=1000.0, help="silence after a detection, one event per utterance (default 1000)")
    p.add_argument("--json", action="store_true", help='print JSON lines {"time", "prob", "keyword", "source"}')
    p.add_argument("--plot", metavar="OUT.png", help="write probability over time with threshold and detections")
    p.add_argument("--probs", metavar="OUT.csv",
                   help="write every step's source, step, time, probability and score as CSV (no matplotlib needed)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.add_argument("--verifier", metavar="V.onnx",
                   help="two-stage detection: --model proposes at --trigger, this streaming export (e.g. the embedding "
                        "teacher's) confirms at --verifier-threshold; its large model runs only on candidates")
    p.add_argument("--trigger", type=float, default=0.2,
                   help="with --verifier: the first stage's probability that makes a candidate (default 0.2)")
    p.add_argument("--verifier-threshold", type=float, default=None,
                   help="with --verifier: the verifier's threshold (default: its kws.threshold)")
    p.add_argument("--info", action="store_true", help="print what the model needs (sample rate, chunk, keyword, threshold) as JSON and exit")
    args = p.parse_args(argv)
    if args.info:
        return args
    if args.mic == bool(args.inputs):
        p.error("give wav files and/or -, or --mic")
    if args.inputs.count("-") > 1:
        p.error("stdin (-) can be read only once")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.verifier is None and (args.trigger != 0.2 or args.verifier_threshold is not None):
        p.error("--trigger and --verifier-threshold need --verifier")
    if args.verifier is not None:
        clash = [flag for flag, on in (("--threshold", args.threshold is not None), ("--smooth", args.smooth != 1),
                                      ("--patience", args.patience is not None), ("--plot", bool(args.plot)),
                                      ("--probs", bool(args.probs))) if on]
        if clash:
            p.error(f"{', '.join(clash)} apply to a single model, not with --verifier (use --trigger / --verifier-threshold)")
    return args


def run_cli(argv=None) -> int:
    args = _parse_args(argv)
    if args.info:
        print(json.dumps(model_info(Detector(args.model)), indent=2))
        return 0
    if args.plot:
        _check_plot_path(args.plot)
    if args.probs:
        _check_output_path(args.probs, "--probs", "the probabilities", "a CSV file")
    if args.verifier is not None:
        detector = VerifiedDetector(args.model, args.verifier, trigger=args.trigger, verifier_threshold=args.verifier_threshold,
                                    refractory_ms=args.refractory_ms, threads=args.threads)
    else:
        detector = Detector(args.model, threshold=args.threshold, smooth=args.smooth, patience=args.patience,
                            refractory_ms=args.refractory_ms, keep_history=bool(args.plot or args.probs), threads=args.threads)
    rate = detector.sample_rate
    # Open every file first: a bad one fails before anything is printed.
    readers = {path: WavReader(path) for path in args.inputs if path != "-"}
    sources = ["mic"] if args.mic else args.inputs
    many = len(sources) > 1
    tracks = []

    def report(events, source):
        for event in events:
            if args.json:
                line = json.dumps({"time": round(event["time"], 6), "prob": round(event["prob"], 6),
                                   "keyword": event["keyword"], "source": source})
            else:
                line = f"{event['time']:.2f} s  {event['prob']:.3f}  {event['keyword']}"
                line = f"{source}  {line}" if many else line
            print(line, flush=True)
        return events

    try:
        for source in sources:
            detector.reset()
            if source == "-":
                blocks = stdin_source()
            elif source == "mic":
                blocks = mic_source(rate, detector.chunk_samples)
            else:
                blocks = wav_source(readers[source], rate)
            events = []
            try:
                for block in blocks:
                    events += report(detector.process(block), source)
            except KeyboardInterrupt:
                if source != "mic":  # a live microphone ends with Ctrl-C; anything else is cut short
                    raise
            events += report(detector.flush(), source)
            if args.plot or args.probs:
                tracks.append({"source": source, "times": detector.times, "probs": detector.probs,
                               "scores": detector.scores, "events": events})
    finally:
        for reader in readers.values():
            reader.close()
    if args.probs:
        write_probs(args.probs, tracks)
    if args.plot:
        write_plot(args.plot, tracks, detector.threshold, detector.keyword, detector.smooth)
    return 0


def main(argv=None) -> int:
    try:
        return run_cli(argv)
    except DetectError as exc:
        print(f"detect.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("detect.py: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `detect.py ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug, not bad input: one line unless asked for details
        if os.environ.get("KWS_DEBUG"):
            raise
        print(f"detect.py: internal error: {type(exc).__name__}: {_first_line(exc)} (set KWS_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
