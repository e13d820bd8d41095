#!/usr/bin/env python3
"""`make pi-check`: runtime/detect.py on an emulated Raspberry Pi 4 and Pi 5 against x86-64.

Builds (once, cached under .cache/pi/) an arm64 Debian Bookworm userland -- the Python 3.11
and glibc of 64-bit Raspberry Pi OS Bookworm -- with `mmdebstrap --variant=extract` (it only
unpacks .debs: no package scripts, no chroot, no binfmt registration), fetches the aarch64
wheels of this venv's numpy and onnxruntime into a folder beside it with the x86 pip
(PYTHONPATH of the emulated process only), and runs
runtime/detect.py under QEMU user-mode emulation of the Pi's own cores (Cortex-A72 for a
Pi 4, Cortex-A76 for a Pi 5), with a /proc/cpuinfo and /sys/devices/system/cpu describing
that board (onnxruntime's cpuinfo reads them; the x86 host's make it crash at import).

Every exported/*.stream*.onnx runs on real audio (../shared/real when present), on
synthesized speech, on a 44.1 kHz stereo file (the resampler) and on raw s16le PCM on
stdin, once natively and once per board; the per-step probabilities (`detect.py --probs`)
and the detections (`--json`) are compared.  Each embedding export also runs as the
two-stage verifier (`--verifier`) of the smallest export of its keyword, on the stdin cut,
with trigger and verifier threshold 0 so that the replay runs and yields a detection every
refractory period: the detections' times and verifier probabilities are compared.  Tolerance from each file's kws.quantization
metadata: float32 activations (fp32, int8-weights) |dprob| <= 1e-5, static int8 <= 5e-3;
detections must be identical everywhere.  Prints a table; exit 1 on any mismatch.

Where the tools cannot be had (no apt-get / root, no network) it prints one line starting
with "pi-check: skipped" and exits 0 (exit 1 with --strict).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import glob
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DETECT = REPO / "runtime" / "detect.py"
SUITE = "bookworm"  # Raspberry Pi OS Bookworm: Debian 12, Python 3.11, glibc 2.36
GUEST_PYTHON = "python3.11"
ROOT_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DONE = ".pi-check-complete"  # written last into a cache entry, naming what it holds: complete and current

FLOAT_TOL = 1e-5  # float32 arithmetic: fp32 and int8-weights files
# Quantized activations: ARM's and x86's integer kernels round a few activations to the
# neighbouring uint8 level.  With uint8 weights (the U8U8 export) the seminar teacher moves
# by 2.9e-3 (6.7e-4 with the int8 weights of before, which saturate on AVX2-only x86), inside
# the 0.02 every int8 file is held to against its float model; detections stay identical.
STATIC_INT8_TOL = 5e-3


class Skip(Exception):
    """The check cannot run on this machine (tools, network): one line, not a failure."""


# Boards ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Board:
    key: str
    name: str
    qemu_cpu: str
    model: str  # /proc/cpuinfo "Model"
    revision: str  # board revision code
    features: str  # /proc/cpuinfo "Features" (the kernel's, from the core's ID registers)
    variant: int
    part: int
    revision_r: int
    max_khz: int
    min_khz: int
    caches: tuple  # (level, type, size KB, ways, shared by all cores)
    cores: int = 4

    @property
    def midr(self) -> int:
        return (0x41 << 24) | (self.variant << 20) | (0xF << 16) | (self.part << 4) | self.revision_r


BOARDS = (
    # BCM2711: 4 x Cortex-A72 r0p3 (no crypto extension), 32 KB L1d, 48 KB L1i, 1 MB shared L2.
    Board("pi4", "Pi 4", "cortex-a72", "Raspberry Pi 4 Model B Rev 1.4", "c03114",
          "fp asimd evtstrm crc32 cpuid", 0x0, 0xD08, 3, 1800000, 600000,
          ((1, "Data", 32, 2, False), (1, "Instruction", 48, 3, False), (2, "Unified", 1024, 16, True))),
    # BCM2712: 4 x Cortex-A76 r4p1, 64 KB L1d / L1i, 512 KB L2 per core, 2 MB shared L3.
    Board("pi5", "Pi 5", "cortex-a76", "Raspberry Pi 5 Model B Rev 1.0", "c04170",
          "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
          0x4, 0xD0B, 1, 2400000, 1500000,
          ((1, "Data", 64, 4, False), (1, "Instruction", 64, 4, False), (2, "Unified", 512, 8, False),
           (3, "Unified", 2048, 16, True))),
)


def cpuinfo_text(board: Board) -> str:
    block = (
        "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: {v:#x}\nCPU part\t: {p:#x}\nCPU revision\t: {r}\n\n"
    )
    text = "".join(block.format(i=i, f=board.features, v=board.variant, p=board.part, r=board.revision_r)
                   for i in range(board.cores))
    return text + f"Revision\t: {board.revision}\nSerial\t\t: 100000000000c0de\nModel\t\t: {board.model}\n"


def sys_cpu_files(board: Board) -> dict[str, str]:
    """Relative path under sys/devices/system/cpu -> contents, as a Pi's kernel shows them."""
    n = board.cores
    every = f"0-{n - 1}"
    files = {"kernel_max": f"{n - 1}\n", "possible": f"{every}\n", "present": f"{every}\n", "online": f"{every}\n"}
    for c in range(n):
        d = f"cpu{c}"
        files[f"{d}/online"] = "1\n"
        files[f"{d}/cpufreq/cpuinfo_max_freq"] = f"{board.max_khz}\n"
        files[f"{d}/cpufreq/cpuinfo_min_freq"] = f"{board.min_khz}\n"
        files[f"{d}/regs/identification/midr_el1"] = f"0x{board.midr:016x}\n"
        topology = {"physical_package_id": "0", "cluster_id": "0", "core_id": str(c), "core_siblings_list": every,
                    "package_cpus_list": every, "cluster_cpus_list": every, "thread_siblings_list": str(c),
                    "core_cpus_list": str(c)}
        for name, value in topology.items():
            files[f"{d}/topology/{name}"] = value + "\n"
        for index, (level, kind, kb, ways, shared) in enumerate(board.caches):
            cache = {"level": str(level), "type": kind, "size": f"{kb}K", "ways_of_associativity": str(ways),
                     "coherency_line_size": "64", "number_of_sets": str(kb * 1024 // (64 * ways)),
                     "shared_cpu_list": every if shared else str(c)}
            for name, value in cache.items():
                files[f"{d}/cache/index{index}/{name}"] = value + "\n"
    return files


# Tolerances ------------------------------------------------------------------------------------
def quantization_kind(metadata: dict[str, str]) -> str:
    """'fp32', 'int8-weights' or 'static-int8' from a streaming export's kws.quantization
    (docs/export.md): absent = float32; activations left float32 = weights-only int8."""
    raw = metadata.get("kws.quantization")
    if raw is None:
        return "fp32"
    try:
        q = json.loads(raw)
    except ValueError:
        q = raw
    if isinstance(q, dict):
        activations = str(q.get("activations", ""))
        if activations.startswith("float32") or (not activations and q.get("format") == "int8 weights"):
            return "int8-weights"
    return "static-int8"  # quantized activations, or a description this script does not know: the looser bound


def tolerance(kind: str) -> float:
    return STATIC_INT8_TOL if kind == "static-int8" else FLOAT_TOL


def read_metadata(path: Path) -> dict[str, str]:
    import onnx  # the x86 venv's; the file is only parsed, not its external data

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


# Results and their comparison --------------------------------------------------------------------
@dataclasses.dataclass
class Track:
    """One input's output of one detect.py run."""
    times: list = dataclasses.field(default_factory=list)
    probs: list = dataclasses.field(default_factory=list)
    events: list = dataclasses.field(default_factory=list)  # (time, prob) from --json


def read_run(probs_csv: Path | None, stdout: str) -> dict[str, Track]:
    """detect.py's --probs CSV (None: a two-stage run, which has none) and --json lines -> {source: Track}."""
    tracks: dict[str, Track] = {}
    if probs_csv is None:
        for line in stdout.splitlines():
            event = json.loads(line)
            tracks.setdefault(event["source"], Track()).events.append((event["time"], event["prob"]))
        return tracks
    with open(probs_csv, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header[:4] != ["source", "step", "time", "prob"]:
            raise ValueError(f"{probs_csv}: unexpected header {header}")
        for row in reader:
            t = tracks.setdefault(row[0], Track())
            t.times.append(float(row[2]))
            t.probs.append(float(row[3]))
    for line in stdout.splitlines():
        event = json.loads(line)
        tracks.setdefault(event["source"], Track()).events.append((event["time"], event["prob"]))
    return tracks


@dataclasses.dataclass
class Comparison:
    steps: int = 0
    max_dprob: float = 0.0
    events_ref: int = 0
    events_got: int = 0
    problems: list = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def compare(ref: dict[str, Track], got: dict[str, Track], tol: float) -> Comparison:
    """Per-step probabilities within tol on every input, same step stamps, identical
    detections (times; their probabilities within tol)."""
    c = Comparison()
    for source in sorted(set(ref) | set(got)):
        name = os.path.basename(source) if source != "-" else "stdin"
        if source not in got or source not in ref:
            c.problems.append(f"{name}: only in the {'x86' if source in ref else 'emulated'} run")
            continue
        r, g = ref[source], got[source]
        c.steps += len(r.probs)
        c.events_ref += len(r.events)
        c.events_got += len(g.events)
        if len(r.probs) != len(g.probs) or r.times != g.times:
            c.problems.append(f"{name}: {len(g.probs)} steps, x86 {len(r.probs)} (or different step times)")
            continue
        d = max((abs(a - b) if math.isfinite(b) else math.inf for a, b in zip(r.probs, g.probs)), default=0.0)
        c.max_dprob = max(c.max_dprob, d)
        if not d <= tol:
            c.problems.append(f"{name}: max |dprob| {d:.3g} > {tol:g}")
        if [t for t, _ in r.events] != [t for t, _ in g.events]:
            c.problems.append(f"{name}: detections at {[t for t, _ in g.events]} s, x86 {[t for t, _ in r.events]} s")
            continue
        de = max((abs(a - b) for (_, a), (_, b) in zip(r.events, g.events)), default=0.0)
        if not r.probs:  # a two-stage run: its detections' (verifier) probabilities are all there is
            c.max_dprob = max(c.max_dprob, de)
        if not de <= tol + 1e-6:  # --json rounds to 1e-6
            c.problems.append(f"{name}: detection probabilities differ by more than {tol:g}")
    return c


def result_row(model: str, kind: str, board: str, ref: dict, got, err, seconds: float) -> tuple[dict, list]:
    """One table row and its problems from an emulated run (``got`` None when it failed)."""
    tol = tolerance(kind)
    events_ref = sum(len(t.events) for t in ref.values())
    if got is None:
        c = Comparison(problems=[f"emulated run failed: {err}"])
        events = f"-/{events_ref}"
    else:
        c = compare(ref, got, tol)
        events = f"{c.events_got}/{events_ref}"
    row = {"model": model, "kind": kind, "board": board, "steps": c.steps or sum(len(t.probs) for t in ref.values()),
           "max_dprob": c.max_dprob, "tol": tol, "events": events, "seconds": seconds, "ok": c.ok}
    return row, c.problems


def format_table(rows: list[dict]) -> str:
    """rows: model, kind, board, steps, max_dprob, tol, events ('n/m'), seconds, ok -> aligned text."""
    head = ["model", "quantization", "board", "steps", "max |dprob|", "tolerance", "detections (emulated/x86)", "run", "result"]
    body = [[r["model"], r["kind"], r["board"], str(r["steps"]) if r["steps"] else "-", f"{r['max_dprob']:.2g}", f"{r['tol']:g}",
             r["events"], f"{r['seconds']:.1f} s", "ok" if r["ok"] else "MISMATCH"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def exit_code(rows: list[dict]) -> int:
    return 0 if rows and all(r["ok"] for r in rows) else 1


# Setting up (cached) -------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(f"pi-check: {msg}", flush=True)


def apt_mirror(sources_dir: str = "/etc/apt") -> str:
    """The Debian archive apt already uses (deb822 .sources or one-line sources.list)."""
    texts = []
    for path in [os.path.join(sources_dir, "sources.list"), *sorted(glob.glob(os.path.join(sources_dir, "sources.list.d", "*")))]:
        if path.endswith((".list", ".sources")) and os.path.isfile(path):
            try:
                texts.append(Path(path).read_text(errors="replace"))
            except OSError:
                pass
    uris = []
    for text in texts:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"URIs:\s*(.+)", line, re.I)
            if m:
                uris += m.group(1).split()
            m = re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", line)
            if m:
                uris.append(m.group(1))
    for uri in uris:
        if re.search(r"/debian/?$", uri) and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def _sudo() -> list[str] | None:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo"]
    return None


def ensure_tools() -> tuple[str, str]:
    if platform.machine() not in ("x86_64", "AMD64"):
        raise Skip(f"pi-check: skipped: this host is {platform.machine()}, not x86-64 (on a Pi run detect.py itself)")
    need = {"qemu-aarch64-static": "qemu-user-static", "mmdebstrap": "mmdebstrap"}
    missing = sorted({pkg for tool, pkg in need.items() if not shutil.which(tool)})
    if missing:
        hint = f"install them with: sudo apt-get install {' '.join(missing)}"
        sudo = _sudo()
        if sudo is None or not shutil.which("apt-get"):
            raise Skip(f"pi-check: skipped: Debian packages {' and '.join(missing)} are missing and cannot be installed here ({hint})")
        _log(f"installing Debian packages {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = sudo + ["apt-get", "install", "-y", "-qq", *missing]
        if subprocess.run(install, capture_output=True, env=env).returncode != 0:
            subprocess.run(sudo + ["apt-get", "update", "-qq"], capture_output=True, env=env)
            subprocess.run(install, capture_output=True, env=env)
        if any(not shutil.which(tool) for tool in need):
            raise Skip(f"pi-check: skipped: could not install {' '.join(missing)} ({hint})")
    return shutil.which("qemu-aarch64-static"), shutil.which("mmdebstrap")


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def ensure_rootfs(cache: Path, mmdebstrap: str, mirror: str) -> Path:
    root = cache / f"rootfs-{SUITE}-arm64"
    what = f"{SUITE} arm64 {','.join(ROOT_PACKAGES)}\n"
    if _complete(root, what):
        return root
    partial = cache / f"{root.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    cmd = [mmdebstrap, "--quiet", "--variant=extract", "--arch=arm64", f"--include={','.join(ROOT_PACKAGES)}",
           SUITE, str(partial), mirror]
    _log(f"building the arm64 {SUITE} userland from {mirror} (once)")
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not (partial / "usr" / "bin" / GUEST_PYTHON).exists():
        shutil.rmtree(partial, ignore_errors=True)
        errors = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.startswith("E:") and "mmdebstrap failed to run" not in ln]
        reason = re.sub(r" -o\S+", "", errors[0])[:200] if errors else _last_line(r.stderr + r.stdout)
        raise Skip(f"pi-check: skipped: mmdebstrap could not build the arm64 userland from {mirror} ({reason})")
    (partial / DONE).write_text(what)
    partial.rename(root)
    _log(f"  {time.monotonic() - t0:.0f} s, {_du(root)} MB")
    return root


def ensure_site(cache: Path, numpy_version: str, ort_version: str) -> Path:
    site = cache / f"site-cp311-aarch64-numpy{numpy_version}-onnxruntime{ort_version}"
    what = f"numpy=={numpy_version} onnxruntime=={ort_version} cp311 {' '.join(WHEEL_PLATFORMS)}\n"
    if _complete(site, what):
        return site
    partial = cache / f"{site.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(site, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-warn-script-location",
           "--target", str(partial), "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
           "--abi", "cp311"]
    for plat in WHEEL_PLATFORMS:
        cmd += ["--platform", plat]
    cmd += [f"numpy=={numpy_version}", f"onnxruntime=={ort_version}"]
    _log(f"downloading the aarch64 wheels of numpy {numpy_version} and onnxruntime {ort_version} (once)")
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        errors = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.startswith("ERROR")]
        raise Skip(f"pi-check: skipped: pip could not fetch the aarch64 wheels ({(errors or [_last_line(r.stderr)])[0][:200]})")
    (partial / DONE).write_text(what)
    partial.rename(site)
    _log(f"  {time.monotonic() - t0:.0f} s, {_du(site)} MB")
    return site


