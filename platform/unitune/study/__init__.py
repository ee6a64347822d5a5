"""``unitune study``: loss families compared on one budget, over seeds, with intervals.

stats.py    pure statistics (intervals, paired differences, verdicts)
plan.py     the study from a job: families, seeds, metric; refuses bad input early
runner.py   searches, final runs, resume (Ray Tune/Train and MLflow)
report.py   study.md, study.csv and the plots, from the study's MLflow runs
command.py  the CLI command
"""
