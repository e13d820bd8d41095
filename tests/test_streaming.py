"""The PyTorch streaming mode: every piece against its offline twin, then the whole chain."""

import numpy as np
import pytest
import torch

from kws_export import streaming
from kws_export.config import CRNNConfig
from kws_export.errors import KWSError
from kws_export.frontend import LogMel
from kws_export.model import CRNN

SR = 16000


def signal(seconds: float, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Chirps and bursts over a noise floor that sweeps 60 dB: loud, quiet and near-silent
    frames, so the log-mel's whole range (down to its clamp) is exercised."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    out = []
    for _ in range(batch):
        x = 0.3 * np.sin(2 * np.pi * (150 + 2000 * ((t * rng.uniform(0.2, 0.5)) % 1)) * t)
        x *= (np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t) > 0.3)
        x += rng.standard_normal(n) * 10 ** np.linspace(-4, -1, n)
        out.append(x)
    return torch.tensor(np.stack(out), dtype=torch.float32)


def model(cfg: CRNNConfig, seed: int = 0) -> CRNN:
    torch.manual_seed(seed)
    return CRNN(cfg).eval()


def test_stream_spec_seminar_numbers():
    spec = streaming.stream_spec(CRNNConfig())
    assert (spec.step_samples, spec.audio_tail, spec.mel_tail, spec.window_steps) == (1280, 240, 12, 11)
    assert spec.prefix_samples == 2160
    assert streaming.stream_spec(CRNNConfig(), window_ms=480).window_steps == 6
    shapes = spec.state_shapes(1)
    assert list(shapes) == ["audio_tail", "mel_tail", "gru_h0", "gru_h1", "att_out", "att_energy"]
    assert shapes["mel_tail"] == (1, 40, 12) and shapes["att_out"] == (1, 11, 64)
    with pytest.raises(KWSError):
        streaming.stream_spec(CRNNConfig(kernel=(5, 4), stride=(2, 8)))
    with pytest.raises(KWSError):
        streaming.stream_spec(CRNNConfig(), window_ms=0)


def test_split_fft():
    assert streaming.split_fft(400, 160) == (20, 20)
    assert streaming.split_fft(512, 128) in {(32, 16), (16, 32)}
    assert streaming.split_fft(401, 160) == (401, 1)  # no factorization fits: dense DFT


def test_framing_chunks_equal_offline_frames():
    n_fft, hop, prefix = 400, 160, 2160
    audio = signal(2.0)[:, : 24 * 1280]
    whole = streaming.frames_of(streaming.stream_buffer(audio, prefix), n_fft, hop)
    tail = torch.zeros(1, n_fft - hop)
    got = []
    for i in range(24):
        buffer, tail = streaming.chunk_buffer(tail, audio[:, i * 1280:(i + 1) * 1280])
        frames = streaming.frames_of(buffer, n_fft, hop)
        assert frames.shape == (1, 8, n_fft)
        got.append(frames)
    # the offline stream also frames the 12 prefix frames the mel tail stands in for
    assert torch.equal(torch.cat(got, dim=1), whole[:, 12:])
    assert torch.equal(tail, audio[:, 24 * 1280 - 240: 24 * 1280])


def test_rfft_logmel_is_the_frontend_exactly():
    """The rfft log-mel (TorchScript's offline path) is LogMel's maths bit for bit."""
    lm = LogMel(CRNNConfig())
    audio = signal(1.0)
    frames = lm.frame(audio, center=True)
    assert torch.equal(streaming.logmel(frames, lm.window, lm.fb), lm(audio))


