"""Attention kinds, one module each, registered by name (importing this package registers them)."""
from attnviz.kinds.base import KINDS, Batch, Kind, get_kinds, register_kind
from attnviz.results import Options
from attnviz.kinds import channel, spatial, mixed_serial, mixed_parallel, self_attention, cross  # noqa: F401,E501  (registration)
from attnviz.kinds import self_gae, self_legrad, gradcam, cross_gae, cross_legrad  # noqa: F401,E402  (registration, opt-in)

__all__ = ["KINDS", "Batch", "Kind", "Options", "get_kinds", "register_kind"]
