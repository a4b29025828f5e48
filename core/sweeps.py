"""Hyperparameter sweeps: a job request, a space of values at JSON pointers into it, and Optuna
choosing the points. Each trial is an ordinary job (`sweep` and `trial` on its record).

- `parse_sweep` checks a `POST /v1/sweeps` body. Every point is a job request made with
  `core.patches.set_pointer` and parsed by the one job parse (`core.grammar.parse_job`): at submit
  the extremes of every dimension are, so a space that cannot run is refused with the pointer to
  the dimension (`/space/<escaped pointer>`), and the driver parses each point again.
- `SweepStore` keeps a sweep's record (settings, status, trials table) in Redis and in
  `sweeps/<id>/manifest.json`, beside the request as sent (`sweeps/<id>/sweep.json`).
- `drive_sweep` is one step of the sweep's only driver (a Celery task on queue `sweeps` that
  sends itself again; `claim_driver` makes sure one chain acts): it tells Optuna how finished
  trials ended, then asks for a new point only while fewer than `max_concurrent` trials are
  live. The study lives in Optuna's journal on Redis (`core.rediskeys.study_prefix`) and is
  rebuilt from the trials table if Redis lost it. Trial 0 is the base request itself.
- `report_trial_epoch` is what a trial's worker calls at each epoch end: it reports the
  objective to the study and answers whether the trial is pruned (it then stops at that epoch
  boundary and ends `cancelled`, reason `pruned`).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import math
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast, get_args

import orjson
import redis

from core.cursors import decode_cursor, encode_cursor
from core.errors import (
    Conflict,
    FieldError,
    FieldErrors,
    InvalidRequest,
    NotFound,
    escape_pointer,
    show,
)
from core.jobs import TERMINAL, Job, JobStore, dataset_labels, provenance
from core.patches import PatchError, get_pointer, set_pointer
from core.rediskeys import (
    ALL_SWEEPS,
    LIVE_SWEEPS,
    study_prefix,
    sweep_cancel_key,
    sweep_driver_key,
    sweep_key,
    sweep_owner_index,
)
from core.settings import Settings
from core.storage import DataDir, check_id, new_id, read_json, utc_now, write_json

if TYPE_CHECKING:
    import optuna

    from core.grammar import ParsedJob

log = logging.getLogger("fitserve.sweeps")

Sampler = Literal["tpe", "random", "grid"]
Pruner = Literal["hyperband", "median", "none"]
Mode = Literal["min", "max"]
SweepStatus = Literal["running", "cancelling", "succeeded", "failed", "cancelled"]
SAMPLERS: tuple[Sampler, ...] = get_args(Sampler)
PRUNERS: tuple[Pruner, ...] = get_args(Pruner)
MODES: tuple[Mode, ...] = get_args(Mode)
SWEEP_STATUSES: tuple[SweepStatus, ...] = get_args(SweepStatus)
LIVE_SWEEP: tuple[SweepStatus, ...] = ("running", "cancelling")
SWEEP_KEYS = (
    "name",
    "base",
    "space",
    "objective",
    "sampler",
    "pruner",
    "max_trials",
    "max_concurrent",
    "seed",
    "priority",
)
MAX_DIMENSIONS = 32
MAX_CHOICES = 100
MAX_NAME_CHARS = 200
MAX_SEED = 2**32 - 1
# Median pruning waits for this many finished trials before it compares with them.
MEDIAN_STARTUP_TRIALS = 2
# How long the driver's chain may go quiet before the reconciler starts another: several of its
# periods, so a busy worker is not taken for a lost one.
DRIVER_PERIOD_SECONDS = 0.25
DRIVER_TTL_SECONDS = 15


# Parsing ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One entry of `space`: the pointer into the base request and the values it may take."""

    pointer: str
    kind: Literal["float", "int", "choice"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int = 1
    choices: tuple[Any, ...] = ()

    @property
    def at(self) -> str:
        """Where the dimension is in the sweep request: `/space/<escaped pointer>`."""
        return "/space/" + escape_pointer(self.pointer)

    def extremes(self) -> list[Any]:
        """The values that bound the dimension: both ends of a range, every choice."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def highest(self) -> Any | None:
        """The value that costs most, if the dimension is ordered (numbers)."""
        numbers = [v for v in self.extremes() if _is_number(v)]
        return max(numbers) if numbers else None

    def holds(self, value: Any) -> bool:
        """Whether `value` is a point of the dimension (the base's own value must be)."""
        if self.kind == "choice":
            return any(_same(value, choice) for choice in self.choices)
        if not _is_number(value):
            return False
        if self.kind == "int":
            inside = isinstance(value, int) and self.low <= value <= self.high
            return inside and (value - int(self.low)) % self.step == 0
        return self.low <= value <= self.high

    def grid(self) -> list[Any]:
        """Every value, for the grid sampler (ints and choices only)."""
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, self.step))
        return list(self.choices)

    def describe(self) -> dict[str, Any]:
        """The dimension as the request wrote it (normalized)."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        if self.kind == "int":
            return {"int": [int(self.low), int(self.high)], "step": self.step}
        return {"float": [self.low, self.high], "log": self.log}


class SweepSettings(TypedDict):
    """A sweep's settings, normalized (every default filled in)."""

    name: str | None
    space: dict[str, dict[str, Any]]
    objective: dict[str, str]
    sampler: Sampler
    pruner: Pruner
    max_trials: int
    max_concurrent: int
    seed: int
    priority: int
    epochs: int


