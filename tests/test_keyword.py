"""`kws-train keyword TEXT --out DIR`: the whole command end to end on the tiny test preset
(every stage runs for real, just small), interrupted by SIGTERM in the middle of a stage and
resumed; the bad-input cases; the budget plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kws_export.checkpoint import load_checkpoint
from kws_export.cli_support import run_click
from kws_export.errors import KWSError
from training.cli import cli

ROOT = Path(__file__).resolve().parents[1]
KEYWORD = "hey nova"
TINY = ["--sizes", "tiny", "--no-progress"]
FIRST = ["data", "teacher", "student", "thresholds"]
ALL = ["data", "teacher", "student", "thresholds", "export", "verify", "real", "demo", "card"]
EXPORTS = ["student.stream.onnx", "student.stream.int8.onnx", "student.stream.int8w.onnx", "student.onnx", "student.ts",
           "teacher.stream.onnx"]


def kws_train(*args) -> int:
    return run_click(cli, "kws-train", [str(a) for a in args])


def state_of(out: Path) -> dict:
    return json.loads((out / ".kws-keyword.json").read_text())


def mtimes(out: Path, rels) -> dict:
    return {r: (out / r).stat().st_mtime_ns for r in rels}


def make_fake_dev_set(root: Path, keyword: str) -> Path:
    """A dev set in the real one's layout, synthesized (a handful of clips): it exercises the
    real-speech path (threshold on its stream, figures through the int8w file) in seconds."""
    from kws_export.audio import write_wav
    from training.synth import list_voices, slug, synthesize

    voices = [v for v in list_voices(["flite"])][:3] or list_voices(["espeak"])[:3]
    sc = root / "speech_commands_test_v0.02"
    for word, n in ((keyword, 3), ("yes", 4), ("stop", 4)):
        d = sc / slug(word)
        d.mkdir(parents=True)
        for i in range(n):
            x = synthesize(word, voices[i % len(voices)], rate=0.9 + 0.1 * i)
            clip = np.zeros(16000, np.float32)
            clip[2000:2000 + min(len(x), 14000)] = x[:14000]
            write_wav(d / f"spk{i}_nohash_0.wav", clip, 16000)
    silence = sc / "_silence_"
    silence.mkdir()
    write_wav(silence / "s_nohash_0.wav", (0.001 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One run of the whole command: SIGTERM during the export stage, then --resume."""
    base = tmp_path_factory.mktemp("keyword")
    out = base / "run"
    real = make_fake_dev_set(base / "real", KEYWORD)
    import kws_export.export_torchscript as ets

    original = ets.export_torchscript
    calls = []

    def terminate(*args, **kwargs):  # after three of the student's ONNX files are written
        calls.append(args)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        raise AssertionError("SIGTERM did not stop the stage")

    ets.export_torchscript = terminate
    try:
        t0 = time.monotonic()
        rc = kws_train("keyword", KEYWORD, "--out", out, "--real", real, *TINY)
    finally:
        ets.export_torchscript = original
    interrupted = {"rc": rc, "state": state_of(out), "calls": len(calls),
                   "listing": sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".partial" in str(p) or "exported" in str(p)),
                   "mtimes": mtimes(out, ["data/synth.json", "data/manifest.csv", "checkpoints/teacher.pt",
                                          "checkpoints/student.pt", "thresholds.json"])}
    rc2 = kws_train("keyword", KEYWORD, "--out", out, "--resume", "--real", real, *TINY)
    return {"out": out, "real": real, "interrupted": interrupted, "rc": rc2, "seconds": time.monotonic() - t0}


def test_interrupted_run_stops_cleanly_between_finished_stages(finished):
    it = finished["interrupted"]
    assert it["rc"] == 143 and it["calls"] == 1
    assert list(it["state"]["stages"]) == FIRST  # export was running: not recorded
    # nothing of the export reached DIR/exported, and its scratch was removed
    assert not any(p.startswith("exported") for p in it["listing"])
    assert not any(p.startswith(".partial/export") for p in it["listing"])


def test_resume_finishes_without_redoing_finished_stages(finished):
    out, it = finished["out"], finished["interrupted"]
    assert finished["rc"] == 0
    assert mtimes(out, it["mtimes"]) == it["mtimes"]
    state = state_of(out)
    assert list(state["stages"]) == ALL
    for name in FIRST:
        assert state["stages"][name]["outputs"] == it["state"]["stages"][name]["outputs"]
    assert not (out / ".partial").exists()


