"""The speech-embedding model: openWakeWord's features, the streaming step against its
offline twin, the checkpoint, the streaming ONNX export through the runtime, head training."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from kws_export.checkpoint import load_checkpoint, save_checkpoint
from kws_export.embedding import (
    CONTEXT_SAMPLES, EMBEDDING_DIM, GRAPHS, MEL_WINDOW, STEP_SAMPLES, EmbeddingConfig, EmbeddingKWS, Features,
    find_graphs,
)
from kws_export.errors import KWSError
from kws_export.export_onnx import export_onnx_file


@pytest.fixture(scope="module")
def graphs():
    return find_graphs()


@pytest.fixture(scope="module")
def model(graphs):
    torch.manual_seed(0)
    m = EmbeddingKWS(EmbeddingConfig(), graphs)
    torch.nn.init.normal_(m.head[1].weight, std=0.02)
    return m.eval()


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts and tones at one level (within the mel graph's 80 dB floor everywhere)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t)
    x = env * (0.05 * rng.standard_normal(t.size) + 0.1 * np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * t)) * t))
    return x.astype(np.float32)


def test_graphs_are_the_pinned_ones(graphs):
    import hashlib

    assert {k: hashlib.sha256(v).hexdigest() for k, v in graphs.items()} == GRAPHS


def test_clip_embeddings_cover_the_stream_aligned_window(graphs):
    f = Features(graphs)
    cfg = EmbeddingConfig()
    assert cfg.clip_samples == 31840
    x = speechlike(2.5)
    e = f.clip_embeddings(x)
    assert e.shape == (16, EMBEDDING_DIM)
    # A short clip is left-padded with zeros: the same as padding it by hand.
    short = x[:16000]
    padded = np.concatenate([np.zeros(cfg.clip_samples - 16000, np.float32), short])
    np.testing.assert_array_equal(f.clip_embeddings(short), f.clip_embeddings(padded))
    # Only the last clip_samples count.
    np.testing.assert_array_equal(f.clip_embeddings(x), f.clip_embeddings(x[-cfg.clip_samples:]))


def test_step_equals_its_offline_twin(model):
    """Streaming mel ring and embedding ring equal the clip-mode mel and embeddings of the
    audio so far (the only difference, the per-call 80 dB floor, does not bite at one level)."""
    f = model.features()
    x = speechlike(3.2, seed=1)
    state = model.init_state()
    before = {k: v.copy() for k, v in state.items()}
    p, new = model.step(x[:STEP_SAMPLES], state)
    for k in state:  # the given state is not modified
        np.testing.assert_array_equal(state[k], before[k])
    state = new
    for i in range(1, len(x) // STEP_SAMPLES):
        p, state = model.step(x[i * STEP_SAMPLES:(i + 1) * STEP_SAMPLES], state)
    n = len(x) // STEP_SAMPLES * STEP_SAMPLES
    np.testing.assert_array_equal(state["audio_tail"][0], x[n - CONTEXT_SAMPLES:n])
    clip_mel = f.melspec(np.concatenate([np.zeros(CONTEXT_SAMPLES, np.float32), x[:n]]))
    np.testing.assert_allclose(state["mel_ring"][0], clip_mel[-MEL_WINDOW - 0:][:MEL_WINDOW], atol=1e-4)
    clip = f.clip_embeddings(x[:n])
    np.testing.assert_allclose(state["emb_ring"][0], clip, atol=2e-4, rtol=1e-5)
    with torch.no_grad():
        want = float(torch.sigmoid(model(torch.from_numpy(clip[None]))))
    assert abs(p - want) < 1e-4


def test_step_refuses_a_wrong_chunk(model):
    with pytest.raises(KWSError, match="1280 samples"):
        model.step(np.zeros(1000, np.float32), model.init_state())


def test_checkpoint_round_trip_and_a_foreign_graph(model, tmp_path):
    path = tmp_path / "emb.pt"
    save_checkpoint(path, model, {"threshold": 0.7})
    ckpt = load_checkpoint(path)
    assert ckpt.is_embedding and ckpt.config == model.config
    again = ckpt.build_model()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 16, 96)).astype(np.float32))
    torch.testing.assert_close(again(x), model(x))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["graph_melspectrogram"] = torch.zeros(100, dtype=torch.uint8)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(KWSError) as err:
        load_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(err.value) and "melspectrogram" in str(err.value)


def test_streaming_export_runs_unchanged_in_the_runtime(model, tmp_path):
    from runtime.detect import Detector

    ckpt = tmp_path / "emb.pt"
    save_checkpoint(ckpt, model, {"threshold": 0.6})
    out = tmp_path / "emb.stream.onnx"
    export_onnx_file(ckpt, out, streaming=True)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["kws.graph"] == "streaming" and json.loads(meta["kws.threshold"]) == 0.6
    assert [s["name"] for s in json.loads(meta["kws.states"])] == ["audio_tail", "mel_ring", "emb_ring"]
    x = speechlike(4.0, seed=2)
    det = Detector(str(out))
    det.process(x)
    got = np.asarray(det.probs, dtype=np.float64)
    got = got[:, 1] if got.ndim == 2 else got
    want = model.stream(x)
    assert len(got) >= len(want) == len(x) // STEP_SAMPLES
    assert np.abs(got[:len(want)] - want).max() <= 1e-5


def test_export_refuses_what_the_embedding_model_cannot_be(model, tmp_path):
    ckpt = tmp_path / "emb.pt"
    save_checkpoint(ckpt, model)
    with pytest.raises(KWSError, match="streaming step only"):
        export_onnx_file(ckpt, tmp_path / "o.onnx")
    from training.speech import SYNTHESIZED

    with pytest.raises(KWSError, match="static int8"):
        export_onnx_file(ckpt, tmp_path / "o.onnx", streaming=True, int8=True, speech=SYNTHESIZED)
    with pytest.raises(KWSError, match="--chunk-ms"):
        export_onnx_file(ckpt, tmp_path / "o.onnx", streaming=True, chunk_ms=320)
    assert not (tmp_path / "o.onnx").exists()


def test_head_training_separates_what_the_embedding_hears(graphs):
    """Tiny but real: windows of a rising tone vs noise, through the frozen embedding."""
    from training.embedding_train import WindowRecipe, embed_windows, train_head

    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    tones = [(0.2 * np.sin(2 * np.pi * (400 + f * t) * t)).astype(np.float32) for f in rng.uniform(300, 600, 6)]
    noise = [(0.05 * rng.standard_normal(16000)).astype(np.float32) for _ in range(6)]
    clips = tones + noise
    labels = np.array([1] * 6 + [0] * 6)
    cfg = EmbeddingConfig()
    x, y = embed_windows(clips, labels, [], cfg, graphs, WindowRecipe(views=1, seed=0), None, workers=1)
    assert x.shape == (12, 16, 96) and list(y) == list(labels)
    m = EmbeddingKWS(cfg, graphs)
    hist = train_head(m, x, y, l2=0.01, negative_weight=1.0, iterations=50)
    assert hist[-1]["loss"] < hist[0]["loss"]
    again = EmbeddingKWS(cfg, graphs)
    train_head(again, x, y, l2=0.01, negative_weight=1.0, iterations=50)  # deterministic: the same head
    torch.testing.assert_close(again.head[1].weight, m.head[1].weight)
    with torch.no_grad():
        p = torch.sigmoid(m(torch.from_numpy(x.astype(np.float32)))).numpy()
    assert p[:6].min() > p[6:].max()


def test_batched_stream_embeddings_equal_the_step(model):
    x = speechlike(3.0, seed=3)
    f = model.features()
    e, tail, ring = f.stream_embeddings(x)
    assert e.shape == (len(x) // STEP_SAMPLES, EMBEDDING_DIM)
    want = model.stream(x)
    np.testing.assert_allclose(model.stream_from_embeddings(e), want, atol=1e-5)
    # In pieces, carrying the tail and the mel ring: the same embeddings.
    cut = 17 * STEP_SAMPLES
    e1, t1, r1 = f.stream_embeddings(x[:cut])
    e2, _, _ = f.stream_embeddings(x[cut:], t1, r1)
    np.testing.assert_allclose(np.concatenate([e1, e2]), e, atol=1e-5)


def test_in_process_streamer_equals_the_step_over_odd_pieces(model):
    from training.evaluate import EmbeddingStreamer, streamer_for

    x = speechlike(3.3, seed=4)
    s = streamer_for(model)
    assert isinstance(s, EmbeddingStreamer)
    got = np.concatenate([s.process(x[:5000]), s.process(x[5000:5001]), s.process(x[5001:]), s.flush()])
    want = model.stream(np.concatenate([x, np.zeros(-len(x) % STEP_SAMPLES, np.float32)]))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_real_clip_scorer_puts_the_clip_at_the_window_end(model):
    from training.real import clip_scorer_for, clip_windows

    scorer = clip_scorer_for(model)
    assert scorer.window_samples == 31840 and scorer.pad == "start"
    w = clip_windows(np.ones(16000, np.float32), scorer.window_samples, 1600, scorer.pad)
    assert w.shape == (1, 31840) and w[0, -16000:].min() == 1 and w[0, :-16000].max() == 0


def test_verify_reports_the_embedding_export_in_parity(model, tmp_path):
    from kws_export.verify import verify

    ckpt = tmp_path / "emb.pt"
    save_checkpoint(ckpt, model, {"threshold": 0.5})
    out = tmp_path / "emb.stream.onnx"
    export_onnx_file(ckpt, out, streaming=True)
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, speechlike(3.0, seed=5), 16000)
    report = verify(str(ckpt), [str(out)], wavs=[str(wav)])
    assert report["ok"] and len(report["pairs"]) == 1
    assert report["pairs"][0]["max_abs_diff"] <= 1e-5
