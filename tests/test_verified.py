"""Two-stage detection: runtime.detect.VerifiedDetector (a first-stage export proposes, a
finite-window verifier export replayed from its initial state confirms) against its offline
twin training.real.verified_events on the two models' continuous tracks."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from kws_export.checkpoint import save_checkpoint
from kws_export.config import CRNNConfig
from kws_export.embedding import EmbeddingConfig, EmbeddingKWS, find_graphs
from kws_export.export_onnx import export_onnx_file
from kws_export.model import CRNN
from runtime.detect import DetectError, Detector, VerifiedDetector
from test_runtime_parity import feed_in_random_blocks, speechy_stream
from training.real import verified_events

DETECT = Path(__file__).resolve().parents[1] / "runtime" / "detect.py"


def track(path: Path, audio: np.ndarray) -> np.ndarray:
    det = Detector(str(path), threshold=1.0)
    det.process(audio)
    det.flush()
    return det.probs.astype(np.float64)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("verified")
    torch.manual_seed(0)
    first = CRNN(CRNNConfig(channels=2, hidden=8, gru_layers=1, stride=(4, 8))).eval()
    with torch.no_grad():
        first.classifier.weight.mul_(40.0)  # probabilities that cross any trigger
    save_checkpoint(d / "first.pt", first, {"threshold": 0.5})
    verifier = EmbeddingKWS(EmbeddingConfig(), find_graphs())
    torch.nn.init.normal_(verifier.head[1].weight, std=0.05)
    save_checkpoint(d / "verifier.pt", verifier.eval(), {"threshold": 0.5})
    exports = {"first": d / "first.stream.onnx", "first_320": d / "first320.stream.onnx",
               "verifier": d / "verifier.stream.onnx"}
    export_onnx_file(d / "first.pt", exports["first"], streaming=True)
    export_onnx_file(d / "first.pt", exports["first_320"], streaming=True, chunk_ms=320)
    export_onnx_file(d / "verifier.pt", exports["verifier"], streaming=True)
    audio = speechy_stream(30.0, seed=3)  # not a whole number of steps: the flush pads
    a, b = track(exports["first"], audio), track(exports["verifier"], audio)
    return {"dir": d, "audio": audio, "first": a, "verifier": b, "exports": exports,
            "trigger": float(np.quantile(a, 0.7)), "threshold": float(np.quantile(b, 0.93))}


@pytest.mark.parametrize("first_export", ["first", "first_320"])
def test_runtime_equals_its_offline_twin(pair, first_export):
    det = VerifiedDetector(str(pair["exports"][first_export]), str(pair["exports"]["verifier"]), trigger=pair["trigger"],
                           verifier_threshold=pair["threshold"])
    events = feed_in_random_blocks(det, pair["audio"], seed=5)
    steps, probs, n = verified_events(pair["first"], pair["verifier"], pair["trigger"], pair["threshold"])
    assert 3 <= len(steps) < n  # some candidates confirmed, some rejected
    got = np.array([round(e["time"] * 16000 / 1280) - 1 for e in events])
    assert got.tolist() == steps.tolist()
    # the replayed verifier's probabilities are those of the verifier running on every step
    assert np.abs(np.array([e["prob"] for e in events]) - probs).max() <= 1e-6
    assert det.verifications == n
    det.reset()  # a second stream starts from scratch
    assert feed_in_random_blocks(det, pair["audio"], seed=6) == events


def test_a_trigger_of_zero_tiles_the_stream_with_verifications(pair):
    e, n_steps = pair["exports"], len(pair["first"])
    strict = float(np.quantile(pair["verifier"], 0.999))
    never = VerifiedDetector(str(e["first"]), str(e["verifier"]), trigger=0.0, verifier_threshold=strict)
    steps = [round(ev["time"] / 0.08) - 1 for ev in never.process(pair["audio"]) + never.flush()]
    twin, _, n = verified_events(pair["first"], pair["verifier"], 0.0, strict)
    assert steps == twin.tolist() and never.verifications == n
    if not len(twin):  # every candidate rejected: one every window_steps
        assert n == -(-n_steps // 8)
    always = VerifiedDetector(str(e["first"]), str(e["verifier"]), trigger=0.0, verifier_threshold=0.0)
    steps = [round(ev["time"] / 0.08) - 1 for ev in always.process(pair["audio"]) + always.flush()]
    # a candidate every 4 + 13 steps (delay, then 1 s of refractory); the last one, cut by the
    # end of the stream, is verified on what was heard
    assert steps == [min(n_steps - 1, c + 4) for c in range(0, n_steps, 4 + 13)]
    assert steps == verified_events(pair["first"], pair["verifier"], 0.0, 0.0)[0].tolist()


def test_refuses_a_mismatched_pair(pair, tmp_path):
    e = pair["exports"]
    with pytest.raises(DetectError, match="verifier must take one step per call"):
        VerifiedDetector(str(e["verifier"]), str(e["first_320"]))
    torch.manual_seed(1)
    other = CRNN(CRNNConfig(channels=2, hidden=8, gru_layers=1, stride=(4, 8), keyword="marvin")).eval()
    save_checkpoint(tmp_path / "m.pt", other, {"threshold": 0.5})
    export_onnx_file(tmp_path / "m.pt", tmp_path / "m.onnx", streaming=True)
    with pytest.raises(DetectError, match="finite window"):  # a GRU export cannot be replayed exactly
        VerifiedDetector(str(e["first"]), str(e["first"]))
    with pytest.raises(DetectError, match="keyword"):
        VerifiedDetector(str(tmp_path / "m.onnx"), str(e["verifier"]))
    for kw, match in (({"trigger": 1.5}, "trigger"), ({"window_steps": 0}, "window_steps"),
                      ({"delay_steps": -1}, "delay_steps"), ({"verifier_threshold": 2.0}, "verifier threshold")):
        with pytest.raises(DetectError, match=match):
            VerifiedDetector(str(e["first"]), str(e["verifier"]), **kw)


def _wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.round(np.clip(audio, -1, 32767 / 32768) * 32768).astype("<i2").tobytes())
    return path


def test_cli_prints_the_twin_events_and_refuses_single_model_options(pair, tmp_path):
    e = pair["exports"]
    audio = np.round(pair["audio"] * 32768).clip(-32768, 32767) / 32768  # what the 16-bit wav holds
    wav = _wav(tmp_path / "s.wav", pair["audio"])
    a, b = track(e["first"], audio.astype(np.float32)), track(e["verifier"], audio.astype(np.float32))
    steps, _, _ = verified_events(a, b, pair["trigger"], pair["threshold"])
    r = subprocess.run([sys.executable, str(DETECT), "--model", str(e["first"]), "--verifier", str(e["verifier"]),
                        "--trigger", str(pair["trigger"]), "--verifier-threshold", str(pair["threshold"]), "--json",
                        str(wav)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    times = [json.loads(line)["time"] for line in r.stdout.splitlines()]
    assert np.allclose(times, (steps + 1) * 0.08)
    for extra in (["--smooth", "3"], ["--plot", str(tmp_path / "p.png")], ["--threshold", "0.5"]):
        r = subprocess.run([sys.executable, str(DETECT), "--model", str(e["first"]), "--verifier", str(e["verifier"]),
                            *extra, str(wav)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--verifier" in r.stderr
    r = subprocess.run([sys.executable, str(DETECT), "--model", str(e["first"]), "--trigger", "0.3", str(wav)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "need --verifier" in r.stderr


def test_evaluation_refuses_a_recurrent_verifier_in_one_line(pair, tmp_path):
    """kws-train eval --verifier and the keyword recipe go through evaluate_verified: a CRNN
    export as the verifier is a KWSError (one line), as in detect.py.  A first-stage track
    computed before (the keyword recipe's, from evaluate_real) gives the same figures."""
    from kws_export.errors import KWSError
    from test_keyword import make_fake_dev_set
    from training.real import build_stream, evaluate_verified, open_real

    dev = open_real(make_fake_dev_set(tmp_path / "real", "sheila"), "sheila").load()
    e = pair["exports"]
    with pytest.raises(KWSError, match="finite window"):
        evaluate_verified(dev, e["first"], e["first"])
    out = evaluate_verified(dev, e["first"], e["verifier"], threshold=0.5)
    audio = np.concatenate([dev.wave(int(i)) for i in build_stream(dev, 0).order])
    again = evaluate_verified(dev, e["first"], e["verifier"], threshold=0.5, first_track=track(e["first"], audio))
    assert again["at_threshold"] == out["at_threshold"] and again["sweep"] == out["sweep"]
