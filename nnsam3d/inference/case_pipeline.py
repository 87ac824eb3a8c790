"""Overlap reading, network and writing across the cases of a folder.

Three stages per case: *load* (read the files and preprocess), *predict* (the network, in
the calling thread) and *save* (resample back, postprocess, write). Loading of the next
cases and saving of the previous one run in background threads while the network works on
the current case, so that on a folder of cases the wall time approaches the network's time.

Threads, not processes: NumPy, SciPy's ``ndimage`` (resampling), zlib (``.nii.gz``) and
PyTorch release the GIL in their heavy loops, so the stages truly run in parallel, and a
class-score volume (gigabytes for a large CT) is handed to the writer without a copy.

The background threads run at a lower scheduling priority (Linux schedules threads one by
one): on a CPU the network's threads keep every core busy, and a background thread that
preempted one of them would stall every parallel operation of the network until it is
scheduled again. With the lower priority, loading and saving use the cycles the network
leaves (while it waits for the GPU, for the GIL, for memory). Their PyTorch operations
(reordering images, resampling scores) run on one thread: with a team of threads each, on 2
cores the overlapped run was slower than one case after the other (wall time 1.31 of the
network's against 0.99 with one thread; ``benchmarks/predict_speed.py``).

Memory: one loaded case waits for the network, and one score volume waits for (or is in)
the writer, besides the one the network is filling.

A case whose stage raises is reported with its message and skipped; the others go on, except
when a write fails for lack of space: every later case would fail the same way after its whole
prediction, so the run stops there with :class:`DiskFullError` (:func:`stopped_by_full_disk`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

import torch
from tqdm import tqdm

from nnsam3d.io.disk_space import DiskFullError, says_disk_full
from nnsam3d.io.geometry import ImageReadError

Case = TypeVar("Case")
Loaded = TypeVar("Loaded")
Result = TypeVar("Result")


BACKGROUND_NICENESS = 10
"""How much lower than the network's threads the loader and writer threads are scheduled."""


def lower_thread_priority(niceness: int = BACKGROUND_NICENESS) -> None:
    """Raise the calling thread's nice value by ``niceness`` (Linux only; elsewhere a no-op,
    since other systems apply priorities to the whole process)."""
    if not sys.platform.startswith("linux"):
        return
    thread_id = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread_id, min(19, os.getpriority(os.PRIO_PROCESS, thread_id) + niceness))
    except OSError:  # not permitted in some sandboxes: run at normal priority
        pass


def _background_thread_setup() -> None:
    lower_thread_priority()
    # PyTorch sets a thread's count lazily, from the process default, at the thread's first
    # parallel operation: done first here, so that the 1 below is not overwritten later.
    torch.get_num_threads()
    torch.set_num_threads(1)  # this thread's parallel regions (OpenMP's thread count is per thread)


def background_pool(name: str) -> ThreadPoolExecutor:
    """A one-thread pool for loading or saving beside the network: lower priority, PyTorch on one
    thread. ``torch.set_num_threads`` also sets the default of threads created later, so the
    caller's count is set again once the pool's thread is set up: only that thread runs on one."""
    callers_threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_background_thread_setup)
    pool.submit(int).result()  # the thread exists and has run the setup
    torch.set_num_threads(callers_threads)
    return pool


@dataclass
class CaseFailure:
    case_id: str
    message: str


