"""training.real and `kws-train eval/report --real`: a tiny FLAC dev set made here (fast, no
../shared needed), and the shipped models on the real dev set (skipped when it is absent)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from kws_export.checkpoint import load_checkpoint
from kws_export.cli_support import run_click
from kws_export.config import CRNNConfig
from kws_export.errors import KWSError
from kws_export.model import CRNN
from training import real
from training.cli import cli
from training.evaluate import CRNNStreamer, stream_probs

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ROOT / "checkpoints" / "student.pt"
STUDENT_INT8W = ROOT / "exported" / "student.stream.int8w.onnx"
STUDENT_STREAM = ROOT / "exported" / "student.stream.onnx"
REAL_SKIP = real.real_absent_reason()
needs_real = pytest.mark.skipif(REAL_SKIP is not None, reason=REAL_SKIP or "")

# amplitude of the tone in each kind of fake clip: a scorer reading amplitude is an oracle
AMP = {"keyword": 0.5, "other": 0.05, "silence": 0.01, "view_glass": 0.905}


def kws_train(*args) -> int:
    return run_click(cli, "kws-train", [str(a) for a in args])


def tone(seconds: float, amp: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def make_dev_set(root: Path) -> Path:
    """speech_commands_test_v0.02/{sheila 3, yes 4, no 3 (one 0.6 s), _silence_ 2} and
    wake_phrases/{alexa 2 x 2 s, view_glass 2 x 2.5 s}, all FLAC, plus stray files."""
    sc, wake = root / real.SC_DIR, root / real.WAKE_DIR
    clips = {("sheila", 3): 1.0, ("yes", 4): 1.0, ("no", 3): 1.0}
    for (word, n), sec in clips.items():
        (sc / word).mkdir(parents=True)
        for i in range(n):
            amp = AMP["keyword"] if word == "sheila" else AMP["other"]
            sf.write(sc / word / f"{i:08x}_nohash_0.flac", tone(0.6 if (word, i) == ("no", 2) else sec, amp), 16000)
    (sc / "_silence_").mkdir()
    for i in range(2):
        sf.write(sc / "_silence_" / f"noise_{i}.flac", tone(1.0, AMP["silence"]), 16000)
    for word, sec in (("alexa", 2.0), ("view_glass", 2.5)):
        (wake / word).mkdir(parents=True)
        for i in range(2):
            x = tone(sec, AMP["other"])
            if word == "view_glass":  # the phrase sits in the clip's second half
                x[int(1.2 * 16000):int(2.1 * 16000)] *= AMP["view_glass"] / AMP["other"]
            sf.write(wake / word / f"spk{i}.flac", x, 16000)
    (sc / "LICENSE").write_text("cc-by")
    (wake / "LICENSE").write_text("apache")
    return root


@pytest.fixture
def dev_dir(tmp_path):
    return make_dev_set(tmp_path / "real")


def amplitude_scorer(window: int = 16000) -> real.ClipScorer:
    return real.ClipScorer(lambda b: np.abs(b).max(axis=1), window, 16000, batch_size=3)


# Listing ------------------------------------------------------------------------------------------
def test_listing_labels_and_clip_sets(dev_dir):
    dev = real.open_real(dev_dir, "Sheila")
    assert len(dev) == 3 + 4 + 3 + 2 + 2 and len(dev.silence) == 2
    assert dev.keyword_part == real.SC_DIR and int(dev.labels.sum()) == 3
    assert all(r.split("/")[1] == "sheila" for r in np.array(dev.relpaths)[dev.labels == 1])
    assert dev.clip_indices.tolist() == list(range(10))  # Speech Commands speech clips only
    wake = real.open_real(dev_dir, "view glass")
    assert wake.keyword_folder == "view_glass" and wake.keyword_part == real.WAKE_DIR
    assert int(wake.labels.sum()) == 2 and wake.clip_indices.size == 14  # all speech clips of both parts
    d = dev.describe()
    assert d["speech_clips"] == 14 and d["clip_metric_clips"] == 10 and d["silence_clips"] == 2


def test_bad_dev_sets_are_one_line_errors(dev_dir, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "file").write_text("x")
    empty = tmp_path / "empty"
    (empty / real.SC_DIR / "yes").mkdir(parents=True)
    cases = [(tmp_path / "missing", "sheila", "not found"), (tmp_path / "file", "sheila", "is not a folder"),
             (tmp_path / "plain", "sheila", "not the real dev set layout"),
             (empty, "sheila", "no .flac or .wav clips"), (dev_dir, "marvin", "no clips for keyword 'marvin'"),
             (dev_dir, "!!", "no letters or digits")]
    for path, keyword, words in cases:
        with pytest.raises(KWSError) as e:
            real.open_real(path, keyword)
        assert words in str(e.value) and "\n" not in str(e.value), (path, keyword, str(e.value))


# Clips --------------------------------------------------------------------------------------------
def test_clip_windows_pad_short_and_slide_over_long():
    w = real.clip_windows(np.ones(600, np.float32), 1000, 100)
    assert w.shape == (1, 1000) and w[0, :600].min() == 1 and w[0, 600:].max() == 0
    x = np.arange(2550, dtype=np.float32)
    w = real.clip_windows(x, 1000, 500)
    assert [int(r[0]) for r in w] == [0, 500, 1000, 1500, 1550]  # the last window ends with the clip
    assert real.clip_windows(x[:1000], 1000, 500).shape == (1, 1000)


def test_clip_metric_with_an_oracle_and_a_coin(dev_dir):
    dev = real.open_real(dev_dir, "sheila")
    r = real.evaluate_clips(dev, amplitude_scorer(), threshold=0.3)
    assert r["clips"] == 10 and r["keyword_clips"] == 3
    assert r["au_fa_fr"] == 0.0 and r["recall_at_0.1pct_far"] == 1.0 and r["recall_at_1pct_far"] == 1.0
    assert r["at_threshold"] == {"threshold": 0.3, "recall": 1.0, "false_accepts": 0, "far": 0.0}
    assert r["silence"]["clips"] == 2 and r["silence"]["max_prob"] == pytest.approx(AMP["silence"], rel=1e-3)
    assert r["silence"]["accepted_at_threshold"] == 0
    # the wake phrases are extra negatives for sheila; view_glass holds loud audio
    assert r["wake_phrases_negatives"]["clips"] == 4 and r["wake_phrases_negatives"]["accepted_at_threshold"] == 2
    inverted = real.ClipScorer(lambda b: 1.0 - np.abs(b).max(axis=1), 16000)
    bad = real.evaluate_clips(dev, inverted, extra_negatives=False)
    assert bad["au_fa_fr"] > 0.2 and bad["recall_at_1pct_far"] == 0.0 and "silence" not in bad


def test_wake_phrase_keyword_scores_long_clips_on_windows(dev_dir):
    dev = real.open_real(dev_dir, "view_glass")
    r = real.evaluate_clips(dev, amplitude_scorer(), threshold=0.3)
    assert r["clips"] == 14 and r["keyword_clips"] == 2 and r["au_fa_fr"] == 0.0
    assert "wake_phrases_negatives" not in r
    seen = []

    def first_window_only(b):
        seen.append(b.shape)
        return np.abs(b[:, :8000]).max(axis=1)

    real.evaluate_clips(dev, real.ClipScorer(first_window_only, 32000, batch_size=1000), extra_negatives=False)
    assert all(s[1] == 32000 for s in seen)  # a 2 s model gets 2 s windows (1 s clips padded)


# Stream -------------------------------------------------------------------------------------------
def test_stream_is_seeded_complete_and_made_in_pieces(dev_dir):
    dev = real.open_real(dev_dir, "sheila").load()
    a, b, c = real.build_stream(dev, 3), real.build_stream(dev, 3), real.build_stream(dev, 4)
    assert a.order.tolist() == b.order.tolist() != c.order.tolist()
    assert sorted(a.order.tolist()) == list(range(len(dev)))  # every speech clip once, no silence
    whole = np.concatenate([dev.wave(int(i)) for i in a.order])
    assert whole.size == a.samples and a.seconds == pytest.approx(10 * 1.0 - 0.4 + 2 * 2.0 + 2 * 2.5)
    for piece in (1000, 16000, 10 ** 6):
        parts = list(a.pieces(dev, piece))
        assert max(p.size for p in parts) <= piece and np.array_equal(np.concatenate(parts), whole)
    assert len(a.spans) == 3
    for (s, e), i in zip(a.spans, [i for i in a.order if dev.labels[i] == 1]):
        seg = whole[int(round(s * 16000)):int(round(e * 16000))]
        assert np.array_equal(seg, dev.wave(int(i)))
    sub = real.build_stream(dev, 0, indices=[0, 3, 4])  # no/0, sheila/0, sheila/1 (folders sorted)
    assert sorted(sub.order.tolist()) == [0, 3, 4] and len(sub.spans) == 2


def test_stream_hits_false_alarms_and_sweep(dev_dir):
    dev = real.open_real(dev_dir, "sheila").load()
    step = 0.08

    def loudness(audio, fake_alarm_at=None):
        n = audio.size // 1280
        p = np.abs(audio[: n * 1280]).reshape(n, 1280).max(axis=1)
        if fake_alarm_at is not None:  # one spike far from any keyword, below 0.9
            p[fake_alarm_at] = 0.8
        return p

    stream = real.build_stream(dev, 0)
    loud = loudness(np.concatenate(list(stream.pieces(dev, 16000)))) > 0.1
    quiet = [k for k in range(15, loud.size - 15) if not loud[k - 15:k + 16].any()]
    r = real.evaluate_stream(dev, real.CallableStream(lambda a: loudness(a, quiet[len(quiet) // 2]), step), threshold=0.3)
    at = r["at_threshold"]
    # hits: the three sheilas; false alarms: the spike and the two (loud) view_glass clips
    assert (at["hits"], at["keywords"], at["false_alarms"]) == (3, 3, 3) and r["keywords"] == 3
    assert at["false_alarms_per_hour"] == pytest.approx(3 / (stream.seconds / 3600))
    assert r["hours"] == pytest.approx(stream.seconds / 3600) and r["clips"] == 14
    sweep = {row["max_false_alarms_per_hour"]: row for row in r["sweep"]}
    assert sweep[0.5]["threshold"] == pytest.approx(0.91) and sweep[0.5]["hits"] == 0  # no alarm at all: above the phrases
    curve = {row["threshold"]: row for row in r["curve"]}
    assert curve[0.5]["hits"] == 3 and curve[0.7]["hits"] == 0 and curve[0.7]["false_alarms_per_hour"] > 0
    chosen = real.evaluate_stream(dev, real.CallableStream(lambda a: loudness(a, quiet[len(quiet) // 2]), step),
                                  choose_fa_per_hour=0.5)
    assert chosen["at_threshold"]["threshold"] == pytest.approx(0.91) and "0.5 false alarms" in chosen["threshold_source"]
    with pytest.raises(KWSError, match="returned"):
        real.evaluate_stream(dev, real.CallableStream(lambda a: np.zeros(3), step), threshold=0.5)
    # patience 2: the one-step spike no longer fires; the keywords (loud for many steps) still do
    patient = real.evaluate_stream(dev, real.CallableStream(lambda a: loudness(a, quiet[len(quiet) // 2]), step),
                                   threshold=0.3, patience=2)
    assert patient["patience"] == 2 and r["patience"] == 1
    assert (patient["at_threshold"]["hits"], patient["at_threshold"]["false_alarms"]) == (3, 2)


@pytest.mark.parametrize("level_ms", [0, 500], ids=["plain", "levelled"])
def test_crnn_streamer_equals_stream_probs_across_pieces(level_ms):
    torch.manual_seed(0)
    model = CRNN(CRNNConfig(channels=3, hidden=8, gru_layers=2, level_norm_ms=level_ms)).eval()
    x = (0.1 * np.random.default_rng(0).standard_normal(16000 * 8)).astype(np.float32)
    ref = stream_probs(model, x[: x.size // 1280 * 1280])
    s = CRNNStreamer(model)
    cuts = [0, 700, 1280, 1281, 40000, 40000, 99999, x.size]
    got = np.concatenate([s.process(x[a:b]) for a, b in zip(cuts[:-1], cuts[1:])] + [s.flush()])
    assert got.size == -(-x.size // 1280) and np.abs(got[: ref.size] - ref).max() < 1e-5
    s.reset()
    assert np.abs(s.process(x[:12800]) - ref[:10]).max() < 1e-5  # reset starts a new stream


@pytest.mark.skipif(not STUDENT_STREAM.is_file(), reason="exported/student.stream.onnx not built")
def test_detector_stream_matches_the_checkpoint_and_the_runtime(dev_dir):
    from kws_export.checkpoint import load_checkpoint
    from runtime.detect import Detector

    dev = real.open_real(dev_dir, "sheila").load()
    onnx = real.evaluate_stream(dev, real.DetectorStream(STUDENT_STREAM), seed=1)
    ckpt = load_checkpoint(STUDENT)
    ours = real.evaluate_stream(dev, CRNNStreamer(ckpt.build_model()), threshold=ckpt.metadata["threshold"], seed=1)
    assert onnx["at_threshold"]["threshold"] == ckpt.metadata["threshold"]
    assert onnx["at_threshold"] == ours["at_threshold"]
    # the events made here are the runtime's own (same threshold, 1 s refractory)
    stream = real.build_stream(dev, 1)
    det = Detector(str(STUDENT_STREAM), threshold=0.02)
    events = [e["time"] for x in stream.pieces(dev, 5000) for e in det.process(x)] + [e["time"] for e in det.flush()]
    track = real.stream_track(dev, stream, real.DetectorStream(STUDENT_STREAM))
    from training.metrics import detect_events

    assert np.allclose(detect_events(track, 0.08, 0.02, real.REFRACTORY_S), events)


# CLI ----------------------------------------------------------------------------------------------
def test_eval_real_only_prints_a_real_section(dev_dir, capsys):
    capsys.readouterr()
    assert kws_train("eval", "--ckpt", STUDENT, "--real", dev_dir, "--threads", "1", "--device", "cpu") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold_source"] == "checkpoint metadata" and set(out) == {"checkpoint", "keyword", "threshold",
                                                                             "threshold_source", "real"}
    r = out["real"]
    assert r["dev_set"]["speech_clips"] == 14 and r["clips"]["clips"] == 10 and r["stream"]["keywords"] == 3
    assert r["stream"]["model"].startswith("checkpoint") and r["threshold"] == out["threshold"]
    for key in ("au_fa_fr", "recall_at_0.1pct_far", "recall_at_1pct_far"):
        assert 0.0 <= r["clips"][key] <= 1.0


@pytest.mark.skipif(not STUDENT_INT8W.is_file(), reason="exported/student.stream.int8w.onnx not built")
def test_eval_onnx_stream_and_threshold_choice(dev_dir, capsys):
    capsys.readouterr()
    assert kws_train("eval", "--ckpt", STUDENT, "--onnx", STUDENT_INT8W, "--real", dev_dir, "--no-real-stream",
                     "--threads", "1") == 0  # --no-real-stream wins: clips only
    assert "stream" not in json.loads(capsys.readouterr().out)["real"]
    assert kws_train("eval", "--ckpt", STUDENT, "--onnx", STUDENT_INT8W, "--real", dev_dir, "--real-max-fa", "100000",
                     "--threads", "1") == 0
    out = json.loads(capsys.readouterr().out)
    r = out["real"]
    assert r["stream"]["model"] == str(STUDENT_INT8W) and out["threshold"] == r["threshold"] == 0.01
    assert "real stream" in out["threshold_source"] and r["clips"]["at_threshold"]["threshold"] == 0.01


TEACHER_STREAM = ROOT / "exported" / "teacher_embedding.stream.onnx"


def test_eval_two_stage_section(dev_dir, capsys):
    capsys.readouterr()
    assert kws_train("eval", "--ckpt", STUDENT, "--onnx", STUDENT_INT8W, "--verifier", TEACHER_STREAM, "--real", dev_dir,
                     "--trigger", "0.1", "--threads", "1") == 0
    v = json.loads(capsys.readouterr().out)["real"]["verified"]
    assert v["model"] == str(STUDENT_INT8W) and v["verifier"] == str(TEACHER_STREAM) and v["keywords"] == 3
    assert v["trigger"] == 0.1 and v["replay_steps"] == 27 + 8 and v["threshold_source"].endswith("kws.threshold")
    assert v["at_threshold"]["threshold"] == pytest.approx(load_checkpoint(ROOT / "checkpoints" / "teacher_embedding.pt")
                                                           .metadata["threshold"])
    assert [r["max_false_alarms_per_hour"] for r in v["sweep"]] == [2.0, 1.0, 0.5]


def test_eval_real_bad_inputs_are_one_line_errors(dev_dir, tmp_path, capsys):
    cases = [(["--real", tmp_path / "nope"], "real dev set not found"), (["--real", tmp_path], "not the real dev set"),
             (["--real", dev_dir, "--keyword", "marvin"], "no clips for keyword 'marvin'"), ([], "give --data"),
             (["--real", dev_dir, "--real-max-fa", "1", "--threshold", "0.5"], "give one"),
             (["--onnx", tmp_path / "missing.onnx", "--real", dev_dir], "missing.onnx"),
             (["--real", dev_dir, "--patience", "0"], "--patience must be"),
             (["--real", dev_dir, "--verifier", TEACHER_STREAM], "add --onnx"),
             (["--real", dev_dir, "--trigger", "0.3"], "--trigger needs --verifier"),
             (["--onnx", STUDENT_INT8W, "--verifier", TEACHER_STREAM, "--real", dev_dir, "--trigger", "2"], "not a probability"),
             (["--onnx", STUDENT_INT8W, "--verifier", TEACHER_STREAM, "--real", dev_dir, "--no-real-stream"],
              "drop --no-real-stream")]
    for extra, words in cases:
        capsys.readouterr()
        assert kws_train("eval", "--ckpt", STUDENT, *extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err, (extra, err)


# The real dev set (../shared/real) ------------------------------------------------------------------
@needs_real
def test_student_on_real_clips():
    """The shipped student's real figures are the ones in its model card, and better than the
    previous student's (AU-FA-FR 3.67e-5, recall 0.50 at 0.1% FAR, as the issue measured)."""
    from kws_export.checkpoint import load_checkpoint

    dev = real.open_real(None, "sheila")
    assert dev.describe()["clip_metric_clips"] == 4312 and dev.describe()["keyword_clips"] == 16
    ckpt = load_checkpoint(STUDENT)
    r = real.evaluate_clips(dev, real.crnn_clip_scorer(ckpt.build_model()), extra_negatives=False)
    card = ckpt.metadata["metrics"]["real"]["clips"]
    assert r["clips"] == 4312 and r["false_accepts_at_0.1pct_far"] <= 4
    assert r["au_fa_fr"] == pytest.approx(card["au_fa_fr"], rel=1e-3) and r["au_fa_fr"] < 3.67e-5
    assert r["recall_at_0.1pct_far"] == card["recall_at_0.1pct_far"] > 0.5


