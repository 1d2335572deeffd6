"""Optuna sweeps of MNIST MLPs under wall-clock budgets, tracked in MLflow."""
