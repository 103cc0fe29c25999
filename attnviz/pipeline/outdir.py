"""The output folder: one run at a time (a lock), what a rerun may reuse (resume), and what it must
never touch or read back (files attnviz did not write, its own outputs)."""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from attnviz.errors import AttnvizError
from attnviz.images import ImageSource, identity
from attnviz.report.integrity import MANIFEST_LIMIT, damage, entry_files, foreign
from attnviz.report.lock import LOCK_NAME, check_folder, locked
from attnviz.text import read_small

__all__ = ["LOCK_NAME", "OWN_FILES", "locked", "read_manifest", "Plan", "plan_run", "entry_files",
           "remove_stale_temporaries", "outputs_filter"]

OWN_FILES = {"manifest.json", "evaluation.json", LOCK_NAME,   # top-level files attnviz writes in OUT
             "index.html", "summary.csv", "agreement.csv", "agreement.png"}


# what write_atomic's mkstemp and the lock leave when killed: `.original.png.k3j_x9q1.tmp`, `.attnviz.lock.123.tmp`,
# `.attnviz.lock.123.stale.tmp` (a takeover without flock)
_TEMPORARY = re.compile(r"\.(.+\.(png|jpg|webp|npz|json|csv|html|mp4)\.[a-z0-9_]{8}|attnviz\.lock\.\d+(\.stale)?)\.tmp")


def remove_stale_temporaries(out: Path) -> int:
    """Delete the temporaries a killed run left (we hold the lock: nobody else is writing); other
    hidden files are the user's, even when named `.x.tmp` (`run D -o D` writes into their folder)."""
    n = 0
    for p in out.rglob(".*.tmp"):
        if not _TEMPORARY.fullmatch(p.name):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def read_manifest(out: Path) -> dict[str, Any] | None:
    """OUT/manifest.json of an earlier attnviz run, None when there is none; another file of that
    name is refused (it is not ours to overwrite)."""
    path = out / "manifest.json"
    if not path.exists():
        return None
    try:
        data = json.loads(read_small(path, "manifest", MANIFEST_LIMIT).decode("utf-8"))
    except (OSError, ValueError) as e:
        raise AttnvizError(f"{path} is not an attnviz manifest ({' '.join(str(e).split())[:120]}); "
                           f"choose another -o, or --force to replace it") from None
    if not (isinstance(data, dict) and isinstance(data.get("tool"), dict) and data["tool"].get("name") == "attnviz"
            and isinstance(data.get("images"), list)):
        raise AttnvizError(f"{path} was not written by attnviz; choose another -o, or --force to replace it")
    return data


def _reusable(out: Path, source: ImageSource, entry: dict[str, Any]) -> str | None:
    """Why an earlier ok record of `source` cannot be kept (its files damaged, its input changed);
    None when it can."""
    if entry.get("status") != "ok":
        return "error"
    why = damage(out, entry)
    if why:
        return f"its files were damaged ({why})"
    if identity(source.path) != entry.get("input"):
        return "its input changed since"
    return None


