"""scripts/pi_check.py without QEMU: tolerances from metadata, reading detect.py's output,
the comparison, the table, exit codes, skips, the fake board description (fast)."""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.detect import write_probs

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("pi_check", ROOT / "scripts" / "pi_check.py")
pc = importlib.util.module_from_spec(spec)
sys.modules["pi_check"] = pc  # dataclasses look their module up
spec.loader.exec_module(pc)


# Tolerance from kws.quantization -----------------------------------------------------------------
def test_quantization_kind_from_metadata():
    static = {"activations": "uint8, per tensor", "format": "QDQ", "weights": "int8, per output channel"}
    weights = {"activations": "float32", "format": "int8 weights", "weights": "int8, symmetric"}
    assert pc.quantization_kind({}) == "fp32"
    assert pc.quantization_kind({"kws.quantization": json.dumps(static)}) == "static-int8"
    assert pc.quantization_kind({"kws.quantization": json.dumps(weights)}) == "int8-weights"
    assert pc.quantization_kind({"kws.quantization": json.dumps({"format": "int8 weights"})}) == "int8-weights"
    # a description this script does not know gets the looser bound, not the float one
    assert pc.quantization_kind({"kws.quantization": "something new"}) == "static-int8"
    assert pc.tolerance("fp32") == pc.tolerance("int8-weights") == 1e-5
    assert pc.tolerance("static-int8") == 5e-3


def test_shipped_exports_are_classified_by_metadata_not_name():
    kinds = {Path(p).name: pc.quantization_kind(pc.read_metadata(Path(p)))
             for p in glob.glob(str(ROOT / "exported" / "*.stream*.onnx"))}
    assert kinds, "no streaming exports shipped"
    for name, kind in kinds.items():
        expected = "static-int8" if name.endswith(".int8.onnx") else "int8-weights" if name.endswith(".int8w.onnx") else "fp32"
        assert kind == expected, name


# Reading a run ---------------------------------------------------------------------------------------
def _track(source, probs, step_s=0.08):
    probs = np.asarray(probs, np.float32)
    times = (np.arange(len(probs)) + 1) * 1280 / 16000
    return {"source": source, "times": times, "probs": probs, "scores": probs}


def test_read_run_reads_what_detect_writes(tmp_path):
    csv = tmp_path / "p.csv"
    write_probs(str(csv), [_track("/a/x.wav", [0.1, 0.95, 0.2]), _track("-", [0.3])])
    stdout = '{"time": 0.16, "prob": 0.95, "keyword": "sheila", "source": "/a/x.wav"}\n'
    tracks = pc.read_run(csv, stdout)
    assert sorted(tracks) == ["-", "/a/x.wav"]
    assert tracks["/a/x.wav"].times == [0.08, 0.16, 0.24]
    assert np.array_equal(np.array(tracks["/a/x.wav"].probs, np.float32), np.array([0.1, 0.95, 0.2], np.float32))
    assert tracks["/a/x.wav"].events == [(0.16, 0.95)] and tracks["-"].events == []
    bad = tmp_path / "bad.csv"
    bad.write_text("time,prob\n0.08,0.1\n")
    with pytest.raises(ValueError, match="unexpected header"):
        pc.read_run(bad, "")


# Comparison --------------------------------------------------------------------------------------------
def _tracks(**sources):
    out = {}
    for source, (probs, events) in sources.items():
        t = pc.Track(times=[(i + 1) * 0.08 for i in range(len(probs))], probs=list(probs), events=list(events))
        out[source] = t
    return out


def test_compare_within_tolerance():
    ref = _tracks(a=([0.1, 0.9, 0.2], [(0.16, 0.9)]), b=([0.5], []))
    got = _tracks(a=([0.1 + 4e-6, 0.9 - 1e-6, 0.2], [(0.16, 0.899999)]), b=([0.5], []))
    c = pc.compare(ref, got, 1e-5)
    assert c.ok and c.steps == 4 and (c.events_ref, c.events_got) == (1, 1)
    assert c.max_dprob == pytest.approx(4e-6)


