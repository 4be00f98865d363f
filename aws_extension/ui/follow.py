"""Turn a blocking call that reports through a callback into a generator that gradio streams."""

from __future__ import annotations

import queue
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

R = TypeVar("R")


def follow(run: Callable[[Callable[[Any], None]], R], render: Callable[[Any], Any],
           poll_s: float = 0.2) -> Generator[Any, None, R]:
    """Run `run(report)` in a thread; yield `render(update)` for each `report(update)`; return its result.

    An exception of `run` is raised here, in the generator's thread.
    """
    updates: queue.Queue = queue.Queue()
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        future = pool.submit(run, updates.put)
        while not future.done() or not updates.empty():
            try:
                yield render(updates.get(timeout=poll_s))
            except queue.Empty:
                continue
        return future.result()
    finally:
        pool.shutdown(wait=False)  # a closed generator (the page went away) must not wait for `run`
