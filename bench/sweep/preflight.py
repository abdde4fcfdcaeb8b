"""Checks before a sweep spends anything: on a cluster, that every trial can log its run and
read its teacher from wherever Ray places it, and that every trial fits some node.

- The tracking URI is reachable from the driver and from every node, and it is not a local
  SQLite file or file store when trials run on more than one node.
- The storage (the kdbench home with its teacher cache, and Ray Tune's storage path) is
  shared: a token the driver writes there is read back on every node.
- Every trial's and teacher's resource request fits some node type: the nodes alive now, and
  the node types of the cluster config the autoscaler can start.

Before any of that, on any machine and in a dry run too, every checkpoint file a suite names
(``teacher_checkpoint``, ``student_checkpoint``) is read as ``torch.load`` will read it
(:func:`checkpoint_problems`).

Each failure is one message naming what is wrong and how to fix it. Also here: offline
validation of a Ray cluster launcher file (:func:`validate_cluster_config`).

This module is imported by Ray workers (the probes), so it imports nothing heavy at the top.
"""

from __future__ import annotations

import os
import secrets
import socket
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.checkpoint import CheckpointError, read_state_dict
from bench.config import ConfigError
from bench.store import check_reachable
from bench.textfile import TextFileError, read_text

if TYPE_CHECKING:
    from bench.suite.schema import Suite

PROBE_FILE = ".kdbench-shared-probe"
#: Provider keys ``ray up`` reads, by provider type. Ray's schema accepts any key in
#: ``provider`` and ignores the unknown ones, so a typo there would pass silently.
PROVIDER_KEYS: dict[str, frozenset[str]] = {
    "aws": frozenset(
        {
            "type",
            "region",
            "availability_zone",
            "cache_stopped_nodes",
            "security_group",
            "use_internal_ips",
            "cloudwatch",
            "disable_launch_config_check",
        }
    ),
    "gcp": frozenset(
        {
            "type",
            "region",
            "availability_zone",
            "project_id",
            "cache_stopped_nodes",
            "use_internal_ips",
            "gcp_credentials",
        }
    ),
    "azure": frozenset(
        {
            "type",
            "location",
            "resource_group",
            "subscription_id",
            "cache_stopped_nodes",
            "use_internal_ips",
            "tags",
            "msi_identity_id",
            "msi_identity_principal_id",
            "subnet_id",
        }
    ),
    "local": frozenset(
        {"type", "head_ip", "worker_ips", "external_head_ip", "coordinator_address"}
    ),
}
PROVIDER_REQUIRED: dict[str, tuple[str, ...]] = {
    "aws": ("region",),
    "gcp": ("region", "availability_zone", "project_id"),
    "azure": ("location", "resource_group"),
    "local": ("head_ip", "worker_ips"),
}


