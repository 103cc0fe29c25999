"""Probes: read features, gates and attention during a forward pass, without changing it."""
from attnviz.probes.capture import Capture, capture

__all__ = ["Capture", "capture"]
