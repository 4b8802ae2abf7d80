"""A real MLflow tracking server on loopback for the tests that log to one: started the way a team
starts it (python -m pipeline.tracking.server), on a free port, stopped with the test."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from pipeline.tracking.server import READY

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(root: Path, timeout_s: float = 180):
    """Yields the server's URI once it answers; its store and artifacts live under `root`."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.tracking.server", "--port", str(free_port()),
                             "--root", str(root), "--workers", "1", "--timeout-s", str(timeout_s)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # the wrapper exits (closing stdout) if the server fails to start
            lines.append(line)
            if line.startswith(READY):
                break
        else:
            raise AssertionError("the MLflow server did not start:\n" + "".join(lines[-30:]))
        yield line.strip().removeprefix(READY)
    finally:
        proc.send_signal(signal.SIGTERM)  # the wrapper stops the server and its workers
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
