"""A sweep trial's checkpoints: its resumable state saved through Ray Tune's checkpoint API
into the sweep's storage, found again by a restarted attempt, deleted when the trial ends.

Ray Tune keeps a trial's checkpoints under ``<storage>/<tune run>/<run key>/checkpoint_*/``
(the driver names each trial's folder by its run key). An attempt restarted by Tune after a
lost worker or node gets its last checkpoint from ``tune.get_checkpoint()``; an attempt of a
later sweep (the driver was stopped) finds the newest checkpoint of its run key in the
storage instead, so a stopped driver loses no more than a lost node does.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.trial.resume import CheckpointPolicy, TrainState, load_state, save_state

if TYPE_CHECKING:
    from ray.tune import Checkpoint

#: The file inside a checkpoint folder.
STATE_FILE = "trial_state.pt"


@dataclass
class TuneCheckpointer:
    """Saves a trial's state as a Ray Tune checkpoint, tagged with its MLflow run.

    Attributes:
        policy: When to save.
        run_id: The MLflow run the trial records into (set once the run exists).
    """

    policy: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    run_id: str | None = None

    def save(self, state: TrainState) -> None:
        from ray import tune

        state.run_id = self.run_id
        with tempfile.TemporaryDirectory(prefix="kdbench-checkpoint-") as folder:
            save_state(state, Path(folder) / STATE_FILE)
            # Reported (and so persisted to the sweep's storage) before training goes on.
            tune.report(
                {"epoch": state.epochs_done, "checkpoint_epoch": state.epochs_done},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )


def latest_state(tune_checkpoint: Checkpoint | None, storage: str, key: str) -> TrainState | None:
    """The state a restarted attempt continues from: Tune's checkpoint of this trial when Tune
    restarted it, else the newest checkpoint of the run key an earlier sweep left in
    ``storage``; None when there is none (or none is readable)."""
    if tune_checkpoint is not None:
        with tune_checkpoint.as_directory() as folder:
            state = load_state(Path(folder) / STATE_FILE)
        if state is not None:
            return state
    states = [s for s in map(load_state, _state_files(storage, key)) if s is not None]
    return max(states, key=lambda s: s.epochs_done, default=None)


def delete_checkpoints(storage: str, key: str) -> None:
    """Remove every checkpoint of the run key from the sweep's storage (the trial ended)."""
    for path in _state_files(storage, key):
        shutil.rmtree(path.parent, ignore_errors=True)


def _state_files(storage: str, key: str) -> list[Path]:
    if not storage or not Path(storage).is_dir():
        return []
    return sorted(Path(storage).glob(f"*/{key}/checkpoint_*/{STATE_FILE}"))
