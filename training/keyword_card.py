"""The model card ``DIR/README.md`` of a ``kws-train keyword`` run, from what its stages wrote."""

from __future__ import annotations

import json
from pathlib import Path


def _fmt(x, spec: str = ".3g") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def model_card(run) -> str:
    from kws_export.checkpoint import load_checkpoint
    from training import macs

    out: Path = run.out
    state = run.state
    stages = state["stages"]
    synth = _read(out / "data" / "synth.json")
    teacher = load_checkpoint(run.ckpt("teacher"))
    student = load_checkpoint(run.ckpt("student"))
    tm, sm = teacher.metadata, student.metadata
    model = student.build_model()
    cfg = model.config
    costs = macs.model_costs(model)
    thresholds = _read(out / "thresholds.json")
    verify = _read(out / "verify.json").get("summary", {})
    real = _read(out / "real.json")
    demo = _read(out / "demo.json")
    ex = out / "exported"
    kw = run.keyword
    plan = run.plan
    clips = synth.get("clips", {})
    phr = synth.get("phrases", {})
    L: list[str] = []
    a = L.append
    a(f"# Keyword spotter for \"{kw}\"\n")
    a(f"Made by `{state['command']}` on {state.get('created', '')[:10]} in "
      f"{state.get('elapsed_s', 0) / 60:.1f} min of a {plan.minutes:g} min budget"
      + (f" (test-size preset `--sizes {plan.preset}`)" if plan.preset else "") + ".  No recorded speech was "
      "used for training: every clip is synthetic.\n")
    a("## Run it on a Raspberry Pi\n")
    a("```bash\npip install numpy onnxruntime\n"
      f"scp {out}/exported/student.stream.int8w.onnx runtime/detect.py pi@raspberrypi.local:\n"
      "arecord -q -f S16_LE -r 16000 -c 1 -t raw | python detect.py --model student.stream.int8w.onnx -\n"
      "python detect.py --model student.stream.int8w.onnx recording.wav       # a file instead\n```\n")
    a("Two-stage, the teacher's quality for a fraction of its cost (the student proposes at probability 0.2, the "
      "teacher's export, 2.4 MB, confirms; it runs only on the student's candidates):\n")
    pair = thresholds.get("two_stage") or {}
    pair_t = pair.get("verifier_threshold")
    a("```bash\n"
      f"scp {out}/exported/teacher.stream.onnx pi@raspberrypi.local:\n"
      "arecord -q -f S16_LE -r 16000 -c 1 -t raw | python detect.py --model student.stream.int8w.onnx "
      "--verifier teacher.stream.onnx" + (f" --verifier-threshold {pair_t:.2f}" if pair_t is not None else "") + " -\n```\n")
    if pair_t is not None:
        a(f"(`--verifier-threshold {pair_t:.2f}`: chosen for the pair on real speech, {pair['source']}; "
          "without it the teacher's own threshold applies.)\n")
    a(f"The file carries its keyword ({kw!r}) and threshold ({sm['threshold']:.3f}) in its metadata; "
      "`--threshold T` overrides the threshold (higher: fewer false alarms, more misses).  "
      "More in the project's docs/runtime.md.\n")
    a("## Data\n")
    eng = ", ".join(synth.get("engines", []))
    a(f"`DIR/data/`: {sum(clips.values()):,} one-second clips ({clips.get('train', 0):,} train / "
      f"{clips.get('validation', 0):,} validation / {clips.get('test', 0):,} test, voice-disjoint) from {eng}: "
      f"{synth.get('keyword_count')} of the keyword, {synth.get('per_word')} per negative word "
      f"({len(synth.get('negatives', []))} Speech Commands words and {len(synth.get('confusables', []))} confusables "
      f"derived from the keyword: {', '.join(synth.get('confusables', [])[:10])}"
      + (" ..." if len(synth.get("confusables", [])) > 10 else "") + "); "
      f"{phr.get('count', 0):,} multi-word phrases of {phr.get('seconds', 2)} s in `_phrases_/` "
      f"(half of them phonetically close to the keyword); {len(synth.get('noises', []))} background noises of "
      f"{synth.get('noise_seconds')} s.  Voices used: {synth.get('voices_used')}.\n")
    a("## Commands\n")
    a("What each stage ran (DIR is this folder):\n")
    a("```bash")
    for name in ("data", "teacher", "student"):
        argv = stages.get(name, {}).get("argv")
        if argv:
            a(" ".join(_quote(x) for x in argv))
    a("kws-export onnx --ckpt DIR/checkpoints/student.pt -o DIR/exported/student.stream.onnx --streaming")
    a("kws-export onnx --ckpt DIR/checkpoints/student.pt -o DIR/exported/student.stream.int8.onnx --streaming --int8")
    a("kws-export onnx --ckpt DIR/checkpoints/student.pt -o DIR/exported/student.stream.int8w.onnx --streaming --int8 "
      "--int8-mode weights --chunk-ms 320")
    a("kws-export onnx --ckpt DIR/checkpoints/student.pt -o DIR/exported/student.onnx")
    a("kws-export torchscript --ckpt DIR/checkpoints/student.pt -o DIR/exported/student.ts")
    a("kws-export onnx --ckpt DIR/checkpoints/teacher.pt -o DIR/exported/teacher.stream.onnx --streaming")
    a("kws-export verify --ckpt DIR/checkpoints/student.pt --onnx DIR/exported/student.stream.onnx --ts DIR/exported/student.ts")
    a("kws-export verify --ckpt DIR/checkpoints/teacher.pt --onnx DIR/exported/teacher.stream.onnx")
    a("```\n")
    a("The teacher is the frozen speech embedding with a trained head: it exports as an fp32 streaming step only.  "
      "Its mel graph normalises over its whole input, so a batched offline graph (and TorchScript) would change "
      "its features, and rounding its frozen conv weights to int8 moves its probability by up to 0.4: "
      "`teacher.onnx`, `teacher.stream.int8*.onnx` and `teacher.ts` are absent by design.\n")
    a("## Files\n")
    a("| file | what | size |\n|---|---|---:|")
    rows = [("checkpoints/teacher.pt", "embedding teacher (checkpoint)"), ("checkpoints/student.pt", "CRNN student (checkpoint)"),
            ("exported/student.stream.int8w.onnx", "**the Pi file**: int8 weights, 4 steps (320 ms) per call"),
            ("exported/student.stream.int8.onnx", "static int8 streaming step (calibrated on synthesized speech)"),
            ("exported/student.stream.onnx", "fp32 streaming step"), ("exported/student.onnx", "offline clip model"),
            ("exported/student.ts", "TorchScript (the course's stream.py)"),
            ("exported/teacher.stream.onnx", "teacher, fp32 streaming step"),
            ("probability.png", "the demo stream's keyword probability"), ("demo.wav", "the demo stream"),
            ("verify.json", "parity report"), ("thresholds.json", "the thresholds and where they come from")]
    for rel, what in rows:
        p = out / rel
        size = f"{p.stat().st_size / 1024:.1f} KB" if p.is_file() else "-"
        a(f"| `{rel}` | {what} | {size} |")
    a("")
    a("## Student\n")
    a(f"CRNN: conv {cfg.channels} channels kernel {tuple(cfg.kernel)} stride {tuple(cfg.stride)}, GRU {cfg.hidden} x "
      f"{cfg.gru_layers} layer, attention over a {cfg.window_ms} ms window "
      f"({'the test preset' if plan.preset else f'`--student {plan.student}`'}).  {costs['params']:,} parameters, {costs['macs_per_second_network']:,.0f} network "
      f"MACs per second of audio (+ {costs['macs_per_second_frontend']:,.0f} for the log-mel frontend), "
      f"{costs['int8_bytes']:,} bytes of int8 weights.\n")
    trained = sm.get("training") or {}
    best = trained.get("best") or {}
    a(f"Epoch kept: {best.get('epoch', 'n/a')} of {len(trained.get('history') or [])}, by the "
      f"{(trained.get('objective') or {}).get('select') or 'synthetic validation (1 - stream event F1 + mean of the clip and stream AU-FA-FR)'}.\n")
    a("## Synthetic test figures\n")
    a("Voice-disjoint test split of `DIR/data` (voices never heard in training).\n")
    a("| model | clips | AU-FA-FR (clips) | FRR @ 1% FAR | AU-FA-FR (streaming) | stream recall | false alarms / h | threshold |")
    a("|---|---:|---:|---:|---:|---:|---:|---:|")
    tt = (tm.get("metrics") or {}).get("test", {})
    a(f"| teacher (embedding) | {tt.get('clips', 'n/a')} | {_fmt(tt.get('au_fa_fr'))} | {_pct(tt.get('frr_at_1pct_far'))} "
      f"| not measured | not measured | not measured | {tm.get('threshold', 0):.3f} |")
    st = sm.get("metrics") or {}
    a(f"| student ({plan.student}) | {st.get('clips', 'n/a')} | {_fmt(st.get('au_fa_fr'))} | {_pct(st.get('frr_at_1pct_far'))} "
      f"| {_fmt(st.get('au_fa_fr_streaming'))} | {_fmt(st.get('streaming_recall'))} | "
      f"{_fmt(st.get('false_alarms_per_hour'))} | {st.get('threshold', 0):.3f} |")
    a("")
    a(f"Student stream figures on {plan.eval_minutes:g} min of test-voice stream at the student's synthetic threshold; "
      "the teacher's are clip figures (its threshold: lowest accepting at most 0.1% of the validation negatives).\n")
    a("## Thresholds\n")
    for name in ("teacher", "student"):
        t = thresholds.get(name, {})
        a(f"- {name}: **{_fmt(t.get('threshold'), '.3f')}** ({t.get('source')})" +
          (f"; {t['real_stream']}" if t.get("real_stream") else ""))
    if pair:
        a(f"- two-stage verifier: **{_fmt(pair.get('verifier_threshold'), '.3f')}** "
          f"({pair.get('source') or pair.get('note')})")
    a(f"\nThe exported files carry the student's threshold as `kws.threshold`.\n")
    a("## Real speech\n")
    if real.get("measured"):
        r = real["student"]
        c, s = r.get("clips", {}), r.get("stream", {})
        at = s.get("at_threshold", {})
        a(f"Measured on the real dev set ({real['dir']}; only scored, never trained on) through "
          f"`{real['model']}` at its threshold {_fmt(r.get('threshold'), '.3f')}:\n")
        a("| clips | keyword clips | AU-FA-FR | recall @ 0.1% FAR | recall @ 1% FAR | stream hours | stream hits | FA / h |")
        a("|---:|---:|---:|---:|---:|---:|---:|---:|")
        a(f"| {c.get('clips')} | {c.get('keyword_clips')} | {_fmt(c.get('au_fa_fr'))} | {_fmt(c.get('recall_at_0.1pct_far'))} "
          f"| {_fmt(c.get('recall_at_1pct_far'))} | {_fmt(s.get('hours'))} | {at.get('hits')}/{at.get('keywords')} "
          f"| {_fmt(at.get('false_alarms_per_hour'))} |\n")
        v = real.get("verified") or {}
        if v.get("at_threshold"):
            vt = v["at_threshold"]
            a(f"Two-stage on the same stream (`detect.py --verifier`: the student proposes at {v['trigger']:g}, "
              f"`{v['verifier']}` confirms at {_fmt(vt.get('threshold'), '.3f')}, {v.get('threshold_source')}): "
              f"**{vt['hits']}/{vt['keywords']} "
              f"hits at {_fmt(vt.get('false_alarms_per_hour'))} false alarms per hour**; the teacher was replayed "
              f"{vt.get('verifications_per_hour', 0):.0f} times per hour of this wall-to-wall speech, "
              f"{100 * vt.get('verifier_step_share', 0):.1f}% of the steps it would run alone.\n")
            a("| two-stage, at most FA / h | verifier threshold | hits |\n|---:|---:|---:|")
            for row in v.get("sweep", []):
                a(f"| {row['max_false_alarms_per_hour']:g} | {_fmt(row.get('threshold'), '.3f')} | "
                  f"{row.get('hits')}/{v.get('keywords')} |")
            a("")
    else:
        a(f"Not measured: {real.get('reason', 'no real-speech dev set')}.  (The lead's real-speech dev set is only "
          "used where it holds the keyword; `kws-train eval --ckpt checkpoints/student.pt --real DIR` measures "
          "against any other.)\n")
    a("## Parity (kws-export verify)\n")
    for name, v in verify.items():
        worst = ", ".join(f"{k}: {p['max_abs_diff']:.2g}" for k, p in v["pairs"].items())
        status = "ok" if v["ok"] else "FAILED"
        a(f"- {name}: {status} (max |Δp|: {worst})")
    a("")
    a("## Demo\n")
    if demo:
        det = ", ".join(f"{e['time']:.2f} s (p {e['prob']:.2f})" for e in demo.get("detections", [])) or "none"
        a(f"`demo.wav` ({demo['seconds']} s): speech, the keyword at {demo['keyword_at_s'][0]}-{demo['keyword_at_s'][1]} s, "
          f"speech, by voices of the test split (held out of training).  Detections: {det}; keyword "
          f"{'detected' if demo['keyword_detected'] else 'missed'}, {demo['false_alarms']} false alarm(s).\n")
        a("![probability](probability.png)\n")
        a(f"`{demo['command']}`\n")
    a("## Stage times\n")
    a("| stage | seconds |\n|---|---:|")
    for name, rec in stages.items():
        a(f"| {name} | {rec.get('seconds', 0):.0f} |")
    a("")
    return "\n".join(L) + "\n"


def _quote(x: str) -> str:
    import shlex

    return shlex.quote(str(x))
