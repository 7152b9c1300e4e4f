"""Reading results back: predictions and the evaluation report, its plots, run logs and the curves command."""
