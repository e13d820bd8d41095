"""``kws-train keyword TEXT --out DIR``: any keyword, from its text to a verified, Pi-ready detector.

Every stage reuses a building block of the toolchain:

=========== =================================================================================
data        ``training.synth.synth_corpus``: the keyword, broad and close negatives, phrases, noises
teacher     ``kws-train teacher --arch embedding`` (the frozen speech embedding + a trained head)
student     ``kws-train distill`` from it (streaming distillation on a sequence bank)
thresholds  the student's (validation streams, or the real dev stream when it holds the keyword)
export      ``kws-export onnx`` (fp32, static int8, int8-weights streaming; offline) and TorchScript
verify      ``kws-export verify`` on every export
real        the real dev set through ``exported/student.stream.int8w.onnx`` (when it holds the keyword)
demo        a demo stream spoken by voices held out of training, through ``runtime/detect.py --plot``
card        ``DIR/README.md``, the model card
=========== =================================================================================

The run is a list of stages recorded in ``DIR/.kws-keyword.json`` (the keyword, the budget,
the plan of stage sizes, every finished stage with the sha256 of its outputs).  Each stage
builds its outputs beside their final place and renames them in when it is done, so an
interrupted stage (Ctrl-C, SIGTERM, power loss) leaves nothing half-written and ``--resume``
simply redoes it; finished stages are never redone (the student stage even continues from its
last finished epoch: ``kws-train distill --resume``).

Budget: ``--minutes`` is wall-clock on a 2-core machine.  The plan scales the corpus, the
teacher's windows and the student's bank and epochs from reference costs measured on that
machine (``COSTS``); the student's epochs are re-derived from the time actually left when its
stage starts, so a slow corpus or teacher does not push the run past its budget.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from kws_export.errors import KWSError
from kws_export.fileio import atomic_output, sha256_file

STATE_FILE = ".kws-keyword.json"
STATE_VERSION = 1
PARTIAL = ".partial"  # scratch of the stage in progress (removed when the run finishes)

# --student SIZE: preset CRNN students (the shipped student is "small").
STUDENT_SIZES: dict[str, dict] = {
    "tiny": {"channels": 3, "hidden": 12, "gru_layers": 1, "stride": (4, 8)},
    "small": {"channels": 4, "hidden": 20, "gru_layers": 1, "stride": (4, 8)},
    "medium": {"channels": 8, "hidden": 32, "gru_layers": 1, "stride": (4, 8)},
}

# Costs measured on an idle 2-core machine of this project (wall seconds) when one augmented
# embedding window took PROBE_REFERENCE_S on one core; a run scales them by its own probe
# (``speed_probe``), so a slower or busier machine gets less data.  The student's epochs are
# not planned from them but time-boxed (``kws-train distill --time-box``), so whatever the
# estimates miss is taken up (or given back) by the student.
PROBE_REFERENCE_S = 0.028
COSTS = {
    "synth_units_per_s": 120.0,       # 1 s clips with 2 workers (a 2 s phrase counts 2); measured 140-160
    "synth_neural_units_per_s": 29.0, # the same with Piper and hibari only (a corpus of 3,700 units in 126 s)
    "synth_fixed_s": 10.0,            # noises, babble talkers, the phrase vocabulary, worker start-up
    "teacher_windows_per_s": 55.0,    # augmented 2 s windows through the frozen embedding, 2 workers; measured 64
    "bank_s_per_seq_second": 0.032,   # the teacher scoring one second of a bank sequence; measured 0.028
    "student_s_per_step": 0.36,       # one distillation step: 256 clips + 8 x 20 s sequences, 1 thread (+ validation)
    "student_eval_s": 40.0,           # corpus loading, threshold on validation streams, test figures
    "fixed_s": 90.0,                  # thresholds, export, verify, demo, card
    "real_s": 420.0,                  # the real dev stream (2 h): the student twice (in process, its int8 file), the teacher once; the clips
    "negatives_s": 260.0,             # 2 h of real negatives (the dev set's size): the student and the teacher once
}
MAX_SCALE = 4.0  # the corpus grows with the budget up to 4x the default; beyond, the time goes to the student
EPOCHS_PLANNED = 40  # a larger student share draws more clips per epoch rather than more epochs
MIN_MINUTES = 5.0
DEFAULT_MINUTES = 60.0
MARGIN = 0.9  # plan to 90% of the budget
CORPUS_AND_TEACHER_SHARE = 0.45  # of the usable budget at most; the student gets the rest
MAX_EPOCHS = 100  # the student's time box never runs more (60 stopped 60 min runs at ~50 min)
REAL_MAX_FA = 0.5  # false alarms per hour the real-stream thresholds allow
CLASSIC_ENGINES = ("espeak", "flite")
# Each neural engine's draw weight in the keyword corpus (espeak 0.7, flite 0.3): about 11% of
# the clips for the two, the share that never lost a real keyword for the teacher (docs/training.md).
NEURAL_WEIGHT = 0.06
TEACHER_TRACK = "teacher_real_track.npy"  # in DIR/.partial: the teacher on the real stream (thresholds -> real)


# The plan -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    minutes: float
    student: str
    preset: str | None = None
    speed: float = 1.0                 # this machine's probe / the reference's (costs scale with it)
    # corpus
    keyword_count: int = 2000
    per_word: int = 200
    phrases: int = 2000
    words: list | None = None          # None: the 30 Speech Commands words
    max_confusables: int = 20
    noise_seconds: float = 60.0
    engines: list = dataclasses.field(default_factory=lambda: list(CLASSIC_ENGINES))
    # teacher
    views: int = 2
    teacher_iterations: int = 100
    teacher_workers: int = 2
    # student
    bank_sequences: int = 300
    seq_seconds: float = 20.0
    sequences: int = 8
    epochs: int = 20
    epoch_size: int = 6400
    batch_size: int = 256
    val_minutes: float = 5.0
    eval_minutes: float = 15.0
    student_arch: dict | None = None
    kd_similarity: float = 0.0         # distill --kd-similarity (0: off, the recipe)
    # verification and demo
    verify_seconds: float = 30.0
    demo_seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def corpus_clips(self) -> int:
        words = len(self.words) if self.words is not None else 30
        return self.keyword_count + self.per_word * (words + self.max_confusables)

    def steps(self) -> int:
        return max(1, self.epochs * math.ceil(self.epoch_size / self.batch_size))


def _arch(student: str) -> dict:
    a = dict(STUDENT_SIZES[student])
    a["stride"] = list(a["stride"])
    return a


def speed_probe() -> float:
    """Seconds one augmented embedding window takes on one core now (~2 s to measure): the
    best of three rounds, so a single stall does not shrink the plan."""
    import numpy as np

    from kws_export.embedding import EmbeddingConfig, find_graphs
    from training.embedding_pipeline import _augment
    from training.embedding_train import WindowRecipe, embed_windows

    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(16000)).astype(np.float32) for _ in range(8)]
    noises = [(0.1 * rng.standard_normal(5 * 16000)).astype(np.float32)]
    config, graphs = EmbeddingConfig(keyword="probe"), find_graphs()
    embed_windows(clips[:2], np.zeros(2, np.int64), noises, config, graphs, WindowRecipe(views=1), _augment({}), workers=1)
    rounds = []
    for _ in range(3):
        t0 = time.perf_counter()
        embed_windows(clips, np.zeros(len(clips), np.int64), noises, config, graphs, WindowRecipe(views=1), _augment({}),
                      workers=1)
        rounds.append((time.perf_counter() - t0) / len(clips))
    return min(rounds)


def cost(name: str, plan: "Plan") -> float:
    """COSTS[name] on this machine: seconds scale with the probe, rates inversely."""
    f = plan.speed
    return COSTS[name] / f if name.endswith("_per_s") else COSTS[name] * f


def synth_seconds(plan: "Plan") -> float:
    from training.synth import NEURAL_ENGINES, engine_weight

    overrides = engine_weights(plan)
    w = {e: engine_weight(e, overrides) for e in plan.engines}
    neural = sum(v for e, v in w.items() if e in NEURAL_ENGINES) / max(1e-9, sum(w.values()))  # share of the clips
    per_unit = (1 - neural) / cost("synth_units_per_s", plan) + neural / cost("synth_neural_units_per_s", plan)
    return (plan.corpus_clips() + 2 * plan.phrases) * per_unit + cost("synth_fixed_s", plan)


def engine_weights(plan: "Plan") -> dict[str, float]:
    """The corpus's draw weights that differ from ``ENGINE_WEIGHTS``: the neural engines'."""
    from training.synth import NEURAL_ENGINES

    return {e: NEURAL_WEIGHT for e in plan.engines if e in NEURAL_ENGINES}


def resolve_engines(spec: str, preset: str | None = None) -> list[str]:
    """``--engines``: a comma-separated list, or ``auto``: espeak and flite, plus the neural
    voices (Piper, hibari) when the ``[neural]`` extra is installed (the tiny test preset:
    espeak and flite only).  Measured (docs/training.md): adding them to the embedding
    teacher's windows found more real keywords at <= 0.5 false alarms per hour."""
    from training.synth import NEURAL_ENGINES, available_engines, get_engine

    if spec == "auto":
        names = available_engines(neural=preset is None)
        if not all(e in names for e in CLASSIC_ENGINES):
            raise KWSError(f"--engines auto needs {' and '.join(CLASSIC_ENGINES)} (make setup installs them)")
        return names
    names = [e.strip() for e in spec.split(",") if e.strip()]
    if not names or len(set(names)) != len(names):
        raise KWSError(f"--engines {spec!r}: give distinct engine names, e.g. espeak,flite,piper,hibari")
    for e in names:
        get_engine(e)  # one line when it is unknown or its package is missing
    if not any(e not in NEURAL_ENGINES for e in names):
        raise KWSError("--engines needs espeak or flite too: the phrase vocabulary and the demo voices come from them")
    return names


