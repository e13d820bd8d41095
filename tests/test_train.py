"""Train a tiny teacher and students for a few steps on a tiny synthetic corpus, through the
real `kws-train` commands."""

import json
import math

import pytest
import torch

from kws_export.checkpoint import load_checkpoint, save_checkpoint
from kws_export.cli_support import run_click
from kws_export.config import CRNNConfig
from kws_export.model import CRNN
from training.cli import cli
from training.distill import MagnitudePruner, attention_kd_loss, kd_loss, resample_distribution
from training.train import balanced_indices

TINY = ["--channels", "2", "--hidden", "8", "--gru-layers", "1"]
FAST = ["--batch-size", "32", "--epoch-size", "256", "--threads", "1", "--no-progress",
        "--val-minutes", "0.5", "--eval-minutes", "0.5", "--device", "cpu"]
EVAL_FIELDS = ("au_fa_fr", "frr_at_1pct_far", "au_fa_fr_streaming", "params", "macs_per_second_network",
               "macs_per_second_frontend", "fp32_bytes", "int8_bytes", "streaming_recall", "false_alarms_per_hour",
               "threshold")


def kws_train(*args) -> int:
    return run_click(cli, "kws-train", [str(a) for a in args])


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from training.synth import synth_corpus

    root = tmp_path_factory.mktemp("train-corpus") / "sheila"
    synth_corpus(root, "sheila", per_word=8, keyword_count=60, seed=0, workers=2, force=False, progress=False,
                 words=["yes", "no", "up", "down", "left", "right"], max_confusables=3, noise_seconds=5.0)
    return root


