"""Launching work through submitit: local processes or SLURM jobs (profiles: pipeline/slurm_profiles.py),
and the `python -m pipeline.launch` command (submit, or --plan)."""
