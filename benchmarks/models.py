"""Which models are benchmarked, and their exports.

The set: ``--ckpt`` files when given, else every shipped ``checkpoints/*.pt``, else two
random-weight development models (the seminar-size teacher and a student-size CRNN; speed,
memory and size do not depend on the weight values).  The baseline that ratios are taken
against is the CRNN teacher: the CRNN checkpoint named exactly "teacher" (``teacher.pt``),
else the CRNN whose metadata says ``role: teacher``, else whose file name starts with
"teacher", else the first CRNN (a set of speech-embedding checkpoints only: the first one).

A speech-embedding checkpoint (``kws_export.embedding``: openWakeWord's frozen mel and
embedding graphs + a trained head) has a streaming fp32 ONNX export only (static int8,
offline ONNX and TorchScript are refused for it by design, scripts/export_all.py), so only
that file is made and benchmarked for it; it keeps its own role and is never a student.

Exports are made with the same functions ``kws-export`` runs.  A shipped export in
``exported/`` (``NAME.stream.onnx``, ``.stream.int8.onnx``, ``.stream.int8w.onnx``) is used instead when its
``kws.source_sha256`` is the checkpoint's, so the numbers are those of the shipped file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kws_export.checkpoint import load_checkpoint, save_checkpoint
from kws_export.config import FAST_CHUNK_MS, CRNNConfig
from kws_export.errors import KWSError
from kws_export.fileio import sha256_file
from kws_export.model import CRNN

from kws_export.embedding import EmbeddingKWS

DEV_CONFIGS = {
    "teacher": CRNNConfig(),
    "student": CRNNConfig(channels=4, hidden=16, gru_layers=1),
}
# What every model is exported to; the ONNX ones are the runtime's inputs.
EXPORTS = ("stream_ts", "offline_ts", "onnx_fp32", "onnx_int8", "onnx_int8w")
SHIPPED_SUFFIX = {"onnx_fp32": ".stream.onnx", "onnx_int8": ".stream.int8.onnx", "onnx_int8w": ".stream.int8w.onnx"}
# Audio per call of each ONNX export (None: one step); the int8-weights file is exported as shipped
CHUNK_MS = {"onnx_fp32": None, "onnx_int8": None, "onnx_int8w": FAST_CHUNK_MS}
# What a speech-embedding checkpoint is exported to (scripts/export_all.py EMBEDDING_SUFFIXES)
EMBEDDING_EXPORTS = ("onnx_fp32",)


@dataclass
class BenchModel:
    name: str
    ckpt: Path
    role: str                     # "teacher" or "student" (an embedding model: its own role)
    origin: str                   # "shipped", "given" or "random weights"
    model: CRNN | EmbeddingKWS
    metadata: dict
    exports: dict[str, Path] = field(default_factory=dict)
    export_origin: dict[str, str] = field(default_factory=dict)  # "exported/ (shipped)" or "fresh"

    @property
    def config(self) -> CRNNConfig:
        return self.model.config

    @property
    def is_embedding(self) -> bool:
        return isinstance(self.model, EmbeddingKWS)


def dev_checkpoints(work: Path, seed: int = 0) -> list[Path]:
    """Random-weight teacher and student checkpoints, saved like trained ones."""
    paths = []
    for role, cfg in DEV_CONFIGS.items():
        torch.manual_seed(seed)
        path = work / f"{role}.pt"
        save_checkpoint(path, CRNN(cfg).eval(), {"role": role, "name": f"{role} (random weights)"})
        paths.append(path)
    return paths


def _role(path: Path, metadata: dict) -> str | None:
    role = str(metadata.get("role", "")).lower()
    if role in ("teacher", "student"):
        return role
    if path.name.lower().startswith("teacher"):
        return "teacher"
    if path.name.lower().startswith("student"):
        return "student"
    return None


def load_models(paths: list[Path], origin: str) -> list[BenchModel]:
    """Load every checkpoint; the teacher (see the module doc) comes first."""
    if not paths:
        raise KWSError("no checkpoints to benchmark")
    models, seen = [], set()
    for path in paths:
        ckpt = load_checkpoint(path)
        name = path.name[:-3] if path.name.endswith(".pt") else path.stem
        if name in seen:
            raise KWSError(f"{path}: two checkpoints named {name!r}; give them different file names")
        seen.add(name)
        models.append(BenchModel(name, path, _role(path, ckpt.metadata) or "", origin, ckpt.build_model(), ckpt.metadata))
    teacher = baseline(models)
    for m in models:
        if m.is_embedding and m is not teacher:
            m.role = m.role or "teacher"  # never a student: the int8 targets are not its
        else:
            m.role = "teacher" if m is teacher else "student"
    models.remove(teacher)
    models.insert(0, teacher)
    rates = {m.config.sample_rate for m in models}
    if len(rates) > 1:
        raise KWSError(f"the checkpoints have different sample rates {sorted(rates)}: benchmark them separately")
    return models


def baseline(models: list[BenchModel]) -> BenchModel:
    """The model ratios are taken against (see the module doc)."""
    crnn = [m for m in models if not m.is_embedding]
    return (next((m for m in crnn if m.name == "teacher"), None)
            or next((m for m in crnn if m.role == "teacher"), None)
            or (crnn[0] if crnn else models[0]))


def _shipped_export(m: BenchModel, exported_dir: Path, kind: str, sha: str) -> Path | None:
    path = exported_dir / (m.name + SHIPPED_SUFFIX[kind])
    if not path.is_file():
        return None
    from kws_export.onnx_info import kws_metadata, load_onnx_model

    try:
        meta = kws_metadata(load_onnx_model(path))
    except KWSError:
        return None
    if m.is_embedding:
        steps = 1  # one 80 ms step per call, always
    else:
        from kws_export.export_onnx import stream_layout

        steps = stream_layout(m.config, CHUNK_MS[kind]).steps_per_call
    if meta.get("kws.source_sha256") != sha or int(meta.get("kws.steps_per_call", 1)) != steps:
        return None  # stale (made from another checkpoint) or another chunk: export afresh
    return path


def export_model(m: BenchModel, work: Path, exported_dir: Path | None, calib: Path | None) -> None:
    """Fill ``m.exports``: streaming and offline TorchScript, streaming ONNX fp32 and int8
    (a speech-embedding model: its streaming fp32 ONNX only)."""
    from kws_export.export_onnx import export_onnx_file
    from kws_export.export_torchscript import export_torchscript
    from training.speech import SYNTHESIZED

    sha = sha256_file(m.ckpt)
    for kind in (EMBEDDING_EXPORTS if m.is_embedding else EXPORTS):
        shipped = _shipped_export(m, exported_dir, kind, sha) if exported_dir and kind in SHIPPED_SUFFIX else None
        if shipped is not None:
            m.exports[kind], m.export_origin[kind] = shipped, "shipped"
            continue
        out = work / f"{m.name}.{kind}{'.ts' if kind.endswith('_ts') else '.onnx'}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind.endswith("_ts"):
                export_torchscript(m.model, out, streaming_mode=(kind == "stream_ts"))
            elif kind == "onnx_int8w":
                export_onnx_file(m.ckpt, out, streaming=True, int8=True, int8_mode="weights", chunk_ms=CHUNK_MS[kind])
            else:
                int8 = kind == "onnx_int8"
                export_onnx_file(m.ckpt, out, streaming=True, int8=int8, calib=str(calib) if int8 and calib else None,
                                 speech=SYNTHESIZED if int8 else None)
        m.exports[kind], m.export_origin[kind] = out, "fresh"


def export_chunked_int8(m: BenchModel, work: Path, chunk_ms: float, calib: Path | None) -> Path:
    """The int8 streaming export with several steps per call (``--chunk-ms``)."""
    from kws_export.export_onnx import export_onnx_file
    from training.speech import SYNTHESIZED

    out = work / f"{m.name}.int8.chunk{int(chunk_ms)}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx_file(m.ckpt, out, streaming=True, int8=True, chunk_ms=chunk_ms, calib=str(calib) if calib else None,
                         speech=SYNTHESIZED)
    return out


def shown_path(path: Path, root: Path) -> str:
    """Repository files relative to the repository; anything else (temporary exports) by name."""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return Path(path).name


def summary(m: BenchModel) -> str:
    cfg = m.config
    if m.is_embedding:
        head = f"a {cfg.hidden}-unit hidden layer" if cfg.hidden else "a linear head"
        return f"speech embedding: frozen mel + embedding graphs, {head} over {cfg.n_embeddings} embeddings"
    return f"channels {cfg.channels}, hidden {cfg.hidden}, {cfg.gru_layers} GRU layer{'s' if cfg.gru_layers > 1 else ''}"


def describe(m: BenchModel, root: Path) -> dict:
    cfg = m.config
    return {
        "name": m.name, "checkpoint": shown_path(m.ckpt, root), "role": m.role, "origin": m.origin,
        "arch": "embedding" if m.is_embedding else "crnn",
        "config": cfg.to_dict(),
        "summary": summary(m),
        "status": str(m.metadata.get("training", {}).get("status", "")) if isinstance(m.metadata.get("training"), dict) else "",
        "exports": {k: shown_path(v, root) for k, v in m.exports.items()},
        "export_origin": dict(m.export_origin),
    }

