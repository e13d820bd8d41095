"""`kws-train teacher --arch embedding` and `kws-train distill` from it, end to end on a tiny
corpus with phrase negatives (seconds), plus the one-line errors of the new options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kws_export.checkpoint import load_checkpoint
from kws_export.cli_support import run_click
from kws_export.embedding import EmbeddingKWS
from kws_export.errors import KWSError
from training.cli import cli

TINY = ["--channels", "2", "--hidden", "8", "--gru-layers", "1"]
FAST = ["--batch-size", "32", "--epoch-size", "64", "--threads", "1", "--no-progress",
        "--val-minutes", "0.3", "--eval-minutes", "0.3", "--device", "cpu"]


def kws_train(*args) -> int:
    return run_click(cli, "kws-train", [str(a) for a in args])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from training.synth import synth_corpus

    root = tmp_path_factory.mktemp("emb-corpus") / "sheila"
    synth_corpus(root, "sheila", per_word=6, keyword_count=40, seed=0, workers=2, progress=False,
                 words=["yes", "no", "left", "right"], max_confusables=2, noise_seconds=5.0, phrases=16,
                 vocabulary="builtin")
    return root


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb-teacher") / "teacher.pt"
    assert kws_train("teacher", "--arch", "embedding", "--data", corpus, "--out", out, "--views", "1",
                     "--iterations", "30", "--workers", "1", "--no-progress") == 0
    return out


def test_embedding_teacher_checkpoint(teacher, corpus):
    ckpt = load_checkpoint(teacher)
    assert ckpt.is_embedding
    meta = ckpt.metadata
    assert meta["role"] == "teacher" and meta["arch"] == "embedding" and 0.5 <= meta["threshold"] <= 0.999
    assert meta["command"].startswith("kws-train teacher") and "--arch embedding" in meta["command"]
    # the phrases were windowed as negatives beside the word clips
    n_phrase_train = sum(1 for line in open(corpus / "manifest.csv") if line.startswith("_phrases_/") and ",train," in line)
    assert n_phrase_train > 0
    assert meta["data_recipe"]["training_windows"] >= n_phrase_train + meta["data_recipe"]["training_keyword_windows"]
    for split in ("validation", "test"):
        m = meta["metrics"][split]
        assert m["keyword_clips"] > 0 and 0.0 <= m["au_fa_fr"] <= 1.0
    assert meta["train"]["history"][-1]["loss"] < meta["train"]["history"][0]["loss"]
    assert meta["train"]["solver"].startswith("L-BFGS") and meta["train"]["l2"] == 20.0
    # the cached embeddings are reused: a second run computes nothing new
    cache = sorted((corpus / ".cache").glob("embeddings-*.npz"))
    assert len(cache) == 3  # train windows, validation and test clips


def test_student_distilled_from_the_embedding_teacher(teacher, corpus, tmp_path):
    out = tmp_path / "student.pt"
    rc = kws_train("distill", "--teacher", teacher, "--data", corpus, "--out", out, "--epochs", "2",
                   "--bank-sequences", "3", "--bank-keyword-prob", "0.2", "--seq-seconds", "4", "--sequences", "2",
                   *TINY, *FAST)
    assert rc == 0
    ckpt = load_checkpoint(out)
    assert not ckpt.is_embedding
    meta = ckpt.metadata
    assert meta["role"] == "student" and meta["parent_teacher"]["config"]["arch"] == "embedding"
    assert meta["training"]["objective"]["bank_sequences"] == 3
    assert meta["training"]["objective"]["bank_keyword_prob"] == 0.2
    hist = meta["training"]["history"]
    assert all(np.isfinite(h["train_loss"]) for h in hist)


def test_student_with_a_levelled_front_end(teacher, corpus, tmp_path, capsys):
    """--level-norm-ms reaches the student's config (the stage's streaming evaluation runs it);
    a negative time constant is one line and exit 2, nothing written."""
    out = tmp_path / "levelled.pt"
    assert kws_train("distill", "--teacher", teacher, "--data", corpus, "--out", out, "--epochs", "1",
                     "--bank-sequences", "2", "--seq-seconds", "3", "--sequences", "2", "--level-norm-ms", "500",
                     *TINY, *FAST) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.config.level_norm_ms == 500 and "mel_level" in ckpt.build_model().init_state()
    assert np.isfinite(ckpt.metadata["metrics"]["au_fa_fr"])
    capsys.readouterr()
    bad = tmp_path / "bad.pt"
    assert kws_train("distill", "--teacher", teacher, "--data", corpus, "--out", bad, "--level-norm-ms", "-5",
                     *TINY, *FAST) == 2
    assert "--level-norm-ms" in capsys.readouterr().err and not bad.exists()


def test_bank_holds_the_teachers_streaming_probabilities(teacher, corpus):
    from kws_export.config import CRNNConfig
    from training.embedding_distill import build_bank
    from training.train import load_clips

    model = load_checkpoint(teacher).build_model()
    cfg = CRNNConfig(channels=2, hidden=8, gru_layers=1)
    train = load_clips(corpus, "train", "sheila", cfg.clip_samples, cfg.sample_rate, None)
    bank = build_bank(cfg, model, train, None, [], None, sequences=2, seq_seconds=3.0, seed=0)
    assert bank.audio.shape == (2, 48000) and bank.teacher.shape == bank.targets.shape == (2, 37)
    want = model.stream(bank.audio[1].numpy())
    np.testing.assert_allclose(bank.teacher[1].numpy(), want, atol=1e-5)
    # a student stepping every 160 ms learns the teacher step that ends where its own step ends
    slow = CRNNConfig(channels=2, hidden=8, gru_layers=1, stride=(4, 16))
    bank = build_bank(slow, model, train, None, [], None, sequences=1, seq_seconds=3.0, seed=0)
    assert bank.teacher.shape == bank.targets.shape == (1, 18)
    np.testing.assert_allclose(bank.teacher[0].numpy(), model.stream(bank.audio[0].numpy())[1::2][:18], atol=1e-5)
    with pytest.raises(KWSError, match="not a multiple"):
        build_bank(CRNNConfig(stride=(4, 12)), model, train, None, [], None, sequences=1, seq_seconds=3.0, seed=0)


def test_similarity_loss_copies_which_steps_are_alike_not_the_basis():
    from training.embedding_distill import similarity_loss

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(300, 96, generator=g)
    # the same geometry in another basis and scale (an orthogonal map of the centred features): no loss
    q, _ = torch.linalg.qr(torch.randn(96, 96, generator=g))
    assert similarity_loss(3 * teacher @ q + 5, teacher, 128, torch.Generator().manual_seed(1)) < 1e-10
    # unrelated features cost something, and the gradient reaches them
    student = torch.randn(300, 20, generator=g, requires_grad=True)
    loss = similarity_loss(student, teacher, 128, torch.Generator().manual_seed(1))
    assert loss > 1e-3
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert (student.grad != 0).any(dim=1).sum() == 128  # only the drawn steps


def test_student_with_kd_similarity_learns_from_the_banked_embeddings(teacher, corpus, tmp_path, monkeypatch):
    """--kd-similarity keeps the teacher's embedding of every bank step (the step its
    probability came from) and adds the similarity loss to the student's training."""
    import training.embedding_distill as ed
    from kws_export.config import CRNNConfig
    from training.train import load_clips

    model = load_checkpoint(teacher).build_model()
    cfg = CRNNConfig(channels=2, hidden=8, gru_layers=1, stride=(4, 16))
    train = load_clips(corpus, "train", "sheila", cfg.clip_samples, cfg.sample_rate, None)
    bank = ed.build_bank(cfg, model, train, None, [], None, sequences=1, seq_seconds=3.0, seed=0, keep_embeddings=True)
    e, _, _ = model.features().stream_embeddings(bank.audio[0].numpy())
    assert bank.embeddings.shape == (1, 18, 96)
    np.testing.assert_allclose(bank.embeddings[0].numpy(), e[1::2][:18], atol=1e-6)
    assert ed.build_bank(cfg, model, train, None, [], None, sequences=1, seq_seconds=3.0, seed=0).embeddings is None

    calls = []
    real = ed.similarity_loss
    monkeypatch.setattr(ed, "similarity_loss", lambda *a: calls.append(a[0].shape) or real(*a))
    out = tmp_path / "sim.pt"
    assert kws_train("distill", "--teacher", teacher, "--data", corpus, "--out", out, "--epochs", "1",
                     "--bank-sequences", "2", "--seq-seconds", "3", "--sequences", "2", "--kd-similarity", "0.5",
                     *TINY, *FAST) == 0
    meta = load_checkpoint(out).metadata["training"]
    assert calls and meta["objective"]["similarity_weight"] == 0.5
    assert all(np.isfinite(h["train_sim"]) for h in meta["history"])


