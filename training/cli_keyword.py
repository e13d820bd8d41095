"""``kws-train keyword``: any keyword, from its text to a verified, Pi-ready detector."""

from __future__ import annotations

from pathlib import Path

import click

from training.cli_train import CONTEXT


@click.command("keyword", context_settings=CONTEXT)
@click.argument("text")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Folder to create (data/, checkpoints/, exported/, README.md, probability.png).")
@click.option("--minutes", type=float, default=60.0, show_default=True,
              help="Wall-clock budget on a 2-core machine: corpus size, teacher windows and student epochs scale with it.")
@click.option("--student", type=click.Choice(["tiny", "small", "medium"]), default="small", show_default=True,
              help="Student size: tiny (conv 3 ch, GRU 12), small (4 ch, GRU 20: the shipped one), medium (8 ch, GRU 32).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last finished stage.")
@click.option("--real", "real", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Real-speech dev set for figures and the threshold (default: ../shared/real when it exists and "
                   "holds the keyword; only scored, never trained on).")
@click.option("--no-real", is_flag=True, help="Do not measure on real speech even when the dev set is there.")
@click.option("--negatives", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Real recordings that never say the keyword (every .wav / .flac under DIR): both thresholds are chosen "
                   "at <= 0.5 false alarms per hour on them (only scored, never trained on).  Default: the dev set when "
                   "it is there but does not hold the keyword.")
@click.option("--engines", default="auto", show_default=True, metavar="LIST",
              help="Voices of the corpus: comma-separated engines (espeak, flite, piper, hibari), or auto: espeak and "
                   "flite plus Piper and hibari when the [neural] extra is installed.")
@click.option("--kd-similarity", type=float, default=0.0, show_default=True, metavar="WEIGHT",
              help="Student: also keep the similarity structure of the teacher's embedding in the student's GRU output "
                   "(kws-train distill --kd-similarity; 0: off).")
@click.option("--no-progress", is_flag=True, help="No progress bars (the per-stage lines stay).")
@click.option("--sizes", type=click.Choice(["tiny"]), default=None, hidden=True,
              help="Testing preset: every stage runs for real on a tiny corpus and model (seconds).")
def keyword(text: str, out: Path, minutes: float, student: str, resume: bool, real: Path | None, no_real: bool,
            no_progress: bool, sizes: str | None, engines: str, negatives: Path | None, kd_similarity: float) -> None:
    """Train a detector for TEXT (any English word or phrase, e.g. "computer" or "hey nova")
    from synthetic speech only, and export it for a Raspberry Pi.

    Stages: data (synthesize the corpus), teacher (speech embedding), student (streaming
    distillation), thresholds, export (ONNX fp32 / static int8 / int8 weights, offline,
    TorchScript), verify (parity), real (real-speech figures when the dev set holds the
    keyword), demo (a held-out voice through runtime/detect.py, probability.png), card
    (README.md).  An interrupted run continues with --resume; finished stages are kept.
    """
    from click.core import ParameterSource

    from training.keyword import run_keyword

    ctx = click.get_current_context()
    explicit = {n for n in ("minutes", "student", "sizes", "engines", "kd_similarity")
                if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE}
    run_keyword(text, out, minutes, student, resume, progress=not no_progress, sizes=sizes,
                real=str(real) if real is not None else None, no_real=no_real, explicit=explicit, engines=engines,
                negatives=str(negatives) if negatives is not None else None, kd_similarity=kd_similarity)


COMMANDS = [keyword]
