"""Errors with a one-line message meant for the user."""
from __future__ import annotations


class AttnvizError(Exception):
    """A usage or setup problem: the whole run cannot go on (exit code 2)."""


class ImageError(Exception):
    """One input could not be used; the rest of the batch goes on (exit code 1)."""
