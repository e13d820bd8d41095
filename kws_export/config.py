"""Model configuration: one dataclass that fully describes a CRNN and its frontend."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from kws_export.errors import KWSError


@dataclass(frozen=True)
class CRNNConfig:
    """Defaults reproduce the DLA seminar model (70,443 parameters).

    ``kernel`` and ``stride`` are (mel, time), as in the seminar's Conv2d over a
    (batch, 1, n_mels, frames) input.  ``window_ms`` is the clip length the model was
    trained on; streaming attends over that many milliseconds of GRU outputs.

    ``level_norm_ms`` > 0 makes the conv see the log-mel minus its per-bin level, so a
    recording's gain (a constant shift of every log-mel bin) does not reach the network:
    streaming subtracts a running mean with that time constant (a state); a clip on its own
    starts that mean at its mean over frames.  0 (the seminar) feeds the log-mel as it is.
    """

    n_mels: int = 40
    channels: int = 8
    kernel: tuple[int, int] = (5, 20)
    stride: tuple[int, int] = (2, 8)
    hidden: int = 64
    gru_layers: int = 2
    keyword: str = "sheila"
    sample_rate: int = 16000
    window_ms: int = 1000
    n_fft: int = 400
    hop: int = 160
    dropout: float = 0.1
    num_classes: int = 2
    level_norm_ms: int = 0

    def __post_init__(self) -> None:
        # Accept lists (JSON, torch.load) but store tuples so configs hash and compare.
        object.__setattr__(self, "kernel", tuple(int(k) for k in self.kernel))
        object.__setattr__(self, "stride", tuple(int(s) for s in self.stride))
        problems = []
        if len(self.kernel) != 2 or len(self.stride) != 2:
            problems.append("kernel and stride must be (mel, time) pairs")
        elif self.kernel[0] > self.n_mels:
            problems.append(f"kernel height {self.kernel[0]} exceeds n_mels {self.n_mels}")
        for name in ("n_mels", "channels", "hidden", "gru_layers", "sample_rate", "n_fft", "hop", "window_ms"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive")
        if int(self.level_norm_ms) < 0:
            problems.append("level_norm_ms must be 0 (off) or positive")
        if problems:
            raise KWSError("invalid model config: " + "; ".join(problems))

    # Derived sizes -------------------------------------------------------------------
    @property
    def conv_freq(self) -> int:
        """Mel bins left after the conv: the GRU sees ``channels * conv_freq`` features."""
        return (self.n_mels - self.kernel[0]) // self.stride[0] + 1

    @property
    def gru_input(self) -> int:
        return self.channels * self.conv_freq

    @property
    def clip_samples(self) -> int:
        return self.sample_rate * self.window_ms // 1000

    @property
    def clip_frames(self) -> int:
        """Frames of a centred STFT over one clip (101 for 1 s)."""
        return self.clip_samples // self.hop + 1

    @property
    def level_rate(self) -> float:
        """Weight of the newest frame in the running per-bin level: 1 - exp(-hop / tau)."""
        return 1.0 - math.exp(-1000.0 * self.hop / (self.sample_rate * self.level_norm_ms)) if self.level_norm_ms else 0.0

    @property
    def clip_steps(self) -> int:
        """Conv time steps produced offline by one clip (11 for the seminar config)."""
        return (self.clip_frames - self.kernel[1]) // self.stride[1] + 1

    # Serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kernel"] = list(self.kernel)
        d["stride"] = list(self.stride)
        if not self.level_norm_ms:
            del d["level_norm_ms"]  # off: the dict (checkpoints, model cards) is the seminar's as before
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CRNNConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KWSError(f"invalid model config: unknown fields {unknown}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise KWSError(f"invalid model config: {exc}") from None

    def replace(self, **changes: Any) -> "CRNNConfig":
        return dataclasses.replace(self, **changes)


SEMINAR = CRNNConfig()
# Audio per call of the runtime's fast file (NAME.stream.int8w.onnx): four 80 ms steps per
# onnxruntime call cost fewer calls than one (benchmarks/results.md), at up to 240 ms latency.
FAST_CHUNK_MS = 320.0
