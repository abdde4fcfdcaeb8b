"""Sweeps on local Ray with real MLflow: one run per run key, failures recorded with their
reason, a second run that adds nothing, a killed driver resumed by the same command, and bad
input that starts nothing."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.suite.expand import plan_trials
from bench.suite.load import load_suite
from bench.sweep import ledger
from bench.sweep.cli import add_sweep_arguments, sweep_main
from bench.tracking import RUN_KEY_TAG, Tracker

ROOT = Path(__file__).resolve().parents[1]
# Shared with test_cluster.py: the same teacher spec, so the session's teacher cache serves both.
TEACHER = "{teacher: test_resnet_wide, student: test_resnet_narrow}"

BOOM = '''
from bench.api import Method, register_method


@register_method("boom")
class Boom(Method):
    """Fails on its first step, for the sweep tests."""

    knowledge = "logits"
    uses_teacher = False

    class Params(Method.Params):
        pass

    def loss(self, batch, student, teacher):
        raise ValueError("boom: this method always fails")
'''


def write_suite(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(body)
    return folder


def suite_text(name: str, methods: str, seeds: str, epochs: int, plugins: str = "") -> str:
    return f"""\
name: {name}
datasets: [digits]
pairs:
  - {TEACHER}
methods: {methods}
seeds: {seeds}
recipe:
  student: {{epochs: {epochs}, batch_size: 128, augment: false}}
  teacher: {{epochs: 1}}
