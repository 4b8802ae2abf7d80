"""An MLflow tracking server for a team or a cluster: `mlflow server` with a database backend store
and proxied artifacts, so that the stages of many jobs on many nodes log to one place over HTTP.

On one machine the stages' default store, a SQLite file at the repo root (`mlflow.db`, read by a
plain `mlflow ui`), is the right one. On a cluster it is not: SQLite's file locks are unreliable on
network file systems (NFS, Lustre), and every running stage would write the one file. Start this
server on a host the compute nodes reach (a login or service node), then export the URI it prints
before `dvc repro` / `python -m pipeline.launch` (pipeline.tracking.mlflow_run reads
MLFLOW_TRACKING_URI; sbatch hands the environment to the jobs):

    python -m pipeline.tracking.server                                  # 127.0.0.1:5000, store in ./mlflow-server/
    python -m pipeline.tracking.server --host 0.0.0.0 --root /shared/mlflow
    python -m pipeline.tracking.server --host 0.0.0.0 --backend-store-uri postgresql://mlflow@db/mlflow
    export MLFLOW_TRACKING_URI=http://<host>:5000                      # the line it prints when ready

Artifacts are proxied (`--serve-artifacts`, stored under `<root>/artifacts`): clients upload them
to the server over HTTP, so ranks on other nodes need no mount of the artifact store. The server
runs in the foreground until Ctrl-C or SIGTERM, which stop it and its workers.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")
READY = "export MLFLOW_TRACKING_URI="  # the line a script or test waits for


def url_host(host: str) -> str:
    """The name clients use to reach a server bound to `host`: this machine's name for a wildcard
    address, else the address itself."""
    if host in ("0.0.0.0", "::", ""):
        return socket.getfqdn()
    return f"[{host}]" if ":" in host else host


def allowed_hosts(host: str) -> str | None:
    """MLflow (3.5 on) answers only requests whose Host header is localhost or a private address
    (its guard against DNS rebinding). Bound beyond loopback, it must also accept this machine's
    names, which the compute nodes put in the header; None keeps MLflow's default."""
    if host in LOOPBACK:
        return None
    try:
        from mlflow.server.security_utils import get_default_allowed_hosts
    except ImportError:  # an MLflow without the check
        return None
    names = {socket.gethostname(), socket.getfqdn(), url_host(host)}
    return ",".join(get_default_allowed_hosts() + sorted(f"{n}{port}" for n in names for port in ("", ":*")))


def server_command(host: str, port: int, root: Path, backend_store_uri: str | None, workers: int) -> list[str]:
    backend = backend_store_uri or f"sqlite:///{root.resolve() / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--serve-artifacts",
           "--artifacts-destination", str((root / "artifacts").resolve()), "--host", host, "--port", str(port),
           "--workers", str(workers)]
    hosts = allowed_hosts(host)
    return cmd + (["--allowed-hosts", hosts] if hosts else [])


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until the server answers /health; fails if it exits first or takes longer than timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode} before it served {url} "
                               "(its output is above; is the port taken?)")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"mlflow server did not answer {url}/health within {timeout_s:.0f} s")
        time.sleep(0.5)


def serve(host: str, port: int, root: Path, backend_store_uri: str | None, workers: int, timeout_s: float) -> int:
    """Run the server until a signal; returns its exit status."""
    root.mkdir(parents=True, exist_ok=True)
    # MLflow 3 also starts its GenAI job runner (seven huey consumer processes: trace scoring and
    # archival) that training runs never use; off unless the user turned it on in the environment
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    # its own session: on exit we stop the whole group (mlflow starts uvicorn workers beneath it)
    proc = subprocess.Popen(server_command(host, port, root, backend_store_uri, workers), env=env,
                            start_new_session=True)
    stopped = []

    def stop(signum, _frame):
        stopped.append(signum)
        os.killpg(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    probe = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host, url_host(host))  # from here
    try:
        wait_healthy(f"http://{probe}:{port}", proc, timeout_s)
        store = backend_store_uri or f"sqlite:///{(root / 'mlflow.db').resolve()}"
        print(f"MLflow server ready: backend {store}, artifacts proxied to {(root / 'artifacts').resolve()}\n"
              f"{READY}http://{url_host(host)}:{port}", flush=True)
        status = proc.wait()
        return 0 if stopped else status
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface, for a cluster)")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--root", type=Path, default=Path("mlflow-server"),
                    help="holds the SQLite store (mlflow.db) and the artifacts; shared storage on a cluster")
    ap.add_argument("--backend-store-uri", help="a database instead of <root>/mlflow.db, e.g. postgresql://...")
    ap.add_argument("--workers", type=int, default=4, help="server processes (MLflow's default 4)")
    ap.add_argument("--timeout-s", type=float, default=120, help="how long to wait for the server to answer")
    args = ap.parse_args(argv)
    return serve(args.host, args.port, args.root, args.backend_store_uri, args.workers, args.timeout_s)


if __name__ == "__main__":
    raise SystemExit(main())
