"""``--time-budget-minutes``: end training after the epoch in which the budget runs out.

Until then, after every epoch the learning-rate decay is shortened to the epochs expected to
fit in the remaining time; without that, a long nominal schedule would stop with the learning
rate still near its peak. All ranks take rank 0's clock, so they stop after the same epoch.
"""

from __future__ import annotations

import math
import time

import numpy as np

from nnsam3d.trainers.distributed import DistributedContext
from nnsam3d.trainers.optimization import WarmupDecaySchedule

RECENT_EPOCHS = 5
"""Epoch time is estimated from this many recent epochs."""


class TimeBudget:
    def __init__(self, minutes: float | None, context: DistributedContext):
        self.minutes = minutes
        self.context = context
        self.deadline = time.monotonic() + minutes * 60 if minutes is not None else None
        self.epoch_seconds: list[float] = []
        self.stopped = False

    def seconds_left(self) -> float | None:
        """Seconds until the deadline (None without a budget); the epoch running then still finishes."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def after_epoch(
        self, seconds: float, epochs_completed: int, num_epochs: int, schedule: WarmupDecaySchedule,
        iterations_per_epoch: int,
    ) -> bool:
        """Record an epoch's duration; True when training must end now (budget used up)."""
        if self.deadline is None:
            return False
        self.epoch_seconds.append(seconds)
        remaining = self.context.value_of_main(int(self.deadline - time.monotonic()))
        if remaining <= 0 and epochs_completed < num_epochs:
            self.stopped = True
            return True
        mean_epoch = float(np.mean(self.epoch_seconds[-RECENT_EPOCHS:]))
        expected = epochs_completed + max(1, math.ceil(remaining / max(mean_epoch, 1e-6)))
        expected = self.context.value_of_main(min(num_epochs, expected))
        schedule.resize(expected * iterations_per_epoch)
        return False
