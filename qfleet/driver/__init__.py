"""The driver (`qfleet train`): placement, supervision, the run record, and the loop that
ties them together (`Fleet`)."""
