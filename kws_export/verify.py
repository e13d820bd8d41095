"""Parity verifier: PyTorch eager, TorchScript, ONNX fp32 and ONNX int8 on the same audio.

Streaming artifacts (a streaming ONNX, int8 or not, a streaming TorchScript) are run step
by step over the stream and compared with the eager ``CRNN.step`` loop; offline artifacts
(offline ONNX, offline TorchScript) are run on 1 s clips cut from the stream and compared
with the eager ``keyword_prob`` — and, for a course-shaped TorchScript checkpoint, with
that file's own output too.  One JSON report; ``ok`` is false when a pair is beyond its
tolerance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from kws_export.checkpoint import Checkpoint, load_checkpoint
from kws_export.errors import KWSError
from kws_export.embedding import EmbeddingKWS
from kws_export.model import CRNN

if TYPE_CHECKING:
    from kws_export.audio import AudioSource

FP32_TOL = 1e-5
COURSE_TOL = 1e-4          # a course TorchScript computes its STFT with torch.stft, we with rfft
INT8_MAX_DIFF = 0.02
INT8_AGREEMENT = 0.999
STREAM_SUFFIXES = (".stream.int8.onnx", ".stream.int8w.onnx", ".stream.onnx", ".onnx", ".stream.ts", ".ts")


@dataclass
class Runner:
    name: str
    path: str | None
    mode: str               # "stream" or "offline"
    int8: bool
    run: Callable[[np.ndarray], np.ndarray]


# Audio -------------------------------------------------------------------------------------------
def verification_audio(wavs: list[str], sample_rate: int, keyword: str, seconds: float, seed: int,
                       speech: AudioSource | None = None) -> tuple[list[np.ndarray], Any]:
    """The wavs given, or ``seconds`` of streams from ``speech`` (split in two)."""
    if wavs:
        from kws_export.audio import read_wav

        return [read_wav(w, sample_rate)[0] for w in wavs], [str(w) for w in wavs]
    if speech is None:
        raise KWSError("no audio to verify on: pass --wav FILE")
    streams = speech.streams(keyword, sample_rate, seconds / 2, seed)
    return streams, f"{speech.name} ({len(streams)} streams, {seconds:g} s, seed {seed})"


def clips(audio: np.ndarray, clip_samples: int) -> np.ndarray:
    """1 s windows every half second (at least one, zero-padded if the audio is short)."""
    if len(audio) < clip_samples:
        audio = np.pad(audio, (0, clip_samples - len(audio)))
    hop = clip_samples // 2
    starts = range(0, len(audio) - clip_samples + 1, hop)
    return np.stack([audio[s:s + clip_samples] for s in starts]).astype(np.float32)


# Runners -----------------------------------------------------------------------------------------
def eager_stream(model: CRNN, chunk_steps: int = 1, window_ms: float | None = None) -> Callable[[np.ndarray], np.ndarray]:
    if isinstance(model, EmbeddingKWS):  # its reference: the numpy step over the frozen graphs
        return model.stream
    spec = model.stream_spec(window_ms)
    chunk = spec.step_samples * chunk_steps

    def run(audio: np.ndarray) -> np.ndarray:
        state = model.init_state(1, window_ms)
        probs = []
        x = torch.from_numpy(np.asarray(audio, np.float32))
        with torch.no_grad():
            for start in range(0, len(x) - chunk + 1, chunk):
                p, state = model.step(x[None, start:start + chunk], state)
                probs.append(p[0].numpy())
        return np.concatenate(probs) if probs else np.zeros(0, np.float32)
    return run


def eager_offline(model: CRNN) -> Callable[[np.ndarray], np.ndarray]:
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.keyword_prob(torch.from_numpy(batch)).numpy()
    return run


def onnx_runner(path: str) -> Runner:
    from kws_export.onnx_info import check_kws_export, load_onnx_model
    from kws_export.onnx_run import run_stream, session

    check_kws_export(load_onnx_model(path), path)
    try:
        sess = session(path)
    except Exception as exc:  # onnxruntime raises several types for unreadable files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise KWSError(f"{path}: not a loadable ONNX model ({first})") from None
    meta = sess.get_modelmeta().custom_metadata_map
    int8 = _is_quantized(path)
    if "kws.states" in meta:
        return Runner(Path(path).name, str(path), "stream", int8, lambda audio: run_stream(sess, audio))
    return Runner(Path(path).name, str(path), "offline", int8, lambda batch: sess.run(["prob"], {"audio": batch})[0])


def _is_quantized(path: str) -> bool:
    """Static int8 (QDQ nodes) or int8 weights (int8 initializers): compared at int8 tolerance."""
    import onnx

    from kws_export.onnx_info import int8_weight_tensors

    model = onnx.load(str(path))
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node) or int8_weight_tensors(model) > 0


def torchscript_runner(path: str, name: str | None = None) -> Runner:
    from kws_export.export_torchscript import checked_step, is_streaming, load_torchscript

    module = load_torchscript(path)
    name = name or Path(path).name
    if is_streaming(module):
        step_samples = int(module.step_samples)

        def run_stream(audio: np.ndarray) -> np.ndarray:
            state = module.init_state(1)
            x = torch.from_numpy(np.asarray(audio, np.float32))
            probs = []
            with torch.no_grad():
                for start in range(0, len(x) - step_samples + 1, step_samples):
                    p, state = checked_step(module, x[None, start:start + step_samples], state)
                    probs.append(p[0].numpy())
            return np.concatenate(probs) if probs else np.zeros(0, np.float32)
        return Runner(name, str(path), "stream", False, run_stream)

    def run_offline(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(batch)).numpy()
    return Runner(name, str(path), "offline", False, run_offline)


def siblings(path: str) -> list[str]:
    """Existing exports of the same NAME beside ``path`` (NAME.onnx, .stream.onnx, ...)."""
    p = Path(path)
    for suffix in STREAM_SUFFIXES:
        if p.name.endswith(suffix):
            stem = p.name[: -len(suffix)]
            return [str(p.with_name(stem + s)) for s in STREAM_SUFFIXES if (p.parent / (stem + s)).is_file()]
    return [str(p)]


# Comparison --------------------------------------------------------------------------------------
def compare(a: np.ndarray, b: np.ndarray, threshold: float, int8: bool, tol: float) -> dict[str, Any]:
    if a.shape != b.shape:
        raise KWSError(f"runners disagree on the number of outputs ({a.shape} vs {b.shape})")
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    same = (a >= threshold) == (b >= threshold)
    agree = float(np.mean(same)) if a.size else 1.0
    result = {"max_abs_diff": diff, "agreement": agree, "disagreeing_steps": int((~same).sum()), "outputs": int(a.size)}
    if int8:
        # A step whose reference lies within the |dprob| allowance of the threshold may flip
        # within tolerance: agreement is held to the steps outside that margin (keyword onsets
        # cross the threshold in a few steps, so a short stream always has some inside it).
        clear = np.abs(a - threshold) > INT8_MAX_DIFF
        agree_clear = float(np.mean(same[clear])) if clear.any() else 1.0
        ok = diff <= INT8_MAX_DIFF and agree_clear >= INT8_AGREEMENT
        result.update(agreement_outside_margin=agree_clear, steps_within_margin=int((~clear).sum()))
        tolerance = {"max_abs_diff": INT8_MAX_DIFF, "agreement_outside_margin": INT8_AGREEMENT, "margin": INT8_MAX_DIFF}
    else:
        ok = diff <= tol
        tolerance = {"max_abs_diff": tol}
    return {**result, "tolerance": tolerance, "ok": bool(ok)}


def verify(ckpt_path: str, onnx_paths: list[str] = (), ts_paths: list[str] = (), wavs: list[str] = (),
           seconds: float = 30.0, seed: int = 1, discover: bool = True, stride=None,
           speech: AudioSource | None = None) -> dict[str, Any]:
    """The parity report; without ``wavs`` it runs ``seconds`` of ``speech`` (an error without either)."""
    ckpt: Checkpoint = load_checkpoint(ckpt_path, stride)
    model = ckpt.build_model()
    cfg = ckpt.config
    from kws_export.fileio import check_readable

    paths: list[str] = []
    for p in list(onnx_paths) + list(ts_paths):
        check_readable(p, "TorchScript file" if str(p).endswith(".ts") else "ONNX model")
        for q in (siblings(p) if discover else [p]):
            if q not in paths:
                paths.append(q)
    if not paths:
        raise KWSError("nothing to verify: give --onnx and/or --ts")
    runners = [torchscript_runner(p) if p.endswith(".ts") else onnx_runner(p) for p in paths]

    # One streaming graph's chunk and window decide the eager reference's.
    stream_meta = [_stream_meta(r.path) for r in runners if r.mode == "stream" and r.path.endswith(".onnx")]
    window_ms = stream_meta[0]["kws.window_ms"] if stream_meta else None
    threshold = float(stream_meta[0]["kws.threshold"]) if stream_meta else float(ckpt.metadata.get("threshold", 0.5))
    keyword = str(ckpt.metadata.get("keyword", cfg.keyword))
    streams, source = verification_audio(list(wavs), cfg.sample_rate, keyword, seconds, seed, speech)

    eager_s = eager_stream(model, 1, float(window_ms) if window_ms is not None else None)
    eager_o = eager_offline(model)
    outputs: dict[str, np.ndarray] = {}  # offline (clip batch) outputs
    pairs = []
    per_stream: dict[str, list[np.ndarray]] = {}  # a multi-step chunk may drop each stream's tail

    def aligned(a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        n = [min(len(x), len(y)) for x, y in zip(per_stream[a], per_stream[b])]
        return (np.concatenate([x[:k] for x, k in zip(per_stream[a], n)]),
                np.concatenate([y[:k] for y, k in zip(per_stream[b], n)]))

    if any(r.mode == "stream" for r in runners):
        per_stream["torch"] = [eager_s(a) for a in streams]
    if any(r.mode == "offline" for r in runners) or ckpt.kind == "course-torchscript":
        batch = np.concatenate([clips(a, cfg.clip_samples) for a in streams])
        outputs["torch offline"] = eager_o(batch)
    for r in runners:
        if r.mode == "stream":
            per_stream[r.name] = [r.run(a) for a in streams]
            pairs.append({"a": "torch", "b": r.name, "mode": "stream",
                          **compare(*aligned("torch", r.name), threshold, r.int8, FP32_TOL)})
        else:
            outputs[r.name] = r.run(batch)
            pairs.append({"a": "torch offline", "b": r.name, "mode": "offline",
                          **compare(outputs["torch offline"], outputs[r.name], threshold, r.int8, FP32_TOL)})
    fp32_stream = [r for r in runners if r.mode == "stream" and not r.int8 and r.path.endswith(".onnx")]
    for r in runners:
        if r.int8 and fp32_stream:
            ref = fp32_stream[0].name
            pairs.append({"a": ref, "b": r.name, "mode": "stream",
                          **compare(*aligned(ref, r.name), threshold, True, FP32_TOL)})
    if ckpt.kind == "course-torchscript":
        course = torchscript_runner(ckpt_path, name="course torchscript")
        outputs[course.name] = course.run(batch)
        pairs.append({"a": course.name, "b": "torch offline", "mode": "offline",
                      **compare(outputs[course.name], outputs["torch offline"], threshold, False, COURSE_TOL)})
        for r in runners:
            if r.mode == "offline" and not r.int8:
                pairs.append({"a": course.name, "b": r.name, "mode": "offline",
                              **compare(outputs[course.name], outputs[r.name], threshold, False, COURSE_TOL)})
    steps = sum(len(p) for p in per_stream.get("torch", []))
    return {
        "checkpoint": str(ckpt_path),
        "audio": source,
        "seconds": round(sum(len(a) for a in streams) / cfg.sample_rate, 3),
        "stream_steps": steps,
        "threshold": threshold,
        "artifacts": {r.name: {"path": r.path, "mode": r.mode, "int8": r.int8} for r in runners},
        "pairs": pairs,
        "ok": all(p["ok"] for p in pairs),
    }


def _stream_meta(path: str) -> dict[str, Any]:
    from kws_export.onnx_info import kws_metadata, load_onnx_model

    return kws_metadata(load_onnx_model(path))


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
