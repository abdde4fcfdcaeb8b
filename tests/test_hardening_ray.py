"""A local sweep's Ray, seen from outside: it listens on loopback only, a sweep refuses to run
exposed, and when its driver is SIGKILLed every process it started is gone within 20 s (and
the same command then finishes the sweep)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.suite.expand import plan_trials
from bench.suite.load import load_suite
from bench.sweep import ledger
from bench.sweep.cli import add_sweep_arguments, sweep_main
from bench.sweep.localray import exposed_sockets, is_loopback, listening_sockets
from bench.tracking import RUN_KEY_TAG

ROOT = Path(__file__).resolve().parents[1]
# Shared with test_sweep.py: the same teacher spec, so the session's teacher cache serves both.
TEACHER = "{teacher: test_resnet_wide, student: test_resnet_narrow}"
# The test's own mark on the driver's environment: what carries it is the sweep's, whichever
# process became its parent (an outside view, independent of the sweep's own bookkeeping).
MARK = "KDBENCH_TEST_SWEEP_MARK"

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc")


def suite_dir(folder: Path, name: str, seeds: str, epochs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(f"""\
name: {name}
datasets: [digits]
pairs:
  - {TEACHER}
methods: [ce]
seeds: {seeds}
recipe:
  student: {{epochs: {epochs}, batch_size: 128, augment: false}}
  teacher: {{epochs: 1}}
resources: {{cpu: 1}}
max_failures: 2
""")
    return folder


def trial_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000) if found else []
    return [r for r in runs if RUN_KEY_TAG in r.data.tags]


# --------------------------------------------------------------------------------------------
# The outside view: processes and sockets as /proc and ss show them
# --------------------------------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid → (parent, start time, state)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            table[int(stat.parent.name)] = (int(fields[1]), int(fields[19]), fields[0])
    return table


def tree(pid: int, table: dict[int, tuple[int, int, str]]) -> dict[int, int]:
    """Every live process below ``pid``: pid → start time."""
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, started, state) in table.items():
            if ppid == parent and state != "Z" and child not in found:
                found[child] = started
                todo.append(child)
    return found


def marked(mark: str, table: dict[int, tuple[int, int, str]]) -> dict[int, int]:
    """Every live process whose environment carries ``MARK=mark``."""
    found = {}
    needle = f"{MARK}={mark}".encode()
    for pid, (_, started, state) in table.items():
        with contextlib.suppress(OSError):
            if state != "Z" and needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found[pid] = started
    return found


def alive(seen: dict[int, int], mark: str) -> dict[int, int]:
    """Which of ``seen`` (the same processes: same start time) and of the marked ones live."""
    table = process_table()
    left = {p: s for p, s in seen.items() if p in table and table[p][1:] == (s, table[p][2])}
    left = {p: s for p, s in left.items() if table[p][2] != "Z"}
    left.update(marked(mark, table))
    return left


def describe(pids) -> str:
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            lines.append(f"{pid} {raw[:100].decode(errors='replace')}")
    return "\n".join(lines)


def ss_listening(pids: set[int]) -> list[tuple[str, str, int]] | None:
    """(process name, address, pid) of every TCP/UDP socket ``pids`` listen on, as ``ss``
    reports it; None without ``ss``."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        local = fields[4]
        address = local.rsplit(":", 1)[0].strip("[]").split("%")[0]
        for name, pid in re.findall(r'\("([^"]*)",pid=(\d+)', line):
            if int(pid) in pids:
                found.append((name, "0.0.0.0" if address == "*" else address, int(pid)))
    return found


@contextlib.contextmanager
def ray_temp() -> Iterator[dict[str, str]]:
    """Ray's session folders in a folder of the test's (short: Ray's socket paths are
    limited), removed after."""
    folder = tempfile.mkdtemp(prefix="kr-", dir="/tmp")
    try:
        yield {"RAY_TMPDIR": folder}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_sweep(folder: Path, uri: str, log: Path, mark: str, env: dict) -> subprocess.Popen:
    command = [sys.executable, "-m", "bench.cli", "sweep", str(folder), "--tracking-uri", uri]
    environment = {**os.environ, **env, "PYTHONUNBUFFERED": "1", MARK: mark}
    environment["RAY_worker_niceness"] = "0"  # see test_cluster.py
    with log.open("w") as handle:
        # Not a session of its own: the kill below is for the driver alone, not its group.
        return subprocess.Popen(command, env=environment, stdout=handle, stderr=handle)


