"""The options of ``kdbench sweep``, and parsed options turned into a call of the driver
(:func:`bench.sweep.driver.run_sweep`).

:mod:`bench.cli` builds the ``kdbench`` parser and hands the ``sweep`` subparser to
:func:`add_sweep_arguments`; this module creates no parser of its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.store import StoreError
from bench.suite.load import load_suite
from bench.suite.schema import SuiteError
from bench.sweep.driver import SweepError, SweepOptions, run_sweep
from bench.sweep.localray import ExposedRayError
from bench.sweep.preflight import PreflightError
from bench.sweep.report import EXIT_BAD_INPUT


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``kdbench sweep``."""
    parser.add_argument("suite", help="a suite file, or its folder (leaderboards/digits)")
    parser.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster (auto, host:port, ray://host:10001); default: start Ray "
        "on this machine",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the trial matrix and which run keys already finished (and, with a "
        "compress: section, which students are compressed); run nothing, not even the plugin "
        "files (it lists them)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one seed, one configuration per method, one epoch, in the experiment "
        "<experiment>-smoke: a quick check that every trial runs",
    )
    parser.add_argument(
        "--max-concurrent", type=int, default=None, metavar="N", help="at most N trials at once"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep (the same command without it resumes too; with "
        "it, a sweep that never started is an error)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the trials whose recorded verdict is FAILED (diverged, refused, raised)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite under "
        "$KDBENCH_HOME); on a cluster, the head node's mlflow server",
    )
    parser.add_argument(
        "--cluster-config",
        default=None,
        help="Ray launcher file (ray_cluster.yaml) whose node types the resource check "
        "counts (default: ~/ray_bootstrap_config.yaml when present)",
    )
    parser.add_argument(
        "--storage-path",
        default=None,
        help="Ray Tune storage, shared by every node (default: $KDBENCH_HOME/sweeps)",
    )
    parser.add_argument("--plugins", nargs="*", default=[], help="method files to load")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no line per epoch of each teacher and trial (the status line and each trial's "
        "outcome stay)",
    )


def sweep_main(args: argparse.Namespace) -> int:
    """Run ``kdbench sweep`` from parsed arguments; returns the exit status."""
    from bench.plugins import load_methods, load_plugin_file

    try:
        load_methods()
        given = getattr(args, "plugins", None) or ()
        # A dry run executes nothing: it names the plugin files a sweep would import.
        dry = bool(args.dry_run)
        for path in () if dry else given:
            load_plugin_file(path)
        suite = load_suite(args.suite, import_plugins=not dry, unloaded_plugins=bool(given))
        if getattr(args, "smoke", False):
            suite = suite.smoke()
        options = sweep_options(args)
        if options.max_concurrent is not None and options.max_concurrent < 1:
            raise SweepError(f"--max-concurrent must be ≥ 1, got {options.max_concurrent}")
        return run_sweep(suite, options).exit_code
    except (
        SuiteError,
        PreflightError,
        StoreError,
        SweepError,
        ExposedRayError,
        ImportError,
        FileNotFoundError,
    ) as exc:
        print(f"kdbench sweep: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def sweep_options(args: argparse.Namespace) -> SweepOptions:
    """The driver's options from parsed arguments (plugin files as absolute paths: workers
    import them from wherever they run)."""
    return SweepOptions(
        address=args.address,
        dry_run=bool(args.dry_run),
        max_concurrent=args.max_concurrent,
        resume=bool(args.resume),
        retry_failed=bool(getattr(args, "retry_failed", False)),
        tracking_uri=args.tracking_uri,
        cluster_config=getattr(args, "cluster_config", None),
        storage_path=getattr(args, "storage_path", None),
        plugins=tuple(str(Path(p).resolve()) for p in (args.plugins or ())),
        quiet=bool(getattr(args, "quiet", False)),
    )