@dataclasses.dataclass(frozen=True)
class ParsedSweep:
    """A valid sweep request: its settings, the base request as sent, its dimensions and the
    base's own parse (trial 0)."""

    settings: SweepSettings
    base: dict[str, Any]
    dimensions: tuple[Dimension, ...]
    base_job: ParsedJob


ParseJob = Callable[[Any], "ParsedJob"]


def parse_sweep(body: Any, *, parse: ParseJob, max_trials: int) -> ParsedSweep:
    """Check a sweep request; InvalidRequest with every error, each at a pointer into it.

    `parse` is the job parse of `POST /v1/jobs` (the caller's datasets and warm-start sources);
    `max_trials` the most trials a sweep may make (FITSERVE_MAX_SWEEP_TRIALS).

    The base must be a valid job; every dimension must resolve in it, hold the base's own value
    (trial 0 is the base) and, at each of its extremes, still make a job that validates and fits
    the cost budget; so must the point with every dimension at its highest.
    """
    errors = FieldErrors()
    if not isinstance(body, dict):
        raise _invalid([FieldError("", "A sweep request is a JSON object.", _SWEEP, body)])
    for key in body:
        if key not in SWEEP_KEYS:
            errors.append(FieldError(f"/{escape_pointer(key)}", "Unknown key.", _KEYS, key))
    base = body.get("base")
    if not isinstance(base, dict):
        errors.append(FieldError("/base", "The base job request is missing.", _BASE, base))
    name = _name(body.get("name"), errors)
    sampler = _one_of(body, "sampler", SAMPLERS, "tpe", errors)
    pruner = _one_of(body, "pruner", PRUNERS, "median", errors)
    trials = _integer(body, "max_trials", 1, max_trials, 20, errors)
    max_concurrent = _integer(body, "max_concurrent", 1, max_trials, 2, errors)
    seed = _integer(body, "seed", 0, MAX_SEED, 0, errors)
    dimensions = _space(body.get("space"), errors)
    if errors or not isinstance(base, dict):
        raise _invalid(errors)
    priority = _integer(body, "priority", 0, 9, base.get("priority", 5), errors)
    base_job = _parse_base(base, parse)
    objective = _objective(body.get("objective"), base_job.spec, errors)
    if sampler == "grid":
        _check_grid(dimensions, errors)
    for dimension in dimensions:
        _check_dimension(dimension, base, parse, errors)
    if not errors:
        _check_highest(dimensions, base, parse, errors)
    if errors:
        raise _invalid(errors)
    return ParsedSweep(
        settings=SweepSettings(
            name=name,
            space={d.pointer: d.describe() for d in dimensions},
            objective=objective,
            sampler=sampler,
            pruner=pruner,
            max_trials=trials,
            max_concurrent=min(max_concurrent, trials),
            seed=seed,
            priority=priority,
            epochs=base_job.spec["fit"]["epochs"],
        ),
        base=base,
        dimensions=dimensions,
        base_job=base_job,
    )


_SWEEP = "an object with base, space, objective and optionally sampler, pruner, max_trials..."
_KEYS = "one of " + ", ".join(SWEEP_KEYS)
_BASE = "a job request, as POST /v1/jobs takes it"
_DIMENSION = (
    'one of {"float": [low, high], "log": bool}, {"int": [low, high], "step": n}, '
    '{"choice": [values...]}'
)


def _invalid(errors: builtins.list[FieldError]) -> InvalidRequest:
    count = len(errors) + getattr(errors, "omitted", 0)
    return InvalidRequest(f"The sweep request is invalid: {count} error(s).", errors=errors)


def _name(value: Any, errors: FieldErrors) -> str | None:
    if value is None or (isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS):
        return value
    errors.append(
        FieldError("/name", "Not a sweep name.", f"a string of 1 to {MAX_NAME_CHARS} chars", value)
    )
    return None


def _one_of(body: dict, key: str, allowed: tuple[str, ...], default: str, errors: FieldErrors):  # type: ignore[no-untyped-def]
    value = body.get(key, default)
    if value not in allowed:
        errors.append(
            FieldError(f"/{key}", f"Unknown {key}.", "one of " + ", ".join(allowed), value)
        )
        return default
    return value


