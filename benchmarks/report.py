"""results.md (tables with ratios to the teacher in PyTorch eager) and the PNG plot."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

from kws_export.fileio import atomic_output

ENGINES = {  # key -> label, in table order
    "eager": "PyTorch eager (CRNN.step)",
    "torchscript": "TorchScript streaming step",
    "onnx_fp32": "ONNX fp32 via detect.py",
    "onnx_int8": "ONNX int8 via detect.py",
    "onnx_int8w": "ONNX int8 weights, 4 steps/call, fed 80 ms, via detect.py",
    "naive": "naive: 1 s re-scored every step (TorchScript)",
}
SPEED_COLUMNS = ["model", "engine", "RTF (CPU s / audio s)", "× teacher eager", "CPU µs / 80 ms step",
                 "p50 µs", "p99 µs", "max abs Δp vs eager"]
SIZE_COLUMNS = ["model", "params", "network MMAC/s", "frontend MMAC/s", "checkpoint", "ONNX fp32", "ONNX int8",
                "detect.py peak RSS (int8)"]
EMBEDDING_SPEED_COLUMNS = ["model", "engine", "RTF (CPU s / audio s)", "× teacher eager", "CPU µs / 80 ms step",
                           "p50 µs", "p99 µs", "max abs Δp vs numpy reference"]
EMBEDDING_SIZE_COLUMNS = ["model", "params (trained + frozen)", "MMAC/s (mel + embedding + head)", "checkpoint",
                          "ONNX fp32", "detect.py peak RSS (fp32)"]
TARGETS = {"rtf": 0.0005, "rss_bytes": 50e6, "int8_bytes": 20e3}
REFERENCE_RTF = {"int8 TFLite wake-word runtime (issue 7)": 0.0017,
                 "1 s TorchScript re-scoring every 80 ms (issue 7)": 0.006}


# Formatting -----------------------------------------------------------------------------------------
def kb(n: float) -> str:
    return f"{n / 1e3:,.1f} KB"


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def ratio(x: float, base: float) -> str:
    if not base or not math.isfinite(x / base):
        return "—"
    r = x / base
    return f"{r:.3g}×" if r < 100 else f"{r:,.0f}×"


def with_ratio(text: str, x: float, base: float) -> str:
    return f"{text} ({ratio(x, base)})"


def rtf_text(x: float) -> str:
    return f"{x:.5f}" if x < 0.01 else f"{x:.4f}"


def duration(seconds: float) -> str:
    return f"{seconds / 60:g}-minute" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def table(columns: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# Machine ---------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numpy
    import onnxruntime
    import torch

    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def machine_line(m: dict) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']}, torch {m['torch']}, "
            f"onnxruntime {m['onnxruntime']}, numpy {m['numpy']}")


# Tables ----------------------------------------------------------------------------------------------
def is_embedding(m: dict) -> bool:
    return m.get("arch") == "embedding"


def crnn_models(results: dict) -> list[dict]:
    return [m for m in results["models"] if not is_embedding(m)]


def embedding_models(results: dict) -> list[dict]:
    return [m for m in results["models"] if is_embedding(m)]


def speed_rows(results: dict) -> list[list[str]]:
    base = results["models"][0]["timings"]["eager"]["rtf"]
    rows = []
    for m in crnn_models(results):
        for key, label in ENGINES.items():
            t = m["timings"].get(key)
            if t is None:
                continue
            d = t.get("max_abs_dprob_vs_eager")
            rows.append([m["name"], label, rtf_text(t["rtf"]), ratio(t["rtf"], base), f"{t['us_per_step']:.1f}",
                         f"{t['p50_us']:.1f}", f"{t['p99_us']:.1f}", "—" if d is None else f"{d:.1e}"])
    return rows


def size_rows(results: dict) -> list[list[str]]:
    b = results["models"][0]
    rows = []
    for m in crnn_models(results):
        c, s = m["costs"], m["sizes"]
        rss = m.get("rss", {}).get("onnx_int8", {}).get("peak_rss_bytes")
        rows.append([
            m["name"],
            with_ratio(f"{c['params']:,}", c["params"], b["costs"]["params"]),
            with_ratio(f"{c['macs_per_second_network'] / 1e6:.3g}", c["macs_per_second_network"], b["costs"]["macs_per_second_network"]),
            f"{c['macs_per_second_frontend'] / 1e6:.3g} dense DFT / {c['macs_per_second_frontend_graph'] / 1e6:.3g} as exported",
            with_ratio(kb(s["checkpoint"]), s["checkpoint"], b["sizes"]["checkpoint"]),
            with_ratio(kb(s["onnx_fp32"]), s["onnx_fp32"], b["sizes"]["onnx_fp32"]),
            with_ratio(kb(s["onnx_int8"]), s["onnx_int8"], b["sizes"]["onnx_int8"]),
            "—" if rss is None else with_ratio(mb(rss), rss, b.get("rss", {}).get("onnx_int8", {}).get("peak_rss_bytes", 0)),
        ])
    return rows


def embedding_speed_rows(results: dict) -> list[list[str]]:
    base = results["models"][0]
    eager = None if is_embedding(base) else base["timings"]["eager"]["rtf"]
    rows = []
    for m in embedding_models(results):
        t = m["timings"]["onnx_fp32"]
        rows.append([m["name"], ENGINES["onnx_fp32"], rtf_text(t["rtf"]), ratio(t["rtf"], eager) if eager else "—",
                     f"{t['us_per_step']:.1f}", f"{t['p50_us']:.1f}", f"{t['p99_us']:.1f}",
                     f"{t['max_abs_dprob_vs_reference']:.1e}"])
    return rows


def embedding_size_rows(results: dict) -> list[list[str]]:
    b = results["models"][0]
    crnn_base = not is_embedding(b)
    rows = []
    for m in embedding_models(results):
        c, s = m["costs"], m["sizes"]
        rss = m["rss"]["onnx_fp32"]["peak_rss_bytes"]
        if crnn_base:
            bc = b["costs"]
            base_macs = bc["macs_per_second_network"] + bc["macs_per_second_frontend_graph"]
            base_rss = b.get("rss", {}).get("onnx_fp32", {}).get("peak_rss_bytes", 0)
            par = with_ratio(f"{c['params']:,} ({c['params_trained']:,} + {c['params_frozen']:,})", c["params"], bc["params"])
            mac = with_ratio(f"{c['macs_per_second'] / 1e6:,.0f}", c["macs_per_second"], base_macs)
            ck = with_ratio(kb(s["checkpoint"]), s["checkpoint"], b["sizes"]["checkpoint"])
            fp = with_ratio(kb(s["onnx_fp32"]), s["onnx_fp32"], b["sizes"]["onnx_fp32"])
            mem = with_ratio(mb(rss), rss, base_rss)
        else:
            par = f"{c['params']:,} ({c['params_trained']:,} + {c['params_frozen']:,})"
            mac, ck, fp, mem = f"{c['macs_per_second'] / 1e6:,.0f}", kb(s["checkpoint"]), kb(s["onnx_fp32"]), mb(rss)
        rows.append([m["name"], par, mac, ck, fp, mem])
    return rows


def embedding_md(results: dict) -> list[str]:
    emb = embedding_models(results)
    if not emb:
        return []
    b = results["models"][0]
    step = emb[0]["costs"]["macs_per_step"]
    ref = "" if is_embedding(b) else (f"  Ratios are to `{b['name']}` (speed: its PyTorch eager step; MACs: its network + "
                                      f"frontend as exported; RSS: its fp32 file).")
    return [
        "## Speech-embedding model",
        "",
        "openWakeWord's frozen mel + embedding graphs with a trained head (`kws_export.embedding`).  What exists for "
        "it is benchmarked: its streaming fp32 ONNX (static int8, offline ONNX and TorchScript are refused by design) "
        "through `runtime/detect.py` on the same stream, one 80 ms step per call; max abs Δp is against its numpy "
        "reference `EmbeddingKWS.stream`.  Parameters: the trained head + the frozen graphs' weights.  MACs: Conv / "
        f"MatMul / Gemm counted from the ONNX graphs' shapes, per 80 ms step one mel call on 1,760 samples "
        f"({step['melspectrogram'] / 1e6:.2f} M), one embedding of 76 × 32 mel frames ({step['embedding_model'] / 1e6:.2f} M) "
        f"and the head ({step.get('head', 0):,}), 12.5 steps per second.  Peak RSS: `detect.py` with the fp32 file on the "
        f"same {duration(results['settings']['rss_seconds'])} wav." + ref,
        "",
        table(EMBEDDING_SPEED_COLUMNS, embedding_speed_rows(results)),
        "",
        table(EMBEDDING_SIZE_COLUMNS, embedding_size_rows(results)),
        "",
    ]


def target_rows(m: dict) -> list[list[str]]:
    t = m["targets"]
    yes = lambda ok: "**met**" if ok else "**missed**"  # noqa: E731
    return [
        ["RTF ≤ 0.0005: int8 via `Detector`, 80 ms chunks, one chunk per `process()` call (live audio)",
         rtf_text(t["rtf_live"]), yes(t["rtf_live"] <= TARGETS["rtf"])],
        ["  the same, whole stream in one `process()` call (a file)", rtf_text(t["rtf_file"]), yes(t["rtf_file"] <= TARGETS["rtf"])],
        ["peak RSS ≤ 50 MB: `runtime/detect.py` on a " + t["rss_file"], mb(t["rss_bytes"]), yes(t["rss_bytes"] <= TARGETS["rss_bytes"])],
        [f"`{m['name']}.stream.int8.onnx` ≤ 20 KB ({t['int8_origin']})", kb(t["int8_bytes"]), yes(t["int8_bytes"] <= TARGETS["int8_bytes"])],
    ] + ([] if "rtf_live_int8w" not in t else [
        ["**int8 weights** (`.stream.int8w.onnx`: int8 storage, float32 arithmetic, 4 steps per call): RTF ≤ 0.0005 "
         "via `Detector` fed 80 ms chunks, one per `process()` call", rtf_text(t["rtf_live_int8w"]),
         yes(t["rtf_live_int8w"] <= TARGETS["rtf"])],
        ["  its peak RSS on the same file", mb(t["rss_bytes_int8w"]), yes(t["rss_bytes_int8w"] <= TARGETS["rss_bytes"])],
        [f"  `{m['name']}.stream.int8w.onnx` ≤ 20 KB ({t['int8w_origin']})", kb(t["int8w_bytes"]),
         yes(t["int8w_bytes"] <= TARGETS["int8_bytes"])],
    ])


def breakdown_md(m: dict) -> str:
    b = m["breakdown"]
    us, sps = b["us_per_step"], b["steps_per_second"]
    total = us["detector_live"]
    rtf = lambda x: rtf_text(x * sps / 1e6)  # noqa: E731
    share = lambda x: f"{100 * x / total:.0f}%" if total else "—"  # noqa: E731
    prof = b["profile"]
    rows = [["Python of `Detector.process` (checks, buffering, output array, events)", f"{us['python_detector']:.1f}", rtf(us['python_detector']), share(us['python_detector'])],
            ["onnxruntime per-call floor (audio copy + `run_with_iobinding` of a do-nothing graph with the same inputs/outputs)", f"{us['floor']:.1f}", rtf(us['floor']), share(us['floor'])]]
    if "frontend" in us:
        rows += [[f"graph: log-mel frontend ({prof['nodes_per_call']['frontend']} nodes after onnxruntime's optimizations)", f"{us['frontend']:.1f}", rtf(us['frontend']), share(us['frontend'])],
                 [f"graph: conv, GRU, attention, classifier ({prof['nodes_per_call']['network']} nodes)", f"{us['network']:.1f}", rtf(us['network']), share(us['network'])]]
    else:
        rows.append([f"graph execution ({sum(prof['nodes_per_call'].values())} nodes)", f"{us['graph']:.1f}", rtf(us['graph']), share(us['graph'])])
    rows.append(["**total**: `Detector.process`, one 80 ms chunk per call", f"**{total:.1f}**", f"**{rtf(total)}**", "100%"])
    target_us = TARGETS["rtf"] / sps * 1e6
    out = [f"### Where the time goes: `{m['name']}` int8 through the runtime",
           "",
           f"CPU µs per 80 ms step (the target, RTF {TARGETS['rtf']}, is {target_us:.0f} µs per step); each line a measured difference, see docs/benchmarks.md.",
           "",
           table(["part", "µs / step", "RTF", "share"], rows),
           "",
           "Other ways to run the same model on the same stream:",
           ""]
    alt = [["whole stream in one `process()` call", us["detector_at_once"]],
           ["the runtime's inner loop alone (`StreamingModel.run` over all chunks)", us["runtime_loop"]],
           ["plain `session.run` with a feed dict, states fed back", us["session_run_feeds"]]]
    alt += [[f"`--chunk-ms` export, {label}, one chunk per `process()` call", v] for label, v in b["chunk_us_per_step"].items()
            if not label.startswith("80 ms")]
    alt += [[f"session option: {label} (inner loop)", v] for label, v in b["session_options_us_per_step"].items()]
    out.append(table(["way", "µs / step", "RTF", "vs target"],
                     [[w, f"{v:.1f}", rtf(v), "meets" if v <= target_us else f"{v / target_us:.2f}× over"] for w, v in alt]))
    out += ["",
            f"onnxruntime profile ({prof['calls']} calls, median kernel time per node; the profiler adds a few µs to "
            f"every node, so read these as relative): {prof['nodes_in_file']} nodes in the file, "
            f"{sum(prof['nodes_per_call'].values())} run per call; frontend {100 * prof['share']['frontend']:.0f}% / "
            f"network {100 * prof['share']['network']:.0f}% of profiled kernel time.",
            "",
            table(["part", "operator", "nodes", "profiled µs / call"],
                  [[o["part"], o["op"], str(o["nodes"]), f"{o['median_us']:.0f}"] for o in prof["ops"][:12]]),
            "",
            "Heaviest single nodes (profiled µs per call): " + ", ".join(
                f"{n['op']} ({n['part']}) {n['median_us']:.0f}" for n in prof["top_nodes"][:5]) + "."]
    return "\n".join(out)


def size_md(m: dict) -> str:
    s = m["breakdown"]["size"]
    rows = [[k, f"{v:,}"] for k, v in s["parts"].items()]
    meta = ", ".join(f"{k} {v:,}" for k, v in list(s["metadata"].items())[:4])
    return "\n".join([f"### Bytes of `{m['name']}.stream.int8.onnx` ({s['total']:,} bytes)", "",
                      table(["part", "bytes"], rows), "", f"Largest metadata entries: {meta}."])


def memory_md(m: dict) -> str:
    rows = [[r["stage"], mb(r["added_bytes"]), mb(r["peak_bytes"]), mb(r["anon_bytes"]), mb(r["file_bytes"])]
            for r in m["rss_stages"]]
    return "\n".join([f"### Memory of `runtime/detect.py` with `{m['name']}` int8, stage by stage", "",
                      "Peak resident memory (VmHWM) after each stage, in a fresh interpreter running the same code as the "
                      "command line; resident memory split into private (RssAnon) and mapped files (RssFile: the "
                      "interpreter's, numpy's and onnxruntime's shared libraries, shared with other processes):", "",
                      table(["stage", "adds to the peak", "peak so far", "private", "mapped files"], rows)])


def findings(m: dict) -> list[str]:
    """Plain statements computed from the numbers, for the people who fix the misses."""
    b = m.get("breakdown")
    if not b:
        return []
    us, sps = b["us_per_step"], b["steps_per_second"]
    target_us = TARGETS["rtf"] / sps * 1e6
    out = []
    if "frontend" in us and us["graph"] > 0:
        out.append(f"The log-mel frontend is {100 * us['frontend'] / us['graph']:.0f}% of graph time "
                   f"({us['frontend']:.1f} of {us['graph']:.1f} µs per step): the frontend, not the network, is what a "
                   f"smaller student cannot shrink.")
    out.append(f"The network part costs {us.get('network', us['graph']):.1f} µs for "
               f"{b['profile']['nodes_per_call']['network']} nodes, about "
               f"{us.get('network', us['graph']) / max(1, b['profile']['nodes_per_call']['network']):.2f} µs per node: "
               f"dispatch, not arithmetic (the network is "
               f"{m['costs']['macs_per_step_network']['total']:,} MACs per step).")
    out.append(f"`Detector.process` adds {us['python_detector']:.1f} µs of Python per call when handed one chunk at a "
               f"time, {100 * us['python_detector'] / target_us:.0f}% of the {target_us:.0f} µs budget; "
               f"handed the whole stream it adds {max(0.0, us['detector_at_once'] - us['runtime_loop']):.1f} µs per step.")
    out.append(f"onnxruntime's per-call floor is {us['floor']:.1f} µs: calls, not the fixed cost of a call, dominate.")
    best = min(b["chunk_us_per_step"].items(), key=lambda kv: kv[1])
    out.append(f"Fewest µs per step with {best[0]}: {best[1]:.1f} µs "
               f"({'meets' if best[1] <= target_us else 'misses'} the {target_us:.0f} µs budget).")
    stages = {r["stage"]: r for r in m.get("rss_stages", [])}
    if "import onnxruntime" in stages and "process the file" in stages:
        base, end = stages["import onnxruntime"], stages["process the file"]
        out.append(f"Memory: the interpreter with numpy and onnxruntime imported peaks at {mb(base['peak_bytes'])} before "
                   f"detect.py's own code runs (the target is {mb(TARGETS['rss_bytes'])}); at the end "
                   f"{mb(end['anon_bytes'])} is private and {mb(end['file_bytes'])} mapped library pages, and the "
                   f"file itself adds {mb(end['added_bytes'])}.")
    return out


def results_md(results: dict) -> str:
    s = results["settings"]
    base = results["models"][0]
    lines = [
        "# kws-edge benchmarks",
        "",
        f"Measured {results['date']} on {machine_line(results['machine'])}.  ",
        f"Load average at the start: {results['machine'].get('load_average_at_start')} (a shared machine: CPU time, not wall time, is measured).  ",
        f"Stream: {s['stream_seconds']:g} s of synthesized speech commands with the keyword every ~10 s over pink noise "
        f"(seed {s['seed']}); one thread everywhere (`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`, onnxruntime "
        f"intra/inter-op threads 1); RTF is the median of {s['repeats']} passes{'; **quick mode**: a smoke run, not a measurement' if s['quick'] else ''}.",
        "",
        "Models: " + "; ".join(
            f"`{m['name']}` ({m['role']}, {m['origin']}, {m['summary']}{', training ' + m['status'] if m.get('status') else ''})"
            for m in results["models"]) + ".",
        "",
    ]
    if crnn_models(results):
        lines += [
            "## Speed",
            "",
            f"RTF = CPU seconds per second of audio; ratios are to `{base['name']}` in PyTorch eager.  p50/p99: CPU time of "
            f"one call (one 80 ms step).  max abs Δp: largest difference from the eager streaming probabilities over the stream "
            f"(the naive re-scoring computes the offline clip model, so it differs by design).",
            "",
            table(SPEED_COLUMNS, speed_rows(results)),
            "",
            "## Size, arithmetic and memory",
            "",
            f"Ratios are to `{base['name']}`.  MACs per second of audio from `training/macs.py` (network: the streaming step; "
            f"frontend: a dense DFT, and the mixed-radix DFT the export computes).  Peak RSS: `runtime/detect.py` with the "
            f"int8 model on a {duration(s['rss_seconds'])} 16 kHz 16-bit wav, a separate process.  KB = 1,000 bytes, MB = 10^6 bytes.",
            "",
            table(SIZE_COLUMNS, size_rows(results)),
            "",
        ]
    lines += embedding_md(results)
    students = [m for m in results["models"] if m.get("targets")]
    if students:
        lines += ["## Issue 7 targets (int8 streaming student through the runtime)", ""]
        for m in students:
            lines += [f"`{m['name']}`:", "", table(["target", "measured", ""], target_rows(m)), ""]
            if m.get("breakdown"):
                lines += ["Findings:", ""] + [f"- {f}" for f in findings(m)] + ["", breakdown_md(m), ""]
                lines += [size_md(m), ""]
                if m.get("rss_stages"):
                    lines += [memory_md(m), ""]
    lines += ["![RTF and per-step latency](results.png)", ""]
    return "\n".join(lines)


# Plot ------------------------------------------------------------------------------------------------
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = results["models"]
    keys = [k for k in ENGINES if any(k in m["timings"] for m in models)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(models)
    x = np.arange(len(keys))
    for j, m in enumerate(models):
        rtf = [m["timings"][k]["rtf"] if k in m["timings"] else np.nan for k in keys]
        p50 = np.array([m["timings"][k]["p50_us"] if k in m["timings"] else np.nan for k in keys])
        p99 = np.array([m["timings"][k]["p99_us"] if k in m["timings"] else np.nan for k in keys])
        axes[0].bar(x + j * width, rtf, width, label=m["name"])
        axes[1].bar(x + j * width, p50, width, label=f"{m['name']} p50")
        axes[1].errorbar(x + j * width, p50, yerr=[np.zeros_like(p50), np.maximum(p99 - p50, 0)], fmt="none",
                         ecolor="black", capsize=3, lw=1)
    axes[0].axhline(TARGETS["rtf"], color="tab:red", ls="--", lw=1, label=f"target {TARGETS['rtf']}")
    for (label, value), style in zip(REFERENCE_RTF.items(), (":", "-.")):
        axes[0].axhline(value, color="tab:gray", ls=style, lw=1, label=f"{label}: {value}")
    axes[0].set_ylabel("CPU s per s of audio (RTF)")
    axes[0].set_title("streaming cost, one thread")
    axes[1].set_ylabel("CPU µs per call (bar p50, whisker p99)")
    axes[1].set_title("per-step latency")
    short = {"eager": "eager", "torchscript": "TorchScript", "onnx_fp32": "ONNX fp32", "onnx_int8": "ONNX int8", "onnx_int8w": "int8 weights\n4 steps/call", "naive": "naive 1 s"}
    tops = [max(m["timings"][k][field] for m in models for k in keys if k in m["timings"]) for field in ("rtf", "p99_us")]
    for ax, top in zip(axes, tops):
        ax.set_yscale("log")
        ax.set_ylim(top=top * 12)  # head room in log scale: the legend sits above the bars
        ax.set_xticks(x + width * (len(models) - 1) / 2)
        ax.set_xticklabels([short[k] for k in keys])
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"kws-edge benchmarks, {results['date']}", fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