@dataclass
class PipelineReport:
    """What happened to the cases of a run.

    completed: identifiers written, in order. failures: cases that raised, with their message.
    skipped: identifiers not predicted because their output existed (``--continue``).
    retried: identifiers predicted again after their worker died (Ray runs; once per retry).
    wall_seconds: the pipeline's wall-clock time.
    network_seconds: time inside the networks, filled in by whoever runs them
        (``Predictor.predict_folder``); the pipeline cannot tell it from the rest of its predict stage.
    """

    completed: list[str] = field(default_factory=list)
    failures: list[CaseFailure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    network_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    @classmethod
    def of_selection(cls, selection) -> "PipelineReport":
        """A report starting with a :class:`CaseSelection`'s skipped cases and problem cases."""
        report = cls(skipped=list(selection.skipped))
        for case_id, message in selection.problems.items():
            report.add_failure(case_id, message)
        return report

    def add_failure(self, case_id: str, error: BaseException | str) -> None:
        self.failures.append(CaseFailure(case_id, describe_error(error)))


def describe_error(error: BaseException | str) -> str:
    """The message of a per-case error; file-reading errors already name their file."""
    if isinstance(error, str):
        return error
    if isinstance(error, (ImageReadError, FileNotFoundError, ValueError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def stopped_by_full_disk(error: BaseException, case_id: str, written: int, not_written: int) -> DiskFullError:
    """The error that ends a prediction run at the first case that could not be written for lack
    of space: the disk's message, then how far the run got."""
    return DiskFullError(
        f"{error} Prediction stopped at {case_id}, the first case that could not be written: {written} case(s) "
        f"were written, {not_written} not (run the same command with --continue to predict only those)."
    )


@dataclass
class CaseStages(Generic[Case, Loaded, Result]):
    """The three stage functions of the pipeline.

    case_id: names a case in reports and progress bars.
    load: runs in a background thread; returns what the network needs.
    predict: runs in the calling thread on the loaded case; returns what saving needs (and
        nothing more: the loaded case is released as soon as it returns).
    save: runs in a background thread with the case and the prediction.
    """

    case_id: Callable[[Case], str]
    load: Callable[[Case], Loaded]
    predict: Callable[[Loaded], Result]
    save: Callable[[Case, Result], None]


def run_case_pipeline(
    cases: Sequence[Case],
    stages: CaseStages[Case, Loaded, Result],
    progress: bool = False,
    report: PipelineReport | None = None,
) -> PipelineReport:
    """Run every case through load → predict → save with loading and saving in the background.

    The next case is loaded while the network works on the current one; the network waits for
    the writer when a score volume is still being saved (see the module's memory note).
    report: an existing report to add to (its skipped/failures from case selection are kept).
    """
    report = report or PipelineReport()
    started = time.perf_counter()
    completed_before, failed_before = len(report.completed), len(report.failures)
    loads: deque[tuple[Case, Future]] = deque()
    saves: deque[tuple[str, Future]] = deque()
    upcoming = iter(cases)

    def submit_next_load(pool: ThreadPoolExecutor) -> None:
        case = next(upcoming, None)
        if case is not None:
            loads.append((case, pool.submit(stages.load, case)))

    def finish_oldest_save() -> None:
        case_id, future = saves.popleft()
        try:
            future.result()
            report.completed.append(case_id)
        except Exception as error:  # a failed case must not stop the others, unless the disk is full
            if says_disk_full(error):
                written = len(report.completed) - completed_before
                raise stopped_by_full_disk(
                    error, case_id, written, len(cases) - written - (len(report.failures) - failed_before)
                ) from error
            report.add_failure(case_id, error)
        bar.update(1)

    loader_pool = background_pool("nnsam3d-load")
    saver_pool = background_pool("nnsam3d-save")
    bar = tqdm(total=len(cases), desc="cases", unit="case", disable=not progress)
    try:
        submit_next_load(loader_pool)
        while loads:
            case, future = loads.popleft()
            submit_next_load(loader_pool)
            case_id = stages.case_id(case)
            bar.set_postfix_str(case_id)
            if saves and saves[0][1].done():
                finish_oldest_save()  # a full disk stops the run before another prediction
            try:
                loaded = future.result()
                result = stages.predict(loaded)
            except Exception as error:
                report.add_failure(case_id, error)
                bar.update(1)
                continue
            finally:
                # The future holds the loaded case too; drop both so that the input image is
                # freed before waiting for the writer.
                loaded = future = None
            while saves:
                finish_oldest_save()
            saves.append((case_id, saver_pool.submit(stages.save, case, result)))
            result = None  # the writer holds the only reference now
        while saves:
            finish_oldest_save()
    finally:
        bar.close()
        loader_pool.shutdown(wait=True, cancel_futures=True)
        saver_pool.shutdown(wait=True, cancel_futures=True)
    report.wall_seconds += time.perf_counter() - started
    return report
