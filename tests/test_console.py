"""SIGTERM from the first line a CLI runs until it exits: a clean 143, or the command's own
status once it has finished, never a bare -15 (kws_export.console)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import ROOT, venv_bin
from kws_export import console
from kws_export.cli import cli
from kws_export.cli_support import run_click


def sigterm_caught(pid: int) -> bool:
    """True once the process has a SIGTERM handler (bit 15 of SigCgt in /proc/PID/status)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False
    line = next(ln for ln in status.splitlines() if ln.startswith("SigCgt:"))
    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to see when the handler is installed")
@pytest.mark.parametrize("script", ["kws-export", "kws-train"])
def test_sigterm_during_start_up_is_a_clean_143(script):
    """The console script handles SIGTERM before torch is imported: killing it the moment
    its handler is in place (it is still importing) exits 143 with one line."""
    proc = subprocess.Popen([str(venv_bin(script)), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not sigterm_caught(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, err)
    assert err == f"{script}: terminated\n" and out == ""


def test_sigterm_after_the_command_changes_nothing():
    """Once the command is over, a late SIGTERM is ignored by the still-installed handler
    (a caller that owns the process exits with the command's status)."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert run_click(cli, "kws-export", ["--help"], owns_process=True) == 0
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGTERM)  # delivered and handled before kill returns
        time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_in_process_caller_gets_its_handler_back():
    previous = signal.getsignal(signal.SIGTERM)
    assert run_click(cli, "kws-export", ["--help"]) == 0
    assert signal.getsignal(signal.SIGTERM) is previous


def test_sigterm_while_running_raises_terminated_once():
    previous = signal.getsignal(signal.SIGTERM)
    console.start()
    try:
        with pytest.raises(console.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # during cleanup: ignored
        time.sleep(0.01)
    finally:
        console.finish()
        signal.signal(signal.SIGTERM, previous)
