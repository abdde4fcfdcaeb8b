"""The run store is checked before any work (an unwritable, locked or gone-but-expected
database, an unreachable server: exit status 2, one message naming it, nothing recorded);
sweeps show the whole reason of a failure, catch a bad checkpoint in a dry run, execute no
plugin in a dry run and leave no failure tag on a FINISHED run; Markdown escapes run data."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from bench import store
from bench.cli import main
from bench.config import Compute, Recipe, TrialConfig
from bench.plugins import keyed_trial
from bench.suite.schema import Resources
from bench.sweep import ledger
from bench.sweep.cli import add_sweep_arguments, sweep_main
from bench.sweep.worker import SweepContext, run_trial_once
from bench.tracking import RUN_KEY_TAG, Tracker

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    "train",
    "--student",
    "test_resnet_narrow",
    "--method",
    "ce",
    "--epochs",
    "1",
    "--quiet",
]


def runs_in(db: Path, experiment: str = "kdbench") -> list:
    """The runs of ``experiment`` in ``db``, read without creating anything."""
    if not db.exists():
        return []
    client = MlflowClient(f"sqlite:///{db}")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def recorded_store(folder: Path) -> Path:
    """An SQLite store holding one run with an artifact, as kdbench lays it out."""
    db = folder / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}")
    run = tracker.client.create_run(tracker.experiment_id, tags={RUN_KEY_TAG: "k"})
    tracker.client.log_text(run.info.run_id, "{}", "config.json")
    tracker.client.set_terminated(run.info.run_id, "FINISHED")
    return db


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` made unwritable for this process, whoever runs it: its mode for an ordinary
    user, the immutable attribute for one that ignores modes (root)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("chattr is needed to make a file read-only for root")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this file system keeps no immutable attribute: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def no_traceback(err: str) -> None:
    assert "Traceback" not in err and "sqlalchemy" not in err.lower(), err


# --------------------------------------------------------------------------------------------
# The run store
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["database", "folder"])
def test_a_read_only_store_stops_train_before_any_work(what, tmp_path, capsys):
    db = recorded_store(tmp_path / "store")
    before = len(runs_in(db))
    target = db if what == "database" else db.parent
    with read_only(target):
        started = time.perf_counter()
        code = main([*TRAIN, "--tracking-uri", f"sqlite:///{db}"])
        took = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(db) in err and "cannot be written" in err and "--tracking-uri" in err
    no_traceback(err)
    assert took < 5, f"the check took {took:.1f} s: something trained first"
    assert len(runs_in(db)) == before


def test_a_locked_store_is_named_after_the_wait(tmp_path, capsys, monkeypatch):
    db = recorded_store(tmp_path / "store")
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 0.5)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.perf_counter()
        code = main([*TRAIN, "--tracking-uri", f"sqlite:///{db}"])
        waited = time.perf_counter() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{db} is locked by another process" in err and "0.5 s" in err
    assert 0.5 <= waited < 5
    no_traceback(err)
    assert len(runs_in(db)) == 1


def test_a_deleted_database_whose_artifacts_remain_is_not_created_anew(tmp_path, capsys):
    db = recorded_store(tmp_path / "store")
    artifacts = db.parent / "mlartifacts"
    assert list(artifacts.glob("*/*/artifacts/config.json"))  # kept beside the database
    db.unlink()
    uri = f"sqlite:///{db}"

    assert main([*TRAIN, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert f"the MLflow database {db} is gone" in err and str(artifacts) in err
    assert "1 run recorded in it" in err and "Restore mlflow.db" in err
    no_traceback(err)

    suite = write_suite(tmp_path / "suite", "name: gone\nmethods: [ce]\n")
    for extra in ([], ["--dry-run"]):
        assert sweep_main(parse_sweep(str(suite), "--tracking-uri", uri, *extra)) == 2
        assert "is gone" in capsys.readouterr().err
    assert main(["leaderboard", str(suite), "--tracking-uri", uri]) == 2
    assert "is gone" in capsys.readouterr().err
    assert not db.exists()

    # Another database beside the artifacts may own them: no sign that this one is gone.
    recorded_store(tmp_path / "store-two")
    shutil.copytree(artifacts, tmp_path / "store-two" / "other-artifacts")
    store.check_store(f"sqlite:///{tmp_path / 'store-two' / 'new.db'}")


def test_reading_a_database_that_does_not_exist_creates_none(tmp_path, capsys):
    db = tmp_path / "never.db"
    suite = write_suite(tmp_path / "suite", "name: never\nmethods: [ce]\n")
    assert main(["leaderboard", str(suite), "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert f"{db} does not exist" in err
    no_traceback(err)
    assert not db.exists()


def test_an_unreachable_server_is_named_at_once(capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    code = main([*TRAIN, "--tracking-uri", f"http://127.0.0.1:{port}"])
    assert time.perf_counter() - started < 10
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"the MLflow server http://127.0.0.1:{port} is not reachable" in err
    no_traceback(err)


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------

SUITE_HEAD = """\
datasets: [digits]
seeds: [0]
recipe:
  student: {epochs: 1, batch_size: 128, augment: false}
  teacher: {epochs: 1}
