"""CI parity: runtime/detect.py on real `kws-export onnx --streaming` exports of a tiny
random CRNN against the PyTorch streaming model (CRNN.init_state / CRNN.step).

fp32: per-step probabilities equal to <= 1e-5, for one and for several steps per call, and
the CLI's events equal the events of the PyTorch probabilities.
int8: decisions at the threshold agree on >= 99.9% of steps and |dprob| <= 0.02, as the
export issue requires of `kws-export verify`; the runtime's int8 probabilities equal a
plain onnxruntime loop's exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import venv_bin
from kws_export.checkpoint import save_checkpoint
from kws_export.config import CRNNConfig
from kws_export.model import CRNN
from runtime.detect import Detector

DETECT = Path(__file__).resolve().parents[1] / "runtime" / "detect.py"
RATE = 16000


def export(ckpt: Path, out: Path, *extra: str) -> Path:
    r = subprocess.run([venv_bin("kws-export"), "onnx", "--ckpt", str(ckpt), "--streaming", *extra, "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def speechy_stream(seconds: float, seed: int) -> np.ndarray:
    """Bursts of harmonic, noisy 'syllables' over quiet noise: probabilities that move."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE) + 333  # not a whole number of steps: the tail is padded
    t = np.arange(n) / RATE
    x = rng.standard_normal(n) * 0.003
    for start in np.arange(0.3, seconds - 0.5, 0.9):
        a, length = int(start * RATE), int(rng.uniform(0.15, 0.45) * RATE)
        f0 = rng.uniform(90, 250)
        tone = sum(np.sin(2 * np.pi * f0 * h * t[a:a + length] + rng.uniform(0, 6)) / h for h in range(1, 12))
        x[a:a + length] += rng.uniform(0.05, 0.4) * np.hanning(length) * (tone + 0.3 * rng.standard_normal(length))
    return x.astype(np.float32)


def torch_stream(model: CRNN, audio: np.ndarray, chunk: int) -> np.ndarray:
    """PyTorch streaming probabilities, the tail zero-padded to a whole chunk."""
    padded = np.concatenate([audio, np.zeros(-len(audio) % chunk, np.float32)])
    state, probs = model.init_state(), []
    with torch.no_grad():
        for i in range(0, len(padded), chunk):
            p, state = model.step(torch.from_numpy(padded[i:i + chunk])[None], state)
            probs.append(p[0].numpy())
    return np.concatenate(probs)