def _integer(body: dict, key: str, low: int, high: int, default: Any, errors: FieldErrors) -> int:
    value = body.get(key, default)
    if not _is_int(value) or not low <= value <= high:
        errors.append(
            FieldError(f"/{key}", f"Not a valid {key}.", f"an integer from {low} to {high}", value)
        )
        return low
    return cast(int, value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _space(raw: Any, errors: FieldErrors) -> tuple[Dimension, ...]:
    if not isinstance(raw, dict) or not 0 < len(raw) <= MAX_DIMENSIONS:
        message = f"The space names 1 to {MAX_DIMENSIONS} JSON pointers into the base request."
        errors.append(FieldError("/space", message, "an object of pointer: dimension", raw))
        return ()
    found = []
    for pointer, spec in raw.items():
        dimension = _dimension(pointer, spec, errors)
        if dimension is not None:
            found.append(dimension)
    return tuple(found)


def _dimension(pointer: str, spec: Any, errors: FieldErrors) -> Dimension | None:
    at = "/space/" + escape_pointer(pointer)
    if not pointer.startswith("/"):
        errors.append(FieldError(at, "Not a JSON pointer.", "a pointer such as /fit/batch_size"))
        return None
    kinds = [kind for kind in ("float", "int", "choice") if isinstance(spec, dict) and kind in spec]
    if len(kinds) != 1:
        errors.append(FieldError(at, "Not a dimension.", _DIMENSION, spec))
        return None
    kind = kinds[0]
    extra = set(spec) - {kind, {"float": "log", "int": "step", "choice": ""}[kind]}
    if extra:
        errors.append(FieldError(at, f"Unknown key {sorted(extra)[0]!r}.", _DIMENSION, spec))
        return None
    if kind == "choice":
        return _choice(pointer, spec["choice"], at, errors)
    return _range(pointer, "int" if kind == "int" else "float", spec, at, errors)


def _choice(pointer: str, values: Any, at: str, errors: FieldErrors) -> Dimension | None:
    scalars = isinstance(values, list) and all(
        value is None or isinstance(value, str | bool) or _is_number(value) for value in values
    )
    distinct = scalars and len({orjson.dumps(value) for value in values}) == len(values)
    if not (scalars and distinct and 0 < len(values) <= MAX_CHOICES):
        expected = f"a list of 1 to {MAX_CHOICES} distinct strings, numbers, booleans or null"
        errors.append(FieldError(at + "/choice", "Not a list of choices.", expected, values))
        return None
    return Dimension(pointer, "choice", choices=tuple(values))


def _range(
    pointer: str, kind: Literal["float", "int"], spec: dict, at: str, errors: FieldErrors
) -> Dimension | None:
    bounds = spec[kind]
    number = _is_int if kind == "int" else _is_number
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(number(v) for v in bounds)):
        expected = f"[low, high], two {'integers' if kind == 'int' else 'finite numbers'}"
        errors.append(FieldError(f"{at}/{kind}", "Not a range.", expected, bounds))
        return None
    low, high = bounds
    if not low < high:
        errors.append(FieldError(f"{at}/{kind}", "The range is empty.", "low < high", bounds))
        return None
    log_scale = spec.get("log", False)
    if not isinstance(log_scale, bool):
        errors.append(FieldError(f"{at}/log", "Not a boolean.", "true or false", log_scale))
        return None
    if log_scale and low <= 0:
        message = "A log-scaled range must stay above zero."
        errors.append(FieldError(f"{at}/float", message, "0 < low < high", bounds))
        return None
    step = spec.get("step", 1)
    if kind == "int" and (not _is_int(step) or not 0 < step <= high - low):
        expected = f"an integer from 1 to {high - low}"
        errors.append(FieldError(f"{at}/step", "Not a step of this range.", expected, step))
        return None
    return Dimension(pointer, kind, float(low), float(high), log_scale, step)


def _parse_base(base: dict, parse: ParseJob) -> ParsedJob:
    """The base's own job parse; its errors are re-rooted at `/base`."""
    try:
        return parse(base)
    except InvalidRequest as error:
        moved = [dataclasses.replace(e, path="/base" + e.path) for e in error.errors]
        detail = f"The base job request is invalid: {error.detail}"
        raise InvalidRequest(detail, errors=moved) from None


def _objective(raw: Any, spec: dict, errors: FieldErrors) -> dict[str, str]:
    metrics = produced_metrics(spec)
    expected = "one of " + ", ".join(metrics)
    if not isinstance(raw, dict) or set(raw) - {"metric", "mode"}:
        errors.append(
            FieldError("/objective", "Not an objective.", '{"metric": ..., "mode": "min"}', raw)
        )
        return {"metric": "loss", "mode": "min"}
    metric, mode = raw.get("metric"), raw.get("mode", "min")
    if metric not in metrics:
        message = "The trials' jobs do not report this metric at each epoch."
        errors.append(FieldError("/objective/metric", message, expected, metric))
    if mode not in MODES:
        errors.append(FieldError("/objective/mode", "Unknown mode.", "min or max", mode))
    return {"metric": str(metric), "mode": str(mode)}


def produced_metrics(spec: Mapping[str, Any]) -> list[str]:
    """The names a job of this normalized spec reports at every epoch: `loss`, the compiled
    metrics (by their string names) and, with validation data, each with `val_`."""
    compiled = spec["compile"]
    outputs = spec["model"].get("outputs") or ["output"]
    names = ["loss"]
    if len(outputs) > 1:
        names += [f"{output}_loss" for output in outputs]
    for entry in _metric_names(compiled.get("metrics")):
        names += [entry] if len(outputs) == 1 else [f"{out}_{entry}" for out in outputs]
    fit, data = spec["fit"], spec["data"]
    if (fit.get("validation_split") or 0) > 0 or data.get("validation") is not None:
        names += ["val_" + name for name in names]
    return names


def _metric_names(metrics: Any) -> list[str]:
    if isinstance(metrics, dict):
        return sorted({n for value in metrics.values() for n in _metric_names(value)})
    if isinstance(metrics, list):
        found = []
        for metric in metrics:
            if isinstance(metric, str):
                found.append(metric)
            elif isinstance(metric, dict) and isinstance(metric.get("config"), dict):
                name = metric["config"].get("name")
                if isinstance(name, str):
                    found.append(name)
        return found
    return []


def _check_grid(dimensions: tuple[Dimension, ...], errors: FieldErrors) -> None:
    for dimension in dimensions:
        if dimension.kind == "float":
            message = "The grid sampler takes only int and choice dimensions."
            errors.append(FieldError(dimension.at, message, '{"int": ...} or {"choice": ...}'))


