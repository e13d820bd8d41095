"""`kws-train eval`: clip metrics offline and in streaming mode, streaming detection on long
streams with inserted keywords, and the model's cost.

Two modes are measured because a deployed detector never resets its GRU:
* offline: each clip scored on its own (GRU from zero, centred frames) - the seminar's view;
* streaming: the clips of the split played back to back through the streaming reference
  (``CRNN.stream_reference``, the exported step's exact semantics), each clip scored by
  the step whose attention window ends with it; and long streams of speech and noise with
  keywords inserted, scored as events (recall, false alarms per hour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kws_export import streaming
from kws_export.model import CRNN
from training import macs
from training.metrics import au_fa_fr, choose_stream_threshold, frr_at_far, streaming_metrics
from training.train import ClipSet, predict_clips

STREAM_CHUNK_MINUTES = 5.0  # long streams are scored in independent 5-minute streams
QUIET_GAP_DBFS = -60.0  # the filler between back-to-back clips: quiet noise, not digital zeros


@dataclass
class LongStream:
    audio: np.ndarray  # float32 [samples]
    spans: list  # keyword (start_s, end_s)
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.audio.size / self.sample_rate


def step_seconds(model: CRNN) -> float:
    c = model.config
    return c.stride[1] * c.hop / c.sample_rate


@torch.no_grad()
def stream_probs(model: CRNN, audio: np.ndarray | torch.Tensor, device="cpu") -> np.ndarray:
    """Per-step keyword probabilities of one stream (or a batch [B, samples] of streams)."""
    model.eval()
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    batched = x.dim() == 2
    x = x if batched else x.unsqueeze(0)
    probs = model.stream_reference(x.to(device)).float().cpu().numpy()
    return probs if batched else probs[0]


class PieceStreamer:
    """Whole steps of a stream fed in pieces of any length (the StreamScorer of
    ``training.real``): ``process(samples)`` buffers what does not fill a step and returns the
    probabilities of the steps completed (``_steps`` computes them, carrying the model's
    state); ``flush()`` pads the buffered tail with silence to one whole step."""

    step_samples: int

    def process(self, samples) -> np.ndarray:
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._pending.size:
            x = np.concatenate([self._pending, x])
        steps = x.size // self.step_samples
        self._pending = x[steps * self.step_samples:].copy()
        if steps == 0:
            return np.zeros(0, np.float32)
        return self._steps(x[: steps * self.step_samples])

    def _steps(self, audio: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def flush(self) -> np.ndarray:
        if not self._pending.size:
            return np.zeros(0, np.float32)
        return self.process(np.zeros(self.step_samples - self._pending.size, np.float32))


class EmbeddingStreamer(PieceStreamer):
    """The speech-embedding model's streaming step over a stream fed in pieces (the
    StreamScorer of ``training.real``), never reset: the audio tail, the mel ring and the
    last embeddings are carried, so the probabilities equal ``EmbeddingKWS.stream`` (and the
    exported graph) while the embedding graph runs batched over each piece's steps."""

    def __init__(self, model):
        from kws_export.embedding import STEP_SAMPLES

        self.model = model.eval()
        self.step_samples = STEP_SAMPLES
        self.sample_rate = model.config.sample_rate
        self.step_seconds = STEP_SAMPLES / self.sample_rate
        self.threshold = None
        self.reset()

    def reset(self) -> None:
        from kws_export.embedding import EMBEDDING_DIM

        self._pending = np.zeros(0, np.float32)
        self._tail = None
        self._ring = None
        self._embs = np.zeros((self.model.config.n_embeddings - 1, EMBEDDING_DIM), np.float32)

    def _steps(self, audio: np.ndarray) -> np.ndarray:
        e, self._tail, self._ring = self.model.features().stream_embeddings(audio, self._tail, self._ring)
        probs = self.model.head_over(self._embs, e)
        self._embs = np.concatenate([self._embs, e])[-(self.model.config.n_embeddings - 1):]
        return probs


def streamer_for(model, device="cpu"):
    """The in-process streaming scorer of either model family."""
    from kws_export.embedding import EmbeddingKWS

    return EmbeddingStreamer(model) if isinstance(model, EmbeddingKWS) else CRNNStreamer(model, device)


