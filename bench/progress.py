"""Progress of training for a person watching: on a terminal, a bar per epoch with the
epoch's estimated time left (tqdm) and a line when the epoch ends; elsewhere (a log file, a
pipe, a Ray worker) that line alone, never a bar or a carriage return.

Whoever starts long work decides where its progress goes: a command makes one
:class:`Reporter` on its standard error (none with ``--quiet``) and hands it down; each
training (a teacher, a trial) opens its own :class:`TrainingProgress` with :func:`training`,
and the training loop feeds it. Work handed no reporter prints nothing.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Stream(Protocol):
    """Where progress is written: a text stream (standard error, a file, or a stand-in that
    forwards lines elsewhere). It is taken for a terminal when its ``isatty()`` says so."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


def format_seconds(seconds: float) -> str:
    """``73`` → ``1m13s``; ``4000`` → ``1h06m``; not a number → ``?``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def epoch_line(
    label: str,
    epoch: int,
    epochs: int,
    *,
    loss: float,
    val_acc: float,
    seconds: float,
    eta: float | None = None,
) -> str:
    """The line an epoch's end prints, e.g. ``teacher resnet20: epoch 3/15  loss 0.4321
    val_acc 0.9512  2.1s  ETA 25s``.

    Args:
        label: What trains.
        epoch: The epoch that ended, counted from 1.
        epochs: Epochs of the whole training.
        loss: The epoch's mean training loss.
        val_acc: Validation accuracy after it (left out when not a number: none measured).
        seconds: How long the epoch took (left out when not a number: not known).
        eta: Seconds the rest of the training should take (left out when None, and after the
            last epoch).
    """
    parts = [f"{label}: epoch {epoch}/{epochs}", f"loss {loss:.4f}"]
    if math.isfinite(val_acc):
        parts.append(f"val_acc {val_acc:.4f}")
    if math.isfinite(seconds):
        parts.append(f"{seconds:.1f}s")
    if eta is not None and epoch < epochs:
        parts.append(f"ETA {format_seconds(eta)}")
    return "  ".join(parts)


class TrainingProgress:
    """The progress of one training (see :func:`training`); the training loop calls
    :meth:`start_epoch`, :meth:`step` once per optimizer step and :meth:`end_epoch`.

    Args:
        label: What trains (starts each line).
        stream: Where it is written.
        bars: Draw a bar per epoch (a terminal) or only the epoch lines.
        refresh: Least seconds between two drawings of a bar (None: tqdm's own, 0.1 s unless
            ``TQDM_MININTERVAL`` says otherwise).
    """

    def __init__(
        self, label: str, stream: Stream, *, bars: bool, refresh: float | None = None
    ) -> None:
        self.label = label
        self.stream = stream
        self.bars = bars
        self.refresh = refresh
        self._bar: Any = None  # a tqdm bar while an epoch runs on a terminal
        self._seconds: list[float] = []

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        """An epoch of ``steps`` optimizer steps starts (``epoch`` counted from 0)."""
        if not self.bars:
            return
        from tqdm import tqdm

        self._close_bar()
        # Options left out are tqdm's, which TQDM_* variables override. A terminal that
        # reports no size (a bare pseudo-terminal) would hide the bar.
        options: dict[str, Any] = {"dynamic_ncols": True}
        if _columns(self.stream) == 0:
            options = {"ncols": 80, "nrows": 24}
        if self.refresh is not None:
            options["mininterval"] = self.refresh
        self._bar = tqdm(
            total=steps,
            desc=f"{self.label}: epoch {epoch + 1}/{epochs}",
            unit="step",
            file=self.stream,
            leave=False,
            **options,
        )

    def step(self) -> None:
        """One optimizer step is done."""
        if self._bar is not None:
            self._bar.update(1)

    def end_epoch(
        self, epoch: int, epochs: int, *, loss: float, val_acc: float, seconds: float
    ) -> None:
        """The epoch ``epoch`` (counted from 0) ended: its line, with the time the rest of the
        training should take at the mean pace of the epochs seen so far."""
        self._close_bar()
        self._seconds.append(seconds)
        eta = sum(self._seconds) / len(self._seconds) * (epochs - epoch - 1)
        line = epoch_line(
            self.label, epoch + 1, epochs, loss=loss, val_acc=val_acc, seconds=seconds, eta=eta
        )
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Take down a bar left open (the training stopped inside an epoch)."""
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _columns(stream: Stream) -> int | None:
    """The width of the terminal behind ``stream``; None when it has no file descriptor."""
    fileno = getattr(stream, "fileno", None)
    if fileno is None:
        return None
    try:
        return os.get_terminal_size(fileno()).columns
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None


class Reporter:
    """Where the progress of long work goes.

    Args:
        stream: The stream (standard error when None, looked up now).
        bars: Draw bars; None decides by whether ``stream`` is a terminal.
        refresh: Least seconds between two drawings of a bar (None: tqdm's own).
    """

    def __init__(
        self,
        stream: Stream | None = None,
        *,
        bars: bool | None = None,
        refresh: float | None = None,
    ) -> None:
        self.stream: Stream = stream if stream is not None else sys.stderr
        if bars is None:
            bars = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bars = bars
        self.refresh = refresh

    def start(self, label: str) -> TrainingProgress:
        """The progress of one training named ``label``; close it when the training ends."""
        return TrainingProgress(label, self.stream, bars=self.bars, refresh=self.refresh)


@contextmanager
def training(reporter: Reporter | None, label: str) -> Iterator[TrainingProgress | None]:
    """The progress of one training for the block, closed after it; None when there is no
    reporter (nothing is printed)."""
    if reporter is None:
        yield None
        return
    progress = reporter.start(label)
    try:
        yield progress
    finally:
        progress.close()