@pytest.mark.parametrize("case, message", [
    ("prob", "max |dprob| 0.0005 > 1e-05"),
    ("events", "detections at []"),
    ("steps", "2 steps, x86 3"),
    ("missing", "only in the x86 run"),
    ("nan", "max |dprob| inf"),
])
def test_compare_reports_each_kind_of_mismatch(case, message):
    ref = _tracks(a=([0.1, 0.9, 0.2], [(0.16, 0.9)]))
    probs, events = [0.1, 0.9, 0.2], [(0.16, 0.9)]
    if case == "prob":
        probs = [0.1, 0.9, 0.2005]
    elif case == "events":
        events = []
    elif case == "steps":
        probs = probs[:2]
    elif case == "nan":
        probs = [0.1, 0.9, math.nan]
    got = {} if case == "missing" else _tracks(a=(probs, events))
    c = pc.compare(ref, got, 1e-5)
    assert not c.ok
    assert any(message in p for p in c.problems), c.problems


def test_static_int8_bound_and_identical_detections():
    ref = _tracks(a=([0.1, 0.9], [(0.16, 0.9)]))
    assert pc.compare(ref, _tracks(a=([0.1049, 0.9], [(0.16, 0.9)])), pc.STATIC_INT8_TOL).ok
    assert not pc.compare(ref, _tracks(a=([0.1051, 0.9], [(0.16, 0.9)])), pc.STATIC_INT8_TOL).ok
    moved = pc.compare(ref, _tracks(a=([0.1, 0.9], [(0.08, 0.9)])), pc.STATIC_INT8_TOL)  # same count, other time
    assert not moved.ok and "detections at [0.08]" in moved.problems[0]


# Table and exit codes --------------------------------------------------------------------------------
def test_table_and_exit_code():
    ref = _tracks(a=([0.1, 0.9], [(0.16, 0.9)]))
    ok, problems = pc.result_row("m.stream.onnx", "fp32", "Pi 4", ref, _tracks(a=([0.1, 0.9], [(0.16, 0.9)])), None, 3.2)
    assert problems == [] and ok["ok"] and ok["events"] == "1/1" and ok["steps"] == 2
    bad, problems = pc.result_row("m.stream.int8.onnx", "static-int8", "Pi 5", ref, None, "exit -11: Segmentation fault", 1.0)
    assert not bad["ok"] and bad["events"] == "-/1" and problems == ["emulated run failed: exit -11: Segmentation fault"]
    table = pc.format_table([ok, bad]).splitlines()
    assert table[0].split()[:3] == ["model", "quantization", "board"]
    assert set(table[1]) <= {"-", " "}
    assert table[2].split()[-1] == "ok" and table[3].split()[-1] == "MISMATCH"
    assert "m.stream.int8.onnx" in table[3] and "0.005" in table[3] and "1e-05" in table[2]
    assert table[0].index("result") == table[2].rindex("ok") == table[3].index("MISMATCH")  # aligned columns
    assert pc.exit_code([ok]) == 0
    assert pc.exit_code([ok, bad]) == 1
    assert pc.exit_code([]) == 1  # nothing compared is not a pass


# Set-up pieces -----------------------------------------------------------------------------------------
def test_apt_mirror_from_deb822_and_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.debian.org/archive/debian/x\nURIs: http://deb.debian.org/debian-security\n"
        "Suites: bookworm-security\n\nTypes: deb\nURIs: http://mirror.example.org/debian/\nSuites: bookworm\n")
    assert pc.apt_mirror(str(tmp_path)) == "http://mirror.example.org/debian"
    other = tmp_path / "other"
    other.mkdir()
    (other / "sources.list").write_text("deb [arch=amd64] http://ftp.de.debian.org/debian bookworm main\n")
    assert pc.apt_mirror(str(other)) == "http://ftp.de.debian.org/debian"
    assert pc.apt_mirror(str(tmp_path / "none")) == pc.DEFAULT_MIRROR  # e.g. not a Debian host