@needs_real
def test_embedding_teacher_ranks_real_keywords_first():
    """The speech-embedding teacher on the 16 real sheilas and every 10th other clip."""
    from kws_export.checkpoint import load_checkpoint

    teacher = load_checkpoint(ROOT / "checkpoints" / "teacher_embedding.pt")
    dev = real.open_real(None, "sheila")
    idx = [*np.flatnonzero(dev.labels == 1), *np.flatnonzero(dev.labels == 0)[::10]]
    probs = real.score_clips(real.embedding_clip_scorer(teacher.build_model()), [dev.wave(i) for i in idx])
    labels = dev.labels[idx]
    pos, neg = probs[labels == 1], probs[labels == 0]
    misordered = int((neg[None, :] >= pos[:, None]).sum())
    # over the whole set 6.45e-7 x 4312^2 = 12 misordered pairs; the shipped CRNN student has 260
    assert misordered <= 10, misordered
    assert (neg >= teacher.metadata["threshold"]).sum() <= 2


HITS_SUB_STREAM = 5  # measured (5/16 at the shipped threshold); the whole stream is in the model card


@needs_real
@pytest.mark.skipif(not STUDENT_INT8W.is_file(), reason="exported/student.stream.int8w.onnx not built")
def test_student_int8w_on_a_real_sub_stream():
    """All 16 sheilas among 400 other clips (the full 2 h stream is `kws-train eval --real`)."""
    dev = real.open_real(None, "sheila")
    others = np.flatnonzero(dev.labels == 0)[::13][:400]
    r = real.evaluate_stream(dev, real.DetectorStream(STUDENT_INT8W), seed=0,
                             indices=[*np.flatnonzero(dev.labels == 1), *others])
    at = r["at_threshold"]
    assert at["keywords"] == 16 and at["threshold"] == load_checkpoint(STUDENT).metadata["threshold"]
    assert at["hits"] >= HITS_SUB_STREAM
    assert r["hours"] * 3600 > 400 and r["clips"] == 416


