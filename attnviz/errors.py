"""Errors with a one-line message meant for the user, and the rule that makes a message one line."""
from __future__ import annotations

__all__ = ["AttnvizError", "ImageError", "one_line"]


class AttnvizError(Exception):
    """A usage or setup problem: the whole run cannot go on (exit code 2)."""


class ImageError(Exception):
    """One input could not be used; the rest of the batch goes on (exit code 1)."""


def one_line(e: BaseException | str, limit: int = 300) -> str:
    """A message on one line: whitespace collapsed, capped at `limit` characters (the type name if empty)."""
    text = " ".join((e if isinstance(e, str) else str(e)).split())
    if not text and not isinstance(e, str):
        text = type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
