"""Everything a run writes and reads back, in one place: checkpoint and replay files
(`checkpoints`), the run directory on a local disk or a storage URI (`storage`), the run
record that decides when to save and why the run ended (`record`), and how the replay's
components turn their tensors into saved state (`tensors`)."""