def test_embedding_options_fail_in_one_line(teacher, corpus, tmp_path, capsys):
    assert kws_train("teacher", "--arch", "embedding", "--data", corpus, "--out", tmp_path / "t.pt", "--views", "0") == 2
    assert "--views" in capsys.readouterr().err
    assert kws_train("teacher", "--arch", "embedding", "--data", corpus, "--out", tmp_path / "t.pt", "--epochs", "3") != 0
    err = capsys.readouterr().err
    assert "--iterations" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.pt").exists()
    crnn_teacher = tmp_path / "nope.pt"
    assert kws_train("distill", "--teacher", tmp_path / "missing.pt", "--data", corpus, "--out", crnn_teacher) == 2
    assert not crnn_teacher.exists()
    for bad in ("0", "1", "1.5"):
        assert kws_train("distill", "--teacher", teacher, "--data", corpus, "--out", crnn_teacher,
                         "--bank-keyword-prob", bad) == 2
        assert "--bank-keyword-prob" in capsys.readouterr().err
    assert kws_train("distill", "--teacher", teacher, "--data", corpus, "--out", crnn_teacher,
                     "--kd-similarity", "-1") == 2
    assert "--kd-similarity" in capsys.readouterr().err
    assert not crnn_teacher.exists()
    # the embedding head has no epochs to choose: the selection options are refused, not ignored
    assert kws_train("teacher", "--arch", "embedding", "--data", corpus, "--out", tmp_path / "t.pt",
                     "--select-negatives", tmp_path) == 2
    err = capsys.readouterr().err
    assert "--select-negatives" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.pt").exists()


