"""Running a job from a composed Hydra config: the only layer that imports Hydra besides `sweeps`.

`entry.run` wraps both entry points; `fit_and_test` orchestrates a training run, `evaluation` an evaluation;
`config_validation`, `resuming`, `checkpoints`, `tracking`, `distributed` and `extras` serve them.
"""
