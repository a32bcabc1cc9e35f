"""Child-process plumbing shared by the local stack's servers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when its parent dies.

    Children run in their own session so a Ctrl-C reaches only the parent,
    which then stops them in order; without this, a parent killed outright
    (SIGKILL, a crashed test run) would leave PostgreSQL or SeaweedFS running
    and holding ports and data directories.
    """
    if not sys.platform.startswith("linux"):
        return None

    def _set() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return _set


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a child's log, for one-line start-up errors."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send a signal to a child's whole process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def stop_child(process: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Ask a child to stop, then kill its group if it does not within timeout."""
    if process.poll() is not None:
        return
    signal_group(process, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        process.wait(timeout)