def _complete(entry: Path, what: str) -> bool:
    try:
        return (entry / DONE).read_text() == what
    except OSError:
        return False


def _du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return round(total / 1e6)


def make_board_root(cache: Path, root: Path, board: Board) -> Path:
    """QEMU's -L prefix for one board: the userland's top-level entries as symlinks, plus
    the board's own proc/cpuinfo and sys/devices/system/cpu (QEMU looks a guest path up
    under the prefix first).  Rebuilt on every run: it is a few dozen small files."""
    prefix = cache / f"board-{board.key}"
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    for entry in sorted(os.listdir(root)):
        if entry not in ("proc", "sys", DONE):
            os.symlink(os.path.relpath(root / entry, prefix), prefix / entry)
    (prefix / "proc").mkdir()
    (prefix / "proc" / "cpuinfo").write_text(cpuinfo_text(board))
    for rel, text in sys_cpu_files(board).items():
        p = prefix / "sys" / "devices" / "system" / "cpu" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return prefix


# Inputs ----------------------------------------------------------------------------------------------
REAL_CLIPS = (("speech_commands_test_v0.02/sheila", 3), ("wake_phrases/alexa", 2), ("speech_commands_test_v0.02/marvin", 1),
              ("speech_commands_test_v0.02/yes", 1), ("speech_commands_test_v0.02/no", 1))


