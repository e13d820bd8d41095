"""Bad input never crashes or loses anything (the reliability issue), and unusual but valid
input works, for all three tools: ``runtime/detect.py``, ``kws-export`` and ``kws-train``.

Every command-line case runs as its own OS process and is checked for: a non-zero exit
status, exactly one line on stderr naming the offending file and what is wrong with it, no
"Traceback" anywhere, no file left behind (no partial output, no temporary file, nothing
beside the inputs) and any output file that already existed left byte-for-byte untouched.

Starting a Python that imports torch costs seconds on a loaded two-core machine, so the
cases are not started with ``subprocess.run`` one by one: one helper process imports the
packages once and forks a child per case; the child runs the very entry point the console
script runs (``kws_export.cli:main``, ``training.cli:main``, ``runtime/detect.py`` as
``__main__``) with its own stdin, stdout, stderr, working directory and exit status.  A few
cases also run through the real installed console scripts to prove the two agree.

The checkpoints here have random weights: none of these cases needs a trained model.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from onnx import TensorProto, helper

from conftest import ROOT, venv_bin
from kws_export.checkpoint import save_checkpoint
from kws_export.config import CRNNConfig
from kws_export.errors import KWSError
from kws_export.model import CRNN

DETECT = ROOT / "runtime" / "detect.py"
RATE = 16000
TINY = CRNNConfig(channels=2, hidden=8, gru_layers=1)
TRAIN_TINY = ["--channels", "2", "--hidden", "8", "--gru-layers", "1", "--epochs", "1", "--batch-size", "8",
              "--epoch-size", "16", "--threads", "1", "--no-progress", "--device", "cpu",
              "--val-minutes", "0.1", "--eval-minutes", "0.1"]
CASE_TIMEOUT = 120.0
OLD = b"an earlier output that must survive a failed run\n"


# The case runner ---------------------------------------------------------------------------------
DRIVER = r'''
import glob, json, os, runpy, signal, sys, time, traceback
import torch
torch.set_num_threads(1)
import training.cli, training.export_cli
for name in ("kws_export.export_onnx", "kws_export.export_torchscript", "kws_export.verify",
             "kws_export.quantize", "kws_export.onnx_info", "kws_export.audio", "training.pipeline",
             "training.synth", "training.speech", "onnxruntime", "runtime.detect"):
    try:  # best effort: a module that fails to import fails again, visibly, in the child
        __import__(name)
    except BaseException:
        pass
ENTRIES = {"kws-export": lambda argv: training.export_cli.main(argv), "kws-train": lambda argv: training.cli.main(argv)}

def sigterm_caught(pid):
    """True once the process has a SIGTERM handler (bit 15 of SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next(ln for ln in f if ln.startswith("SigCgt:"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return False
    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)

def happened(event, pid):
    """kill_on: "handler" (the command has installed its SIGTERM handler) or a glob that
    some path must match (a file the program creates)."""
    return sigterm_caught(pid) if event == "handler" else bool(glob.glob(event))

def child(req):
    os.chdir(req["cwd"])
    fd = os.open(req.get("stdin") or os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    for target, path in ((1, req["stdout"]), (2, req["stderr"])):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, "r", closefd=False)
    code = 0
    try:
        if req.get("inject"):
            exec(req["inject"], {})
        prog, argv = req["prog"], req["argv"]
        if prog == "detect.py":
            sys.argv = [req["detect"], *argv]
            runpy.run_path(req["detect"], run_name="__main__")
        else:
            sys.argv = [prog, *argv]
            ENTRIES[prog](argv)
    except SystemExit as exc:  # what the interpreter does with SystemExit at top level
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # an uncaught exception: the interpreter prints the traceback
        traceback.print_exc()
        code = 1
    try:  # what interpreter shutdown does: atexit handlers (multiprocessing cleans up there)
        import atexit
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(code & 0xFF)

for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            child(req)
        finally:
            os._exit(70)
    start, timed_out, killed = time.monotonic(), False, False
    event = req.get("kill_on")
    event_at = start if event is None else None  # kill_after counts from the event (or the start)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.monotonic()
        if event_at is None and req.get("kill_after") is not None and happened(event, pid):
            event_at = now
        if req.get("kill_after") is not None and event_at is not None and now - event_at >= req["kill_after"] and not killed:
            os.kill(pid, req.get("kill_signal") or signal.SIGKILL)
            killed = True
        elif now - start >= req["timeout"] and not killed:
            os.kill(pid, signal.SIGKILL)
            timed_out = killed = True
        time.sleep(0.001 if event_at is None and event is not None else 0.005)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "timed_out": timed_out, "killed": killed,
                      "event_seen": event_at is not None, "seconds": time.monotonic() - start}), flush=True)
