import json
import pickle
import subprocess

import pytest
import torch

from conftest import venv_bin
from course_fixtures import SeminarCRNN, make_course_torchscript
from kws_export.checkpoint import load_checkpoint, save_checkpoint
from kws_export.config import CRNNConfig
from kws_export.errors import KWSError
from kws_export.model import CRNN


def run_cli(*args):
    return subprocess.run([venv_bin("kws-export"), *map(str, args)], capture_output=True, text=True)


def test_native_round_trip(tmp_path):
    torch.manual_seed(0)
    model = CRNN(CRNNConfig(channels=4, hidden=16, keyword="marvin")).eval()
    path = tmp_path / "s.pt"
    save_checkpoint(path, model, {"metrics": {"au_fa_fr": 1e-4}, "parent_teacher": "t.pt"})
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "kws-edge" and ckpt.config == model.config
    assert ckpt.metadata["keyword"] == "marvin" and ckpt.metadata["metrics"]["au_fa_fr"] == 1e-4
    x = torch.randn(2, 16000)
    assert torch.equal(ckpt.build_model()(x), model(x))
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == 1 and set(raw) >= {"config", "state_dict", "metadata"}


def test_seminar_state_dict_inferred(tmp_path):
    seminar = SeminarCRNN(channels=4, hidden=16)
    path = tmp_path / "seminar.pth"
    torch.save(seminar.state_dict(), path)
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "seminar-state-dict"
    assert (ckpt.config.channels, ckpt.config.hidden, ckpt.config.gru_layers) == (4, 16, 2)
    assert ckpt.config.kernel == (5, 20) and ckpt.config.stride == (2, 8) and ckpt.config.n_mels == 40
    # The stride is not in the weights: an override is taken as given.
    assert load_checkpoint(path, stride=(2, 4)).config.stride == (2, 4)


def test_wrapped_state_dict(tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"model_state_dict": SeminarCRNN().state_dict(), "epoch": 3}, path)
    assert load_checkpoint(path).config == CRNNConfig()


def test_course_torchscript(tmp_path):
    path = tmp_path / "course.ts"
    module = make_course_torchscript(path, SeminarCRNN(channels=4, hidden=16, layers=1))
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "course-torchscript"
    assert ckpt.config.channels == 4 and ckpt.config.gru_layers == 1
    x = torch.randn(2, 16000) * 0.1
    ours = ckpt.build_model().keyword_prob(x)
    assert torch.allclose(ours, module(x), atol=1e-5)


def test_course_torchscript_with_other_frontend_is_refused(tmp_path):
    path = tmp_path / "course8k.ts"
    make_course_torchscript(path, sample_rate=8000)
    with pytest.raises(KWSError, match="mel filterbank"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.pt", b"", "empty"),
        ("random.pt", bytes(range(256)) * 8, "not a readable checkpoint"),
        ("text.pt", b"hello, I am not a checkpoint\n", "not a readable checkpoint"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(KWSError, match=message):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "t.pt"
    save_checkpoint(path, CRNN(CRNNConfig(channels=2, hidden=8)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KWSError, match="t.pt"):
        load_checkpoint(path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(KWSError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(KWSError, match="directory"):
        load_checkpoint(tmp_path)


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED','w').write('x')",))


def test_code_running_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil()}, path, pickle_protocol=2)
    with pytest.raises(KWSError, match="evil.pt"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    path2 = tmp_path / "evil.pkl"
    path2.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(KWSError):
        load_checkpoint(path2)
    assert not (tmp_path / "PWNED").exists()


def test_other_architecture(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(KWSError, match="another architecture"):
        load_checkpoint(path)
    sd = SeminarCRNN().state_dict()
    sd["attention.energy.0.weight"] = torch.zeros(5, 5)
    torch.save(sd, path)
    with pytest.raises(KWSError, match="another architecture"):
        load_checkpoint(path)


def test_cli_info_all_kinds(tmp_path):
    native = tmp_path / "n.pt"
    save_checkpoint(native, CRNN(CRNNConfig(channels=4, hidden=16)), {"creation_command": "test"})
    bare = tmp_path / "b.pth"
    torch.save(SeminarCRNN().state_dict(), bare)
    ts = tmp_path / "c.ts"
    make_course_torchscript(ts)
    for path, kind, params in ((native, "kws-edge", None), (bare, "seminar-state-dict", 70443), (ts, "course-torchscript", 70443)):
        res = run_cli("info", path)
        assert res.returncode == 0, res.stderr
        info = json.loads(res.stdout)
        assert info["kind"] == kind and "config" in info and "metadata" in info
        if params:
            assert info["params"] == params


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    for path in (bad, tmp_path / "missing.pt", tmp_path):
        res = run_cli("info", path)
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr and str(path) in lines[0]
    assert run_cli("--help").returncode == 0