def test_board_descriptions_match_the_emulated_cores():
    pi4, pi5 = pc.BOARDS
    assert (pi4.qemu_cpu, pi5.qemu_cpu) == ("cortex-a72", "cortex-a76")
    assert pi4.midr == 0x410FD083 and pi5.midr == 0x414FD0B1  # Cortex-A72 r0p3, Cortex-A76 r4p1
    for board in pc.BOARDS:
        text = pc.cpuinfo_text(board)
        assert text.count("processor\t:") == 4 and text.count(f"CPU part\t: {board.part:#x}") == 4
        assert f"Model\t\t: Raspberry Pi {board.name[-1]}" in text
        files = pc.sys_cpu_files(board)
        assert files["possible"] == files["present"] == "0-3\n"
        assert files["cpu3/cpufreq/cpuinfo_max_freq"] == f"{board.max_khz}\n"
        assert files["cpu0/regs/identification/midr_el1"] == f"0x{board.midr:016x}\n"
        assert "cpu4/online" not in files


def test_board_root_links_the_userland_and_fakes_proc_and_sys(tmp_path):
    root = tmp_path / "rootfs"
    for d in ("usr/bin", "etc", "proc", "sys"):
        (root / d).mkdir(parents=True)
    (root / "usr/bin/python3.11").write_text("")
    (root / pc.DONE).write_text("x")
    prefix = pc.make_board_root(tmp_path, root, pc.BOARDS[0])
    assert (prefix / "usr").is_symlink() and (prefix / "usr/bin/python3.11").exists()
    assert not (prefix / "proc").is_symlink() and "0xd08" in (prefix / "proc/cpuinfo").read_text()
    assert (prefix / "sys/devices/system/cpu/cpu2/topology/core_id").read_text() == "2\n"
    assert not (prefix / pc.DONE).exists()
    again = pc.make_board_root(tmp_path, root, pc.BOARDS[0])  # rebuilt in place, idempotent
    assert again == prefix and (prefix / "proc/cpuinfo").is_file()


def test_missing_tools_that_cannot_be_installed_are_a_one_line_skip(monkeypatch, capsys):
    monkeypatch.setattr(pc.shutil, "which", lambda tool: None)
    monkeypatch.setattr(pc, "_sudo", lambda: None)
    monkeypatch.setattr(pc.platform, "machine", lambda: "x86_64")
    with pytest.raises(pc.Skip) as info:
        pc.ensure_tools()
    message = str(info.value)
    assert message.startswith("pi-check: skipped:") and "\n" not in message
    assert "sudo apt-get install mmdebstrap qemu-user-static" in message
    models = str(ROOT / "exported" / "*.stream*.onnx")
    assert pc.main(["--models", models]) == 0
    assert capsys.readouterr().out.strip() == message
    assert pc.main(["--models", models, "--strict"]) == 1


def _stub_setup(monkeypatch, tmp_path):
    monkeypatch.setattr(pc, "ensure_tools", lambda: ("qemu", "mmdebstrap"))
    monkeypatch.setattr(pc, "ensure_rootfs", lambda cache, mm, mirror: tmp_path)
    monkeypatch.setattr(pc, "ensure_site", lambda cache, n, o: tmp_path)
    monkeypatch.setattr(pc, "make_board_root", lambda cache, root, board: tmp_path)
    monkeypatch.setattr(pc, "probe_guest", lambda target: {"machine": "aarch64", "python": "3.11.2",
                                                           "numpy": pc.importlib.metadata.version("numpy"),
                                                           "onnxruntime": pc.importlib.metadata.version("onnxruntime")})
    x = np.sin(np.arange(16000) * 0.05).astype(np.float32) * 0.3
    monkeypatch.setattr(pc, "make_inputs", lambda cache, real: ([], (x * 32767).astype("<i2").tobytes(), "a tone on stdin"))