@pytest.fixture(scope="session")
def teacher_ckpt(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    rc = kws_train("teacher", "--data", corpus, "--out", out, "--epochs", "4", "--lr", "3e-3", *TINY, *FAST)
    assert rc == 0
    return out


def test_teacher_loss_falls_and_checkpoint_has_model_card(teacher_ckpt, corpus, tmp_path):
    ckpt = load_checkpoint(teacher_ckpt)
    meta = ckpt.metadata
    history = meta["training"]["history"]
    assert len(history) == 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert meta["keyword"] == "sheila" and meta["role"] == "teacher"
    assert meta["data"]["corpus"] == str(corpus) and meta["data"]["synth"]["seed"] == 0
    assert "kws-train synth" in meta["data"]["synth_command"]
    assert meta["command"].startswith("kws-train teacher --data")
    assert meta["training_time_s"] > 0
    assert 0.0 < meta["threshold"] < 1.0
    for field in EVAL_FIELDS:
        assert field in meta["metrics"], field
    # round trip: re-saving and re-loading keeps weights and metadata
    model = ckpt.build_model()
    copy_path = tmp_path / "copy.pt"
    save_checkpoint(copy_path, model, meta)
    again = load_checkpoint(copy_path)
    assert again.config == ckpt.config and again.metadata == meta
    for k, v in ckpt.state_dict.items():
        assert torch.equal(v, again.state_dict[k])
    x = torch.randn(3, 16000) * 0.1
    assert torch.equal(model.keyword_prob(x), again.build_model().keyword_prob(x))


def test_eval_prints_every_field(teacher_ckpt, corpus, capsys):
    capsys.readouterr()
    rc = kws_train("eval", "--ckpt", teacher_ckpt, "--data", corpus, "--stream-minutes", "0.5", "--threads", "1")
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    for field in EVAL_FIELDS:
        assert field in result, field
        assert isinstance(result[field], (int, float)) and math.isfinite(result[field]), field
    ckpt = load_checkpoint(teacher_ckpt)
    assert result["params"] == sum(v.numel() for v in ckpt.state_dict.values())
    assert result["threshold"] == ckpt.metadata["threshold"]
    assert result["threshold_source"] == "checkpoint metadata"
    assert result["fp32_bytes"] == 4 * result["params"]
    assert 0.0 <= result["au_fa_fr"] <= 1.0 and 0.0 <= result["streaming_recall"] <= 1.0
    assert "real" not in result


def test_eval_with_real_adds_a_real_section(teacher_ckpt, corpus, tmp_path, capsys):
    from test_real import make_dev_set

    dev = make_dev_set(tmp_path / "real")
    capsys.readouterr()
    rc = kws_train("eval", "--ckpt", teacher_ckpt, "--data", corpus, "--stream-minutes", "0.5", "--threads", "1",
                   "--real", dev, "--real-max-fa", "100000")
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    for field in EVAL_FIELDS:
        assert field in result, field
    real = result["real"]
    assert real["clips"]["clips"] == 10 and real["stream"]["keywords"] == 3
    assert result["threshold"] == real["threshold"] == 0.01  # chosen on the real stream, used everywhere
    assert result["threshold_source"].startswith("real stream")


def test_resume_continues_exactly(corpus, tmp_path):
    full = tmp_path / "full.pt"
    part = tmp_path / "part.pt"
    common = ["--data", corpus, "--lr", "3e-3", *TINY, *FAST, "--eval-minutes", "0.2", "--val-minutes", "0.2"]
    assert kws_train("teacher", "--out", full, "--epochs", "3", *common) == 0
    assert kws_train("teacher", "--out", part, "--epochs", "3", "--stop-after-epochs", "2", *common) == 0
    assert len(load_checkpoint(part).metadata["training"]["best"]) > 0  # a usable checkpoint already
    assert kws_train("teacher", "--out", part, "--epochs", "3", "--resume", *common) == 0
    a, b = load_checkpoint(full), load_checkpoint(part)
    assert [h["train_loss"] for h in a.metadata["training"]["history"]] == pytest.approx(
        [h["train_loss"] for h in b.metadata["training"]["history"]], rel=1e-6)
    for k in a.state_dict:
        assert torch.allclose(a.state_dict[k], b.state_dict[k], atol=1e-6), k


def test_time_boxed_epochs_fit_what_is_left():
    from training.train import time_boxed_epochs

    assert time_boxed_epochs(95.0, 10.0, 1, 60) == 10  # 1 run + 9 more of 10 s
    assert time_boxed_epochs(1e6, 10.0, 1, 60) == 60  # the cap
    assert time_boxed_epochs(5.0, 10.0, 1, 60) == 1 and time_boxed_epochs(-3.0, 10.0, 1, 60) == 1
    assert time_boxed_epochs(25.0, 10.0, 7, 40) == 9 and time_boxed_epochs(-1.0, 10.0, 7, 40) == 7  # later: shrinks


def test_time_box_ends_training_and_its_epochs_survive_resume(corpus, tmp_path, monkeypatch):
    import training.train as train_mod

    common = ["--data", corpus, "--lr", "3e-3", *TINY, *FAST, "--eval-minutes", "0.2", "--val-minutes", "0.2"]
    # a box spent by the first epoch: one epoch, and a finished, evaluated checkpoint
    spent = tmp_path / "spent.pt"
    assert kws_train("teacher", "--out", spent, "--epochs", "50", "--time-box", "0.0001", *common) == 0
    meta = load_checkpoint(spent).metadata
    assert meta["training"]["status"] == "done" and meta["training"]["epochs_planned"] == 1
    assert len(meta["training"]["history"]) == 1 and "metrics" in meta
    # a box that fits 3 of at most 50 epochs trains exactly as --epochs 3 (the schedule is
    # stretched to the 3), and a resume keeps the 3 when they still fit
    full, boxed = tmp_path / "full.pt", tmp_path / "boxed.pt"
    assert kws_train("teacher", "--out", full, "--epochs", "3", *common) == 0
    monkeypatch.setattr(train_mod, "time_boxed_epochs", lambda left, pace, done, cap: 3)
    assert kws_train("teacher", "--out", boxed, "--epochs", "50", "--time-box", "10", "--stop-after-epochs", "1",
                     *common) == 0
    monkeypatch.undo()
    assert kws_train("teacher", "--out", boxed, "--epochs", "50", "--time-box", "10", "--resume", *common) == 0
    a, b = load_checkpoint(full), load_checkpoint(boxed)
    assert b.metadata["training"]["epochs_planned"] == 3
    assert [h["train_loss"] for h in a.metadata["training"]["history"]] == pytest.approx(
        [h["train_loss"] for h in b.metadata["training"]["history"]], rel=1e-6)
    assert [h["lr"] for h in a.metadata["training"]["history"]] == pytest.approx(
        [h["lr"] for h in b.metadata["training"]["history"]], rel=1e-9)
    # epochs slower than the first (here: a box already spent after the first fixed 5) shrink
    # the total to what still fits; the run ends finished and evaluated
    slow = tmp_path / "slow.pt"
    real_fit = train_mod.time_boxed_epochs
    monkeypatch.setattr(train_mod, "time_boxed_epochs",
                        lambda left, pace, done, cap: 5 if done == 1 else real_fit(left, pace, done, cap))
    assert kws_train("teacher", "--out", slow, "--epochs", "50", "--time-box", "0.0001", *common) == 0
    monkeypatch.undo()
    meta = load_checkpoint(slow).metadata
    assert meta["training"]["epochs_planned"] == 2 and len(meta["training"]["history"]) == 2
    assert meta["training"]["status"] == "done" and "metrics" in meta
    assert kws_train("teacher", "--out", tmp_path / "bad.pt", "--time-box", "0", *common) == 2


def test_teacher_init_continues_from_a_checkpoint(teacher_ckpt, corpus, tmp_path):
    from kws_export.fileio import sha256_file

    out = tmp_path / "continued.pt"
    # the architecture comes from --init (these default-size options are ignored); a
    # near-zero learning rate keeps the weights where the parent left them
    assert kws_train("teacher", "--data", corpus, "--out", out, "--init", teacher_ckpt, "--epochs", "1",
                     "--lr", "1e-12", *FAST, "--eval-minutes", "0.2", "--val-minutes", "0.2") == 0
    parent, child = load_checkpoint(teacher_ckpt), load_checkpoint(out)
    assert child.config == parent.config
    assert child.metadata["init"] == {"path": str(teacher_ckpt), "sha256": sha256_file(teacher_ckpt)}
    for k in parent.state_dict:
        assert torch.allclose(parent.state_dict[k], child.state_dict[k], atol=1e-6), k


def test_distill_student_with_attention_kd_on_another_time_axis(teacher_ckpt, corpus, tmp_path):
    out = tmp_path / "student.pt"
    # kernel/stride (time) differ from the teacher's: attention KD resamples the teacher's distribution
    rc = kws_train("distill", "--teacher", teacher_ckpt, "--data", corpus, "--out", out, "--epochs", "3",
                   "--channels", "2", "--hidden", "6", "--kernel", "5", "12", "--stride", "4", "6",
                   "--attention-kd", "--temperature", "3", "--alpha", "0.5", *FAST)
    assert rc == 0
    ckpt = load_checkpoint(out)
    assert ckpt.config.kernel == (5, 12) and ckpt.config.stride == (4, 6)
    meta = ckpt.metadata
    assert meta["parent_teacher"]["path"] == str(teacher_ckpt)
    import hashlib

    assert meta["parent_teacher"]["sha256"] == hashlib.sha256(teacher_ckpt.read_bytes()).hexdigest()
    assert meta["training"]["objective"]["attention_kd_weight"] == 1.0
    hist = meta["training"]["history"]
    assert "train_att" in hist[0] and hist[-1]["train_loss"] < hist[0]["train_loss"]
    for field in EVAL_FIELDS:
        assert field in meta["metrics"]


def test_kd_similarity_needs_the_embedding_teacher(teacher_ckpt, corpus, tmp_path, capsys):
    out = tmp_path / "student.pt"
    assert kws_train("distill", "--teacher", teacher_ckpt, "--data", corpus, "--out", out, "--kd-similarity", "1",
                     *TINY, *FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--kd-similarity needs the embedding teacher" in err[0]
    assert not out.exists()


def test_distill_with_pruning_reaches_the_sparsity(teacher_ckpt, corpus, tmp_path):
    out = tmp_path / "pruned.pt"
    rc = kws_train("distill", "--teacher", teacher_ckpt, "--data", corpus, "--out", out, "--epochs", "2",
                   "--prune", "0.5", "--prune-epochs", "1", *TINY, *FAST)
    assert rc == 0
    model = load_checkpoint(out).build_model()
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            assert (p == 0).float().mean() >= 0.45, name


def test_finetune_stream_and_report(teacher_ckpt, corpus, tmp_path):
    student = tmp_path / "student.pt"
    assert kws_train("distill", "--teacher", teacher_ckpt, "--data", corpus, "--out", student, "--epochs", "2",
                     *TINY, *FAST) == 0
    streamed = tmp_path / "student_stream.pt"
    rc = kws_train("finetune-stream", "--ckpt", student, "--data", corpus, "--out", streamed, "--epochs", "2",
                   "--seq-seconds", "6", "--sequences", "4", "--steps-per-epoch", "3", "--threads", "1",
                   "--no-progress", "--val-minutes", "0.5", "--eval-minutes", "0.5", "--device", "cpu")
    assert rc == 0
    meta = load_checkpoint(streamed).metadata
    assert meta["finetuned_from"]["path"] == str(student)
    assert "train_stream" in meta["training"]["history"][0]

    out = tmp_path / "reports"
    from test_real import make_dev_set

    dev = make_dev_set(tmp_path / "real")
    rc = kws_train("report", "--ckpt", f"teacher={teacher_ckpt}", "--ckpt", f"KD={student}",
                   "--ckpt", f"KD streaming={streamed}", "--data", corpus, "--out", out,
                   "--stream-minutes", "0.5", "--threads", "1", "--device", "cpu", "--real", dev)
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    settings = [r["setting"] for r in report["rows"]]
    assert settings == ["teacher", "KD", "KD + static int8", "KD + fp16", "KD streaming"]
    rows = {r["setting"]: r for r in report["rows"]}
    assert rows["KD + static int8"]["memory_bytes"] < rows["KD + fp16"]["memory_bytes"] < rows["KD"]["memory_bytes"]
    md = (out / "report.md").read_text()
    assert "| KD + static int8 |" in md
    # real speech beside the synthetic columns; the int8 simulation has clip figures only
    assert report["real_dev_set"]["clip_metric_clips"] == 10 and "## Real speech" in md
    for r in report["rows"]:
        assert 0.0 <= r["real_au_fa_fr"] <= 1.0 and 0.0 <= r["real_recall_at_0.1pct_far"] <= 1.0
    assert rows["KD"]["real_stream_keywords"] == 3 and rows["KD + static int8"]["real_stream_hits"] is None
    for png in ("metric_macs.png", "metric_memory.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_are_one_line_errors(tmp_path, corpus, capsys):
    assert kws_train("eval", "--ckpt", tmp_path / "missing.pt", "--data", corpus) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert kws_train("teacher", "--data", tmp_path / "nope", "--out", tmp_path / "t.pt", *TINY, *FAST) == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1
    assert kws_train("teacher", "--data", corpus, "--out", tmp_path / "no" / "t.pt", *TINY, *FAST) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "t.pt").exists()


# Pieces ------------------------------------------------------------------------------------
def test_balanced_sampling_draws_the_requested_share():
    labels = torch.tensor([1] * 10 + [0] * 990)
    idx = balanced_indices(labels, 20000, 0.5, torch.Generator().manual_seed(0))
    share = labels[idx].float().mean().item()
    assert 0.48 < share < 0.52


def test_kd_and_attention_losses():
    logits = torch.randn(5, 2)
    assert kd_loss(logits, logits, 2.0).abs() < 1e-6
    assert kd_loss(logits, -logits, 2.0) > 0
    p = torch.softmax(torch.randn(4, 11), -1)
    q = resample_distribution(p, 15)
    assert q.shape == (4, 15) and torch.allclose(q.sum(-1), torch.ones(4))
    assert attention_kd_loss(p, p).abs() < 1e-6
    assert attention_kd_loss(torch.softmax(torch.randn(4, 11), -1), p) > 0


def test_pruner_schedule_and_masks():
    model = CRNN(CRNNConfig(channels=2, hidden=8, gru_layers=1))
    pruner = MagnitudePruner(0.6, ramp_epochs=3)
    assert pruner.sparsity_at(0) < pruner.sparsity_at(1) < pruner.sparsity_at(2) == pytest.approx(0.6)
    assert not pruner.done(1) and pruner.done(2)
    pruner.update(model, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # an optimizer step would regrow pruned weights ...
    pruner.apply(model)  # ... the masks hold them at zero
    w = model.gru.weight_ih_l0
    assert (w == 0).float().mean() == pytest.approx(0.6, abs=0.02)


def test_int8_simulation_reproduces_the_float_paths_when_quantization_is_off():
    from training.compress import Int8SimCRNN, fp16_model, int8_sim_model

    torch.manual_seed(0)
    model = CRNN(CRNNConfig(channels=3, hidden=8, gru_layers=2)).eval()
    sim = Int8SimCRNN(model)
    sim.load_state_dict(model.state_dict())  # undo the weight rounding ...
    sim.calibrating = True  # ... and the activation rounding: must be the float model exactly
    clips = torch.randn(4, 16000) * 0.1
    stream = torch.randn(2, 16000 * 3) * 0.1
    with torch.no_grad():
        assert torch.allclose(sim.keyword_prob(clips), model.keyword_prob(clips), atol=1e-5)
        assert torch.allclose(sim.stream_reference(stream), model.stream_reference(stream), atol=1e-5)
        q = int8_sim_model(model, clips, stream[0])
        assert set(q.ranges) == {"mel", "gru_in", "h0", "h1", "att_in", "tanh", "context"}
        diff = (q.keyword_prob(clips) - model.keyword_prob(clips)).abs().max()
        assert 0 < diff < 0.05  # int8 rounding is visible but small
        assert (fp16_model(model).keyword_prob(clips) - model.keyword_prob(clips)).abs().max() < 1e-3


def test_streaming_targets_follow_the_receptive_window():
    from training.stream_train import step_targets

    # seminar config: step t ends at 1280 (t + 1) and sees the 16,240 samples before that
    target, mask = step_targets(CRNNConfig(), 40, [(20000, 26000)])
    positive = [i for i in range(40) if mask[i] and target[i] == 1]
    negative = [i for i in range(40) if mask[i] and target[i] == 0]
    unscored = [i for i in range(40) if not mask[i]]
    assert positive == list(range(20, 28))
    assert unscored == list(range(15, 20)) + list(range(28, 32))
    assert negative == list(range(0, 15)) + list(range(32, 40))


def test_select_real_keeps_the_best_epoch_on_the_real_dev_set(corpus, tmp_path):
    from test_real import make_dev_set

    dev = make_dev_set(tmp_path / "real")
    out = tmp_path / "sel.pt"
    assert kws_train("teacher", "--data", corpus, "--out", out, "--epochs", "3", "--lr", "3e-3", *TINY, *FAST,
                     "--select-real", dev) == 0
    meta = load_checkpoint(out).metadata
    history = meta["training"]["history"]
    real = [h["val_real_au_fa_fr"] for h in history]
    assert all(h["val_select"] == h["val_real_au_fa_fr"] for h in history)
    best = min(range(len(history)), key=lambda i: (real[i], history[i]["val_loss"]))
    assert meta["training"]["best"]["epoch"] == best + 1
    assert meta["training"]["objective"]["select"] == "real dev set clip AU-FA-FR"
    assert kws_train("teacher", "--data", corpus, "--out", tmp_path / "x.pt", "--epochs", "1", *TINY, *FAST,
                     "--select-real", tmp_path / "nowhere") == 2


def test_select_real_by_stream_ranks_epochs_by_the_real_stream(corpus, tmp_path):
    from test_real import make_dev_set

    dev = make_dev_set(tmp_path / "real")
    out = tmp_path / "sel_stream.pt"
    assert kws_train("teacher", "--data", corpus, "--out", out, "--epochs", "3", "--lr", "3e-3", *TINY, *FAST,
                     "--select-real", dev, "--select-real-by", "stream") == 0
    meta = load_checkpoint(out).metadata
    history = meta["training"]["history"]
    for h in history:
        # 3 keyword clips in the made-up stream; the score is 1 - mean recall over the three budgets
        hits = [h[f"val_real_stream_hits_at_{fa}_fa_h"] for fa in ("0.5", "1", "2")]
        assert h["val_real_stream_keywords"] == 3 and all(0 <= n <= 3 for n in hits)
        assert h["val_select"] == pytest.approx(1 - sum(hits) / 9 + h["val_real_au_fa_fr"])
    best = min(range(len(history)), key=lambda i: (history[i]["val_select"], history[i]["val_loss"]))
    assert meta["training"]["best"]["epoch"] == best + 1
    assert meta["training"]["objective"]["select"].startswith("real dev set stream")
    assert kws_train("teacher", "--data", corpus, "--out", tmp_path / "y.pt", "--epochs", "1", *TINY, *FAST,
                     "--select-real", dev, "--select-real-by", "nonsense") == 2


def test_select_negatives_ranks_epochs_by_synthetic_keywords_at_real_thresholds(corpus, tmp_path):
    """--select-negatives: thresholds from real recordings without the keyword (the made-up
    dev set without its "sheila" folder), recall from the synthetic validation keywords;
    the kept epoch's figures are recomputed here from its weights."""
    import numpy as np
    from test_real import make_dev_set

    from training.evaluate import streamer_for
    from training.pipeline import open_corpus
    from training.real import evaluate_stream, open_negatives, sample_hours
    from training.train import predict_clips

    dev = make_dev_set(tmp_path / "real")
    out = tmp_path / "sel_neg.pt"
    assert kws_train("teacher", "--data", corpus, "--out", out, "--epochs", "3", "--lr", "3e-3", *TINY, *FAST,
                     "--select-negatives", dev) == 0
    ckpt = load_checkpoint(out)
    meta = ckpt.metadata
    history = meta["training"]["history"]
    for h in history:
        found = [h[f"val_syn_recall_at_real_{fa}_fa_h"] for fa in ("0.5", "1", "2")]
        assert all(0 <= f <= 1 for f in found)
        assert "val_real_au_fa_fr" not in h and "val_real_stream_hits_at_1_fa_h" not in h
        assert h["val_select"] == pytest.approx(1 - sum(found) / 3 + h["val_au_fa_fr"])
    best = min(range(len(history)), key=lambda i: (history[i]["val_select"], history[i]["val_loss"]))
    assert meta["training"]["best"]["epoch"] == best + 1
    assert meta["training"]["objective"]["select"].startswith("real negatives")
    negatives = open_negatives(dev, "sheila").load()
    assert "sheila" not in {r.split("/")[1] for r in negatives.relpaths}
    model = ckpt.build_model()
    s = evaluate_stream(negatives, streamer_for(model), indices=sample_hours(negatives, 2.0))
    assert s["keywords"] == 0
    val = open_corpus(corpus, None, None).get("validation", model.config)
    probs = predict_clips(model, val).numpy()[val.labels.numpy() == 1]
    for row in s["sweep"]:
        fa, t = row["max_false_alarms_per_hour"], row["threshold"]
        assert meta["training"]["best"][f"val_real_threshold_at_{fa:g}_fa_h"] == pytest.approx(t)
        assert meta["training"]["best"][f"val_syn_recall_at_real_{fa:g}_fa_h"] == pytest.approx(float(np.mean(probs >= t)))
    assert kws_train("teacher", "--data", corpus, "--out", tmp_path / "z.pt", "--epochs", "1", *TINY, *FAST,
                     "--select-negatives", dev, "--select-real", dev) == 2
    assert kws_train("teacher", "--data", corpus, "--out", tmp_path / "z.pt", "--epochs", "1", *TINY, *FAST,
                     "--select-negatives", tmp_path / "nowhere") == 2
    assert not (tmp_path / "z.pt").exists()


def test_sample_hours_takes_a_seeded_subset_within_the_hours(tmp_path):
    from test_real import make_dev_set

    from training.real import open_negatives, sample_hours

    dev = open_negatives(make_dev_set(tmp_path / "real"), "sheila").load()
    lengths = dev.lengths()
    assert sample_hours(dev, 1.0).tolist() == list(range(len(dev)))  # all of it is shorter
    few = sample_hours(dev, 4.5 / 3600)
    assert 1 <= few.size < len(dev) and lengths[few].sum() <= 4.5 * 16000
    assert few.tolist() == sorted(few.tolist()) and sample_hours(dev, 4.5 / 3600).tolist() == few.tolist()
    assert sample_hours(dev, 0.0).size == 1  # never nothing


def test_ema_keeps_and_saves_the_moving_average_of_the_weights(corpus, tmp_path):
    out = tmp_path / "ema.pt"
    assert kws_train("teacher", "--data", corpus, "--out", out, "--epochs", "1", "--lr", "3e-3", *TINY, *FAST,
                     "--ema", "0.9") == 0
    ckpt = load_checkpoint(out)
    state = torch.load(str(out) + ".state", weights_only=True)
    saved = ckpt.state_dict
    # one epoch: the kept weights are the average, which differs from the raw last step's
    assert all(torch.equal(saved[k], state["ema"][k]) for k in saved)
    assert any(not torch.equal(saved[k], state["model"][k]) for k in saved if saved[k].is_floating_point())
    assert ckpt.metadata["training"]["options"]["ema"] == 0.9
    for bad in ("1", "-0.5"):
        assert kws_train("teacher", "--data", corpus, "--out", tmp_path / "bad.pt", "--epochs", "1", *TINY, *FAST,
                         "--ema", bad) == 2
    assert not (tmp_path / "bad.pt").exists()


def test_select_negatives_help_states_the_hours_streamed(capsys):
    """The help text names the hours ``RealSelection`` streams (the CLI imports the pipeline
    lazily, so the figure is written out there; this keeps the two together)."""
    from training.pipeline import SELECT_NEGATIVES_HOURS

    assert kws_train("distill", "--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"at most {SELECT_NEGATIVES_HOURS:g} h of them" in text
