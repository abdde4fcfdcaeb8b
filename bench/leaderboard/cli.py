"""``kdbench leaderboard``: build a suite's leaderboard from MLflow or from a results.csv.

::

    kdbench leaderboard leaderboards/<suite>               # runs from MLflow → the suite folder
    kdbench leaderboard --from-csv results.csv OUT_DIR     # the same outputs without MLflow

A suite whose students were compressed also gets compression.csv and a "Compression"
section; ``--from-csv`` reads the compression.csv beside the given results.csv, and starts
from the models.csv beside it when the output folder has none (so a rebuild elsewhere keeps
the measured latencies).

The experiment is the suite's (``experiment:`` in suite.yaml, else its ``name:``, else the
folder name), and so is the phase (``phase:``, else ``final``; a ``tune`` suite is ranked by
validation accuracy). The baseline and the reference are the suite's (``leaderboard:
{baseline: ce, reference: kd@1[temperature=4.0]}``; ``study: {reference: …}`` names the
reference's setting of the studied parameter), else ``ce`` and ``kd`` at their current versions
with default params; ``--baseline``/``--reference`` override both. The suite's ``plugins:`` are
loaded, so that their versions and defaults are known.

The Models section's costs come from the folder's models.csv, measuring the models it lacks
(``--reprofile``: all of them). A results.csv written before it had an ``image_size`` column
takes the suite's ``recipe.student.image_size``. Exit status: 0 written, 2 bad input (the
message says where and what to fix), also when one run key has two finished runs with
different results.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.entry_spec import EntrySpecError, parse_entry_spec
from bench.leaderboard.aggregate import (
    RANKABLE_METRICS,
    WARNING,
    Leaderboard,
    Settings,
    build_leaderboard,
)
from bench.leaderboard.compression import COMPRESSION_FILE, compression_from_mlflow
from bench.leaderboard.compression import beside as compression_beside
from bench.leaderboard.formatting import verdict_line
from bench.leaderboard.models import MODELS_FILE, model_costs
from bench.leaderboard.render import main_table_markdown, write_outputs
from bench.leaderboard.runs import LeaderboardError, read_results_csv, runs_from_mlflow
from bench.leaderboard.study import StudySpec
from bench.store import StoreError, check_store
from bench.textfile import not_utf8
from bench.tracking import default_tracking_uri

EXIT_BAD_INPUT = 2
SUITE_FILE = "suite.yaml"
#: Keys of a suite's ``leaderboard:`` section.
LEADERBOARD_KEYS = ("baseline", "reference")
DEFAULT_BASELINE = "ce"
DEFAULT_REFERENCE = "kd"


@dataclass(frozen=True)
class SuiteInfo:
    """What the leaderboard reads from a suite.yaml (the sweep validates the rest).

    Attributes:
        name: ``name:``, else the folder name.
        experiment: ``experiment:``, else the name.
        phase: ``phase:``, else ``final``.
        study: ``study:`` (what a study suite varies), else None.
        image_size: ``recipe.student.image_size``, else None (the dataset's own size).
        baseline: ``leaderboard.baseline`` in the text form of :mod:`bench.entry_spec`, else
            None (``ce`` at its defaults).
        reference: ``leaderboard.reference``, else the study's reference setting, else None
            (``kd`` at its defaults).
    """

    name: str
    experiment: str
    phase: str
    study: StudySpec | None = None
    image_size: int | None = None
    baseline: str | None = None
    reference: str | None = None


def read_suite_info(folder: str | Path) -> SuiteInfo:
    """Name, experiment and phase of a suite folder (defaults when it has no suite.yaml).

    Args:
        folder: A folder, with or without a suite.yaml.

    Returns:
        The suite's facts.

    Raises:
        LeaderboardError: When suite.yaml is not a YAML mapping.
    """
    import yaml

    folder = Path(folder)
    path = folder / SUITE_FILE
    fallback = folder.resolve().name
    if not path.is_file():
        return SuiteInfo(fallback, fallback, "final")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LeaderboardError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise LeaderboardError(not_utf8(path, exc)) from None
    if not isinstance(data, dict):
        raise LeaderboardError(f"{path}: expected a mapping at the top (name: …, methods: …).")
    name = str(data.get("name") or fallback)
    study = _study(data.get("study"), path)
    anchors = _anchors(data.get("leaderboard"), path)
    # A study of the reference method's parameter names the reference's setting.
    studied = (
        study.reference_entry if study is not None and study.method == DEFAULT_REFERENCE else None
    )
    if studied and "reference" in anchors:
        raise LeaderboardError(
            f"{path}: leaderboard.reference and study.reference both name the reference; keep one."
        )
    _load_plugins(data.get("plugins"), path)
    return SuiteInfo(
        name,
        str(data.get("experiment") or name),
        str(data.get("phase") or "final"),
        study,
        _image_size(data.get("recipe"), path),
        anchors.get("baseline"),
        anchors.get("reference") or studied,
    )


def _anchors(value: object, path: Path) -> dict[str, str]:
    """``leaderboard: {baseline: …, reference: …}`` as entry texts (the sweep validates the
    names against the suite's methods; here only the form is checked)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LeaderboardError(
            f"{path}: leaderboard: expected a mapping like {{reference: kd@1[temperature=4.0]}}; "
            f"got {value!r}."
        )
    out = {}
    for key, given in value.items():
        if key not in LEADERBOARD_KEYS:
            close = difflib.get_close_matches(str(key), LEADERBOARD_KEYS, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise LeaderboardError(
                f"{path}: leaderboard.{key}: unknown key.{hint} Known: "
                f"{', '.join(LEADERBOARD_KEYS)}."
            )
        try:
            out[key] = parse_entry_spec(given).text
        except EntrySpecError as exc:
            raise LeaderboardError(f"{path}: leaderboard.{key}: {exc}.") from None
    return out


def _load_plugins(value: object, path: Path) -> None:
    """Import the suite's method files, so that their versions and defaults are known."""
    from bench.plugins import load_plugin_file

    if not isinstance(value, list):
        return
    for item in value:
        file = Path(str(item)).expanduser()
        try:
            load_plugin_file(file if file.is_absolute() else path.parent / file)
        except (FileNotFoundError, ImportError) as exc:
            raise LeaderboardError(f"{path}: plugins: {exc}") from None


def _image_size(recipe: object, path: Path) -> int | None:
    """``recipe.student.image_size`` of a suite.yaml (the sweep validates it)."""
    student = recipe.get("student") if isinstance(recipe, dict) else None
    size = student.get("image_size") if isinstance(student, dict) else None
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise LeaderboardError(
            f"{path}: recipe.student.image_size must be a positive integer; got {size!r}."
        )
    return size


def _study(value: object, path: Path) -> StudySpec | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("parameter"), str):
        raise LeaderboardError(
            f"{path}: study must be a mapping like {{parameter: temperature, method: kd}}; "
            f"got {value!r}."
        )
    return StudySpec(value["parameter"], str(value.get("method", "kd")), value.get("reference"))


def leaderboard_from_runs(
    runs: pd.DataFrame,
    out_dir: str | Path,
    *,
    name: str,
    settings: Settings | None = None,
    mlflow_url: str | None = None,
    study: StudySpec | None = None,
    reprofile: bool = False,
    data_root: str | Path | None = None,
    compression: pd.DataFrame | None = None,
) -> Leaderboard:
    """Build the leaderboard of a runs table and write every output into ``out_dir``.

    Args:
        runs: A checked runs table (:mod:`bench.leaderboard.runs`).
        out_dir: The suite folder.
        name: Suite name shown in the outputs.
        settings: Statistics settings (defaults of :class:`Settings`).
        mlflow_url: MLflow UI URL for links in index.html.
        study: What a study suite varies (its table and figures/study.png), or None.
        reprofile: Measure every model of the Models section again instead of reusing
            ``out_dir``'s models.csv.
        data_root: Where on-disk datasets live (their input shapes, for the Models section).
        compression: Compressed students' measurements (compression.csv's rows), or None.

    Returns:
        The leaderboard written.
    """
    board = build_leaderboard(runs, settings, name=name)
    models = model_costs(
        runs, out_dir, phase=board.settings.phase, reprofile=reprofile, data_root=data_root
    )
    write_outputs(
        board,
        runs,
        out_dir,
        mlflow_url=mlflow_url,
        study=study,
        models=models,
        compression=compression,
    )
    return board


def _seed_models_csv(source: Path, folder: Path) -> None:
    """Copy ``source``'s models.csv into ``folder`` when ``folder`` has none."""
    given, target = source / MODELS_FILE, folder / MODELS_FILE
    if given.is_file() and not target.exists() and given.resolve() != target.resolve():
        folder.mkdir(parents=True, exist_ok=True)
        target.write_bytes(given.read_bytes())


def add_leaderboard_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``kdbench leaderboard`` arguments to a (sub)parser."""
    parser.add_argument(
        "folder",
        metavar="SUITE_DIR|OUT_DIR",
        help="the suite folder (leaderboards/<suite>) to read from MLflow and write into; "
        "with --from-csv, the folder to write into",
    )
    parser.add_argument(
        "--from-csv",
        metavar="RESULTS_CSV",
        default=None,
        help="build from this runs table (results.csv format) instead of MLflow",
    )
    parser.add_argument("--name", default=None, help="suite name shown in the outputs")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under $KDBENCH_HOME)",
    )
    parser.add_argument(
        "--experiment", default=None, help="MLflow experiment (default: the suite's)"
    )
    parser.add_argument(
        "--mlflow-url",
        default=None,
        help="MLflow UI URL for links in index.html (default: the tracking URI when it is http(s))",
    )
    parser.add_argument(
        "--phase",
        default=None,
        choices=["tune", "final"],
        help="which runs count (default: the suite's phase, else final)",
    )
    parser.add_argument(
        "--metric",
        default=None,
        choices=RANKABLE_METRICS,
        help="ranked metric (default: val_acc for the tune phase, test_acc for final)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="ENTRY",
        help="the student-alone entry (default: the suite's leaderboard.baseline, else ce at "
        "its current version and default params)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="ENTRY",
        help="the reference entry, as kd, kd@1 or kd@1[temperature=4.0] (default: the suite's "
        "leaderboard.reference or study.reference, else kd at its current version and default "
        "params)",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise level")
    parser.add_argument(
        "--cell-test",
        default="t",
        choices=["t", "mannwhitney"],
        help="within-cell test: t (paired when seeds match, else Welch) or exact Mann-Whitney",
    )
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates")
    parser.add_argument(
        "--bootstrap-over-cells",
        action="store_true",
        help="also resample cells in the bootstrap (default: seeds within cells only)",
    )
    parser.add_argument(
        "--reprofile",
        action="store_true",
        help="measure every teacher's and student's cost again (default: reuse models.csv)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder holding on-disk datasets, for the input shapes models.csv lacks",
    )
    parser.add_argument("--quiet", action="store_true", help="print only where the files went")


def leaderboard_main(args: argparse.Namespace) -> int:
    """Run ``kdbench leaderboard`` with parsed arguments; returns the exit status."""
    started = time.perf_counter()
    try:
        folder = Path(args.folder)
        suite = read_suite_info(folder)
        phase = args.phase or suite.phase
        settings = Settings(
            phase=phase,
            metric=args.metric or ("val_acc" if phase == "tune" else "test_acc"),
            baseline=args.baseline or suite.baseline or DEFAULT_BASELINE,
            reference=args.reference or suite.reference or DEFAULT_REFERENCE,
            alpha=args.alpha,
            cell_test=args.cell_test,
            n_boot=args.n_boot,
            bootstrap_seed=args.bootstrap_seed,
            bootstrap_over_cells=args.bootstrap_over_cells,
        )
        name = args.name or suite.name
        mlflow_url = args.mlflow_url
        if args.from_csv:
            runs = read_results_csv(args.from_csv, image_size=suite.image_size)
            compression = compression_beside(args.from_csv)
            _seed_models_csv(Path(args.from_csv).parent, folder)
            notes: list[str] = []
        else:
            if not folder.is_dir():
                raise LeaderboardError(
                    f"{folder}: no such folder; pass a suite folder (leaderboards/<suite>) or "
                    "--from-csv RESULTS_CSV OUT_DIR."
                )
            uri = args.tracking_uri or default_tracking_uri()
            if mlflow_url is None and uri.startswith(("http://", "https://")):
                mlflow_url = uri
            # Reading a database that does not exist would create an empty one.
            check_store(uri, write=False, must_exist=True)
            runs, notes = runs_from_mlflow(uri, args.experiment or suite.experiment)
            compression = compression_from_mlflow(uri, args.experiment or suite.experiment)
        board = leaderboard_from_runs(
            runs,
            folder,
            name=name,
            settings=settings,
            mlflow_url=mlflow_url,
            study=suite.study,
            reprofile=args.reprofile,
            data_root=args.data_root,
            compression=compression,
        )
    except (LeaderboardError, StoreError) as exc:
        print(f"kdbench leaderboard: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for note in notes:
        print(f"kdbench leaderboard: {note}", file=sys.stderr)
    for note in board.notes:
        if note.startswith(WARNING):
            print(f"kdbench leaderboard: warning: {note[len(WARNING) :]}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    if not args.quiet:
        print("\n".join(main_table_markdown(board)))
        print()
        print(verdict_line(board))
        print()
    compressed = ", compression.csv" if (folder / COMPRESSION_FILE).is_file() else ""
    print(
        f"kdbench leaderboard: wrote {folder}/ (README.md, index.html, results.csv, summary.csv, "
        f"cells.csv, pairwise.csv, models.csv{compressed}, figures/) from {board.n_used} runs, "
        f"{len(board.cells)} cells, {len(board.entries)} methods in {elapsed:.1f} s"
    )
    return 0
