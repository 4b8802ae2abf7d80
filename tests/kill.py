"""Kill a process at a chosen moment: the resume tests' way of interrupting a run."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def wait_for(victim: subprocess.Popen, marker: Path, timeout_s: float) -> None:
    """Return as soon as `marker` exists; fail if `victim` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        assert victim.poll() is None, victim.stdout.read() if victim.stdout else victim.returncode
        assert time.monotonic() < deadline, f"{marker} did not appear within {timeout_s} s"
        time.sleep(0.05)


def sigkill_once_exists(victim: subprocess.Popen, marker: Path, timeout_s: float, group: bool = False) -> None:
    """SIGKILL `victim` (with `group`, its whole process group: start it with
    start_new_session=True) as soon as `marker` exists; fail if it exits first or time runs out."""
    wait_for(victim, marker, timeout_s)
    if group:
        os.killpg(victim.pid, signal.SIGKILL)
    else:
        victim.send_signal(signal.SIGKILL)
    victim.wait()
