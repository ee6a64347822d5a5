"""Ray Tune search: space -> Optuna define-by-run, trials, driver, convergence speed."""
