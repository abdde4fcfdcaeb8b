"""The live view of a running sweep: trials done / running / pending / failed, the current
best, elapsed time and an estimate of what is left.

:class:`ProgressBoard` holds the state and renders it (no Ray needed); :func:`tune_callback`
feeds it from Ray Tune's trial events. On a terminal the status line is redrawn in place;
in a log it is printed every ``interval`` seconds. Each epoch a trial ends, and each finished
or failed trial, also gets a line of its own.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from bench.progress import epoch_line, format_seconds
from bench.suite.expand import PlannedTrial
from bench.sweep.worker import SKIPPED, STATUS

if TYPE_CHECKING:
    from ray.tune import Callback

PENDING, RUNNING, FINISHED, FAILED = "pending", "running", "finished", "failed"


class ProgressBoard:
    """State of the trials of one sweep, and its rendering.

    Args:
        planned: Run key → planned trial, for every trial this sweep runs.
        metric: The result that ranks trials (``test_acc`` or ``val_acc``).
        stream: Where the view is written.
        interval: Seconds between status lines when ``stream`` is not a terminal.
        clock: Time source (tests pass a fake one).
        epochs: Print a line for each epoch a trial ends.
    """

    def __init__(
        self,
        planned: Mapping[str, PlannedTrial],
        metric: str,
        stream: TextIO | None = None,
        *,
        interval: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        epochs: bool = True,
    ) -> None:
        self.planned = dict(planned)
        self.metric = metric
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.clock = clock
        self.epochs = epochs
        self.state = dict.fromkeys(self.planned, PENDING)
        self.results: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.retries = 0
        self.skipped = 0
        self.started = clock()
        self._since: dict[str, float] = {}
        self._epoch_seconds: dict[str, list[float]] = {}
        self._durations: list[float] = []
        self._max_running = 1
        self._last_line = -math.inf
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    # -- events ------------------------------------------------------------------------------

    def trial_started(self, key: str) -> None:
        if self.state.get(key) in (FINISHED, FAILED):
            return
        self.state[key] = RUNNING
        self._since[key] = self.clock()
        self._max_running = max(self._max_running, self.counts()[RUNNING])
        self.refresh()

    def trial_result(self, key: str, result: Mapping[str, Any]) -> None:
        """An intermediate (per-epoch) or final result; the final one carries the status."""
        status = result.get(STATUS)
        if status is None:
            if "epoch" in result and key in self.planned:
                self._epoch(key, result)
            return
        self.results[key] = dict(result)
        if status == SKIPPED:
            self.skipped += 1
            recorded = result.get("recorded_status", "FINISHED")
            self.state[key] = FINISHED if recorded == "FINISHED" else FAILED
        else:
            self.state[key] = FINISHED if status == "FINISHED" else FAILED
            started = self._since.pop(key, None)
            if started is not None:
                self._durations.append(self.clock() - started)
        if self.state[key] == FAILED:
            self.errors[key] = str(result.get("error") or "failed")
        self._announce(key)

    def trial_error(self, key: str, message: str) -> None:
        """Ray gave up on the trial (its retries are spent)."""
        self.state[key] = FAILED
        self.errors[key] = message
        self._since.pop(key, None)
        self._announce(key)

    def trial_retried(self, key: str) -> None:
        self.retries += 1
        self.state[key] = PENDING
        self._since.pop(key, None)
        self.refresh()

    # -- figures -----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys((PENDING, RUNNING, FINISHED, FAILED), 0)
        for state in self.state.values():
            out[state] += 1
        return out

    def best(self) -> tuple[str, float] | None:
        """(run key, value) of the best finished trial by the metric."""
        scored = [
            (key, float(r.get(self.metric, math.nan)))
            for key, r in self.results.items()
            if self.state[key] == FINISHED
        ]
        scored = [(k, v) for k, v in scored if math.isfinite(v)]
        return max(scored, key=lambda kv: kv[1]) if scored else None

    def eta(self) -> float:
        """Seconds left: mean trial time × trials left, over the concurrency seen."""
        counts = self.counts()
        left = counts[PENDING] + counts[RUNNING]
        if left == 0:
            return 0.0
        if not self._durations:
            return math.nan
        mean = sum(self._durations) / len(self._durations)
        slots = max(1, self._max_running)
        return mean * (counts[PENDING] + 0.5 * counts[RUNNING]) / slots

    def line(self) -> str:
        counts = self.counts()
        total = len(self.state)
        elapsed = self.clock() - self.started
        parts = [
            f"[{format_seconds(elapsed):>6}] {counts[FINISHED]}/{total} done",
            f"{counts[RUNNING]} running",
            f"{counts[PENDING]} pending",
            f"{counts[FAILED]} failed",
        ]
        if self.retries:
            parts.append(f"{self.retries} retried")
        best = self.best()
        if best is not None:
            trial = self.planned[best[0]]
            parts.append(f"best {self.metric} {best[1]:.4f} ({trial.describe()})")
        parts.append(f"ETA {format_seconds(self.eta())}")
        return " · ".join(parts)

    # -- output ------------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Redraw the status line (a terminal) or print it when ``interval`` has passed."""
        now = self.clock()
        if self._tty:
            self.stream.write("\r\x1b[K" + self.line())
            self.stream.flush()
        elif force or now - self._last_line >= self.interval:
            self._last_line = now
            print(self.line(), file=self.stream, flush=True)

    def _epoch(self, key: str, result: Mapping[str, Any]) -> None:
        """A trial's epoch ended: its line (see :func:`bench.progress.epoch_line`)."""
        if not self.epochs:
            return
        trial = self.planned[key]
        seconds = float(result.get("epoch_seconds", math.nan))
        seen = self._epoch_seconds.setdefault(key, [])
        if math.isfinite(seconds):
            seen.append(seconds)
        epoch, epochs = int(result["epoch"]), trial.config.recipe.epochs
        text = epoch_line(
            trial.describe(),
            epoch,
            epochs,
            loss=float(result.get("loss", math.nan)),
            val_acc=float(result.get("val_acc", math.nan)),
            seconds=seconds,
            eta=sum(seen) / len(seen) * (epochs - epoch) if seen else None,
        )
        self._print(f"  {text}")

    def _print(self, text: str) -> None:
        """A line of its own, above the status line on a terminal."""
        if self._tty:
            self.stream.write("\r\x1b[K")
        print(text, file=self.stream, flush=True)
        self.refresh()

    def _announce(self, key: str) -> None:
        trial = self.planned[key]
        result = self.results.get(key, {})
        if self.state[key] == FINISHED:
            value = float(result.get(self.metric, math.nan))
            took = result.get("trial_seconds")
            note = "already recorded" if result.get(STATUS) == SKIPPED else f"{took or 0:.1f}s"
            text = f"  done   {trial.describe()}  {self.metric} {value:.4f}  ({note})"
        else:
            reason = self.errors.get(key, "failed").strip().splitlines()[0][:200]
            text = f"  FAILED {trial.describe()}: {reason}"
        self._print(text)

    def close(self) -> None:
        if self._tty:
            self.stream.write("\r\x1b[K")
        print(self.line(), file=self.stream, flush=True)


def tune_callback(board: ProgressBoard) -> Callback:
    """A Ray Tune callback that feeds ``board``."""
    from ray.tune import Callback

    class _BoardCallback(Callback):
        def __init__(self, board: ProgressBoard | None) -> None:
            self.board = board

        # Tune saves its callbacks with the experiment state; the view belongs to this
        # driver (and its stream cannot be pickled), so a saved copy carries none.
        def __getstate__(self) -> dict:
            return {}

        def __setstate__(self, state: dict) -> None:
            self.board = None

        def on_trial_start(self, iteration, trials, trial, **info):
            if self.board:
                self.board.trial_started(trial.config["run_key"])

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self.board:
                self.board.trial_result(trial.config["run_key"], result)

        def on_trial_recover(self, iteration, trials, trial, **info):
            if self.board:
                self.board.trial_retried(trial.config["run_key"])

        def on_trial_error(self, iteration, trials, trial, **info):
            if self.board:
                where = getattr(trial, "error_file", None) or "its worker died"
                self.board.trial_error(
                    trial.config["run_key"], f"Ray gave up after retries ({where})"
                )

        def on_step_end(self, iteration, trials, **info):
            if self.board:
                self.board.refresh()

    return _BoardCallback(board)
