"""Console-script entry points: SIGTERM is handled from the first line a CLI runs.

Nothing heavy is imported here, so the handler is in place before torch and the command
modules load (the interpreter's own start-up, a few tens of milliseconds, is the only
window left).  The handler turns the first SIGTERM into ``Terminated`` while a command is
running, so atomic writes and temporary folders are cleaned up on the way out (exit 143);
once the command has finished, its output is complete (or already cleaned up) and a late
SIGTERM changes nothing: the process exits with the command's own status.  The handler is
never swapped back to the default while the process lives, so there is no moment in which
SIGTERM kills it bare (-15).
"""

from __future__ import annotations

import importlib
import signal
import sys

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that cleanup runs on the way out."""


class _Phase:
    running = False  # True while a command runs: the next SIGTERM raises Terminated, once


def _on_sigterm(signum, frame):
    if _Phase.running:
        _Phase.running = False  # a second SIGTERM must not interrupt the cleanup of the first
        raise Terminated()


def start() -> None:
    """Install the handler; SIGTERM raises Terminated from now until ``finish``."""
    _Phase.running = True
    signal.signal(signal.SIGTERM, _on_sigterm)


def finish() -> None:
    """The command is over: later SIGTERMs are ignored by the (still installed) handler."""
    _Phase.running = False


def console(module: str, prog_name: str) -> None:
    """Run ``module.main()`` with SIGTERM handled before the module (and torch) is imported."""
    start()
    try:
        main = importlib.import_module(module).main
    except Terminated:
        print(f"{prog_name}: terminated", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
    main()


def kws_export() -> None:
    console("kws_export.cli", "kws-export")
