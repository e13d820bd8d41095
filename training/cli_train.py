"""Model commands of kws-train: teacher, distill, finetune-stream, eval, report."""

from __future__ import annotations

import json
from pathlib import Path

import click


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
REAL_DEFAULT = ""  # a bare --real: training.real.default_real_dir(), ../shared/real next to the repository


def invocation() -> list[str]:
    """The command as typed, canonicalised from click's parsed parameters (every option the
    user gave, none of the defaults), so it is right however the command was invoked."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    parts = ctx.command_path.split()
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        longest = max(param.opts, key=len)
        if param.is_flag:
            if param.secondary_opts and not value:
                parts.append(max(param.secondary_opts, key=len))
            elif value:
                parts.append(longest)
        elif param.multiple:
            for v in value:
                parts += [longest, str(v)]
        elif isinstance(value, (tuple, list)):
            parts += [longest, *map(str, value)]
        elif value is not None:
            parts += [longest, str(value)]
    return parts


def _pair(ctx, param, value):
    if value is None:
        return None
    return tuple(int(v) for v in value)


def data_options(f, required: bool = True):
    f = click.option("--split-seed", type=int, default=None,
                     help="Speaker-disjoint random split with this seed instead of validation_list/testing_list.")(f)
    f = click.option("--keyword", default=None, help="Keyword (default: the checkpoint's, else the corpus's, else 'sheila').")(f)
    f = click.option("--data", "data", required=required, type=click.Path(path_type=Path),
                     help="Speech Commands style folder (e.g. made by `kws-train synth`)."
                     + ("" if required else "  Optional with --real (then only real speech is measured)."))(f)
    return f




def real_options(f, eval_only: bool = False):
    """--real [DIR] and its companions (docs/real_speech.md)."""
    opts = [
        click.option("--real", "real", is_flag=False, flag_value=REAL_DEFAULT, default=None, metavar="[DIR]",
                     help="Also measure on the real-speech dev set: DIR, or ../shared/real next to the repository when "
                          "given without a value (clip AU-FA-FR, recall at 0.1%/1% FAR, real stream hits and FA/h)."),
        click.option("--no-real-stream", is_flag=True, help="With --real: clips only, skip the ~2 h real stream."),
    ]
    if eval_only:
        opts += [
            click.option("--onnx", "onnx", type=click.Path(path_type=Path), default=None,
                         help="Score the real stream with this streaming ONNX export through runtime/detect.py's Detector "
                              "(its kws.threshold unless --threshold; implies --real) instead of the checkpoint in process."),
            click.option("--verifier", type=click.Path(path_type=Path), default=None, metavar="V.onnx",
                         help="Real stream, two-stage (runtime/detect.py --verifier): the --onnx export proposes at "
                              "--trigger, this streaming export (e.g. the embedding teacher's) confirms; adds a "
                              "\"verified\" section (its threshold: kws.threshold, or chosen by --real-max-fa)."),
            click.option("--trigger", type=float, default=None,
                         help="With --verifier: the first stage's candidate probability (default 0.2)."),
            click.option("--patience", type=int, default=None, metavar="N",
                         help="Real stream: a detection needs N steps in a row at or above the threshold (runtime/"
                              "detect.py --patience; default: the ONNX file's kws.patience, else 1)."),
            click.option("--real-max-fa", type=float, default=None, metavar="FA_PER_H",
                         help="Choose the decision threshold on the real stream: the lowest with at most FA_PER_H false "
                              "alarms per hour; every figure (synthetic ones too) is then at that threshold."),
        ]
    for o in opts:
        f = o(f)
    return f


def run_options(f, batch_size: int = 256):
    """Options shared by every training command."""
    opts = [
        click.option("--select-real", "select_real", is_flag=False, flag_value=REAL_DEFAULT, default=None, metavar="[DIR]",
                     help="Keep the epoch with the best clip AU-FA-FR on the real-speech dev set (DIR, or ../shared/real "
                          "next to the repository) instead of the synthetic validation split; the dev set is only scored, "
                          "never trained on."),
        click.option("--select-real-by", "select_real_by", type=click.Choice(["clips", "stream"]), default="clips",
                     show_default=True,
                     help="With --select-real: rank epochs by the real clips' AU-FA-FR, or by the real stream as "
                          "deployed (mean recall at <= 0.5 / 1 / 2 false alarms per hour; ~20 s more per epoch)."),
        click.option("--select-negatives", "select_negatives", type=click.Path(file_okay=False, path_type=Path),
                     default=None, metavar="DIR",
                     help="Keep the epoch that finds the most synthetic validation keywords at the thresholds that keep "
                          "real recordings without the keyword (every .wav / .flac under DIR, at most 2 h of them; "
                          "folders named with a word of the keyword are skipped, so the real dev set serves) at "
                          "<= 0.5 / 1 / 2 false alarms per hour; they are only scored, never trained on."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
        click.option("--setting", default=None,
                     help="Name of this compression setting in reports (e.g. 'KD small'); stored in the metadata."),
        click.option("--val-minutes", type=float, default=10.0, show_default=True,
                     help="Minutes of validation stream used to pick the decision threshold."),
        click.option("--eval-minutes", type=float, default=30.0, show_default=True,
                     help="Minutes of test stream for the final streaming metrics."),
        click.option("--resume", is_flag=True, help="Continue from OUT.state left by an interrupted run."),
        click.option("--stop-after-epochs", type=int, default=None,
                     help="Stop this invocation after N epochs (continue later with --resume)."),
        click.option("--time-box", "time_box", type=float, default=None, metavar="MINUTES",
                     help="Fit the training into MINUTES from the command's start: after the first epoch, the number "
                          "of epochs (at most --epochs) is set from its measured time, and the learning-rate schedule "
                          "is stretched to it; it shrinks if later epochs run slower. The final evaluation comes "
                          "after the box."),
        click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda, cuda:1 ..."),
        click.option("--threads", type=int, default=2, show_default=True, help="torch CPU threads."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True,
                     help="Learning-rate schedule after a one-epoch warm-up."),
        click.option("--epoch-size", type=int, default=None,
                     help="Clips drawn per epoch (default: the size of the train split)."),
        click.option("--keyword-fraction", type=float, default=0.5, show_default=True,
                     help="Share of keyword clips in the balanced sample."),
        click.option("--weight-decay", type=float, default=1e-5, show_default=True),
        click.option("--ema", type=float, default=0.0, show_default=True, metavar="DECAY",
                     help="Validate, keep and save an exponential moving average of the weights with this per-step "
                          "decay (e.g. 0.98; 0: off, the raw weights)."),
        click.option("--batch-size", type=int, default=batch_size, show_default=True),
    ]
    for o in opts:
        f = o(f)
    return f


def augment_options(f):
    """One flag per field of training.augment.AugmentConfig: --noise/--no-noise for switches,
    --aug-NAME for strengths and ranges; --no-augment switches everything off."""
    import dataclasses

    from training.augment import AugmentConfig

    for fld in reversed(dataclasses.fields(AugmentConfig)):
        name = fld.name.replace("_", "-")
        default = fld.default
        dest = "aug_" + fld.name
        if isinstance(default, bool):
            opt = click.option(f"--{name}/--no-{name}", dest, default=default, show_default=True,
                               help=f"Augmentation: {fld.name.replace('_', ' ')}.")
        elif isinstance(default, tuple):
            opt = click.option(f"--aug-{name}", dest, nargs=len(default), type=float, default=default, show_default=True,
                               help=f"Augmentation range: {fld.name.replace('_', ' ')}.")
        else:
            opt = click.option(f"--aug-{name}", dest, type=type(default), default=default, show_default=True,
                               help=f"Augmentation: {fld.name.replace('_', ' ')}.")
        f = opt(f)
    return click.option("--no-augment", is_flag=True, help="Switch every augmentation off.")(f)


def arch_options(defaults: dict):
    def deco(f):
        opts = [
            click.option("--stride", nargs=2, type=int, default=defaults["stride"], show_default=True, callback=_pair,
                         help="Conv stride (mel, time)."),
            click.option("--kernel", nargs=2, type=int, default=defaults["kernel"], show_default=True, callback=_pair,
                         help="Conv kernel (mel, time)."),
            click.option("--gru-layers", type=int, default=defaults["gru_layers"], show_default=True),
            click.option("--hidden", type=int, default=defaults["hidden"], show_default=True),
            click.option("--channels", type=int, default=defaults["channels"], show_default=True),
            click.option("--level-norm-ms", type=click.IntRange(min=0), default=0, show_default=True,
                         help="Subtract a running per-bin log-mel level with this time constant (ms) before the "
                              "conv, so the recording's gain does not reach the network (0: off, the seminar)."),
        ]
        for o in opts:
            f = o(f)
        return f

    return deco


TEACHER_ARCH = {"channels": 8, "hidden": 64, "gru_layers": 2, "kernel": (5, 20), "stride": (2, 8)}
STUDENT_ARCH = {"channels": 4, "hidden": 16, "gru_layers": 1, "kernel": (5, 20), "stride": (4, 8)}


CRNN_DEFAULTS = {"epochs": 60, "lr": 3e-4}


@click.command("teacher", context_settings=CONTEXT)
@data_options
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Checkpoint to write.")
@click.option("--arch", type=click.Choice(["crnn", "embedding"]), default="crnn", show_default=True,
              help="crnn: the seminar CRNN; embedding: Google's frozen speech embedding + a small trained head "
                   "(generalizes from synthetic to real speech; docs/training.md).")
@click.option("--epochs", type=int, default=None, help="crnn: default 60 (the embedding head is solved by L-BFGS: --iterations).")
@click.option("--lr", type=float, default=None, help="crnn: default 3e-4.")
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--views", type=int, default=2, show_default=True,
              help="embedding: augmented 2 s windows per clip, embedded once and cached.")
@click.option("--head-hidden", type=int, default=0, show_default=True,
              help="embedding: hidden units of the head (0: linear; larger heads overfit the synthesizers).")
@click.option("--l2", type=float, default=20.0, show_default=True,
              help="embedding: L2 strength of the head's logistic regression (strong regularisation generalises to real speech).")
@click.option("--iterations", type=int, default=100, show_default=True, help="embedding: L-BFGS iterations of the head.")
@click.option("--negative-weight", type=float, default=5.0, show_default=True,
              help="embedding: weight of the negatives relative to balanced classes (higher: fewer false alarms).")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="embedding: where cached embeddings go (default: DATA/.cache).")
@click.option("--workers", type=int, default=None, help="embedding: processes computing embeddings (default: 2).")
@click.option("--real", "real", is_flag=False, flag_value="", default=None, metavar="[DIR]",
              help="embedding: measure on the real dev set (default ../shared/real) and choose the threshold on its "
                   "stream (scored only, never trained on).")
@click.option("--real-max-fa", type=float, default=0.5, show_default=True, metavar="FA_PER_H",
              help="embedding with --real: the threshold is the lowest keeping the real stream within this many false alarms/h.")
@click.option("--init", "init_path", type=click.Path(path_type=Path), default=None,
              help="Start from this checkpoint's weights (its architecture wins), e.g. to continue on a larger corpus.")
@arch_options(TEACHER_ARCH)
@run_options
@augment_options
def teacher(**kw):
    """Train the teacher: the seminar CRNN (AdamW, balanced sampling, augmentation).

    The best epoch on the validation split is kept in OUT; OUT.state makes the run
    resumable (--resume).  At the end the decision threshold is chosen on validation
    streams and the test split is evaluated into the checkpoint's metadata.

    --arch embedding trains the speech-embedding teacher instead: embeddings of augmented
    windows are computed once and cached, the head trains in seconds.
    """
    argv = invocation()
    if kw["arch"] == "embedding":
        if kw["epochs"] is not None or kw["lr"] is not None:
            raise click.UsageError("--epochs and --lr are for --arch crnn; the embedding head is solved by L-BFGS "
                                   "(--iterations, --l2)")
        if kw["select_real"] is not None or kw["select_negatives"] is not None:
            raise click.UsageError("--select-real and --select-negatives choose a CRNN's epoch; the embedding head is "
                                   "solved to convergence (measure it with --real)")
        from training.embedding_pipeline import run_embedding_teacher

        run_embedding_teacher(kw, argv=argv)
        return
    for k, v in CRNN_DEFAULTS.items():
        if kw[k] is None:
            kw[k] = v
    from training.pipeline import run_teacher

    run_teacher(kw, argv=argv)


@click.command("distill", context_settings=CONTEXT)
@data_options
@click.option("--teacher", "teacher_path", required=True, type=click.Path(path_type=Path),
              help="Teacher checkpoint.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Checkpoint to write.")
@click.option("--epochs", type=int, default=40, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--temperature", type=float, default=2.0, show_default=True, help="Softmax temperature of the soft targets.")
@click.option("--alpha", type=float, default=0.7, show_default=True, help="Weight of the soft-target loss (1-alpha: hard labels).")
@click.option("--attention-kd/--no-attention-kd", default=False, show_default=True,
              help="Also match the teacher's attention distribution over time.")
@click.option("--attention-weight", type=float, default=1.0, show_default=True, help="Weight of the attention KL.")
@click.option("--init", "init_path", type=click.Path(path_type=Path), default=None,
              help="Start from this student checkpoint (its architecture wins) instead of random weights.")
@click.option("--prune", type=float, default=0.0, show_default=True,
              help="Gradual magnitude pruning to this fraction of zero weights (0: off).")
@click.option("--bank-sequences", type=int, default=300, show_default=True,
              help="Embedding teacher: long augmented sequences the teacher scores once (the distillation bank).")
@click.option("--seq-seconds", type=float, default=20.0, show_default=True, help="Embedding teacher: length of each sequence.")
@click.option("--sequences", type=int, default=8, show_default=True, help="Embedding teacher: sequences per training step.")
@click.option("--bank-keyword-prob", type=float, default=0.3, show_default=True,
              help="Embedding teacher: chance that a slot of a bank sequence is a keyword (the rest: words and phrases).")
@click.option("--clip-weight", type=float, default=0.3, show_default=True,
              help="Embedding teacher: weight of the hard clip loss beside the streaming losses.")
@click.option("--kd-similarity", type=float, default=0.0, show_default=True, metavar="WEIGHT",
              help="Embedding teacher: weight of a similarity-preserving loss between the student's GRU output and "
                   "the teacher's embedding at every bank step (0: off).")
@click.option("--prune-epochs", type=int, default=None, help="Epochs to reach the final sparsity (default: half of --epochs).")
@arch_options(STUDENT_ARCH)
@run_options
@augment_options
def distill(**kw):
    """Distil a small student from a teacher (dark knowledge, optional attention KD, pruning)."""
    from training.pipeline import run_distill

    run_distill(kw, argv=invocation())


@click.command("finetune-stream", context_settings=CONTEXT)
@data_options
@click.option("--ckpt", required=True, type=click.Path(path_type=Path), help="Checkpoint to fine-tune.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Checkpoint to write.")
@click.option("--teacher", "teacher_path", type=click.Path(path_type=Path), default=None,
              help="Also distil from this teacher's streaming probabilities.")
@click.option("--epochs", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option("--seq-seconds", type=float, default=20.0, show_default=True, help="Length of each training sequence.")
@click.option("--sequences", type=int, default=8, show_default=True, help="Long sequences per training step.")
@click.option("--steps-per-epoch", type=int, default=50, show_default=True)
@click.option("--clip-weight", type=float, default=0.5, show_default=True,
              help="Weight of the ordinary clip loss (on --batch-size clips per step) kept beside the streaming loss.")
@click.option("--kd-weight", type=float, default=0.5, show_default=True,
              help="With --teacher: weight of matching the teacher's streaming probabilities.")
@lambda f: run_options(f, batch_size=64)
@augment_options
def finetune_stream(**kw):
    """Streaming-aware fine-tuning on long concatenated sequences (GRU never reset).

    Every step of the streaming reference gets a target: 1 while its attention window holds
    a whole keyword, 0 while it holds none of one (steps with part of a keyword are not
    scored).  The ordinary clip loss is kept so that offline quality does not drift.
    """
    from training.pipeline import run_finetune_stream

    run_finetune_stream(kw, argv=invocation())


@click.command("eval", context_settings=CONTEXT)
@click.option("--ckpt", required=True, type=click.Path(path_type=Path))
@lambda f: data_options(f, required=False)
@lambda f: real_options(f, eval_only=True)
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True)
@click.option("--stream-minutes", type=float, default=30.0, show_default=True,
              help="Minutes of long stream (from the same split) for streaming recall / false alarms per hour.")
@click.option("--threshold", type=float, default=None,
              help="Decision threshold (default: the checkpoint's, else chosen on validation streams).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Also write the JSON to this file.")
@click.option("--save-threshold", is_flag=True,
              help="With --real-max-fa: store the chosen threshold (and the real figures, and --patience when "
                   "given) in the checkpoint, so exports carry it as kws.threshold (and kws.patience).")
def eval_cmd(**kw):
    """Evaluate a checkpoint; prints one JSON object (AU-FA-FR offline and streaming, FRR at
    1% FAR, costs, streaming recall and false alarms per hour, threshold).  With --real a
    "real" section: the same kind of figures on real recorded speech (docs/real_speech.md)."""
    from training.pipeline import run_eval

    result = run_eval(kw)
    text = json.dumps(result, indent=1)
    click.echo(text)
    if kw["out"] is not None:
        from kws_export.fileio import atomic_output

        with atomic_output(kw["out"]) as tmp:
            tmp.write_text(text + "\n")


@click.command("report", context_settings=CONTEXT)
@click.option("--ckpt", "ckpts", multiple=True, required=True,
              help="[LABEL=]PATH of a checkpoint; repeat.  The first is the reference (the teacher).")
@data_options
@real_options
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Report folder.")
@click.option("--variants-of", type=click.Path(path_type=Path), default=None,
              help="Add '+ static int8' and '+ fp16' rows for this checkpoint (default: the second --ckpt).")
@click.option("--split", type=click.Choice(["test", "validation"]), default="test", show_default=True)
@click.option("--stream-minutes", type=float, default=30.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
def report(**kw):
    """The course's comparison: a markdown table and Metric-MACs / Metric-Memory plots over
    the given checkpoints and the int8 / fp16 variants of one of them."""
    from training.report import run_report

    run_report(kw)


eval_cmd.name = "eval"
COMMANDS: list = [teacher, distill, finetune_stream, eval_cmd, report]

