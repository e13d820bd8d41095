#!/usr/bin/env python3
"""`make bench`: speed, memory and size of the teacher and every shipped student, side by side
(and of a speech-embedding checkpoint: its streaming fp32 ONNX through the runtime).

    python benchmarks/run.py                      # checkpoints/*.pt (or random-weight stand-ins)
    python benchmarks/run.py --ckpt a.pt --ckpt b.pt --out /tmp/bench
    python benchmarks/run.py --quick              # a few seconds of audio: a smoke run

Writes ``results.md``, ``results.png`` and ``results.json`` to ``--out`` (default: this
directory) and prints the tables.  docs/benchmarks.md explains every column.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread everywhere, before numpy / torch start their pools
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = "1"

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

import click  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from kws_export.cli_support import run_click  # noqa: E402
from kws_export.errors import KWSError  # noqa: E402
from kws_export.fileio import atomic_output  # noqa: E402

DETECT = ROOT / "runtime" / "detect.py"
CHUNK_VARIANTS_MS = (160, 320)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def single_thread() -> None:
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran in this process
        pass


def output_dir(out: str | None) -> Path:
    path = Path(out) if out else Path(__file__).resolve().parent
    if path.exists() and not path.is_dir():
        raise KWSError(f"{path}: not a directory (--out)")
    if not path.exists():
        if not path.parent.is_dir():
            raise KWSError(f"{path}: parent directory {path.parent} does not exist (--out)")
        path.mkdir()
    if not os.access(path, os.W_OK | os.X_OK):
        raise KWSError(f"{path}: output directory is not writable (--out)")
    return path


def benchmark_model(m, audio: np.ndarray, long_wav: Path, rss_seconds: float, repeats: int) -> dict:
    from benchmarks import costs, memory, timing
    from benchmarks.models import describe

    cfg = m.config
    audio_s = len(audio) / cfg.sample_rate
    spec = m.model.stream_spec()
    runners = {
        "eager": lambda: timing.eager_runner(m.model, audio),
        "torchscript": lambda: timing.torchscript_stream_runner(m.exports["stream_ts"], audio),
        "onnx_fp32": lambda: timing.detector_runner(m.exports["onnx_fp32"], audio, "ONNX fp32"),
        "onnx_int8": lambda: timing.detector_runner(m.exports["onnx_int8"], audio, "ONNX int8"),
        "onnx_int8w": lambda: timing.detector_runner(m.exports["onnx_int8w"], audio, "ONNX int8 weights",
                                                     feed_samples=spec.step_samples),
        "naive": lambda: timing.naive_runner(m.exports["offline_ts"], audio, cfg.clip_samples, spec.step_samples),
    }
    built = {key: make() for key, make in runners.items()}
    timings, probs = {}, {}
    for key, t in timing.measure(built, audio_s, repeats).items():
        probs[key] = timing.collect_probs(built[key])
        timings[key] = t.to_dict()
        log(f"{m.name:>12} {key:<12} RTF {t.rtf:.5f}  p50 {t.p50_us:8.1f} µs  p99 {t.p99_us:8.1f} µs")
    for key, p in probs.items():
        n = min(len(p), len(probs["eager"]))
        timings[key]["max_abs_dprob_vs_eager"] = None if key == "eager" else float(np.abs(p[:n] - probs["eager"][:n]).max())
        timings[key]["prob_range"] = [float(p.min()), float(p.max())]
    sizes = {"checkpoint": m.ckpt.stat().st_size, **{k: Path(v).stat().st_size for k, v in m.exports.items()}}
    rss = {}
    for key in ("onnx_int8", "onnx_int8w", "onnx_fp32"):
        r = memory.detect_peak_rss(DETECT, m.exports[key], long_wav)
        rss[key] = {"peak_rss_bytes": r["peak_rss_bytes"], "cpu_s": r["cpu_s"], "audio_s": rss_seconds}
        log(f"{m.name:>12} detect.py {key}: peak RSS {r['peak_rss_bytes'] / 1e6:.1f} MB, {r['cpu_s']:.2f} CPU s")
    return {**describe(m, ROOT), "costs": costs.model_costs(m.model), "sizes": sizes, "timings": timings, "rss": rss}


def benchmark_embedding(m, audio: np.ndarray, long_wav: Path, rss_seconds: float, repeats: int) -> dict:
    """A speech-embedding model: what exists for it, its streaming fp32 ONNX through the
    runtime (speed, memory, size), its costs, and its agreement with the numpy reference
    (``EmbeddingKWS.stream``, the step the export was checked against)."""
    from benchmarks import costs, memory, timing
    from benchmarks.models import describe

    audio_s = len(audio) / m.config.sample_rate
    path = m.exports["onnx_fp32"]
    built = {"onnx_fp32": timing.detector_runner(path, audio, "ONNX fp32")}
    t = timing.measure(built, audio_s, repeats)["onnx_fp32"]
    p = timing.collect_probs(built["onnx_fp32"])
    ref = np.asarray(m.model.stream(audio), np.float32)
    n = min(len(p), len(ref))
    timings = {"onnx_fp32": {**t.to_dict(), "max_abs_dprob_vs_reference": float(np.abs(p[:n] - ref[:n]).max()),
                             "prob_range": [float(p.min()), float(p.max())]}}
    log(f"{m.name:>12} onnx_fp32    RTF {t.rtf:.5f}  p50 {t.p50_us:8.1f} µs  p99 {t.p99_us:8.1f} µs  "
        f"max |Δp| vs numpy reference {timings['onnx_fp32']['max_abs_dprob_vs_reference']:.1e}")
    r = memory.detect_peak_rss(DETECT, path, long_wav)
    rss = {"onnx_fp32": {"peak_rss_bytes": r["peak_rss_bytes"], "cpu_s": r["cpu_s"], "audio_s": rss_seconds}}
    log(f"{m.name:>12} detect.py onnx_fp32: peak RSS {r['peak_rss_bytes'] / 1e6:.1f} MB, {r['cpu_s']:.2f} CPU s")
    sizes = {"checkpoint": m.ckpt.stat().st_size, "onnx_fp32": Path(path).stat().st_size}
    return {**describe(m, ROOT), "costs": costs.embedding_costs(m.model, path), "sizes": sizes, "timings": timings,
            "rss": rss}


def student_targets(res: dict, m, rss_seconds: float, rtf_file: float) -> dict:
    """The issue's three targets for the int8 student, as measured."""
    from benchmarks.report import TARGETS, duration

    return {
        "rtf_live": res["timings"]["onnx_int8"]["rtf"],
        "rtf_file": rtf_file,
        "rss_bytes": res["rss"]["onnx_int8"]["peak_rss_bytes"],
        "rss_file": f"{duration(rss_seconds)} file",
        "int8_bytes": res["sizes"]["onnx_int8"],
        "int8_origin": "the shipped file" if m.export_origin.get("onnx_int8") == "shipped" else "a fresh export",
        "rtf_live_int8w": res["timings"]["onnx_int8w"]["rtf"],
        "rss_bytes_int8w": res["rss"]["onnx_int8w"]["peak_rss_bytes"],
        "int8w_bytes": res["sizes"]["onnx_int8w"],
        "int8w_origin": "the shipped file" if m.export_origin.get("onnx_int8w") == "shipped" else "a fresh export",
        "limits": TARGETS,
    }


