"""benchmarks/anchor.py without openwakeword and without ../shared: the openWakeWord stream
scorer on a fake model, the whole scoring path on a tiny made-up dev set, and the one-line
errors (no dev set, openwakeword not installed)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import anchor  # noqa: E402
from kws_export.errors import KWSError  # noqa: E402


class FakeOWW:
    """openWakeWord's Model interface: ``models`` and ``predict(int16 chunk) -> {name: score}``.
    Scores 1.0 for a loud chunk, else 0.0 (the real one zeroes its first 5 frames; not modelled)."""

    def __init__(self, name: str = "alexa_v0.1"):
        self.models = {name: None}
        self.chunks: list[np.ndarray] = []

    def predict(self, x: np.ndarray) -> dict:
        assert x.dtype == np.int16 and x.shape == (1280,)
        self.chunks.append(x.copy())
        return {next(iter(self.models)): float(np.abs(x.astype(np.float64)).mean() > 3000)}


def test_stream_scorer_chunks_int16_and_flushes():
    fake = FakeOWW()
    s = anchor.OpenWakeWordStream(fake)
    assert s.name == "alexa_v0.1" and s.threshold == 0.5 and s.step_seconds == pytest.approx(0.08)
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, size=1280 * 5 + 700, dtype=np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    got = [s.process(audio[:1000]), s.process(audio[1000:4000]), s.process(audio[4000:])]
    assert [len(g) for g in got] == [0, 3, 2]  # whole chunks only, the rest carried over
    tail = s.flush()
    assert len(tail) == 1 and s.flush().size == 0
    fed = np.concatenate(fake.chunks)
    assert np.array_equal(fed[:pcm.size], pcm)  # float -> int16 is exact for 16-bit audio
    assert not fed[pcm.size:].any() and fed.size == 6 * 1280  # the last chunk padded with silence
    assert anchor.to_int16(np.array([1.0, -1.0, 0.5], np.float32)).tolist() == [32767, -32768, 16384]


def test_stream_scorer_needs_one_named_model():
    fake = FakeOWW()
    fake.models = {"a": None, "b": None}
    with pytest.raises(KWSError, match="holds 2 wake-word models"):
        anchor.OpenWakeWordStream(fake)
    s = anchor.OpenWakeWordStream(fake, name="c")
    with pytest.raises(KWSError, match="no score for 'c'"):
        s.process(np.zeros(1280, np.float32))


def _tiny_dev_set(root):
    """SC words of quiet noise and a wake phrase "alexa" of a loud tone, as wav files."""
    from kws_export.audio import write_wav

    rng = np.random.default_rng(1)
    for word in ("yes", "no"):
        d = root / "speech_commands_test_v0.02" / word
        d.mkdir(parents=True)
        for i in range(6):
            write_wav(d / f"s{i}_nohash_0.wav", (0.005 * rng.standard_normal(16000)).astype(np.float32), 16000)
    d = root / "wake_phrases" / "alexa"
    d.mkdir(parents=True)
    t = np.arange(32000) / 16000
    for i in range(4):
        write_wav(d / f"a{i}.wav", (0.5 * np.sin(2 * np.pi * (300 + 50 * i) * t)).astype(np.float32), 16000)


def test_scoring_path_counts_hits_on_the_same_stream(tmp_path):
    from training.real import build_stream, open_real

    _tiny_dev_set(tmp_path)
    dev = open_real(tmp_path, "alexa").load()
    stream = build_stream(dev, seed=0)
    fake = FakeOWW()
    probs, cpu = anchor.score_stream(dev, stream, anchor.OpenWakeWordStream(fake), piece_seconds=0.7)
    steps = -(-stream.samples // 1280)
    assert probs.size == steps and cpu >= 0.0
    figs = anchor.model_figures(probs, stream, 0.08, 0.5)
    assert figs["keywords"] == 4 and figs["own"]["hits"] == 4 and figs["own"]["false_alarms"] == 0
    assert set(figs["fixed"]) == {"0.5", "0.9"}
    results = {"keyword": "alexa", "date": "today", "machine": "test", "load_average_at_start": None, "command": "x",
               "stream": {"dir": str(tmp_path), "seed": 0, "clips": int(stream.order.size), "hours": figs["hours"],
                          "keywords": 4, "subset": None},
               "models": [{"name": "openWakeWord fake", "kind": "openwakeword", "threshold_source": "default",
                           "source": "fake", "cpu_per_audio_s": 0.05, "figures": figs,
                           "costs": {"params": 10, "params_detail": {"head": 4, "frozen": 6}, "macs_per_second": 5.5e8}},
                          {"name": "kws-edge fake", "kind": "kws-edge", "threshold_source": "kws.threshold",
                           "source": "fake", "cpu_per_audio_s": 0.0005, "figures": figs,
                           "costs": {"params": 5, "params_detail": {"trained": 5}, "macs_per_second": 5.5e6}}]}
    md = anchor.tables_md(results)
    assert "| openWakeWord fake | 0.5 (default) | 4/4 | 100.0% | 0 | 0.0 |" in md
    assert "| kws-edge fake | 0.0005 | 0.01× | 5 | 5.5 | 0.01× |" in md


def test_one_line_errors(tmp_path, capsys, monkeypatch):
    export = ROOT / "exported" / "student.stream.onnx"  # a shipped "sheila" export
    rc = anchor.main(["--keyword", "sheila", "--no-openwakeword", "--model", str(export), "--real", str(tmp_path / "no")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "real dev set not found" in err[0]
    rc = anchor.main(["--keyword", "alexa", "--no-openwakeword", "--model", str(export), "--real", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "detects 'sheila'" in err[0]
    rc = anchor.main(["--keyword", "alexa", "--no-openwakeword"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nothing to score" in err[0]

    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openwakeword" else real_find_spec(name, *a))
    rc = anchor.main(["--keyword", "alexa", "--real", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "openwakeword is not installed: pip install --no-deps openwakeword==0.5.1" in err[0]


def test_run_scores_a_kws_edge_export_end_to_end(tmp_path):
    """The kws-edge path of the script: a (random-head) speech-embedding "alexa" export through
    runtime/detect.py on a made-up dev set; tables, JSON and the saved tracks agree."""
    import json

    import torch

    from kws_export.checkpoint import save_checkpoint
    from kws_export.embedding import EmbeddingConfig, EmbeddingKWS, count_parameters
    from kws_export.export_onnx import export_onnx_file

    real = tmp_path / "real"
    _tiny_dev_set(real)
    torch.manual_seed(0)
    model = EmbeddingKWS(EmbeddingConfig(keyword="alexa"))
    save_checkpoint(tmp_path / "alexa.pt", model, {"role": "teacher", "threshold": 0.5})
    export = tmp_path / "alexa.stream.onnx"
    export_onnx_file(tmp_path / "alexa.pt", export, streaming=True)
    md, js, npz = tmp_path / "t.md", tmp_path / "t.json", tmp_path / "t.npz"
    rc = anchor.main(["--keyword", "alexa", "--no-openwakeword", "--model", str(export), "--real", str(real),
                      "--out", str(md), "--json", str(js), "--save-probs", str(npz)])
    assert rc == 0
    res = json.loads(js.read_text())
    (m,) = res["models"]
    assert m["name"] == "kws-edge alexa.stream.onnx" and m["figures"]["keywords"] == 4
    p = count_parameters(model)
    assert m["costs"]["params"] == p["trained"] + p["frozen"]
    assert 0.5e9 < m["costs"]["macs_per_second"] < 0.6e9
    assert m["cpu_per_audio_s"] > 0
    tracks = np.load(npz)
    assert list(tracks["names"]) == [m["name"]]
    assert tracks["probs_0"].size == -(-int(round(res["stream"]["hours"] * 3600 * 16000)) // 1280)
    assert tracks["spans"].shape == (4, 2)
    text = md.read_text()
    assert f"| {m['name']} | 0.5 (its kws.threshold) |" in text and "| 0.9 |" in text


def test_two_stage_pair_is_timed_as_it_runs(tmp_path):
    """--two-stage: a tiny CRNN proposes, the embedding export confirms, through VerifiedDetector;
    its detections are the offline twin's on the two models' own tracks."""
    import json

    import torch

    from kws_export.checkpoint import save_checkpoint
    from kws_export.config import CRNNConfig
    from kws_export.embedding import EmbeddingConfig, EmbeddingKWS
    from kws_export.export_onnx import export_onnx_file
    from kws_export.model import CRNN
    from training.real import verified_events

    real = tmp_path / "real"
    _tiny_dev_set(real)
    torch.manual_seed(0)
    first = CRNN(CRNNConfig(channels=2, hidden=8, gru_layers=1, stride=(4, 8), keyword="alexa")).eval()
    save_checkpoint(tmp_path / "first.pt", first, {"threshold": 0.5})
    verifier = EmbeddingKWS(EmbeddingConfig(keyword="alexa")).eval()
    save_checkpoint(tmp_path / "verifier.pt", verifier, {"threshold": 0.5})
    paths = [tmp_path / "first.stream.onnx", tmp_path / "verifier.stream.onnx"]
    export_onnx_file(tmp_path / "first.pt", paths[0], streaming=True)
    export_onnx_file(tmp_path / "verifier.pt", paths[1], streaming=True)
    js, npz = tmp_path / "t.json", tmp_path / "t.npz"
    rc = anchor.main(["--keyword", "alexa", "--no-openwakeword", "--model", str(paths[0]), "--model", str(paths[1]),
                      "--two-stage", str(paths[0]), str(paths[1]), "--real", str(real), "--json", str(js),
                      "--save-probs", str(npz)])
    assert rc == 0
    one, two, pair = json.loads(js.read_text())["models"]
    assert pair["name"] == "kws-edge two-stage first.stream.onnx + verifier.stream.onnx"
    tracks = np.load(npz)
    steps, _, n = verified_events(tracks["probs_0"], tracks["probs_1"], 0.2, 0.5)
    own = pair["figures"]["own"]
    assert own["detections"] == len(steps) and own["threshold"] == 0.5 and n > 0
    assert pair["costs"]["params"] == one["costs"]["params"] + two["costs"]["params"]
    assert one["costs"]["macs_per_second"] < pair["costs"]["macs_per_second"] <= \
        one["costs"]["macs_per_second"] + two["costs"]["macs_per_second"] * max(1.0, pair["verifier_step_share"])
    assert pair["cpu_per_audio_s"] > 0


def test_gain_db_plays_the_same_stream_quieter(tmp_path, capsys):
    """--gain-db G: every model hears the stream scaled by G dB and clipped at full scale;
    the spans and the length stay the stream's own.  The fake model fires on loud chunks:
    the tones (mean |x| ~10,400 of 32,768) stop firing 12 dB down (~2,600 < 3,000)."""
    from training.real import build_stream, open_real

    _tiny_dev_set(tmp_path)
    dev = open_real(tmp_path, "alexa").load()
    stream = build_stream(dev, seed=0)
    quiet, loud = anchor.ScaledStream(stream, -12.0), anchor.ScaledStream(stream, 40.0)
    assert quiet.spans == stream.spans and quiet.samples == stream.samples and quiet.seconds == stream.seconds
    for a, b, c in zip(stream.pieces(dev, 7000), quiet.pieces(dev, 7000), loud.pieces(dev, 7000)):
        assert np.allclose(b, a * 10 ** (-12 / 20), atol=1e-7) and np.abs(c).max() <= 1.0
    as_is = anchor.model_figures(anchor.score_stream(dev, stream, anchor.OpenWakeWordStream(FakeOWW()))[0], stream, 0.08, 0.5)
    down = anchor.model_figures(anchor.score_stream(dev, quiet, anchor.OpenWakeWordStream(FakeOWW()))[0], quiet, 0.08, 0.5)
    assert as_is["own"]["hits"] == 4 and down["own"]["hits"] == 0 and down["keywords"] == 4
    rc = anchor.main(["--keyword", "alexa", "--no-openwakeword", "--model", str(ROOT / "exported" / "student.stream.onnx"),
                      "--real", str(tmp_path), "--gain-db", "-200"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--gain-db must be between -96 and 48 dB" in err[0]