@dataclass
class Plan:
    """What a run into OUT does: which images to compute, which earlier records stand."""

    todo: list[ImageSource]
    order: list[str]                                          # output folders, in manifest order
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)   # output -> earlier entry reused
    old: dict[str, dict[str, Any]] = field(default_factory=dict)    # output -> every earlier entry
    previous: dict[str, Any] | None = None                    # the earlier manifest
    redone: list[str] = field(default_factory=list)           # notes: earlier ok images computed again, and why


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    """`key: old → new` for every leaf setting that differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k), b.get(k), f"{where}{k}.")]
    return [] if a == b else [f"{where.rstrip('.').split('.', 1)[-1]}: {a!r} → {b!r}"
                              + (" (OMP_NUM_THREADS / torch.set_num_threads)" if where == "environment.torch threads."
                                 else "")]


def plan_run(out: Path, sources: list[ImageSource], fingerprint: dict[str, Any], force: bool,
             own: Sequence[str] = ()) -> Plan:
    """Decide what to compute. Same settings: images whose outputs are complete are kept (resume),
    the rest computed. Other settings: refused, unless `force` (then everything is computed and
    the earlier records of images not in this run are dropped). Files attnviz did not write: refused
    unless `force`. `own`: top-level names the caller wrote into OUT itself (the demo's scenes)."""
    previous = None
    try:
        previous = read_manifest(out)
    except AttnvizError:
        if not force:
            raise
    # a hand-edited record pointing outside OUT is never kept, linked nor read
    old = {e["output"]: e for e in (previous or {}).get("images", []) if foreign(out, e) is None}
    if not force:
        _refuse_foreign(out, sources, old, set(own))
    order = list(dict.fromkeys(s.output for s in sources))
    if previous is None:
        return Plan(list(sources), order)
    same = previous.get("fingerprint") == fingerprint
    if not same and not force:
        diff = _differences(previous.get("fingerprint") or {}, fingerprint)
        raise AttnvizError(f"{out} holds a run with other settings ({'; '.join(diff[:4]) or 'an older version'}); "
                           f"rerun with --force to recompute into it, or choose another -o")
    kept, redone = {}, []
    for s in sources if same and not force else ():
        why = _reusable(out, s, old[s.output]) if s.output in old else "new"
        if why is None:
            kept[s.output] = old[s.output]
        elif why not in ("new", "error"):
            redone.append(f"{s.source}: {why}")
    if same:     # a subset rerun keeps the records of the images it was not given
        order += [o for o in old if o not in set(order)]
        given = {s.output for s in sources}
        for o, e in old.items():
            if o not in given:
                why = damage(out, e) if e.get("status") == "ok" else None
                kept[o] = e if why is None else {**e, "status": "error", "maps": [], "predictions": [],
                                                 "error": f"files damaged ({why}): rerun with this image to redo it"}
    return Plan([s for s in sources if s.output not in kept], order, kept, old, previous, redone)


def _looks_ours(folder: Path) -> bool:
    """Only files of attnviz's own kinds (pictures, raw maps, temporaries): an interrupted run's."""
    return all(p.is_dir() or p.suffix in (".png", ".npz", ".tmp", ".mp4") for p in folder.rglob("*"))


def _refuse_foreign(out: Path, sources: list[ImageSource], old: dict[str, Any], own: set[str]) -> None:
    """Refuse to write where files attnviz did not write would be overwritten or mixed with ours.

    Not foreign: hidden files, attnviz's own top-level files, the folders an earlier run recorded,
    folders holding this run's inputs (`run D -o D`), and planned output folders holding nothing but
    attnviz's kinds of files (written by a run killed before it could record them).
    """
    if not out.is_dir():
        return
    real_out = Path(os.path.realpath(out))
    inputs = {Path(os.path.realpath(s.path)).relative_to(real_out).parts[0] for s in sources
              if Path(os.path.realpath(s.path)).is_relative_to(real_out)}
    recorded = {o.split("/", 1)[0] for o in old}
    planned = {s.output.split("/", 1)[0] for s in sources}
    for p in sorted(out.iterdir()):
        if p.name.startswith(".") or p.name in OWN_FILES | own | recorded | inputs:
            continue
        if p.is_dir() and (p.name in planned and _looks_ours(p) or not any(q.is_file() for q in p.rglob("*"))):
            continue                                     # an interrupted run's, or empty folders only
        raise AttnvizError(f"{out} holds files attnviz did not write (e.g. {p.name}); choose an empty "
                           f"or new -o, or --force to write there anyway")


def outputs_filter(out: Path, paths: Sequence[str | Path], old_outputs: Sequence[str] = ()) -> Callable[[Path], bool]:
    """Which files discovery must skip: everything inside OUT unless asked for by a path that itself
    lies in OUT, and even then never the manifest nor the folders an earlier run wrote."""
    check_folder(out)
    real = lambda p: Path(os.path.realpath(p))   # noqa: E731  (never raises, even on link loops)
    resolved = real(out)
    inside = [real(p) for p in paths if real(p).is_relative_to(resolved)]
    ours = [resolved / o for o in old_outputs] + [resolved / n for n in OWN_FILES]

    def skip(path: Path) -> bool:
        r = real(path)
        if not r.is_relative_to(resolved):
            return False
        return not any(r.is_relative_to(p) for p in inside) or any(r.is_relative_to(o) for o in ours)
    return skip
