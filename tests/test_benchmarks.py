"""Smoke test of `make bench` (benchmarks/run.py): the whole machinery on two tiny random
CRNNs and a random-head speech-embedding model, and a 2 s stream.  It checks that the tables have every column and row and that
every value is sane; it never asserts speed (speed is measured by the benchmark, as ratios)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import onnx
import pytest
import torch

from conftest import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import breakdown, report  # noqa: E402
from benchmarks.run import main  # noqa: E402
from kws_export.checkpoint import save_checkpoint  # noqa: E402
from kws_export.config import CRNNConfig  # noqa: E402
from kws_export.embedding import EmbeddingConfig, EmbeddingKWS  # noqa: E402
from kws_export.embedding import count_parameters as embedding_parameters  # noqa: E402
from kws_export.model import CRNN, count_parameters  # noqa: E402
from training import macs  # noqa: E402

ENGINES = list(report.ENGINES)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    configs = {"teacher": CRNNConfig(channels=2, hidden=8, gru_layers=2), "student": CRNNConfig(channels=2, hidden=8, gru_layers=1)}
    models = {}
    for role, cfg in configs.items():
        models[role] = CRNN(cfg).eval()
        save_checkpoint(d / f"{role}.pt", models[role], {"role": role})
    models["teacher_embedding"] = EmbeddingKWS(EmbeddingConfig()).eval()  # a random head
    save_checkpoint(d / "teacher_embedding.pt", models["teacher_embedding"], {"role": "teacher", "threshold": 0.5})
    out, work = d / "out", d / "work"
    # The embedding teacher and the student first: the CRNN named "teacher" must still become the baseline.
    rc = main(["--quick", "--ckpt", str(d / "teacher_embedding.pt"), "--ckpt", str(d / "student.pt"),
               "--ckpt", str(d / "teacher.pt"), "--out", str(out), "--work", str(work), "--seconds", "2",
               "--rss-seconds", "5"])
    assert rc == 0
    return {"out": out, "work": work, "dir": d, "models": models,
            "results": json.loads((out / "results.json").read_text()), "md": (out / "results.md").read_text()}


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def crnn(res: dict) -> list[dict]:
    return [m for m in res["models"] if m["arch"] == "crnn"]


def by_name(res: dict, name: str) -> dict:
    return next(m for m in res["models"] if m["name"] == name)


def test_tables_have_every_column_and_row(bench):
    md = bench["md"]
    assert "| " + " | ".join(report.SPEED_COLUMNS) + " |" in md
    assert "| " + " | ".join(report.SIZE_COLUMNS) + " |" in md
    for name in ("teacher", "student"):
        for label in report.ENGINES.values():
            assert f"| {name} | {label} |" in md
    assert "## Issue 7 targets" in md and "`student`:" in md
    assert md.index("| teacher | PyTorch eager") < md.index("| student | PyTorch eager")
    assert "(1×)" in md  # size ratios to the teacher
    png = (bench["out"] / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_models_roles_and_static_costs(bench):
    res = bench["results"]
    names = [m["name"] for m in res["models"]]
    assert names == ["teacher", "teacher_embedding", "student"]
    assert [m["role"] for m in res["models"]] == ["teacher", "teacher", "student"]
    assert [m["arch"] for m in res["models"]] == ["crnn", "embedding", "crnn"]
    assert res["settings"]["quick"] and res["settings"]["threads"] == 1
    for m in crnn(res):
        model = bench["models"][m["name"]]
        c = m["costs"]
        assert c["params"] == count_parameters(model)
        assert c["macs_per_second_network"] == pytest.approx(macs.network_macs_per_second(model.config))
        assert c["macs_per_second_frontend"] == pytest.approx(macs.frontend_macs_per_second(model.config))
        # the exported mixed-radix DFT does less arithmetic than the dense one
        assert 0 < c["macs_per_second_frontend_graph"] < c["macs_per_second_frontend"]
        sizes = m["sizes"]
        assert sizes["checkpoint"] == (bench["dir"] / f"{m['name']}.pt").stat().st_size
        for key in ("onnx_fp32", "onnx_int8", "stream_ts", "offline_ts"):
            assert sizes[key] > 1000
        assert set(m["export_origin"].values()) == {"fresh"}


def test_timings_are_sane_and_engines_compute_the_same_model(bench):
    res = bench["results"]
    for m in crnn(res):
        assert set(m["timings"]) == set(ENGINES)
        steps = int(res["settings"]["stream_seconds"] * 16000) // 1280
        for key, t in m["timings"].items():
            assert t["calls"] * t["steps_per_call"] == steps, key
            assert finite_positive(t["rtf"]) and len(t["rtf_passes"]) == 1
            assert finite_positive(t["p50_us"]) and t["p50_us"] <= t["p99_us"]
            assert finite_positive(t["us_per_step"])
            lo, hi = t["prob_range"]
            assert 0.0 <= lo <= hi <= 1.0
        d = m["timings"]
        assert d["eager"]["max_abs_dprob_vs_eager"] is None
        assert d["torchscript"]["max_abs_dprob_vs_eager"] <= 1e-5
        assert d["onnx_fp32"]["max_abs_dprob_vs_eager"] <= 1e-4
        assert d["onnx_int8"]["max_abs_dprob_vs_eager"] <= 0.1  # int8, calibrated on 2 s: same model, rounded
        assert d["onnx_int8w"]["max_abs_dprob_vs_eager"] <= 0.05  # int8 weights, float32 arithmetic
        assert d["onnx_int8w"]["steps_per_call"] == 1  # fed 80 ms per process() call, 4 steps per model call
        assert d["naive"]["max_abs_dprob_vs_eager"] <= 1.0


def test_memory_is_the_child_own_peak(bench):
    for m in bench["results"]["models"]:
        keys = ("onnx_fp32",) if m["arch"] == "embedding" else ("onnx_int8", "onnx_int8w", "onnx_fp32")
        assert set(m["rss"]) == set(keys)
        for key in keys:
            rss = m["rss"][key]["peak_rss_bytes"]
            # numpy + onnxruntime need tens of MB; far less than this torch-laden process,
            # whose size a child would report if it were spawned from here directly
            assert 20e6 < rss < 200e6, (m["name"], key, rss)


def test_targets_and_breakdown(bench):
    student = by_name(bench["results"], "student")
    t = student["targets"]
    assert finite_positive(t["rtf_live"]) and finite_positive(t["rtf_file"])
    assert t["int8_bytes"] == student["sizes"]["onnx_int8"]
    assert t["rss_bytes"] == student["rss"]["onnx_int8"]["peak_rss_bytes"]
    assert t["rtf_live_int8w"] == student["timings"]["onnx_int8w"]["rtf"]
    assert t["int8w_bytes"] == student["sizes"]["onnx_int8w"] > 0  # (a hidden-8 test model has too few weights to shrink)
    assert "**int8 weights**" in bench["md"]
    lim = report.TARGETS
    missed = max(t["rtf_live"], t["rtf_file"]) > lim["rtf"] or t["rss_bytes"] > lim["rss_bytes"] or t["int8_bytes"] > lim["int8_bytes"]
    assert ("breakdown" in student) == missed
    for name in ("teacher", "teacher_embedding"):  # targets are the CRNN students'
        assert "breakdown" not in by_name(bench["results"], name) and "targets" not in by_name(bench["results"], name)
    if not missed:
        return
    b = student["breakdown"]
    for key in ("detector_live", "detector_at_once", "runtime_loop", "floor", "session_run_feeds", "frontend", "network"):
        assert math.isfinite(b["us_per_step"][key])
    assert set(b["session_options_us_per_step"]) == set(breakdown.OPTIONS)
    assert any(label.startswith("320 ms (4 steps") for label in b["chunk_us_per_step"])
    prof = b["profile"]
    assert prof["nodes_per_call"]["frontend"] > 0 and prof["nodes_per_call"]["network"] > 0
    assert prof["share"]["frontend"] + prof["share"]["network"] == pytest.approx(1.0)
    size = b["size"]
    assert sum(size["parts"].values()) == size["total"] == student["sizes"]["onnx_int8"]
    stages = [s["stage"] for s in student["rss_stages"]]
    assert stages[0] == "interpreter" and stages[-1] == "process the file"
    peaks = [s["peak_bytes"] for s in student["rss_stages"]]
    assert peaks == sorted(peaks)
    assert "### Where the time goes: `student`" in bench["md"]


def test_frontend_cut_and_floor_graph_compute_what_they_claim(bench):
    """The breakdown's graph surgery on the real fp32 export: the frontend subgraph gives
    the streaming log-mel of its buffer, and the floor graph passes every state through."""
    from kws_export import streaming

    path = bench["work"] / "student.onnx_fp32.onnx"
    model = bench["models"]["student"]
    proto = onnx.load(str(path))
    fe = breakdown.frontend_submodel(proto)
    assert fe is not None
    sess = breakdown.session(fe)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((1, 1280))).astype(np.float32)
    tail = (0.1 * rng.standard_normal((1, 240))).astype(np.float32)
    mel, tail_next = sess.run(None, {"audio": audio, "audio_tail": tail})
    p = streaming.params(model)
    buffer = torch.from_numpy(np.concatenate([tail, audio], axis=1))
    want = streaming.logmel_buffer(buffer, p["dft.w1"], p["dft.t2"], p["dft.fb"], model.config.hop)
    assert np.abs(mel.reshape(want.shape) - want.numpy()).max() < 1e-4
    assert np.array_equal(tail_next, buffer[:, -240:].numpy())

    floor = breakdown.session(breakdown.floor_model(proto))
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in proto.graph.input}
    out = dict(zip([o.name for o in floor.get_outputs()], floor.run(None, feeds)))
    for name in feeds:
        if name != "audio":
            assert np.array_equal(out[name + "_next"], feeds[name])
    assert out["prob"].shape == (1,)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["--quick", "--ckpt", str(tmp_path / "missing.pt"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "missing.pt" in err[0] and "not found" in err[0]
    assert not list(out.glob("results.*"))

    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    rc = main(["--quick", "--out", str(not_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a directory" in err[0]

    for bad in (["--repeats", "0"], ["--seconds", "0.5"]):
        rc = main(["--quick", *bad, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, bad
    assert not list(out.glob("results.*"))


def test_shipped_export_is_used_only_when_made_from_the_checkpoint(bench, tmp_path):
    import shutil

    from benchmarks import models

    exported = tmp_path / "exported"
    exported.mkdir()
    work = bench["work"]
    shutil.copy(work / "student.onnx_fp32.onnx", exported / "student.stream.onnx")        # made from student.pt
    shutil.copy(work / "teacher.onnx_int8.onnx", exported / "student.stream.int8.onnx")   # stale: another checkpoint
    (m,) = models.load_models([bench["dir"] / "student.pt"], "given")
    sha = models.sha256_file(m.ckpt)
    assert models._shipped_export(m, exported, "onnx_fp32", sha) == exported / "student.stream.onnx"
    assert models._shipped_export(m, exported, "onnx_int8", sha) is None
    assert models._shipped_export(m, tmp_path, "onnx_fp32", sha) is None  # none shipped


# The speech-embedding model -------------------------------------------------------------------
def test_embedding_row_measures_its_streaming_export(bench):
    """The embedding checkpoint gets only what exists for it (its streaming fp32 ONNX through
    detect.py), its costs from the graphs, and it computes what its numpy reference does."""
    res, md = bench["results"], bench["md"]
    m = by_name(res, "teacher_embedding")
    model = bench["models"]["teacher_embedding"]
    assert set(m["timings"]) == {"onnx_fp32"} and set(m["sizes"]) == {"checkpoint", "onnx_fp32"}
    assert set(m["exports"]) == {"onnx_fp32"} and m["export_origin"] == {"onnx_fp32": "fresh"}
    t = m["timings"]["onnx_fp32"]
    steps = int(res["settings"]["stream_seconds"] * 16000) // 1280
    assert t["calls"] == steps and t["steps_per_call"] == 1
    assert finite_positive(t["rtf"]) and finite_positive(t["us_per_step"])
    assert finite_positive(t["p50_us"]) and t["p50_us"] <= t["p99_us"]
    assert t["max_abs_dprob_vs_reference"] <= 1e-4  # the export is the numpy step
    lo, hi = t["prob_range"]
    assert 0.0 <= lo <= hi <= 1.0
    c = m["costs"]
    p = embedding_parameters(model)
    assert (c["params_trained"], c["params_frozen"]) == (p["trained"], p["frozen"]) and p["trained"] == 16 * 96 + 1
    assert c["params"] == p["trained"] + p["frozen"] > 500_000
    # one mel call on 1760 samples (8 frames x 257 bins x re/im x 512 taps + the mel product), one embedding, the head
    assert c["macs_per_step"]["melspectrogram"] == 2 * 8 * 257 * 512 + 8 * 257 * 32
    assert c["macs_per_step"]["head"] == 16 * 96
    assert 40e6 < c["macs_per_step"]["embedding_model"] < 45e6
    assert c["macs_per_second"] == pytest.approx(12.5 * c["macs_per_step"]["total"])
    assert 0.5e9 < c["macs_per_second"] < 0.6e9  # the issue's ~0.55 GMAC per second of audio
    assert c["macs_per_second_export_graph"] == pytest.approx(c["macs_per_second"])  # the inlined graphs, counted again
    assert 20e6 < m["rss"]["onnx_fp32"]["peak_rss_bytes"] < 300e6
    assert m["sizes"]["onnx_fp32"] > 2e6  # the frozen graphs are inlined
    assert m["sizes"]["checkpoint"] == (bench["dir"] / "teacher_embedding.pt").stat().st_size
    # its own tables; the CRNN tables are untouched
    assert "## Speech-embedding model" in md
    assert "| " + " | ".join(report.EMBEDDING_SPEED_COLUMNS) + " |" in md
    assert "| " + " | ".join(report.EMBEDDING_SIZE_COLUMNS) + " |" in md
    assert "| teacher_embedding | ONNX fp32 via detect.py |" in md
    assert md.count("| teacher_embedding |") == 2
    crnn_table = md[md.index("## Speed"):md.index("## Speech-embedding model")]
    assert "teacher_embedding" not in crnn_table


def test_baseline_is_the_crnn_named_teacher(tmp_path):
    from benchmarks import models

    torch.manual_seed(0)
    cfg = CRNNConfig(channels=2, hidden=8, gru_layers=1)
    save_checkpoint(tmp_path / "big.pt", CRNN(cfg).eval(), {"role": "teacher"})
    save_checkpoint(tmp_path / "teacher.pt", CRNN(cfg).eval(), {"role": "student"})
    save_checkpoint(tmp_path / "emb.pt", EmbeddingKWS(EmbeddingConfig()), {"role": "teacher"})
    got = models.load_models([tmp_path / "emb.pt", tmp_path / "big.pt", tmp_path / "teacher.pt"], "given")
    assert [(m.name, m.role) for m in got] == [("teacher", "teacher"), ("emb", "teacher"), ("big", "student")]
    # no CRNN named "teacher": the CRNN with role teacher (never the embedding teacher, listed first)
    got = models.load_models([tmp_path / "emb.pt", tmp_path / "big.pt"], "given")
    assert [(m.name, m.role) for m in got] == [("big", "teacher"), ("emb", "teacher")]
    (only,) = models.load_models([tmp_path / "emb.pt"], "given")
    assert (only.name, only.role, only.is_embedding) == ("emb", "teacher", True)


def test_onnx_macs_counts_conv_matmul_gemm(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.onnx_macs import graph_macs, parameter_count
    from kws_export.errors import KWSError

    w = numpy_helper.from_array(np.zeros((6, 2, 3), np.float32), "w")    # Conv1d: 4 in-channels, groups 2
    m = numpy_helper.from_array(np.zeros((10, 5), np.float32), "m")      # MatMul over the time axis
    g = numpy_helper.from_array(np.zeros((7, 30), np.float32), "g")      # Gemm, transB
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=2),       # [1, 6, 10 - 3 + 1 = 8]
             helper.make_node("Pad", ["c", "pads"], ["cp"]),              # -> [1, 6, 10]
             helper.make_node("MatMul", ["cp", "m"], ["mm"]),             # [1, 6, 5]
             helper.make_node("Reshape", ["mm", "shape"], ["flat"]),      # [1, 30]
             helper.make_node("Gemm", ["flat", "g"], ["y"], transB=1)]    # [1, 7]
    inits = [w, m, g, numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 2], np.int64), "pads"),
             numpy_helper.from_array(np.array([1, 30], np.int64), "shape")]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    got = graph_macs(proto, {"x": [1, 4, 10]})
    assert got["by_op"] == {"Conv": 1 * 6 * 8 * (2 * 3), "MatMul": 1 * 6 * 5 * 10, "Gemm": 7 * 30}
    assert got["total"] == sum(got["by_op"].values()) and got["nodes"] == {"Conv": 1, "MatMul": 1, "Gemm": 1}
    assert graph_macs(proto, {"x": [3, 4, 10]})["by_op"]["Conv"] == 3 * 6 * 8 * 6
    assert parameter_count(proto) == 36 + 50 + 210 + 6 + 2
    with pytest.raises(KWSError, match="cannot count the MACs of Conv"):
        graph_macs(proto)  # the batch dimension unknown: never a silent zero