resources: {cpu: 1}
max_failures: 1
"""
PAIR = "pairs:\n  - {teacher: test_resnet_wide, student: test_resnet_narrow}\n"


def write_suite(folder: Path, body: str, pairs: str = PAIR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(body + pairs + SUITE_HEAD)
    return folder


def parse_sweep(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    return parser.parse_args(argv)


MARKED = '''
from pathlib import Path

from bench.api import Method, register_method

Path(__file__).with_suffix(".ran").write_text("imported")


@register_method("marked")
class Marked(Method):
    """Leaves a file beside itself when imported."""

    knowledge = "logits"
    uses_teacher = False

    class Params(Method.Params):
        pass
'''


@pytest.mark.parametrize("where", ["suite", "command line"])
def test_a_dry_run_lists_plugin_files_and_executes_none(where, tmp_path, capsys):
    plugin = tmp_path / "marked.py"
    plugin.write_text(MARKED)
    listed = f"plugins: [{plugin}]\n" if where == "suite" else ""
    folder = write_suite(tmp_path / "suite", f"name: marked\nmethods: [ce, marked]\n{listed}")
    given = ["--plugins", str(plugin)] if where == "command line" else []
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = sweep_main(parse_sweep(str(folder), "--dry-run", "--tracking-uri", uri, *given))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert not plugin.with_suffix(".ran").exists()
    assert "plugin files a sweep imports (not run by --dry-run):" in out.out
    assert str(plugin) in out.out
    assert "not checked or listed above: marked" in out.out
    assert "1 trials" in out.out  # ce's; marked's are not known without its file
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("content", [b"", b"\x8f\x00 random bytes, not a checkpoint" * 20])
def test_a_dry_run_names_an_unreadable_teacher_checkpoint(content, tmp_path, capsys):
    checkpoint = tmp_path / "teacher.pt"
    checkpoint.write_bytes(content)
    pair = (
        "pairs:\n  - {teacher: test_resnet_wide, student: test_resnet_narrow, "
        f"teacher_checkpoint: {checkpoint}}}\n"
    )
    folder = write_suite(tmp_path / "suite", "name: ckpt\nmethods: [kd]\n", pair)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sweep_main(parse_sweep(str(folder), "--dry-run", "--tracking-uri", uri)) == 2
    err = capsys.readouterr().err
    assert f"teacher_checkpoint of test_resnet_wide: {checkpoint} is not a readable" in err
    no_traceback(err)

    torch.save({"weight": torch.zeros(2)}, checkpoint)
    assert sweep_main(parse_sweep(str(folder), "--dry-run", "--tracking-uri", uri)) == 0
    assert f"loaded from {checkpoint}" in capsys.readouterr().out


def test_a_finished_attempt_another_driver_took_for_lost_keeps_no_failure_tag(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = TrialConfig(
        dataset="digits",
        student="test_resnet_narrow",
        method="ce",
        seed=0,
        recipe=Recipe(epochs=1, batch_size=128, augment=False),
        compute=Compute(device="cpu", threads=1),
    )
    config, key = keyed_trial(config)  # a worker refuses a trial under any other key
    context = SweepContext(
        tracking_uri=uri,
        experiment="lost",
        sweep="sweep-a",
        parent_run_id="",
        home=os.environ["KDBENCH_HOME"],
        trials={key: config},
        resources={key: Resources(cpu=1)},
    )
    tracker = Tracker(uri, experiment="lost")

    def report(result: dict) -> None:
        if "epoch" in result:  # mid-trial: a second driver of the sweep starts and marks it
            ledger.supersede_stale(
                tracker, ledger.key_runs(tracker, key), "sweep-a", by="another driver"
            )

    threads = torch.get_num_threads()
    try:
        result = run_trial_once(key, context, report=report)
    finally:
        torch.set_num_threads(threads)
    assert result["kdbench_status"] == "FINISHED"
    (run,) = ledger.key_runs(tracker, key)
    assert run.info.status == "FINISHED"
    assert ledger.ERROR_TAG not in run.data.tags
    assert ledger.SUPERSEDED_TAG not in run.data.tags


BROKEN_TEACHER = """
from timm.models import register_model