def test_layout_and_model_card(finished):
    out = finished["out"]
    for rel in ["data/synth.json", "checkpoints/teacher.pt", "checkpoints/student.pt", "README.md", "probability.png",
                *[f"exported/{f}" for f in EXPORTS]]:
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    for absent in ("teacher.onnx", "teacher.stream.int8.onnx", "teacher.stream.int8w.onnx", "teacher.ts"):
        assert not (out / "exported" / absent).exists()  # by design: see the card
    card = (out / "README.md").read_text()
    assert f'Keyword spotter for "{KEYWORD}"' in card
    assert "detect.py --model student.stream.int8w.onnx -" in card
    assert "kws-train teacher --arch embedding" in card and "kws-train distill" in card
    assert "absent by design" in card
    assert "## Real speech" in card and "through `exported/student.stream.int8w.onnx`" in card
    verify = json.loads((out / "verify.json").read_text())["summary"]
    assert verify["student"]["ok"] and verify["teacher"]["ok"]
    assert "torch vs student.stream.int8w.onnx" in verify["student"]["pairs"]
    assert list(verify["teacher"]["pairs"]) == ["torch vs teacher.stream.onnx"]
    real = json.loads((out / "real.json").read_text())
    assert real["measured"] and real["student"]["clips"]["keyword_clips"] == 3
    v = real["verified"]  # runtime/detect.py --verifier's figures on the same stream
    assert v["keywords"] == 3 and v["trigger"] == 0.2 and v["replay_steps"] == 27 + 8
    assert v["at_threshold"]["verifications_per_hour"] > 0 and 0 < v["at_threshold"]["verifier_step_share"]
    assert "--verifier teacher.stream.onnx" in card and "Two-stage on the same stream" in card
    # the student's epoch was kept on the real stand-in without its keyword, and the card says so
    student = load_checkpoint(out / "checkpoints" / "student.pt").metadata["training"]
    assert student["objective"]["select"].startswith("real negatives") and "val_real_threshold_at_1_fa_h" in student["best"]
    assert student["objective"]["real_dev_set"]["speech_clips"] > 0 == student["objective"]["real_dev_set"]["keyword_clips"]
    assert "--select-negatives" in card and "Epoch kept:" in card and "real negatives" in card


def test_threshold_is_the_exported_one(finished):
    from kws_export.checkpoint import load_checkpoint
    from kws_export.onnx_info import kws_metadata, load_onnx_model

    out = finished["out"]
    t = json.loads((out / "thresholds.json").read_text())
    ckpt = load_checkpoint(out / "checkpoints" / "student.pt")
    assert ckpt.metadata["threshold"] == pytest.approx(t["student"]["threshold"])
    meta = kws_metadata(load_onnx_model(out / "exported" / "student.stream.int8w.onnx"))
    assert float(meta["kws.threshold"]) == pytest.approx(t["student"]["threshold"])
    assert meta["kws.keyword"] == KEYWORD
    # the teacher's too (chosen on the real stand-in's stream when one reaches the target):
    # the two-stage detector's verifier threshold
    teacher = load_checkpoint(out / "checkpoints" / "teacher.pt")
    assert teacher.metadata["threshold"] == pytest.approx(t["teacher"]["threshold"])
    meta = kws_metadata(load_onnx_model(out / "exported" / "teacher.stream.onnx"))
    assert float(meta["kws.threshold"]) == pytest.approx(t["teacher"]["threshold"])
    assert "real stream" in t["teacher"]["source"] or "kept the synthetic threshold" in t["teacher"].get("real_stream", "")


def test_two_stage_verifier_threshold_is_chosen_for_the_pair(finished):
    """The pair's own verifier threshold (chosen on the same real stream) is what the real
    stage measures the pair at and what the card's Pi command passes."""
    out = finished["out"]
    pair = json.loads((out / "thresholds.json").read_text())["two_stage"]
    real = json.loads((out / "real.json").read_text())["verified"]
    card = (out / "README.md").read_text()
    if pair["verifier_threshold"] is None:  # no verifier threshold reached the target on the stand-in
        assert "note" in pair and "--verifier-threshold" not in card
        return
    assert pair["at_threshold"]["false_alarms_per_hour"] <= 0.5 and pair["at_threshold"]["threshold"] == pair["verifier_threshold"]
    assert real["at_threshold"]["threshold"] == pytest.approx(pair["verifier_threshold"])
    assert real["threshold_source"] == "thresholds.json: two_stage.verifier_threshold"
    assert f"--verifier teacher.stream.onnx --verifier-threshold {pair['verifier_threshold']:.2f} -" in card


