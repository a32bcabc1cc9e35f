"""Child-process plumbing shared by the local stack's servers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

# Runs in the child before the real program, instead of a preexec_fn: a
# preexec_fn runs Python between fork and exec in a process that has gRPC and
# asyncio threads, which can deadlock. PR_SET_PDEATHSIG survives exec, so the
# program gets SIGTERM when the parent dies without stopping it (SIGKILL, a
# crashed test run) instead of being left holding its ports and data. The
# kernel clears that setting on a change of user, so the shim switches user
# (PostgreSQL refuses to run as root) before setting it.
_PDEATHSIG_SHIM = """\
import ctypes, os, pwd, signal, sys
parent, user, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
if user:
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    sys.exit("parent died before the child could watch it")
os.execv(argv[0], argv)
"""


def dying_with_parent(args: list[str], *, user: str | None = None) -> list[str]:
    """The command line that runs `args` (as `user`) and ends it when we die.

    Children run in their own session so a Ctrl-C reaches only the parent,
    which then stops them in order; this covers the parent dying without
    doing so. Linux signals the child when the *thread* that started it
    exits, so start children from the main thread.
    """
    if not sys.platform.startswith("linux"):
        if user is not None:
            raise RuntimeError("running a child as another user needs Linux")
        return args
    return [
        sys.executable, "-I", "-S", "-c", _PDEATHSIG_SHIM, str(os.getpid()), user or "", *args
    ]  # fmt: skip


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
