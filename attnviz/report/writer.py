"""A pool of writer threads: pictures are drawn and encoded while the next batch runs its forward.

    with Writer(workers=2) as w:
        w.submit(write_outputs, out, r, image, style, tag=r)    # returns at once (or waits for room)
        for r, error in w.finished(): ...                       # leading finished tasks, in order
    for r, error in w.drain(): ...                              # every task left, in order

Tasks finish in any order but are handed back in the order they were submitted, so a manifest
built from them is the same for any worker count. Each task writes its own files (nothing is
shared between tasks), so every file is byte-for-byte the same for any worker count too.
Zlib, Pillow's encoders and numpy release the GIL, so threads overlap with torch's forward.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator

__all__ = ["Writer", "default_workers"]


def default_workers() -> int:
    """One writer per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                     # not on Linux
        return max(1, os.cpu_count() or 1)


class Writer:
    """Ordered task pool; `workers=0` runs every task at once in the caller (no threads)."""

    def __init__(self, workers: int | None = None, depth: int | None = None) -> None:
        self.workers = default_workers() if workers is None else workers
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}")
        # at most `depth` tasks in flight: memory stays flat however fast the forward runs
        self.depth = depth or max(8, 4 * self.workers)
        self._pool = ThreadPoolExecutor(self.workers, "attnviz-writer") if self.workers else None
        self._queue: deque[tuple[Any, Future]] = deque()

    def submit(self, fn: Callable[..., Any] | None, *args: Any, tag: Any = None, **kwargs: Any) -> None:
        """Queue fn(*args, **kwargs); `fn=None` queues only `tag` (kept in order, nothing to run).

        Blocks while `depth` tasks are unfinished (finished ones wait for `finished`/`drain`)."""
        while True:
            running = [f for _, f in self._queue if not f.done()]
            if len(running) < self.depth:
                break
            wait(running, return_when=FIRST_COMPLETED)
        fut: Future = Future()
        if fn is None:
            fut.set_result(None)
        elif self._pool is None:
            try:
                fut.set_result(fn(*args, **kwargs))
            except Exception as e:                                 # handed back by finished()
                fut.set_exception(e)
        else:
            fut = self._pool.submit(fn, *args, **kwargs)
        self._queue.append((tag, fut))

    def finished(self) -> Iterator[tuple[Any, BaseException | None]]:
        """(tag, exception or None) of the leading finished tasks, in submission order."""
        while self._queue and self._queue[0][1].done():
            tag, fut = self._queue.popleft()
            yield tag, fut.exception()

    def drain(self) -> Iterator[tuple[Any, BaseException | None]]:
        """(tag, exception or None) of every task left, in submission order, waiting for each."""
        while self._queue:
            tag, fut = self._queue.popleft()
            yield tag, fut.exception()

    def settle(self) -> Iterator[tuple[Any, BaseException | None]]:
        """On an interruption: cancel the tasks not started, let the running ones finish, and hand
        back (in order) the leading tasks that completed — their files are whole and can be kept."""
        for _, fut in self._queue:
            fut.cancel()
        wait([f for _, f in self._queue if not f.cancelled()])
        while self._queue and not self._queue[0][1].cancelled():
            tag, fut = self._queue.popleft()
            yield tag, fut.exception()
        self._queue.clear()

    def close(self, cancel: bool = False) -> None:
        """Stop the threads; `cancel` drops tasks not yet started (their files are never begun)."""
        if cancel:
            self._queue.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(cancel=exc_type is not None)      # on an error or Ctrl-C: finish started files only
