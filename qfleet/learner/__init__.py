"""Learning: the Bellman loss, the replay and the Learner that owns the optimizer."""
