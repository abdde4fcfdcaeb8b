"""The cluster: ``ray_cluster.yaml`` checked offline with Ray's own validators; on a simulated
multi-node cluster (a head with no CPUs, two workers with fake GPUs) and a real ``mlflow
server``, the preflight and a sweep that survives a worker node killed mid-trial."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from bench.suite.expand import plan_trials
from bench.suite.load import load_suite, parse_suite
from bench.sweep import ledger
from bench.sweep.preflight import (
    PreflightError,
    cluster_view,
    preflight,
    probe_node,
    validate_cluster_config,
)
from bench.tracking import RUN_KEY_TAG

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILE = ROOT / "ray_cluster.yaml"

SUITE = """\
name: {name}
datasets: [digits]
pairs:
  - {{teacher: test_resnet_wide, student: test_resnet_narrow}}
methods: [ce, kd]
seeds: [0, 1]
recipe:
  student: {{epochs: {epochs}, batch_size: 128, augment: false}}
  teacher: {{epochs: 1}}
resources: {{cpu: 1, gpu: 0.5}}
max_failures: 3
"""


# --------------------------------------------------------------------------------------------
# ray_cluster.yaml, offline
# --------------------------------------------------------------------------------------------


def load_cluster_file() -> dict:
    return yaml.safe_load(CLUSTER_FILE.read_text())


def test_ray_cluster_yaml_passes_rays_validators_and_serves_mlflow_from_the_head():
    assert validate_cluster_config(CLUSTER_FILE) == []
    config = load_cluster_file()
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    start = "\n".join(config["head_start_ray_commands"])
    assert "mlflow server --backend-store-uri postgresql://" in start
    assert "--artifacts-destination /shared/kdbench/" in start
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in start
    # Installed as README's main command does it: scripts/main.sh sources scripts/env.sh.
    assert 'source "$root/scripts/env.sh"' in (ROOT / "scripts" / "main.sh").read_text()
    assert "cd ~/kdbench && source scripts/env.sh" in config["setup_commands"]
    assert any("KDBENCH_HOME=/shared/kdbench" in c for c in config["setup_commands"])
    assert all(
        "KDBENCH_HOME=/shared/kdbench ray start" in c[-1]
        for c in (config["head_start_ray_commands"], config["worker_start_ray_commands"])
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda c: c.update(max_worker=c.pop("max_workers")),
            "$: Additional properties are not allowed ('max_worker' was unexpected)",
        ),
        (
            lambda c: c["available_node_types"]["gpu_1x"].update(min_worker=0),
            "$.available_node_types.gpu_1x: Additional properties are not allowed",
        ),
        (
            lambda c: c["provider"].update(regoin=c["provider"].pop("region")),
            "$.provider: unknown aws provider key 'regoin'; did you mean 'region'?",
        ),
        (
            lambda c: c.update(head_node_type="hed"),
            "`head_node_type` must be one of `available_node_types`",
        ),
        (
            lambda c: c.update(provider={"type": "gcp", "region": "us-west1"}),
            "$.provider: the gcp provider needs 'project_id'",
        ),
    ],
)
def test_cluster_file_mistakes_are_reported_with_their_path(edit, expected):
    config = copy.deepcopy(load_cluster_file())
    edit(config)
    problems = validate_cluster_config(config)
    assert any(expected in p for p in problems), problems
    assert all(len(p) < 500 for p in problems)  # the message, not the whole schema


# --------------------------------------------------------------------------------------------
# A simulated cluster and a real MLflow server, shared by the tests below
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=folder, env=env, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (folder / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
            time.sleep(0.3)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # Ray runs workers at niceness 15; on a machine shared with other jobs that starves the
    # trials these tests time.
    previous = os.environ.get("RAY_worker_niceness")  # noqa: SIM112 (Ray reads this name)
    os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112

    # Fast node-failure detection, so a killed node's trials are retried within seconds.
    system_config = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "_system_config": system_config},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_worker_niceness", None)
        else:
            os.environ["RAY_worker_niceness"] = previous  # noqa: SIM112


def test_preflight_rejects_a_local_store_an_unreachable_server_and_an_impossible_trial(
    cluster, mlflow_server, tmp_path
):
    import ray

    good = parse_suite(SUITE.format(name="pre", epochs=1))
    too_big = parse_suite(SUITE.format(name="pre", epochs=1).replace("gpu: 0.5", "gpu: 2"))
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        view = cluster_view()
        assert len(view.nodes) == 3 and view.multi_node
        with pytest.raises(PreflightError) as caught:
            preflight(
                suite=too_big,
                tracking_uri=f"sqlite:///{tmp_path / 'x.db'}",
                shared_paths=[tmp_path],
                view=view,
            )
        message = str(caught.value)
        assert "nothing was run" in message
        assert "is a local SQLite file, but trials run on 3 nodes" in message
        assert "asks for cpu 1, gpu 2 per trial, but no node of the cluster" in message
        with pytest.raises(PreflightError, match="not reachable from the driver"):
            preflight(
                suite=good, tracking_uri="http://127.0.0.1:9", shared_paths=[tmp_path], view=view
            )
        # The real server: every node reaches it and sees the shared folder.
        preflight(suite=good, tracking_uri=mlflow_server, shared_paths=[tmp_path], view=view)
    finally:
        ray.shutdown()
    answer = probe_node(mlflow_server, {str(tmp_path / "not-shared"): "token"})
    assert answer["tracking"] is None and answer["shared"] == {str(tmp_path / "not-shared"): False}


@pytest.mark.slow  # ~40 s; a killed node is also the default run's checkpoint-resume test
def test_a_sweep_survives_a_worker_node_killed_mid_trial(cluster, mlflow_server, tmp_path):
    folder = tmp_path / "node-failure"
    folder.mkdir()
    # CPU trials: a trial asking for a GPU computes on CUDA (its run key says so), which Ray's
    # simulated GPUs do not have (the packing pilot on such a node: test_sweep_packing.py).
    suite = SUITE.format(name="node-failure", epochs=6).replace("gpu: 0.5", "gpu: 0")
    (folder / "suite.yaml").write_text(suite)
    planned = {t.key for t in plan_trials(load_suite(folder))}
    client = MlflowClient(mlflow_server)
    log_path = tmp_path / "driver.log"
    command = [
        sys.executable, "-m", "bench.cli", "sweep", str(folder),
        "--address", cluster.address, "--tracking-uri", mlflow_server,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        workers = {node.node_id: node for node in cluster.worker_nodes}
        victim = None
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            for run in trial_runs(client, "node-failure"):
                node = run.data.tags.get(ledger.NODE_TAG)
                if run.info.status == "RUNNING" and node in workers:
                    victim = (run.info.run_id, node)
                    break
            time.sleep(0.1)
        assert victim is not None, log_path.read_text()[-3000:]
        cluster.remove_node(workers[victim[1]], allow_graceful=False)
        assert driver.wait(timeout=300) == 0, log_path.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        cluster.add_node(num_cpus=1, num_gpus=1)  # leave the fixture as it was

    runs = trial_runs(client, "node-failure")
    finished = Counter(r.data.tags[RUN_KEY_TAG] for r in runs if r.info.status == "FINISHED")
    assert finished == dict.fromkeys(planned, 1)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = client.get_run(victim[0])
    assert killed.info.status == "KILLED", killed.info.status
    assert ledger.SUPERSEDED_TAG in killed.data.tags
    key = killed.data.tags[RUN_KEY_TAG]
    retried = next(
        r for r in runs if r.data.tags[RUN_KEY_TAG] == key and r.info.status == "FINISHED"
    )
    assert retried.data.tags[ledger.NODE_TAG] != victim[1]
    assert int(retried.data.tags[ledger.ATTEMPT_TAG]) >= 2
    parents = [r for r in all_runs(client, "node-failure") if ledger.KIND_TAG in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags[ledger.PARENT_TAG] for r in runs} == {parents[0].info.run_id}


def all_runs(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


def trial_runs(client: MlflowClient, experiment: str) -> list:
    return [r for r in all_runs(client, experiment) if RUN_KEY_TAG in r.data.tags]


RESUMABLE = """\
name: resume-node
datasets: [digits]
pairs:
  - {{teacher: test_resnet_wide, student: test_resnet_narrow}}
