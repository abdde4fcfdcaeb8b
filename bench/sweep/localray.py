"""Ray on this machine for a sweep: reachable from this machine only, and gone with its driver.

Ray has no authentication: whoever reaches one of its ports can run code inside the sweep.
Left to its defaults, a Ray started on this machine listens on every interface (its GCS, the
raylet, the driver and every worker) and its runtime-env agent on the machine's external
address. A sweep's Ray therefore runs with the node address 127.0.0.1 and no dashboard, and
after it starts, every listening socket of the driver and of the processes it started is
checked: one outside 127.0.0.0/8 and ::1 shuts Ray down and stops the sweep
(:class:`ExposedRayError`) rather than run it exposed.

The processes the driver starts are watched (:mod:`bench.sweep.watchdog`): when the driver
ends, even by SIGKILL, they end too. The socket check and the watchdog read ``/proc``
(Linux); elsewhere the node address still applies, and they find nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.sweep.watchdog import SESSION_ENV, descendants, watchdog

LOOPBACK = "127.0.0.1"
# Ray turns a loopback node address into the machine's external one unless it runs as a
# single-machine Ray (its default on macOS and Windows); this is the switch Ray reads.
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_PROC = Path("/proc")
# /proc/net tables: the TCP state column's LISTEN, and UDP's "unconnected" (bound, receiving).
_TCP_LISTEN = "0A"
_UDP_BOUND = "07"
_TABLES = (("tcp", _TCP_LISTEN), ("tcp6", _TCP_LISTEN), ("udp", _UDP_BOUND), ("udp6", _UDP_BOUND))


class ExposedRayError(RuntimeError):
    """Ray on this machine would listen beyond this machine."""


@dataclass(frozen=True)
class Socket:
    """A socket a process listens on.

    Attributes:
        pid: The process.
        process: Its name (Ray's processes name themselves ``ray::…``, ``raylet``, …).
        protocol: ``tcp``, ``tcp6``, ``udp`` or ``udp6``.
        address: The address it is bound to.
        port: The port.
    """

    pid: int
    process: str
    protocol: str
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port} ({self.protocol}, pid {self.pid} {self.process})"


def is_loopback(address: str) -> bool:
    """Whether ``address`` is reachable from this machine only (127.0.0.0/8, ::1, and IPv4
    loopback written as IPv6)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def listening_sockets(pids: Iterable[int]) -> list[Socket]:
    """The TCP sockets that ``pids`` listen on and the UDP sockets they have bound, read from
    ``/proc`` (a process of another user, or one that is gone, is skipped)."""
    owners: dict[str, int] = {}
    for pid in pids:
        for inode in _socket_inodes(pid):
            owners.setdefault(inode, pid)
    found = []
    for protocol, state in _TABLES:
        for address, port, inode in _bound(protocol, state):
            if inode in owners:
                pid = owners[inode]
                found.append(Socket(pid, _process_name(pid), protocol, address, port))
    return sorted(found, key=lambda s: (s.pid, s.port))


def exposed_sockets(pids: Iterable[int]) -> list[Socket]:
    """The sockets of ``pids`` that listen beyond this machine."""
    return [s for s in listening_sockets(pids) if not is_loopback(s.address)]


@contextlib.contextmanager
def local_ray(num_cpus: int, num_gpus: int, **init_options: Any) -> Iterator[None]:
    """Start Ray on this machine for the duration of the block, on loopback only, watched.

    Args:
        num_cpus: CPUs Ray may schedule.
        num_gpus: GPUs Ray may schedule.
        **init_options: More ``ray.init`` options (logging).

    Raises:
        ExposedRayError: a process of the session listens beyond this machine (Ray is shut
            down first).
    """
    import ray

    token = uuid.uuid4().hex
    # The watchdog starts first, so it is not itself one of the session's processes.
    with watchdog(token), _environment(SESSION_ENV, token), _single_machine():
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            **init_options,
        )
        try:
            _refuse_exposed()
            yield
        finally:
            ray.shutdown()


def _refuse_exposed() -> None:
    """Stop here if the driver or a process it started listens beyond loopback."""
    import ray

    exposed = exposed_sockets([os.getpid(), *descendants(os.getpid())])
    if exposed:
        listed = "\n".join(f"  {s}" for s in exposed)
        raise ExposedRayError(
            "Ray on this machine would listen beyond this machine (Ray has no "
            f"authentication), so the sweep did not start:\n{listed}\nA socket of this "
            "process: close what opened it. A socket of Ray's: this Ray "
            f"({ray.__version__}) does not keep to the node address {LOOPBACK}; use a Ray "
            "version that does, or start a cluster on a network you control and join it with "
            "--address."
        )


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextlib.contextmanager
def _single_machine() -> Iterator[None]:
    """Ray as a single-machine Ray: the loopback node address is kept, not replaced.

    Ray reads the switch when it is imported; if it already is, its value is set for the
    session too (a Ray that no longer has it is caught by the socket check).
    """
    from ray._private import ray_constants

    had = hasattr(ray_constants, "ENABLE_RAY_CLUSTER")
    previous = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    with _environment(_SINGLE_MACHINE_ENV, "0"):
        if had:
            ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            yield
        finally:
            if had:
                ray_constants.ENABLE_RAY_CLUSTER = previous


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in (_PROC / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def _bound(protocol: str, state: str) -> Iterator[tuple[str, int, str]]:
    """(address, port, inode) of each socket in ``state`` in ``/proc/net/<protocol>``."""
    try:
        lines = (_PROC / "net" / protocol).read_text().splitlines()[1:]
    except OSError:
        return
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[3] != state:
            continue
        address, port = fields[1].split(":")
        yield _address(address), int(port, 16), fields[9]


def _address(hexadecimal: str) -> str:
    """An address as /proc/net writes it: 32-bit words in host byte order."""
    raw = bytes.fromhex(hexadecimal)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def _process_name(pid: int) -> str:
    """What the process runs: its program, or a Python program's script (Ray's workers and
    agents retitle themselves ``ray::…``)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return "?"
    words = raw.replace("\0", " ").split()
    names = [Path(w).name for w in words if not w.startswith("-")]
    if not names:
        return "?"
    return names[1] if names[0].startswith("python") and len(names) > 1 else names[0]
