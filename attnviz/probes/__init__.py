"""Probes: context managers that attach hooks to a model on entry and remove them on exit."""