methods: [kd]
seeds: [3]
recipe:
  student: {{epochs: {epochs}, batch_size: 64, augment: false}}
  teacher: {{epochs: 1}}
resources: {{cpu: 1}}
max_failures: 3
checkpoint: {{epochs: 1}}
"""


def test_a_trial_on_a_killed_node_continues_from_its_checkpoint(cluster, mlflow_server, tmp_path):
    import torch

    from bench.trial.compose import run_trial

    epochs = 8
    folder = tmp_path / "resume-node"
    folder.mkdir()
    (folder / "suite.yaml").write_text(RESUMABLE.format(epochs=epochs))
    (trial,) = plan_trials(load_suite(folder))
    storage = tmp_path / "storage"
    client = MlflowClient(mlflow_server)
    log_path = tmp_path / "driver.log"
    command = [
        sys.executable, "-m", "bench.cli", "sweep", str(folder), "--address", cluster.address,
        "--tracking-uri", mlflow_server, "--storage-path", str(storage),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        workers = {node.node_id: node for node in cluster.worker_nodes}
        victim = None
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            saved = list(storage.glob(f"*/{trial.key}/checkpoint_*/trial_state.pt"))
            runs = [r for r in trial_runs(client, "resume-node") if r.info.status == "RUNNING"]
            if saved and runs and runs[0].data.tags.get(ledger.NODE_TAG) in workers:
                victim = runs[0]
            time.sleep(0.05)
        assert victim is not None, log_path.read_text()[-3000:]
        killed_ms = time.time() * 1000
        cluster.remove_node(workers[victim.data.tags[ledger.NODE_TAG]], allow_graceful=False)
        assert driver.wait(timeout=300) == 0, log_path.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        cluster.add_node(num_cpus=1, num_gpus=1)  # leave the fixture as it was

    (run,) = [r for r in trial_runs(client, "resume-node") if r.info.status != "KILLED"]
    assert run.info.run_id == victim.info.run_id  # the same run, continued
    assert run.info.status == "FINISHED", run.data.tags.get(ledger.ERROR_TAG)
    resumed_from = int(run.data.tags[ledger.RESUMED_TAG])
    assert 1 <= resumed_from < epochs  # continued from k, not from 0
    assert int(run.data.tags[ledger.ATTEMPT_TAG]) >= 2
    assert run.data.tags[ledger.NODE_TAG] != victim.data.tags[ledger.NODE_TAG]
    history = client.get_metric_history(run.info.run_id, "epoch_seconds")
    assert sorted(m.step for m in history) == list(range(epochs))  # each epoch once
    # The saved epochs are the ones the killed node trained; the later ones were trained
    # again after the kill (the node may have finished one more epoch than it saved).
    before_kill = {m.step for m in history if m.timestamp < killed_ms}
    assert set(range(resumed_from)) <= before_kill, (resumed_from, sorted(before_kill))
    assert epochs - 1 not in before_kill
    assert not list(storage.glob(f"*/{trial.key}/checkpoint_*"))  # deleted at the end

    # The same trial, never interrupted, on one thread as the sweep's trials run, from the
    # teacher the sweep cached: the same accuracy to the last bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = run_trial(trial.config)
    finally:
        torch.set_num_threads(threads)
    assert whole.status == "FINISHED", whole.error
    assert run.data.metrics["test_acc"] == whole.test_acc
    assert run.data.metrics["final_val_acc"] == whole.val_acc