def _check_dimension(
    dimension: Dimension, base: dict, parse: ParseJob, errors: FieldErrors
) -> None:
    """The pointer resolves in the base, which the dimension holds; each extreme can run."""
    try:
        current = get_pointer(base, dimension.pointer)
    except PatchError as error:
        errors.append(
            FieldError(
                dimension.at,
                f"The pointer does not resolve in the base request: {error.message}",
                "a pointer to a value the base request has",
                dimension.pointer,
            )
        )
        return
    if not dimension.holds(current):
        message = (
            f"The base request's value {show(current)} is outside this dimension; trial 0 is "
            "the base request itself."
        )
        errors.append(FieldError(dimension.at, message, "a dimension that holds it", current))
        return
    for value in dimension.extremes():
        refusal = point_refusal(set_pointer(base, dimension.pointer, value), parse)
        if refusal is not None:
            errors.append(_extreme_error(dimension, value, refusal))
            return


def _check_highest(
    dimensions: tuple[Dimension, ...], base: dict, parse: ParseJob, errors: FieldErrors
) -> None:
    """The point with every ordered dimension at its highest (the most units with the largest
    batch...) must fit too; blamed on the first dimension whose own value brings it back."""
    ordered = [d for d in dimensions if d.highest() is not None]
    point = base
    for dimension in ordered:
        point = set_pointer(point, dimension.pointer, dimension.highest())
    refusal = point_refusal(point, parse)
    if refusal is None:
        return
    for dimension in ordered:
        lowered = set_pointer(point, dimension.pointer, get_pointer(base, dimension.pointer))
        if point_refusal(lowered, parse) is None:
            errors.append(_extreme_error(dimension, dimension.highest(), refusal, together=True))
            return
    errors.append(_extreme_error(ordered[0], ordered[0].highest(), refusal, together=True))


def point_refusal(request: dict, parse: ParseJob) -> FieldError | None:
    """The first reason the job parse refuses a point, or None if it can run."""
    try:
        parse(request)
    except InvalidRequest as error:
        return error.errors[0] if error.errors else FieldError("", error.detail)
    return None


def _extreme_error(
    dimension: Dimension, value: Any, refusal: FieldError, *, together: bool = False
) -> FieldError:
    where = "with every dimension at its highest" if together else "at this extreme"
    return FieldError(
        dimension.at,
        f"A trial {where} ({dimension.pointer} = {show(value)}) cannot run: "
        f"{refusal.path or 'the request'}: {refusal.message}",
        refusal.expected or "a space whose every point is a job that can run",
        value,
    )


def point_request(base: dict, params: Mapping[str, Any], priority: int) -> dict:
    """The job request of one point: the base with each parameter set at its pointer, at the
    sweep's priority."""
    request = set_pointer(base, "/priority", priority)
    for pointer, value in params.items():
        request = set_pointer(request, pointer, value)
    return request


# Optuna --------------------------------------------------------------------------------------