def test_bad_selection_folders_are_refused_before_the_bank_is_built(teacher, corpus, tmp_path, monkeypatch, capsys):
    """The student's selection recordings are opened first: a bad folder, or both options,
    costs no teacher time (the bank of a real run takes minutes)."""
    import training.embedding_distill as ed

    def no_bank(*a, **k):
        raise AssertionError("the bank was built before the selection folder was checked")

    monkeypatch.setattr(ed, "build_bank", no_bank)
    out = tmp_path / "s.pt"
    base = ["distill", "--teacher", teacher, "--data", corpus, "--out", out, "--bank-sequences", "2", *TINY, *FAST]
    assert kws_train(*base, "--select-negatives", tmp_path / "nowhere") == 2
    assert kws_train(*base, "--select-real", tmp_path / "nowhere") == 2
    assert kws_train(*base, "--select-real", tmp_path, "--select-negatives", tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "exclude each other" in err[2], err
    assert not out.exists()


def test_student_with_vtlp_warps_its_bank_features(teacher, corpus, tmp_path, monkeypatch):
    """--vtlp reaches the streaming loss on the cached bank, not only the clips."""
    from training.augment import Augmenter

    calls = []
    real = Augmenter.stream_features

    def counted(self, generator=None):
        f = real(self, generator)
        calls.append(f is not None)
        return f

    monkeypatch.setattr(Augmenter, "stream_features", counted)
    out = tmp_path / "vtlp.pt"
    assert kws_train("distill", "--teacher", teacher, "--data", corpus, "--out", out, "--epochs", "1",
                     "--bank-sequences", "2", "--seq-seconds", "3", "--sequences", "2", "--vtlp", *TINY, *FAST) == 0
    assert calls and all(calls)
    assert load_checkpoint(out).metadata["training"]["augment"]["vtlp"] is True


def test_train_loss_is_finite_and_head_is_small(teacher):
    m = load_checkpoint(teacher).build_model()
    assert isinstance(m, EmbeddingKWS)
    assert sum(p.numel() for p in m.parameters()) == 16 * 96 + 1
    assert all(torch.isfinite(p).all() for p in m.parameters())
