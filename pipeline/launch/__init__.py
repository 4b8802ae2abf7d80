"""Launching work through submitit: the local executor here; SLURM profiles join it later."""