from bench.models.tiny import test_resnet_wide


def train(self, mode=True):
    if mode:
        raise ValueError(
            "teacher exploded in training\\n"
            "  the first line of its detail\\n"
            "  /somewhere/the/last/line/is/a/path.py"
        )
    return super(type(self), self).train(mode)


@register_model
def exploding_teacher(pretrained=False, **kwargs):
    model = test_resnet_wide(pretrained=pretrained, **kwargs)
    model.__class__ = type("Exploding", (type(model),), {"train": train})
    return model
"""


@pytest.mark.slow  # real Ray, ~25 s; the diverging teacher of test_hardening_files covers the path
def test_a_failed_teachers_whole_reason_is_in_the_summary_and_in_mlflow(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("RAY_worker_niceness", "0")  # see test_cluster.py
    plugin = tmp_path / "exploding.py"
    plugin.write_text(BROKEN_TEACHER)
    pair = "pairs:\n  - {teacher: exploding_teacher, student: test_resnet_narrow}\n"
    body = f"name: exploding\nmethods: [kd]\nplugins: [{plugin}]\n"
    folder = write_suite(tmp_path / "suite", body, pair)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sweep_main(parse_sweep(str(folder), "--tracking-uri", uri)) == 1
    out = capsys.readouterr().out
    summary = out[out.index("failed or not run:") :]
    for line in (
        "ValueError: teacher exploded in training",
        "the first line of its detail",
        "/somewhere/the/last/line/is/a/path.py",
    ):
        assert line in summary, summary
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("exploding")
    (parent,) = client.search_runs([experiment.experiment_id])  # no trial ran
    assert parent.data.tags[ledger.TEACHERS_FAILED_TAG] == "1"
    folder_of = Path(client.download_artifacts(parent.info.run_id, ledger.TEACHER_FAILURES_FILE))
    recorded = folder_of.read_text()
    assert "teacher exploded in training" in recorded and "the first line of its detail" in recorded
    assert "kd digits exploding_teacher->test_resnet_narrow seed 0" in recorded


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------

HOSTILE = "<img src=x onerror=alert(1)>"


def test_markup_in_run_data_is_escaped_in_the_readme(tmp_path, capsys):
    source = ROOT / "leaderboards" / "digits"
    runs = pd.read_csv(source / "results.csv", dtype=str, keep_default_na=False)
    runs.loc[runs["method"] == "dkd", "method"] = HOSTILE
    failed = runs.index[runs["method"] == "kd"][0]
    runs.loc[failed, ["status", "outcome", "error"]] = ["FAILED", "failed", "<script>x</script>"]
    given = tmp_path / "given"
    given.mkdir()
    runs.to_csv(given / "results.csv", index=False)
    shutil.copy(source / "models.csv", given / "models.csv")
    out = tmp_path / "out"
    assert main(["leaderboard", str(out), "--from-csv", str(given / "results.csv"), "--quiet"]) == 0
    capsys.readouterr()
    readme = (out / "README.md").read_text()
    assert HOSTILE in readme  # in code spans, which show it verbatim
    outside_code = "".join(readme.split("`")[::2])
    assert not re.search(r"(?<!\\)<[a-z/]", outside_code)  # every tag escaped
    assert "\\<img src=x onerror=alert(1)>@1" in readme  # the critical-difference groups
    assert "\\<script>x\\</script>" in readme  # a failure reason in a cell table