def observe(
    driver: int, mark: str, seen: dict[int, int], sockets: dict[tuple[str, str, int], None]
) -> None:
    """One look at the sweep from outside: note its processes and the sockets they listen on
    (``ss``, or the same view from /proc where there is no ``ss``)."""
    table = process_table()
    seen.update(tree(driver, table))
    seen.update(marked(mark, table))
    listed = ss_listening({driver, *seen})
    if listed is None:
        listed = [(s.process, s.address, s.pid) for s in listening_sockets([driver, *seen])]
    sockets.update(dict.fromkeys(listed))


def every_kind_listens(sockets: dict[tuple[str, str, int], None], driver: int) -> bool:
    """The GCS, the raylet, the runtime-env agent, a worker and the driver have been seen
    listening."""
    names = {name for name, _, _ in sockets}
    worker = any(
        pid != driver and name.startswith("ray::") and "Agent" not in name
        for name, _, pid in sockets
    )
    return (
        {"gcs_server", "raylet"} <= names
        and any(n.startswith("ray::RuntimeEnv") for n in names)
        and worker
        and any(pid == driver for _, _, pid in sockets)
    )


def kill_driver(
    driver: subprocess.Popen, seen: dict[int, int], mark: str
) -> tuple[float, dict[int, int]]:
    """SIGKILL the driver alone; wait up to 20 s for what it started to be gone. Returns the
    seconds waited and what is still alive."""
    os.kill(driver.pid, signal.SIGKILL)
    killed = time.monotonic()
    driver.wait()
    while alive(seen, mark) and time.monotonic() - killed < 20:
        time.sleep(0.1)
    return time.monotonic() - killed, alive(seen, mark)


