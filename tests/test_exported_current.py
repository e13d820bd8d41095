"""exported/ is current: every shipped checkpoint has its four exports, made from exactly
that checkpoint (kws.source_sha256), and re-exporting gives the same outputs."""

import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

from conftest import ROOT
from kws_export.checkpoint import save_checkpoint
from kws_export.config import CRNNConfig
from kws_export.model import CRNN
from kws_export.onnx_info import kws_metadata
from kws_export.quantize import run_stream, session
from test_streaming import signal

sys.path.insert(0, str(ROOT / "scripts"))
import export_all  # noqa: E402

SHIPPED = sorted((ROOT / "checkpoints").glob("*.pt"))


def stale_reasons(ckpt: Path, exported: Path, scratch: Path) -> list[str]:
    """Why exported/NAME.* do not match checkpoints/NAME.pt (empty: they are current)."""
    name = ckpt.stem
    suffixes = export_all.suffixes_of(ckpt)
    files = {s: exported / f"{name}{s}" for s in suffixes}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        return [f"missing {', '.join(missing)}"]
    reasons = []
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    for s in (s for s in suffixes if s.endswith(".onnx")):
        if kws_metadata(onnx.load(str(files[s])))["kws.source_sha256"] != sha:
            reasons.append(f"{files[s].name} was exported from another version of {ckpt.name}")
    fresh = dict(zip(suffixes, export_all.export_one(ckpt, scratch)))
    audio = signal(4.0, seed=11)[0].numpy()
    clips = signal(1.0, seed=12, batch=2).numpy()
    for s in (s for s in suffixes if ".stream" in s):
        old, new = run_stream(session(files[s]), audio), run_stream(session(fresh[s]), audio)
        if old.shape != new.shape or np.abs(old - new).max() > 1e-6:
            reasons.append(f"{files[s].name} gives other outputs than a fresh export")
    if suffixes == export_all.EMBEDDING_SUFFIXES:
        return reasons
    old, new = (session(p).run(["prob"], {"audio": clips})[0] for p in (files[".onnx"], fresh[".onnx"]))
    if old.shape != new.shape or np.abs(old - new).max() > 1e-6:
        reasons.append(f"{files['.onnx'].name} gives other outputs than a fresh export")
    with torch.no_grad():
        old, new = (torch.jit.load(str(p))(torch.from_numpy(clips)) for p in (files[".ts"], fresh[".ts"]))
    if old.shape != new.shape or (old - new).abs().max() > 1e-6:
        reasons.append(f"{files['.ts'].name} gives other outputs than a fresh export")
    return reasons


def test_shipped_exports_are_current(tmp_path):
    problems = {}
    for ckpt in SHIPPED:
        scratch = tmp_path / ckpt.stem
        scratch.mkdir()
        reasons = stale_reasons(ckpt, ROOT / "exported", scratch)
        if reasons:
            problems[ckpt.name] = reasons
    assert problems == {}, f"run `make export`: {problems}"


def test_no_orphan_exports():
    names = {c.stem for c in SHIPPED}
    exported = ROOT / "exported"
    orphans = []
    for p in sorted(exported.iterdir()) if exported.is_dir() else []:
        stems = [p.name[: -len(s)] for s in sorted(export_all.SUFFIXES, key=len, reverse=True) if p.name.endswith(s)]
        if stems and stems[0] not in names:
            orphans.append(p.name)
    assert orphans == [], "exports without a checkpoint (delete them or ship the checkpoint)"


def test_export_all_regenerates_and_the_check_catches_stale_files(tmp_path, capsys):
    ckpts, out, scratch = tmp_path / "checkpoints", tmp_path / "exported", tmp_path / "scratch"
    for d in (ckpts, out, scratch):
        d.mkdir()
    torch.manual_seed(0)
    model = CRNN(CRNNConfig(channels=2, hidden=8, gru_layers=1)).eval()
    save_checkpoint(ckpts / "tiny.pt", model, {"threshold": 0.4})
    assert export_all.main(["--checkpoints", str(ckpts), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"tiny{s}" for s in export_all.SUFFIXES)
    assert "tiny.pt ->" in capsys.readouterr().out
    assert stale_reasons(ckpts / "tiny.pt", out, scratch) == []
    # a retrained checkpoint makes the old exports stale, and the check says so
    with torch.no_grad():
        model.classifier.bias[1] += 0.5
    save_checkpoint(ckpts / "tiny.pt", model, {"threshold": 0.4})
    (tmp_path / "scratch2").mkdir()
    reasons = stale_reasons(ckpts / "tiny.pt", out, tmp_path / "scratch2")
    assert any("another version" in r for r in reasons) and any("other outputs" in r for r in reasons)


def test_export_all_verifies_an_embedding_checkpoint(tmp_path, capsys):
    """`make export --verify` on a speech-embedding checkpoint: one streaming file, no
    TorchScript, and the verification runs on what exists (it used to index a missing file)."""
    from kws_export.embedding import EmbeddingConfig, EmbeddingKWS

    ckpts, out = tmp_path / "checkpoints", tmp_path / "exported"
    ckpts.mkdir()
    torch.manual_seed(0)
    save_checkpoint(ckpts / "emb.pt", EmbeddingKWS(EmbeddingConfig()).eval(), {"role": "teacher", "threshold": 0.5})
    assert export_all.main(["--checkpoints", str(ckpts), "--out", str(out), "--verify"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["emb.stream.onnx"]
    assert "verify emb: ok" in capsys.readouterr().out


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_shipped_files_name_no_absolute_path():
    """What ships names the dev set where any clone finds it (../shared/real), never a folder
    of the machine that measured it."""
    from kws_export.checkpoint import load_checkpoint

    found = {}
    for ckpt in SHIPPED:
        bad = [s for s in _strings(load_checkpoint(ckpt).metadata) if s.startswith("/") and s.count("/") > 1]
        if bad:
            found[ckpt.name] = bad[:3]
    for path in sorted((ROOT / "exported").glob("*.onnx")):
        bad = [s for s in _strings(kws_metadata(onnx.load(str(path)))) if s.startswith("/") and s.count("/") > 1]
        if bad:
            found[path.name] = bad[:3]
    assert found == {}


def test_shipped_student_int8_files_fit_20_kb():
    """The issue's size target for the student's int8 streaming files (model card included:
    an export carries the card's headline, the checkpoint the full record)."""
    from kws_export.checkpoint import load_checkpoint

    students = [c for c in SHIPPED if load_checkpoint(c).metadata.get("role") == "student"]
    assert students
    sizes = {f"{c.stem}{s}": (ROOT / "exported" / f"{c.stem}{s}").stat().st_size
             for c in students for s in (".stream.int8.onnx", ".stream.int8w.onnx")}
    assert all(n <= 20_000 for n in sizes.values()), sizes


def test_export_all_errors_are_one_line(tmp_path, capsys):
    assert export_all.main(["--checkpoints", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint directory not found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert export_all.main(["--checkpoints", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert not any((tmp_path / "out").glob("bad*"))


def test_export_all_unknown_name(tmp_path, capsys):
    (tmp_path / "a.pt").write_bytes(b"x")
    assert export_all.main(["--checkpoints", str(tmp_path), "--only", "missing"]) == 2
    assert "no checkpoint named missing" in capsys.readouterr().err
