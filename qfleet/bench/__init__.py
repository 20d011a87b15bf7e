"""`qfleet bench`: each figure we publish, next to its limit measured in the same run.

Benchmarks, not tests: they print numbers and never assert. One module per benchmark,
each with `run(...) -> dict` and `describe(result) -> list[str]`; `qfleet.bench.cli` makes
each one a subcommand with only the options it takes.
"""