def feed_in_random_blocks(det: Detector, audio: np.ndarray, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    events, i = [], 0
    while i < len(audio):
        n = int(rng.integers(0, 4000))
        events += det.process(audio[i:i + n])
        i += n
    return events + det.flush()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    torch.manual_seed(0)
    model = CRNN(CRNNConfig(channels=2, hidden=8, gru_layers=2)).eval()
    with torch.no_grad():  # spread the random logits so probabilities cross the threshold
        model.classifier.weight.mul_(40.0)
    audio = speechy_stream(20.0, seed=1)
    step = model.stream_spec().step_samples
    ref = torch_stream(model, audio, step)
    threshold = float(np.median(ref))
    ckpt = d / "tiny.pt"
    save_checkpoint(ckpt, model, {"threshold": threshold})
    return {"model": model, "ckpt": ckpt, "dir": d, "audio": audio, "ref": ref, "threshold": threshold,
            "step": step, "exports": {}}


def fp32_export(tiny, chunk_ms) -> Path:
    if chunk_ms not in tiny["exports"]:
        extra = [] if chunk_ms is None else ["--chunk-ms", str(chunk_ms)]
        tiny["exports"][chunk_ms] = export(tiny["ckpt"], tiny["dir"] / f"fp32_{chunk_ms}.onnx", *extra)
    return tiny["exports"][chunk_ms]


@pytest.mark.parametrize("chunk_ms", [None, 320])
def test_fp32_runtime_equals_pytorch_streaming(tiny, chunk_ms):
    det = Detector(fp32_export(tiny, chunk_ms))
    assert det.steps_per_call == (1 if chunk_ms is None else chunk_ms * RATE // 1000 // tiny["step"])
    assert det.threshold == pytest.approx(tiny["threshold"])
    feed_in_random_blocks(det, tiny["audio"], seed=2)
    n = -(-len(tiny["audio"]) // tiny["step"])
    ref = torch_stream(tiny["model"], tiny["audio"], det.chunk_samples)[:n]
    assert len(det.probs) == n
    assert np.abs(det.probs - ref).max() <= 1e-5
    assert ref.min() < tiny["threshold"] < ref.max()  # the stream has decisions both ways
    np.testing.assert_allclose(det.times, np.arange(1, n + 1) * tiny["step"] / RATE)


def test_fp32_cli_events_equal_pytorch_events(tiny, tmp_path):
    from training.metrics import detect_events

    path = fp32_export(tiny, None)
    wav = tmp_path / "stream.wav"
    import soundfile as sf

    sf.write(wav, tiny["audio"], RATE, subtype="FLOAT")
    r = subprocess.run([sys.executable, str(DETECT), "--model", str(path), str(wav), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    times = [json.loads(line)["time"] for line in r.stdout.splitlines()]
    n = -(-len(tiny["audio"]) // tiny["step"])
    expected = detect_events(tiny["ref"][:n], tiny["step"] / RATE, tiny["threshold"], 1.0)
    assert len(times) >= 2
    np.testing.assert_allclose(times, expected, atol=1e-6)


def test_int8_runtime_agrees_on_decisions(tmp_path):
    """As `kws-export verify` checks int8: a plain tiny random model (an unscaled classifier,
    so quantization is judged on realistic logits), a synthesized speech stream other than
    the calibration one, decisions at the model's threshold."""
    import soundfile as sf

    from training.speech import synthetic_stream, synthetic_streams

    torch.manual_seed(0)
    model = CRNN(CRNNConfig(channels=2, hidden=8, gru_layers=2)).eval()
    ckpt = tmp_path / "plain.pt"
    save_checkpoint(ckpt, model)
    # the default calibration of the installed command (seed 0), as float wavs: the same audio
    # whichever `kws-export` the environment installed (with or without synthesized speech)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, stream in enumerate(synthetic_streams(model.config.keyword, RATE, 30.0, 0)):
        sf.write(calib / f"{i}.wav", stream, RATE, subtype="FLOAT")
    int8 = Detector(export(ckpt, tmp_path / "plain.int8.onnx", "--int8", "--calib", str(calib)))
    assert any(k.startswith("kws.quant") for k in int8.metadata)
    audio = synthetic_stream(int8.keyword, RATE, seconds=20.0, seed=1)
    feed_in_random_blocks(int8, audio, seed=3)
    n = -(-len(audio) // int8.step_samples)
    ref = torch_stream(model, audio, int8.chunk_samples)[:n]
    thr = int8.threshold
    assert len(int8.probs) == n
    assert np.abs(int8.probs - ref).max() <= 0.02
    assert np.mean((int8.probs >= thr) == (ref >= thr)) >= 0.999
    # The runtime's double-buffered IOBinding path equals a plain onnxruntime loop exactly.
    sess = int8.model.session
    state = {s["name"]: np.full(s["shape"], s["init"], np.float32) for s in int8.metadata["kws.states"]}
    padded = np.concatenate([audio, np.zeros(-len(audio) % int8.chunk_samples, np.float32)])
    names = [o.name for o in sess.get_outputs()]
    plain = []
    for i in range(0, len(padded), int8.chunk_samples):
        out = dict(zip(names, sess.run(None, {"audio": padded[None, i:i + int8.chunk_samples], **state})))
        plain.append(out["prob"])
        state = {k: out[f"{k}_next"] for k in state}
    assert np.array_equal(np.concatenate(plain)[:n], int8.probs)