class PreflightError(ConfigError):
    """The sweep cannot run here; every reason found, each with its fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"preflight failed; nothing was run:\n{lines}"


@dataclass
class ClusterView:
    """The nodes a sweep may use.

    Attributes:
        nodes: Alive nodes: ``NodeID``, ``address`` and total ``resources`` of each.
        node_types: Resources of each node type the autoscaler can start (from the cluster
            config), beyond the nodes alive now.
    """

    nodes: list[dict[str, Any]] = field(default_factory=list)
    node_types: list[dict[str, float]] = field(default_factory=list)

    @property
    def multi_node(self) -> bool:
        """Whether trials may run on more than one machine."""
        workers = [n for n in self.nodes if n["resources"].get("CPU", 0) > 0]
        return len(self.nodes) > 1 or len(workers) > 1 or bool(self.node_types)

    def capacities(self) -> list[dict[str, float]]:
        return [dict(n["resources"]) for n in self.nodes] + [dict(t) for t in self.node_types]


# --------------------------------------------------------------------------------------------
# Tracking URI
# --------------------------------------------------------------------------------------------


def local_store_kind(uri: str) -> str | None:
    """``"SQLite file"`` or ``"file store"`` for URIs only this machine can write; else None."""
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme == "sqlite":
        return "SQLite file"
    if scheme in ("", "file") or len(scheme) == 1:  # a bare path (or a Windows drive letter)
        return "file store"
    return None


# --------------------------------------------------------------------------------------------
# Checkpoint files a suite names
# --------------------------------------------------------------------------------------------


def checkpoint_problems(files: Iterable[tuple[str, str]]) -> list[str]:
    """One message per unusable checkpoint among ``files`` ((what it is, its path), e.g.
    ``("teacher_checkpoint of resnet20", "/ckpt/r20.pt")``), each file read once with
    :func:`bench.checkpoint.read_state_dict` (``weights_only``: nothing in it executes)."""
    problems = []
    for what, path in dict.fromkeys(files):
        try:
            read_state_dict(path, what)
        except CheckpointError as exc:
            problems.append(
                f"{what}: {path} is not a readable checkpoint: {exc.problem}. Point the suite "
                "at a state dict saved with torch.save(model.state_dict(), path), or leave the "
                "checkpoint out to train it."
            )
    return problems


# --------------------------------------------------------------------------------------------
# Probes that run on each node
# --------------------------------------------------------------------------------------------


def probe_node(uri: str, tokens: Mapping[str, str]) -> dict[str, Any]:
    """Run on one node: can it reach the tracking server, and does it see each shared path's
    token (path → expected token)?"""
    seen = {}
    for path, token in tokens.items():
        try:
            seen[path] = (Path(path) / PROBE_FILE).read_text() == token
        except OSError:
            seen[path] = False
    return {"host": socket.gethostname(), "tracking": check_reachable(uri), "shared": seen}


def _probe_all(nodes: Sequence[Mapping[str, Any]], uri: str, tokens: dict[str, str]) -> list:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    refs = [
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(uri, tokens)
        for node in nodes
    ]
    return ray.get(refs, timeout=120)


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------


def cluster_view(cluster_config: str | Path | None = None) -> ClusterView:
    """The alive nodes of the connected Ray cluster, plus the node types of its launcher
    config: ``cluster_config`` if given, else ``~/ray_bootstrap_config.yaml`` (the copy
    ``ray up`` leaves on the head node) when present."""
    import ray

    nodes = [
        {
            "NodeID": n["NodeID"],
            "address": n.get("NodeManagerAddress", "?"),
            "resources": n["Resources"],
        }
        for n in ray.nodes()
        if n.get("Alive")
    ]
    path = Path(cluster_config) if cluster_config else Path.home() / "ray_bootstrap_config.yaml"
    types = node_types_of(path) if (cluster_config or path.is_file()) else []
    return ClusterView(nodes=nodes, node_types=types)


def node_types_of(path: str | Path) -> list[dict[str, float]]:
    """Resources of every node type of a Ray cluster launcher file.

    Raises:
        PreflightError: The file cannot be read, is not YAML, or its ``available_node_types``
            are not a mapping of node types with numeric resources.
    """
    import yaml

    try:
        config = yaml.safe_load(read_text(path)) or {}
        return [
            {str(k): float(v) for k, v in (spec.get("resources") or {}).items()}
            for spec in (config.get("available_node_types") or {}).values()
        ]
    except TextFileError as exc:
        raise PreflightError([str(exc)]) from None
    except (yaml.YAMLError, AttributeError, TypeError, ValueError) as exc:
        raise PreflightError(
            [
                f"{path}: not a Ray cluster launcher file ({type(exc).__name__}: {exc}) — "
                "give the file `ray up` takes, whose available_node_types map each node type "
                "to its resources"
            ]
        ) from None


def preflight(
    *,
    suite: Suite,
    tracking_uri: str,
    shared_paths: Sequence[str | Path],
    view: ClusterView,
) -> None:
    """Every check for a sweep on a cluster; raises :class:`PreflightError` listing all the
    problems found.

    Args:
        suite: The :class:`~bench.suite.schema.Suite` (its resource requests are checked).
        tracking_uri: Where trials log.
        shared_paths: Folders every node must see (kdbench home, Tune storage).
        view: The cluster's nodes and node types.
    """
    from bench.suite.schema import SuiteError

    problems: list[str] = []
    try:
        suite.check_resources(view.capacities(), "the cluster")
    except SuiteError as exc:
        problems += [p.render(exc.source) for p in exc.problems]
    kind = local_store_kind(tracking_uri)
    if kind and view.multi_node:
        problems.append(
            f"the tracking URI {tracking_uri} is a local {kind}, but trials run on "
            f"{len(view.nodes)} nodes that cannot all write to it. Run `mlflow server` on the "
            "head node (ray_cluster.yaml starts one on port 5000) and pass "
            "--tracking-uri http://<head address>:5000."
        )
    unreachable = check_reachable(tracking_uri)
    if unreachable:
        problems.append(
            f"the MLflow server is not reachable from the driver: {unreachable}. Start it, or "
            "fix --tracking-uri / $MLFLOW_TRACKING_URI."
        )
    if not problems and view.nodes:
        problems += _check_nodes(view, tracking_uri, shared_paths)
    if problems:
        raise PreflightError(problems)


def _check_nodes(view: ClusterView, uri: str, shared_paths: Sequence[str | Path]) -> list[str]:
    tokens = {}
    for path in shared_paths:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        (folder / PROBE_FILE).write_text(token)
        tokens[str(folder)] = token
    problems = []
    for node, answer in zip(view.nodes, _probe_all(view.nodes, uri, tokens), strict=True):
        where = f"node {answer['host']} ({node['address']})"
        if answer["tracking"]:
            problems.append(
                f"{where} cannot reach the MLflow server: {answer['tracking']}. Use an "
                "address every node can reach (not 127.0.0.1 on a real cluster)."
            )
        for path, ok in answer["shared"].items():
            if not ok:
                problems.append(
                    f"{where} does not see {path} as the driver does. Put it on storage "
                    "mounted at the same path on every node (ray_cluster.yaml mounts /shared) "
                    "or set KDBENCH_HOME / --storage-path to such a folder."
                )
    return problems


# --------------------------------------------------------------------------------------------
# Offline validation of a cluster launcher file
# --------------------------------------------------------------------------------------------


def validate_cluster_config(config: Mapping[str, Any] | str | Path) -> list[str]:
    """Problems of a Ray cluster launcher config, checked offline: Ray's own schema and
    validators (after filling in the provider's defaults, as ``ray up`` does), then the
    ``provider`` section, which Ray's schema lets through unchecked. Empty when valid."""
    import copy

    import jsonschema
    import yaml
    from ray.autoscaler._private.util import validate_config
    from ray.autoscaler.sdk import fillout_defaults

    given = config if isinstance(config, Mapping) else yaml.safe_load(Path(config).read_text())
    settings = copy.deepcopy(dict(given))
    problems = provider_problems(settings.get("provider"))
    if problems:
        return problems
    try:
        validate_config(fillout_defaults(settings))
    except jsonschema.ValidationError as exc:
        # str(exc) embeds the whole schema; the message and path are what a person needs.
        return [f"{exc.json_path}: {exc.message}"]
    except (ValueError, RuntimeError, KeyError) as exc:
        return [str(exc)]
    return []


def provider_problems(provider: Any) -> list[str]:
    """Unknown or missing keys of a launcher file's ``provider`` section."""
    import difflib

    if not isinstance(provider, Mapping) or "type" not in provider:
        return ["$.provider: a mapping with a 'type' (aws, gcp, azure, local) is required"]
    kind = provider["type"]
    known = PROVIDER_KEYS.get(kind)
    if known is None:
        return []  # external or Kubernetes providers define their own keys
    problems = []
    for key in provider:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"$.provider: unknown {kind} provider key {key!r}{hint}")
    problems += [
        f"$.provider: the {kind} provider needs {key!r}"
        for key in PROVIDER_REQUIRED.get(kind, ())
        if key not in provider
    ]
    return problems


def local_capacity() -> dict[str, float]:
    """This machine as a node: its CPUs and visible CUDA GPUs."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # no usable CUDA runtime: a CPU-only machine
        gpus = 0
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}
