"""Hyperparameter sweeps on Ray Tune: sweep files (`space`), the trial (`trial`), the run
(`tuner`) and what it leaves (`results`)."""