def distributions(space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Optuna's distribution of each dimension of a normalized space, by pointer."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    found: dict[str, Any] = {}
    for pointer, spec in space.items():
        if "choice" in spec:
            found[pointer] = CategoricalDistribution(spec["choice"])
        elif "int" in spec:
            low, high = spec["int"]
            found[pointer] = IntDistribution(low, high, step=spec["step"])
        else:
            low, high = spec["float"]
            found[pointer] = FloatDistribution(low, high, log=spec["log"])
    return found


def make_sampler(sweep: SweepSettings, trial_number: int) -> optuna.samplers.BaseSampler:
    """The sweep's sampler, seeded by the sweep's seed and the trial's number: the driver builds
    it for each point, so a seed used alone would draw the same point every time."""
    import optuna

    seed = (sweep["seed"] + trial_number) % (MAX_SEED + 1)
    if sweep["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sweep["sampler"] == "grid":
        # Its seed orders the grid its trials index into: the sweep's own, for every trial.
        grid = {p: _grid_values(spec) for p, spec in sweep["space"].items()}
        return optuna.samplers.GridSampler(grid, seed=sweep["seed"])
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)


def _grid_values(spec: Mapping[str, Any]) -> list[Any]:
    if "int" in spec:
        low, high = spec["int"]
        return list(range(low, high + 1, spec["step"]))
    return list(spec["choice"])


def trial_limit(sweep: SweepSettings) -> int:
    """How many trials the sweep makes: `max_trials`, or for a grid the base and every point."""
    if sweep["sampler"] != "grid":
        return sweep["max_trials"]
    size = math.prod(len(_grid_values(spec)) for spec in sweep["space"].values())
    return min(sweep["max_trials"], size + 1)


def make_pruner(sweep: SweepSettings) -> optuna.pruners.BasePruner:
    """The sweep's pruner: epochs are its steps, counted from 1."""
    import optuna

    if sweep["pruner"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS)
    if sweep["pruner"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=sweep["epochs"])
    return optuna.pruners.NopPruner()


def open_study(
    redis_url: str, sweep_id: str, sweep: SweepSettings, *, trial_number: int = 0
) -> optuna.Study:
    """The sweep's study from its journal on Redis (created if it is not there)."""
    import optuna
    from optuna.storages.journal import JournalRedisBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        # The journal's Redis backend is marked experimental; its log format is what we keep.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        backend = JournalRedisBackend(redis_url, prefix=study_prefix(sweep_id))
    storage = JournalStorage(backend)
    direction = optuna.study.StudyDirection[
        "MINIMIZE" if sweep["objective"]["mode"] == "min" else "MAXIMIZE"
    ]
    return optuna.create_study(
        storage=storage,
        study_name=sweep_id,
        direction=direction,
        sampler=make_sampler(sweep, trial_number),
        pruner=make_pruner(sweep),
        load_if_exists=True,
    )


def _study_trials(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    return {trial.number: trial for trial in study.get_trials(deepcopy=False)}


def rebuild_study(study: optuna.Study, sweep: SweepSettings, trials: list[TrialRow]) -> None:
    """Put back the trials of the table into an empty study (Redis lost the journal): in
    number order, so each keeps its number, with its state, objective and epoch values."""
    from optuna.trial import TrialState, create_trial

    dists = distributions(sweep["space"])
    for row in sorted(trials, key=lambda row: row["number"]):
        state = TrialState[row["optuna"]] if row["optuna"] else TrialState.RUNNING
        study.add_trial(
            create_trial(
                state=state,
                value=row["objective"] if state == TrialState.COMPLETE else None,
                params=row["params"],
                distributions=dists,
                intermediate_values={
                    epoch: value for epoch, value in enumerate(row["values"], 1) if value
                },
            )
        )
    log.info("study_rebuilt trials=%d", len(trials))


# Records ------------------------------------------------------------------------------------


class TrialRow(TypedDict):
    """One trial of a sweep: its point, its job and how it ended.

    `optuna` is the trial's state in the study once the driver told it (`COMPLETE`, `PRUNED`,
    `FAIL`), else None; `values` the objective at each epoch so far; `objective` the last one.
    """

    number: int
    job: str | None
    params: dict[str, Any]
    optuna: str | None
    objective: float | None
    values: list[float | None]
    epochs: int
    error: str | None


class Sweep(TypedDict):
    """A sweep's record: Redis's copy and `sweeps/<id>/manifest.json` hold the same."""

    id: str
    name: str | None
    owner: str | None
    status: SweepStatus
    created_at: str
    updated_at: str
    finished_at: str | None
    settings: SweepSettings
    trials: list[TrialRow]
    best_trial: int | None


class SweepStore:
    """Sweep records over one Redis connection and the data folder."""

    def __init__(self, client: redis.Redis, data: DataDir, settings: Settings) -> None:
        self.redis = client
        self.data = data
        self.settings = settings

    def folder(self, sweep_id: str) -> Any:
        return self.data.root / "sweeps" / check_id(sweep_id, "sweep")

    def create(self, parsed: ParsedSweep, *, owner: str | None, request: dict) -> Sweep:
        """Record a new running sweep (its files first, then Redis), with trial 0 (the base)
        waiting in its study."""
        now = utc_now()
        sweep = Sweep(
            id=new_id(),
            name=parsed.settings["name"],
            owner=owner,
            status="running",
            created_at=now,
            updated_at=now,
            finished_at=None,
            settings=parsed.settings,
            trials=[],
            best_trial=None,
        )
        folder = self.folder(sweep["id"])
        folder.mkdir(parents=True)
        write_json(folder / "sweep.json", {"id": sweep["id"], "owner": owner, "request": request})
        self.save(sweep)
        score = time.time()
        pipe = self.redis.pipeline()
        pipe.zadd(ALL_SWEEPS, {sweep["id"]: score})
        if owner:
            pipe.zadd(sweep_owner_index(owner), {sweep["id"]: score})
        pipe.sadd(LIVE_SWEEPS, sweep["id"])
        pipe.execute()
        base_params = {d.pointer: get_pointer(parsed.base, d.pointer) for d in parsed.dimensions}
        study = open_study(self.settings.redis_url, sweep["id"], sweep["settings"])
        study.enqueue_trial(base_params)
        return sweep

    def save(self, sweep: Sweep) -> None:
        """Write the record to the volume, then to Redis."""
        sweep["updated_at"] = utc_now()
        write_json(self.folder(sweep["id"]) / "manifest.json", sweep)
        self.redis.set(sweep_key(sweep["id"]), orjson.dumps(sweep))

    def get(self, sweep_id: str) -> Sweep:
        """The record (Redis's copy, else the volume's); NotFound if neither has it."""
        check_id(sweep_id, "sweep")
        raw = self.redis.get(sweep_key(sweep_id))
        if raw:
            return cast(Sweep, orjson.loads(raw))
        path = self.folder(sweep_id) / "manifest.json"
        if not path.is_file():
            raise NotFound(f"No sweep with id {sweep_id!r}.")
        return cast(Sweep, read_json(path))

    def request(self, sweep_id: str) -> dict:
        """The sweep request as it was sent."""
        return read_json(self.folder(sweep_id) / "sweep.json")["request"]

    def list(
        self, *, owner: str | None, limit: int, cursor: str | None
    ) -> tuple[builtins.list[Sweep], str | None]:
        """Newest first; `owner` None lists everyone's."""
        index = ALL_SWEEPS if owner is None else sweep_owner_index(owner)
        high: Any = "+inf"
        after = None
        if cursor:
            high, after = decode_cursor(cursor, float, str)
        found: builtins.list[Sweep] = []
        pairs = self.redis.zrevrangebyscore(index, high, "-inf", withscores=True)
        for member, score in cast(builtins.list[tuple[bytes, float]], pairs):
            sweep_id = member.decode()
            if after is not None and score == high and sweep_id >= after:
                continue
            with contextlib.suppress(NotFound):
                found.append(self.get(sweep_id))
            if len(found) == limit + 1:
                break
        next_cursor = None
        if len(found) > limit:
            found = found[:limit]
            last = found[-1]["id"]
            score = self.redis.zscore(index, last) or 0.0
            next_cursor = encode_cursor(score, last)
        return found, next_cursor

    def live_ids(self) -> builtins.list[str]:
        return sorted(member.decode() for member in cast(set, self.redis.smembers(LIVE_SWEEPS)))

    def request_cancel(self, sweep_id: str) -> None:
        self.redis.set(sweep_cancel_key(sweep_id), "1")

    def cancel_requested(self, sweep_id: str) -> bool:
        return bool(self.redis.exists(sweep_cancel_key(sweep_id)))

    def delete(self, sweep: Sweep) -> None:
        """Remove a finished sweep's records, study and files (its trials' jobs stay)."""
        if sweep["status"] in LIVE_SWEEP:
            raise Conflict(f"Sweep {sweep['id']} is {sweep['status']}: cancel it first.")
        sweep_id = sweep["id"]
        study_keys = list(self.redis.scan_iter(match=study_prefix(sweep_id) + ":*"))
        pipe = self.redis.pipeline()
        pipe.delete(sweep_key(sweep_id), sweep_cancel_key(sweep_id), sweep_driver_key(sweep_id))
        if study_keys:
            pipe.delete(*study_keys)
        pipe.zrem(ALL_SWEEPS, sweep_id)
        if sweep["owner"]:
            pipe.zrem(sweep_owner_index(sweep["owner"]), sweep_id)
        pipe.srem(LIVE_SWEEPS, sweep_id)
        pipe.execute()
        shutil.rmtree(self.folder(sweep_id), ignore_errors=True)

    def rebuild_records(self) -> builtins.list[str]:
        """Restore missing sweep records from their manifests (Redis lost its data); returns
        the live ones, whose drivers the caller starts again."""
        folder = self.data.root / "sweeps"
        live = []
        for path in sorted(folder.glob("*/manifest.json")) if folder.is_dir() else []:
            try:
                sweep = cast(Sweep, read_json(path))
            except (OSError, orjson.JSONDecodeError):
                continue
            if self.redis.exists(sweep_key(sweep["id"])):
                continue
            self.redis.set(sweep_key(sweep["id"]), orjson.dumps(sweep))
            score = time.time()
            self.redis.zadd(ALL_SWEEPS, {sweep["id"]: score})
            if sweep["owner"]:
                self.redis.zadd(sweep_owner_index(sweep["owner"]), {sweep["id"]: score})
            if sweep["status"] in LIVE_SWEEP:
                self.redis.sadd(LIVE_SWEEPS, sweep["id"])
                live.append(sweep["id"])
        return live


# The driver ---------------------------------------------------------------------------------

_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


def claim_driver(client: redis.Redis, sweep_id: str, task_id: str, next_id: str) -> bool:
    """Whether the driver step `task_id` may act: the one the chain expects, or any when the
    chain was lost (the key expired). It then names `next_id` as the step after it, so of two
    chains (a redelivered message beside the reconciler's) only one goes on."""
    return bool(
        client.eval(_CLAIM, 1, sweep_driver_key(sweep_id), task_id, next_id, DRIVER_TTL_SECONDS)
    )


def start_driver(client: redis.Redis, sweep_id: str) -> str | None:
    """A task id for a new driver chain, if none is running (the key is free); else None."""
    task_id = uuid.uuid4().hex
    if client.set(sweep_driver_key(sweep_id), task_id, nx=True, ex=DRIVER_TTL_SECONDS):
        return task_id
    return None


@dataclasses.dataclass
class DriverContext:
    """What a driver step needs: the stores, how to read dataset manifests, how to enqueue."""

    sweeps: SweepStore
    jobs: JobStore
    manifest_of: Callable[[str], dict]
    send: Callable[[Job], None]
    # Whether this step still holds the driver's claim (renewing it): a step that took longer
    # than the claim (a first parse loading TensorFlow) may have been replaced meanwhile.
    still_driving: Callable[[], bool] = lambda: True


class DriverReplaced(Exception):
    """Another driver step took over the sweep while this one ran: it writes nothing more."""


def _check_driving(context: DriverContext) -> None:
    if not context.still_driving():
        raise DriverReplaced("another driver step took over the sweep")


def drive_sweep(context: DriverContext, sweep_id: str) -> bool:
    """One driver step: settle finished trials, start new ones into free slots, finish the
    sweep once every trial is settled. Returns whether the sweep is still live; raises
    DriverReplaced (having created and saved nothing more) once it no longer holds the claim."""
    sweeps = context.sweeps
    sweep = sweeps.get(sweep_id)
    if sweep["status"] not in LIVE_SWEEP:
        return False
    if not _has_work(context, sweep):
        return True
    study = _study_for(sweeps, sweep)
    cancelled = sweeps.cancel_requested(sweep_id)
    if cancelled:
        _cancel_trials(context.jobs, sweep)
    for row in sweep["trials"]:
        if row["optuna"] is None and row["job"] is not None:
            _settle(context.jobs, study, sweep, row)
    if not cancelled:
        _start_trials(context, study, sweep)
    settled = all(row["optuna"] is not None for row in sweep["trials"])
    if settled and (cancelled or len(sweep["trials"]) >= trial_limit(sweep["settings"])):
        _finish(sweep)
    _rank(sweep)
    _check_driving(context)
    sweeps.save(sweep)
    if sweep["status"] not in LIVE_SWEEP:
        sweeps.redis.srem(LIVE_SWEEPS, sweep_id)
        log.info("sweep_finished sweep=%s status=%s", sweep_id, sweep["status"])
        return False
    return True


def _has_work(context: DriverContext, sweep: Sweep) -> bool:
    """Whether a step has anything to do: a cancel, a trial whose job ended, a free slot. Most
    steps find none, and then cost a few Redis reads, not a study (the driver shares the CPU
    with training)."""
    if context.sweeps.cancel_requested(sweep["id"]):
        return True
    live = [row for row in sweep["trials"] if row["optuna"] is None]
    more = len(sweep["trials"]) < trial_limit(sweep["settings"])
    if more and len(live) < sweep["settings"]["max_concurrent"]:
        return True
    for row in live:
        try:
            if row["job"] is None or context.jobs.get(row["job"])["status"] in TERMINAL:
                return True
        except NotFound:
            return True
    return False


def _study_for(sweeps: SweepStore, sweep: Sweep) -> optuna.Study:
    """The study, rebuilt from the trials table when Redis lost its journal."""
    number = len(sweep["trials"])
    study = open_study(
        sweeps.settings.redis_url, sweep["id"], sweep["settings"], trial_number=number
    )
    if sweep["trials"] and not study.get_trials(deepcopy=False):
        rebuild_study(study, sweep["settings"], sweep["trials"])
    return study


def _settle(jobs: JobStore, study: optuna.Study, sweep: Sweep, row: TrialRow) -> None:
    """Tell the study how a trial's job ended once it has; keep its objective and epochs."""
    from optuna.trial import TrialState

    try:
        job = jobs.get(cast(str, row["job"]))
    except NotFound:
        job = None
    if job is not None:
        values = _objective_values(jobs, job["id"], sweep["settings"]["objective"]["metric"])
        row["values"], row["epochs"] = values, job.get("epoch") or len(values)
        row["objective"] = next((v for v in reversed(values) if v is not None), None)
        if job["status"] not in TERMINAL:
            return
    state = TrialState.FAIL
    if job is not None and job["status"] == "succeeded" and row["objective"] is not None:
        state = TrialState.COMPLETE
    elif job is not None and job["status"] == "cancelled" and job.get("reason") == "pruned":
        state = TrialState.PRUNED
    if job is not None and job["status"] == "failed":
        row["error"] = job.get("message")
    value = row["objective"] if state == TrialState.COMPLETE else None
    trial = _study_trials(study).get(row["number"])
    if trial is not None and trial.state == TrialState.RUNNING:
        # The grid sampler asks the study to stop once its grid is done; we count ourselves.
        with contextlib.suppress(RuntimeError):
            study.tell(trial.number, value, state=state, skip_if_finished=True)
    row["optuna"] = state.name
    log.info("trial_settled sweep=%s trial=%d state=%s", sweep["id"], row["number"], state.name)


def _objective_values(jobs: JobStore, job_id: str, metric: str) -> list[float | None]:
    values: list[float | None] = []
    for entry in jobs.history(job_id):
        value = entry["metrics"].get(metric)
        values.append(float(value) if _is_number(value) else None)
    return values


def _cancel_trials(jobs: JobStore, sweep: Sweep) -> None:
    sweep["status"] = "cancelling"
    for row in sweep["trials"]:
        if row["optuna"] is None and row["job"] is not None:
            with contextlib.suppress(Conflict, NotFound):
                jobs.request_cancel(row["job"])


def _start_trials(context: DriverContext, study: optuna.Study, sweep: Sweep) -> None:
    """Ask for points while a slot is free and trials remain: each becomes a queued job."""
    from optuna.trial import TrialState

    settings = sweep["settings"]
    # A trial asked for by a step that died before recording it: ended, never run.
    recorded = {row["number"] for row in sweep["trials"]}
    for trial in _study_trials(study).values():
        if trial.state == TrialState.RUNNING and trial.number not in recorded:
            with contextlib.suppress(RuntimeError):
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    dists = distributions(settings["space"])
    while (
        len(sweep["trials"]) < trial_limit(settings)
        and sum(row["optuna"] is None for row in sweep["trials"]) < settings["max_concurrent"]
    ):
        study.sampler = make_sampler(settings, len(study.get_trials(deepcopy=False)))
        asked = study.ask(dists)
        row = TrialRow(
            number=asked.number,
            job=None,
            params=dict(asked.params),
            optuna=None,
            objective=None,
            values=[],
            epochs=0,
            error=None,
        )
        sweep["trials"].append(row)
        _submit_trial(context, study, sweep, row)


def _submit_trial(context: DriverContext, study: optuna.Study, sweep: Sweep, row: TrialRow) -> None:
    """Parse the point like any job; record its job in the table before it is sent."""
    from optuna.trial import TrialState

    from core.grammar import parse_job

    base = context.sweeps.request(sweep["id"])["base"]
    request = point_request(base, row["params"], sweep["settings"]["priority"])
    try:
        parsed = parse_job(request, settings=context.jobs.settings, manifest_of=context.manifest_of)
    except InvalidRequest as error:
        first = error.errors[0] if error.errors else None
        row["error"] = f"{first.path}: {first.message}" if first else error.detail
        row["optuna"] = TrialState.FAIL.name
        with contextlib.suppress(RuntimeError):
            study.tell(row["number"], state=TrialState.FAIL)
        log.warning("trial_refused sweep=%s trial=%d %s", sweep["id"], row["number"], row["error"])
        return
    _check_driving(context)
    job = context.jobs.create(
        parsed.spec,
        owner=sweep["owner"],
        record=provenance(parsed.spec, parsed.manifests),
        labels=dataset_labels(parsed.spec, parsed.manifests),
        sweep=sweep["id"],
        trial=row["number"],
        request=request,
    )
    row["job"] = job["id"]
    context.sweeps.save(sweep)
    context.send(job)
    log.info("trial_started sweep=%s trial=%d job=%s", sweep["id"], row["number"], job["id"])


def _finish(sweep: Sweep) -> None:
    completed = any(row["optuna"] == "COMPLETE" for row in sweep["trials"])
    if sweep["status"] == "cancelling":
        sweep["status"] = "cancelled"
    else:
        sweep["status"] = "succeeded" if completed else "failed"
    sweep["finished_at"] = utc_now()


def _rank(sweep: Sweep) -> None:
    """The best completed trial by the objective (ties: the earlier trial)."""
    sign = 1 if sweep["settings"]["objective"]["mode"] == "min" else -1
    done = [
        row
        for row in sweep["trials"]
        if row["optuna"] == "COMPLETE" and row["objective"] is not None
    ]
    best = min(
        done, key=lambda row: (sign * cast(float, row["objective"]), row["number"]), default=None
    )
    sweep["best_trial"] = best["number"] if best else None


def best_job(sweep: Sweep) -> str | None:
    """The job of the sweep's best trial, if one completed."""
    for row in sweep["trials"]:
        if row["number"] == sweep["best_trial"]:
            return row["job"]
    return None


# The trial's side ---------------------------------------------------------------------------


def report_trial_epoch(
    client: redis.Redis, settings: Settings, job: Mapping[str, Any], epoch: int, metrics: Mapping
) -> bool:
    """Report a trial's objective at the end of `epoch` to its study; True if the sweep's pruner
    stops the trial there. A job of no sweep, a sweep gone, or an epoch without the metric is
    never pruned."""
    sweep_id, number = job.get("sweep"), job.get("trial")
    if sweep_id is None or number is None:
        return False
    raw = client.get(sweep_key(sweep_id))
    if not raw:
        return False
    sweep = cast(Sweep, orjson.loads(raw))
    value = metrics.get(sweep["settings"]["objective"]["metric"])
    if sweep["status"] != "running" or not _is_number(value):
        return False
    import optuna

    study = open_study(settings.redis_url, sweep_id, sweep["settings"])
    trial = _study_trials(study).get(number)
    if trial is None or trial.state != optuna.trial.TrialState.RUNNING:
        return False
    live = optuna.trial.Trial(study, trial._trial_id)
    if epoch not in trial.intermediate_values:
        live.report(float(cast(float, value)), epoch)
    pruned = sweep["settings"]["pruner"] != "none" and live.should_prune()
    if pruned:
        log.info("trial_pruned sweep=%s trial=%d epoch=%d value=%s", sweep_id, number, epoch, value)
    return pruned


# The API view -------------------------------------------------------------------------------


class TrialView(TypedDict):
    number: int
    job: str | None
    params: dict[str, Any]
    state: str
    objective: float | None
    epochs: int
    error: str | None


class SweepView(TypedDict):
    """A sweep as the API shows it."""

    id: str
    name: str | None
    owner: str | None
    status: SweepStatus
    created_at: str
    updated_at: str
    finished_at: str | None
    objective: dict[str, str]
    sampler: str
    pruner: str
    space: dict[str, dict[str, Any]]
    max_trials: int
    max_concurrent: int
    seed: int
    priority: int
    trials: list[TrialView]
    best_trial: int | None
    best_job: str | None
    best_objective: float | None
    links: dict[str, str]


def view_sweep(sweep: Sweep, job_status: Callable[[str], Job | None]) -> SweepView:
    """The sweep with each trial's job state as it is now (`job_status` reads a job, None if
    gone): a trial is `pruned` when its job was cancelled by the pruner."""
    settings = sweep["settings"]
    trials = []
    for row in sweep["trials"]:
        job = job_status(row["job"]) if row["job"] else None
        trials.append(
            TrialView(
                number=row["number"],
                job=row["job"],
                params=row["params"],
                state=_trial_state(row, job),
                objective=row["objective"],
                epochs=(job.get("epoch") if job else None) or row["epochs"],
                error=row["error"],
            )
        )
    best = next((row for row in sweep["trials"] if row["number"] == sweep["best_trial"]), None)
    return SweepView(
        id=sweep["id"],
        name=sweep["name"],
        owner=sweep["owner"],
        status=sweep["status"],
        created_at=sweep["created_at"],
        updated_at=sweep["updated_at"],
        finished_at=sweep["finished_at"],
        objective=settings["objective"],
        sampler=settings["sampler"],
        pruner=settings["pruner"],
        space=settings["space"],
        max_trials=settings["max_trials"],
        max_concurrent=settings["max_concurrent"],
        seed=settings["seed"],
        priority=settings["priority"],
        trials=trials,
        best_trial=sweep["best_trial"],
        best_job=best["job"] if best else None,
        best_objective=best["objective"] if best else None,
        links={
            "self": f"/v1/sweeps/{sweep['id']}",
            "cancel": f"/v1/sweeps/{sweep['id']}:cancel",
            "model": f"/v1/models/{sweep['id']}",
        },
    )


def _trial_state(row: TrialRow, job: Job | None) -> str:
    if job is None:
        return "failed" if row["optuna"] in (None, "FAIL") else row["optuna"].lower()
    if job["status"] == "cancelled" and job.get("reason") == "pruned":
        return "pruned"
    return job["status"]


def live_trial_jobs(sweep: Sweep) -> Iterator[str]:
    """The job ids of the trials not settled yet."""
    for row in sweep["trials"]:
        if row["optuna"] is None and row["job"] is not None:
            yield row["job"]
