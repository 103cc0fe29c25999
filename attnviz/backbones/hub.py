"""Weights like the ecosystem gets them: the local cache first, then the library's own download.

Every family asks here before it downloads. Offline (`ATTNVIZ_OFFLINE=1`, `HF_HUB_OFFLINE=1`,
`TRANSFORMERS_OFFLINE=1`, or no route to the hub) a missing file is one AttnvizError naming the
cache folder and the remedies, at once: huggingface_hub would otherwise retry for ~25 s.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from attnviz.errors import AttnvizError, one_line

__all__ = ["offline", "reachable", "online", "hf_cache_dir", "hf_cached", "hf_fetch", "url_fetch",
           "missing", "OFFLINE_VARS", "PROBE_TIMEOUT_S"]

OFFLINE_VARS = ("ATTNVIZ_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 3.0        # one TCP connect decides "no network"; well inside the 10 s promise
_TRUE = {"1", "true", "yes", "on"}


def offline() -> bool:
    """True when the user said so: ATTNVIZ_OFFLINE, HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in OFFLINE_VARS)


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def reachable(url: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether one TCP connection to `url`'s host (default: the HF hub) opens within `timeout`."""
    parts = urlparse(url or _endpoint())
    host, port = parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)
    if not host:
        return False
    ok: list[bool] = []

    def probe() -> None:          # in a thread: name resolution ignores socket timeouts
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def online(url: str | None = None) -> bool:
    """Downloads may be tried: not declared offline, and the host answers."""
    return not offline() and reachable(url)


def hf_cache_dir() -> str:
    """huggingface_hub's cache folder, read from the environment now (not at import time)."""
    env = os.environ
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not hub:
        home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
        hub = os.path.join(home, "hub")
    return os.path.expanduser(os.path.expandvars(hub))


def hf_cached(repo: str, names: list[str], cache_dir: str | None = None,
              revision: str | None = None) -> tuple[str | None, str]:
    """First of `names` in the local HF cache of `repo` (no network), and the repo's cache folder."""
    from huggingface_hub import try_to_load_from_cache
    folder = cache_dir or hf_cache_dir()
    for n in names:
        path = try_to_load_from_cache(repo, n, cache_dir=folder, revision=revision)
        if isinstance(path, str) and os.path.isfile(path):
            return path, folder
    return None, os.path.join(folder, "models--" + repo.replace("/", "--"))


def missing(what: str, folder: str | Path, extra: str = "") -> AttnvizError:
    """The one-line error for weights that are neither cached nor downloadable now."""
    why = "offline mode is on" if offline() else "the network is not reachable"
    return AttnvizError(
        f"{what} is not in the local cache ({folder}) and {why}. Remedies: run once with network "
        f"access (and without ATTNVIZ_OFFLINE/HF_HUB_OFFLINE), copy the files into that cache or set "
        f"HF_HOME/TORCH_HOME to a folder that has them, pass --weights FILE{extra}, or --weights none")


def hf_fetch(repo: str, names: list[str], *, what: str, cache_dir: str | None = None,
             revision: str | None = None) -> str:
    """The first of `names` in `repo`: from the cache, else downloaded by huggingface_hub (its progress bar)."""
    path, folder = hf_cached(repo, names, cache_dir, revision)
    if path:
        return path
    if not online():
        raise missing(what, folder)
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError
    last: Exception | None = None
    for n in names:               # same order as the libraries: safetensors before pickles
        try:
            return huggingface_hub.hf_hub_download(repo, n, revision=revision, cache_dir=cache_dir or hf_cache_dir())
        except EntryNotFoundError as e:
            last = e
        except Exception as e:  # noqa: BLE001  (HTTP, auth and I/O errors all mean the same here)
            raise AttnvizError(f"cannot download {what} from the Hugging Face hub ({one_line(e)}); "
                               f"its cache folder is {folder}") from None
    raise AttnvizError(f"{what}: the hub repo {repo} has none of {', '.join(names)} ({one_line(last or '')})")


def url_fetch(url: str, folder: str | Path, *, what: str) -> str:
    """`url`'s file in `folder` (a torch-hub style cache), downloaded with torch.hub's progress bar if missing."""
    path = Path(folder) / os.path.basename(urlparse(url).path)
    if path.is_file():
        return str(path)
    if not online(url):
        raise missing(what, folder)
    import torch.hub
    path.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a network that stops answering must fail, not hang
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except Exception as e:  # noqa: BLE001
        raise AttnvizError(f"cannot download {what} from {url} ({one_line(e)}); its cache folder is {folder}") from None
    finally:
        socket.setdefaulttimeout(old)
    return str(path)
