"""Run one function per case in worker processes, with a progress bar.

The integrity check, the fingerprint and preprocessing all work case by case. Each worker
holds one case at a time, so memory stays at ``num_processes`` cases whatever the dataset size.
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Callable, Sequence, TypeVar

from tqdm import tqdm

Item = TypeVar("Item")
Result = TypeVar("Result")


def _context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds and shares the imported modules; a forked worker runs
    # PyTorch on one thread (nnsam3d/__init__.py: GNU OpenMP would hang it after the parent's
    # parallel work). Elsewhere (macOS, Windows) spawn is the only safe choice.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method)


def map_cases(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    num_processes: int,
    description: str,
) -> list[Result]:
    """``[function(item) for item in items]`` in up to ``num_processes`` processes, in order.

    ``function`` must be picklable (a module-level function or a ``functools.partial`` of one).
    With one process or one item it runs here, which avoids the pool's start-up on tiny
    datasets. An exception in a worker is raised here, with its message intact.
    """
    items = list(items)
    workers = max(1, min(int(num_processes), len(items)))
    progress = tqdm(total=len(items), desc=description, unit="case", disable=None, file=sys.stderr)
    results: list[Result] = []
    try:
        if workers == 1:
            for item in items:
                results.append(function(item))
                progress.update()
        else:
            with _context().Pool(workers) as pool:
                # chunksize 1: a worker takes the next case only when it has finished one.
                for result in pool.imap(function, items, chunksize=1):
                    results.append(result)
                    progress.update()
    finally:
        progress.close()
    return results
