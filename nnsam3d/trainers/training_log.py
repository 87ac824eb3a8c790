"""What a training run tells the user: console lines, ``training_log.txt`` and ``progress.png``.

The per-epoch history (losses, pseudo-Dice, learning rate, epoch time) travels inside the
checkpoints, so that ``progress.png`` shows the whole run after a resume; the text log is
appended to and never truncated.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

from nnsam3d.io.atomic import atomic_path

LOG_FILENAME = "training_log.txt"
PROGRESS_FILENAME = "progress.png"


@dataclass
class EpochRecord:
    """One epoch's numbers.

    epoch: 1-based. pseudo_dice: per foreground class (NaN where the class was never seen).
    pseudo_dice_ema: moving average of the mean pseudo-Dice. seconds: wall time of the epoch.
    """

    epoch: int
    train_loss: float
    val_loss: float
    pseudo_dice: list[float]
    pseudo_dice_ema: float
    learning_rate: float
    seconds: float


RECENT_EPOCHS_FOR_ESTIMATE = 5
"""The remaining time is estimated from the mean duration of this many recent epochs."""


def remaining_seconds(history: list[EpochRecord], num_epochs: int) -> float:
    """Estimated seconds until epoch ``num_epochs`` ends, from the recent epochs' durations."""
    if not history:
        return math.nan
    recent = [r.seconds for r in history[-RECENT_EPOCHS_FOR_ESTIMATE:]]
    return max(0, num_epochs - history[-1].epoch) * sum(recent) / len(recent)


def format_duration(seconds: float) -> str:
    """``75`` → ``'1 min 15 s'``; ``3900`` → ``'1 h 05 min'``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_epoch(record: EpochRecord, num_epochs: int, class_names: list[str], remaining: float = math.nan) -> str:
    """One console/log line; ``remaining``: estimated seconds left (shown when known and non-zero)."""
    dice = ", ".join(f"{name} {value:.3f}" for name, value in zip(class_names, record.pseudo_dice))
    left = f", about {format_duration(remaining)} left" if remaining > 0 else ""
    return (
        f"epoch {record.epoch}/{num_epochs}: train loss {record.train_loss:.4f}, val loss {record.val_loss:.4f}, "
        f"pseudo-Dice [{dice}] (EMA {record.pseudo_dice_ema:.4f}), lr {record.learning_rate:.2e}, "
        f"{record.seconds:.1f} s{left}"
    )


class TrainingLog:
    """Prints and appends timestamped lines, keeps the epoch history, draws ``progress.png``.

    ``enabled=False`` (non-main ranks of a distributed run) keeps the history but prints and
    writes nothing, so only rank 0 writes files.
    """

    def __init__(self, folder: str | os.PathLike, enabled: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled
        self.history: list[EpochRecord] = []

    @property
    def log_file(self) -> Path:
        return self.folder / LOG_FILENAME

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        line = f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')}: {text}"
        print(line, flush=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def record_epoch(self, record: EpochRecord, num_epochs: int, class_names: list[str],
                     time_left: float | None = None) -> None:
        """``time_left``: seconds a time budget still allows (the estimate shown is at most that)."""
        self.history.append(record)
        remaining = remaining_seconds(self.history, num_epochs)
        if time_left is not None:
            remaining = min(remaining, max(time_left, 0.0))
        self.message(format_epoch(record, num_epochs, class_names, remaining))
        if self.enabled:
            plot_progress(self.history, class_names, self.folder / PROGRESS_FILENAME)

    def state_dict(self) -> dict:
        return {"history": [asdict(r) for r in self.history]}

    def load_state_dict(self, state: dict) -> None:
        names = {f.name for f in fields(EpochRecord)}
        self.history = [EpochRecord(**{k: v for k, v in r.items() if k in names}) for r in state.get("history", [])]


def plot_progress(history: list[EpochRecord], class_names: list[str], path: str | os.PathLike) -> None:
    """Three panels over epochs: losses; pseudo-Dice per class and its moving average; lr and epoch time."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; works in workers and on servers
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    figure, (losses, dice, timing) = plt.subplots(3, 1, figsize=(10, 12), sharex=True)
    losses.plot(epochs, [r.train_loss for r in history], color="tab:blue", marker=".", label="train loss")
    losses.plot(epochs, [r.val_loss for r in history], color="tab:red", marker=".", label="validation loss")
    losses.set_ylabel("Dice + CE loss")
    losses.legend(loc="upper right")
    for index, name in enumerate(class_names):
        values = [r.pseudo_dice[index] if index < len(r.pseudo_dice) else math.nan for r in history]
        dice.plot(epochs, values, linestyle=":", marker=".", label=f"pseudo-Dice {name}")
    dice.plot(epochs, [r.pseudo_dice_ema for r in history], color="black", linewidth=2, label="mean pseudo-Dice (EMA)")
    dice.set_ylabel("pseudo-Dice")
    dice.set_ylim(0, 1)
    dice.legend(loc="lower right", fontsize="small")
    timing.plot(epochs, [r.learning_rate for r in history], color="tab:green", label="learning rate")
    timing.set_ylabel("learning rate")
    seconds = timing.twinx()
    seconds.plot(epochs, [r.seconds for r in history], color="tab:gray", label="epoch time")
    seconds.set_ylabel("epoch time (s)")
    timing.set_xlabel("epoch")
    for axis in (losses, dice, timing):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=80)
    plt.close(figure)