def test_main_exits_1_on_a_mismatch(monkeypatch, tmp_path, capsys):
    """The wiring of main without QEMU: set-up stubbed, the 'emulated' run is x86 with one
    probability nudged by 2e-5 (over the fp32 bound, under the int8 one)."""
    models = sorted(glob.glob(str(ROOT / "exported" / "student.stream*.onnx")))
    _stub_setup(monkeypatch, tmp_path)
    real_run = pc.run_detect

    def fake_run(target, model, wavs, pcm, out_csv, timeout=900, verifier=None):
        tracks, err, s = real_run(pc.Target("x86", [pc.sys.executable], dict(pc.os.environ)), model, wavs, pcm, out_csv)
        if target.name != "x86-64":
            tracks["-"].probs[3] += 2e-5
        return tracks, err, s

    monkeypatch.setattr(pc, "run_detect", fake_run)
    code = pc.main(["--models", str(ROOT / "exported" / "student.stream*.onnx"), "--cache", str(tmp_path / "c"), "--boards", "pi4"])
    out = capsys.readouterr().out
    assert code == 1
    assert out.count("MISMATCH") >= 2 and "max |dprob| 2e-05 > 1e-05" in out
    rows = [line for line in out.splitlines() if line.startswith("student.stream")]
    assert len(rows) == len(models)
    for line in rows:  # the static int8 file passes with the same nudge; float files fail
        assert line.split()[-1] == ("ok" if ".int8.onnx" in line else "MISMATCH"), line


def test_short_inputs_cut_the_resampling_input_and_stdin(tmp_path):
    import soundfile as sf

    (tmp_path / "audio").mkdir()
    wav = tmp_path / "audio" / "synth-44k1-stereo.wav"
    sf.write(str(wav), np.zeros((44100 * 10, 2), np.float32), 44100, subtype="PCM_16")
    pcm = np.zeros(16000 * 10, "<i2").tobytes()
    wavs, short_pcm = pc.short_inputs(tmp_path, [tmp_path / "audio" / "real.wav", wav], pcm)
    x, rate = sf.read(str(wavs[0]))
    assert wavs[0].name == "short-synth-44k1-stereo.wav" and rate == 44100 and x.shape == (int(pc.SHORT_WAV_S * 44100), 2)
    assert len(short_pcm) == int(pc.SHORT_PCM_S * 16000) * 2


def test_two_stage_pair_is_run_and_compared(monkeypatch, tmp_path, capsys):
    """Each embedding export also runs as the verifier of its keyword's smallest export, every
    step a candidate: its detections (verifier probabilities) are compared like a track's."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("student.stream.int8w.onnx", "student.stream.onnx", "teacher_embedding.stream.onnx"):
        (models / name).symlink_to(ROOT / "exported" / name)
    metas = {m: pc.read_metadata(m) for m in sorted(models.iterdir())}
    assert pc.two_stage_pairs(metas) == [(models / "teacher_embedding.stream.onnx", models / "student.stream.int8w.onnx")]
    _stub_setup(monkeypatch, tmp_path)
    x = np.sin(np.arange(48000) * 0.05).astype(np.float32) * 0.3  # 3 s: the pair runs on its first 2 s
    monkeypatch.setattr(pc, "make_inputs", lambda cache, real: ([], (x * 32767).astype("<i2").tobytes(), "a tone on stdin"))
    real_run = pc.run_detect
    seen = []

    def fake_run(target, model, wavs, pcm, out_csv, timeout=900, verifier=None):
        tracks, err, s = real_run(pc.Target("x86", [pc.sys.executable], dict(pc.os.environ)), model, wavs, pcm, out_csv,
                                  verifier=verifier)
        if verifier is not None:
            seen.append((target.name, len(tracks["-"].events), tracks["-"].probs))
            if target.name != "x86-64":
                t, p = tracks["-"].events[1]
                tracks["-"].events[1] = (t, p + 2e-5)
        return tracks, err, s

    monkeypatch.setattr(pc, "run_detect", fake_run)
    code = pc.main(["--models", str(models / "*.onnx"), "--cache", str(tmp_path / "c"), "--boards", "pi4"])
    out = capsys.readouterr().out
    assert code == 1
    # 2 s on stdin, trigger and threshold 0: a verification every refractory period (13 steps)
    assert [n for _, n, _ in seen] == [2, 2] and all(probs == [] for _, _, probs in seen)
    pair = [line for line in out.splitlines() if line.startswith("student.stream.int8w.onnx + --verifier")]
    assert len(pair) == 1 and pair[0].split()[-1] == "MISMATCH", out
    assert "detection probabilities differ by more than 1e-05" in out
    singles = [line for line in out.splitlines() if line.startswith(("student.stream", "teacher_embedding")) and "+" not in line]
    assert len(singles) == 3 and all(line.split()[-1] == "ok" for line in singles), out
