"""TorchScript export.

Offline: ``torch.jit.load(path)(chunk)`` maps a waveform batch (batch, samples) — or one
waveform (samples,) — to P(keyword) (batch,): a drop-in for the course's ``stream.py``.
Streaming: the scripted module has ``init_state(batch)`` and ``step(chunk, state)``
(also its ``forward``), running exactly kws_export/streaming.py.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from kws_export import streaming
from kws_export.errors import KWSError
from kws_export.fileio import atomic_output
from kws_export.model import CRNN
from kws_export.streaming import StreamSpec


class OfflineProb(nn.Module):
    """The offline clip model (centred frames, GRU from zero) returning P(keyword)."""

    def __init__(self, model: CRNN):
        super().__init__()
        self.n_fft = model.config.n_fft
        self.hop = model.config.hop
        self.register_buffer("window", model.frontend.window.detach().clone())
        self.register_buffer("fb", model.frontend.fb.detach().clone())
        self.level = model.config.level_norm_ms > 0
        self.register_buffer("level_rate", torch.tensor(model.config.level_rate, dtype=torch.float32))
        self.conv = model.conv
        self.gru = model.gru
        self.attention = model.attention
        self.classifier = model.classifier

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
        # LogMel.forward(center=True), spelled with scriptable pieces
        padded = torch.nn.functional.pad(x.unsqueeze(1), (self.n_fft // 2, self.n_fft // 2), mode="reflect").squeeze(1)
        logmel = streaming.logmel(padded.unfold(-1, self.n_fft, self.hop), self.window, self.fb)
        if self.level:
            logmel = streaming.level_clip(logmel, self.level_rate)
        feats = self.conv(logmel.unsqueeze(1)).transpose(-1, -2)
        out, _ = self.gru(feats)
        context, _ = self.attention(out)
        return torch.softmax(self.classifier(context), dim=-1)[:, 1]


def _shape(dims: List[int]) -> str:
    """A shape as Python prints a tuple: (1, 8), (5,)."""
    if len(dims) == 1:
        return "({},)".format(dims[0])
    return "(" + ", ".join([str(d) for d in dims]) + ")"


class StreamingStep(nn.Module):
    """``init_state`` / ``step`` of docs/streaming.md with the model's weights baked in."""

    def __init__(self, model: CRNN, spec: StreamSpec):
        super().__init__()
        cfg = model.config
        self.p: Dict[str, Tensor] = {k: v.detach().clone() for k, v in streaming.params(model).items()}
        self.n_fft = cfg.n_fft
        self.hop = cfg.hop
        self.stride: List[int] = list(cfg.stride)
        self.layers = cfg.gru_layers
        self.step_samples = spec.step_samples
        self.sample_rate = cfg.sample_rate
        inits = spec.state_inits()
        shapes = spec.state_shapes(1)
        self.state_names: List[str] = list(shapes)
        self.state_shapes: List[List[int]] = [list(shapes[n][1:]) for n in shapes]
        self.state_inits: List[float] = [float(inits[n]) for n in shapes]

    @torch.jit.export
    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        state: Dict[str, Tensor] = {}
        for name, shape, init in zip(self.state_names, self.state_shapes, self.state_inits):
            state[name] = torch.full([batch] + shape, init, dtype=torch.float32)
        return state

    @torch.jit.export
    def check(self, chunk: Tensor, state: Dict[str, Tensor]) -> str:
        """What is wrong with ``chunk`` or ``state`` in one line (the eager model's words), or
        "" when ``step`` can take them.  The attention ring's length (dim 1 of att_*) is the
        window the state was made with."""
        if chunk.dim() != 2 or chunk.shape[-1] == 0 or chunk.shape[-1] % self.step_samples != 0:
            return "a streaming chunk must be (batch, k * {}) samples, got {}".format(self.step_samples, _shape(chunk.shape))
        window = -1
        if "att_energy" in state and state["att_energy"].dim() == 2:
            window = state["att_energy"].shape[1]
        for name, shape in zip(self.state_names, self.state_shapes):
            want = [chunk.shape[0]] + shape
            if name.startswith("att_") and window >= 0:
                want[1] = window
            if name not in state:
                return "streaming state is missing {} (expected shape {})".format(name, _shape(want))
            got = state[name].shape
            if got != want:
                return "streaming state {} has shape {}, expected {}".format(name, _shape(got), _shape(want))
        return ""

    @torch.jit.export
    def step(self, chunk: Tensor, state: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        problem = self.check(chunk, state)
        if problem != "":
            # TorchScript prefixes its interpreter traceback; the error's last line is this one
            # (``checked_step`` raises it alone)
            raise ValueError(problem)
        return streaming.step(chunk, state, self.p, self.n_fft, self.hop, self.stride, self.layers)

    def forward(self, chunk: Tensor, state: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        return self.step(chunk, state)


def script_module(model: CRNN, streaming_mode: bool = False, window_ms: float | None = None) -> torch.jit.ScriptModule:
    model = model.eval()
    module = StreamingStep(model, model.stream_spec(window_ms)) if streaming_mode else OfflineProb(model)
    with warnings.catch_warnings():  # torch 2.13 marks jit as deprecated; the course still ships it
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module.eval())


def export_torchscript(model: CRNN, path: str | Path, streaming_mode: bool = False, window_ms: float | None = None) -> None:
    if window_ms is not None and not streaming_mode:
        raise KWSError("--window-ms applies to --streaming exports only")
    scripted = script_module(model, streaming_mode, window_ms)
    # Serialise in memory first: torch's file writer aborts the process (C++ terminate) when
    # the disk fills up, while a plain Python write raises an OSError we can report.
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    from kws_export.fileio import check_readable

    p = check_readable(path, "TorchScript file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise KWSError(f"{p}: not a loadable TorchScript file ({first})") from None


def is_streaming(module: torch.jit.ScriptModule) -> bool:
    return hasattr(module, "init_state") and hasattr(module, "step")


def checked_step(module: torch.jit.ScriptModule, chunk: Tensor, state: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
    """``module.step(chunk, state)`` of a streaming TorchScript file, a wrong chunk or state
    refused with a one-line KWSError naming it.  (A scripted ``raise`` reaches Python as
    ``torch.jit.Error`` with the interpreter's traceback before the message; files made
    before ``check`` existed are reduced to that message too.)"""
    if hasattr(module, "check"):
        problem = module.check(chunk, state)
        if problem:
            raise KWSError(problem)
    try:
        return module.step(chunk, state)
    except torch.jit.Error as exc:
        raise KWSError(interpreter_message(exc)) from None


def interpreter_message(exc: BaseException) -> str:
    """The one line a TorchScript error is about: its last line, less the exception's type."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    head, sep, rest = last.partition(": ")
    return rest if sep and head.replace(".", "").replace("_", "").isalnum() and head.split(".")[-1].endswith(("Error", "Exception")) else last
