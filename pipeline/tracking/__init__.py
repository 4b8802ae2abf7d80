"""Experiment tracking: MLflow runs (mlflow_run) and the paper's reference numbers."""
