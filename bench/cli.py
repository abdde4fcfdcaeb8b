"""The ``kdbench`` command line. Thin: parse, call one library function, print.

Heavy libraries (torch, timm, ray, mlflow) are imported inside the commands, so ``kdbench
--help`` answers at once.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from bench.config import CHECKPOINT_EVERY_EPOCHS, CHECKPOINT_EVERY_MINUTES
from bench.progress import Reporter

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

DEFAULT_TEACHER = "resnet20"
DEFAULT_STUDENT = "resnet8"


class CliError(Exception):
    """Bad input found by the CLI itself."""


class Parser(argparse.ArgumentParser):
    """kdbench's argument parser. One built with ``intermixed=True`` takes its options before,
    between or after its positionals: argparse's own parsing gives an optional positional
    nothing once an option follows the positional before it, so ``ls models --timm 'vit*'``
    would leave ``'vit*'`` unrecognised."""

    def __init__(self, *args: Any, intermixed: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.intermixed = intermixed
        self._intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # The intermixed parse calls this method again for each of its two passes.
        if not self.intermixed or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from bench.analysis import AnalysisError
    from bench.api import ParamError
    from bench.config import ConfigError
    from bench.data import DataError
    from bench.registry import RegistryError

    return (
        RegistryError,
        ParamError,
        ConfigError,
        DataError,
        CliError,
        AnalysisError,
        FileNotFoundError,
        ImportError,
    )


def whole(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number ≥ ``minimum``. Anything else is an error (exit 2)
    naming the option, the value and the valid range, never taken as "not given"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not valid: give a whole number ≥ {minimum}"
            )
        return value

    parse.__name__ = f"whole number ≥ {minimum}"
    return parse


def at_least(minimum: float) -> Callable[[str], float]:
    """An argparse type: a number ≥ ``minimum`` (errors as :func:`whole`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: give a number ≥ {minimum:g}")
        return value

    parse.__name__ = f"number ≥ {minimum:g}"
    return parse


def parse_param(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise CliError(f"--param {text!r}: expected NAME=VALUE, e.g. --param temperature=4")
    name, value = text.split("=", 1)
    return name.strip(), value.strip()


def _load_plugins(paths: Sequence[str] | None) -> None:
    from bench.plugins import load_methods, load_plugin_file

    load_methods()
    for path in paths or ():
        load_plugin_file(path)


# --------------------------------------------------------------------------------------------
# ls
# --------------------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]]
    if args.what == "models":
        from bench.models import MODELS, list_models

        if args.timm:
            print("\n".join(list_models(args.pattern, include_timm=True)))
            return 0
        rows = [
            (e.name, e.family, e.timm_name, "test" if e.test_only else "", e.description)
            for _, e in MODELS.items(args.pattern)
        ]
        _print_table(("model", "family", "timm name", "", "description"), rows)
        print("\nAny timm model works too (`kdbench ls models --timm` lists them).")
    elif args.what == "datasets":
        from bench.data import DATASETS

        rows = [(name, source.summary) for name, source in DATASETS.items(args.pattern)]
        _print_table(("dataset", "description"), rows)
    else:
        from bench.api import METHODS

        _load_plugins(args.plugins)
        rows = [
            (name, cls.knowledge, cls.mode, str(cls.version), _summary(cls.__doc__))
            for name, cls in METHODS.items(args.pattern)
        ]
        _print_table(("method", "knowledge", "mode", "version", "description"), rows)
        for broken in METHODS.broken():
            print(f"BROKEN {broken.name} ({broken.origin}): {broken.error}")
    return 0


def _summary(doc: str | None) -> str:
    """A docstring's summary, its first paragraph, on one line."""
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


#: The narrowest the last column of a table is wrapped to, however narrow the terminal.
MIN_LAST_COLUMN = 30


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Aligned columns; the last one (a description) is shown whole: wrapped under its own
    column to the terminal's width ($COLUMNS when set), one line per row into a pipe."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    indent = sum(widths[:-1]) + 2 * (len(widths) - 1)
    room = None
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        room = max(MIN_LAST_COLUMN, shutil.get_terminal_size().columns - indent - 1)
    for row in (header, *rows):
        *first, last = [str(x) for x in row]
        lead = "  ".join(x.ljust(w) for x, w in zip(first, widths, strict=False))
        lines = (textwrap.wrap(last, room) if room else [last]) or [""]
        print(f"{lead}  {lines[0]}".rstrip())
        for line in lines[1:]:
            print(" " * indent + line)


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def build_trial_config(args: argparse.Namespace) -> Any:
    from bench.config import Recipe, TeacherSpec, TrialConfig
    from bench.trial.device import machine_compute

    recipe = Recipe(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        augment=not args.no_augment,
        image_size=args.image_size,
    )
    teacher = None
    if args.teacher:
        teacher_recipe = Recipe(
            epochs=args.epochs if args.teacher_epochs is None else args.teacher_epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer=args.optimizer,
            schedule=args.schedule,
            augment=not args.no_augment,
            image_size=args.image_size,
        )
        teacher = TeacherSpec(
            arch=args.teacher,
            recipe=teacher_recipe,
            seed=args.teacher_seed,
            stop_epoch=args.teacher_stop_epoch,
            checkpoint=args.teacher_checkpoint,
        )
    return TrialConfig(
        dataset=args.dataset,
        student=args.student,
        method=args.method,
        params=tuple(parse_param(p) for p in args.param),
        seed=args.seed,
        recipe=recipe,
        teacher=teacher,
        phase=args.phase,
        train_size=args.train_size,
        data_root=args.data_root,
        download=args.download,
        compute=machine_compute(
            threads=getattr(args, "threads", None),
            precision=getattr(args, "precision", None),
            channels_last=_channels_last(getattr(args, "memory_format", None)),
        ),
    )


def _channels_last(memory_format: str | None) -> bool | None:
    return None if memory_format is None else memory_format == "channels_last"


def cmd_train(args: argparse.Namespace) -> int:
    from bench.trial.compose import run_trial

    if not args.no_track:
        _check_store(args.tracking_uri)
    _load_plugins(args.plugins)
    config = build_trial_config(args)
    _check_params(config)
    tracker = None if args.no_track else _tracker(args)
    from bench.trial.resume import CheckpointPolicy

    policy = CheckpointPolicy(
        every_epochs=args.checkpoint_epochs, every_minutes=args.checkpoint_minutes
    )
    from bench.api import TrialFailed

    try:
        result = run_trial(
            config, tracker=tracker, policy=policy, rerun=args.rerun, progress=_reporter(args)
        )
    except TrialFailed as exc:  # before the trial's run exists (its teacher did not train)
        print(f"kdbench: {exc.outcome}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_result(config, result)
    return 0 if result.status == "FINISHED" else EXIT_FAILED


def _reporter(args: argparse.Namespace) -> Reporter | None:
    """Where long work shows its progress: standard error (bars on a terminal, a line per
    epoch elsewhere), or nowhere with ``--quiet``."""
    return None if args.quiet else Reporter(sys.stderr)


def _check_params(config: Any) -> None:
    """Refuse an unknown method or a param of the wrong type or out of its range before the
    run store is opened (the trial checks them again when it starts)."""
    from bench.plugins import get_method

    method = get_method(config.method)
    method.Params.from_mapping(config.params_dict, where=f"{config.method} params")


def _print_result(config: Any, result: Any) -> None:
    if result.recorded:
        print(
            f"{config.describe()}  run_key={result.run_key} already finished in MLflow run "
            f"{result.mlflow_run_id}: test_acc {result.test_acc:.4f}. Nothing was trained or "
            "recorded; --rerun trains it again as a replicate run (left off leaderboards)."
        )
        return
    print(f"{config.describe()}  run_key={result.run_key}  status={result.status}")
    if result.status == "FINISHED":
        print(
            f"test_acc {result.test_acc:.4f}  top5 {result.test_top5:.4f}  "
            f"val_acc {result.val_acc:.4f}  teacher_test_acc {result.teacher_test_acc:.4f}  "
            f"({result.train_seconds:.1f}s)"
        )
    else:
        print(f"{result.outcome}: {result.error}")
    if result.mlflow_run_id:
        print(f"mlflow run {result.mlflow_run_id}")


def _check_store(uri: str | None, *, write: bool = True, must_exist: bool = False) -> None:
    """The run store is usable, before any work (:mod:`bench.store`)."""
    from bench.store import check_store
    from bench.tracking import default_tracking_uri

    check_store(uri or default_tracking_uri(), write=write, must_exist=must_exist)


def _tracker(args: argparse.Namespace) -> Any:
    from bench.tracking import Tracker

    return Tracker(args.tracking_uri, experiment=args.experiment)


# --------------------------------------------------------------------------------------------
# demo: the main job until sweeps exist
# --------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from bench.demo import run_demo

    _check_store(args.tracking_uri)
    return run_demo(
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        seed=args.seed,
        tracking_uri=args.tracking_uri,
        progress=_reporter(args),
    )


# --------------------------------------------------------------------------------------------
# check-method, sweep, leaderboard: thin wrappers over their library entry points
# --------------------------------------------------------------------------------------------


def cmd_check_method(args: argparse.Namespace) -> int:
    from bench.conformance import run_conformance

    _load_plugins(args.plugins)
    # No --param: each method's own conformance_params apply.
    params = dict(parse_param(p) for p in args.param) if args.param else None
    report = run_conformance(
        args.method, params=params, verbose=not args.quiet, reporter=_reporter(args)
    )
    print(report.format())
    return 0 if report.passed else EXIT_FAILED


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.sweep.cli import sweep_main

    return sweep_main(args)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench.leaderboard.cli import leaderboard_main

    return leaderboard_main(args)


def _add_sweep(sub: Any) -> None:
    from bench.sweep.cli import add_sweep_arguments

    sweep = sub.add_parser("sweep", help="run a suite as Ray Tune trials, recorded in MLflow")
    add_sweep_arguments(sweep)
    sweep.set_defaults(func=cmd_sweep)


def _add_leaderboard(sub: Any, *, selected: bool) -> None:
    help_text = "tables, significance tests, figures and a page for a suite"
    if not selected:
        # Its options import scipy and pandas (seconds): describe them only when asked for.
        sub.add_parser("leaderboard", help=help_text)
        return
    from bench.leaderboard.cli import add_leaderboard_arguments

    board = sub.add_parser("leaderboard", help=help_text)
    add_leaderboard_arguments(board)
    board.set_defaults(func=cmd_leaderboard)


# --------------------------------------------------------------------------------------------
# profile, explain, compress: analyses of models and recorded runs (bench.analysis)
# --------------------------------------------------------------------------------------------


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        if threads < 1:
            raise CliError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def _print_json(payload: Any) -> None:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and value != value:
            return None  # NaN is not JSON
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    print(json.dumps(clean(payload)))


def cmd_profile(args: argparse.Namespace) -> int:
    from bench.analysis.profile import format_table, profile_names

    _set_threads(args.threads)
    profiles = profile_names(
        args.models,
        dataset=args.dataset,
        data_root=args.data_root,
        batch_sizes=args.batch_sizes,
        repeats=args.repeats,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
    )
    if args.json:
        _print_json([p.as_json() for p in profiles])
    else:
        print(format_table(profiles))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from bench.analysis.explain import explain_run

    _check_store(args.tracking_uri, write=False, must_exist=True)
    _set_threads(args.threads)
    report = explain_run(
        args.run_key,
        images=args.images,
        masks=args.masks,
        grid=args.grid,
        keep=args.keep,
        seed=args.seed,
        out=args.out,
        baseline_method=args.baseline_method,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
    )
    if args.json:
        _print_json(report.as_json())
    else:
        print(report.format())
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from bench.analysis.compress import compress_run

    if not args.sparsity and not args.int8:
        raise CliError("nothing to do: give --sparsity S [S ...] and/or --int8")
    _check_store(args.tracking_uri, write=not args.no_record, must_exist=True)
    _set_threads(args.threads)
    report = compress_run(
        args.run_key,
        sparsities=args.sparsity,
        int8=args.int8,
        repeats=args.repeats,
        batch_sizes=args.batch_sizes,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        record=not args.no_record,
    )
    if args.json:
        _print_json(report.as_json())
    else:
        print(report.format())
    return 0


def _add_analyses(sub: Any) -> None:
    profile = sub.add_parser(
        "profile", help="parameters, FLOPs and CPU latency of models (or of a run's models)"
    )
    profile.add_argument(
        "models", nargs="+", help="model names, or run keys (a run's teacher and student)"
    )
    profile.add_argument(
        "--dataset", default=None, help="input size and classes of this dataset (default: digits)"
    )
    profile.add_argument("--data-root", default=None, help="folder holding on-disk datasets")
    _add_timing(profile)
    profile.add_argument("--json", action="store_true", help="print one JSON list")
    _add_tracking(profile)
    profile.set_defaults(func=cmd_profile)

    explain = sub.add_parser(
        "explain", help="RISE saliency of a run's teacher, KD student and student alone"
    )
    explain.add_argument("run_key", help="run key of a distillation run (or a unique prefix)")
    explain.add_argument("--images", type=whole(1), default=8, help="test images to explain")
    explain.add_argument("--masks", type=whole(1), default=1000, help="RISE masks per image")
    explain.add_argument("--grid", type=whole(1), default=7, help="RISE grid cells per side")
    explain.add_argument("--keep", type=float, default=0.5, help="share of grid cells kept")
    explain.add_argument("--seed", type=whole(0), default=0, help="seed of the images and masks")
    explain.add_argument("--out", default=None, help="PNG path (default explain-<run key>.png)")
    explain.add_argument(
        "--baseline-method", default="ce", help="method of the student-alone run (default ce)"
    )
    explain.add_argument("--threads", type=whole(1), default=None, help="torch threads")
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    _add_tracking(explain)
    explain.set_defaults(func=cmd_explain)

    compress = sub.add_parser(
        "compress", help="prune and int8-quantise a run's student; record MLflow child runs"
    )
    compress.add_argument("run_key", help="run key of the trial (or a unique prefix)")
    compress.add_argument(
        "--sparsity", type=float, nargs="+", default=[], help="global pruning sparsities"
    )
    compress.add_argument("--int8", action="store_true", help="int8 post-training quantization")
    _add_timing(compress)
    compress.add_argument("--no-record", action="store_true", help="do not log child runs")
    compress.add_argument("--json", action="store_true", help="print one JSON object")
    _add_tracking(compress)
    compress.set_defaults(func=cmd_compress)


def _add_timing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=whole(1), default=20, help="timed passes (median reported)")
    p.add_argument(
        "--batch-sizes", type=whole(1), nargs="+", default=[1, 64], help="latency batch sizes"
    )
    p.add_argument(
        "--threads", type=whole(1), default=None, help="torch threads (default: torch's)"
    )


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
        "sqlite under $KDBENCH_HOME, ~/.kdbench)",
    )
    p.add_argument("--experiment", default="kdbench", help="MLflow experiment name")


def _add_ls(sub: Any) -> None:
    """``kdbench ls``: models, datasets or methods."""
    ls = sub.add_parser("ls", help="list models, datasets or methods", intermixed=True)
    ls.add_argument("what", choices=["models", "datasets", "methods"])
    ls.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'resnet*'")
    ls.add_argument("--timm", action="store_true", help="with models: every timm model too")
    ls.add_argument("--plugins", nargs="*", default=[], help="method files to load")
    ls.set_defaults(func=cmd_ls)


def _add_train(sub: Any) -> None:
    """``kdbench train``: one trial, recorded in MLflow."""
    tr = sub.add_parser("train", help="run one trial and record it in MLflow")
    tr.add_argument("--dataset", default="digits")
    tr.add_argument("--student", default=DEFAULT_STUDENT)
    tr.add_argument(
        "--teacher",
        default=DEFAULT_TEACHER,
        help="teacher model (ignored by methods that use none)",
    )
    tr.add_argument("--method", default="kd")
    tr.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="method hyperparameter; repeat for several",
    )
    _add_recipe_options(tr)
    _add_teacher_options(tr)
    tr.add_argument("--phase", default="final", choices=["tune", "final"])
    tr.add_argument(
        "--data-root",
        default=None,
        help="folder holding on-disk datasets, searched before $KDBENCH_DATA's folders and "
        "/usr/share/datasets (where system packages install them)",
    )
    tr.add_argument(
        "--download",
        action="store_true",
        help="download a dataset found in none of those folders (into --data-root)",
    )
    tr.add_argument(
        "--train-size",
        type=whole(1),
        default=None,
        metavar="N",
        help="train the student on a stratified subset of N samples of the training split "
        "(the same N samples for every seed; teachers train on the whole split)",
    )
    tr.add_argument("--plugins", nargs="*", default=[], help="method files to load")
    tr.add_argument(
        "--threads",
        type=whole(1),
        default=None,
        metavar="N",
        help="torch threads the trial computes with, part of its run key (default: torch's "
        "own count here, $OMP_NUM_THREADS or the physical cores; a sweep trial uses its "
        "resources' cpu)",
    )
    tr.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="compute the forward passes in this precision, part of the run key (default: "
        "the harness's policy: bf16 on CUDA and on CPUs with native bf16, else fp32)",
    )
    tr.add_argument(
        "--memory-format",
        choices=("channels_last", "contiguous"),
        default=None,
        help="memory order of convolutional models and image batches, part of the run key "
        "(default: channels_last)",
    )
    tr.add_argument(
        "--rerun",
        action="store_true",
        help="train a run key that already finished again, recorded as a replicate run that "
        "leaderboards leave out (without it, the recorded result is printed)",
    )
    _add_train_output_options(tr)
    _add_tracking(tr)
    tr.set_defaults(func=cmd_train)


