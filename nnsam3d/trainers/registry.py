"""Find a trainer class by the name given to ``-tr``.

Three places are searched, in order:

1. ``package.module:ClassName``: imported directly (a trainer in your own code, no install).
2. the trainers of this package (``base_trainer`` and ``variants``), by class name;
3. the entry-point group ``nnsam3d.trainers`` of installed distributions, by entry-point name::

       # pyproject.toml of your package
       [project.entry-points."nnsam3d.trainers"]
       MyTrainer = "my_package.trainers:MyTrainer"
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "nnsam3d.trainers"
DEFAULT_TRAINER = "nnSAM3DTrainer"
INTERACTIVE_TRAINER = "nnSAM3DTrainer_interactive"
"""The trainer whose models take clicks (``nnsam3d_refine``, ``nnsam3d_evaluate_interactive`` default to it)."""
_BUILTIN_MODULES = ("nnsam3d.trainers.base_trainer", "nnsam3d.trainers.variants", "nnsam3d.trainers.interactive")


class UnknownTrainerError(LookupError):
    """No trainer of that name; the message lists the known ones."""


def _base_class() -> type:
    from nnsam3d.trainers.base_trainer import nnSAM3DTrainer

    return nnSAM3DTrainer


def builtin_trainers() -> dict[str, type]:
    """Name → class of every trainer defined in this package."""
    base = _base_class()
    found = {}
    for module_name in _BUILTIN_MODULES:
        module = importlib.import_module(module_name)
        for name, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, base) and value.__module__ == module_name:
                found[name] = value
    return found


def installed_trainers() -> dict[str, object]:
    """Entry-point name → entry point (not loaded yet) of the ``nnsam3d.trainers`` group."""
    return {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}


def known_trainer_names() -> list[str]:
    return sorted(set(builtin_trainers()) | set(installed_trainers()))


def _checked(value, described_as: str) -> type:
    if not (inspect.isclass(value) and issubclass(value, _base_class())):
        raise UnknownTrainerError(f"{described_as} is not a subclass of nnsam3d's nnSAM3DTrainer.")
    return value


def get_trainer_class(name: str) -> type:
    """The trainer class called ``name`` (see the module docstring for where it is looked up)."""
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UnknownTrainerError(f"-tr {name}: cannot import module '{module_name}' ({error}).") from error
        if not hasattr(module, class_name):
            raise UnknownTrainerError(f"-tr {name}: module '{module_name}' has no class '{class_name}'.")
        return _checked(getattr(module, class_name), f"-tr {name}")
    builtin = builtin_trainers()
    if name in builtin:
        return builtin[name]
    installed = installed_trainers()
    if name in installed:
        return _checked(installed[name].load(), f"entry point '{name}' ({installed[name].value})")
    raise UnknownTrainerError(
        f"unknown trainer '{name}'. Known trainers: {', '.join(known_trainer_names())}. A trainer in your own "
        f"code can be named as package.module:ClassName, or registered under the entry-point group "
        f"'{ENTRY_POINT_GROUP}'."
    )
