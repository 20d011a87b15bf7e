"""Acting: exploration schedules, the n-step adder and the Actor that runs a vector of envs."""
