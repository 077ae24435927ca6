"""Threads for the front end's independent work: flow-bank pairs and keyframe chains.

OpenCV (DIS, remap, blur) and numpy's whole-image operations release the GIL, so threads scale
over frame pairs without copying images into processes. Results come back in input order, so the
output does not depend on the number of workers.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

_In = TypeVar("_In")
_Out = TypeVar("_Out")


def num_workers(requested: int) -> int:
    """`requested` threads, or every CPU this process may run on when it is 0."""
    if requested > 0:
        return requested
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_map(fn: Callable[[_In], _Out], items: Sequence[_In], workers: int) -> list[_Out]:
    """[fn(x) for x in items], on up to `workers` threads (0 = all CPUs); no pool for one."""
    n = min(num_workers(workers), len(items))
    if n <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="frontend") as pool:
        return list(pool.map(fn, items))
