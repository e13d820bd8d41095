"""Run a click group so that user errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from kws_export.errors import KWSError


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that atomic writes and temporary folders
    are cleaned up on the way out (the default action would leave them behind)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def run_click(group: click.Group, prog_name: str, argv: list[str] | None = None) -> int:
    """Return the exit code; never lets a traceback reach the user unless KWS_DEBUG=1."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(group, prog_name, argv)
    except Terminated:
        print(f"{prog_name}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(group: click.Group, prog_name: str, argv: list[str] | None) -> int:
    try:
        rv = group.main(args=argv, prog_name=prog_name, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        print(f"{prog_name}: aborted", file=sys.stderr)
        return 130
    except click.UsageError as exc:  # a bad option or value: one line too, and where to look
        where = exc.ctx.command_path if exc.ctx is not None else prog_name
        print(f"{prog_name}: error: {exc.format_message()} (see `{where} --help`)", file=sys.stderr)
        return exc.exit_code
    except click.ClickException as exc:
        print(f"{prog_name}: error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except KWSError as exc:
        print(f"{prog_name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog_name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line, details on request
        if os.environ.get("KWS_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"{prog_name}: internal error: {type(exc).__name__}: {first} (set KWS_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
