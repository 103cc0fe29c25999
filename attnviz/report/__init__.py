"""Reports: atomic file writing, per-image outputs and the run manifest."""