def _add_recipe_options(tr: argparse.ArgumentParser) -> None:
    """The student's recipe and seed."""
    tr.add_argument("--seed", type=whole(0), default=0)
    tr.add_argument("--epochs", type=whole(1), default=10)
    tr.add_argument("--batch-size", type=whole(1), default=64)
    tr.add_argument("--lr", type=float, default=0.05)
    tr.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    tr.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"])
    tr.add_argument("--no-augment", action="store_true")
    tr.add_argument(
        "--image-size",
        type=whole(8),
        default=None,
        help="resize the dataset's images to this square size (teacher and student)",
    )


def _add_teacher_options(tr: argparse.ArgumentParser) -> None:
    """Which teacher, and how it is trained or loaded."""
    tr.add_argument(
        "--teacher-epochs",
        type=whole(1),
        default=None,
        help="epochs of the teacher's training (default: --epochs)",
    )
    tr.add_argument(
        "--teacher-stop-epoch",
        type=whole(1),
        default=None,
        help="use the teacher's checkpoint after this many epochs (early-stopped)",
    )
    tr.add_argument("--teacher-seed", type=whole(0), default=0)
    tr.add_argument(
        "--teacher-checkpoint",
        default=None,
        help="load the teacher from this state-dict file instead of training it",
    )


def _add_train_output_options(tr: argparse.ArgumentParser) -> None:
    """What the command prints and how often the trial saves its state."""
    tr.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (run_key, status, accuracies…) as the last line",
    )
    tr.add_argument("--no-track", action="store_true", help="do not record the run in MLflow")
    tr.add_argument(
        "--quiet",
        action="store_true",
        help="no progress of the teacher's or the trial's training (bars on a terminal, a line "
        "per epoch elsewhere, on stderr)",
    )
    tr.add_argument(
        "--checkpoint-epochs",
        type=whole(0),
        default=CHECKPOINT_EVERY_EPOCHS,
        metavar="N",
        help="save the trial's state every N epochs, so an interrupted run resumes from it "
        "when the same command is run again (0: never by count; default %(default)s)",
    )
    tr.add_argument(
        "--checkpoint-minutes",
        type=at_least(0),
        default=CHECKPOINT_EVERY_MINUTES,
        metavar="M",
        help="also save it after any epoch that ends M minutes or more after the last save "
        "(0: never by time; default %(default)s)",
    )


