"""Hydra multiruns: each job's result and the sweep summary, the resumable Optuna sampler, the sweep set-up."""