def real_audio(real_dir: Path, rate: int = 16000):
    """A few clips of the real dev set (FLAC) glued with 0.4 s of silence, or None when it
    is absent (users' clones).  The first clips of each folder, sorted: deterministic."""
    if not real_dir.is_dir():
        return None
    import numpy as np
    import soundfile as sf

    gap = np.zeros(int(0.4 * rate), np.float32)
    parts = [gap]
    for sub, count in REAL_CLIPS:
        for path in sorted((real_dir / sub).glob("*.flac"))[:count]:
            x, sr = sf.read(str(path), dtype="float32", always_2d=True)
            if sr == rate and len(x):
                parts += [x.mean(axis=1), gap]
    return np.concatenate(parts) if len(parts) > 1 else None


def synthetic_audio(tmp: Path):
    """The demo recording (training/demo_stream.py: synthesized sentences and the keyword,
    ~16 s), or, without a speech synthesizer, deterministic noise bursts."""
    import numpy as np
    import soundfile as sf

    r = subprocess.run([sys.executable, "-m", "training.demo_stream", "--out", str(tmp), "--seed", "0"],
                       cwd=REPO, capture_output=True, text=True)
    if r.returncode == 0 and tmp.is_file():
        x, _ = sf.read(str(tmp), dtype="float32")
        return x, "synthesized speech (training/demo_stream.py)"
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10 * 16000) * 0.01
    for start in (1.0, 4.5, 7.0):
        a = int(start * 16000)
        x[a:a + 8000] += np.sin(np.arange(8000) * 2 * np.pi * 440 / 16000) * rng.uniform(0.2, 0.5, 8000)
    return x.astype(np.float32), f"noise bursts (no speech synthesizer: {_last_line(r.stderr)})"