class CRNNStreamer(PieceStreamer):
    """``stream_probs`` over a stream fed in pieces of any length, never reset: the audio
    before each piece, the GRU hidden state and the last W-1 attention entries are carried,
    so the per-step probabilities equal ``stream_probs`` of the whole concatenated stream
    (the exported step's semantics) while memory stays per piece (a 2 h stream would need
    GBs of frames at once).  The StreamScorer of ``training.real``: ``process(samples) ->
    probabilities of the steps completed``, ``flush()`` pads the tail with silence."""

    def __init__(self, model: CRNN, device="cpu"):
        self.model = model.to(device).eval()
        self.device = device
        self.spec = model.stream_spec()
        self.step_samples = self.spec.step_samples
        self.sample_rate = self.spec.sample_rate
        self.step_seconds = self.step_samples / self.sample_rate
        self.threshold = None  # a checkpoint's threshold lives in its metadata, not the model
        with torch.no_grad():
            self._p = {k: v.detach() for k, v in streaming.params(self.model).items()}
        self.reset()

    def reset(self) -> None:
        spec = self.spec
        self._pending = np.zeros(0, np.float32)
        self._tail = torch.zeros(1, spec.prefix_samples, device=self.device)
        self._h = None
        self._outs = torch.zeros(1, spec.window_steps - 1, spec.hidden, device=self.device)
        self._energy = torch.full((1, spec.window_steps - 1), streaming.ENERGY_FILL, device=self.device)
        if spec.level:  # the running level and the levelled frames the next conv column still needs
            start = streaming.init_state(spec)
            self._level = start["mel_level"].to(self.device)
            self._levelled_tail = start["mel_tail"].to(self.device)

    @torch.no_grad()
    def _steps(self, x: np.ndarray) -> np.ndarray:
        spec, p = self.spec, self._p
        audio = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)[None]
        buffer = torch.cat([self._tail, audio], dim=1)
        self._tail = buffer[:, buffer.shape[1] - spec.prefix_samples:]
        mel = streaming.logmel_buffer(buffer, p["dft.w1"], p["dft.t2"], p["dft.fb"], spec.hop)
        if spec.level:  # the buffer's first mel_tail frames were levelled by the previous piece
            new, self._level = streaming.level_stream(mel[:, :, spec.mel_tail:], self._level, p["level.rate"])
            mel = torch.cat([self._levelled_tail, new], dim=-1)
            self._levelled_tail = mel[:, :, mel.shape[-1] - spec.mel_tail:]
        feats = streaming.conv_features(mel, p["conv.0.weight"], p["conv.0.bias"], list(self.model.config.stride))
        outs, self._h = self.model.gru(feats, self._h)
        energy = streaming.attention_energy(outs, p)
        all_out = torch.cat([self._outs, outs], dim=1)
        all_energy = torch.cat([self._energy, energy], dim=1)
        w = spec.window_steps
        win_out = all_out.unfold(1, w, 1)                                # (1, steps, hidden, W)
        alpha = torch.softmax(all_energy.unfold(1, w, 1), dim=-1)        # (1, steps, W)
        context = torch.matmul(win_out, alpha.unsqueeze(-1)).squeeze(-1)
        keep = all_out.shape[1] - (w - 1)
        self._outs, self._energy = all_out[:, keep:], all_energy[:, keep:]
        return streaming.keyword_prob(context, p)[0].float().cpu().numpy()


# Clip metrics ------------------------------------------------------------------------------
def clip_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    frr, thr = frr_at_far(probs, labels, 0.01)
    return {"au_fa_fr": au_fa_fr(probs, labels), "frr_at_1pct_far": frr, "threshold_at_1pct_far": thr}


@torch.no_grad()
def streaming_clip_probs(model: CRNN, clips: ClipSet, n_streams: int = 8, seed: int = 0, device="cpu") -> torch.Tensor:
    """Score every clip in streaming mode: the clips (shuffled, seeded) are played back to
    back in ``n_streams`` parallel streams that never reset; each clip is padded with quiet
    noise up to a whole number of steps and scored by the step that ends with its segment
    (that step's attention window spans the clip)."""
    c = model.config
    step = c.stride[1] * c.hop
    seg = math.ceil(c.clip_samples / step) * step
    n = len(clips)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    n_streams = max(1, min(n_streams, n))
    per = math.ceil(n / n_streams)
    steps_per_seg = seg // step
    out = torch.empty(n)
    for s in range(n_streams):
        idx = order[s * per:(s + 1) * per]
        if idx.numel() == 0:
            continue
        audio = torch.randn(idx.numel(), seg, generator=g) * (10 ** (QUIET_GAP_DBFS / 20))
        audio[:, : c.clip_samples] = clips.batch(idx)
        probs = stream_probs(model, audio.reshape(1, -1), device)[0]
        ends = (torch.arange(idx.numel()) + 1) * steps_per_seg - 1
        out[idx] = torch.as_tensor(probs[ends.numpy()], dtype=torch.float32)
    return out


