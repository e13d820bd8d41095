"""One checkpoint format, and a loader that also reads the course's files.

Native format: ``torch.save`` of a dict
    {"format": "kws-edge", "format_version": 1, "config": {...},
     "state_dict": {...}, "metadata": {...}}
Also read: a bare seminar state dict (config inferred from tensor shapes) and a
TorchScript module in the course's deployment shape (``m`` = CRNN, ``spec.melspec`` =
torchaudio MelSpectrogram).  Pickles are always loaded with ``weights_only=True``.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kws_export.config import CRNNConfig
from kws_export.embedding import EmbeddingConfig, EmbeddingKWS, embedded_graphs, is_embedding_config
from kws_export.errors import KWSError
from kws_export.fileio import atomic_output, check_readable
from kws_export.frontend import LogMel
from kws_export.model import CRNN

FORMAT = "kws-edge"
FORMAT_VERSION = 1
# Wrappers students commonly save a state dict under.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass
class Checkpoint:
    config: CRNNConfig | EmbeddingConfig
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: str = "kws-edge"  # or "seminar-state-dict", "course-torchscript"

    @property
    def is_embedding(self) -> bool:
        """The speech-embedding model (kws_export.embedding), not the seminar CRNN."""
        return isinstance(self.config, EmbeddingConfig)

    def build_model(self) -> CRNN | EmbeddingKWS:
        if self.is_embedding:
            model = EmbeddingKWS(self.config, embedded_graphs(self.state_dict))
        else:
            model = CRNN(self.config)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()


def save_checkpoint(path: str | Path, model: CRNN | EmbeddingKWS, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` in the native format, atomically."""
    meta = {"keyword": model.config.keyword, **(metadata or {})}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": meta,
    }
    with atomic_output(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as exc:  # torch's zip writer turns a failed write (disk full, ...) into this
            raise KWSError(f"{path}: cannot write checkpoint ({_first_line(exc)})") from None


def load_checkpoint(path: str | Path, stride: tuple[int, int] | None = None) -> Checkpoint:
    """Read any supported checkpoint kind; every failure is a one-line KWSError."""
    p = check_readable(path, "checkpoint")
    if _is_torchscript(p):
        ckpt = _load_torchscript(p, stride)
    else:
        ckpt = _from_object(p, _torch_load(p), stride)
    _check_builds(p, ckpt)
    return ckpt


# Native and state-dict files -------------------------------------------------------------
def _sniff(p: Path) -> None:
    """Refuse files that are neither PyTorch's zip format nor a binary pickle: torch.load
    would read them as a pickle and fail with e.g. "Unsupported operand 31"."""
    with open(p, "rb") as f:
        head = f.read(64)
    if zipfile.is_zipfile(p) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return
    if head[:4] == b"RIFF":
        looks = "; it looks like a wav file"
    elif p.suffix.lower() == ".onnx":
        looks = "; it looks like an ONNX model"
    elif all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        looks = "; it looks like a text file"
    else:
        looks = ""
    raise KWSError(f"{p}: not a readable checkpoint (neither a PyTorch file nor a pickle{looks})")


def _torch_load(p: Path) -> Any:
    _sniff(p)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text:
            raise KWSError(f"{p}: not a readable checkpoint ({_first_line(exc)})") from None
        # torch's message is a page of advice to load unsafely; keep only what it refused.
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global|\.?\s*Please|\n|$)", text)
        what = found.group(1).strip() if found else "objects other than tensors and plain values"
        raise KWSError(f"{p}: refused: the safe loader (weights_only) does not load this pickle ({what}); "
                       "a checkpoint must hold only tensors and plain values") from None
    except Exception as exc:
        raise KWSError(f"{p}: not a readable checkpoint ({_first_line(exc)})") from None


def _from_object(p: Path, obj: Any, stride: tuple[int, int] | None) -> Checkpoint:
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise KWSError(f"{p}: checkpoint format version {version!r} is newer than this kws-edge reads ({FORMAT_VERSION})")
        missing = [k for k in ("config", "state_dict") if not isinstance(obj.get(k), dict)]
        if missing:
            raise KWSError(f"{p}: checkpoint is missing {', '.join(missing)}")
        if is_embedding_config(obj["config"]):
            return Checkpoint(EmbeddingConfig.from_dict(obj["config"]), dict(obj["state_dict"]),
                              dict(obj.get("metadata") or {}), "kws-edge")
        config = CRNNConfig.from_dict(obj["config"])
        if stride is not None:
            config = config.replace(stride=tuple(stride))
        return Checkpoint(config, dict(obj["state_dict"]), dict(obj.get("metadata") or {}), "kws-edge")
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict) and _looks_like_state_dict(obj[key]):
                obj = obj[key]
                break
    if isinstance(obj, dict) and _looks_like_state_dict(obj):
        config = infer_config(obj, stride, source=p)
        meta = {"keyword": config.keyword, "source_format": "seminar-state-dict"}
        return Checkpoint(config, dict(obj), meta, "seminar-state-dict")
    raise KWSError(f"{p}: not a kws-edge checkpoint or a CRNN state dict")