def teacher_windows(plan: "Plan", views: int | None = None) -> float:
    views = plan.views if views is None else views
    return views * 0.8 * (plan.corpus_clips() + plan.phrases) + 0.2 * plan.corpus_clips()


def teacher_seconds(plan: "Plan", views: int | None = None) -> float:
    return teacher_windows(plan, views) / cost("teacher_windows_per_s", plan)


def make_plan(minutes: float, student: str = "small", preset: str | None = None, real: bool = False,
              probe: Callable[[], float] | None = None, engines: list[str] | None = None, negatives: bool = False) -> Plan:
    """Stage sizes for a budget of ``minutes`` (``preset="tiny"``: seconds, for tests) with the
    corpus spoken by ``engines`` (default espeak and flite; the neural ones cost ~4x per clip)."""
    engines = list(engines or CLASSIC_ENGINES)
    if student not in STUDENT_SIZES:
        raise KWSError(f"--student must be one of {', '.join(STUDENT_SIZES)}, not {student!r}")
    if preset == "tiny":
        # The smallest run that still exercises every stage for real (tests: seconds).
        arch = {"channels": 2, "hidden": 8, "gru_layers": 1, "stride": [4, 8]}
        return Plan(minutes=minutes, student=student, preset="tiny", keyword_count=40, per_word=6, phrases=16,
                    words=["yes", "no", "left", "right"], max_confusables=2, noise_seconds=5.0, views=1,
                    teacher_iterations=30, teacher_workers=1, bank_sequences=3, seq_seconds=4.0, sequences=2, epochs=2,
                    epoch_size=64, batch_size=32, val_minutes=0.3, eval_minutes=0.3, student_arch=arch,
                    verify_seconds=4.0, engines=engines)
    if preset is not None:
        raise KWSError(f"unknown --sizes preset {preset!r}")
    if not minutes >= MIN_MINUTES:
        raise KWSError(f"a budget of {minutes:g} min is too small to train anything: give --minutes {MIN_MINUTES:g} or more "
                       f"(stages are sized for a 2-core machine)")
    speed = (probe or speed_probe)() / PROBE_REFERENCE_S
    speed = float(min(6.0, max(0.3, speed)))
    base = Plan(minutes=minutes, student=student, speed=speed, engines=engines)
    usable = minutes * 60.0 * MARGIN - cost("fixed_s", base) - real_seconds(base, real, negatives)
    # Corpus + teacher: the default corpus (scale 1) and its windows, scaled to their share.
    at_1 = synth_seconds(base) + teacher_seconds(base) - cost("synth_fixed_s", base)
    scale = min(MAX_SCALE, max(0.0, CORPUS_AND_TEACHER_SHARE * usable - cost("synth_fixed_s", base)) / at_1)
    plan = Plan(minutes=minutes, student=student, speed=speed, student_arch=_arch(student), engines=engines,
                keyword_count=max(60, int(round(2000 * scale / 10)) * 10), per_word=max(6, int(round(200 * scale))),
                phrases=max(40, int(round(2000 * scale / 10)) * 10))
    # Student: what the corpus and teacher leave; a third of it for the teacher-scored bank, the
    # rest for training steps (about EPOCHS_PLANNED epochs, larger ones when there is more time).
    student_s = usable - synth_seconds(plan) - teacher_seconds(plan) - cost("student_eval_s", plan)
    per_seq = plan.seq_seconds * cost("bank_s_per_seq_second", plan)
    plan.bank_sequences = int(max(20, min(600, (student_s / 3) / per_seq)))
    train_s = student_s - plan.bank_sequences * per_seq
    steps = train_s / cost("student_s_per_step", plan)
    per_epoch = math.ceil(plan.epoch_size / plan.batch_size)
    if steps > EPOCHS_PLANNED * per_epoch:
        plan.epoch_size = int(steps / EPOCHS_PLANNED) * plan.batch_size
    plan.epochs = student_epochs(plan, train_s)
    need = synth_seconds(plan) + teacher_seconds(plan) + plan.bank_sequences * per_seq + cost("student_eval_s", plan) \
        + 2 * math.ceil(plan.epoch_size / plan.batch_size) * cost("student_s_per_step", plan)
    if need > usable + 1e-9:
        raise KWSError(f"a budget of {minutes:g} min is too small to train anything on this machine now (the smallest "
                       f"corpus and 2 student epochs need about {(need + minutes * 60 - usable) / 60 / MARGIN:.0f} min at its "
                       f"current speed, {speed:.1f}x the reference's time per step)")
    return plan