# Long streams --------------------------------------------------------------------------------
def build_streams(clips: ClipSet, minutes: float, seed: int, noises: list | None = None,
                  sample_rate: int = 16000, keyword_every_s: float = 20.0) -> list[LongStream]:
    """Long streams from the clips of one split (so test streams hold test voices only)."""
    from training.streams import make_stream

    streams = []
    total = minutes * 60.0
    k = 0
    waves = clips.waves.float().numpy() / 32768.0
    while total > 1e-6:
        dur = min(STREAM_CHUNK_MINUTES * 60.0, total)
        # short streams (tests, quick checks) still get a few keywords
        every = min(keyword_every_s, max(dur / 3.0, 2.0))
        audio, spans = make_stream((waves, clips.labels.numpy()), duration_s=dur, keyword_every_s=every,
                                   seed=seed * 1000 + k, noises=noises, sample_rate=sample_rate)
        streams.append(LongStream(np.asarray(audio, dtype=np.float32), [tuple(map(float, s)) for s in spans], sample_rate))
        total -= dur
        k += 1
    return streams


def score_streams(model: CRNN, streams: list[LongStream], threshold: float | None, refractory_s: float = 1.0,
                  device="cpu") -> tuple[float, dict]:
    """Streaming recall / false alarms per hour over several streams at ``threshold``
    (chosen by best event F1 when None).  Probabilities of all streams are concatenated
    with their spans shifted, which is exact because detections never straddle streams
    (each stream starts a new refractory period at its first step)."""
    dt = step_seconds(model)
    all_probs, all_spans, offset = [], [], 0.0
    for s in streams:
        p = stream_probs(model, s.audio, device)
        # pad each stream's track to the refractory period so events cannot merge across them
        pad = np.zeros(int(math.ceil(refractory_s / dt)) + 1)
        all_probs.append(np.concatenate([p, pad]))
        all_spans.extend((a + offset, b + offset) for a, b in s.spans)
        offset += (p.size + pad.size) * dt
    probs = np.concatenate(all_probs)
    duration = sum(s.seconds for s in streams)
    if threshold is None:
        threshold, _ = choose_stream_threshold(probs, all_spans, dt, refractory_s)
    score = streaming_metrics(probs, all_spans, dt, threshold, refractory_s, duration_s=duration)
    return float(threshold), score.as_dict()


# The whole evaluation -------------------------------------------------------------------------
def evaluate_model(model: CRNN, clips: ClipSet, streams: list[LongStream], threshold: float,
                   device="cpu", threshold_source: str = "") -> dict:
    model = model.to(device).eval()
    probs = predict_clips(model, clips, device=device)
    offline = clip_metrics(probs, clips.labels)
    s_probs = streaming_clip_probs(model, clips, device=device)
    streaming_clips = clip_metrics(s_probs, clips.labels)
    _, stream = score_streams(model, streams, threshold, device=device)
    costs = macs.model_costs(model.cpu())
    pos, neg = clips.counts()
    return {
        "split": clips.name,
        "clips": len(clips),
        "keyword_clips": pos,
        "au_fa_fr": offline["au_fa_fr"],
        "frr_at_1pct_far": offline["frr_at_1pct_far"],
        "au_fa_fr_streaming": streaming_clips["au_fa_fr"],
        "frr_at_1pct_far_streaming": streaming_clips["frr_at_1pct_far"],
        "params": costs["params"],
        "macs_per_second_network": costs["macs_per_second_network"],
        "macs_per_second_frontend": costs["macs_per_second_frontend"],
        "fp32_bytes": costs["fp32_bytes"],
        "int8_bytes": costs["int8_bytes"],
        "streaming_recall": stream["recall"],
        "false_alarms_per_hour": stream["false_alarms_per_hour"],
        "threshold": float(threshold),
        "threshold_source": threshold_source,
        "streaming": stream,
        "macs_per_second_frontend_export": costs["macs_per_second_frontend_export"],
        "costs": {k: v for k, v in costs.items()
                  if k not in ("params", "fp32_bytes", "int8_bytes", "macs_per_second_network",
                               "macs_per_second_frontend", "macs_per_second_frontend_export")},
    }


def recommend_threshold(model: CRNN, val_streams: list[LongStream], device="cpu") -> tuple[float, dict]:
    """The decision threshold stored in checkpoints (and copied into the ONNX): best event F1
    on validation streams (validation voices only), centre of the best plateau."""
    return score_streams(model, val_streams, None, device=device)
