"""Save at the signal: a SLURM job that is about to be stopped writes a checkpoint first.

SLURM warns a job before it is stopped: SIGUSR2 some seconds before the time limit or at
preemption (submitit's `--signal=USR2@<signal_delay_s>`), SIGTERM on `scontrol requeue`,
`scancel` and preemption, followed by SIGKILL after the cluster's KillWait (GraceTime for
preemption). A signal handler runs between two bytecodes of the training step, where the
engine's state is half updated and the other ranks are inside collectives, so the handler only
notes the signal; the loop asks `agreed()` after every optimiser step, where all ranks agree
(all-reduce) and save one consistent checkpoint together. Then `hand_over()` passes the signal
on: for SIGUSR2 rank 0 runs submitit's own handler (pickles the `Checkpointable` call, requeues
with `scontrol requeue`, exits); for SIGTERM SLURM is already requeueing or cancelling the job,
so every rank just exits. Either way nothing is returned, so submitit records no result and
the requeued job resumes from the checkpoint written here.

Only installed in SLURM jobs: a local run is stopped through its launcher (pipeline.launch.local).
"""
from __future__ import annotations

import os
import signal
import sys
import time

from .collectives import all_max

WATCHED = (signal.SIGUSR2, signal.SIGTERM)


class Preempted(BaseException):
    """Raised by the loop after the checkpoint at the signal is written. A BaseException, like
    SystemExit: the job is being stopped, not failing, and submitit must not record a result."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} received: checkpoint saved at optimiser step {step}")
        self.signum = signum
        self.step = step


class StopRequests:
    def __init__(self, signals=WATCHED):
        self.received = 0
        self.previous = {s: signal.signal(s, self._note) for s in signals}

    def _note(self, signum, frame) -> None:
        if not self.received:
            self.received = signum
            print(f"{signal.Signals(signum).name} received: saving a checkpoint after this optimiser step",
                  file=sys.stderr, flush=True)

    def agreed(self) -> int:
        """The signal any rank received (0 if none): the same answer on every rank."""
        return all_max(self.received)

    def hand_over(self, signum: int, rank: int) -> None:
        """After the checkpoint: let submitit requeue (USR2) or let SLURM's stop proceed (TERM)."""
        previous = self.previous.get(signum)
        if signum == signal.SIGUSR2 and callable(previous):
            previous(signum, None)  # submitit: rank 0 requeues and exits; other ranks return
            if rank != 0:
                time.sleep(120)  # rank 0's requeue stops this task; do not run on without it
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(128 + signum)


def fit_tracked(fit, tracker, stop: StopRequests | None, log, name: str, rank: int):
    """`fit()`, closing the MLflow run (rank 0's `tracker`, or None) as the run ends otherwise:
    KILLED at a preemption (the requeued job reopens it and resumes) after the signal is handed
    over, FAILED on an error."""
    try:
        return fit()
    except Preempted as stopped:
        if tracker is not None:
            tracker.finish("KILLED")
        log(f"[{name}] rank {rank}: {stopped}")
        stop.hand_over(stopped.signum, rank)
        raise
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
