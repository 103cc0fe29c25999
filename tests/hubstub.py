"""Fixtures for weight downloads without a network: empty caches, a blocked network, a stub hub.

Import the fixtures into a test module (`from tests.hubstub import ...  # noqa: F401`).
"""
from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import pytest

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def empty_caches(tmp_path, monkeypatch) -> Path:
    """HF_HOME, TORCH_HOME and HOME point at empty folders; no offline switch is set."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HF_HUB_OFFLINE",
                "TRANSFORMERS_OFFLINE", "ATTNVIZ_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture
def no_network(monkeypatch) -> list[tuple]:
    """Every connection attempt is refused at once (and recorded)."""
    tried: list[tuple] = []

    def refuse(*args, **kwargs):
        tried.append(args)
        raise OSError("network blocked by the test")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return tried


def put_in_cache(cache: Path, repo: str, filename: str, source: Path) -> Path:
    """Place `source` where huggingface_hub keeps `repo`'s `filename` (refs/main -> snapshot)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(REV)
    target = folder / "snapshots" / REV / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


@pytest.fixture
def stub_hub(monkeypatch, no_network):
    """The hub is "reachable" and `hf_hub_download` serves files registered in `files` from disk.

    `files[(repo, filename)] = path`; every call is recorded in `calls`. Unregistered files raise
    huggingface_hub's EntryNotFoundError, as the hub answers for a missing file.
    """
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from attnviz.backbones import hub

    class Stub:
        files: dict[tuple[str, str], Path] = {}
        calls: list[tuple[str, str]] = []

    def download(repo_id, filename, *, revision=None, cache_dir=None, **kw):
        Stub.calls.append((repo_id, filename))
        if (repo_id, filename) not in Stub.files:
            raise EntryNotFoundError(f"{repo_id}/{filename} not found (stub)")
        return str(put_in_cache(Path(cache_dir), repo_id, filename, Stub.files[(repo_id, filename)]))

    Stub.files, Stub.calls = {}, []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    if "transformers.utils.hub" in sys.modules:          # transformers imported the function by name
        monkeypatch.setattr(sys.modules["transformers.utils.hub"], "hf_hub_download", download)
    monkeypatch.setattr(hub, "reachable", lambda url=None, timeout=0: True)
    return Stub