def test_mixed_radix_logmel_matches_rfft():
    """The streaming DFT (shared with ONNX) against torch.fft.rfft on the same frames.
    Two float32 DFTs only disagree in bins far below a frame's peak."""
    cfg = CRNNConfig()
    lm = LogMel(cfg)
    k = streaming.dft_kernels(cfg.n_fft, cfg.hop, lm.fb)
    buffer = streaming.stream_buffer(signal(3.0), 2160)
    got = streaming.logmel_buffer(buffer, k["dft.w1"], k["dft.t2"], k["dft.fb"], cfg.hop)
    want = streaming.logmel(streaming.frames_of(buffer, cfg.n_fft, cfg.hop), lm.window, lm.fb)
    assert got.shape == want.shape == (1, 40, (buffer.shape[1] - 400) // 160 + 1)
    diff = (got - want).abs()
    peak = want.amax(dim=1, keepdim=True)
    assert diff.max() < 2e-3
    assert diff[want > peak - 8].max() < 2e-5   # within ~35 dB of the frame's strongest band
    assert torch.equal(got[..., :12], torch.full_like(got[..., :12], streaming.SILENCE_LOGMEL))


def test_dense_fallback_logmel_matches_rfft():
    cfg = CRNNConfig(n_fft=401, hop=160)  # prime-ish n_fft: no factorization with N2 | hop
    lm = LogMel(cfg)
    k = streaming.dft_kernels(cfg.n_fft, cfg.hop, lm.fb)
    assert k["dft.w1"].shape == (2 * 401, 1, 401)
    buffer = signal(0.5)[:, :8000]
    got = streaming.logmel_buffer(buffer, k["dft.w1"], k["dft.t2"], k["dft.fb"], cfg.hop)
    want = streaming.logmel(streaming.frames_of(buffer, cfg.n_fft, cfg.hop), lm.window, lm.fb)
    diff = (got - want).abs()
    assert diff.max() < 2e-3 and diff[want > want.amax(dim=1, keepdim=True) - 8].max() < 5e-5


def test_mel_tail_and_conv_columns_equal_offline_conv(tiny_config):
    m = model(tiny_config)
    p = streaming.params(m)
    spec = m.stream_spec()
    audio = signal(3.0)[:, : 30 * 1280]
    mel = streaming.logmel_buffer(streaming.stream_buffer(audio, spec.prefix_samples), p["dft.w1"], p["dft.t2"], p["dft.fb"], spec.hop)
    with torch.no_grad():
        whole = streaming.conv_features(mel, p["conv.0.weight"], p["conv.0.bias"], [2, 8])
        tail = torch.full((1, 40, 12), streaming.SILENCE_LOGMEL)
        cols = []
        for t in range(30):
            new = mel[:, :, 12 + 8 * t: 20 + 8 * t]
            feats, tail = streaming.conv_columns(tail, new, p["conv.0.weight"], p["conv.0.bias"], [2, 8])
            assert feats.shape == (1, 1, tiny_config.gru_input)
            cols.append(feats)
            assert torch.equal(tail, mel[:, :, 8 + 8 * t: 20 + 8 * t])
    assert whole.shape[1] == 30
    assert (torch.cat(cols, dim=1) - whole).abs().max() < 1e-5
    # the initial mel tail is what the silent prefix produces
    assert torch.equal(mel[:, :, :12], torch.full((1, 40, 12), streaming.SILENCE_LOGMEL))


def test_gru_cells_equal_nn_gru():
    torch.manual_seed(3)
    gru = torch.nn.GRU(12, 10, num_layers=2, batch_first=True).eval()
    p = {f"gru.{n}": v for n, v in gru.named_parameters()}
    x = torch.randn(3, 50, 12)
    with torch.no_grad():
        want, h_n = gru(x)
        state = {"gru_h0": torch.zeros(3, 10), "gru_h1": torch.zeros(3, 10)}
        outs = [streaming.gru_step(x[:, t], state, p, 2) for t in range(50)]
    assert (torch.stack(outs, 1) - want).abs().max() < 1e-5
    assert (state["gru_h0"] - h_n[0]).abs().max() < 1e-5 and (state["gru_h1"] - h_n[1]).abs().max() < 1e-5


@pytest.mark.parametrize("window", [1, 4, 11])
def test_attention_ring_equals_windowed_attention(window):
    torch.manual_seed(window)
    outs, energies = torch.randn(2, 30, 6), 3 * torch.randn(2, 30)
    want = streaming.window_context(outs, energies, window)
    ring_out = torch.zeros(2, window, 6)
    ring_e = torch.full((2, window), streaming.ENERGY_FILL)
    for t in range(30):
        ring_out, ring_e = streaming.ring_push(ring_out, ring_e, outs[:, t], energies[:, t])
        got = streaming.ring_context(ring_out, ring_e)
        assert (got - want[:, t]).abs().max() < 1e-6
        # fewer than W outputs at the start: plain softmax attention over what there is
        lo = max(0, t - window + 1)
        alpha = torch.softmax(energies[:, lo:t + 1], dim=-1)
        assert (got - (outs[:, lo:t + 1] * alpha.unsqueeze(-1)).sum(1)).abs().max() < 1e-6


@pytest.mark.parametrize("cfg", [CRNNConfig(), CRNNConfig(channels=2, hidden=8, gru_layers=1),
                                 CRNNConfig(channels=2, hidden=8, gru_layers=1, level_norm_ms=800)],
                         ids=["seminar", "tiny", "levelled"])
def test_step_by_step_equals_reference_over_30s(cfg):
    m = model(cfg, seed=1)
    audio = signal(30.0, seed=2)
    with torch.no_grad():
        ref = m.stream_reference(audio)
        state = m.init_state()
        probs = []
        for t in range(ref.shape[1]):
            p, state = m.step(audio[:, t * 1280:(t + 1) * 1280], state)
            probs.append(p)
    assert ref.shape == (1, 375)
    assert (torch.cat(probs, 1) - ref).abs().max() <= 1e-5
    assert ref.std() > 0  # a live signal, not a constant


@pytest.mark.parametrize("layers", [1, 2])
def test_reference_outputs_are_the_streaming_gru_state(layers):
    """What a loss on the student's representation reads offline is the top GRU layer's
    state the streaming step carries, step for step."""
    m = model(CRNNConfig(channels=2, hidden=8, gru_layers=layers), seed=3)
    audio = signal(3.0, seed=4)
    with torch.no_grad():
        probs, outs = m.stream_reference_outputs(audio)
        assert torch.equal(probs, m.stream_reference(audio))
        assert outs.shape == (1, 37, 8)
        state = m.init_state()
        for t in range(outs.shape[1]):
            _, state = m.step(audio[:, t * 1280:(t + 1) * 1280], state)
            assert (state[f"gru_h{layers - 1}"] - outs[:, t]).abs().max() <= 1e-4
    empty_probs, empty_outs = m.stream_reference_outputs(audio[:, :1000])
    assert empty_probs.shape == (1, 0) and empty_outs.shape == (1, 0, 8)


def test_multi_step_chunks_and_window(tiny_config):
    m = model(tiny_config, seed=4)
    audio = signal(6.0, seed=5)
    with torch.no_grad():
        ref = m.stream_reference(audio, window_ms=480)
        state = m.init_state(window_ms=480)
        assert state["att_out"].shape == (1, 6, tiny_config.hidden)
        probs = []
        for i in range(0, 72, 3):
            p, state = m.step(audio[:, i * 1280:(i + 3) * 1280], state)
            assert p.shape == (1, 3)
            probs.append(p)
    assert (torch.cat(probs, 1) - ref[:, :72]).abs().max() <= 1e-5


def test_step_leaves_the_callers_state_alone(tiny_config):
    m = model(tiny_config)
    state = m.init_state()
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        _, new = m.step(signal(0.08), state)
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert not torch.equal(new["audio_tail"], state["audio_tail"])
    inits = m.stream_spec().state_inits()
    assert all(torch.all(before[k] == inits[k]) for k in before)


def test_stream_reference_is_batched_and_differentiable(tiny_config):
    m = model(tiny_config, seed=6).train()
    m.gru.dropout = 0.0
    audio = signal(4.0, seed=7, batch=3)
    ref = m.stream_reference(audio)
    assert ref.shape == (3, 50)
    single = torch.cat([m.stream_reference(audio[i:i + 1]) for i in range(3)])
    assert (ref - single).abs().max() < 1e-5
    ref.mean().backward()
    for name in ("conv.0.weight", "gru.weight_hh_l0", "attention.energy.0.weight", "classifier.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert m.stream_reference(audio[:, :1000]).shape == (3, 0)


def test_bad_chunks_are_one_line_errors(tiny_config):
    m = model(tiny_config)
    for bad in (torch.zeros(1, 1000), torch.zeros(1280), torch.zeros(1, 0)):
        with pytest.raises(KWSError, match="streaming chunk"):
            m.step(bad, m.init_state())


# Level normalisation (CRNNConfig.level_norm_ms) ---------------------------------------------
def running_level(mel: torch.Tensor, level: torch.Tensor, rate: float) -> torch.Tensor:
    """The definition, one frame at a time: level += a * (x - level); out = x - level."""
    out = []
    for t in range(mel.shape[-1]):
        level = level + rate * (mel[:, :, t] - level)
        out.append(mel[:, :, t] - level)
    return torch.stack(out, dim=-1)


@pytest.mark.parametrize("block", [1, 7, 64])
def test_level_blocks_equal_the_frame_by_frame_recurrence(block):
    cfg = CRNNConfig(level_norm_ms=300)
    mel = LogMel(cfg)(signal(3.0, seed=6, batch=2), center=False).double()
    start = torch.full(mel.shape[:2], streaming.SILENCE_LOGMEL, dtype=torch.float64)
    want = running_level(mel, start, cfg.level_rate)
    rate = torch.tensor(cfg.level_rate, dtype=torch.float64)
    levelled, last = streaming.level_stream(mel, start, rate, block=block)
    assert (levelled - want).abs().max() < 1e-9
    assert (last - (mel[:, :, -1] - want[:, :, -1])).abs().max() < 1e-9  # the level after the last frame
    # the step's one product per call carries its level on exactly
    levelled, level = streaming.level_block(mel[:, :, :40], start, rate)
    rest, _ = streaming.level_block(mel[:, :, 40:], level, rate)
    assert (torch.cat([levelled, rest], -1) - want).abs().max() < 1e-9
    assert abs(cfg.level_rate - (1 - np.exp(-10 / 300))) < 1e-12
    # a clip alone: the same recurrence, started at the clip's per-bin mean
    clip = mel[:, :, :101]
    want_clip = running_level(clip, clip.mean(-1), cfg.level_rate)
    assert (streaming.level_clip(clip, rate) - want_clip).abs().max() < 1e-9


def test_levelled_state_starts_as_silence_heard_against_silence():
    spec = streaming.stream_spec(CRNNConfig(channels=2, hidden=8, gru_layers=1, level_norm_ms=500))
    state = streaming.init_state(spec, batch=3)
    assert state["mel_level"].shape == (3, 40) and torch.all(state["mel_level"] == streaming.SILENCE_LOGMEL)
    assert torch.all(state["mel_tail"] == 0.0)
    assert "mel_level" not in streaming.init_state(streaming.stream_spec(CRNNConfig()))
    with pytest.raises(KWSError, match="level_norm_ms"):
        CRNNConfig(level_norm_ms=-1)
    assert "level_norm_ms" not in CRNNConfig().to_dict()  # off: the seminar's dict, as before
    assert CRNNConfig.from_dict(CRNNConfig(level_norm_ms=500).to_dict()).level_norm_ms == 500


@pytest.mark.parametrize("gain", [0.05, 4.0])
def test_a_levelled_model_does_not_hear_the_recording_gain(gain):
    """A gain is one shift of every log-mel bin; the running level takes it out once it has
    settled (here after 3 s, 15 time constants; the clamp at silence is the one place it cannot)."""
    audio = signal(8.0, seed=7) + 1e-3 * torch.randn(1, 8 * SR)  # no bin at the clamp
    levelled = model(CRNNConfig(channels=2, hidden=8, gru_layers=1, level_norm_ms=200), seed=5)
    plain = model(CRNNConfig(channels=2, hidden=8, gru_layers=1), seed=5)
    with torch.no_grad():
        def moved(m):
            return (m.stream_reference(audio * gain) - m.stream_reference(audio))[:, 38:].abs().max()
        assert moved(levelled) < 1e-4
        assert moved(plain) > 1e-2  # the same weights without the level hear it
        clip = audio[:, :SR]
        assert (levelled.keyword_prob(clip * gain) - levelled.keyword_prob(clip)).abs().max() < 1e-5