def student_epochs(plan: Plan, seconds: float) -> int:
    """Epochs of ``plan.epoch_size`` clips that fit in ``seconds`` of training."""
    per_epoch = math.ceil(plan.epoch_size / plan.batch_size) * cost("student_s_per_step", plan)
    return int(max(2, min(MAX_EPOCHS, seconds // per_epoch)))


def describe_plan(plan: Plan, real: bool, negatives: Path | None = None) -> list[str]:
    arch = plan.student_arch or {}
    est = "" if plan.preset else f" (~{synth_seconds(plan) / 60:.1f} min)"
    t_est = "" if plan.preset else f" (~{teacher_seconds(plan) / 60:.1f} min)"
    s_est = "" if plan.preset else (
        f" (~{(plan.bank_sequences * plan.seq_seconds * cost('bank_s_per_seq_second', plan) + plan.steps() * cost('student_s_per_step', plan) + cost('student_eval_s', plan)) / 60:.1f} min)")
    lines = [
        f"machine speed: {plan.speed:.2f}x the reference's time per embedding window" if not plan.preset else "test preset: tiny sizes",
        f"data{est}: {plan.keyword_count} keyword clips, {plan.per_word} per negative word "
        f"({(len(plan.words) if plan.words is not None else 30)} command words + up to {plan.max_confusables} confusables), "
        f"{plan.phrases} phrases, noises of {plan.noise_seconds:g} s, voices of {', '.join(plan.engines)}",
        f"teacher{t_est}: speech embedding + head, {plan.views} views per clip, L-BFGS head ({plan.teacher_iterations} iterations)",
        f"student{s_est}: {plan.student} (channels {arch.get('channels')}, hidden {arch.get('hidden')}, "
        f"{arch.get('gru_layers')} GRU layer, stride {tuple(arch.get('stride', ()))}), bank of {plan.bank_sequences} x "
        f"{plan.seq_seconds:g} s sequences, {plan.epochs} epochs of {plan.epoch_size} clips"
        + (f", similarity KD weight {plan.kd_similarity:g}" if plan.kd_similarity > 0 else ""),
        "real speech: " + ("measured on the dev set" if real else "not measured") + "; thresholds chosen on "
        + (f"the real recordings without the keyword in {negatives}" if negatives
           else "the dev set's stream" if real else "synthetic speech")
        + ("; the student's epoch kept on real speech without the keyword" if negatives or real else ""),
    ]
    return lines


# State ------------------------------------------------------------------------------------------------
def read_state(out: Path) -> dict | None:
    p = out / STATE_FILE
    if not p.is_file():
        return None
    try:
        state = json.loads(p.read_text())
    except (OSError, ValueError):
        raise KWSError(f"{p}: unreadable state file (delete {out} to start over)") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "keyword" not in state:
        raise KWSError(f"{p}: not a kws-train keyword state file (delete {out} to start over)")
    return state


def write_state(out: Path, state: dict) -> None:
    with atomic_output(out / STATE_FILE) as tmp:
        tmp.write_text(json.dumps(state, indent=1) + "\n")


def _digest(out: Path, rel: str) -> str:
    p = out / rel
    if p.is_dir():
        raise ValueError(rel)
    return sha256_file(p)


def outputs_intact(out: Path, record: dict) -> bool:
    also = record.get("also", {})
    for rel, digest in record.get("outputs", {}).items():
        p = out / rel
        if not p.is_file() or sha256_file(p) not in (digest, also.get(rel)):
            return False
    return True


# Stages -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    out: Path
    keyword: str
    plan: Plan
    state: dict
    progress: bool
    real_dir: Path | None          # the dev set when it holds the keyword, else None
    real_note: str                  # why real speech is (not) measured
    started: float                  # time.monotonic() of this invocation
    elapsed_before: float           # seconds spent by earlier invocations
    negatives_dir: Path | None = None  # real recordings without the keyword: the thresholds are chosen on them

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def partial(self) -> Path:
        return self.out / PARTIAL

    def ckpt(self, name: str) -> Path:
        return self.out / "checkpoints" / f"{name}.pt"

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def left(self) -> float:
        return self.plan.minutes * 60.0 - self.elapsed()

    def train_args(self) -> list[str]:
        return ["--threads", "1", "--device", "cpu", *(["--no-progress"] if not self.progress else [])]

    def command(self, args: list[str]) -> dict:
        """Run ``kws-train ARGS`` in this process (errors and SIGTERM propagate)."""
        from training.cli import cli

        args = [str(a) for a in args]
        cli.main(args=args, prog_name="kws-train", standalone_mode=False)
        return {"argv": ["kws-train", *args]}


def _say(run: Run, msg: str) -> None:
    print(f"kws-train keyword: {msg}", file=sys.stderr, flush=True)


def _bar(run: Run, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not run.progress, dynamic_ncols=True, leave=False)


def _fresh(path: Path) -> Path:
    """An empty scratch folder (whatever an interrupted attempt left there is discarded)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def stage_data(run: Run) -> dict:
    from training.synth import synth_corpus

    p = run.plan
    t0 = time.monotonic()
    synth_corpus(run.data, run.keyword, per_word=p.per_word, keyword_count=p.keyword_count, seed=0, workers=2,
                 force=True, progress=run.progress, words=p.words, max_confusables=p.max_confusables,
                 noise_seconds=p.noise_seconds, phrases=p.phrases, vocabulary="auto", engines=tuple(p.engines),
                 holdout_engine="none", engine_weights=engine_weights(p) or None)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(run.data, 0o777 & ~umask)  # the corpus's temporary folder was private (mkdtemp)
    meta = json.loads((run.data / "synth.json").read_text())
    seconds = time.monotonic() - t0
    units = sum(meta["clips"].values()) + 2 * meta["phrases"]["count"]
    cmd = ["kws-train", "synth", "--keyword", run.keyword, "--out", "DIR/data", "--per-word", str(p.per_word),
           "--keyword-count", str(p.keyword_count), "--phrases", str(p.phrases), "--engines", ",".join(p.engines),
           "--holdout-engine", "none", *[f"--engine-weight={e}={w:g}" for e, w in engine_weights(p).items()]]
    return {"outputs": ["data/synth.json", "data/manifest.csv"], "argv": cmd,
            "info": {"clips_per_s": units / max(seconds, 1e-6), "clips": meta["clips"], "phrases": meta["phrases"]["clips"],
                     "engines": meta["engines"], "voices_used": meta["voices_used"], "negatives": len(meta["negatives"]),
                     "confusables": meta["confusables"]}}


def stage_teacher(run: Run) -> dict:
    p = run.plan
    views = p.views
    data_s = run.state["stages"].get("data", {}).get("seconds")
    if p.preset is None and data_s and views > 1:
        # The corpus took r times its estimate: expect the same of the teacher's windows.
        r = float(data_s) / max(1.0, synth_seconds(p))
        if r > 1.3:
            views = 1
            _say(run, f"teacher: 1 view per clip instead of {p.views} (the corpus took {r:.1f}x its estimate; "
                      f"{run.left() / 60:.1f} min left)")
    tmp = _fresh(run.partial / "teacher") / "teacher.pt"
    args = ["teacher", "--arch", "embedding", "--data", run.data, "--out", tmp, "--views", views,
            "--iterations", p.teacher_iterations, "--workers", p.teacher_workers, "--setting", "embedding teacher",
            *run.train_args()]
    t0 = time.monotonic()
    res = run.command(args)
    final = run.ckpt("teacher")
    final.parent.mkdir(exist_ok=True)
    os.replace(tmp, final)
    return {"outputs": ["checkpoints/teacher.pt"], "argv": _public(res["argv"], run),
            "info": {"seconds": time.monotonic() - t0}}


def stage_student(run: Run) -> dict:
    p = run.plan
    epochs, box = p.epochs, []
    if p.preset is None:
        # The epochs are time-boxed: distill measures its first epoch and fixes how many fit in
        # what is left (reserving the final evaluation and the later stages), up to MAX_EPOCHS.
        reserve = cost("fixed_s", p) + real_seconds(p, run.real_dir is not None, run.negatives_dir is not None) \
            + cost("student_eval_s", p)
        minutes = max(0.5, (run.left() - reserve) / 60.0)
        epochs, box = MAX_EPOCHS, ["--time-box", f"{minutes:.2f}"]
        _say(run, f"student: bank of {p.bank_sequences} sequences, then as many epochs as fit in {minutes:.1f} min "
                  f"(planned about {p.epochs}; {run.left() / 60:.1f} min left)")
    scratch = run.partial / "student"
    tmp = scratch / "student.pt"
    resume = (scratch / "student.pt.state").is_file() and run.state.get("student_epochs") == epochs
    if not resume:
        _fresh(scratch)
    run.state["student_epochs"] = epochs
    write_state(run.out, run.state)
    a = p.student_arch or _arch(p.student)
    args = ["distill", "--teacher", run.ckpt("teacher"), "--data", run.data, "--out", tmp, "--epochs", epochs,
            "--bank-sequences", p.bank_sequences, "--seq-seconds", p.seq_seconds, "--sequences", p.sequences,
            "--hidden", a["hidden"], "--channels", a["channels"], "--gru-layers", a["gru_layers"],
            "--stride", a["stride"][0], a["stride"][1], "--epoch-size", p.epoch_size, "--batch-size", p.batch_size,
            "--val-minutes", p.val_minutes, "--eval-minutes", p.eval_minutes, "--setting", f"student ({p.student})",
            *(["--kd-similarity", p.kd_similarity] if p.kd_similarity > 0 else []),
            *box, *_selection(run), *run.train_args(), *(["--resume"] if resume else [])]
    if resume:
        _say(run, "student: continuing the interrupted distillation from its last finished epoch")
    t0 = time.monotonic()
    res = run.command(args)
    final = run.ckpt("student")
    os.replace(tmp, final)
    shutil.rmtree(scratch, ignore_errors=True)
    argv = [a for a in _public(res["argv"], run) if a != "--resume"]
    from kws_export.checkpoint import load_checkpoint

    trained = load_checkpoint(final).metadata.get("training", {})
    return {"outputs": ["checkpoints/student.pt"], "argv": argv,
            "info": {"seconds": time.monotonic() - t0, "epochs": int(trained.get("epochs_planned") or epochs),
                     "best_epoch": (trained.get("best") or {}).get("epoch")}}


def _selection(run: Run) -> list:
    """How the student's epoch is kept: with real recordings, by the synthetic validation
    keywords found at the thresholds that real speech without the keyword sets (the negatives,
    else the dev set without its keyword folders: no real keyword takes part, so the real
    figures stay unbiased by the choice); else by the synthetic validation streams, whose
    choice tracked the real keywords found hardly at all over the later epochs."""
    negatives = run.negatives_dir if run.negatives_dir is not None else run.real_dir
    return ["--select-negatives", negatives] if negatives is not None else []


def _public(argv: list[str], run: Run) -> list[str]:
    """The command with this run's paths shown relative to DIR (and the dev set as ``shown_dir``)."""
    from training.real import shown_dir

    dev_dirs = {str(d) for d in (run.real_dir, run.negatives_dir) if d is not None}
    out = []
    for a in argv:
        s = str(a)
        if s in dev_dirs:
            out.append(shown_dir(s))
            continue
        for base, shown in ((run.partial / "teacher", "DIR/checkpoints"), (run.partial / "student", "DIR/checkpoints"),
                            (run.out, "DIR")):
            if s.startswith(str(base)):
                s = shown + s[len(str(base)):]
                break
        out.append(s)
    return out


def stage_thresholds(run: Run) -> dict:
    """The decision thresholds: the teacher's (synthetic validation clips at 0.1% FAR) and the
    student's (validation streams, best event F1), or, with real recordings, each model's
    lowest threshold with at most REAL_MAX_FA false alarms per hour on them: the negatives
    (``--negatives``, or the dev set when it lacks the keyword: all of it is negative), else the
    real dev stream when it holds the keyword (the dev set is only scored, never trained on;
    the synthetic thresholds of the embedding teacher were measured far off on real speech: 37
    of 399 "view glass" at 0.78, against 351 at the real stream's 0.38); written into the
    checkpoints so that every export carries them (the teacher's is also the two-stage
    detector's verifier threshold)."""
    from kws_export.checkpoint import load_checkpoint, save_checkpoint

    teacher = load_checkpoint(run.ckpt("teacher"))
    student = load_checkpoint(run.ckpt("student"))
    result = {
        "teacher": {"threshold": teacher.metadata["threshold"], "source": teacher.metadata.get("threshold_source")},
        "student": {"threshold": student.metadata["threshold"],
                    "source": student.metadata.get("metrics", {}).get("threshold_source", "validation streams, best event F1")},
        "synthetic_student_threshold": student.metadata["threshold"],
    }
    if run.real_dir is not None or run.negatives_dir is not None:
        from training.evaluate import streamer_for
        from training.real import build_stream, open_negatives, open_real, shown_dir, stream_figures, stream_track

        model = student.build_model()
        negatives = run.negatives_dir is not None
        if negatives:
            dev = open_negatives(run.negatives_dir, run.keyword, model.config.sample_rate).load()
        else:
            dev = open_real(run.real_dir, run.keyword, model.config.sample_rate).load()
        stream = build_stream(dev, 0)
        tracks = {}
        for name, ckpt in (("student", student), ("teacher", teacher)):
            built = model if name == "student" else ckpt.build_model()
            scorer = streamer_for(built, "cpu")
            track = stream_track(dev, stream, scorer)
            tracks[name] = (track, scorer.step_seconds)
            if name == "teacher" and not negatives:  # the real stage's two-stage figures reuse it
                run.partial.mkdir(exist_ok=True)
                np.save(run.partial / TEACHER_TRACK, track)
            try:
                s = stream_figures(track, stream, scorer.step_seconds, None, choose_fa_per_hour=REAL_MAX_FA)
            except KWSError as exc:  # no threshold reaches the target: keep the synthetic one, say why
                result[name]["real_stream"] = f"kept the synthetic threshold: {exc}"
                continue
            threshold = float(s["at_threshold"]["threshold"])
            meta = dict(ckpt.metadata)
            meta["threshold_synthetic"] = meta["threshold"]
            meta["threshold"] = threshold
            if negatives:
                meta["threshold_source"] = (f"real negatives: lowest threshold with <= {REAL_MAX_FA:g} false alarms per hour "
                                            f"on {s['hours']:.2f} h of recordings without the keyword "
                                            f"({shown_dir(run.negatives_dir)}, scored only)")
            else:
                meta["threshold_source"] = s["threshold_source"] + " (real dev set, scored only)"
            scratch = _fresh(run.partial / "thresholds")
            tmp = scratch / f"{name}.pt"
            save_checkpoint(tmp, built, meta)
            # the stage's record accepts the rewritten file too: an interruption between the
            # rename and the state write must not make the checkpoint look tampered with
            run.state["stages"][name].setdefault("also", {})[f"checkpoints/{name}.pt"] = sha256_file(tmp)
            write_state(run.out, run.state)
            os.replace(tmp, run.ckpt(name))
            at = s["at_threshold"]
            if negatives:  # no keyword in it: hits and recall mean nothing
                at = {"threshold": at["threshold"], "hours": s["hours"], "false_alarms": at["false_alarms"],
                      "false_alarms_per_hour": at["false_alarms_per_hour"]}
            result[name] = {"threshold": threshold, "source": meta["threshold_source"],
                            ("real_negatives_at_threshold" if negatives else "real_stream_at_threshold"): at}
        result["two_stage"] = _two_stage_threshold(tracks, stream, negatives)
    path = run.out / "thresholds.json"
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    return {"outputs": ["thresholds.json", "checkpoints/student.pt", "checkpoints/teacher.pt"], "info": result}


def _two_stage_threshold(tracks: dict, stream, negatives: bool) -> dict:
    """The verifier threshold of the two-stage detector (the student proposes, the teacher
    confirms), chosen like the single models' on the same real stream from their tracks
    (``training.real.verified_figures``): the student's candidates already reject most of
    what the teacher alone would false-alarm on, so the pair keeps REAL_MAX_FA with a lower
    verifier threshold than the teacher alone (alexa: 0.54 against 0.62, 292 of 315 real ones
    against 276).  Used by the card's Pi command (``--verifier-threshold``) and the real stage."""
    from training.real import verified_figures

    (a, step_a), (b, step_b) = tracks["student"], tracks["teacher"]
    if abs(step_a - step_b) > 1e-9:
        return {"verifier_threshold": None, "note": "the student and the teacher step differently"}
    try:
        f = verified_figures(a, b, stream, step_a, None, choose_fa_per_hour=REAL_MAX_FA)
    except KWSError as exc:
        return {"verifier_threshold": None, "note": f"the teacher's own threshold is the verifier's: {exc}"}
    at = f["at_threshold"]
    keep = ("threshold", "false_alarms", "false_alarms_per_hour", "verifications_per_hour") + \
        (() if negatives else ("hits", "keywords", "recall"))
    return {"verifier_threshold": float(at["threshold"]), "trigger": f["trigger"],
            "source": f"two-stage on the same real stream (the student's track in process): lowest verifier threshold "
                      f"with <= {REAL_MAX_FA:g} false alarms per hour", "at_threshold": {k: at[k] for k in keep}}


def pair_verifier_threshold(out: Path) -> float | None:
    """The two-stage verifier threshold the thresholds stage chose, if it chose one."""
    try:
        return json.loads((out / "thresholds.json").read_text()).get("two_stage", {}).get("verifier_threshold")
    except (OSError, ValueError):
        return None


STUDENT_FILES = (".stream.onnx", ".stream.int8.onnx", ".stream.int8w.onnx", ".onnx", ".ts")
# The embedding teacher has its fp32 streaming step only (scripts/export_all.py EMBEDDING_SUFFIXES:
# rounding its frozen conv weights to int8 moves its probability by up to 0.4).
TEACHER_FILES = (".stream.onnx",)


def stage_export(run: Run) -> dict:
    """Every export of both checkpoints into a scratch folder, renamed to DIR/exported at the end."""
    from kws_export.checkpoint import load_checkpoint
    from kws_export.config import FAST_CHUNK_MS
    from kws_export.export_onnx import export_onnx_file
    from kws_export.export_torchscript import export_torchscript
    from training.speech import SYNTHESIZED

    scratch = _fresh(run.partial / "export")
    s, t = run.ckpt("student"), run.ckpt("teacher")
    jobs: list[tuple[str, Callable[[Path], object]]] = [
        ("student.stream.onnx", lambda o: export_onnx_file(s, o, streaming=True)),
        ("student.stream.int8.onnx", lambda o: export_onnx_file(s, o, streaming=True, int8=True, speech=SYNTHESIZED)),
        ("student.stream.int8w.onnx", lambda o: export_onnx_file(s, o, streaming=True, int8=True, int8_mode="weights",
                                                                 chunk_ms=FAST_CHUNK_MS)),
        ("student.onnx", lambda o: export_onnx_file(s, o)),
        ("student.ts", lambda o: export_torchscript(load_checkpoint(s).build_model(), o)),
        ("teacher.stream.onnx", lambda o: export_onnx_file(t, o, streaming=True)),
    ]
    sizes = {}
    with _bar(run, len(jobs), "export") as bar:
        for name, job in jobs:
            job(scratch / name)
            sizes[name] = (scratch / name).stat().st_size
            bar.update(1)
    final = run.out / "exported"
    if final.exists():
        shutil.rmtree(final)
    os.replace(scratch, final)
    return {"outputs": [f"exported/{n}" for n, _ in jobs], "info": {"bytes": sizes}}


def stage_verify(run: Run) -> dict:
    """``kws-export verify`` on both export sets: every file against PyTorch (and the int8
    streaming files against the fp32 one); a failure stops the run (exit 1)."""
    from kws_export.verify import verify
    from training.speech import SYNTHESIZED

    ex = run.out / "exported"
    reports = {}
    with _bar(run, 2, "verify") as bar:
        reports["student"] = verify(str(run.ckpt("student")), [str(ex / "student.stream.onnx")], [str(ex / "student.ts")],
                                    discover=True, speech=SYNTHESIZED, seconds=run.plan.verify_seconds)
        bar.update(1)
        reports["teacher"] = verify(str(run.ckpt("teacher")), [str(ex / f"teacher{s}") for s in TEACHER_FILES],
                                    discover=False, speech=SYNTHESIZED, seconds=run.plan.verify_seconds)
        bar.update(1)
    summary = {name: {"ok": r["ok"], "pairs": {f"{p['a']} vs {p['b']}": {"max_abs_diff": p["max_abs_diff"], "ok": p["ok"]}
                                               for p in r["pairs"]}} for name, r in reports.items()}
    path = run.out / "verify.json"
    bad = [f"{n}: {pair}" for n, s in summary.items() for pair, v in s["pairs"].items() if not v["ok"]]
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({"summary": summary, "reports": reports}, indent=1, default=str) + "\n")
    if bad:
        raise VerifyFailed(f"parity check failed ({'; '.join(bad)}); details in {path}")
    return {"outputs": ["verify.json"], "info": summary}


class VerifyFailed(KWSError):
    exit_code = 1


def stage_real(run: Run) -> dict:
    """The deployed file on the real dev set: clip figures and the real stream through
    ``runtime/detect.py``'s Detector at the file's own threshold."""
    path = run.out / "real.json"
    if run.real_dir is None:
        result = {"measured": False, "reason": run.real_note.removeprefix("not measured: ")}
    else:
        from kws_export.checkpoint import load_checkpoint
        from training.pipeline import json_safe, plain
        from training.real import evaluate_real, open_real, shown_dir

        model = load_checkpoint(run.ckpt("student")).build_model()
        dev = open_real(run.real_dir, run.keyword, model.config.sample_rate).load()
        first = run.out / "exported" / "student.stream.int8w.onnx"
        tracks: dict = {}
        r = evaluate_real(model, dev, None, onnx=first, tracks=tracks)
        result = {"measured": True, "dir": shown_dir(run.real_dir), "model": "exported/student.stream.int8w.onnx",
                  "student": json_safe(plain(r)), "verified": json_safe(plain(_two_stage(run, dev, first, tracks["stream"])))}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    return {"outputs": ["real.json"], "info": {"measured": result["measured"]}}


def _two_stage(run: Run, dev, first: Path, first_track: np.ndarray) -> dict:
    """runtime/detect.py --verifier's figures on the real stream (``training.real.evaluate_verified``):
    the int8 student proposes (``first_track``: its export on the stream, from ``evaluate_real``),
    the teacher's export confirms at its threshold.  The teacher's track is the thresholds
    stage's (in process; its export equals it within the verify stage's 1e-5) when that is
    still there, else the export's through the runtime."""
    from training.real import evaluate_verified

    cached = run.partial / TEACHER_TRACK
    chosen = pair_verifier_threshold(run.out)
    out = evaluate_verified(dev, first, run.out / "exported" / "teacher.stream.onnx", threshold=chosen,
                            verifier_track=np.load(cached) if cached.is_file() else None, first_track=first_track)
    out.update({"model": "exported/student.stream.int8w.onnx", "verifier": "exported/teacher.stream.onnx",
                "threshold_source": ("thresholds.json: two_stage.verifier_threshold" if chosen is not None
                                     else "exported/teacher.stream.onnx: kws.threshold"),
                "verifier_track": "thresholds stage, in process" if cached.is_file() else "the export, through runtime/detect.py"})
    return out


def held_out_voices(data: Path) -> list[str]:
    """Voices of the corpus's test split (never heard in training), most clips first."""
    import csv

    counts: dict[str, int] = {}
    with open(data / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "test":
                counts[row["voice"]] = counts.get(row["voice"], 0) + 1
    return sorted(counts, key=lambda v: (-counts[v], v))


def stage_demo(run: Run) -> dict:
    """A demo stream (speech, the keyword, speech) by test-split voices, through runtime/detect.py."""
    from kws_export.audio import write_wav
    from training.demo_stream import make_demo
    from training.synth import SAMPLE_RATE

    voices = held_out_voices(run.data)
    if not voices:
        raise KWSError(f"{run.data}: the corpus has no test-split voices for the demo")
    scratch = _fresh(run.partial / "demo")
    with _bar(run, 2, "demo") as bar:
        audio, (a, b) = make_demo(run.keyword, run.plan.demo_seed, voices=voices)
        wav = scratch / "demo.wav"
        write_wav(wav, audio, SAMPLE_RATE)
        bar.update(1)
        model = run.out / "exported" / "student.stream.int8w.onnx"
        detect = Path(__file__).resolve().parents[1] / "runtime" / "detect.py"
        png = scratch / "probability.png"
        proc = subprocess.run([sys.executable, str(detect), "--model", str(model.resolve()), wav.name, "--json", "--plot",
                               png.name], capture_output=True, text=True, cwd=scratch)  # the plot's title: demo.wav
        if proc.returncode != 0:
            raise KWSError(f"runtime/detect.py failed on the demo stream: {(proc.stderr.strip().splitlines() or [''])[-1]}")
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        bar.update(1)
    hits = [e for e in events if a - 0.2 <= e["time"] <= b + 1.2]
    demo = {"seconds": round(len(audio) / SAMPLE_RATE, 2), "keyword_at_s": [round(a, 2), round(b, 2)],
            "voices": "test split of DIR/data (held out of training)", "detections": events,
            "keyword_detected": bool(hits), "false_alarms": len(events) - len(hits),
            "command": "python runtime/detect.py --model exported/student.stream.int8w.onnx demo.wav --plot probability.png"}
    (scratch / "demo.json").write_text(json.dumps(demo, indent=1) + "\n")
    for name in ("demo.wav", "demo.json", "probability.png"):
        os.replace(scratch / name, run.out / name)
    return {"outputs": ["demo.wav", "demo.json", "probability.png"], "info": {k: demo[k] for k in ("keyword_detected", "false_alarms")}}


def stage_card(run: Run) -> dict:
    from training.keyword_card import model_card

    text = model_card(run)
    with atomic_output(run.out / "README.md") as tmp:
        tmp.write_text(text)
    return {"outputs": ["README.md"]}


STAGES: list[tuple[str, str]] = [
    ("data", "stage_data"), ("teacher", "stage_teacher"), ("student", "stage_student"),
    ("thresholds", "stage_thresholds"), ("export", "stage_export"), ("verify", "stage_verify"),
    ("real", "stage_real"), ("demo", "stage_demo"), ("card", "stage_card"),
]


# The command -------------------------------------------------------------------------------------------
def normalise_keyword(text: str) -> str:
    from training.synth import slug

    keyword = " ".join(text.split())
    if not slug(keyword):
        raise KWSError(f"keyword {text!r} has no speakable letters (a-z, 0-9: the voices speak English)")
    return keyword


def _dev_root(real: str | None) -> tuple[Path, str | None]:
    """The dev set's folder (``--real``, else the default ../shared/real) and why it is unusable (None: usable)."""
    from training.real import default_real_dir, real_absent_reason

    root = Path(real) if real else default_real_dir()
    return root, real_absent_reason(root)


def real_source(keyword: str, real: str | None, no_real: bool) -> tuple[Path | None, str]:
    """(dev set folder, note): the folder only when the dev set exists and holds the keyword."""
    from training.real import open_real

    if no_real:
        return None, "not measured (--no-real)"
    root, reason = _dev_root(real)
    if reason is not None:
        return None, f"not measured: {reason}"
    try:
        open_real(root, keyword)
    except KWSError as exc:
        return None, f"not measured: {exc}"
    return root, f"measured on the real dev set at {root}"


def negatives_source(keyword: str, negatives: str | None, real: str | None, no_real: bool,
                     real_dir: Path | None) -> Path | None:
    """The real recordings without the keyword that the thresholds are chosen on: ``--negatives``
    (checked now: a bad folder is one line before anything is written), else the dev set when
    it is there but does not hold the keyword (every clip of it is then a negative)."""
    from training.real import open_negatives

    if negatives is not None:
        open_negatives(negatives, keyword)
        return Path(negatives)
    if no_real or real_dir is not None:
        return None
    root, reason = _dev_root(real)
    if reason is not None:
        return None
    try:
        open_negatives(root, keyword)
    except KWSError:
        return None
    return root


def real_seconds(plan: "Plan", real: bool, negatives: bool) -> float:
    """What the real-speech work after the student costs: the thresholds' stream and the real stage."""
    return (cost("real_s", plan) if real else 0.0) + (cost("negatives_s", plan) if negatives else 0.0)


def run_keyword(text: str, out: Path, minutes: float, student: str, resume: bool, progress: bool = True,
                sizes: str | None = None, real: str | None = None, no_real: bool = False,
                explicit: set | None = None, engines: str = "auto", negatives: str | None = None,
                kd_similarity: float = 0.0) -> dict:
    explicit = explicit or set()
    keyword = normalise_keyword(text)
    from training.synth import check_keyword, slug

    state = None
    if out.exists() and not out.is_dir():
        raise KWSError(f"{out}: exists and is not a folder")
    nonempty = out.is_dir() and any(out.iterdir())
    if nonempty and not resume:
        raise KWSError(f"{out}: folder is not empty (continue an interrupted run with --resume, or choose another --out)")
    if resume and nonempty:
        state = read_state(out)
        if state is None:
            raise KWSError(f"{out}: not a `kws-train keyword` folder (no {STATE_FILE}); nothing to resume")
        if slug(state["keyword"]) != slug(keyword):
            raise KWSError(f"{out}: was made for keyword {state['keyword']!r}, not {keyword!r}")
        old = Plan.from_dict(state["plan"])
        if "student" in explicit and old.student != student:
            raise KWSError(f"{out}: was started with --student {old.student}; resume it with the same size")
        if "sizes" in explicit and old.preset != sizes:
            raise KWSError(f"{out}: was started with {'--sizes ' + old.preset if old.preset else 'no --sizes'}")
        if "engines" in explicit and engines != "auto" and resolve_engines(engines, old.preset) != old.engines:
            raise KWSError(f"{out}: was started with --engines {','.join(old.engines)}; resume it with the same voices")
        if "kd_similarity" in explicit and old.kd_similarity != kd_similarity:
            raise KWSError(f"{out}: was started with --kd-similarity {old.kd_similarity:g}; resume it with the same weight")
    if not kd_similarity >= 0:
        raise KWSError("--kd-similarity must be >= 0")
    check_keyword(keyword)  # espeak-ng can say it (one line otherwise), before anything is written
    real_dir, real_note = real_source(keyword, real, no_real)
    negatives_dir = negatives_source(keyword, negatives, real, no_real, real_dir)
    if state is None:
        plan = make_plan(minutes, student, sizes, real=real_dir is not None, engines=resolve_engines(engines, sizes),
                         negatives=negatives_dir is not None)
        plan.kd_similarity = float(kd_similarity)
        state = {"version": STATE_VERSION, "keyword": keyword, "budget_minutes": minutes, "plan": plan.to_dict(),
                 "stages": {}, "elapsed_s": 0.0,
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        out.mkdir(parents=True, exist_ok=True)
        write_state(out, state)
    else:
        plan = Plan.from_dict(state["plan"])
        if "minutes" in explicit and minutes != plan.minutes:
            _say_plain(f"resuming with the budget it was planned for ({plan.minutes:g} min), not {minutes:g}")
    state["command"] = shlex.join(["kws-train", "keyword", keyword, "--out", str(out), "--minutes", f"{plan.minutes:g}",
                                   "--student", plan.student, "--engines", ",".join(plan.engines),
                                   *(["--kd-similarity", f"{plan.kd_similarity:g}"] if plan.kd_similarity > 0 else []),
                                   *(["--sizes", plan.preset] if plan.preset else [])])
    state["real"] = {"dir": str(real_dir) if real_dir else None, "note": real_note,
                     "negatives": str(negatives_dir) if negatives_dir else None}
    run = Run(out, keyword, plan, state, progress, real_dir, real_note, time.monotonic(), float(state.get("elapsed_s", 0.0)),
              negatives_dir)
    names = [n for n, _ in STAGES]
    done = state["stages"]
    # A finished stage whose outputs were changed or removed since is redone, and all after it.
    for i, name in enumerate(names):
        if name in done and not outputs_intact(out, done[name]):
            _say(run, f"{name}: its outputs changed since it finished; redoing it and the stages after it")
            for later in names[i:]:
                done.pop(later, None)
            break
    if done:
        _say(run, f"resuming: {', '.join(n for n in names if n in done)} already finished")
    else:
        _say(run, f"keyword {keyword!r} into {out}, budget {plan.minutes:g} min; plan:")
        for line in describe_plan(plan, real_dir is not None, negatives_dir):
            _say(run, "  " + line)
    module = sys.modules[__name__]
    for k, name in enumerate(names, 1):
        if name in done:
            continue
        left = run.left()
        _say(run, f"stage {k}/{len(names)} {name}, {max(0.0, left) / 60:.1f} min left of the {plan.minutes:g} min budget")
        t0 = time.monotonic()
        try:
            record = getattr(module, f"stage_{name}")(run)
        except BaseException:
            # nothing of an unfinished stage reaches its final place; its scratch goes too (the
            # student's is kept: `kws-train distill --resume` continues from its last epoch)
            if name != "student":
                shutil.rmtree(run.partial / name, ignore_errors=True)
            raise
        finally:
            state["elapsed_s"] = run.elapsed()
            write_state(out, state)
        record = dict(record)
        record["outputs"] = {rel: _digest(out, rel) for rel in record.get("outputs", [])}
        record["seconds"] = round(time.monotonic() - t0, 1)
        done[name] = record
        # a stage that rewrites an earlier stage's file (thresholds -> student.pt) keeps that stage intact
        for other in done.values():
            for rel in other.get("outputs", {}):
                if rel in record["outputs"]:
                    other["outputs"][rel] = record["outputs"][rel]
        state["elapsed_s"] = run.elapsed()
        write_state(out, state)
    shutil.rmtree(run.partial, ignore_errors=True)
    total = run.elapsed()
    _say(run, f"done in {total / 60:.1f} min ({'within' if total <= plan.minutes * 60 else 'over'} the {plan.minutes:g} min "
              f"budget): {out / 'exported' / 'student.stream.int8w.onnx'}; model card {out / 'README.md'}")
    return state


def _say_plain(msg: str) -> None:
    print(f"kws-train keyword: {msg}", file=sys.stderr, flush=True)
