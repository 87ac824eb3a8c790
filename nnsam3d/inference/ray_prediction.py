"""Prediction of a cohort on a Ray cluster: ``nnsam3d_predict ... --ray [ADDRESS]``.

Every case is a task; the workers are Ray actors, one per GPU (or per ``cpus_per_worker``
CPU slots on a cluster without GPUs), each holding the fold ensemble (a :class:`Predictor`)
from its start to the end of the run, so the checkpoints are read once per worker, not per case.

Inside a worker the stages of the single-machine predictor (``Predictor.case_stages``) run as
in :mod:`case_pipeline`: up to three cases are in flight per worker (Ray calls the actor from
three threads), one is read and preprocessed in the background loader thread, one is in the
network (a lock lets one case at a time in), and one is exported by the background writer thread;
loader and writer run at the pipeline's lower scheduling priority.

The model travels through Ray's object store (:mod:`shipped_model`): the driver reads the
checkpoints once, and each worker writes them into a folder of its own node, loads them and
deletes the folder, so no node needs to read the driver's folders (``-m model.zip`` extracts
into the driver's temporary folder). Inputs and outputs are paths: every node must see them (a
shared file system); outputs are written atomically by the exporter, so a case either has its
complete output or none.

The driver hands cases out as workers take them (a slow worker gets fewer). A case whose worker
dies (a node lost, a process killed) is handed to another worker, up to ``max_attempts`` times,
and the dead worker is replaced. A worker whose device breaks (``device_failures``: a sticky
CUDA error fails every later case in milliseconds) is retired the same way, and its case is
handed to another worker. A case that fails by itself (an unreadable file) is reported by name
and the others go on, as in the single-machine predictor; a full output disk stops the run, as
there (``case_pipeline.stopped_by_full_disk``).

Ray is optional (``pip install 'nnsam3d[ray]'``); it is imported only here, when asked for.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from nnsam3d.inference.case_inputs import select_cases
from nnsam3d.inference.case_pipeline import PipelineReport, background_pool, describe_error, stopped_by_full_disk
from nnsam3d.inference.device_failures import is_device_failure
from nnsam3d.inference.model_folders import CHECKPOINT_FILES
from nnsam3d.inference.output_formats import check_inputs_for_format, output_ending_for
from nnsam3d.inference.predictor import Predictor
from nnsam3d.inference.shipped_model import ShippedModel, pack_model, unpack_model
from nnsam3d.io.atomic import remove_leftover_temporaries
from nnsam3d.io.disk_space import format_bytes, says_disk_full
from nnsam3d.io.raw_dataset import DatasetDescription, RawCase

RAY_EXTRA_HINT = "pip install 'nnsam3d[ray]' (or pip install ray)"
CASES_IN_FLIGHT_PER_WORKER = 3
"""One being read, one in the network, one being written (see the module)."""
REPLACEMENT_TIMEOUT_SECONDS = 600.0
"""How long a run with no worker left waits for a replacement to start before it gives up."""
LOCAL_CLUSTER_CONFIG = {"_system_config": {"worker_niceness": 0}}
"""A local cluster's workers at normal priority, as the single-machine predictor runs (Ray's
default lowers them to nice 15, which on a busy machine leaves them the others' leftovers)."""