def _add_demo(sub: Any) -> None:
    """``kdbench demo``: the quick tour."""
    demo = sub.add_parser("demo", help="teacher, student alone and KD student on digits")
    demo.add_argument("--epochs", type=whole(1), default=15)
    demo.add_argument("--teacher-epochs", type=whole(1), default=15)
    demo.add_argument("--seed", type=whole(0), default=0)
    demo.add_argument(
        "--quiet", action="store_true", help="no progress of the trainings; the table only"
    )
    _add_tracking(demo)
    demo.set_defaults(func=cmd_demo)


def _add_check_method(sub: Any) -> None:
    """``kdbench check-method``: the conformance suite on one method."""
    check = sub.add_parser(
        "check-method", help="run the conformance suite on a method (name or .py file)"
    )
    check.add_argument("method", help="registered method name, or path to a method file")
    check.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    check.add_argument("--plugins", nargs="*", default=[], help="method files to load")
    check.add_argument(
        "--quiet", action="store_true", help="only the final table (no results or trainings)"
    )
    check.set_defaults(func=cmd_check_method)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="kdbench",
        description="Benchmark knowledge-distillation methods over timm teacher/student pairs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_ls(sub)
    _add_train(sub)
    _add_demo(sub)
    _add_check_method(sub)
    _add_sweep(sub)
    _add_analyses(sub)
    _add_leaderboard(sub, selected="leaderboard" in (sys.argv[1:] if argv is None else argv))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("kdbench: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _bad_input_types()):
            print(f"kdbench: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


if __name__ == "__main__":
    sys.exit(main())