def test_the_pi_file_runs_with_detect_py(finished):
    out = finished["out"]
    demo = json.loads((out / "demo.json").read_text())
    assert demo["voices"].startswith("test split")
    proc = subprocess.run([sys.executable, str(ROOT / "runtime" / "detect.py"), "--model",
                           str(out / "exported" / "student.stream.int8w.onnx"), str(out / "demo.wav"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [round(e["time"], 3) for e in events] == [round(e["time"], 3) for e in demo["detections"]]


def test_demo_voices_are_held_out_of_training(finished):
    import csv

    from training.keyword import held_out_voices

    data = finished["out"] / "data"
    train = {r["voice"] for r in csv.DictReader(open(data / "manifest.csv")) if r["split"] == "train"}
    held = held_out_voices(data)
    assert held and not set(held) & train


def test_resume_of_a_finished_run_redoes_nothing_and_a_removed_output_is_remade(finished, capsys):
    out, real = finished["out"], finished["real"]
    before = mtimes(out, ["checkpoints/student.pt", "exported/student.stream.int8w.onnx", "probability.png"])
    (out / "README.md").unlink()
    assert kws_train("keyword", KEYWORD, "--out", out, "--resume", "--real", real, *TINY) == 0
    assert mtimes(out, before) == before
    assert (out / "README.md").is_file()
    err = capsys.readouterr().err
    assert "stage 9/9 card" in err and "stage 8/9" not in err


@pytest.mark.parametrize("text", ["!!!", "你好", "  ", "¿?…"])
def test_keyword_without_speakable_letters(text, tmp_path, capsys):
    out = tmp_path / "run"
    assert kws_train("keyword", text, "--out", out, *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no speakable letters" in err
    assert not out.exists()


def test_non_empty_dir_without_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert kws_train("keyword", "computer", "--out", out, *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and "--resume" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_resume_in_a_dir_of_another_keyword(finished, capsys):
    out = finished["out"]
    before = state_of(out)
    assert kws_train("keyword", "computer", "--out", out, "--resume", *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"made for keyword '{KEYWORD}'" in err
    assert state_of(out) == before


def test_resume_in_a_foreign_dir(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "x").write_text("")
    assert kws_train("keyword", "computer", "--out", out, "--resume", *TINY) == 2
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize("minutes", ["0.5", "1", "0", "-3", "nan"])
def test_budget_too_small(minutes, tmp_path, capsys):
    out = tmp_path / "run"
    assert kws_train("keyword", "computer", "--out", out, "--minutes", minutes, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "too small" in err
    assert not out.exists()


def test_plan_scales_with_the_budget_and_the_machine():
    from training.keyword import MARGIN, PROBE_REFERENCE_S, cost, make_plan, synth_seconds, teacher_seconds

    ref = lambda: PROBE_REFERENCE_S  # noqa: E731  the reference machine
    slow = lambda: 2 * PROBE_REFERENCE_S  # noqa: E731  twice as slow
    p30, p60 = make_plan(30, probe=ref), make_plan(60, probe=ref)
    assert p60.keyword_count > p30.keyword_count and p60.per_word > p30.per_word and p60.phrases > p30.phrases
    assert p60.bank_sequences > p30.bank_sequences and p60.steps() > p30.steps()
    s30 = make_plan(30, probe=slow)
    assert s30.corpus_clips() < p30.corpus_clips() and s30.speed == pytest.approx(2.0)
    for p in (p30, p60, s30):  # the estimate of every stage fits the budget
        total = (synth_seconds(p) + teacher_seconds(p) + p.bank_sequences * p.seq_seconds * cost("bank_s_per_seq_second", p)
                 + p.steps() * cost("student_s_per_step", p) + cost("student_eval_s", p) + cost("fixed_s", p))
        assert total <= p.minutes * 60 * MARGIN + 1
    assert make_plan(30, "medium", probe=ref).student_arch["hidden"] == 32
    with pytest.raises(KWSError, match="too small"):
        make_plan(6, probe=lambda: 6 * PROBE_REFERENCE_S)  # a machine six times slower cannot do it in 6 min


def test_student_stage_is_time_boxed_by_what_is_left(tmp_path):
    """A real-size plan does not trust its epoch estimate: distill gets the time left (less the
    final evaluation and later stages) as --time-box and at most MAX_EPOCHS epochs."""
    import time as _time

    from training import keyword as kwmod

    plan = kwmod.make_plan(30, probe=lambda: kwmod.PROBE_REFERENCE_S)
    run = kwmod.Run(tmp_path, "computer", plan, {"stages": {}}, False, None, "", _time.monotonic(), 12 * 60.0)
    seen = []

    class Stop(Exception):
        pass

    def command(args):
        seen.append([str(a) for a in args])
        raise Stop

    run.command = command
    with pytest.raises(Stop):
        kwmod.stage_student(run)
    args = seen[0]
    assert args[args.index("--epochs") + 1] == str(kwmod.MAX_EPOCHS)
    box = float(args[args.index("--time-box") + 1])
    reserve = kwmod.cost("fixed_s", plan) + kwmod.cost("student_eval_s", plan)
    assert box == pytest.approx((18 * 60.0 - reserve) / 60.0, abs=0.05)  # 18 of the 30 min were left


def _pair(a, b, diff, ok):
    return {"a": a, "b": b, "mode": "stream", "max_abs_diff": diff, "ok": ok}


@pytest.mark.parametrize("bad", [None, "student", "teacher"])
def test_verify_stage_fails_the_run_on_any_mismatch(finished, tmp_path, monkeypatch, bad):
    """Every export must match its checkpoint (else exit 1, naming the pair)."""
    import shutil

    import kws_export.verify as kv
    from training import keyword as kwmod

    out = tmp_path / "copy"
    shutil.copytree(finished["out"], out)
    reports = {"student": {"ok": bad != "student", "pairs": [_pair("torch", "student.stream.int8w.onnx", 0.3 if bad == "student" else 1e-3, bad != "student")]},
               "teacher": {"ok": bad != "teacher", "pairs": [_pair("torch", "teacher.stream.onnx", 0.1 if bad == "teacher" else 1e-7, bad != "teacher")]}}
    monkeypatch.setattr(kv, "verify", lambda ckpt, *a, **k: reports["teacher" if "teacher" in str(ckpt) else "student"])
    state = state_of(out)
    run = kwmod.Run(out, KEYWORD, kwmod.Plan.from_dict(state["plan"]), state, False, None, "", time.monotonic(), 0.0)
    if bad is None:
        kwmod.stage_verify(run)
    else:
        with pytest.raises(kwmod.VerifyFailed, match=f"{bad}: torch vs {bad}.stream") as exc:
            kwmod.stage_verify(run)
        assert exc.value.exit_code == 1
    summary = json.loads((out / "verify.json").read_text())["summary"]
    assert summary["student"]["ok"] == (bad != "student") and summary["teacher"]["ok"] == (bad != "teacher")




def test_engines_auto_adds_the_neural_voices_when_installed(monkeypatch):
    import training.synth as synth
    from training.keyword import resolve_engines

    monkeypatch.setattr(synth, "available_engines", lambda neural=False: ["espeak", "flite", *(["piper", "hibari"] if neural else [])])
    assert resolve_engines("auto") == ["espeak", "flite", "piper", "hibari"]
    assert resolve_engines("auto", preset="tiny") == ["espeak", "flite"]  # the test preset stays fast
    monkeypatch.setattr(synth, "available_engines", lambda neural=False: ["espeak", "flite"])
    assert resolve_engines("auto") == ["espeak", "flite"]  # without the [neural] extra
    assert resolve_engines("flite, espeak") == ["flite", "espeak"]


@pytest.mark.parametrize("spec, message", [("espeak,nope", "unknown speech engine"), ("espeak,espeak", "distinct"),
                                           (",", "distinct")])
def test_bad_engines_are_one_line(spec, tmp_path, capsys, message):
    out = tmp_path / "run"
    assert kws_train("keyword", "computer", "--out", out, "--engines", spec, *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_neural_voices_cost_corpus_time_in_the_plan():
    from training.keyword import PROBE_REFERENCE_S, make_plan, synth_seconds

    ref = lambda: PROBE_REFERENCE_S  # noqa: E731
    classic, neural = make_plan(60, probe=ref), make_plan(60, probe=ref, engines=["espeak", "flite", "piper", "hibari"])
    assert classic.engines == ["espeak", "flite"] and neural.engines == ["espeak", "flite", "piper", "hibari"]
    assert neural.corpus_clips() < classic.corpus_clips()  # slower voices: a smaller corpus in the same budget
    assert synth_seconds(neural) > synth_seconds(classic) * neural.corpus_clips() / classic.corpus_clips()


def test_resume_with_other_engines_is_refused(finished, capsys):
    out = finished["out"]
    before = state_of(out)
    assert before["plan"]["engines"] == ["espeak", "flite"] and "--engines espeak,flite" in before["command"]
    assert kws_train("keyword", KEYWORD, "--out", out, "--resume", "--engines", "espeak", *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--engines espeak,flite" in err
    assert state_of(out) == before


def test_thresholds_on_real_negatives_when_the_dev_set_lacks_the_keyword(tmp_path, capsys):
    """A dev set without the keyword is all negatives: both thresholds are chosen on it (the
    lowest with <= 0.5 false alarms per hour) and the exports carry them; no real figures."""
    from runtime.detect import StreamingModel

    real = make_fake_dev_set(tmp_path / "real", KEYWORD)  # "hey nova", yes, stop: none is "computer"
    out = tmp_path / "run"
    assert kws_train("keyword", "computer", "--out", out, "--real", real, *TINY) == 0
    th = json.loads((out / "thresholds.json").read_text())
    for name in ("teacher", "student"):
        t = th[name]
        assert t["source"].startswith("real negatives: lowest threshold with <= 0.5 false alarms per hour"), t
        at = t["real_negatives_at_threshold"]
        assert at["false_alarms_per_hour"] <= 0.5 and at["threshold"] == t["threshold"] and at["hours"] > 0
    assert StreamingModel(str(out / "exported" / "student.stream.int8w.onnx")).threshold == pytest.approx(th["student"]["threshold"])
    assert StreamingModel(str(out / "exported" / "teacher.stream.onnx")).threshold == pytest.approx(th["teacher"]["threshold"])
    assert json.loads((out / "real.json").read_text())["measured"] is False
    assert "real negatives" in (out / "README.md").read_text()
    assert state_of(out)["real"]["negatives"] == str(real)
    student = load_checkpoint(out / "checkpoints" / "student.pt").metadata["training"]
    assert student["objective"]["select"].startswith("real negatives") and "val_real_threshold_at_1_fa_h" in student["best"]


def test_open_negatives_skips_folders_that_may_say_the_keyword(tmp_path):
    from kws_export.audio import write_wav
    from training.real import open_negatives

    for rel in ("a/x.wav", "a/b/y.flac", "view_glass/z.wav", "_silence_/s.wav", ".hidden/h.wav", "c/notes.txt"):
        p = tmp_path / "neg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".txt":
            p.write_text("")
        else:
            write_wav(p, np.zeros(1600, np.float32), 16000) if p.suffix == ".wav" else __import__("soundfile").write(
                str(p), np.zeros(1600, np.float32), 16000)
    assert open_negatives(tmp_path / "neg", "computer").relpaths == ["a/b/y.flac", "a/x.wav", "view_glass/z.wav"]
    d = open_negatives(tmp_path / "neg", "view").load()
    assert d.relpaths == ["a/b/y.flac", "a/x.wav"] and not d.labels.any() and len(d.lengths()) == 2
    with pytest.raises(KWSError, match="negatives folder not found"):
        open_negatives(tmp_path / "nope", "view")
    with pytest.raises(KWSError, match="no .wav or .flac"):
        open_negatives(tmp_path / "neg" / "c", "view")


def test_bad_negatives_folder_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert kws_train("keyword", "computer", "--out", out, "--negatives", tmp_path / "missing", *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "negatives folder not found" in err
    assert not out.exists()


def test_kd_similarity_reaches_the_student_stage_and_resume_keeps_it(finished, tmp_path, monkeypatch, capsys):
    """--kd-similarity W is part of the plan: the student stage passes it to distill, the
    recorded command shows it, and a resume with another weight is refused in one line."""
    import training.keyword as kw

    out = finished["out"]
    before = state_of(out)
    assert before["plan"]["kd_similarity"] == 0.0 and "--kd-similarity" not in before["command"]
    assert "--kd-similarity" not in before["stages"]["student"]["argv"]  # off by default
    assert kws_train("keyword", KEYWORD, "--out", out, "--resume", "--kd-similarity", "0.1", *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--kd-similarity 0" in err
    assert state_of(out) == before
    assert kws_train("keyword", KEYWORD, "--out", tmp_path / "neg", "--kd-similarity", "-0.1", *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--kd-similarity must be >= 0" in err and not (tmp_path / "neg").exists()

    # the student stage of a plan with the weight (distill itself is not run: its argv is captured)
    seen = []

    class Captured(Exception):
        pass

    def capture(self, args):
        seen.append([str(a) for a in args])
        raise Captured

    monkeypatch.setattr(kw.Run, "command", capture)
    plan = kw.Plan.from_dict({**before["plan"], "kd_similarity": 0.1})
    run = kw.Run(tmp_path / "run", KEYWORD, plan, {"stages": {}}, False, None, "", time.monotonic(), 0.0)
    monkeypatch.setattr(kw, "write_state", lambda *a: None)
    with pytest.raises(Captured):
        kw.stage_student(run)
    argv = seen[0]
    assert argv[0] == "distill" and argv[argv.index("--kd-similarity") + 1] == "0.1"
    assert "similarity KD weight 0.1" in " ".join(kw.describe_plan(plan, real=False))