def _looks_like_state_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def infer_config(sd: dict[str, torch.Tensor], stride: tuple[int, int] | None = None, source: Path | str = "checkpoint") -> CRNNConfig:
    """Recover a CRNNConfig from seminar tensor shapes.

    The conv stride is not stored in the weights: it defaults to the seminar's (2, 8).
    n_mels is ambiguous by up to stride-1 bins; the seminar's 40 wins when consistent.
    """
    required = ("conv.0.weight", "gru.weight_ih_l0", "gru.weight_hh_l0", "classifier.weight")
    missing = [k for k in required if k not in sd]
    if missing:
        raise KWSError(f"{source}: checkpoint of another architecture (missing {', '.join(missing)})")
    if any(k.endswith("_reverse") for k in sd):
        raise KWSError(f"{source}: bidirectional GRU checkpoints are not supported (streaming needs a causal GRU)")
    w = sd["conv.0.weight"]
    if w.dim() != 4 or w.shape[1] != 1:
        raise KWSError(f"{source}: checkpoint of another architecture (conv.0.weight has shape {tuple(w.shape)})")
    channels, _, kf, kt = (int(s) for s in w.shape)
    hidden = int(sd["gru.weight_hh_l0"].shape[1])
    gru_in = int(sd["gru.weight_ih_l0"].shape[1])
    layers = len([k for k in sd if re.fullmatch(r"gru\.weight_ih_l\d+", k)])
    stride = tuple(stride) if stride is not None else CRNNConfig.stride
    if gru_in % channels:
        raise KWSError(f"{source}: checkpoint of another architecture (GRU input {gru_in} is not a multiple of {channels} conv channels)")
    conv_freq = gru_in // channels
    default_mels = CRNNConfig.n_mels
    if (default_mels - kf) // stride[0] + 1 == conv_freq:
        n_mels = default_mels
    else:
        n_mels = (conv_freq - 1) * stride[0] + kf
    return CRNNConfig(
        n_mels=n_mels, channels=channels, kernel=(kf, kt), stride=stride, hidden=hidden,
        gru_layers=layers, num_classes=int(sd["classifier.weight"].shape[0]),
    )


# Course-shaped TorchScript ------------------------------------------------------------------
def _is_torchscript(p: Path) -> bool:
    if not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(re.search(r"(^|/)code/", n) for n in names) and any(n.endswith("constants.pkl") for n in names)


def _load_torchscript(p: Path, stride: tuple[int, int] | None) -> Checkpoint:
    try:
        with warnings.catch_warnings():  # torch 2.13 marks jit as deprecated; the course still ships it
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:
        raise KWSError(f"{p}: not a loadable TorchScript file ({_first_line(exc)})") from None
    sd = {k: v.detach().clone() for k, v in module.state_dict().items()}
    conv_keys = [k for k in sd if k.endswith("conv.0.weight")]
    if len(conv_keys) != 1:
        raise KWSError(f"{p}: TorchScript module does not hold one seminar CRNN (found {len(conv_keys)} conv.0.weight tensors)")
    prefix = conv_keys[0][: -len("conv.0.weight")]
    crnn_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and "melspec" not in k}
    config = infer_config(crnn_sd, stride, source=p)
    window = _find_buffer(sd, "spectrogram.window", p)
    fb = _find_buffer(sd, "mel_scale.fb", p)
    config = config.replace(n_fft=int(window.numel()), n_mels=int(fb.shape[1]))
    ours = LogMel(config)
    if window.shape != ours.window.shape or not torch.allclose(window.float(), ours.window, atol=1e-6):
        raise KWSError(f"{p}: its STFT window differs from the periodic Hann window of length {config.n_fft} this frontend uses")
    if fb.shape != ours.fb.shape or not torch.allclose(fb.float(), ours.fb, atol=1e-5):
        raise KWSError(
            f"{p}: its mel filterbank {tuple(fb.shape)} differs from the HTK filterbank this frontend computes "
            f"{tuple(ours.fb.shape)} (other sample rate, f_min/f_max or mel scale?)"
        )
    meta = {"keyword": config.keyword, "source_format": "course-torchscript", "torchscript_prefix": prefix.rstrip(".")}
    return Checkpoint(config, crnn_sd, meta, "course-torchscript")


def _find_buffer(sd: dict[str, torch.Tensor], suffix: str, p: Path) -> torch.Tensor:
    hits = [v for k, v in sd.items() if k.endswith(suffix)]
    if len(hits) != 1:
        raise KWSError(f"{p}: TorchScript module has no torchaudio MelSpectrogram buffer '{suffix}'")
    return hits[0]


def _check_builds(p: Path, ckpt: Checkpoint) -> None:
    """Name the offending tensors instead of torch's multi-line load_state_dict error."""
    got = ckpt.state_dict
    if ckpt.is_embedding:
        try:
            expected = EmbeddingKWS(ckpt.config, embedded_graphs(got)).state_dict()
        except KWSError as exc:
            raise KWSError(f"{p}: {exc}") from None
    else:
        expected = CRNN(ckpt.config).state_dict()
    problems = []
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing:
        problems.append("missing " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else ""))
    for k in expected:
        if k in got and tuple(got[k].shape) != tuple(expected[k].shape):
            problems.append(f"{k} has shape {tuple(got[k].shape)}, config expects {tuple(expected[k].shape)}")
            break
    if problems:
        raise KWSError(f"{p}: checkpoint of another architecture ({'; '.join(problems)})")
    bad = [k for k, v in got.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise KWSError(f"{p}: checkpoint holds NaN or Inf in {bad[0]}")


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()  # no terminal colour codes
    return (text[0] if text else type(exc).__name__)[:300]


