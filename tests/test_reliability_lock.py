"""Reliability, part 3: one run per OUT even when runs race for a stale or torn lock (issue 21)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import attnviz.report.lock as lock
from attnviz.errors import AttnvizError

TRIALS = 240          # each: 4 contenders released at once on a stale, torn or absent lock
CONTENDERS = 4


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _contend(out, stale: str, hold: float = 0.002) -> list[tuple[float, float]]:
    """Release CONTENDERS threads at once on OUT; the (start, end) of every hold that was granted."""
    out.mkdir()
    path = out / lock.LOCK_NAME
    if stale == "dead":
        path.write_text(json.dumps({"pid": DEAD, "host": socket.gethostname(), "command": "old", "started": "?"}))
    elif stale == "torn":
        path.write_text('{"pid": 12')
    gate = threading.Barrier(CONTENDERS)
    held: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def contender() -> None:
        gate.wait()
        try:
            with lock.locked(out, "contender"):
                start = time.perf_counter()
                time.sleep(hold)
                held.append((start, time.perf_counter()))
        except AttnvizError as e:
            assert "is in use by another attnviz run" in str(e)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=contender) for _ in range(CONTENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return held


DEAD = _dead_pid()


def test_lock_contention_never_grants_two_holders_at_once(tmp_path):
    """240 trials × 4 contenders over a dead run's lock, a torn lock, or none: at least one run
    gets OUT each time, never two at the same time, and no lock file or temporary is left."""
    granted = 0
    for trial in range(TRIALS):
        out = tmp_path / f"t{trial}"
        held = sorted(_contend(out, ("dead", "torn", "none")[trial % 3]))
        assert held, f"trial {trial}: nobody got the lock"
        for (_, end), (start, _) in zip(held, held[1:]):
            assert start >= end, f"trial {trial}: two runs held OUT at once"
        assert list(out.iterdir()) == []
        granted += len(held)
    assert granted >= TRIALS


def test_a_live_holder_in_another_process_is_named_and_a_killed_one_is_not(tmp_path):
    """A holder in another process is refused with its pid and command; once it is SIGKILLed the
    kernel has released its flock, so the next run takes OUT at once despite the file left behind."""
    out = tmp_path / "out"
    code = ("import sys, time; from pathlib import Path; from attnviz.report.lock import locked\n"
            "with locked(Path(sys.argv[1]), 'holder cmd'):\n    print('held', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(AttnvizError, match=rf"in use by another attnviz run \(pid {p.pid} .*holder cmd"):
            with lock.locked(out, "second"):
                pass
    finally:
        p.kill()
        p.wait()
    assert (out / lock.LOCK_NAME).exists()                       # SIGKILL left the file behind
    with lock.locked(out, "third"):
        assert json.loads((out / lock.LOCK_NAME).read_text())["command"] == "third"
    assert not (out / lock.LOCK_NAME).exists()


def test_without_flock_a_dead_holder_is_taken_over_and_a_live_one_refused(tmp_path, monkeypatch):
    """File systems without flock: exclusive creation, a dead holder's lock renamed aside."""
    monkeypatch.setattr(lock, "fcntl", None)
    out = tmp_path / "out"
    out.mkdir()
    (out / lock.LOCK_NAME).write_text(json.dumps({"pid": DEAD, "host": socket.gethostname()}))
    with lock.locked(out, "mine"):
        assert json.loads((out / lock.LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(AttnvizError, match="in use"):
            with lock.locked(out, "second"):
                pass
    assert list(out.iterdir()) == []
