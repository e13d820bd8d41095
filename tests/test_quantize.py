"""Static int8 of the streaming step, its calibration, and `kws-export verify`.

Decision agreement only means something for a model that makes decisions: random weights
hover around p = 0.5, where any rounding flips them.  So the int8 parity test fits a
small streaming CRNN (channels 4, hidden 16, the student's size) for a few seconds on
synthesized speech — "sheila" among other words, several espeak voices, pauses and noise
— with the streaming loss, checks that it really separates keyword from non-keyword
steps, and then holds its int8 export to the issue's tolerance on a stream made from
voices and seeds that neither training nor calibration saw.
"""

import json
import multiprocessing

import numpy as np
import onnx
import pytest
import torch

from kws_export.audio import write_wav
from kws_export.checkpoint import save_checkpoint
from kws_export.cli import cli
from kws_export.cli_support import run_click
from kws_export.config import CRNNConfig
from kws_export.errors import KWSError
from kws_export.export_onnx import export_onnx_file
from kws_export.export_torchscript import export_torchscript
from kws_export.model import CRNN
from kws_export.onnx_info import describe_onnx, kws_metadata
from kws_export.onnx_run import run_stream, session, stream_states
from kws_export.quantize import record_feeds
from kws_export.verify import INT8_AGREEMENT, INT8_MAX_DIFF
from training import export_cli
from training.speech import SYNTHESIZED

SR = 16000
STEP = 1280
WORDS = ("shell", "she", "seven", "marvin", "yes", "house", "left", "tree", "happy", "wow", "bird", "three")


def _render(jobs):
    """Runs in a fresh process: espeak keeps hidden state between utterances, so audio
    rendered in a process that synthesized before would depend on test order."""
    from training import synth

    voices = {v.id: v for v in synth.list_voices(["espeak"])}
    return [synth.synthesize(text, voices[voice], rate=rate) for text, voice, rate in jobs]


def utterances(voice_ids, seed, n_kw, n_neg):
    from training import synth

    rng = np.random.default_rng(seed)
    voices = [v.id for v in synth.list_voices(["espeak"])]
    pick = [voices[i] for i in voice_ids(len(voices))]
    jobs = [("sheila", pick[i % len(pick)], float(rng.uniform(0.8, 1.2))) for i in range(n_kw)]
    jobs += [(WORDS[i % len(WORDS)], pick[(3 * i + 1) % len(pick)], float(rng.uniform(0.8, 1.2))) for i in range(n_neg)]
    with multiprocessing.get_context("forkserver").Pool(1) as pool:
        audio = pool.apply(_render, (jobs,))
    return audio[:n_kw], audio[n_kw:]


def make_stream(kw, neg, seconds, seed):
    """Words at -12..0 dB peaks with 0.2-1 s pauses over a -60..-40 dB noise floor;
    returns the audio and the sample where each keyword ends."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    x = np.zeros(n, np.float32)
    ends, pos = [], int(rng.uniform(0.2, 0.8) * SR)
    while True:
        is_kw = rng.random() < 0.4
        u = kw[rng.integers(len(kw))] if is_kw else neg[rng.integers(len(neg))]
        u = u * (10 ** (rng.uniform(-12, 0) / 20) / (np.abs(u).max() + 1e-9))
        if pos + len(u) >= n:
            break
        x[pos:pos + len(u)] += u
        if is_kw:
            ends.append(pos + len(u))
        pos += len(u) + int(rng.uniform(0.2, 1.0) * SR)
    x += rng.normal(0, 10 ** (rng.uniform(-60, -40) / 20), n).astype(np.float32)
    return x, np.array(ends)


def step_labels(ends, steps):
    """1 for the steps ending from 0.1 s before to 0.6 s after a keyword's end."""
    t_end = (np.arange(steps) + 1) * STEP
    y = np.zeros(steps, np.float32)
    for e in ends:
        y[(t_end >= e - 0.1 * SR) & (t_end <= e + 0.6 * SR)] = 1
    return y