def make_inputs(cache: Path, real_dir: Path) -> tuple[list[tuple[Path, str]], bytes, str]:
    """(wav inputs with a description, raw s16le stdin payload, its description), all
    regenerated in cache/audio on every run (they are cheap and deterministic)."""
    import numpy as np
    import soundfile as sf

    sys.path.insert(0, str(REPO))
    from runtime.detect import Resampler

    audio = cache / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    inputs = []
    real = real_audio(real_dir)
    if real is not None:
        sf.write(str(audio / "real.wav"), real, 16000, subtype="PCM_16")
        inputs.append((audio / "real.wav", f"real speech, {len(real) / 16000:.1f} s (../shared/real clips)"))
    synth, what = synthetic_audio(audio / "synth.wav")
    sf.write(str(audio / "synth.wav"), synth, 16000, subtype="PCM_16")
    inputs.append((audio / "synth.wav", f"{what}, {len(synth) / 16000:.1f} s"))
    # the resampling path and channel averaging: 44.1 kHz stereo, the channels differ
    rs = Resampler(16000, 44100)
    up = np.concatenate([rs.process(synth), rs.flush()])
    stereo = np.stack([up, 0.5 * up + 0.002 * np.sin(np.arange(len(up)) * 0.01)], axis=1)
    sf.write(str(audio / "synth-44k1-stereo.wav"), np.clip(stereo, -1, 1), 44100, subtype="PCM_16")
    inputs.append((audio / "synth-44k1-stereo.wav", "the same at 44.1 kHz stereo 16-bit (resampled to 16 kHz, channels averaged)"))
    pcm_src = real if real is not None else synth
    pcm = (np.clip(pcm_src, -1, 1) * 32767).astype("<i2").tobytes()
    return inputs, pcm, f"raw s16le PCM of the {'real' if real is not None else 'synthesized'} audio on stdin (-)"


