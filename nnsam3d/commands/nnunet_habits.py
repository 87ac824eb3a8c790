"""nnU-Net's command-line habits, understood by every command.

nnU-Net users type a configuration (``nnUNetv2_train 501 3d_fullres 0``, ``-c 3d_fullres``)
and nnU-Net's option spellings (``-device``, ``-chk checkpoint_best.pth``, ``--disable_tta``,
...). The spellings are declared as aliases next to each option; this module holds what is
shared: the configuration argument, removed before parsing with a word on what it means here,
and the checkpoint names nnU-Net passes to ``-chk``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from nnsam3d.inference.model_folders import CHECKPOINT_FILES

EQUIVALENT_CONFIGURATION = "3d_fullres"
"""nnU-Net's configuration that nnsam3d's single one stands for (3D patches at the planned spacing)."""
OTHER_CONFIGURATIONS = ("2d", "3d_lowres", "3d_cascade_fullres")
CONFIGURATION_OPTIONS = ("-c", "--configuration")
ONE_CONFIGURATION = (
    "nnsam3d has one configuration per plans, 3DMedSAM on 3D patches at the planned spacing (what nnU-Net "
    f"calls {EQUIVALENT_CONFIGURATION}), so there is no configuration argument"
)


def drop_configuration(
    argv: Sequence[str] | None, prog: str, options: Sequence[str] = CONFIGURATION_OPTIONS
) -> list[str]:
    """``argv`` without nnU-Net configuration arguments (``3d_fullres`` or ``-c 3d_fullres``).

    options: the spellings of the configuration option; a command with an ``-c`` of its own
    (``nnsam3d_refine -c clicks.json``) leaves it out.

    ``3d_fullres`` is dropped with a note on stderr; another nnU-Net configuration, or ``-c``
    with anything else, exits with status 2 and explains. argv None: ``sys.argv[1:]``.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    kept, index = [], 0
    while index < len(arguments):
        token = arguments[index]
        after_option = token in options
        values = []
        if after_option:  # nnU-Net's -c takes one or more configurations
            index += 1
            while index < len(arguments) and not arguments[index].startswith("-"):
                values.append(arguments[index])
                index += 1
        elif token == EQUIVALENT_CONFIGURATION or token in OTHER_CONFIGURATIONS:
            values, index = [token], index + 1
        else:
            kept.append(token)
            index += 1
            continue
        unsupported = [v for v in values if v != EQUIVALENT_CONFIGURATION]
        if unsupported or not values:
            shown = ", ".join(f"'{v}'" for v in unsupported) or f"'{token}' without a value"
            sys.stderr.write(f"{prog}: error: {ONE_CONFIGURATION}; got {shown}. Leave it out.\n")
            raise SystemExit(2)
        sys.stderr.write(f"{prog}: note: '{EQUIVALENT_CONFIGURATION}' ignored: {ONE_CONFIGURATION}.\n")
    return kept


def checkpoint_choice(text: str) -> str:
    """``final``/``best``, also as nnU-Net's ``-chk`` file names (``checkpoint_best.pth``)."""
    by_file = {file: key for key, file in CHECKPOINT_FILES.items()}
    choice = by_file.get(text, text)
    if choice not in CHECKPOINT_FILES:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a checkpoint: use {' or '.join(CHECKPOINT_FILES)} "
            f"({' or '.join(CHECKPOINT_FILES.values())})"
        )
    return choice


def no_effect(option_names: str, reason: str):
    """An argparse action for an nnU-Net option that means nothing here: accepted (so scripts
    written for nnU-Net run) with a note on stderr saying why it changes nothing."""

    class NoEffect(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            sys.stderr.write(f"{parser.prog}: note: {option_names} has no effect: {reason}.\n")

    return NoEffect
