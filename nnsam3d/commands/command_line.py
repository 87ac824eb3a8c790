"""What every nnsam3d command shares: ``--version``, ``--debug`` and clean error messages.

Each command builds its parser with :func:`command_parser` (or adds :func:`add_common_options`
to its own) and runs through :func:`run_command`, so that

- a user error (a bad dataset, a missing checkpoint, a full disk, ...) is one readable line
  ``PROG: error: ...`` and exit status 1, never a traceback;
- an unexpected error says what it was and how to get the traceback;
- ``--debug`` or the environment variable ``NNSAM3D_DEBUG=1`` shows the full traceback;
- warnings print as ``PROG: warning: ...`` instead of Python's file-and-line format;
- Ctrl-C ends with status 130 and one line;
- PyTorch's CUDA allocator uses expandable segments unless the user configured it
  (:func:`prefer_expandable_cuda_segments`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import traceback
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

from nnsam3d import __version__
from nnsam3d.commands.nnunet_habits import CONFIGURATION_OPTIONS, drop_configuration
from nnsam3d.evaluation.evaluate_folder import EvaluationInputError
from nnsam3d.inference.case_inputs import CaseInputError
from nnsam3d.inference.model_folders import ModelFolderError
from nnsam3d.model_sharing.model_card import ModelSharingError
from nnsam3d.inference.ensemble_loading import IncompatibleModelsError
from nnsam3d.inference.ray_prediction import RayUnavailableError
from nnsam3d.io.atomic import InvalidJSONError
from nnsam3d.io.disk_space import DiskFullError
from nnsam3d.io.checkpoint_file import CheckpointFormatError
from nnsam3d.io.dicom_seg import MissingOptionalDependencyError
from nnsam3d.io.geometry import ImageReadError
from nnsam3d.io.raw_dataset import DatasetFormatError
from nnsam3d.model.sam_checkpoints import SamCheckpointError
from nnsam3d.model_selection.find_best_configuration import ConfigurationError
from nnsam3d.paths import DatasetNotFoundError
from nnsam3d.planners.integrity import DatasetIntegrityError
from nnsam3d.trainers.registry import UnknownTrainerError
from nnsam3d.trainers.request import TrainingInputError
from nnsam3d.trainers.splits import SplitsError

DEBUG_VARIABLE = "NNSAM3D_DEBUG"

USER_ERRORS: tuple[type[BaseException], ...] = (
    DatasetNotFoundError,
    DatasetFormatError,
    DatasetIntegrityError,
    InvalidJSONError,
    ImageReadError,
    DiskFullError,
    CheckpointFormatError,
    SamCheckpointError,
    SplitsError,
    TrainingInputError,
    UnknownTrainerError,
    EvaluationInputError,
    ConfigurationError,
    ModelFolderError,
    CaseInputError,
    IncompatibleModelsError,
    ModelSharingError,
    RayUnavailableError,
    MissingOptionalDependencyError,
    FileNotFoundError,
    PermissionError,
)
"""Problems with what the user gave (files, folders, options): a message, no traceback."""


def version_text() -> str:
    """``nnsam3d X.Y.Z (torch A.B.C, Python D.E.F)``."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    python = ".".join(str(part) for part in sys.version_info[:3])
    return f"nnsam3d {__version__} (torch {torch_version}, Python {python})"


def add_common_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--version`` and ``--debug`` to ``parser``; returns it."""
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print nnsam3d's version (and torch's) and exit")
    parser.add_argument("--debug", action="store_true",
                        help=f"on an error, show the full Python traceback (also: {DEBUG_VARIABLE}=1)")
    return parser


def command_parser(prog: str, description: str, **options) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the options every nnsam3d command has."""
    return add_common_options(argparse.ArgumentParser(prog=prog, description=description, **options))


def debug_requested(arguments: argparse.Namespace | None = None) -> bool:
    if os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    return bool(getattr(arguments, "debug", False))


@contextmanager
def _warnings_as_lines(prog: str) -> Iterator[None]:
    """Print warnings as ``PROG: warning: message`` while a command runs."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {message}", file=file or sys.stderr, flush=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def describe_error(error: BaseException, user_errors: tuple[type[BaseException], ...]) -> str:
    """The one message a user sees for ``error``."""
    if isinstance(error, user_errors):
        message = str(error)
        if isinstance(error, DatasetIntegrityError):
            message += "\nNothing was written: no fingerprint, plans or preprocessed data."
        return message
    if isinstance(error, OSError):
        # The operating system's own words name the file and the reason (disk, permissions, ...).
        return str(error)
    cuda_oom = getattr(getattr(sys.modules.get("torch"), "cuda", None), "OutOfMemoryError", None)
    if cuda_oom is not None and isinstance(error, cuda_oom):
        return (f"the GPU ran out of memory ({str(error).splitlines()[0]}). Use a smaller batch or patch "
                f"(plan with --gpu-memory-gb), or --device cpu.")
    return (
        f"unexpected {type(error).__name__}: {error}\n"
        f"This may be a bug in nnsam3d. Run again with --debug (or {DEBUG_VARIABLE}=1) for the full "
        f"traceback, and report it with that traceback."
    )


ALLOCATOR_VARIABLES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


def prefer_expandable_cuda_segments() -> None:
    """Expandable segments for the CUDA caching allocator, unless the user set its configuration.

    Measured by ``benchmarks/gpu_checks.py`` on an H200: the planner's 8 GiB vit_b plan reserved
    10.4 GiB with the default allocator (fragmentation over the step), 8.2 GiB with expandable
    segments, at the same seconds per step. The allocator reads the variable when CUDA first
    allocates, which no command does before this runs.
    """
    if not any(name in os.environ for name in ALLOCATOR_VARIABLES):
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


def run_command(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int | None],
    argv: list[str] | None = None,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``argv``, run ``body(arguments)`` and turn any error into a message and exit status 1.

    body: the command's work; returns its exit status (None counts as 0).
    user_errors: further exception types this command treats as user errors (e.g. ValueError
        for option combinations it validates late), added to :data:`USER_ERRORS`.
    Argument errors stay argparse's (status 2); ``--version`` and ``--help`` exit 0. nnU-Net's
    configuration argument (``3d_fullres``, ``-c 3d_fullres``) is taken out first, with a note.
    """
    prefer_expandable_cuda_segments()
    configuration_options = [option for option in CONFIGURATION_OPTIONS if option not in parser._option_string_actions]
    arguments = parser.parse_args(drop_configuration(argv, parser.prog, configuration_options))
    debug = debug_requested(arguments)
    with _warnings_as_lines(parser.prog):
        try:
            status = body(arguments)
        except KeyboardInterrupt:
            if debug:
                traceback.print_exc()
            print(f"{parser.prog}: interrupted; finished work is kept and a rerun continues from it.",
                  file=sys.stderr)
            return 130
        except Exception as error:
            if debug:
                traceback.print_exc()
            message = describe_error(error, USER_ERRORS + tuple(user_errors))
            print(f"{parser.prog}: error: {message}", file=sys.stderr, flush=True)
            return 1
    return 0 if status is None else int(status)
