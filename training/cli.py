"""``kws-train``: make data, train the teacher, distil students, evaluate, report."""

from __future__ import annotations


import click

from kws_export.cli_support import run_click_and_exit
from training import cli_data, cli_keyword, cli_train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kws-edge")
def cli() -> None:
    """Train kws-edge keyword spotters on CPU (CUDA when available)."""


for _command in (*cli_data.COMMANDS, *cli_train.COMMANDS, *cli_keyword.COMMANDS):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    run_click_and_exit(cli, "kws-train", argv)


if __name__ == "__main__":
    main()