HITS_SUB_STREAM_TWO_STAGE = 14  # measured (the student alone: 5); the whole 2 h stream: 15/16 at 0.48 FA/h


@needs_real
@pytest.mark.skipif(not STUDENT_INT8W.is_file(), reason="exported/student.stream.int8w.onnx not built")
def test_two_stage_on_a_real_sub_stream():
    """The shipped pair as runtime/detect.py --verifier runs it, on the sub-stream above: the
    teacher's hits for a tenth of its steps."""
    dev = real.open_real(None, "sheila")
    others = np.flatnonzero(dev.labels == 0)[::13][:400]
    r = real.evaluate_verified(dev, STUDENT_INT8W, TEACHER_STREAM, indices=[*np.flatnonzero(dev.labels == 1), *others])
    at = r["at_threshold"]
    assert at["keywords"] == 16 and at["hits"] >= HITS_SUB_STREAM_TWO_STAGE > HITS_SUB_STREAM
    assert at["false_alarms"] <= 1 and at["verifier_step_share"] < 0.5


def test_eval_saves_the_real_stream_threshold_in_the_checkpoint(dev_dir, tmp_path, capsys):
    ckpt = tmp_path / "student.pt"
    shutil.copy(STUDENT, ckpt)
    before = load_checkpoint(ckpt).metadata
    assert kws_train("eval", "--ckpt", ckpt, "--real", dev_dir, "--save-threshold", "--threads", "1") == 2
    assert "--real-max-fa" in capsys.readouterr().err
    assert kws_train("eval", "--ckpt", ckpt, "--real", dev_dir, "--real-max-fa", "100000", "--save-threshold",
                     "--threads", "1") == 0
    out = json.loads(capsys.readouterr().out)
    after = load_checkpoint(ckpt)
    assert after.metadata["threshold"] == out["threshold"] == 0.01 != before["threshold"]
    assert "real stream" in after.metadata["threshold_source"]
    assert after.metadata["metrics"]["real"]["stream"]["keywords"] == 3
    assert after.metadata["metrics"]["au_fa_fr"] == before["metrics"]["au_fa_fr"]  # the rest of the card is kept
    for k, v in load_checkpoint(STUDENT).state_dict.items():
        assert torch.equal(after.state_dict[k], v)
    # with --patience the threshold is chosen for it, and the streaming export carries both
    assert kws_train("eval", "--ckpt", ckpt, "--real", dev_dir, "--real-max-fa", "100000", "--patience", "3",
                     "--save-threshold", "--threads", "1") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["real"]["stream"]["patience"] == 3 and load_checkpoint(ckpt).metadata["patience"] == 3
    from kws_export.export_onnx import export_onnx_file
    from runtime.detect import Detector

    export_onnx_file(ckpt, tmp_path / "s.stream.onnx", streaming=True)
    det = Detector(str(tmp_path / "s.stream.onnx"))
    assert det.patience == 3 and det.threshold == pytest.approx(out["threshold"])
    assert Detector(str(STUDENT_STREAM)).patience == 1  # no kws.patience: 1
