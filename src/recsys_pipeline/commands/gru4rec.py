# ruff: noqa: T201
"""Train or load a GRU4Rec model, save it and measure recall and MRR on test sets.

The command line and the output lines of the official ``run.py`` (``hidasib/GRU4Rec_PyTorch_Official``),
on top of :class:`recsys_pipeline.models.gru4rec.GRU4Rec` and
:func:`recsys_pipeline.evaluation.evaluate`::

    python -m recsys_pipeline.commands.gru4rec train.tsv -ps "loss=bpr-max,layers=512,..." \\
        -s model_dir -t test.tsv -m 1 5 10 20 -e standard -d cuda:0 --seed 1

Exactly one of ``-ps`` (parameter string), ``-pf`` (parameter file) and ``-l`` (``PATH`` is a
saved model directory instead of training data) is given. Data files are TAB-separated with a
header row (like the official data; any suffix but the parquet ones) or parquet (``.parquet``,
``.pq``). Parameter files: ``.yaml``/``.yml``, ``.json``, the official ``paramfiles/*.py``
(parsed, never executed), or text with ``name=value`` pairs, one per line and/or comma-separated
(``#`` starts a comment).

Standard output carries the result lines only (``Total training time: 12.34s``,
``Test set: ...``, ``Evaluation took 0.51s``, ``Recall@20: 0.123456 MRR@20: 0.045678``, and
``PRIMARY METRIC: ...`` with ``-lpm``); progress (data loading, the per-epoch loss lines) goes to
the log on standard error. Exit status: 0 success, 1 a failure while running (unreadable data,
missing column, missing model, NaN loss), 2 a bad command line (options, unknown or invalid
parameters, unreadable parameter file).

The full description, with the differences from ``run.py``: ``docs/gru4rec_cli.md``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_pipeline.storage import jsonio

if TYPE_CHECKING:
    import polars as pl

    from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams

logger = logging.getLogger(__name__)

__all__ = [
    "EVAL_TYPES",
    "DataFileError",
    "build_parser",
    "format_result_lines",
    "main",
    "parameters_from_file",
    "read_event_file",
]

EVAL_TYPES = ("standard", "conservative", "median", "tiebreaking")
PRIMARY_METRICS = ("recall", "mrr", "ndcg")
PARQUET_SUFFIXES = (".parquet", ".pq")
PICKLE_SUFFIXES = (".pickle", ".pkl")
PARAM_DICT_NAME = "gru4rec_params"  # the variable of the official paramfiles/*.py


class DataFileError(Exception):
    """A data or model file that cannot be used (missing, unreadable, missing column)."""


class ParameterFileError(ValueError):
    """A parameter file that cannot be read or holds no parameters."""


# ------------------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (run.py's options, plus a few of ours)."""
    parser = argparse.ArgumentParser(
        prog="python -m recsys_pipeline.commands.gru4rec",
        description=(
            "Train or load a GRU4Rec model & measure recall and MRR on the specified test "
            "set(s). Options as in the official run.py."
        ),
        epilog="Exit status: 0 ok, 1 failure while running, 2 bad command line or parameters.",
    )
    parser.add_argument(
        "path",
        metavar="PATH",
        help="training data (TAB-separated with a header row, or .parquet), or with -l the "
        "directory of a saved model",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "-ps",
        "--parameter_string",
        "--parameter-string",
        metavar="PARAM_STRING",
        help="training parameters as name=value,name=value (lists with /: layers=200/200)",
    )
    source.add_argument(
        "-pf",
        "--parameter_file",
        "--parameter-file",
        metavar="PARAM_PATH",
        help="training parameters from a file: .yaml/.yml, .json, the official paramfiles/*.py "
        "(parsed, not executed), or name=value pairs one per line and/or comma-separated",
    )
    source.add_argument(
        "-l",
        "--load_model",
        "--load-model",
        action="store_true",
        help="PATH is a saved model directory: load it instead of training",
    )
    parser.add_argument(
        "-s",
        "--save_model",
        "--save-model",
        metavar="MODEL_PATH",
        help="save the model into this directory (created; default: don't save)",
    )
    parser.add_argument(
        "-t",
        "--test",
        metavar="TEST_PATH",
        nargs="+",
        help="test set(s) to evaluate on (default: don't evaluate)",
    )
    parser.add_argument(
        "-m",
        "--measure",
        metavar="AT",
        type=int,
        nargs="+",
        default=[20],
        help="cut-off(s) of recall & MRR (default: 20)",
    )
    parser.add_argument(
        "-e",
        "--eval_type",
        "--eval-type",
        metavar="EVAL_TYPE",
        choices=EVAL_TYPES,
        default="standard",
        help="tie handling of the ranks: " + ", ".join(EVAL_TYPES) + " (default: standard)",
    )
    parser.add_argument(
        "-ss",
        "--sample_store_size",
        "--sample-store-size",
        metavar="SS",
        type=int,
        default=None,
        help="negative samples drawn at once (default: the parameter, 10000000)",
    )
    parser.add_argument(
        "-d",
        "--device",
        metavar="D",
        default=None,
        help="auto, cpu, cuda, cuda:N (default: the parameters' device, auto = first GPU if any)",
    )
    for short, name, default in (
        ("-ik", "item", "ItemId"),
        ("-sk", "session", "SessionId"),
        ("-tk", "time", "Time"),
    ):
        parser.add_argument(
            short,
            f"--{name}_key",
            f"--{name}-key",
            metavar=short[1:].upper(),
            default=default,
            help=f"column of the {name} {'IDs' if name != 'time' else 'stamps'} "
            f"(default: {default})",
        )
    parser.add_argument(
        "-pm",
        "--primary_metric",
        "--primary-metric",
        metavar="METRIC",
        choices=PRIMARY_METRICS,
        default="recall",
        help="primary metric for -lpm and --json: recall, mrr or ndcg (default: recall)",
    )
    parser.add_argument(
        "-lpm",
        "--log_primary_metric",
        "--log-primary-metric",
        action="store_true",
        help="print 'PRIMARY METRIC: value' (at the first cut-off) after each test set",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed (weights, samples, dropout; tiebreaking); default: the parameter (42)",
    )
    parser.add_argument("--json", metavar="OUT", help="write parameters, timings and metrics here")
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=512,
        help="test sessions evaluated in parallel (default: 512, as run.py; results do not "
        "depend on it)",
    )
    parser.add_argument(
        "--item-chunk",
        type=int,
        default=None,
        help="score this many items at a time in evaluation (default: all at once)",
    )
    parser.add_argument(
        "--progress", action="store_true", help="show progress bars (training, evaluation)"
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-g", "--gru4rec_model", metavar="GRFILE", help=argparse.SUPPRESS)
    return parser


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.gru4rec_model is not None:
        parser.error(
            "-g/--gru4rec_model is not supported: this tool always runs "
            "recsys_pipeline.models.gru4rec.GRU4Rec"
        )
    if any(k < 1 for k in args.measure):
        parser.error(f"-m/--measure: cut-offs must be positive, got {args.measure}")
    if args.eval_batch_size < 1:
        parser.error("--eval-batch-size must be positive")
    if args.item_chunk is not None and args.item_chunk < 1:
        parser.error("--item-chunk must be positive")
    if args.sample_store_size is not None and args.sample_store_size < 1:
        parser.error("-ss/--sample_store_size must be positive")
    if args.json and not args.test:
        parser.error("--json needs at least one test set (-t)")
    for test in args.test or []:  # before hours of training, not after
        if not Path(test).is_file():
            what = "is a folder, not a data file" if Path(test).is_dir() else "not found"
            parser.error(f"-t/--test: {test} {what}")
    if args.load_model and not (args.test or args.save_model):
        logger.warning("-l without -t or -s: the model is loaded and nothing else is done")


# -------------------------------------------------------------------------------- parameters


def _pairs_from_text(text: str) -> dict[str, str]:
    """``name=value`` pairs, one per line and/or comma-separated; ``#`` starts a comment."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        for raw in line.split("#", 1)[0].split(","):
            item = raw.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise ParameterFileError(f"{item!r} is not of the form name=value")
            name = name.strip()
            if name in values:
                raise ParameterFileError(f"parameter {name!r} is given twice")
            values[name] = value.strip()
    return values


def _dict_from_python(text: str) -> dict[str, Any]:
    """The literal ``gru4rec_params = OrderedDict([...])`` (or ``dict(...)``, ``{...}``) of an
    official ``paramfiles/*.py``; the file is parsed, never executed."""
    tree = ast.parse(text)
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        if not any(isinstance(t, ast.Name) and t.id == PARAM_DICT_NAME for t in node.targets):
            continue
        value = node.value
        if isinstance(value, ast.Call) and len(value.args) <= 1:
            pairs = dict(ast.literal_eval(value.args[0])) if value.args else {}
            pairs.update({k.arg: ast.literal_eval(k.value) for k in value.keywords if k.arg})
            return pairs
        return dict(ast.literal_eval(value))
    raise ParameterFileError(
        f"no literal assignment `{PARAM_DICT_NAME} = OrderedDict([...])` found "
        "(Python parameter files are parsed, not executed)"
    )


def parameters_from_file(path: str | Path) -> dict[str, Any]:
    """The parameter mapping of a parameter file (see the module docstring for the formats).

    A YAML/JSON mapping with the single key ``gru4rec_params`` (or ``gru4rec``) is unwrapped.

    Raises:
        ParameterFileError: unreadable file, bad syntax or no mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ParameterFileError(f"cannot read parameter file {path}: {err}") from err
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        elif suffix == ".json":
            values = json.loads(text)
        elif suffix == ".py":
            values = _dict_from_python(text)
        else:
            values = _pairs_from_text(text)
    except ParameterFileError as err:
        raise ParameterFileError(f"parameter file {path}: {err}") from err
    except (ValueError, SyntaxError, TypeError) as err:  # json / yaml / ast errors
        raise ParameterFileError(f"parameter file {path}: cannot parse it: {err}") from err
    if isinstance(values, dict) and len(values) == 1:
        ((key, inner),) = values.items()
        if key in (PARAM_DICT_NAME, "gru4rec") and isinstance(inner, dict):
            values = inner
    if not isinstance(values, dict) or not values:
        raise ParameterFileError(f"parameter file {path} holds no name -> value mapping")
    return {str(k): v for k, v in values.items()}


def _build_params(parser: argparse.ArgumentParser, args: argparse.Namespace) -> GRU4RecParams:
    """The training parameters of ``-ps``/``-pf`` with ``--seed``, ``-d``, ``-ss`` applied
    (any problem: ``parser.error``, exit status 2)."""
    from recsys_pipeline.models.gru4rec import GRU4RecParams

    try:
        if args.parameter_string is not None:
            params = GRU4RecParams.from_string(args.parameter_string)
        else:
            values = parameters_from_file(args.parameter_file)
            logger.info("Loaded parameters from file: %s", Path(args.parameter_file).resolve())
            params = GRU4RecParams.from_dict(values)
        overrides: dict[str, Any] = {}
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.device is not None:
            overrides["device"] = args.device
        if args.sample_store_size is not None:
            overrides["sample_store_size"] = args.sample_store_size
        if params.n_epochs < 1:
            raise ValueError(f"n_epochs={params.n_epochs} trains nothing (at least 1)")
        return dataclasses.replace(params, **overrides) if overrides else params
    except ValueError as err:
        option = "-ps/--parameter_string" if args.parameter_string is not None else "-pf"
        parser.error(f"{option}: {err}")
    raise AssertionError("unreachable")  # parser.error exits


def _check_device(parser: argparse.ArgumentParser, device: str | None) -> None:
    """``parser.error`` (exit status 2) when ``device`` is no device name or is absent here."""
    from recsys_pipeline.training.device import resolve_device

    try:
        resolve_device(device or "auto")
    except (ValueError, RuntimeError) as err:
        parser.error(f"-d/--device: {err}")


# ------------------------------------------------------------------------------------- data


def _columns_of(path: Path) -> list[str]:
    if path.suffix.lower() in PARQUET_SUFFIXES:
        import polars as pl

        return list(pl.read_parquet_schema(path))
    with path.open("rt", encoding="utf-8", errors="replace") as fh:
        return fh.readline().rstrip("\r\n").split("\t")


def _as_number(series: pl.Series, allow_float: bool) -> pl.Series:
    """``series`` (strings) as Int64, else Float64 if ``allow_float``, else unchanged."""
    import polars as pl

    nulls = series.null_count()
    for dtype in (pl.Int64, pl.Float64) if allow_float else (pl.Int64,):
        cast = series.str.strip_chars().cast(dtype, strict=False)
        if cast.null_count() == nulls:
            return cast
    return series


def read_event_file(
    path: str | Path,
    session_key: str = "SessionId",
    item_key: str = "ItemId",
    time_key: str = "Time",
) -> pl.DataFrame:
    """The three key columns of a TAB-separated (header row) or parquet event file.

    TSV columns are typed as integers where every value is one (ids) and the time as integer or
    float; otherwise the ids stay strings (as run.py reads item ids).

    Raises:
        DataFileError: the file is missing, unreadable, a pickle, lacks a column, has no rows or
            empty values, or its time column is not numeric.
    """
    import polars as pl

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise DataFileError(
            f"{path}: pickled DataFrames are not read (unpickling runs arbitrary code); convert "
            "it once, e.g. joblib.load(path).to_parquet('data.parquet'), and pass the parquet file"
        )
    if path.is_dir():
        raise DataFileError(f"{path} is a folder, not a data file")
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}")
    keys = {"session": session_key, "item": item_key, "time": time_key}
    try:
        columns = _columns_of(path)
    except (OSError, pl.exceptions.PolarsError) as err:
        raise DataFileError(f"cannot read {path}: {err}") from err
    options = {"session": "-sk/--session_key", "item": "-ik/--item_key", "time": "-tk/--time_key"}
    for role, name in keys.items():
        if name not in columns:
            kind = "parquet" if suffix in PARQUET_SUFFIXES else "TAB-separated (header row)"
            raise DataFileError(
                f"{path}: no {role} column {name!r} (read as {kind}; columns: {columns}); "
                f"name the column with {options[role]}"
            )
    wanted = [session_key, item_key, time_key]
    try:
        if suffix in PARQUET_SUFFIXES:
            frame = pl.read_parquet(path, columns=wanted)
        else:
            frame = pl.read_csv(
                path,
                separator="\t",
                columns=wanted,
                schema_overrides={c: pl.String for c in wanted},
            )
            frame = frame.with_columns(
                _as_number(frame[session_key], allow_float=False),
                _as_number(frame[item_key], allow_float=False),
                _as_number(frame[time_key], allow_float=True),
            )
    except pl.exceptions.PolarsError as err:
        raise DataFileError(f"cannot read {path}: {err}") from err
    if frame.height == 0:
        raise DataFileError(f"{path}: no data rows")
    for name in wanted:
        n_null = frame[name].null_count()
        if n_null:
            raise DataFileError(f"{path}: column {name!r} has {n_null} empty value(s)")
    if not frame.schema[time_key].is_numeric():
        example = frame[time_key].head(3).to_list()
        raise DataFileError(
            f"{path}: time column {time_key!r} is not numeric (e.g. {example}); use epoch "
            "seconds or milliseconds"
        )
    logger.info(
        "Loaded %s: %d events, %d sessions, %d items",
        path,
        frame.height,
        frame[session_key].n_unique(),
        frame[item_key].n_unique(),
    )
    return frame


# ----------------------------------------------------------------------------------- output


def format_result_lines(result: dict[str, float], cutoffs: Sequence[int]) -> list[str]:
    """run.py's result lines, ``Recall@k: 0.123456 MRR@k: 0.045678``, one per cut-off."""
    return [
        f"Recall@{k}: {result[f'recall@{k}']:.6f} MRR@{k}: {result[f'mrr@{k}']:.6f}"
        for k in cutoffs
    ]


def _setup_logging(args: argparse.Namespace) -> None:
    """Log to standard error, unless the caller (an application, pytest) configured logging."""
    if logging.getLogger().handlers:
        return
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# ------------------------------------------------------------------------------------- main


def _train(args: argparse.Namespace, params: GRU4RecParams, record: dict[str, Any]) -> GRU4Rec:
    from recsys_pipeline.models.gru4rec import GRU4Rec

    logger.info("Creating GRU4Rec model on device %r", params.device)
    model = GRU4Rec(params)
    logger.info("Loading training data from %s", args.path)
    train = read_event_file(args.path, args.session_key, args.item_key, args.time_key)
    logger.info("Started training")
    t0 = time.perf_counter()
    try:
        model.fit(
            train,
            session_key=args.session_key,
            item_key=args.item_key,
            time_key=args.time_key,
            progress=args.progress,
        )
    except ValueError as err:  # e.g. no session with two events
        raise DataFileError(f"cannot train on {args.path}: {err}") from err
    seconds = time.perf_counter() - t0
    print(f"Total training time: {seconds:.2f}s", flush=True)
    record["train"] = {
        "path": str(args.path),
        "seconds": seconds,
        "n_events": train.height,
        "n_items": model.n_items,
        "history": [s.to_dict() for s in model.history],
    }
    return model


def _load(args: argparse.Namespace) -> GRU4Rec:
    from recsys_pipeline.models.gru4rec import GRU4Rec

    path = Path(args.path)
    has_params = (path / "model.json").is_file() or (path / "params.json").is_file()
    if not has_params or not (path / "weights.pt").is_file():
        raise DataFileError(
            f"{path} is not a saved model directory (it needs model.json, weights.pt and "
            "item_ids.json, as written by -s)"
        )
    device = args.device or "auto"
    logger.info("Loading trained model from %s (to device %r)", path, device)
    return GRU4Rec.load(path, device=device)


def _evaluate(
    args: argparse.Namespace, model: GRU4Rec, test_path: str, seed: int
) -> dict[str, Any]:
    from recsys_pipeline.evaluation import evaluate

    logger.info("Loading test data from %s", test_path)
    test = read_event_file(test_path, args.session_key, args.item_key, args.time_key)
    logger.info(
        "Starting evaluation (cut-off=%s, using %s mode for tiebreaking)",
        args.measure,
        args.eval_type,
    )
    t0 = time.perf_counter()
    result = evaluate(
        model,
        test,
        cutoffs=args.measure,
        mode=args.eval_type,
        batch_size=args.eval_batch_size,
        item_chunk=args.item_chunk,
        seed=seed,
        session_key=args.session_key,
        item_key=args.item_key,
        time_key=args.time_key,
        progress=args.progress,
    )
    seconds = time.perf_counter() - t0
    print(
        f"Test set: {test_path} ({int(result['n_targets'])} targets in "
        f"{int(result['n_sessions'])} sessions, {result.label()})"
    )
    print(f"Evaluation took {seconds:.2f}s")
    for line in format_result_lines(result, args.measure):
        print(line)
    primary = f"{args.primary_metric}@{args.measure[0]}"
    if args.log_primary_metric:
        print(f"PRIMARY METRIC: {result[primary]}")
    sys.stdout.flush()
    return {
        "path": str(test_path),
        "mode": result.mode,
        "label": result.label(),
        "seconds": seconds,
        "primary_metric": {"name": primary, "value": result[primary]},
        "metrics": {k: float(v) for k, v in result.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _setup_logging(args)
        _check_options(parser, args)
        params = None if args.load_model else _build_params(parser, args)
        _check_device(parser, args.device if params is None else params.device)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2

    from recsys_pipeline.evaluation import NoTargetsError
    from recsys_pipeline.models.persistence import ModelFolderError

    record: dict[str, Any] = {"argv": list(sys.argv[1:] if argv is None else argv)}
    try:
        model = _load(args) if params is None else _train(args, params, record)
        record["params"] = model.params.to_dict()
        if args.save_model is not None:
            logger.info("Saving trained model to: %s", args.save_model)
            model.save(args.save_model)
        seed = args.seed if args.seed is not None else model.params.seed
        record["tests"] = [_evaluate(args, model, path, seed) for path in args.test or []]
    except (DataFileError, FloatingPointError, OSError, ModelFolderError, NoTargetsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(jsonio.dumps(record, indent=2, default=str))
        logger.info("Wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
