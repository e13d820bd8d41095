"""Run a click group so that user errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from kws_export import console
from kws_export.console import Terminated
from kws_export.errors import KWSError

__all__ = ["Terminated", "run_click", "run_click_and_exit"]


def run_click(group: click.Group, prog_name: str, argv: list[str] | None = None, *,
              owns_process: bool = False, obj=None) -> int:
    """Return the exit code; never lets a traceback reach the user unless KWS_DEBUG=1.

    SIGTERM while the command runs gives a clean exit 143 (see ``kws_export.console``).
    A caller that owns the process (a CLI's ``main``) keeps the handler installed after
    the command, so a late SIGTERM cannot kill it bare; an in-process caller gets its
    previous handler back.  ``obj`` is the commands' ``click`` context object."""
    previous = None
    try:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)
            console.start()
        return _run(group, prog_name, argv, obj)
    except Terminated:
        print(f"{prog_name}: terminated", file=sys.stderr)
        return console.EXIT_TERMINATED
    finally:
        console.finish()
        if previous is not None and not owns_process:
            signal.signal(signal.SIGTERM, previous)


def run_click_and_exit(group: click.Group, prog_name: str, argv: list[str] | None = None, obj=None) -> None:
    """A CLI's ``main``: run the command and exit with its status, SIGTERM-safe to the end."""
    sys.exit(run_click(group, prog_name, argv, owns_process=True, obj=obj))


def _run(group: click.Group, prog_name: str, argv: list[str] | None, obj=None) -> int:
    try:
        rv = group.main(args=argv, prog_name=prog_name, standalone_mode=False, obj=obj)
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
