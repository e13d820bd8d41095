"""`kws-train report`: the course's comparison of compression settings.

Every checkpoint (and the int8 / fp16 variants of one of them) is evaluated on the same
test clips and the same long test streams, at its own recommended threshold, and the
results go into ``report.md`` (a table with ratios to the first checkpoint, the teacher),
``report.json`` and two plots: AU-FA-FR against network MACs per second of audio and
against weight memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from kws_export.errors import KWSError
from kws_export.fileio import atomic_output
from training import macs
from training.compress import fp16_model, int8_sim_model
from training.evaluate import build_streams, evaluate_model, recommend_threshold
from training.pipeline import check_out, json_safe, open_corpus, plain, read_checkpoint
from training.train import ClipSet, pick_device, seeded, set_threads

CALIB_CLIPS = 512
CALIB_STREAM_MINUTES = 1.0


def parse_ckpt_arg(arg: str) -> tuple[str | None, Path]:
    if "=" in arg and not Path(arg).exists():
        label, path = arg.split("=", 1)
        return label.strip() or None, Path(path)
    return None, Path(arg)


def default_label(meta: dict, path: Path, index: int) -> str:
    if meta.get("setting"):
        return str(meta["setting"])
    if index == 0:
        return "teacher"
    return path.stem


def memory_of(model, kind: str) -> int:
    return {"fp32": macs.fp32_bytes, "fp16": macs.fp16_bytes, "int8": macs.int8_bytes,
            "sparse fp32": lambda m: macs.sparse_bytes(m, 4)}[kind](model)


def run_report(kw: dict) -> dict:
    set_threads(kw["threads"])
    device = pick_device(kw["device"])
    out: Path = kw["out"]
    if out.exists() and not out.is_dir():
        raise KWSError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KWSError(f"{out}: cannot create the report folder ({exc.strerror})") from None
    check_out(out / "report.md", "a report folder")

    entries = []
    for i, arg in enumerate(kw["ckpts"]):
        label, path = parse_ckpt_arg(arg)
        ckpt = read_checkpoint(path)
        entries.append((label or default_label(ckpt.metadata, path, i), path, ckpt))
    keyword = kw.get("keyword") or entries[0][2].config.keyword
    corpus = open_corpus(kw["data"], keyword, kw["split_seed"])
    config0 = entries[0][2].config
    clips = corpus.get(kw["split"], config0)
    streams = build_streams(clips, kw["stream_minutes"], kw["seed"], corpus.noises)
    val_streams = None
    dev = None
    if kw.get("real") is not None:
        from training.pipeline import real_dir_of
        from training.real import open_real

        dev = open_real(real_dir_of(kw["real"]), keyword, config0.sample_rate).load()
    real = {"dev": dev, "stream": not kw.get("no_real_stream"), "seed": kw["seed"]}

    variants_path = kw["variants_of"]
    if variants_path is None and len(entries) > 1:
        variants_path = entries[1][1]

    rows = []
    for label, path, ckpt in entries:
        model = ckpt.build_model()
        threshold = ckpt.metadata.get("threshold")
        source = "checkpoint metadata"
        if not isinstance(threshold, (int, float)):
            if val_streams is None:
                val_streams = build_streams(corpus.get("validation", config0), 10.0, kw["seed"] + 1, corpus.noises)
            threshold, _ = recommend_threshold(model, val_streams, device=device)
            source = "validation streams, best event F1"
        rows.append(_row(label, path, model, clips, streams, float(threshold), source, device,
                         "sparse fp32" if _is_sparse(model) else "fp32", real))
        rows[-1]["provenance"] = {k: ckpt.metadata.get(k) for k in ("command", "training_time_s", "created")}
        if variants_path is not None and Path(path).resolve() == Path(variants_path).resolve():
            train = corpus.get("train", model.config)
            g = seeded(kw["seed"], 7)
            idx = torch.randperm(len(train), generator=g)[:CALIB_CLIPS]
            pool = torch.randperm(len(train), generator=g)[:2000]  # a subset is plenty for one minute
            subset = ClipSet(train.waves[pool], train.labels[pool], [], "train")
            calib_stream = build_streams(subset, CALIB_STREAM_MINUTES, kw["seed"] + 2, corpus.noises)[0].audio
            q = int8_sim_model(model, train.batch(idx), torch.as_tensor(calib_stream))
            rows.append(_row(f"{label} + static int8", path, q, clips, streams, float(threshold), source, "cpu", "int8",
                             real))
            rows.append(_row(f"{label} + fp16", path, fp16_model(model), clips, streams, float(threshold), source,
                             device, "fp16", real))
    if variants_path is not None and not any(r["memory_kind"] == "int8" for r in rows):
        raise KWSError(f"{variants_path}: --variants-of must be one of the --ckpt files")

    ref = rows[0]
    for r in rows:
        r["macs_ratio_vs_first"] = ref["macs_per_second_network"] / r["macs_per_second_network"]
        r["memory_ratio_vs_first"] = ref["memory_bytes"] / r["memory_bytes"]
    report = {"split": kw["split"], "clips": len(clips), "stream_minutes": sum(s.seconds for s in streams) / 60.0,
              "data": corpus.recipe, "rows": rows}
    if dev is not None:
        report["real_dev_set"] = dev.describe()
    _write(out / "report.json", json.dumps(json_safe(plain(report)), indent=1) + "\n")
    _write(out / "report.md", render_markdown(report))
    plot(rows, "macs_per_second_network", "network MACs per second of audio", out / "metric_macs.png")
    plot(rows, "memory_bytes", "weight memory, bytes", out / "metric_memory.png")
    print(render_markdown(report))
    return report


def _is_sparse(model) -> bool:
    return any(v < 0.999 for v in macs.part_density(model).values())


def _real_columns(model, threshold: float, device, real: dict) -> dict:
    """The real-speech figures of one row (the stream only for plain CRNNs, which
    ``CRNNStreamer`` runs; the static-int8 simulation has no streamer)."""
    from kws_export.model import CRNN
    from training.real import evaluate_real

    stream = real["stream"] and type(model) is CRNN
    r = evaluate_real(model, real["dev"], threshold, stream=stream, seed=real["seed"], device=device,
                      extra_negatives=False)
    c = r["clips"]
    out = {"real_au_fa_fr": c["au_fa_fr"], "real_recall_at_0.1pct_far": c["recall_at_0.1pct_far"],
           "real_recall_at_1pct_far": c["recall_at_1pct_far"], "real_stream_hits": None, "real_stream_keywords": None,
           "real_false_alarms_per_hour": None}
    if "stream" in r:
        at = r["stream"]["at_threshold"]
        out.update(real_stream_hits=at["hits"], real_stream_keywords=at["keywords"],
                   real_false_alarms_per_hour=at["false_alarms_per_hour"], real_stream_sweep=r["stream"]["sweep"])
    return out


def _row(label, path, model, clips, streams, threshold, source, device, memory_kind, real=None) -> dict:
    m = evaluate_model(model, clips, streams, threshold, device=device, threshold_source=source)
    extra = _real_columns(model, threshold, device, real) if real and real["dev"] is not None else {}
    cpu = model.cpu()
    density = macs.part_density(cpu)
    net = macs.network_macs_per_second(cpu.config, density if memory_kind == "sparse fp32" else None)
    return {
        "setting": label, "checkpoint": str(path), "params": m["params"],
        "config": {k: cpu.config.to_dict()[k] for k in ("channels", "hidden", "gru_layers", "kernel", "stride")},
        "macs_per_second_network": net, "macs_per_second_frontend": m["macs_per_second_frontend"],
        "macs_per_second_frontend_export": m["macs_per_second_frontend_export"],
        "memory_kind": memory_kind, "memory_bytes": memory_of(cpu, memory_kind),
        "au_fa_fr": m["au_fa_fr"], "au_fa_fr_streaming": m["au_fa_fr_streaming"], "frr_at_1pct_far": m["frr_at_1pct_far"],
        "streaming_recall": m["streaming_recall"], "false_alarms_per_hour": m["false_alarms_per_hour"],
        "threshold": threshold, "threshold_source": source, **extra,
    }


def _export(r: dict) -> str:
    x = r.get("macs_per_second_frontend_export")
    return f" ({_fmt_int(x)})" if x else ""


def _fmt_int(x: float) -> str:
    return f"{int(round(x)):,}"


def render_markdown(report: dict) -> str:
    lines = [
        "# Compression report",
        "",
        f"Test split: {report['clips']} clips; streaming metrics on {report['stream_minutes']:.0f} minutes of test "
        "streams (test voices only) at each model's recommended threshold.  AU-FA-FR is the seminar's (FA and FR "
        "divided by all clips); *streaming* AU-FA-FR scores the same clips played back to back through the "
        "never-reset streaming model.  MACs are per second of audio for the streaming network (frontend "
        "separately: dense DFT, and in brackets the mixed-radix DFT the streaming export runs); memory is the "
        "weight payload in the stated precision.",
        "",
        "| setting | params | network MACs/s | x fewer | frontend MACs/s | memory | bytes | x smaller | "
        "AU-FA-FR | AU-FA-FR streaming | FRR @1% FAR | stream recall | FA/hour | threshold |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['setting']} | {_fmt_int(r['params'])} | {_fmt_int(r['macs_per_second_network'])} | "
            f"{r['macs_ratio_vs_first']:.1f} | {_fmt_int(r['macs_per_second_frontend'])}{_export(r)} | {r['memory_kind']} | "
            f"{_fmt_int(r['memory_bytes'])} | {r['memory_ratio_vs_first']:.1f} | {r['au_fa_fr']:.2e} | "
            f"{r['au_fa_fr_streaming']:.2e} | {r['frr_at_1pct_far']:.3f} | {r['streaming_recall']:.3f} | "
            f"{r['false_alarms_per_hour']:.1f} | {r['threshold']:.2f} |"
        )
    if report.get("real_dev_set"):
        lines += _real_markdown(report)
    lines += [
        "",
        "![AU-FA-FR vs MACs](metric_macs.png)",
        "",
        "![AU-FA-FR vs memory](metric_memory.png)",
        "",
        "int8 rows are a simulation of static quantization (int8 per-channel weights, uint8 per-tensor activations "
        "calibrated on training audio, fp32 frontend); fp16 rows round the weights to float16.",
        "",
        "## How each checkpoint was made",
        "",
        "| setting | command | training time |",
        "|---|---|---:|",
    ]
    for r in report["rows"]:
        prov = r.get("provenance") or {}
        if prov.get("command"):
            minutes = f"{prov['training_time_s'] / 60:.1f} min" if isinstance(prov.get("training_time_s"), (int, float)) else "?"
            lines.append(f"| {r['setting']} | `{prov['command']}` | {minutes} |")
    synth = (report.get("data") or {}).get("synth_command")
    if synth:
        lines += ["", f"Data: `{synth}`"]
    lines.append("")
    return "\n".join(lines)


def _real_markdown(report: dict) -> list[str]:
    d = report["real_dev_set"]
    lines = [
        "",
        "## Real speech (development set)",
        "",
        f"Real recordings, never trained on (docs/real_speech.md): clip figures over the {d['clip_metric_clips']:,} "
        f"speech clips that hold the keyword's folder ({d['keyword_clips']} '{d['keyword']}'); the stream is all "
        f"{d['speech_clips']:,} speech clips shuffled and concatenated, at each model's threshold.",
        "",
        "| setting | AU-FA-FR | recall @0.1% FAR | recall @1% FAR | stream hits | FA/hour | threshold |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        hits = f"{r['real_stream_hits']}/{r['real_stream_keywords']}" if r.get("real_stream_hits") is not None else "-"
        fa = f"{r['real_false_alarms_per_hour']:.1f}" if r.get("real_false_alarms_per_hour") is not None else "-"
        lines.append(f"| {r['setting']} | {r['real_au_fa_fr']:.2e} | {r['real_recall_at_0.1pct_far']:.3f} | "
                     f"{r['real_recall_at_1pct_far']:.3f} | {hits} | {fa} | {r['threshold']:.2f} |")
    return lines


def plot(rows: list, xkey: str, xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = [r[xkey] for r in rows]
    for key, marker, name in (("au_fa_fr", "o", "offline clips"), ("au_fa_fr_streaming", "s", "streaming clips")):
        ax.scatter(xs, [r[key] for r in rows], marker=marker, label=f"AU-FA-FR, {name}")
    placed: list[float] = []
    for r, x in zip(rows, xs):
        k = sum(1 for p in placed if abs(p - x) <= 0.01 * x)  # stack labels of points on one x
        placed.append(x)
        ax.annotate(r["setting"], (x, r["au_fa_fr"]), textcoords="offset points", xytext=(5, 4 + 10 * k), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel + " (log scale)")
    ax.set_ylabel("AU-FA-FR (lower is better)")
    ymax = max(max(r["au_fa_fr"], r["au_fa_fr_streaming"]) for r in rows)
    ax.set_ylim(bottom=0, top=ymax * 1.15 if ymax > 0 else 1e-3)
    lo, hi = min(xs), max(xs)
    ax.set_xlim(lo / 2, hi * 2 if math.isfinite(hi) else None)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"AU-FA-FR vs {xlabel}")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _write(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