# The speech-embedding export costs 0.55 GMAC per second of audio, about 0.55 s of emulated CPU per
# 80 ms step (7.5 min per board on the full inputs): it runs on a short cut of the same inputs,
# the resampling and stdin paths included.
HEAVY_ARCHS = ("embedding",)
SHORT_WAV_S, SHORT_PCM_S = 3.0, 2.0


def short_inputs(cache: Path, wavs: list[Path], pcm: bytes) -> tuple[list[Path], bytes]:
    """The 44.1 kHz stereo input (else the first) cut to SHORT_WAV_S, the stdin payload to SHORT_PCM_S."""
    import soundfile as sf

    cut = pcm[: int(SHORT_PCM_S * 16000) * 2]
    if not wavs:
        return [], cut
    src = next((p for p in wavs if p.name.startswith("synth-44k1")), wavs[0])
    x, rate = sf.read(str(src), dtype="float32")
    out = cache / "audio" / f"short-{src.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), x[: int(SHORT_WAV_S * rate)], rate, subtype="PCM_16")
    return [out], cut


def two_stage_pairs(metas: dict[Path, dict[str, str]]) -> list[tuple[Path, Path]]:
    """(verifier, first stage) for each embedding export: the smallest other export of its keyword."""
    pairs = []
    for verifier, meta in metas.items():
        if meta.get("kws.arch") not in HEAVY_ARCHS:
            continue
        firsts = [m for m, mm in metas.items() if mm.get("kws.arch") not in HEAVY_ARCHS
                  and mm.get("kws.keyword") == meta.get("kws.keyword")]
        if firsts:
            pairs.append((verifier, min(firsts, key=lambda m: (m.stat().st_size, m.name))))
    return pairs