resources: {{cpu: 1}}
max_failures: 2
{plugins}"""


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    return parser.parse_args(argv)


def runs_of(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


def trial_runs(uri: str, experiment: str) -> list:
    return [r for r in runs_of(uri, experiment) if RUN_KEY_TAG in r.data.tags]


def finished_per_key(uri: str, experiment: str) -> Counter:
    return Counter(
        r.data.tags[RUN_KEY_TAG] for r in trial_runs(uri, experiment) if r.info.status == "FINISHED"
    )


@pytest.fixture(scope="module")
def boom_plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugins") / "boom.py"
    path.write_text(BOOM)
    return path


def test_sweep_records_every_trial_once_and_running_it_again_adds_nothing(
    tmp_path, boom_plugin, capsys, monkeypatch
):
    monkeypatch.setenv("RAY_worker_niceness", "0")  # see test_cluster.py
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plugins = f"plugins: [{boom_plugin}]"
    body = suite_text("once", "[ce, kd, boom]", "[0, 1]", epochs=1, plugins=plugins)
    suite_dir = write_suite(tmp_path / "once", body)
    planned = {t.key: t for t in plan_trials(load_suite(suite_dir))}

    assert sweep_main(parse(str(suite_dir), "--tracking-uri", uri)) == 1  # boom failed
    out = capsys.readouterr()
    runs = trial_runs(uri, "once")
    assert {r.data.tags[RUN_KEY_TAG] for r in runs} == set(planned)
    assert len(runs) == len(planned) == 6
    by_status = Counter((planned[r.data.tags[RUN_KEY_TAG]].method, r.info.status) for r in runs)
    assert by_status == {("ce", "FINISHED"): 2, ("kd", "FINISHED"): 2, ("boom", "FAILED"): 2}
    failed = next(r for r in runs if r.info.status == "FAILED")
    error = failed.data.tags[ledger.ERROR_TAG]
    assert "ValueError: boom: this method always fails" in error and "line" in error
    assert failed.data.tags[ledger.OUTCOME_TAG] == "failed"
    finished = next(r for r in runs if r.info.status == "FINISHED")
    assert 0.0 <= finished.data.metrics["test_acc"] <= 1.0
    parents = [r for r in runs_of(uri, "once") if r.data.tags.get(ledger.KIND_TAG) == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert parents[0].data.metrics["finished"] == 4 and parents[0].data.metrics["failed"] == 2
    assert {r.data.tags[ledger.PARENT_TAG] for r in runs} == {parents[0].info.run_id}
    assert "boom: this method always fails" in out.out  # the summary says what failed and why
    assert "test_acc over seeds" in out.out and uri in out.out
    assert "4/6 done · 0 running · 0 pending · 2 failed" in out.err  # the live view

    started = time.perf_counter()
    assert sweep_main(parse(str(suite_dir), "--tracking-uri", uri)) == 1
    again = time.perf_counter() - started
    assert len(runs_of(uri, "once")) == 7  # the six trial runs and the parent: nothing added
    assert "already recorded" in capsys.readouterr().err
    assert again < 15, f"a sweep with nothing to do took {again:.1f} s"

    assert sweep_main(parse(str(suite_dir), "--tracking-uri", uri, "--dry-run")) == 0
    matrix = capsys.readouterr().out
    assert "6 already done, 0 to run" in matrix and matrix.count("x x") == 3
    assert all(key in matrix for key in planned)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)


def test_a_killed_driver_is_resumed_by_the_same_command(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    suite_dir = write_suite(tmp_path / "resume", suite_text("resume", "[ce, kd]", 3, epochs=4))
    planned = {t.key for t in plan_trials(load_suite(suite_dir))}
    command = [sys.executable, "-m", "bench.cli", "sweep", str(suite_dir), "--tracking-uri", uri]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_worker_niceness": "0"}
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            # Only read once the driver has created the database (two processes creating
            # MLflow's schema at once collide).
            started = "kdbench sweep: starting" in (tmp_path / "first.log").read_text()
            runs = trial_runs(uri, "resume") if started else []
            states = Counter(r.info.status for r in runs)
            if states["FINISHED"] >= 1 and states["RUNNING"] >= 1:
                break
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        # Every process the driver started (Ray's raylet and its workers, whatever their
        # process group): a worker that outlived the driver could still end its trial.
        tree = descendants(driver.pid)
        os.killpg(driver.pid, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        driver.wait()
        wait_gone(tree)
    before = {r.info.run_id: r for r in trial_runs(uri, "resume")}
    orphans = [r for r in before.values() if r.info.status == "RUNNING"]
    done_before = {r.info.run_id for r in before.values() if r.info.status == "FINISHED"}
    assert orphans and done_before

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "resuming resume" in second.stderr
    runs = trial_runs(uri, "resume")
    assert finished_per_key(uri, "resume") == dict.fromkeys(planned, 1)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    after = {r.info.run_id: r for r in runs}
    assert {rid for rid, r in after.items() if r.info.status == "FINISHED"} >= done_before
    for orphan in orphans:
        dead = after[orphan.info.run_id]
        assert dead.info.status == "KILLED"
        assert ledger.SUPERSEDED_TAG in dead.data.tags
    parents = [r for r in runs_of(uri, "resume") if r.data.tags.get(ledger.KIND_TAG) == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_bad_suites_and_impossible_resources_start_nothing(tmp_path, capsys):
    import ray

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bad = write_suite(tmp_path / "bad", suite_text("bad", "[ce, kdd]", 2, epochs=1))
    assert sweep_main(parse(str(bad), "--tracking-uri", uri)) == 2
    err = capsys.readouterr().err
    assert "methods[1].name: unknown method 'kdd'. Did you mean 'kd'" in err
    assert "nothing was run" in err
    too_many = f"{{cpu: {os.cpu_count() + 1}}}"
    big = write_suite(
        tmp_path / "big", suite_text("big", "[ce]", 1, epochs=1).replace("{cpu: 1}", too_many)
    )
    assert sweep_main(parse(str(big), "--tracking-uri", uri)) == 2
    assert "but no node of this machine has that much" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not ray.is_initialized()


def test_a_recorded_failure_settles_its_key_unless_failures_are_retried(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="ledger")
    client = tracker.client

    def run(key: str, status: str, **tags: str) -> str:
        made = client.create_run(tracker.experiment_id, tags={RUN_KEY_TAG: key, **tags})
        client.set_terminated(made.info.run_id, status)
        return made.info.run_id

    first = run("a", "FINISHED")
    second = run("a", "FINISHED")
    verdict = run("b", "FAILED", **{ledger.OUTCOME_TAG: "failed"})
    run("c", "FAILED")  # no verdict: its worker died
    grouped = ledger.trial_runs(tracker)
    assert set(ledger.done_runs(grouped)) == {"a", "b"}
    assert set(ledger.done_runs(grouped, retry_failed=True)) == {"a"}
    assert ledger.done_runs(grouped)["b"].info.run_id == verdict
    assert ledger.deduplicate(tracker, grouped) == [second]
    assert client.get_run(second).data.tags[ledger.DUPLICATE_TAG] == first
    assert client.get_run(second).info.status == "KILLED"
    assert ledger.done_runs(ledger.trial_runs(tracker))["a"].info.run_id == first


def test_the_live_view_counts_trials_shows_the_best_and_estimates_the_time_left(tmp_path):
    import io

    from bench.sweep.progress import ProgressBoard
    from bench.sweep.worker import STATUS

    body = suite_text("view", "[ce, kd]", 2, epochs=1)
    trials = {t.key: t for t in plan_trials(load_suite(write_suite(tmp_path / "view", body)))}
    keys = list(trials)
    now = [100.0]
    stream = io.StringIO()
    board = ProgressBoard(trials, "test_acc", stream, interval=30, clock=lambda: now[0])
    board.trial_started(keys[0])
    board.trial_started(keys[1])
    assert "0/4 done · 2 running · 2 pending · 0 failed" in board.line()
    assert board.line().endswith("ETA ?")
    now[0] = 112.0
    board.trial_result(keys[0], {"epoch": 1, "val_acc": 0.5})  # per-epoch: not an outcome
    board.trial_result(keys[0], {STATUS: "FINISHED", "test_acc": 0.9, "trial_seconds": 12.0})
    board.trial_result(keys[1], {STATUS: "FAILED", "error": "non-finite loss\nat epoch 0"})
    line = board.line()
    assert "[   12s] 1/4 done · 0 running · 2 pending · 1 failed" in line
    assert f"best test_acc 0.9000 ({trials[keys[0]].describe()})" in line
    assert board.eta() == pytest.approx(12.0 * 2 / 2)  # mean trial × pending / 2 slots seen
    board.trial_started(keys[2])
    board.trial_retried(keys[2])
    assert board.retries == 1 and board.counts()["pending"] == 2
    text = stream.getvalue()
    assert f"  done   {trials[keys[0]].describe()}  test_acc 0.9000  (12.0s)" in text
    assert f"  FAILED {trials[keys[1]].describe()}: non-finite loss\n" in text
