"""Streaming cost of one engine: CPU seconds per second of audio and per-step CPU latency.

Every engine is a ``Runner``: ``reset()`` starts a new stream, ``step(i)`` consumes call
i's audio (one 80 ms step unless the export takes several per call), ``probs()`` returns
the per-step keyword probabilities of the whole stream (an untimed pass, for the parity
column).  ``measure`` runs a warm-up, then ``repeats`` timed passes over the stream with
no per-step clock (real-time factor = process CPU time / audio time, the median of the
passes), then up to three passes that read the thread's CPU clock around every call
(latency percentiles over all of them: a per-step clock read costs ~0.3 µs, kept out of
the RTF passes).  CPU time, not wall time: the machine is shared, and CPU time is what a
detector costs its device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, asdict
from typing import Callable

import numpy as np
import torch


@dataclass
class Runner:
    engine: str
    calls: int                      # calls over the stream
    steps_per_call: int
    reset: Callable[[], None]
    step: Callable[[int], object]
    probs: Callable[[], np.ndarray]


@dataclass
class Timing:
    engine: str
    calls: int
    steps_per_call: int
    audio_s: float
    rtf: float                      # CPU s per s of audio, median of the passes
    rtf_passes: list[float]
    p50_us: float                   # CPU time of one call
    p99_us: float
    wall_p50_us: float
    wall_p99_us: float

    @property
    def us_per_step(self) -> float:
        return self.rtf * 1e6 * self.audio_s / (self.calls * self.steps_per_call)

    def to_dict(self) -> dict:
        return {**asdict(self), "us_per_step": self.us_per_step}


def measure(runners: dict[str, Runner], audio_s: float, repeats: int = 5, warmup: int = 20) -> dict[str, Timing]:
    """Time every runner over the stream.  The passes are interleaved (pass 1 of every
    engine, then pass 2, ...) so that a burst of load from other processes on a shared
    machine spreads over all engines instead of landing on one."""
    # One inference-mode scope around the whole stream, as a deployment would hold it
    # (entering it per step would add its own cost to every PyTorch step).
    with torch.inference_mode():
        for runner in runners.values():
            runner.reset()
            for i in range(min(warmup, runner.calls)):
                runner.step(i)
        passes: dict[str, list[float]] = {key: [] for key in runners}
        for _ in range(max(1, repeats)):
            for key, runner in runners.items():
                passes[key].append(_pass_cpu_s(runner) / audio_s)
        # Latency passes, interleaved the same way, pooled (up to 3: one unlucky pass on a
        # shared machine must not be the whole percentile).
        lat: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {key: [] for key in runners}
        for _ in range(min(3, max(1, repeats))):
            for key, runner in runners.items():
                lat[key].append(_latencies(runner))
        out = {}
        for key, runner in runners.items():
            cpu = np.concatenate([c for c, _ in lat[key]])
            wall = np.concatenate([w for _, w in lat[key]])
            out[key] = Timing(runner.engine, runner.calls, runner.steps_per_call, audio_s, float(np.median(passes[key])),
                              passes[key], float(np.percentile(cpu, 50)) / 1e3, float(np.percentile(cpu, 99)) / 1e3,
                              float(np.percentile(wall, 50)) / 1e3, float(np.percentile(wall, 99)) / 1e3)
        return out


def collect_probs(runner: Runner) -> np.ndarray:
    with torch.inference_mode():
        return np.asarray(runner.probs(), np.float32).reshape(-1)


def _pass_cpu_s(runner: Runner) -> float:
    """One pass over the stream with no per-step clock: process CPU seconds."""
    step = runner.step
    runner.reset()
    t0 = time.process_time_ns()
    for i in range(runner.calls):
        step(i)
    return (time.process_time_ns() - t0) / 1e9


def _latencies(runner: Runner) -> tuple[np.ndarray, np.ndarray]:
    """One pass reading the thread's CPU clock and the wall clock around every call (ns)."""
    step, n = runner.step, runner.calls
    cpu = np.empty(n, np.int64)
    wall = np.empty(n, np.int64)
    thread_ns, perf_ns = time.thread_time_ns, time.perf_counter_ns
    runner.reset()
    for i in range(n):
        w, c = perf_ns(), thread_ns()
        step(i)
        cpu[i] = thread_ns() - c
        wall[i] = perf_ns() - w
    return cpu, wall