# Running -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Target:
    name: str  # "x86-64" or a board name
    argv: list  # the interpreter, before runtime/detect.py
    env: dict


def guest_env(site: Path) -> dict:
    """The environment for the emulated Python: PYTHONPATH = the aarch64 wheels, for that
    process only; nothing of the x86 venv's Python settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(site), PYTHONNOUSERSITE="1")
    return env


def run_detect(target: Target, model: Path, wavs: list[Path], pcm: bytes, out_csv: Path, timeout: float = 900,
               verifier: Path | None = None):
    """One detect.py process over all inputs (the wavs, then stdin) -> (tracks, error, seconds).
    With ``verifier``: the two-stage detector, every step a candidate and every verification a
    detection (trigger and verifier threshold 0), events only."""
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    if out_csv.exists():
        out_csv.unlink()
    if verifier is None:
        opts = ["--probs", str(out_csv)]
    else:
        opts = ["--verifier", str(verifier), "--trigger", "0", "--verifier-threshold", "0"]
    cmd = [*target.argv, str(DETECT), "--model", str(model), "--json", *opts, *map(str, wavs), "-"]
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, input=pcm, capture_output=True, env=target.env, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", time.monotonic() - t0
    seconds = time.monotonic() - t0
    stderr = r.stderr.decode(errors="replace")
    if r.returncode != 0:
        return None, f"exit {r.returncode}: {_last_line(stderr)}", seconds
    try:
        return read_run(None if verifier is not None else out_csv, r.stdout.decode()), None, seconds
    except (OSError, ValueError, KeyError, IndexError) as exc:
        return None, f"unreadable output ({exc})", seconds


GUEST_PROBE = ("import json, platform, sys, numpy, onnxruntime; print(json.dumps({'machine': platform.machine(), "
               "'python': platform.python_version(), 'numpy': numpy.__version__, 'onnxruntime': onnxruntime.__version__}))")


def probe_guest(target: Target) -> dict:
    r = subprocess.run([*target.argv, "-c", GUEST_PROBE], capture_output=True, text=True, env=target.env, timeout=600)
    if r.returncode != 0:
        return {"error": f"exit {r.returncode}: {_last_line(r.stderr)}"}
    return json.loads(r.stdout.splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="pi_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=str(REPO / ".cache" / "pi"), help="cache folder (default .cache/pi)")
    ap.add_argument("--models", default=str(REPO / "exported" / "*.stream*.onnx"), help="glob of streaming exports")
    ap.add_argument("--real", default=str(REPO.parent / "shared" / "real"), help="real dev set, used when present")
    ap.add_argument("--boards", default=",".join(b.key for b in BOARDS), help="pi4,pi5")
    ap.add_argument("--jobs", type=int, default=2, help="emulated runs at a time (default 2: one per board)")
    ap.add_argument("--strict", action="store_true", help="a skip (tools or downloads unavailable) is a failure, exit 1")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    cache = Path(args.cache)
    boards = [b for b in BOARDS if b.key in args.boards.split(",")]
    models = sorted(Path(p) for p in glob.glob(args.models))
    if not models:
        print(f"pi-check: error: no streaming exports match {args.models}", file=sys.stderr)
        return 1
    try:
        qemu, mmdebstrap = ensure_tools()
        cache.mkdir(parents=True, exist_ok=True)
        root = ensure_rootfs(cache, mmdebstrap, os.environ.get("PI_CHECK_MIRROR") or apt_mirror())
        versions = {"numpy": importlib.metadata.version("numpy"), "onnxruntime": importlib.metadata.version("onnxruntime")}
        site = ensure_site(cache, versions["numpy"], versions["onnxruntime"])
    except Skip as exc:
        print(str(exc), flush=True)
        return 1 if args.strict else 0
    t_setup = time.monotonic() - t_start

    inputs, pcm, pcm_what = make_inputs(cache, Path(args.real))
    wavs = [p for p, _ in inputs]
    _log("inputs, each its own stream:")
    for path, what in inputs:
        _log(f"  {path.name}: {what}")
    _log(f"  -: {pcm_what}")

    native = Target("x86-64", [sys.executable], {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    targets = []
    for board in boards:
        prefix = make_board_root(cache, root, board)
        target = Target(board.name, [qemu, "-cpu", board.qemu_cpu, "-L", str(prefix), str(prefix / "usr" / "bin" / GUEST_PYTHON)],
                        guest_env(site))
        info = probe_guest(target)
        want = {"machine": "aarch64", **versions}
        if any(info.get(k) != v for k, v in want.items()):
            print(f"pi-check: MISMATCH: the emulated {board.name} userland is not what it should be: {info} (want {want})")
            return 1
        _log(f"{board.name}: QEMU -cpu {board.qemu_cpu}, {info['machine']}, Python {info['python']}, "
             f"numpy {info['numpy']}, onnxruntime {info['onnxruntime']}")
        targets.append(target)

    # x86-64 first (the reference), then every (model, board) run, `--jobs` at a time
    plan = []
    metas = {m: read_metadata(m) for m in models}
    for model in models:
        meta = metas[model]
        kind = quantization_kind(meta)
        heavy = meta.get("kws.arch") in HEAVY_ARCHS
        feed = short_inputs(cache, wavs, pcm) if heavy else (wavs, pcm)
        if heavy:
            _log(f"{model.name}: kws.arch {meta.get('kws.arch')}: on {SHORT_WAV_S:g} s of the 44.1 kHz stereo input "
                 f"and {SHORT_PCM_S:g} s on stdin (~0.5 s of emulated CPU per step)")
        runs = cache / "runs" / model.name.removesuffix(".onnx")
        ref, err, _ = run_detect(native, model, *feed, runs / "x86-64.csv")
        if err:
            print(f"pi-check: error: the x86-64 run of {model.name} failed ({err})", file=sys.stderr)
            return 1
        plan += [(model, kind, ref, target, board, runs / f"{board.key}.csv", feed, None, model.name)
                 for target, board in zip(targets, boards)]
    for verifier, first in two_stage_pairs(metas):
        feed = ([], short_inputs(cache, [], pcm)[1])
        name = f"{first.name} + --verifier {verifier.name}"
        runs = cache / "runs" / f"{first.name.removesuffix('.onnx')}+{verifier.name.removesuffix('.onnx')}"
        ref, err, _ = run_detect(native, first, *feed, runs / "x86-64.csv", verifier=verifier)
        if err:
            print(f"pi-check: error: the x86-64 two-stage run of {name} failed ({err})", file=sys.stderr)
            return 1
        _log(f"{name}: two-stage on {SHORT_PCM_S:g} s on stdin, every step a candidate ({sum(len(t.events) for t in ref.values())} "
             "verifications on x86-64)")
        kind = quantization_kind(metas[verifier])
        plan += [(first, kind, ref, target, board, runs / f"{board.key}.csv", feed, verifier, name)
                 for target, board in zip(targets, boards)]
    t_runs = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        outcomes = list(pool.map(lambda job: run_detect(job[3], job[0], *job[6], job[5], verifier=job[7]), plan))
    t_runs = time.monotonic() - t_runs

    rows, details = [], []
    for (_, kind, ref, _, board, _, _, _, name), (got, err, seconds) in zip(plan, outcomes):
        row, problems = result_row(name, kind, board.name, ref, got, err, seconds)
        rows.append(row)
        details += [f"{name} on {board.name}: {p}" for p in problems]
    print()
    print(format_table(rows))
    print()
    for line in details:
        print(f"pi-check: MISMATCH: {line}")
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    _log(f"set-up {t_setup:.0f} s, emulated runs {t_runs:.0f} s ({args.jobs} at a time), total {time.monotonic() - t_start:.0f} s "
         f"(child processes' CPU {cpu.ru_utime + cpu.ru_stime:.0f} s)")
    code = exit_code(rows)
    _log("emulated Pi 4 / Pi 5 agree with x86-64" if code == 0 else "MISMATCH (see above)")
    return code


if __name__ == "__main__":
    sys.exit(main())
