"""Peak resident memory of ``runtime/detect.py`` on a long file, and where it comes from.

The peak is the child's own ``ru_maxrss`` from ``os.wait4`` (``RUSAGE_CHILDREN`` would be
the maximum over every child this process ever waited for), spawned by a small helper
interpreter (see ``_SPAWN``).  The stage breakdown runs the
same code as ``detect.py``'s command line in a fresh interpreter and reads ``VmRSS`` /
``VmHWM`` / ``RssAnon`` / ``RssFile`` from /proc/self/status after each stage: interpreter,
numpy, onnxruntime, the session, the file.  ``RssFile`` is mapped files (shared libraries)
whose pages other processes share; ``RssAnon`` is this process's own memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kws_export.errors import KWSError

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def child_env() -> dict:
    return {**os.environ, **SINGLE_THREAD_ENV}


# Linux carries a process's peak RSS across exec (the peak of the memory it replaced), so
# a child spawned straight from this process (torch loaded: hundreds of MB) would report
# this process's size.  A small fresh interpreter spawns the command instead and reports
# the command's own wait4 rusage; its ~10 MB is then the floor, below anything measured.
_SPAWN = r"""
import json, os, sys
devnull = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=devnull)
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss,
                  "cpu_s": usage.ru_utime + usage.ru_stime}))
"""


def run_measured(cmd: list[str], timeout_s: float = 600.0) -> dict:
    """Run ``cmd`` (stdout discarded); its exit code, peak RSS (bytes), CPU seconds
    (user + system) and stderr."""
    r = subprocess.run([sys.executable, "-c", _SPAWN, *cmd], capture_output=True, text=True,
                       env=child_env(), timeout=timeout_s)
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise KWSError(f"could not measure {' '.join(cmd[:2])} ({(r.stderr.strip().splitlines() or ['no output'])[-1]})") from None
    return {"returncode": out["returncode"], "peak_rss_bytes": out["maxrss_kib"] * 1024, "cpu_s": out["cpu_s"],
            "stderr": r.stderr.strip()}


def detect_peak_rss(detect_py: Path, model: Path, wav: Path) -> dict:
    out = run_measured([sys.executable, str(detect_py), "--model", str(model), str(wav)])
    if out["returncode"] != 0:
        last = (out["stderr"].splitlines() or ["no message"])[-1]
        raise KWSError(f"{model}: detect.py failed on {wav} (exit {out['returncode']}: {last})")
    return out


# Stage breakdown ----------------------------------------------------------------------------------
_STAGES = r"""
import json, sys, io, contextlib

def mem():
    vals = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                vals[key] = int(rest.split()[0]) * 1024
    return vals

detect_py, model, wav = sys.argv[1:4]
stages = [("interpreter", mem())]
import numpy
stages.append(("import numpy", mem()))
import onnxruntime
stages.append(("import onnxruntime", mem()))
import importlib.util
spec = importlib.util.spec_from_file_location("detect", detect_py)
detect = importlib.util.module_from_spec(spec)
spec.loader.exec_module(detect)
stages.append(("import detect.py", mem()))
det = detect.Detector(model, keep_history=False)
stages.append(("first session (Detector)", mem()))
reader = detect.WavReader(wav)
for block in detect.wav_source(reader, det.sample_rate):
    det.process(block)
det.flush()
reader.close()
stages.append(("process the file", mem()))
print(json.dumps(stages))
"""


def rss_stages(detect_py: Path, model: Path, wav: Path) -> list[dict]:
    """[{stage, rss_bytes, peak_bytes, added_bytes}] in the order detect.py goes through them."""
    r = subprocess.run([sys.executable, "-c", _STAGES, str(detect_py), str(model), str(wav)],
                       capture_output=True, text=True, env=child_env(), timeout=600)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise KWSError(f"{model}: memory stage run failed ({last})")
    out, before = [], 0
    for stage, vals in json.loads(r.stdout.strip().splitlines()[-1]):
        out.append({"stage": stage, "rss_bytes": vals["VmRSS"], "peak_bytes": vals["VmHWM"],
                    "added_bytes": vals["VmHWM"] - before, "anon_bytes": vals.get("RssAnon", 0),
                    "file_bytes": vals.get("RssFile", 0)})
        before = vals["VmHWM"]
    return out
