"""The watchdog of a sweep's Ray on this machine: when the driver ends, however it ends (even
by SIGKILL), every process it started for its Ray session ends within seconds.

Ray's GCS and raylet share their driver's fate, but its agents (``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``) outlive a driver that was killed, and its workers may for a while.
The watchdog is a small process of its own, started before Ray, in a session of its own (a
signal to the driver's process group or terminal does not reach it). It holds the read end of
a pipe whose write end only the driver holds, and while the driver lives it notes every process
started below the driver (with its start time, so a reused process id is never mistaken for
one). When the pipe closes or the driver is gone, it stops those processes, their children,
and any process whose environment carries the session's token (:data:`SESSION_ENV`, inherited
from the driver: a worker whose raylet died before the watchdog saw it): SIGTERM, then SIGKILL
for what is left after :data:`GRACE` seconds, until none is left.

The watchdog runs this file as a script on the standard library only, so it starts in
milliseconds whatever way kdbench was installed. It reads ``/proc`` (Linux); elsewhere it does
not start.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

SESSION_ENV = "KDBENCH_RAY_SESSION"
# How long the session's processes have to end on SIGTERM before they are killed.
GRACE = 2.0
# How often the watchdog notes the driver's new processes and checks that the driver lives
# (the pipe tells at once; this also catches a driver whose forked children hold the pipe).
_POLL = 0.25
_STOP = b"stop\n"
_READY = b"ready\n"
_PROC = Path("/proc")

# A process as /proc/<pid>/stat gives it: parent, start time (clock ticks since boot), state.
_Entry = tuple[int, int, str]


def processes() -> dict[int, _Entry]:
    """Every process this user can see: pid → (parent pid, start time, state)."""
    table = {}
    for entry in _PROC.glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The name field may hold spaces and parentheses; what follows the last ')' may not.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), int(fields[19]), fields[0])
    return table


def descendants(
    root: int, table: dict[int, _Entry] | None = None, skip: frozenset[int] = frozenset()
) -> dict[int, int]:
    """The live processes below ``root`` (not below those in ``skip``): pid → start time."""
    return _below([root], processes() if table is None else table, skip)


def _below(roots: list[int], table: dict[int, _Entry], skip: frozenset[int]) -> dict[int, int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _, state) in table.items():
        if state != "Z":
            children.setdefault(parent, []).append(pid)
    found: dict[int, int] = {}
    todo = list(roots)
    while todo:
        for pid in children.get(todo.pop(), []):
            if pid not in skip and pid not in found:
                found[pid] = table[pid][1]
                todo.append(pid)
    return found


def _marked(token: str, table: dict[int, _Entry]) -> dict[int, int]:
    """The live processes whose environment carries ``token`` as :data:`SESSION_ENV`."""
    marker = f"{SESSION_ENV}={token}".encode()
    found = {}
    for pid, (_, started, state) in table.items():
        with contextlib.suppress(OSError):
            if state != "Z" and marker in (_PROC / str(pid) / "environ").read_bytes().split(b"\0"):
                found[pid] = started
    return found


def _alive(known: dict[int, int], token: str) -> dict[int, int]:
    """What is left of the session: the processes noted (the same ones: same start time),
    their children, and the processes that carry the token."""
    table = processes()
    left = {
        pid: started
        for pid, started in known.items()
        if pid in table and table[pid][1] == started and table[pid][2] != "Z"
    }
    left.update(_marked(token, table))
    left.update(_below(list(left), table, frozenset()))
    left.pop(os.getpid(), None)
    return left


def stop_session(
    known: dict[int, int], token: str, grace: float = GRACE, limit: float = 30.0
) -> int:
    """Stop what is left of the session: SIGTERM, SIGKILL after ``grace`` seconds, until none
    is left or ``limit`` seconds have passed; returns how many processes there were."""
    stopped: set[int] = set()
    started = time.monotonic()
    while time.monotonic() - started < limit:
        alive = _alive(known, token)
        if not alive:
            break
        late = time.monotonic() - started >= grace
        for pid in alive:
            if late or pid not in stopped:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
        stopped.update(alive)
        known.update(alive)
        time.sleep(0.05)
    return len(stopped)


@contextlib.contextmanager
def watchdog(token: str) -> Iterator[None]:
    """A watchdog over what this process starts for the session ``token`` while the block
    runs; when the block ends, whatever the session left running is stopped before it returns.

    Does nothing where there is no ``/proc``.
    """
    if not _PROC.is_dir():
        yield
        return
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", __file__, token, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _wait_ready(process)
        yield
    finally:
        stdin = process.stdin
        if stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                stdin.write(_STOP)
                stdin.close()
        try:
            process.wait(timeout=GRACE + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(process: subprocess.Popen[bytes]) -> None:
    """Wait until the watchdog has noted what ran before the session (so the session's first
    processes are not taken for older ones)."""
    out = process.stdout
    if out is None:
        return
    ready, _, _ = select.select([out], [], [], 30)
    said = out.readline() if ready else b""
    out.close()
    if said != _READY:
        raise RuntimeError(f"the sweep's watchdog did not start (exit status {process.poll()})")


def _watch(token: str, driver: int) -> None:
    """Note the driver's new processes until it says it is done or dies; then stop them."""
    table = processes()
    # What the driver ran before the session (a test's server, say) is not the session's.
    before = frozenset(descendants(driver, table))
    os.write(sys.stdout.fileno(), _READY)
    known: dict[int, int] = {}
    said = b""
    while True:
        readable, _, _ = select.select([sys.stdin.buffer], [], [], _POLL)
        if readable:
            chunk = os.read(sys.stdin.fileno(), 64)
            said += chunk
            if not chunk or said.endswith(_STOP):
                break
        if os.getppid() != driver:
            break
        known.update(descendants(driver, skip=before))
    if said == _STOP:  # the driver lives: what it still runs of the session is noted now
        known.update(descendants(driver, skip=before))
    known.pop(os.getpid(), None)
    stopped = stop_session(known, token)
    if said != _STOP and stopped:
        print(
            f"kdbench sweep: the driver (pid {driver}) ended; stopped {stopped} "
            f"process{'es' if stopped != 1 else ''} of its Ray session",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    # A signal for the driver's terminal is not for the watchdog: it outlives the driver to
    # clean up after it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _watch(sys.argv[1], int(sys.argv[2]))