def kill_all(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_sockets_beyond_this_machine_are_told_from_loopback_ones():
    opened = []
    try:
        for family, kind, host in [
            (socket.AF_INET, socket.SOCK_STREAM, "0.0.0.0"),
            (socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
            (socket.AF_INET, socket.SOCK_STREAM, "127.4.5.6"),
            (socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0"),
            (socket.AF_INET6, socket.SOCK_STREAM, "::"),
            (socket.AF_INET6, socket.SOCK_STREAM, "::1"),
        ]:
            sock = socket.socket(family, kind)
            sock.bind((host, 0))
            if kind == socket.SOCK_STREAM:
                sock.listen()
            opened.append((host, kind, sock.getsockname()[1], sock))
        connected = socket.create_connection(("127.0.0.1", opened[1][2]))  # not a listener
        opened.append(("", 0, 0, connected))
        mine = {(s.address, s.port) for s in listening_sockets([os.getpid()])}
        assert {(h, p) for h, _, p, _ in opened[:6]} <= mine
        exposed = {(s.address, s.port, s.protocol) for s in exposed_sockets([os.getpid()])}
        assert exposed == {
            ("0.0.0.0", opened[0][2], "tcp"),
            ("0.0.0.0", opened[3][2], "udp"),
            ("::", opened[4][2], "tcp6"),
        }
    finally:
        for *_, sock in opened:
            sock.close()
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("127.255.0.1") and is_loopback("::1")
    assert not is_loopback("::ffff:192.0.2.2") and not is_loopback("::")


WATCHED = """
import signal, subprocess, sys, time
from bench.sweep.watchdog import watchdog

with watchdog("test-token"):
    # A process of its own session and group that ignores SIGTERM, as a stuck agent might.
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('up', flush=True); time.sleep(600)"],
        start_new_session=True, stdout=subprocess.PIPE)
    stubborn.stdout.readline()
    print(stubborn.pid, flush=True)
    time.sleep(600)
"""


def test_the_watchdog_ends_what_a_killed_driver_started_even_what_ignores_sigterm(tmp_path):
    mark = uuid.uuid4().hex
    env = {**os.environ, MARK: mark}
    driver = subprocess.Popen(
        [sys.executable, "-c", WATCHED], env=env, stdout=subprocess.PIPE, text=True
    )
    seen: dict[int, int] = {}
    try:
        stubborn = int(driver.stdout.readline())
        time.sleep(1)  # the watchdog notes the driver's new processes every quarter second
        seen = tree(driver.pid, process_table())
        assert stubborn in seen and len(seen) == 2  # it and the watchdog
        took, left = kill_driver(driver, seen, mark)
    finally:
        kill_all(alive(seen, mark))
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert not left, describe(left)
    assert 1.5 < took < 10  # SIGTERM was ignored; SIGKILL followed after the grace period


@pytest.mark.slow  # ~25 s: Ray starts and is refused
def test_a_sweep_that_would_listen_beyond_this_machine_does_not_start(tmp_path, monkeypatch):
    """The driver itself holds a socket open to every interface: the check after Ray starts
    names it, Ray is shut down, nothing is recorded and nothing is left running."""
    import ray

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = suite_dir(tmp_path / "exposed", "exposed", "[0]", epochs=1)
    before = set(tree(os.getpid(), process_table()))
    listener = socket.create_server(("0.0.0.0", 0))
    port = listener.getsockname()[1]
    try:
        with ray_temp() as env:
            monkeypatch.setenv("RAY_TMPDIR", env["RAY_TMPDIR"])
            parser = argparse.ArgumentParser()
            add_sweep_arguments(parser)
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = sweep_main(parser.parse_args([str(folder), "--tracking-uri", uri]))
    finally:
        listener.close()
    message = err.getvalue()
    assert code == 2, message
    assert f"0.0.0.0:{port} (tcp, pid {os.getpid()}" in message
    assert "would listen beyond this machine" in message and "Traceback" not in message
    assert not ray.is_initialized()
    assert trial_runs(uri, "exposed") == []
    left = set(tree(os.getpid(), process_table())) - before
    assert not left, describe(left)


def test_a_local_sweep_listens_on_loopback_only_and_a_killed_driver_leaves_nothing(tmp_path):
    """Killed as soon as every kind of Ray process listens (the slow test below kills a driver
    whose trials are training)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = suite_dir(tmp_path / "loopback", "loopback", "[0, 1]", epochs=30)
    log = tmp_path / "driver.log"
    mark = uuid.uuid4().hex
    seen: dict[int, int] = {}
    sockets: dict[tuple[str, str, int], None] = {}
    with ray_temp() as env:
        driver = start_sweep(folder, uri, log, mark, env)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and driver.poll() is None:
                observe(driver.pid, mark, seen, sockets)
                if every_kind_listens(sockets, driver.pid):
                    break
                time.sleep(0.2)
            assert driver.poll() is None, log.read_text()[-3000:]
            observe(driver.pid, mark, seen, sockets)
            took, left = kill_driver(driver, seen, mark)
        finally:
            kill_all(alive(seen, mark))
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    assert every_kind_listens(sockets, driver.pid), sockets  # the check below is not empty
    outside = [s for s in sockets if not is_loopback(s[1])]
    assert not outside, f"listening beyond this machine: {outside}"
    assert not left, f"alive {took:.1f} s after the driver was killed:\n{describe(left)}"
    print(f"the sweep's {len(seen)} processes were gone {took:.1f} s after the driver's SIGKILL")


@pytest.mark.slow
def test_after_its_driver_is_killed_a_sweep_leaves_nothing_and_the_same_command_finishes_it(
    tmp_path,
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = suite_dir(tmp_path / "killed", "killed", "[0, 1, 2]", epochs=4)
    planned = {t.key for t in plan_trials(load_suite(folder))}
    log = tmp_path / "first.log"
    mark = uuid.uuid4().hex
    seen: dict[int, int] = {}
    sockets: dict[tuple[str, str, int], None] = {}
    with ray_temp() as env:
        driver = start_sweep(folder, uri, log, mark, env)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and driver.poll() is None:
                observe(driver.pid, mark, seen, sockets)
                started = "kdbench sweep: starting" in log.read_text()
                states = Counter(r.info.status for r in trial_runs(uri, "killed") if started)
                if states["FINISHED"] >= 1 and states["RUNNING"] >= 1:
                    break
                time.sleep(0.2)
            assert driver.poll() is None, log.read_text()[-3000:]
            observe(driver.pid, mark, seen, sockets)
            took, _ = kill_driver(driver, seen, mark)
            print(f"the sweep's {len(seen)} processes were gone {took:.1f} s after its SIGKILL")
            time.sleep(max(0.0, 20 - took))
            left = alive(seen, mark)
        finally:
            kill_all(alive(seen, mark))
        assert every_kind_listens(sockets, driver.pid), sockets
        assert any(name.startswith("ray::ImplicitFu") for name, _, _ in sockets), sockets
        assert not [s for s in sockets if not is_loopback(s[1])], sockets
        assert not left, f"alive 20 s after the driver was killed:\n{describe(left)}"

        second = start_sweep(folder, uri, tmp_path / "second.log", mark, env)
        assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    runs = trial_runs(uri, "killed")
    finished = Counter(r.data.tags[RUN_KEY_TAG] for r in runs if r.info.status == "FINISHED")
    assert finished == dict.fromkeys(planned, 1)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert all(ledger.SUPERSEDED_TAG in r.data.tags for r in runs if r.info.status == "KILLED")
    assert not alive({}, mark)
