"""The one `--weights` grammar every family shares, and the safe state_dict loader."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from attnviz.errors import AttnvizError, one_line

__all__ = ["WeightsSpec", "load_state_dict_file", "warn_random", "check_input_size", "RANDOM_NOTE"]

RANDOM_NOTE = "random weights (--weights none): the maps mean nothing"


@dataclass(frozen=True)
class WeightsSpec:
    """What `--weights` asked for: the family's default, random init, a file, or a family's own tag."""

    kind: Literal["default", "none", "file", "tag"]
    value: str = ""               # the file path or the tag, as given

    @classmethod
    def parse(cls, spec: str | WeightsSpec) -> WeightsSpec:
        """`DEFAULT` / `none` (any case), an existing FILE, else a tag for the family to resolve."""
        if isinstance(spec, WeightsSpec):
            return spec
        spec = str(spec).strip()
        if spec.lower() == "none":
            return cls("none")
        if spec.upper() == "DEFAULT" or not spec:
            return cls("default")
        if Path(spec).expanduser().is_file():
            return cls("file", str(Path(spec).expanduser()))
        return cls("tag", spec)

    @property
    def path(self) -> Path:
        """The weights file (kind "file" only)."""
        return Path(self.value)

    @property
    def pretrained(self) -> bool:
        """False for random init."""
        return self.kind != "none"

    def no_tags(self, family: str) -> None:
        """Refuse a tag for a family that takes DEFAULT, a FILE or none only."""
        if self.kind == "tag":
            raise AttnvizError(f"--weights {self.value!r}: no such file ({family} takes DEFAULT, a FILE or none)")


def warn_random(name: str) -> None:
    """The one warning of a random-init backbone."""
    warnings.warn(f"{name}: {RANDOM_NOTE}", stacklevel=3)


def check_input_size(name: str, asked: int | None, own: int) -> int:
    """A model that takes one input size only: refuse any other --input-size."""
    if asked not in (None, own):
        raise AttnvizError(f"{name} takes {own}px inputs only; drop --input-size")
    return own


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from FILE, never executing pickled code (weights_only=True).

    `module.` prefixes (DataParallel) are dropped and `{"state_dict"|"model"|"model_state_dict": …}`
    checkpoint wrappers unwrapped; anything that is not a non-empty dict of tensors is refused.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types for a bad file)
        first = one_line(e)
        if "weights_only" in str(e):      # torch suggests weights_only=False: unsafe, never offer it
            first = "it holds pickled objects, not only tensors; save model.state_dict() instead"
        raise AttnvizError(f"--weights {path}: not a loadable state_dict ({first})") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise AttnvizError(f"--weights {path}: expected a state_dict (a non-empty dict of tensors), "
                           f"got {'an empty dict' if isinstance(sd, dict) else type(sd).__name__}")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise AttnvizError(f"--weights {path}: expected a state_dict; entry {str(bad[0])[:60]!r} is not a tensor")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_into(model: torch.nn.Module, path: Path, name: str, sd: dict[str, torch.Tensor] | None = None) -> None:
    """Load a state_dict FILE into `model` strictly (`sd`: the file's, when already read); a mismatch is one line."""
    sd = load_state_dict_file(path) if sd is None else sd
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise AttnvizError(f"--weights {path} does not fit {name}: {' '.join(str(e).split())[:300]}") from None