def whole_stream_rtf(path: Path, audio: np.ndarray, repeats: int) -> float:
    from runtime.detect import Detector

    det = Detector(str(path), keep_history=False)
    det.process(audio[: 20 * det.chunk_samples])
    runs = []
    for _ in range(max(1, repeats)):
        det.reset()
        t0 = time.process_time_ns()
        det.process(audio)
        runs.append((time.process_time_ns() - t0) / 1e9)
    return float(np.median(runs)) / (len(audio) / det.sample_rate)


def run(ckpts: tuple[str, ...], out: str | None, quick: bool, seconds: float | None, rss_seconds: float | None,
        repeats: int | None, work_dir: str | None, seed: int) -> dict:
    from benchmarks import breakdown, memory, models, report, stream

    single_thread()
    out_dir = output_dir(out)
    seconds = seconds if seconds is not None else (3.0 if quick else 60.0)
    rss_seconds = rss_seconds if rss_seconds is not None else (10.0 if quick else 600.0)
    repeats = repeats if repeats is not None else (1 if quick else 5)
    if not seconds >= 1.0 or not rss_seconds > 0 or repeats < 1:
        raise KWSError("--seconds must be at least 1 (one training clip), --rss-seconds positive, --repeats at least 1")
    started = time.time()
    machine = report.machine()  # before the work: its load average says how busy the machine was
    with tempfile.TemporaryDirectory(prefix="kws-bench-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        if work.exists() and not work.is_dir():
            raise KWSError(f"{work}: not a directory (--work)")
        work.mkdir(parents=True, exist_ok=True)
        if ckpts:
            paths, origin = [Path(c) for c in ckpts], "given"
        else:
            paths, origin = sorted((ROOT / "checkpoints").glob("*.pt")), "shipped"
            if not paths:
                log("no shipped checkpoints/*.pt yet: benchmarking random-weight stand-ins (seminar teacher, student-size CRNN)")
                paths, origin = models.dev_checkpoints(work, seed), "random weights"
        bench_models = models.load_models(paths, origin)
        teacher = bench_models[0]
        keyword, rate = str(teacher.metadata.get("keyword", teacher.config.keyword)), teacher.config.sample_rate
        log(f"synthesizing a {seconds:g} s stream (keyword {keyword!r}, {rate} Hz)")
        audio = stream.benchmark_stream(seconds, keyword, rate, seed)
        calib = None
        if quick:  # int8 calibration on the short stream instead of 40 s of fresh speech
            calib = work / "calib"
            calib.mkdir(exist_ok=True)
            from kws_export.audio import write_wav

            write_wav(calib / "stream.wav", audio, rate)
        long_wav = stream.write_long_wav(work / "long.wav", audio, rss_seconds, rate)
        exported_dir = ROOT / "exported" if (ROOT / "exported").is_dir() else None
        results_models = []
        for m in bench_models:
            log(f"exporting {m.name} ({m.ckpt})")
            models.export_model(m, work, exported_dir, calib)
            if m.is_embedding:
                results_models.append(benchmark_embedding(m, audio, long_wav, rss_seconds, repeats))
                continue
            res = benchmark_model(m, audio, long_wav, rss_seconds, repeats)
            if m.role == "student":
                t = res["targets"] = student_targets(res, m, rss_seconds, whole_stream_rtf(m.exports["onnx_int8"], audio, repeats))
                lim = report.TARGETS
                missed = (max(t["rtf_live"], t["rtf_file"]) > lim["rtf"] or t["rss_bytes"] > lim["rss_bytes"]
                          or t["int8_bytes"] > lim["int8_bytes"])
                if missed:
                    log(f"{m.name}: a target is missed; measuring where the cost goes")
                    variants = {}
                    for ms in CHUNK_VARIANTS_MS[-1:] if quick else CHUNK_VARIANTS_MS:
                        steps = round(ms * rate / 1000 / m.model.stream_spec().step_samples)
                        variants[f"{ms} ms ({steps} steps/call)"] = models.export_chunked_int8(m, work, ms, calib)
                    res["breakdown"] = breakdown.runtime_breakdown(m.exports["onnx_int8"], audio, work, repeats, variants)
                    res["rss_stages"] = memory.rss_stages(DETECT, m.exports["onnx_int8"], long_wav)
            results_models.append(res)
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "settings": {"stream_seconds": seconds, "rss_seconds": rss_seconds, "repeats": repeats, "quick": quick,
                     "seed": seed, "threads": 1, "benchmark_wall_s": round(time.time() - started, 1)},
        "models": results_models,
    }
    md = report.results_md(results)
    report.plot(results, out_dir / "results.png")
    with atomic_output(out_dir / "results.json") as tmp_json:
        tmp_json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    with atomic_output(out_dir / "results.md") as tmp_md:
        tmp_md.write_text(md)
    print(md)
    log(f"wrote {out_dir / 'results.md'}, results.png and results.json in {time.time() - started:.0f} s")
    return results


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ckpt", "ckpts", multiple=True, type=click.Path(),
              help="Checkpoint to benchmark (repeatable; default: checkpoints/*.pt). The teacher is the baseline.")
@click.option("--out", type=click.Path(), default=None,
              help="Directory for results.md / .png / .json (default: benchmarks/).")
@click.option("--quick", is_flag=True, help="Smoke run: a 3 s stream, one pass, a 10 s file for memory.")
@click.option("--seconds", type=float, default=None, help="Stream length (default 60; 3 with --quick).")
@click.option("--rss-seconds", type=float, default=None, help="Length of the detect.py memory file (default 600).")
@click.option("--repeats", type=int, default=None, help="Timed passes per engine; the median is reported (default 5).")
@click.option("--work", "work_dir", type=click.Path(), default=None,
              help="Keep the exports and audio here (default: a temporary directory).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthesized stream.")
def cli(ckpts, out, quick, seconds, rss_seconds, repeats, work_dir, seed) -> None:
    """Measure speed, memory and size of the teacher and the students side by side."""
    run(ckpts, out, quick, seconds, rss_seconds, repeats, work_dir, seed)


def main(argv: list[str] | None = None) -> int:
    return run_click(cli, "bench", argv)


if __name__ == "__main__":
    sys.exit(main())
