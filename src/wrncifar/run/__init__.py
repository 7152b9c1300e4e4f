"""Running a job from a composed Hydra config: the only layer that imports Hydra besides `sweeps`.

`entry.run` wraps both entry points and `command_line` prepares their `sys.argv`; `fit_and_test` orchestrates a
training run, `evaluation` an evaluation. `config_validation`, `resuming`, `checkpoints`, `loggers`, `tracking`,
`distributed`, `folder_lock`, `run_folder` (a Hydra callback: the run folder must be writable), `trusted_targets`
and `extras` serve them.
"""