# Engines --------------------------------------------------------------------------------------
def _chunks(audio: np.ndarray, chunk: int) -> tuple[torch.Tensor, int]:
    calls = len(audio) // chunk
    return torch.from_numpy(np.ascontiguousarray(audio[: calls * chunk])), calls


def _collect(runner_step: Callable[[int], object], calls: int, reset: Callable[[], None]) -> np.ndarray:
    reset()
    return np.concatenate([np.asarray(runner_step(i), np.float32).reshape(-1) for i in range(calls)])


def eager_runner(model, audio: np.ndarray) -> Runner:
    """``CRNN.init_state()`` / ``CRNN.step(chunk, state)`` in PyTorch eager mode."""
    step_samples = model.stream_spec().step_samples
    x, calls = _chunks(audio, step_samples)
    box = {}

    def reset():
        box["state"] = model.init_state()

    def step(i: int):
        p, box["state"] = model.step(x[None, i * step_samples:(i + 1) * step_samples], box["state"])
        return p

    return Runner("PyTorch eager", calls, 1, reset, step, lambda: _collect(step, calls, reset))


def torchscript_stream_runner(path, audio: np.ndarray) -> Runner:
    """``kws-export torchscript --streaming``: the scripted ``init_state`` / ``step``."""
    from kws_export.export_torchscript import load_torchscript

    module = load_torchscript(path)
    step_samples = int(module.step_samples)
    x, calls = _chunks(audio, step_samples)
    box = {}

    def reset():
        box["state"] = module.init_state(1)

    def step(i: int):
        p, box["state"] = module.step(x[None, i * step_samples:(i + 1) * step_samples], box["state"])
        return p

    return Runner("TorchScript", calls, 1, reset, step, lambda: _collect(step, calls, reset))


def detector_runner(path, audio: np.ndarray, engine: str, feed_samples: int | None = None) -> Runner:
    """runtime/detect.py's ``Detector``, fed one chunk per ``process`` call (live audio).
    ``feed_samples`` feeds smaller blocks instead (80 ms to a model that takes several
    steps per call: the Detector buffers, and every few calls runs the model)."""
    from runtime.detect import Detector

    det = Detector(str(path), keep_history=False, threads=1)
    chunk = feed_samples or det.chunk_samples
    calls = len(audio) // chunk
    x = np.ascontiguousarray(audio[: calls * chunk], np.float32)

    def step(i: int):
        return det.process(x[i * chunk:(i + 1) * chunk])

    def probs() -> np.ndarray:
        ref = Detector(str(path), keep_history=True, threads=1)
        ref.process(x)
        return ref.probs

    return Runner(engine, calls, chunk // det.step_samples, det.reset, step, probs)


def naive_runner(path, audio: np.ndarray, clip_samples: int, step_samples: int) -> Runner:
    """The course's way: every step, the offline TorchScript model re-scores the last
    ``clip_samples`` of audio (silence before the stream start)."""
    from kws_export.export_torchscript import load_torchscript

    module = load_torchscript(path)
    calls = len(audio) // step_samples
    padded = torch.from_numpy(np.concatenate([np.zeros(clip_samples - step_samples, np.float32),
                                              np.asarray(audio[: calls * step_samples], np.float32)]))

    def step(i: int):
        return module(padded[None, i * step_samples:i * step_samples + clip_samples])

    return Runner("naive 1 s re-scoring", calls, 1, lambda: None, step, lambda: _collect(step, calls, lambda: None))