'''


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KWS_DEBUG"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


class Result:
    def __init__(self, rc: int, stdout: str, stderr: str, timed_out: bool, seconds: float, killed: bool = False,
                 event_seen: bool = False):
        self.returncode, self.stdout, self.stderr, self.timed_out, self.seconds = rc, stdout, stderr, timed_out, seconds
        self.killed, self.event_seen = killed, event_seen  # the runner sent kill_signal; kill_on happened

    def __repr__(self) -> str:
        return f"<rc {self.returncode} in {self.seconds:.1f} s, killed {self.killed}, stdout {self.stdout[-400:]!r}, stderr {self.stderr[-1500:]!r}>"


class Runner:
    """Runs a tool's entry point in a fresh forked process (see the module docstring)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=child_env(), cwd=workdir)
        self.count = 0

    def __call__(self, prog: str, *argv, cwd: Path | None = None, stdin: Path | None = None,
                 inject: str | None = None, kill_after: float | None = None, kill_signal: int | None = None,
                 kill_on: str | None = None, timeout: float = CASE_TIMEOUT) -> Result:
        """``kill_after`` seconds after ``kill_on`` ("handler": the command's SIGTERM handler is
        installed; otherwise a glob a path must match), or after the start without it, the
        child gets ``kill_signal``.  Waiting on an event the program makes, not on a clock
        alone, keeps a kill from landing before the command starts or after it ended."""
        self.count += 1
        out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        req = {"prog": prog, "argv": [str(a) for a in argv], "cwd": str(cwd or self.workdir), "stdout": str(out),
               "stderr": str(err), "stdin": str(stdin) if stdin else None, "inject": inject, "timeout": timeout,
               "kill_after": kill_after, "kill_signal": kill_signal, "kill_on": kill_on, "detect": str(DETECT)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the case runner died"
        status = json.loads(line)
        return Result(status["rc"], out.read_text(errors="replace"), err.read_text(errors="replace"),
                      status["timed_out"], status["seconds"], status["killed"], status["event_seen"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    runner = Runner(tmp_path_factory.mktemp("runner"))
    yield runner
    runner.close()


# Files -------------------------------------------------------------------------------------------
def tone(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Band-limited test audio (a chirp and two tones, below 3.5 kHz so 8 kHz keeps it)."""
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * (200 + 600 * t) * t) + 0.15 * np.sin(2 * np.pi * 1100 * t + rng.uniform(0, 6))
    x += 0.1 * np.sin(2 * np.pi * 2900 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return x.astype(np.float32)


def float_wav(path: Path, x: np.ndarray, rate: int = RATE) -> Path:
    sf.write(path, np.asarray(x, np.float32), rate, subtype="FLOAT")
    return path


class Evil:
    """Unpickling this calls open(marker, "w"): code execution made visible by a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def make_files(d: Path) -> dict[str, Path]:
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test autouse fixture
    f: dict[str, Path] = {}
    torch.manual_seed(0)
    model = CRNN(TINY).eval()
    f["ckpt"] = d / "good.pt"
    save_checkpoint(f["ckpt"], model, {"keyword": "sheila"})
    from kws_export.export_onnx import export_onnx_file

    f["stream"] = d / "good.stream.onnx"
    export_onnx_file(f["ckpt"], f["stream"], streaming=True)
    f["offline"] = d / "good.onnx"
    export_onnx_file(f["ckpt"], f["offline"])
    f["clip"] = d / "clip.wav"
    sf.write(f["clip"], tone(1.5), RATE, subtype="PCM_16")

    # Bad audio
    f["text"] = d / "notes.wav"
    f["text"].write_text("this is a text file, not audio\n" * 4)
    f["empty"] = d / "empty.wav"
    f["empty"].write_bytes(b"")
    whole = f["clip"].read_bytes()
    f["truncated"] = d / "truncated.wav"
    f["truncated"].write_bytes(whole[: len(whole) // 2])
    x = tone(1.0)
    x[4000] = np.nan
    f["nan"] = float_wav(d / "nan.wav", x)
    x = tone(1.0)
    x[100] = np.inf
    f["inf"] = float_wav(d / "inf.wav", x)
    f["missing"] = d / "missing.wav"
    f["dir"] = d / "folder.wav"
    f["dir"].mkdir()

    # Bad models and checkpoints
    f["empty_model"] = d / "empty.onnx"
    f["empty_model"].write_bytes(b"")
    f["empty_ckpt"] = d / "empty.pt"
    f["empty_ckpt"].write_bytes(b"")
    f["missing_model"] = d / "missing.onnx"
    f["missing_ckpt"] = d / "missing.pt"
    f["dir_model"] = d / "folder.onnx"
    f["dir_model"].mkdir()
    f["dir_ckpt"] = d / "folder.pt"
    f["dir_ckpt"].mkdir()
    rng = np.random.default_rng(0)
    f["random_ckpt"] = d / "random.pt"
    f["random_ckpt"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    f["random_model"] = d / "random.onnx"
    f["random_model"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    f["text_ckpt"] = d / "notes.pt"
    f["text_ckpt"].write_text("this is a text file, not a checkpoint\n")
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4, 10))
    f["other_arch"] = d / "resnet.pt"
    torch.save(other.state_dict(), f["other_arch"])
    seminar_like = CRNN(CRNNConfig(channels=3, hidden=8, gru_layers=1)).state_dict()
    seminar_like["gru.weight_ih_l0"] = torch.zeros(24, 7)  # a GRU input that fits no conv
    f["other_crnn"] = d / "other_crnn.pt"
    torch.save(seminar_like, f["other_crnn"])
    f["marker"] = d / "PWNED"
    f["evil"] = d / "evil.pt"
    torch.save({"state_dict": Evil(f["marker"])}, f["evil"])
    f["evil_pickle"] = d / "evil_plain.pt"  # the legacy (non-zip) pickle format
    f["evil_pickle"].write_bytes(pickle.dumps(Evil(f["marker"])))
    f["odd_keyword"] = d / "odd_keyword.pt"
    save_checkpoint(f["odd_keyword"], CRNN(TINY.replace(keyword="?!")).eval(), {"keyword": "?!"})

    # ONNX files that are not kws-edge streaming exports
    g = helper.make_graph([helper.make_node("ReduceMean", ["audio"], ["prob"], axes=[1], keepdims=0)], "foreign",
                          [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 1280])],
                          [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1])])
    foreign = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    foreign.ir_version = 8
    f["no_meta"] = d / "foreign.onnx"
    onnx.save(foreign, f["no_meta"])
    # The same foreign graph wearing a real export's metadata: its inputs are wrong.
    for prop in onnx.load(f["stream"]).metadata_props:
        foreign.metadata_props.append(onnx.StringStringEntryProto(key=prop.key, value=prop.value))
    f["wrong_inputs"] = d / "wrong_inputs.onnx"
    onnx.save(foreign, f["wrong_inputs"])

    # Calibration folders, one bad wav each
    for kind in ("text", "empty", "truncated", "nan", "inf", "dir"):
        cal = d / f"calib_{kind}"
        cal.mkdir()
        shutil.copy(f["clip"], cal / "a.wav")
        target = cal / f"b_{f[kind].name}"
        if f[kind].is_dir():
            target.mkdir()
        else:
            shutil.copy(f[kind], target)
        f[f"calib_{kind}"] = cal
        f[f"calib_{kind}_file"] = target
    return f


def unwritable_dir(base: Path) -> Path:
    """A directory this process cannot create files in: mode 0555, or (as root, whom modes
    do not stop) /sys, which refuses new files to everyone."""
    d = base / "readonly"
    d.mkdir(exist_ok=True)
    d.chmod(0o555)
    try:
        probe = d / "probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return d
    d.chmod(0o755)
    sysfs = Path("/sys")
    try:
        (sysfs / "kws-probe").write_bytes(b"")
    except OSError:
        return sysfs
    pytest.fail("no unwritable directory available for the unwritable-output cases")


def bad_corpus(corpus: Path, base: Path, kind: str, files: dict[str, Path]) -> tuple[Path, Path]:
    """A hard-linked copy of the tiny corpus whose first test-split keyword clip is replaced
    by a bad file of ``kind``; returns the corpus and the bad file's path."""
    root = base / f"corpus_{kind}"
    if not root.exists():
        shutil.copytree(corpus, root, copy_function=os.link)
    victim = root / sorted(l for l in (root / "testing_list.txt").read_text().split() if l.startswith("sheila/"))[0]
    if victim.is_file():
        victim.unlink()
    if kind == "dir":
        victim.mkdir(exist_ok=True)
    else:
        shutil.copy(files[kind], victim)
    return root, victim


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from test_synth import build_tiny_corpus

    return build_tiny_corpus(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def corpora(corpus, files, tmp_path_factory):
    base = tmp_path_factory.mktemp("corpora")
    return {kind: bad_corpus(corpus, base, kind, files) for kind in ("text", "empty", "truncated", "nan", "inf", "dir")}


# The bad-input matrix ----------------------------------------------------------------------------
# Problem classes: what the one line must say besides the file's path.
PROBLEM = {
    "text": r"not a (RIFF/WAVE|readable audio|wav)|format not recogni[sz]ed|unknown format",
    "empty": r"empty",
    "truncated": r"truncated",
    "nan": r"NaN|[Ii]nf",
    "missing": r"not found|does not exist|[Nn]o such file",
    "dir": r"directory",
    "not_kws": r"not a kws-edge|kws\.\S+ missing|no kws\.|metadata",
    "wrong_inputs": r"inputs?",
    "not_model": r"not an? (loadable |readable )?(ONNX|checkpoint|TorchScript|kws-edge)|not an ONNX",
    "not_ckpt": r"not a (readable|loadable|kws-edge) (checkpoint|TorchScript)|not a kws-edge checkpoint",
    "arch": r"another architecture|not a kws-edge checkpoint or a CRNN state dict",
    "evil": r"not a readable checkpoint|weights_only|[Uu]nsupported global|refus",
    "unwritable": r"cannot write|[Pp]ermission denied|not writable|read-only",
    "no_dir": r"does not exist|not found",
    "keyword": r"keyword .*(no letters|no audio|cannot be (spoken|said))|cannot synthesi[sz]e",
}

# (id, prog, argv, the offending file's key or literal, problem, output)
# argv items: "{key}" is replaced by that file's path; "{out}" by the case's output path.
# output: None (nothing may appear in the case's working directory) or (file name, pre-existing?).
CASES: list[tuple] = []


def case(cid, prog, argv, culprit, problem, output=None, corpus=None):
    CASES.append(pytest.param(prog, argv, culprit, problem, output, corpus, id=cid))


# runtime/detect.py --------------------------------------------------------------------------------
for kind in ("text", "empty", "truncated", "nan", "inf", "missing", "dir"):
    case(f"detect-wav-{kind}", "detect.py", ["--model", "{stream}", "{clip}", "{%s}" % kind], kind, kind)
for key, problem in (("no_meta", "not_kws"), ("wrong_inputs", "wrong_inputs"), ("offline", "not_kws"),
                     ("clip", "not_model"), ("random_model", "not_model"), ("ckpt", "not_model"),
                     ("evil", "not_model"), ("empty_model", "empty"), ("missing_model", "missing"),
                     ("dir_model", "dir")):
    case(f"detect-model-{key}", "detect.py", ["--model", "{%s}" % key, "{clip}"], key, problem)
case("detect-plot-unwritable", "detect.py", ["--model", "{stream}", "{clip}", "--plot", "{unwritable}/p.png"],
     "{unwritable}/p.png", "unwritable")
case("detect-plot-no-dir", "detect.py", ["--model", "{stream}", "{clip}", "--plot", "{out}/no/p.png"], "{out}/no/p.png",
     "no_dir", ("p.png", False))
case("detect-plot-exists-bad-wav", "detect.py", ["--model", "{stream}", "{truncated}", "--plot", "{out}"],
     "truncated", "truncated", ("p.png", True))

# kws-export ---------------------------------------------------------------------------------------
CKPT_CASES = (("text_ckpt", "not_ckpt"), ("clip", "not_ckpt"), ("empty_ckpt", "empty"), ("missing_ckpt", "missing"),
              ("dir_ckpt", "dir"), ("random_ckpt", "not_ckpt"), ("other_arch", "arch"), ("other_crnn", "arch"),
              ("evil", "evil"), ("evil_pickle", "evil"), ("stream", "not_ckpt"))
for key, problem in CKPT_CASES:
    if key != "stream":  # info describes ONNX files too
        case(f"export-info-{key}", "kws-export", ["info", "{%s}" % key], key, problem)
    case(f"export-onnx-{key}", "kws-export", ["onnx", "--ckpt", "{%s}" % key, "-o", "{out}", "--streaming"], key,
         problem, ("m.onnx", True))
for key, problem in (("random_ckpt", "not_ckpt"), ("evil", "evil"), ("other_arch", "arch")):
    case(f"export-torchscript-{key}", "kws-export", ["torchscript", "--ckpt", "{%s}" % key, "-o", "{out}"], key,
         problem, ("m.ts", True))
    case(f"export-verify-ckpt-{key}", "kws-export", ["verify", "--ckpt", "{%s}" % key, "--onnx", "{stream}", "--only",
                                                     "--seconds", "2"], key, problem)
for key, problem in (("no_meta", "not_kws"), ("wrong_inputs", "wrong_inputs"), ("clip", "not_model"),
                     ("random_model", "not_model"), ("empty_model", "empty"), ("missing_model", "missing"),
                     ("dir_model", "dir")):
    case(f"export-info-{key}", "kws-export", ["info", "{%s}" % key], key, problem)
    case(f"export-verify-onnx-{key}", "kws-export", ["verify", "--ckpt", "{ckpt}", "--onnx", "{%s}" % key, "--only",
                                                     "--wav", "{clip}"], key, problem)
case("export-verify-ts-random", "kws-export", ["verify", "--ckpt", "{ckpt}", "--ts", "{random_ckpt}", "--only",
                                               "--wav", "{clip}"], "random_ckpt", "not_model")
for kind in ("text", "empty", "truncated", "nan", "inf", "missing", "dir"):
    case(f"export-verify-wav-{kind}", "kws-export", ["verify", "--ckpt", "{ckpt}", "--onnx", "{stream}", "--only",
                                                     "--wav", "{%s}" % kind], kind, kind)
for kind in ("text", "empty", "truncated", "nan", "inf"):  # (a folder named x.wav in --calib DIR is skipped)
    case(f"export-int8-calib-{kind}", "kws-export", ["onnx", "--ckpt", "{ckpt}", "--streaming", "--int8", "--calib",
                                                     "{calib_%s}" % kind, "-o", "{out}"], f"calib_{kind}_file", kind,
         ("m.onnx", True))
case("export-int8-calib-missing", "kws-export", ["onnx", "--ckpt", "{ckpt}", "--streaming", "--int8", "--calib",
                                                 "{missing}", "-o", "{out}"], "missing", "missing", ("m.onnx", False))
for cmd, name in (("onnx", "m.onnx"), ("torchscript", "m.ts")):
    case(f"export-{cmd}-unwritable", "kws-export", [cmd, "--ckpt", "{ckpt}", "-o", "{unwritable}/" + name],
         "{unwritable}/" + name, "unwritable")
    case(f"export-{cmd}-no-dir", "kws-export", [cmd, "--ckpt", "{ckpt}", "-o", "{out}/no/" + name],
         "{out}/no/" + name, "no_dir", (name, False))
case("export-onnx-bad-option-keeps-file", "kws-export", ["onnx", "--ckpt", "{ckpt}", "--streaming", "--chunk-ms", "100",
                                                         "-o", "{out}"], "100", r"multiple", ("m.onnx", True))
case("export-int8-keyword-unsayable", "kws-export", ["onnx", "--ckpt", "{odd_keyword}", "--streaming", "--int8", "-o",
                                                     "{out}"], "?!", "keyword", ("m.onnx", True))
case("export-verify-keyword-unsayable", "kws-export", ["verify", "--ckpt", "{odd_keyword}", "--onnx", "{stream}",
                                                       "--only"], "?!", "keyword")

# kws-train ----------------------------------------------------------------------------------------
for key, problem in CKPT_CASES:
    case(f"train-eval-ckpt-{key}", "kws-train", ["eval", "--ckpt", "{%s}" % key, "--data", "{corpus}",
                                                 "--stream-minutes", "0.1", "-o", "{out}"], key, problem,
         ("eval.json", True))
    case(f"train-distill-teacher-{key}", "kws-train", ["distill", "--teacher", "{%s}" % key, "--data", "{corpus}",
                                                       "-o", "{out}", *TRAIN_TINY], key, problem, ("s.pt", True))
for key, problem in (("random_ckpt", "not_ckpt"), ("evil", "evil"), ("other_arch", "arch")):
    case(f"train-distill-init-{key}", "kws-train", ["distill", "--teacher", "{ckpt}", "--init", "{%s}" % key, "--data",
                                                    "{corpus}", "-o", "{out}", *TRAIN_TINY], key, problem, ("s.pt", True))
for key, problem in (("random_ckpt", "not_ckpt"), ("evil", "evil"), ("missing_ckpt", "missing")):
    case(f"train-teacher-init-{key}", "kws-train", ["teacher", "--init", "{%s}" % key, "--data", "{corpus}", "-o",
                                                    "{out}", *TRAIN_TINY], key, problem, ("t.pt", True))
for kind in ("text", "empty", "truncated", "nan", "inf", "dir"):
    case(f"train-teacher-data-{kind}", "kws-train", ["teacher", "--data", "{corpus}", "-o", "{out}", *TRAIN_TINY],
         "{bad_clip}", kind, ("t.pt", True), corpus=kind)
    case(f"train-eval-data-{kind}", "kws-train", ["eval", "--ckpt", "{ckpt}", "--data", "{corpus}", "--threshold", "0.5",
                                                  "--stream-minutes", "0.1"], "{bad_clip}", kind, corpus=kind)
case("train-teacher-data-missing", "kws-train", ["teacher", "--data", "{missing}", "-o", "{out}", *TRAIN_TINY],
     "missing", "missing", ("t.pt", False))
case("train-teacher-data-file", "kws-train", ["teacher", "--data", "{clip}", "-o", "{out}", *TRAIN_TINY],
     "clip", r"not a (folder|directory)|is a file", ("t.pt", False))
case("train-teacher-out-unwritable", "kws-train", ["teacher", "--data", "{corpus}", "-o", "{unwritable}/t.pt",
                                                   *TRAIN_TINY], "{unwritable}/t.pt", "unwritable")
case("train-teacher-out-no-dir", "kws-train", ["teacher", "--data", "{corpus}", "-o", "{out}/no/t.pt", *TRAIN_TINY],
     "{out}/no/t.pt", "no_dir", ("t.pt", False))
case("train-eval-out-unwritable", "kws-train", ["eval", "--ckpt", "{ckpt}", "--data", "{corpus}", "--threshold", "0.5",
                                                "--stream-minutes", "0.1", "-o", "{unwritable}/e.json"],
     "{unwritable}/e.json", "unwritable")
case("train-synth-keyword-punctuation", "kws-train", ["synth", "--keyword", "?!", "--out", "{out}/c"], "?!", "keyword",
     ("c", False))
case("train-synth-keyword-blank", "kws-train", ["synth", "--keyword", "   ", "--out", "{out}/c"], "keyword", "keyword",
     ("c", False))
case("train-synth-out-is-file", "kws-train", ["synth", "--keyword", "sheila", "--out", "{out}"], "{out}",
     r"not a directory|is a file", ("c", True))
case("train-synth-out-unwritable", "kws-train", ["synth", "--keyword", "sheila", "--out", "{unwritable}/c",
                                                 "--per-word", "1", "--keyword-count", "3"], "{unwritable}/c",
     "unwritable")
case("train-teacher-keyword-unknown", "kws-train", ["teacher", "--data", "{corpus}", "--keyword", "?!", "-o", "{out}",
                                                    *TRAIN_TINY], "?!", r"no folder|keyword", ("t.pt", True))

# Bad option values: one line too, with where to look.
case("detect-bad-option", "detect.py", ["--model", "{stream}", "{clip}", "--threads", "0"], "--threads", r"--help")
case("export-bad-option", "kws-export", ["onnx", "--ckpt", "{ckpt}", "-o", "{out}", "--opset", "abc"], "--opset",
     r"not a valid integer.*--help", ("m.onnx", True))
case("train-bad-option", "kws-train", ["eval", "--ckpt", "{ckpt}", "--data", "{corpus}", "--threshold", "high"],
     "--threshold", r"not a valid float.*--help")
case("train-synth-keyword-cjk", "kws-train", ["synth", "--keyword", "\u4f60\u597d", "--out", "{out}/c"], "\u4f60\u597d",
     "keyword", ("c", False))

# Cases that fail today in files this test's author may not edit: strict xfail, so that a
# fix turns them into a visible XPASS (then delete the entry).  Keep in step with the report.
KNOWN: dict[str, str] = {}


def tree(path: Path) -> dict[str, tuple]:
    """Every entry under ``path`` with size and modification time (to prove nothing changed)."""
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(path))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


def expand(arg: str, paths: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: paths[m.group(1)], arg)


@pytest.mark.parametrize("prog, argv, culprit, problem, output, bad", CASES)
def test_bad_input(request, run, files, corpus, corpora, tmp_path, prog, argv, culprit, problem, output, bad):
    if request.node.callspec.id in KNOWN:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN[request.node.callspec.id]))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    outdir = tmp_path / "out"
    outdir.mkdir()
    paths = {k: str(v) for k, v in files.items()}
    paths["corpus"] = str(corpus)
    paths["unwritable"] = str(unwritable_dir(tmp_path))
    if bad is not None:
        paths["corpus"], bad_clip = (str(p) for p in corpora[bad])
        paths["bad_clip"] = bad_clip
    target = None
    if output is not None:
        name, exists = output
        target = outdir / name
        paths["out"] = str(target)
        if exists:
            target.write_bytes(OLD)
    else:
        paths["out"] = str(outdir / "unused")
    args = [expand(a, paths) for a in argv]
    culprit_text = expand(culprit, paths) if "{" in culprit else paths.get(culprit, culprit)
    inputs_before = tree(Path(paths["ckpt"]).parent)
    corpus_before = tree(Path(paths["corpus"]))

    r = run(prog, *args, cwd=workdir)

    assert not r.timed_out, r
    assert r.returncode != 0, r
    assert "Traceback" not in r.stderr + r.stdout, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r
    line = lines[0]
    print(f"{r.seconds:.1f} s rc {r.returncode}: {line}")
    assert line.startswith(f"{prog}: error: "), r  # not "internal error": that is a bug
    assert culprit_text in line, r
    assert re.search(PROBLEM.get(problem, problem), line), r
    # Nothing written, nothing left behind, nothing touched.
    assert tree(workdir) == {}, tree(workdir)
    if target is not None and output[1]:
        assert target.read_bytes() == OLD
        assert sorted(p.name for p in outdir.iterdir()) == [target.name]
    else:
        assert list(outdir.iterdir()) == []
    assert tree(Path(paths["ckpt"]).parent) == inputs_before
    assert tree(Path(paths["corpus"])) == corpus_before
    assert not files["marker"].exists(), "unpickling ran code"


def test_the_installed_console_scripts_behave_like_the_forked_entry_points(run, files, tmp_path):
    """The runner's forked children are faithful: the real scripts give the same line and code."""
    cases = [
        (["kws-export"], ["info", files["evil"]]),
        (["kws-train"], ["eval", "--ckpt", files["other_arch"], "--data", tmp_path]),
        ([sys.executable, str(DETECT)], ["--model", files["clip"], files["clip"]]),
    ]
    for command, argv in cases:
        prog = Path(command[-1]).name
        real = subprocess.run([venv_bin(command[0]) if len(command) == 1 else command[0], *command[1:],
                               *map(str, argv)], capture_output=True, text=True, env=child_env(), cwd=tmp_path,
                              timeout=CASE_TIMEOUT)
        forked = run(prog, *argv, cwd=tmp_path)
        assert (real.returncode, real.stderr, real.stdout) == (forked.returncode, forked.stderr, forked.stdout)
        assert real.returncode == 2 and real.stderr.startswith(f"{prog}: error: ") and real.stderr.count("\n") == 1
    assert not files["marker"].exists()


# Outputs: atomic replacement -----------------------------------------------------------------------
# In the child: files may not grow past 512 bytes, and exceeding it fails the write (EFBIG)
# instead of killing the process: a full disk, as far as the writer can tell.
DISK_FULL = ("import resource, signal\n"
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))\n")


def assert_error_line(r: Result, prog: str, culprit: str, problem: str, logs_allowed: bool = False) -> None:
    """The failure is one line naming the file and the problem; a long command may have
    logged progress lines before it (``logs_allowed``), the error is then the last line."""
    assert r.returncode != 0 and not r.timed_out, r
    assert "Traceback" not in r.stderr + r.stdout, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines and (logs_allowed or len(lines) == 1), r
    assert lines[-1].startswith(f"{prog}: error: ") and culprit in lines[-1], r
    assert re.search(problem, lines[-1]), r


def outputs(files, corpus, out: Path) -> dict[str, tuple]:
    return {
        "export-onnx": ("kws-export", ["onnx", "--ckpt", files["ckpt"], "--streaming", "-o", out / "m.onnx"], "m.onnx"),
        "export-torchscript": ("kws-export", ["torchscript", "--ckpt", files["ckpt"], "-o", out / "m.ts"], "m.ts"),
        "detect-plot": ("detect.py", ["--model", files["stream"], files["clip"], "--plot", out / "p.png"], "p.png"),
        "train-eval": ("kws-train", ["eval", "--ckpt", files["ckpt"], "--data", corpus, "--threshold", "0.5",
                                     "--stream-minutes", "0.05", "-o", out / "e.json"], "e.json"),
    }


def valid_output(path: Path) -> None:
    data = path.read_bytes()
    if path.suffix == ".onnx":
        onnx.checker.check_model(onnx.load_from_string(data))
    elif path.suffix == ".ts":
        torch.jit.load(str(path))
    elif path.suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "au_fa_fr" in json.loads(data)


@pytest.mark.parametrize("what", ["export-onnx", "export-torchscript", "detect-plot", "train-eval"])
def test_a_successful_run_replaces_an_existing_output_whole(run, files, corpus, tmp_path, what):
    prog, argv, name = outputs(files, corpus, tmp_path)[what]
    (tmp_path / name).write_bytes(OLD)
    r = run(prog, *argv, cwd=tmp_path)
    assert r.returncode == 0, r
    valid_output(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith((".out", ".err"))) == [name]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask  # like any new file, not mkstemp's 0600


@pytest.mark.parametrize("what", ["export-onnx", "export-torchscript", "detect-plot", "train-eval"])
def test_a_write_that_fails_midway_keeps_the_old_file(request, run, files, corpus, tmp_path, what):
    prog, argv, name = outputs(files, corpus, tmp_path)[what]
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    (tmp_path / name).write_bytes(OLD)
    r = run(prog, *argv, cwd=workdir, inject=DISK_FULL)
    assert_error_line(r, prog, str(tmp_path / name), r"cannot write|File too large")
    assert (tmp_path / name).read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "cwd"])
    assert list(workdir.iterdir()) == []


@pytest.mark.slow
def test_training_that_cannot_write_its_checkpoint_keeps_the_old_one(run, corpus, tmp_path):
    """A whole (tiny) teacher run whose checkpoint write fails like a full disk."""
    out = tmp_path / "t.pt"
    out.write_bytes(OLD)
    r = run("kws-train", "teacher", "--data", corpus, "-o", out, *TRAIN_TINY, inject=DISK_FULL, cwd=tmp_path)
    assert_error_line(r, "kws-train", str(out), r"cannot write|File too large", logs_allowed=True)
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith((".out", ".err"))) == ["t.pt"]


def test_sigterm_mid_export_cleans_up_and_sigkill_never_leaves_a_half_file(run, files, tmp_path):
    """SIGTERM (``kill``, a service stop) is turned into a clean exit 143 that removes its
    temporary file; SIGKILL cannot be caught, but the destination is still either the old
    file or a complete new one (a hidden ``.m.onnx.*.tmp`` may remain)."""
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(files["clip"], calib / "a.wav")
    argv = ["onnx", "--ckpt", files["ckpt"], "--streaming", "--int8", "--calib", calib]
    outcomes = []
    # Delays count from the moment the command has installed its SIGTERM handler (the
    # runner watches /proc), not from the fork: a loaded machine can neither deliver the
    # first SIGTERM before the command runs nor let the command finish before it (the
    # int8 export takes far longer than one poll of the runner), so one run is always
    # interrupted mid-export; the later ones land wherever the export has got to.
    for sig, delay in [(signal.SIGTERM, d) for d in (0.0, 0.2, 0.35, 0.5)] + [(signal.SIGKILL, d) for d in (0.1, 0.3)]:
        d = tmp_path / f"{sig.name}-{delay}"
        d.mkdir()
        out = d / "m.onnx"
        out.write_bytes(OLD)
        r = run("kws-export", *argv, "-o", out, cwd=d, kill_after=delay, kill_signal=int(sig), kill_on="handler")
        left = sorted(p.name for p in d.iterdir())
        if r.returncode == 0:
            valid_output(out)
            outcomes.append("finished")
        else:
            # Killed before the atomic rename: the old file; killed after it (a loaded
            # machine can finish first): the complete new one.  Never a partial file.
            if out.read_bytes() != OLD:
                valid_output(out)
            outcomes.append(f"{sig.name} {r.returncode}")
        if sig == signal.SIGTERM:
            assert r.returncode in (0, 143), r
            assert r.returncode == 0 or r.stderr == "kws-export: terminated\n", r
            assert left == ["m.onnx"], left
        else:
            assert [n for n in left if not n.startswith(".m.onnx.")] == ["m.onnx"], left
    assert "SIGTERM 143" in outcomes, outcomes  # at least one run was really interrupted


def test_sigterm_during_synthesis_leaves_no_temporary_corpus(run, tmp_path):
    """SIGTERM once the first clip is in the temporary corpus folder (.c.synth-*), i.e. mid
    synthesis, on any machine: the folder is removed and the exit is a clean 143."""
    r = run("kws-train", "synth", "--keyword", "sheila", "--out", tmp_path / "c", "--per-word", "2",
            "--keyword-count", "20", "--workers", "1", cwd=tmp_path, kill_after=0.0, kill_signal=int(signal.SIGTERM),
            kill_on=str(tmp_path / ".c.synth-*" / "*" / "*.wav"))
    assert r.event_seen and r.killed, r
    assert r.returncode == 143 and r.stderr.splitlines()[-1] == "kws-train: terminated", r
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith((".out", ".err"))) == []


# The Python APIs: a wrong state or a poisoned block changes nothing ---------------------------------
def _twin_run(files, blocks):
    from runtime.detect import Detector

    det = Detector(str(files["stream"]), threshold=0.0, refractory_ms=0)
    for b in blocks:
        det.process(b)
    det.flush()
    return det.probs


def test_detector_refuses_a_wrong_state_and_keeps_its_own(files):
    from runtime.detect import Detector, DetectError

    x = tone(2.0)
    det = Detector(str(files["stream"]), threshold=0.0, refractory_ms=0)
    det.process(x[:5000])
    before = det.get_state()
    shapes = {k: v.shape for k, v in before.items()}
    bad_states = {
        "wider GRU": {**before, "gru_h0": np.zeros((1, shapes["gru_h0"][1] + 1), np.float32)},
        "fewer mel frames": {**before, "mel_tail": np.zeros(shapes["mel_tail"][:2] + (shapes["mel_tail"][2] - 1,), np.float32)},
        "batch of two": {**before, "audio_tail": np.zeros((2,) + shapes["audio_tail"][1:], np.float32)},
        "missing state": {k: v for k, v in before.items() if k != "att_out"},
        "unknown state": {**before, "gru_h9": np.zeros((1, 8), np.float32)},
        "NaN state": {**before, "att_energy": np.full(shapes["att_energy"], np.nan, np.float32)},
        "Inf state": {**before, "gru_h0": np.full(shapes["gru_h0"], np.inf, np.float32)},
    }
    for what, bad in bad_states.items():
        with pytest.raises(DetectError) as err:
            det.set_state(bad)
        message = str(err.value)
        assert "\n" not in message and re.search(r"gru_h|mel_tail|audio_tail|att_out|att_energy", message), what
        for k, v in det.get_state().items():
            np.testing.assert_array_equal(v, before[k], err_msg=what)
    det.process(x[5000:])
    det.flush()
    np.testing.assert_array_equal(det.probs, _twin_run(files, [x[:5000], x[5000:]]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_detector_refuses_a_poisoned_block_and_keeps_streaming(files, bad):
    from runtime.detect import Detector, DetectError

    x = tone(2.0)
    det = Detector(str(files["stream"]), threshold=0.0, refractory_ms=0)
    det.process(x[:3000])  # a partial chunk is pending: it must survive too
    state = det.get_state()
    poisoned = x[3000:9000].copy()
    poisoned[1234] = bad
    with pytest.raises(DetectError, match="NaN or Inf"):
        det.process(poisoned)
    for k, v in det.get_state().items():
        np.testing.assert_array_equal(v, state[k])
    det.process(x[3000:])
    det.flush()
    probs = det.probs
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_array_equal(probs, _twin_run(files, [x[:3000], x[3000:]]))


def _wrong_states(model: CRNN) -> dict[str, dict]:
    good = model.init_state()
    return {
        "wider GRU": {**good, "gru_h0": torch.zeros(1, model.config.hidden + 1)},
        "fewer mel frames": {**good, "mel_tail": good["mel_tail"][..., 1:]},
        "shorter audio tail": {**good, "audio_tail": good["audio_tail"][:, 1:]},
        "batch of two": {**good, "gru_h0": torch.zeros(2, model.config.hidden)},
        "missing state": {k: v for k, v in good.items() if k != "gru_h0"},
    }


@pytest.mark.parametrize("what", ["wider GRU", "fewer mel frames", "shorter audio tail", "batch of two", "missing state"])
def test_pytorch_step_refuses_a_wrong_state(what):
    torch.manual_seed(0)
    model = CRNN(TINY).eval()
    bad = _wrong_states(model)[what]
    chunk = torch.from_numpy(tone(0.08))[None]
    with pytest.raises(KWSError) as err:
        model.step(chunk, bad)
    assert "\n" not in str(err.value) and re.search(r"gru_h0|mel_tail|audio_tail|state", str(err.value))


@pytest.mark.parametrize("what", ["wider GRU", "fewer mel frames", "shorter audio tail", "batch of two", "missing state"])
def test_torchscript_step_refuses_a_wrong_state(what, tmp_path):
    """The scripted step checks its state (and chunk) like the eager one, in the same words.
    A scripted ``raise`` reaches Python with TorchScript's interpreter traceback before the
    message, so kws_export's ``checked_step`` (what verify runs) raises the message alone:
    one line naming the state.  Raw ``step`` ends with that same line."""
    from kws_export.export_torchscript import checked_step, export_torchscript, interpreter_message, load_torchscript

    torch.manual_seed(0)
    model = CRNN(TINY).eval()
    export_torchscript(model, tmp_path / "m.stream.ts", streaming_mode=True)
    scripted = load_torchscript(tmp_path / "m.stream.ts")  # as a user gets it: from the file
    chunk = torch.from_numpy(tone(0.08))[None]
    bad = _wrong_states(model)[what]
    with pytest.raises(KWSError) as eager:
        model.step(chunk, bad)
    with pytest.raises(KWSError) as err:
        checked_step(scripted, chunk, bad)
    message = str(err.value)
    first = message.strip().splitlines()[0]
    assert "\n" not in message and message == str(eager.value)
    assert re.search(r"gru_h0|mel_tail|audio_tail", first)
    if what == "wider GRU":
        assert "gru_h0" in first
    with pytest.raises(torch.jit.Error) as raw:
        scripted.step(chunk, bad)
    assert str(raw.value).strip().splitlines()[-1].endswith(message) and interpreter_message(raw.value) == message
    with pytest.raises(KWSError, match=r"a streaming chunk must be \(batch, k \* 1280\) samples, got \(1, 100\)"):
        checked_step(scripted, chunk[:, :100], model.init_state())
    p, _ = checked_step(scripted, chunk, model.init_state())
    torch.testing.assert_close(p, model.step(chunk, model.init_state())[0].detach(), rtol=0, atol=1e-6)


def test_pytorch_step_leaves_the_callers_state_untouched():
    """step is functional: a failed or poisoned call cannot corrupt the state the caller holds."""
    torch.manual_seed(0)
    model = CRNN(TINY).eval()
    state = model.init_state()
    copy = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        model.step(torch.full((1, 1280), float("nan")), state)
        model.step(torch.from_numpy(tone(0.08))[None], state)
    for k in state:
        torch.testing.assert_close(state[k], copy[k], rtol=0, atol=0)


# Unusual but valid input ----------------------------------------------------------------------------
# name: (rate, channels, soundfile subtype, seconds)
FORMATS = {
    "stereo-16k-pcm16": (16000, 2, "PCM_16", 1.3),
    "mono-44k1-pcm16": (44100, 1, "PCM_16", 1.3),
    "stereo-48k-pcm24": (48000, 2, "PCM_24", 1.3),
    "mono-8k-pcm8": (8000, 1, "PCM_U8", 1.3),
    "mono-16k-pcm24": (16000, 1, "PCM_24", 1.3),
    "mono-16k-pcm32": (16000, 1, "PCM_32", 1.3),
    "mono-16k-float32": (16000, 1, "FLOAT", 1.3),
    "stereo-22k05-float64": (22050, 2, "DOUBLE", 1.3),
    "short-16k-pcm16": (16000, 1, "PCM_16", 0.03),   # 480 samples: less than one 1280-sample chunk
    "short-44k1-float32": (44100, 1, "FLOAT", 0.01),  # 441 samples
}


MASTER_RATE = 48000


def master(seconds: float) -> np.ndarray:
    """Tones over a -40 dBFS white noise floor at 48 kHz: like a recording, every band holds
    some energy (a noiseless tone leaves bands 150 dB down, where two float32 log-mels differ)."""
    rng = np.random.default_rng(1)
    n = int(round(seconds * MASTER_RATE))
    return tone(seconds, MASTER_RATE) + (0.01 * rng.standard_normal(n)).astype(np.float32)


def write_format(path: Path, name: str) -> tuple[Path, np.ndarray]:
    """The master signal in format ``name``; returns the path and the same information at
    16 kHz mono (stereo: left = x, right = x / 2, so the mono mix is 0.75 x; from 8 kHz the
    band above 4 kHz is empty)."""
    from kws_export.audio import resample

    rate, channels, subtype, seconds = FORMATS[name]
    x = resample(master(seconds), MASTER_RATE, rate)
    data = np.stack([x, 0.5 * x], axis=1) if channels == 2 else x
    sf.write(path, data, rate, subtype=subtype)
    low = min(rate, RATE)
    x16 = resample(resample(master(seconds), MASTER_RATE, low), low, RATE)
    return path, x16 * (0.75 if channels == 2 else 1.0)


def api_probs(files, x: np.ndarray) -> np.ndarray:
    return _twin_run(files, [np.asarray(x, np.float32)])


def cli_probs(r: Result) -> np.ndarray:
    assert r.returncode == 0, r
    events = [json.loads(line) for line in r.stdout.splitlines()]
    probs = np.array([e["prob"] for e in events])
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    return probs


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_detect_reads_every_wav_flavour(run, files, tmp_path, name):
    path, x16 = write_format(tmp_path / f"{name}.wav", name)
    rate, channels, subtype, seconds = FORMATS[name]
    r = run("detect.py", "--model", files["stream"], path, "--json", "--threshold", "0", "--refractory-ms", "0",
            cwd=tmp_path)
    assert r.stderr == "", r
    probs = cli_probs(r)
    assert len(probs) == -(-len(x16) // 1280)  # every step, the last one padded with silence
    decoded = sf.read(path, dtype="float64", always_2d=True)[0].mean(axis=1)
    if rate != RATE:  # the file read in blocks and resampled on the fly = resampled at once
        from runtime.detect import Resampler

        resampler = Resampler(rate, RATE)
        decoded = np.concatenate([resampler.process(decoded), resampler.flush()])
    np.testing.assert_allclose(probs, api_probs(files, decoded), atol=2e-6)
    # ... and the format changes the result no more than its quantization and band limit do
    # (from 8 kHz the empty 4-8 kHz band holds only each resampler's stopband residue, which
    # the log-mel magnifies: compared loosely).
    np.testing.assert_allclose(probs, api_probs(files, x16), atol=0.15 if rate < RATE else 0.03)


def test_detect_stdin_that_ends_mid_chunk_and_mid_sample(run, files, tmp_path):
    x = (tone(0.2) * 32767).astype("<i2")  # 3200 samples: 2.5 chunks
    raw = tmp_path / "raw.s16"
    raw.write_bytes(x.tobytes() + b"\x01")  # and half a sample
    r = run("detect.py", "--model", files["stream"], "-", "--json", "--threshold", "0", "--refractory-ms", "0",
            stdin=raw, cwd=tmp_path)
    assert r.stderr == "detect.py: warning: stdin ended with half a 16-bit sample; dropped it\n", r
    probs = cli_probs(r)
    assert len(probs) == 3
    np.testing.assert_allclose(probs, api_probs(files, x / 32768.0), atol=2e-6)


def test_detect_audio_that_clips(run, files, tmp_path):
    """Full-scale integer samples are fine; float samples beyond full scale are clipped to
    [-1, 1] as kws_export.audio.read_wav does for training and export."""
    t = np.arange(16000) / RATE
    square = np.sign(np.sin(2 * np.pi * 440 * t))
    sf.write(tmp_path / "full.wav", square, RATE, subtype="PCM_16")  # -32768 ... 32767
    sf.write(tmp_path / "over.wav", 1.5 * square, RATE, subtype="FLOAT")
    got = {}
    for name in ("full", "over"):
        r = run("detect.py", "--model", files["stream"], tmp_path / f"{name}.wav", "--json", "--threshold", "0",
                "--refractory-ms", "0", cwd=tmp_path)
        assert r.stderr == "", r
        got[name] = cli_probs(r)
    decoded, _ = sf.read(tmp_path / "full.wav", dtype="float64")
    np.testing.assert_allclose(got["full"], api_probs(files, decoded), atol=2e-6)
    np.testing.assert_allclose(got["over"], api_probs(files, np.clip(1.5 * square, -1, 1)), atol=2e-6)


@pytest.fixture(scope="module")
def flavours(tmp_path_factory):
    d = tmp_path_factory.mktemp("flavours")
    paths = [write_format(d / f"{name}.wav", name)[0] for name in sorted(FORMATS)]
    t = np.arange(8000) / RATE
    sf.write(d / "clipping.wav", 1.5 * np.sign(np.sin(2 * np.pi * 440 * t)), RATE, subtype="FLOAT")
    return paths + [d / "clipping.wav"]


# 8-bit audio at 8 kHz, resampled, leaves the mel bands above 4 kHz at float32's rounding
# floor of the loud band below, where PyTorch's FFT and the graph's DFT compute different
# noise: the random-weight model's fp32 parity there is 1.25e-5 on an AVX2-only CPU (AMD
# EPYC), under 1e-5 on others.  verify must read it and measure it; the 1e-5 fp32 target
# is held on every full-band flavour.
BAND_LIMITED = "mono-8k-pcm8.wav"


def test_export_verify_and_calibrate_on_every_wav_flavour(run, files, flavours, tmp_path):
    full_band = [p for p in flavours if p.name != BAND_LIMITED]
    wavs = [a for p in full_band for a in ("--wav", p)]
    r = run("kws-export", "verify", "--ckpt", files["ckpt"], "--onnx", files["stream"], "--only", *wavs, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r
    report = json.loads(r.stdout)
    assert report["ok"] and report["audio"] == [str(p) for p in full_band]
    (narrow,) = [p for p in flavours if p.name == BAND_LIMITED]
    r = run("kws-export", "verify", "--ckpt", files["ckpt"], "--onnx", files["stream"], "--only", "--wav", narrow,
            cwd=tmp_path)
    assert r.returncode in (0, 1) and r.stderr == "", r  # 1: a parity figure above 1e-5, reported
    (pair,) = json.loads(r.stdout)["pairs"]
    assert pair["max_abs_diff"] <= 5e-5 and pair["ok"] == (pair["max_abs_diff"] <= 1e-5)
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in flavours:
        if not p.name.startswith("short"):
            shutil.copy(p, calib / p.name)
    r = run("kws-export", "onnx", "--ckpt", files["ckpt"], "--streaming", "--int8", "--calib", calib,
            "-o", tmp_path / "m.int8.onnx", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r
    valid_output(tmp_path / "m.int8.onnx")


def test_export_calibrates_with_a_clip_shorter_than_a_step(run, files, flavours, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in flavours:
        if p.name.startswith(("short-16k", "mono-16k-pcm24")):
            shutil.copy(p, calib / p.name)
    r = run("kws-export", "onnx", "--ckpt", files["ckpt"], "--streaming", "--int8", "--calib", calib,
            "-o", tmp_path / "m.int8.onnx", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r
    valid_output(tmp_path / "m.int8.onnx")


def test_train_eval_on_a_corpus_of_every_wav_flavour(run, files, corpus, flavours, tmp_path):
    """Test-split clips replaced by other rates, widths, channel counts, short and clipping
    clips: the corpus still loads (resampled, mixed to mono, padded) and evaluates."""
    root = tmp_path / "corpus"
    shutil.copytree(corpus, root, copy_function=os.link)
    victims = [l for l in (root / "testing_list.txt").read_text().split()][: len(flavours)]
    for victim, flavour in zip(victims, flavours):
        (root / victim).unlink()
        shutil.copy(flavour, root / victim)
    r = run("kws-train", "eval", "--ckpt", files["ckpt"], "--data", root, "--threshold", "0.5", "--stream-minutes",
            "0.05", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r
    result = json.loads(r.stdout)
    assert result["keyword"] == "sheila" and 0.0 <= result["au_fa_fr"] <= 1.0