class RayUnavailableError(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached or used; the message says what to do."""


def import_ray():
    """The ``ray`` module, or :class:`RayUnavailableError` naming the extra to install."""
    try:
        import ray
    except ImportError as error:
        raise RayUnavailableError(f"--ray needs the optional dependency Ray: {RAY_EXTRA_HINT}.") from error
    return ray


@dataclass
class RayOptions:
    """How to use the cluster.

    address: None starts a local cluster on this machine; ``"auto"`` joins the cluster this
        node belongs to (``ray start``); ``HOST:PORT`` or ``ray://HOST:10001`` a given one.
    num_workers: workers to start (None: one per GPU of the cluster, or its CPUs divided by
        ``cpus_per_worker`` when it has none or ``device`` is ``cpu``).
    cpus_per_worker: CPU slots each worker reserves (and PyTorch threads on a CPU worker).
    max_attempts: how often a case is started before a repeatedly dying worker fails it.
    """

    address: str | None = None
    num_workers: int | None = None
    cpus_per_worker: int = 1
    max_attempts: int = 3


@dataclass(frozen=True)
class CaseFailed:
    """Why a worker did not write a case.

    kind: ``"case"``, the case's own problem (reported, the run goes on); ``"device"``, the
    worker's device is broken (the worker is retired, the case goes to another); ``"disk_full"``,
    the output disk is full (the run stops).
    """

    message: str
    kind: str = "case"


class PredictionWorker:
    """A Ray actor (wrapped by ``ray.remote`` in :func:`predict_folder_on_ray`) holding one
    :class:`Predictor` and predicting single cases into ``output_dir``.

    model: the shipped model folders (``shipped_model``), unpacked into a temporary folder of
        this node for as long as loading takes. predictor_options: as ``Predictor.from_model_folders``.
    """

    def __init__(
        self,
        model: ShippedModel,
        predictor_options: dict,
        output_dir: str,
        save_probabilities: bool,
        save_overlays: bool,
        cpu_threads: int,
        output_format: str | None = None,
    ):
        if not torch.cuda.is_available():
            torch.set_num_threads(max(1, cpu_threads))
        with tempfile.TemporaryDirectory(prefix="nnsam3d-model-") as local:
            model_dirs, postprocessing_folder = unpack_model(model, local)
            self.predictor = Predictor.from_model_folders(
                model_dirs, postprocessing_folder=postprocessing_folder, **predictor_options
            )
        self.device_failure: str | None = None  # once set, the device is broken for good
        self.stages = self.predictor.case_stages(
            output_dir, save_probabilities=save_probabilities, save_overlays=save_overlays, output_format=output_format
        )
        self.network_lock = threading.Lock()
        self.loader = background_pool("nnsam3d-load")
        self.writer = background_pool("nnsam3d-save")

    def describe(self) -> dict:
        """Who this worker is and what it loaded (for the driver's log and case selection)."""
        names = {v: k for k, v in self.predictor.description.labels.items()}
        postprocessing = self.predictor.postprocessing
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": str(self.predictor.device),
            "description": self.predictor.description.to_json(),
            "checkpoints": [str(p) for p in self.predictor.checkpoint_files],
            "postprocessing": postprocessing.describe(names) if postprocessing else "none",
        }

    def predict_case(self, case: RawCase) -> CaseFailed | None:
        """Predict one case; None when its output is written, else why not."""
        if self.device_failure is not None:  # cases that were already in flight
            return CaseFailed(f"not started: this worker's device failed earlier ({self.device_failure})", "device")
        try:
            loaded = self.loader.submit(self.stages.load, case).result()
            with self.network_lock:
                result = self.stages.predict(loaded)
            del loaded
            self.writer.submit(self.stages.save, case, result).result()
        except Exception as error:  # the case fails; the worker goes on unless its device broke
            if is_device_failure(error):
                self.device_failure = describe_error(error)
                return CaseFailed(self.device_failure, "device")
            return CaseFailed(str(error) if says_disk_full(error) else describe_error(error),
                              "disk_full" if says_disk_full(error) else "case")
        return None

    def network_seconds(self) -> float:
        return self.predictor.window_ensemble.network_seconds


def _worker_resources(ray, options: RayOptions, device: str) -> tuple[int, float]:
    """(number of workers, GPUs per worker) from the cluster's resources."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
    if device == "cuda" and gpus == 0:
        raise RayUnavailableError("--device cuda was requested but the Ray cluster has no GPU; use --device cpu or auto.")
    slots = gpus if gpus else int(resources.get("CPU", 1)) // max(1, options.cpus_per_worker)
    return max(1, options.num_workers or slots), (1.0 if gpus else 0.0)


def predict_folder_on_ray(
    model_dirs: Sequence[str | os.PathLike],
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    ray_options: RayOptions | None = None,
    folds: Sequence[int | str] | None = None,
    checkpoint_name: str = CHECKPOINT_FILES["final"],
    device: str = "auto",
    postprocessing_folder: str | os.PathLike | None = None,
    predictor_options: dict | None = None,
    save_probabilities: bool = False,
    skip_existing: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    save_overlays: bool = False,
    output_format: str | None = None,
    progress: bool = False,
    log: Callable[[str], Any] = lambda message: None,
    on_workers_ready: Callable[[list[dict]], Any] | None = None,
    worker_class: type[PredictionWorker] = PredictionWorker,
) -> PipelineReport:
    """``Predictor.predict_folder`` on a Ray cluster (see the module); returns the same report,
    with ``retried`` naming the cases handed to another worker after their worker died.

    model_dirs: model folders whose folds are ensembled (read by the driver only; see the module).
    postprocessing_folder: where ``postprocessing.json`` lies (default: the single model folder).
    predictor_options: further ``Predictor`` options (step_size, use_mirroring, batch_size, ...).
    log: receives one-line messages (workers started, retries).
    on_workers_ready: called with every worker's :meth:`PredictionWorker.describe` once they
        have loaded their networks (and again with each replacement's).
    worker_class: :class:`PredictionWorker` or a subclass (the tests give one a broken device).
    Raises :class:`RayUnavailableError` without Ray, ``ModelFolderError`` for missing checkpoints
    (checked here before any worker starts), ``CaseInputError`` for unusable input, ``DiskFullError``
    when the output disk is full.
    """
    ray = import_ray()
    options = ray_options or RayOptions()
    model_dirs = [Path(folder).resolve() for folder in model_dirs]
    if postprocessing_folder is None and len(model_dirs) == 1:
        postprocessing_folder = model_dirs[0]
    # Read before the cluster starts: a missing fold is a user error worth telling first.
    model = pack_model(model_dirs, folds, checkpoint_name, postprocessing_folder)
    log(f"model: {sum(len(files) for _, files in model.folders)} checkpoint(s) "
        f"({', '.join(f'{name}: {sorted(files)}' for name, files in model.folders)}), "
        f"{format_bytes(model.num_bytes)} through Ray's object store")
    output_dir = Path(output_dir).resolve()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=options.address, log_to_driver=False, include_dashboard=False,
                     **(LOCAL_CLUSTER_CONFIG if options.address is None and "RAY_ADDRESS" not in os.environ else {}))
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise RayUnavailableError(f"cannot reach the Ray cluster at {options.address or 'local'}: {error}") from error
    try:
        num_workers, gpus_per_worker = _worker_resources(ray, options, device)
        remote_class = ray.remote(worker_class).options(
            num_cpus=options.cpus_per_worker, num_gpus=gpus_per_worker,
            max_concurrency=CASES_IN_FLIGHT_PER_WORKER, max_restarts=0,
        )
        arguments = (
            ray.put(model),  # once; every worker (and replacement) reads it from the object store
            {"folds": folds, "checkpoint_name": checkpoint_name, "device": device, **(predictor_options or {})},
            str(output_dir), save_probabilities, save_overlays, options.cpus_per_worker, output_format,
        )
        del model
        workers = _Workers(ray, remote_class, arguments, {"CPU": options.cpus_per_worker, "GPU": gpus_per_worker},
                           on_workers_ready, log)
        return _run_cases(ray, workers, num_workers, options.max_attempts, input_path, output_dir,
                          dict(skip_existing=skip_existing, save_probabilities=save_probabilities,
                               num_parts=num_parts, part_id=part_id),
                          output_format,
                          progress, log)
    finally:
        if started_here:
            ray.shutdown()


class _Workers:
    """The live workers of a run, and their replacement when one dies."""

    def __init__(self, ray, worker_class, arguments, resources: dict[str, float], on_workers_ready, log):
        self.ray, self.worker_class, self.arguments = ray, worker_class, arguments
        self.resources = {name: amount for name, amount in resources.items() if amount}
        self.on_workers_ready, self.log = on_workers_ready, log
        self.live: list = []

    def start(self, count: int, timeout_seconds: float | None = None) -> list[dict]:
        """Start ``count`` workers and wait until they hold the model; their descriptions."""
        workers = [self.worker_class.remote(*self.arguments) for _ in range(count)]
        try:
            described = self.ray.get([worker.describe.remote() for worker in workers], timeout=timeout_seconds)
        except self.ray.exceptions.RayActorError as error:  # the constructor raised, e.g. an unreadable checkpoint
            raise RayUnavailableError(f"a Ray worker could not load the model: {error}") from error
        except self.ray.exceptions.GetTimeoutError as error:
            raise RayUnavailableError(f"no Ray worker could be started within {timeout_seconds:.0f} s "
                                      f"(needs {self.resources} free on some node)") from error
        self.live += workers
        for info in described:
            self.log(f"worker pid {info['pid']} on {info['host']} ({info['device']}) ready")
        if self.on_workers_ready is not None:
            self.on_workers_ready(described)
        return described

    def replace(self, dead, what: str = "a worker died", room_freed: bool = False) -> None:
        """Drop a dead worker; start another where the cluster has room now (a lost node's share
        is gone, the survivors take its cases), and in any case when none is left or the dead
        worker's own room is being freed (``room_freed``: killed by the driver)."""
        if dead not in self.live:
            return  # its other cases fail the same way; replaced once
        self.live.remove(dead)
        available = self.ray.available_resources()
        if not self.live or room_freed or all(available.get(name, 0) >= amount
                                              for name, amount in self.resources.items()):
            self.log(f"{what}; starting a replacement")
            self.start(1, timeout_seconds=REPLACEMENT_TIMEOUT_SECONDS)
        else:
            self.log(f"{what}; {len(self.live)} worker(s) go on (no room for a replacement)")

    def retire(self, broken, reason: str) -> None:
        """End a worker whose device failed (its process cannot recover) and replace it like a
        dead one; its cases still in flight then fail as a dead worker's and go elsewhere."""
        if broken in self.live:
            self.ray.kill(broken)
            self.replace(broken, f"a worker's device failed ({reason}); retired it", room_freed=True)


def _stop_workers(ray, workers: _Workers, in_flight: dict, output_dir: Path) -> None:
    """Kill every worker and, once their cases in flight have ended with them, remove what they
    were writing."""
    for worker in workers.live:
        ray.kill(worker)
    workers.live.clear()
    if in_flight:
        ray.wait(list(in_flight), num_returns=len(in_flight), timeout=60)
    for _, case in in_flight.values():
        remove_leftover_temporaries(output_dir, case.case_id)


def _run_cases(ray, workers: _Workers, num_workers, max_attempts, input_path, output_dir, selection_options,
               output_format, progress, log) -> PipelineReport:
    described = workers.start(num_workers)
    started = time.perf_counter()  # like Predictor.predict_folder: the cases' time, not loading the model
    description = DatasetDescription.from_json(described[0]["description"], source="the Ray worker's model")
    selection = select_cases(input_path, output_dir, description, **selection_options,
                             output_ending=output_ending_for(description, output_format))
    check_inputs_for_format(selection, output_format, input_path)
    report = PipelineReport.of_selection(selection)
    failed_before = len(report.failures)
    output_dir.mkdir(parents=True, exist_ok=True)
    log(f"{len(selection.cases)} case(s) over {len(workers.live)} worker(s); "
        f"postprocessing: {described[0]['postprocessing']}")

    pending = deque(selection.cases)
    attempts: Counter[str] = Counter()
    in_flight: dict = {}  # object ref → (worker, case)
    load: Counter = Counter()  # worker → cases in flight
    network_seconds = 0.0
    bar = tqdm(total=len(pending), desc="cases", unit="case", disable=not progress)

    def retry_or_fail(case: RawCase, what: str, last: str) -> None:
        if attempts[case.case_id] >= max_attempts:
            report.add_failure(case.case_id, f"{what} {attempts[case.case_id]} times while predicting it (last: {last})")
            bar.update(1)
        else:
            log(f"{case.case_id}: {what}; handed to another worker")
            report.retried.append(case.case_id)
            pending.appendleft(case)

    try:
        while pending or in_flight:
            for worker in workers.live:
                while pending and load[worker] < CASES_IN_FLIGHT_PER_WORKER:
                    case = pending.popleft()
                    attempts[case.case_id] += 1
                    in_flight[worker.predict_case.remote(case)] = (worker, case)
                    load[worker] += 1
            (ready,), _ = ray.wait(list(in_flight), num_returns=1)
            worker, case = in_flight.pop(ready)
            load[worker] -= 1
            try:
                outcome = ray.get(ready)
            except ray.exceptions.RayActorError as error:
                workers.replace(worker)
                # The dead worker may have been writing this case's outputs.
                remove_leftover_temporaries(output_dir, case.case_id)
                retry_or_fail(case, "its Ray worker died", type(error).__name__)
                continue
            if outcome is not None and outcome.kind == "device":
                workers.retire(worker, outcome.message)
                retry_or_fail(case, "the device of its Ray worker failed", outcome.message)
                continue
            if outcome is not None and outcome.kind == "disk_full":
                _stop_workers(ray, workers, in_flight, output_dir)
                written = len(report.completed)
                raise stopped_by_full_disk(outcome.message, case.case_id, written,
                                           len(selection.cases) - written - (len(report.failures) - failed_before))
            if outcome is None:
                report.completed.append(case.case_id)
            else:
                report.add_failure(case.case_id, outcome.message)
            bar.update(1)
        network_seconds = sum(ray.get([worker.network_seconds.remote() for worker in workers.live]))
    finally:
        bar.close()
        for worker in workers.live:
            ray.kill(worker)
    report.wall_seconds += time.perf_counter() - started
    report.network_seconds = network_seconds
    return report