def agreement_outside_margin(ref: np.ndarray, got: np.ndarray, threshold: float = 0.5) -> float:
    """Decision agreement, as `kws-export verify` holds int8 to it, on the steps whose
    reference is more than INT8_MAX_DIFF from the threshold: a step within the |dprob|
    allowance of it may flip within tolerance (this stream has a few there, e.g. 0.496 vs
    0.505, and which of them flip moves with any change of rounding)."""
    clear = np.abs(ref - threshold) > INT8_MAX_DIFF
    assert clear.mean() > 0.95  # the margin excuses a handful of steps, not the stream
    return float(np.mean((ref[clear] >= threshold) == (got[clear] >= threshold)))


def training_speech():
    return utterances(lambda n: range(0, n, max(1, n // 24))[:24], seed=0, n_kw=24, n_neg=48)


def held_out_stream(seconds: float = 120.0):
    """Other voices, other seeds than training (and than calibration's default)."""
    kw2, neg2 = utterances(lambda n: range(n // 48, n, max(1, n // 20))[:20], seed=1, n_kw=16, n_neg=32)
    return make_stream(kw2, neg2, seconds, seed=123)


def fit(cfg: CRNNConfig, kw, neg, steps: int = 300) -> CRNN:
    """The streaming loss on 3 s streams of the utterances, ``steps`` Adam steps."""
    torch.manual_seed(0)
    model = CRNN(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        xs, ys = zip(*[make_stream(kw, neg, 3.0, int(rng.integers(1 << 30))) for _ in range(8)])
        y = torch.from_numpy(np.stack([step_labels(e, 3 * SR // STEP) for e in ys]))
        p = model.stream_reference(torch.from_numpy(np.stack(xs))).clamp(1e-6, 1 - 1e-6)
        loss = torch.nn.functional.binary_cross_entropy(p, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return model.eval()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A small streaming CRNN fitted on synthesized speech (about ten seconds of CPU)."""
    d = tmp_path_factory.mktemp("fitted")
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test thread limit
    model = fit(CRNNConfig(channels=4, hidden=16, gru_layers=1), *training_speech())
    save_checkpoint(d / "fit.pt", model, {"threshold": 0.5})
    audio, ends = held_out_stream()
    export_onnx_file(d / "fit.pt", d / "fit.stream.onnx", streaming=True)
    export_onnx_file(d / "fit.pt", d / "fit.stream.int8.onnx", streaming=True, int8=True, speech=SYNTHESIZED)
    return d, model, audio, ends


def test_fitted_model_makes_real_decisions(fitted):
    d, model, audio, ends = fitted
    with torch.no_grad():
        p = model.stream_reference(torch.from_numpy(audio)[None])[0].numpy()
    y = step_labels(ends, len(p))
    assert len(ends) >= 20
    assert ((p >= 0.5) == y).mean() > 0.85                  # it detects the keyword on unseen voices...
    assert (p >= 0.5).sum() > 100 and (p < 0.5).sum() > 500  # ...makes both decisions often...
    assert ((p > 0.1) & (p < 0.9)).mean() < 0.4              # ...and is confident on most steps


def test_int8_agrees_with_fp32_on_held_out_speech(fitted):
    d, _, audio, _ = fitted
    fp32 = run_stream(session(d / "fit.stream.onnx"), audio)
    int8 = run_stream(session(d / "fit.stream.int8.onnx"), audio)
    assert len(fp32) == len(int8) == 1500
    assert agreement_outside_margin(fp32, int8) >= INT8_AGREEMENT
    assert np.abs(fp32 - int8).max() <= INT8_MAX_DIFF
    assert np.abs(fp32 - int8).max() > 0  # it is a different computation


def test_int8_graph_quantizes_the_gru_and_leaves_the_frontend(fitted):
    d, _, _, _ = fitted
    model = onnx.load(str(d / "fit.stream.int8.onnx"))
    nodes = model.graph.node
    producer = {o: n for n in nodes for o in n.output}
    ops = [n.op_type for n in nodes]
    assert "GRU" not in ops
    gemms = [n for n in nodes if n.op_type == "Gemm"]
    # GRU: input (three products of the two-pass split) + hidden; attention: 2; classifier: 1
    assert len(gemms) == 7
    for n in gemms:
        assert all(producer[i].op_type == "DequantizeLinear" for i in n.input[:2]), "every Gemm reads int8 operands"
    # the frontend's products (grouped DFT conv, stage-2 and mel MatMuls) read float32
    for n in nodes:
        if n.op_type in ("MatMul", "Conv"):
            assert not any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input)
    desc = describe_onnx(d / "fit.stream.int8.onnx")
    assert desc["quantized_nodes"] == ops.count("QuantizeLinear") + ops.count("DequantizeLinear") >= 12
    assert desc["int8_products"] == 7
    quant = kws_metadata(model)["kws.quantization"]
    assert quant["format"] == "QDQ" and quant["calibration_steps"] == 2 * 375  # two 30 s synthesized streams
    assert quant["calibration"] == "synthesized speech"
    assert desc["size_bytes"] < 20_000  # the student-sized int8 step fits the 20 KB budget


def test_int8_runs_as_int8_kernels(fitted):
    """onnxruntime fuses the QDQ Gemms into QGemm: the GRU really computes in int8."""
    import onnxruntime as ort

    d, _, _, _ = fitted
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(d / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(d / "fit.stream.int8.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(d / "optimized.onnx")).graph.node]
    assert ops.count("QGemm") == 7 and "Gemm" not in ops


def test_int8_weights_are_uint8_so_no_cpu_saturates_them(fitted):
    """U8S8 products saturate on x86 CPUs with AVX2 but no VNNI (docs/export.md): every
    quantized weight of the static int8 file is uint8, symmetric around 128."""
    d, _, _, _ = fitted
    model = onnx.load(str(d / "fit.stream.int8.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    stored = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert not [n.name for n in stored if inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    weights = [n for n in stored if inits[n.input[0]].data_type == onnx.TensorProto.UINT8]
    assert len(weights) == 6  # the 7 Gemms read 6 weights (two share the coarse W_ih); biases are int32
    gemm_weights = [n for n in weights if onnx.numpy_helper.to_array(inits[n.input[2]]).size > 1]  # per channel
    assert gemm_weights and all((onnx.numpy_helper.to_array(inits[n.input[2]]) == 128).all() for n in gemm_weights)


@pytest.fixture(scope="module")
def weights_int8(fitted, tmp_path_factory):
    d, _, _, _ = fitted
    out = tmp_path_factory.mktemp("int8w") / "fit.stream.int8w.onnx"
    return export_onnx_file(d / "fit.pt", out, streaming=True, int8=True, int8_mode="weights"), out


def test_int8_weights_agree_with_fp32_on_held_out_speech(fitted, weights_int8):
    d, _, audio, _ = fitted
    _, path = weights_int8
    fp32 = run_stream(session(d / "fit.stream.onnx"), audio)
    w8 = run_stream(session(path), audio)
    assert len(w8) == 1500
    assert agreement_outside_margin(fp32, w8) >= INT8_AGREEMENT
    assert 0 < np.abs(fp32 - w8).max() <= INT8_MAX_DIFF


def test_int8_weights_store_int8_and_fold_to_the_float_graph(fitted, weights_int8):
    """Every weight matrix is an int8 initializer (the GRU input's in two levels); the
    dequantizing Cast/Mul nodes read only initializers, so onnxruntime folds them away and
    runs exactly the float32 step's kernels."""
    import onnxruntime as ort

    d, _, _, _ = fitted
    desc, path = weights_int8
    model = onnx.load(str(path))
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    floats = sum(onnx.numpy_helper.to_array(t).size for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    assert desc["int8_weights"] == len(int8) == 8  # conv (x2), GRU input (x2), GRU hidden, attention x2, classifier
    assert sum(onnx.numpy_helper.to_array(t).size for t in int8) > 5 * floats  # weights are int8, not float
    quant = desc["metadata"]["kws.quantization"]
    assert quant["format"] == "int8 weights" and quant["two_level"] == ["conv_w", "g0_wi"]
    assert desc["quantized_nodes"] == 0
    optimized = []
    for src in (d / "fit.stream.onnx", path):
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(path.parent / f"opt{len(optimized)}.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        optimized.append(sorted(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node))
    assert optimized[0] == optimized[1] and "Cast" not in optimized[1]
    assert desc["size_bytes"] < 0.75 * (d / "fit.stream.onnx").stat().st_size


def test_int8_weights_mode_refuses_what_it_cannot_use(fitted, tmp_path):
    d, _, _, _ = fitted
    with pytest.raises(KWSError, match="--calib"):
        export_onnx_file(d / "fit.pt", tmp_path / "x.onnx", streaming=True, int8=True, int8_mode="weights", calib=tmp_path)
    with pytest.raises(KWSError, match="--int8-mode"):
        export_onnx_file(d / "fit.pt", tmp_path / "x.onnx", streaming=True, int8=True, int8_mode="float4")
    with pytest.raises(KWSError, match="add --int8"):
        export_onnx_file(d / "fit.pt", tmp_path / "x.onnx", streaming=True, int8_mode="weights")
    assert not (tmp_path / "x.onnx").exists()


def test_feature_bounds_hold_for_any_audio_in_range():
    """The coarse pass of the two-pass GRU input spans bounds no audio in [-1, 1] leaves."""
    from kws_export import streaming
    from kws_export.quantize import feature_bounds

    torch.manual_seed(5)
    model = CRNN(CRNNConfig(channels=3, hidden=8, gru_layers=1)).eval()
    lo, hi = feature_bounds(model)
    rng = np.random.default_rng(0)
    t = np.arange(4 * SR) / SR
    extremes = [np.sign(np.sin(2 * np.pi * 1000 * t)), rng.uniform(-1, 1, t.size), np.zeros(t.size),
                np.sin(2 * np.pi * 4000 * t), np.where(rng.random(t.size) < 0.5, -1.0, 1.0)]
    p, spec = streaming.params(model), model.stream_spec()
    seen = []
    with torch.no_grad():
        for audio in extremes:
            x = torch.tensor(audio, dtype=torch.float32)[None]
            mel = streaming.logmel_buffer(streaming.stream_buffer(x, spec.prefix_samples), p["dft.w1"], p["dft.t2"], p["dft.fb"], 160)
            feats = streaming.conv_features(mel, p["conv.0.weight"], p["conv.0.bias"], [2, 8])
            assert lo <= float(feats.min()) and float(feats.max()) <= hi
            seen += [float(feats.min()), float(feats.max())]
    assert max(seen) - min(seen) > (hi - lo) / 6  # safe, yet not absurdly loose (~4x here)


def test_calibration_feeds_are_real_stream_states(fitted):
    d, _, audio, _ = fitted
    fp32 = onnx.load(str(d / "fit.stream.onnx"))
    feeds = record_feeds(fp32, [audio[: 40 * STEP], audio[40 * STEP: 70 * STEP]])
    assert len(feeds) == 70
    sess = session(fp32)
    inits = {s["name"]: s["init"] for s in stream_states(sess)}
    assert all(np.all(feeds[0][k] == v) for k, v in inits.items())
    assert all(np.all(feeds[40][k] == v) for k, v in inits.items())  # second stream starts afresh
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feeds[9])))
    for k in inits:
        assert np.array_equal(out[k + "_next"], feeds[10][k])
    assert np.abs(feeds[30]["gru_h0"]).max() > 0.05 and np.abs(feeds[30]["audio"]).max() > 0


def test_calibration_from_a_wav_directory(fitted, tmp_path):
    d, _, audio, _ = fitted
    for i in range(2):
        write_wav(tmp_path / f"c{i}.wav", audio[i * 8 * SR:(i + 1) * 8 * SR], SR)
    desc = export_onnx_file(d / "fit.pt", tmp_path / "w.int8.onnx", streaming=True, int8=True, calib=tmp_path)
    quant = desc["metadata"]["kws.quantization"]
    assert quant["calibration"] == "wav files" and quant["calibration_steps"] == 2 * 100
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad, message in ((empty, "no .wav files"), (tmp_path / "missing", "not found")):
        with pytest.raises(KWSError, match=message):
            export_onnx_file(d / "fit.pt", tmp_path / "x.onnx", streaming=True, int8=True, calib=bad)
    assert not (tmp_path / "x.onnx").exists()


def test_kws_export_alone_asks_for_the_audio_it_cannot_make(fitted, tmp_path, capsys):
    """kws_export makes no audio: without an AudioSource, static int8 needs --calib and
    verify needs --wav, each a one-line error that says so (nothing written)."""
    d, _, _, _ = fitted
    with pytest.raises(KWSError, match=r"static --int8 needs calibration audio: pass --calib DIR") as err:
        export_onnx_file(d / "fit.pt", tmp_path / "x.onnx", streaming=True, int8=True)
    assert "\n" not in str(err.value)
    assert run_click(cli, "kws-export", ["onnx", "--ckpt", str(d / "fit.pt"), "--streaming", "--int8",
                                         "-o", str(tmp_path / "x.onnx")]) == 2
    assert run_click(cli, "kws-export", ["verify", "--ckpt", str(d / "fit.pt"), "--onnx", str(d / "fit.stream.onnx"),
                                         "--only"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["kws-export: error: static --int8 needs calibration audio: pass --calib DIR of wavs "
                   "(or --int8-mode weights, which needs none)",
                   "kws-export: error: no audio to verify on: pass --wav FILE"]
    assert not (tmp_path / "x.onnx").exists()


def test_verify_passes_on_faithful_exports(fitted, capsys):
    d, model, audio, _ = fitted
    export_onnx_file(d / "fit.pt", d / "fit.onnx")
    export_torchscript(model, d / "fit.ts")
    write_wav(d / "heldout.wav", audio[: 20 * SR], SR)
    code = run_click(cli, "kws-export", ["verify", "--ckpt", str(d / "fit.pt"), "--onnx", str(d / "fit.stream.onnx"),
                                         "--wav", str(d / "heldout.wav")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] is True
    pairs = {(p["a"], p["b"]): p for p in report["pairs"]}
    assert set(report["artifacts"]) == {"fit.stream.onnx", "fit.stream.int8.onnx", "fit.onnx", "fit.ts"}
    assert pairs[("torch", "fit.stream.onnx")]["max_abs_diff"] <= 1e-5
    assert pairs[("torch offline", "fit.onnx")]["max_abs_diff"] <= 1e-5
    assert pairs[("torch offline", "fit.ts")]["max_abs_diff"] <= 1e-5
    int8 = pairs[("fit.stream.onnx", "fit.stream.int8.onnx")]
    # decisions held as verify holds them: outside the |dprob| margin (two steps of this
    # stream sit within 0.004 of the threshold, where any rounding may flip them)
    assert int8["agreement_outside_margin"] >= 0.999 and int8["max_abs_diff"] <= 0.02 and int8["outputs"] == 250
    assert int8["steps_within_margin"] < 0.05 * int8["outputs"]


def test_verify_fails_beyond_tolerance(fitted, tmp_path, capsys):
    d, model, _, _ = fitted
    other = CRNN(model.config).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.classifier.bias[1] += 0.05  # a small but real difference (0.05 of logit)
    save_checkpoint(tmp_path / "other.pt", other)
    code = export_cli.run(["verify", "--ckpt", str(tmp_path / "other.pt"), "--onnx", str(d / "fit.stream.onnx"),
                           "--only", "--seconds", "5"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["ok"] is False and report["audio"].startswith("synthesized")
    assert report["pairs"][0]["max_abs_diff"] > 1e-5 and report["stream_steps"] == 62


def test_int8_agreement_ignores_only_steps_within_the_tolerance_of_the_threshold():
    from kws_export.verify import compare

    ref = np.linspace(0.0, 1.0, 2001)
    near = ref.copy()
    near[np.argmin(np.abs(ref - 0.5))] -= 0.01  # a step at the threshold flips by 0.01
    far = ref.copy()
    far[100] = 0.52  # a step at 0.05 jumps over the threshold: beyond the |dprob| budget too
    ok = compare(ref, near, 0.5, int8=True, tol=1e-5)
    assert ok["ok"] and ok["disagreeing_steps"] == 1 and ok["agreement_outside_margin"] == 1.0
    bad = compare(ref, far, 0.5, int8=True, tol=1e-5)
    assert not bad["ok"]
    small_far = ref.copy()
    small_far[[i for i in range(0, 2001, 100)][:5]] = 0.51  # five flips far from the threshold
    assert compare(ref, small_far, 0.5, int8=True, tol=1e-5)["ok"] is False


def test_verify_aligns_multi_step_exports_stream_by_stream(fitted, tmp_path):
    """Several steps per call drop each stream's tail; the comparison must not shift the
    streams after the first (it once did, and every multi-step export "failed")."""
    from kws_export.verify import verify

    d, _, _, _ = fitted
    for name, kw in (("fit.stream.onnx", {}), ("fit.stream.int8w.onnx", {"int8": True, "int8_mode": "weights"})):
        export_onnx_file(d / "fit.pt", tmp_path / name, streaming=True, chunk_ms=240.0, **kw)
    report = verify(str(d / "fit.pt"), [str(tmp_path / "fit.stream.onnx")], seconds=10.0, speech=SYNTHESIZED)
    assert report["ok"], report["pairs"]
    assert len(report["pairs"]) == 3 and all(p["outputs"] > 0 for p in report["pairs"])
    pairs = {(p["a"], p["b"]): p for p in report["pairs"]}
    assert pairs[("torch", "fit.stream.onnx")]["max_abs_diff"] <= 1e-5


def test_levelled_model_quantizes_and_runs_in_the_runtime(tmp_path):
    """A model that levels its input (CRNNConfig.level_norm_ms) keeps the parity figures in
    both int8 variants, and runtime/detect.py runs all three files with its running level
    as one more state, exactly as the PyTorch step."""
    from runtime.detect import Detector

    torch.set_num_threads(1)
    model = fit(CRNNConfig(channels=4, hidden=16, gru_layers=1, level_norm_ms=300), *training_speech())
    save_checkpoint(tmp_path / "lv.pt", model, {"threshold": 0.5})
    audio, ends = held_out_stream(60.0)
    with torch.no_grad():
        want = model.stream_reference(torch.from_numpy(audio)[None])[0].numpy()
    assert ((want >= 0.5) == step_labels(ends, len(want))).mean() > 0.8  # a model that decides
    variants = {"fp32": ("lv.stream.onnx", {}), "int8": ("lv.stream.int8.onnx", {"int8": True, "speech": SYNTHESIZED}),
                "int8w": ("lv.stream.int8w.onnx", {"int8": True, "int8_mode": "weights"})}
    for name, (filename, options) in variants.items():
        path = tmp_path / filename
        desc = export_onnx_file(tmp_path / "lv.pt", path, streaming=True, **options)
        assert desc["inputs"]["mel_level"] == [1, 40], name
        det = Detector(str(path))
        det.process(audio)
        det.flush()
        got = np.asarray(det.probs)[: len(want)]
        assert len(got) == len(want)
        if name == "fp32":
            assert np.abs(got - want).max() <= 1e-5, name
        else:
            assert agreement_outside_margin(want, got) >= INT8_AGREEMENT, name
            assert np.abs(got - want).max() <= INT8_MAX_DIFF, name
