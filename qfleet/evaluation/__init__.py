"""Greedy evaluation: the `Evaluator` (`evaluator`) and its Ray wrapper (`worker`)."""
