"""nnsam3d: a self-configuring pipeline that trains and runs 3DMedSAM (SAM adapted to 3D)."""

import os as _os

__version__ = "0.1.0"


def _one_torch_thread_in_forked_children() -> None:
    # GNU OpenMP (PyTorch's CPU threads on Linux) hangs a forked child at its first parallel
    # region when the parent ran one: the child inherits a thread pool whose threads did not
    # survive the fork. nnsam3d's worker pools fork (preprocessing, evaluation, reports), and their
    # workers run PyTorch (images reordered to canonical order); one thread per worker is what they should
    # use anyway (PyTorch's DataLoader sets the same in its workers).
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:  # a child that never touches PyTorch need not import it
        torch.set_num_threads(1)


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_one_torch_thread_in_forked_children)
