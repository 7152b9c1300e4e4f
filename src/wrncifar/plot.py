"""`python -m wrncifar.plot <run_dir | multirun_dir>`: the training-curves command, kept under this spelling
(`wrncifar-plot` after `pip install -e .`); the code is `wrncifar.analysis.plot`."""

from wrncifar.analysis.plot import main

if __name__ == "__main__":
    main()
