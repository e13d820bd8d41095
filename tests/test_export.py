"""ONNX (offline and streaming) and TorchScript exports against PyTorch, metadata, CLI."""

import hashlib
import json
import subprocess

import numpy as np
import onnx
import pytest
import torch

from conftest import venv_bin
from course_fixtures import SeminarCRNN, make_course_torchscript
from kws_export.checkpoint import save_checkpoint
from kws_export.cli import cli
from kws_export.cli_support import run_click
from kws_export.config import CRNNConfig
from kws_export.export_onnx import export_onnx_file
from kws_export.export_torchscript import export_torchscript, load_torchscript
from kws_export.model import CRNN
from kws_export.onnx_info import describe_onnx, kws_metadata
from kws_export.quantize import run_stream, session
from test_streaming import signal

REQUIRED = ("kws.format_version", "kws.keyword", "kws.sample_rate", "kws.chunk_samples", "kws.step_samples",
            "kws.window_ms", "kws.threshold", "kws.states", "kws.source_sha256", "kws.model_card")


def make_ckpt(path, cfg, seed=0, metadata=None):
    torch.manual_seed(seed)
    model = CRNN(cfg).eval()
    save_checkpoint(path, model, metadata)
    return model


def kws(*args):
    """The kws-export CLI in-process: (exit code)."""
    return run_click(cli, "kws-export", [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    model = make_ckpt(d / "tiny.pt", CRNNConfig(channels=2, hidden=8, gru_layers=2),
                      metadata={"threshold": 0.37, "metrics": {"au_fa_fr": 0.001}, "data_recipe": {"corpus": "synth"}})
    export_onnx_file(d / "tiny.pt", d / "tiny.stream.onnx", streaming=True)
    export_onnx_file(d / "tiny.pt", d / "tiny.onnx")
    return d, model


LEVELLED = CRNNConfig(channels=2, hidden=8, gru_layers=1, level_norm_ms=800)


@pytest.mark.parametrize("cfg", [CRNNConfig(), CRNNConfig(channels=2, hidden=8, gru_layers=1), LEVELLED],
                         ids=["seminar", "tiny", "levelled"])
@pytest.mark.parametrize("chunk_ms", [None, 240])
def test_streaming_onnx_equals_pytorch_step(tmp_path, cfg, chunk_ms):
    model = make_ckpt(tmp_path / "m.pt", cfg, seed=1)
    desc = export_onnx_file(tmp_path / "m.pt", tmp_path / "m.stream.onnx", streaming=True, chunk_ms=chunk_ms)
    k = 1 if chunk_ms is None else 3
    assert desc["inputs"]["audio"] == [1, 1280 * k] and desc["outputs"]["prob"] == [k]
    audio = signal(10.0, seed=3)
    got = run_stream(session(tmp_path / "m.stream.onnx"), audio[0].numpy())
    with torch.no_grad():
        state, want = model.init_state(), []
        for t in range(len(got)):
            p, state = model.step(audio[:, t * 1280:(t + 1) * 1280], state)
            want.append(p[0].numpy())
    assert len(got) == 125 - 125 % k
    assert np.abs(got - np.concatenate(want)).max() <= 1e-5
    assert "GRU" not in {n.op_type for n in onnx.load(str(tmp_path / "m.stream.onnx")).graph.node}


def test_streaming_graph_contract_and_metadata(tiny):
    d, model = tiny
    proto = onnx.load(str(d / "tiny.stream.onnx"))
    meta = kws_metadata(proto)
    assert all(k in meta for k in REQUIRED)
    assert meta["kws.chunk_samples"] == meta["kws.step_samples"] == 1280
    assert meta["kws.keyword"] == "sheila" and meta["kws.sample_rate"] == 16000
    assert meta["kws.threshold"] == 0.37            # from the checkpoint's metadata
    assert meta["kws.window_ms"] == 880.0 and meta["kws.format_version"] == 1
    assert meta["kws.source_sha256"] == hashlib.sha256((d / "tiny.pt").read_bytes()).hexdigest()
    card = meta["kws.model_card"]
    assert card["metrics"] == {"au_fa_fr": 0.001} and card["data"] == {"corpus": "synth"}
    states = meta["kws.states"]
    assert [s["name"] for s in states] == ["audio_tail", "mel_tail", "gru_h0", "gru_h1", "att_out", "att_energy"]
    inputs = {i.name: [x.dim_value for x in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    outputs = {o.name: [x.dim_value for x in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert inputs.pop("audio") == [1, 1280] and outputs.pop("prob") == [1]
    assert inputs == {s["name"]: s["shape"] for s in states}
    assert outputs == {s["name"] + "_next": s["shape"] for s in states}
    inits = {s["name"]: s["init"] for s in states}
    assert inits["mel_tail"] == pytest.approx(np.log(np.float32(1e-9)), abs=1e-6) and inits["att_energy"] == -1e4
    # the in-graph frontend keeps the file small: no initializer anywhere near a DFT matrix
    assert max(np.prod(t.dims) for t in proto.graph.initializer) <= max(p.numel() for p in model.parameters())


def test_offline_onnx_equals_pytorch_dynamic_shapes(tiny):
    d, model = tiny
    sess = session(d / "tiny.onnx")
    for batch, samples in ((1, 16000), (3, 12345), (2, 4000)):
        x = signal(samples / 16000, seed=batch, batch=batch)[:, :samples]
        with torch.no_grad():
            want = model.keyword_prob(x).numpy()
        got = sess.run(["prob"], {"audio": x.numpy()})[0]
        assert got.shape == (batch,)
        assert np.abs(got - want).max() <= 1e-5
    assert kws_metadata(onnx.load(str(d / "tiny.onnx")))["kws.graph"] == "offline"


def test_levelled_model_exports_offline_torchscript_and_stream(tmp_path):
    """A levelled model (CRNNConfig.level_norm_ms) through every export: the offline graphs
    subtract the clip's per-bin mean, the streaming ones carry the running level as state."""
    model = make_ckpt(tmp_path / "m.pt", LEVELLED, seed=2)
    export_onnx_file(tmp_path / "m.pt", tmp_path / "m.onnx")
    export_torchscript(model, tmp_path / "m.ts")
    export_torchscript(model, tmp_path / "s.ts", streaming_mode=True)
    x = signal(1.3, seed=3, batch=2)
    with torch.no_grad():
        want = model.keyword_prob(x)
        assert torch.equal(torch.jit.load(str(tmp_path / "m.ts"))(x), want)
        got = session(tmp_path / "m.onnx").run(["prob"], {"audio": x.numpy()})[0]
        assert np.abs(got - want.numpy()).max() <= 1e-5
        # the clip model does not hear the gain either
        assert np.abs(session(tmp_path / "m.onnx").run(["prob"], {"audio": 3 * x.numpy()})[0] - got).max() <= 1e-5
        module = load_torchscript(tmp_path / "s.ts")
        state = module.init_state(1)
        assert state["mel_level"].shape == (1, 40)
        audio = signal(4.0, seed=4)
        steps = []
        for t in range(0, 30, 3):
            p, state = module.step(audio[:, t * 1280:(t + 3) * 1280], state)
            steps.append(p)
        assert (torch.cat(steps, 1) - model.stream_reference(audio)[:, :30]).abs().max() <= 1e-5
    export_onnx_file(tmp_path / "m.pt", tmp_path / "m.stream.onnx", streaming=True)
    states = {s["name"]: s for s in kws_metadata(onnx.load(str(tmp_path / "m.stream.onnx")))["kws.states"]}
    assert states["mel_level"]["shape"] == [1, 40] and states["mel_tail"]["init"] == 0.0


def test_course_torchscript_to_onnx(tmp_path):
    src = tmp_path / "course.ts"
    course = make_course_torchscript(src, SeminarCRNN(channels=4, hidden=16, layers=1))
    export_onnx_file(src, tmp_path / "course.onnx")
    export_onnx_file(src, tmp_path / "course.stream.onnx", streaming=True)
    x = signal(1.0, seed=9, batch=3)
    with torch.no_grad():
        want = course(x).numpy()
    got = session(tmp_path / "course.onnx").run(["prob"], {"audio": x.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-4
    assert kws_metadata(onnx.load(str(tmp_path / "course.stream.onnx")))["kws.model_card"]["source_kind"] == "course-torchscript"


def test_torchscript_offline_is_a_stream_py_drop_in(tiny, tmp_path):
    _, model = tiny
    export_torchscript(model, tmp_path / "m.ts")
    module = torch.jit.load(str(tmp_path / "m.ts"))
    x = signal(1.0, seed=4, batch=2)
    with torch.no_grad():
        assert torch.equal(module(x), model.keyword_prob(x))
        assert module(x[0]).shape == (1,)


def test_torchscript_streaming_step(tiny, tmp_path):
    _, model = tiny
    export_torchscript(model, tmp_path / "s.ts", streaming_mode=True, window_ms=480)
    module = load_torchscript(tmp_path / "s.ts")
    audio = signal(3.0, seed=5)
    with torch.no_grad():
        state = module.init_state(1)
        assert state["att_out"].shape == (1, 6, 8)
        got = []
        for t in range(0, 36, 2):
            p, state = module.step(audio[:, t * 1280:(t + 2) * 1280], state)
            got.append(p)
        want = model.stream_reference(audio, window_ms=480)[:, :36]
    assert (torch.cat(got, 1) - want).abs().max() <= 1e-5


def test_window_and_opset_options(tiny):
    d, model = tiny
    out = d / "w.stream.onnx"
    desc = export_onnx_file(d / "tiny.pt", out, streaming=True, window_ms=480, opset=21)
    assert desc["opset"] == 21 and desc["inputs"]["att_energy"] == [1, 6]
    audio = signal(3.0, seed=6)
    got = run_stream(session(out), audio[0].numpy())
    with torch.no_grad():
        want = model.stream_reference(audio, window_ms=480)[0].numpy()
    assert np.abs(got - want).max() <= 1e-5


def test_cli_exports_and_info(tiny, tmp_path, capsys):
    d, _ = tiny
    assert kws("onnx", "--ckpt", d / "tiny.pt", "-o", tmp_path / "a.stream.onnx", "--streaming", "--chunk-ms", 160) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["outputs"]["prob"] == [2] and desc["metadata"]["kws.chunk_samples"] == 2560
    assert kws("torchscript", "--ckpt", d / "tiny.pt", "-o", tmp_path / "a.ts") == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "torchscript"
    assert kws("info", d / "tiny.stream.onnx") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantized_nodes"] == info["int8_products"] == 0
    assert info["metadata"]["kws.states"][0]["name"] == "audio_tail"


@pytest.mark.parametrize("args, message", [
    (["--streaming", "--chunk-ms", "100"], "not a positive multiple"),
    (["--int8"], "add --streaming"),
    (["--opset", "16"], "opset 16"),
    (["--window-ms", "500"], "--streaming exports only"),
])
def test_cli_bad_options_are_one_line_errors(tiny, tmp_path, capsys, args, message):
    d, _ = tiny
    out = tmp_path / "x.onnx"
    assert kws("onnx", "--ckpt", d / "tiny.pt", "-o", out, *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_unwritable_and_missing_paths(tiny, tmp_path):
    d, _ = tiny
    cases = [
        ["onnx", "--ckpt", d / "tiny.pt", "-o", tmp_path / "no" / "such" / "dir.onnx"],
        ["onnx", "--ckpt", tmp_path / "missing.pt", "-o", tmp_path / "m.onnx"],
        ["torchscript", "--ckpt", d / "tiny.pt", "-o", tmp_path],
    ]
    for args in cases:
        r = subprocess.run([venv_bin("kws-export"), *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == []


def test_verify_bad_input_is_one_line(tiny, tmp_path, capsys):
    d, _ = tiny
    assert kws("verify", "--ckpt", d / "tiny.pt", "--onnx", tmp_path / "missing.onnx") == 2
    assert kws("verify", "--ckpt", d / "tiny.pt") == 2
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert kws("verify", "--ckpt", d / "tiny.pt", "--onnx", tmp_path / "junk.onnx", "--only") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "not found" in err[0] and "nothing to verify" in err[1] and "junk.onnx" in err[2]


def test_failed_export_keeps_the_old_file(tiny, tmp_path):
    d, _ = tiny
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"old")
    assert kws("onnx", "--ckpt", d / "tiny.pt", "-o", out, "--opset", "99") == 2
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["keep.onnx"]


def test_describe_reports_size_and_nodes(tiny):
    d, _ = tiny
    desc = describe_onnx(d / "tiny.stream.onnx")
    assert desc["nodes"] > 0 and desc["size_bytes"] == (d / "tiny.stream.onnx").stat().st_size
