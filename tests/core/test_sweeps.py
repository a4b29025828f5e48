"""Sweeps (core.sweeps): the request's boundary, the driver's steps and the prune decision, on a
real Redis with Optuna's journal in it. Trials' jobs are moved through their states here the way
a worker would (the e2e test trains them for real)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import redis

from core.errors import InvalidRequest
from core.grammar import parse_job
from core.jobs import JobStore
from core.rediskeys import study_prefix
from core.settings import Settings
from core.storage import DataDir
from core.sweeps import (
    DriverContext,
    DriverReplaced,
    SweepStore,
    claim_driver,
    drive_sweep,
    parse_sweep,
    report_trial_epoch,
    start_driver,
    view_sweep,
)
from tests.core.grammar.test_model_forms import DATASET, manifests, stats
from tests.support.stack import tiny_request

_ARRAYS = manifests(
    {"x": ([100, 16], "float32", stats(-5, 5)), "y": ([100], "int64", stats(0, 2, [0, 1, 2]))}
)
LR = "/compile/optimizer/config/learning_rate"
UNITS = "/model/layers/0/config/units"


def manifest_of(dataset_id: str) -> dict[str, Any]:
    return {**_ARRAYS(dataset_id), "source": {"sha256": "0" * 64}}


def parse_with(settings: Settings, body: dict[str, Any]) -> Any:
    """`parse_sweep` with the job parse over `manifest_of`, under `settings`."""

    def parse(request: Any) -> Any:
        return parse_job(request, settings=settings, manifest_of=manifest_of)

    return parse_sweep(body, parse=parse, max_trials=settings.max_sweep_trials)


def sweep_request(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "lr-units",
        "base": tiny_request(DATASET, epochs=3),
        "space": {
            LR: {"float": [0.0001, 0.1], "log": True},
            UNITS: {"int": [8, 64], "step": 8},
        },
        "objective": {"metric": "val_loss", "mode": "min"},
        "sampler": "tpe",
        "pruner": "median",
        "max_trials": 6,
        "max_concurrent": 2,
        "seed": 7,
    }
    body.update(changes)
    return body


def refusals(body: dict[str, Any], settings: Settings | None = None) -> list[tuple[str, str]]:
    with pytest.raises(InvalidRequest) as refused:
        parse_with(settings or Settings(), body)
    return [(error.path, error.message) for error in refused.value.errors]


# The boundary -------------------------------------------------------------------------------


def test_a_valid_sweep_is_normalized_with_its_defaults() -> None:
    body = sweep_request()
    del body["pruner"], body["seed"]
    parsed = parse_with(Settings(), body)
    assert parsed.settings["pruner"] == "median"
    assert parsed.settings["seed"] == 0
    assert parsed.settings["priority"] == 5
    assert parsed.settings["epochs"] == 3
    assert parsed.settings["space"][UNITS] == {"int": [8, 64], "step": 8}


def test_a_pointer_that_does_not_resolve_in_the_base_is_refused_at_its_dimension() -> None:
    body = sweep_request(space={"/model/layers/5/config/units": {"int": [8, 64]}})
    [(path, message)] = refusals(body)
    assert path == "/space/~1model~1layers~15~1config~1units"
    assert "does not resolve" in message


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (
            {"space": {LR: {"float": [0.1, 0.01]}}},
            "/space/~1compile~1optimizer~1config~1learning_rate/float",
        ),
        (
            {"space": {LR: {"float": [0.0, 0.1], "log": True}}},
            "/space/~1compile~1optimizer~1config~1learning_rate/float",
        ),
        (
            {"space": {UNITS: {"int": [8, 64], "step": 0}}},
            "/space/~1model~1layers~10~1config~1units/step",
        ),
        ({"space": {UNITS: {"choice": []}}}, "/space/~1model~1layers~10~1config~1units/choice"),
        ({"space": {UNITS: {"range": [1, 2]}}}, "/space/~1model~1layers~10~1config~1units"),
        ({"space": {}}, "/space"),
        ({"sampler": "bayes"}, "/sampler"),
        ({"pruner": "asha"}, "/pruner"),
        ({"max_trials": 0}, "/max_trials"),
        ({"max_concurrent": True}, "/max_concurrent"),
        ({"objective": {"metric": "val_auc", "mode": "min"}}, "/objective/metric"),
        ({"objective": {"metric": "loss", "mode": "down"}}, "/objective/mode"),
        ({"colour": "blue"}, "/colour"),
    ],
)
def test_a_bad_field_is_refused_at_its_pointer(change: dict[str, Any], path: str) -> None:
    assert [p for p, _ in refusals(sweep_request(**change))] == [path]


def test_the_base_must_be_a_valid_job_and_its_errors_point_into_it() -> None:
    body = sweep_request()
    body["base"]["fit"]["epochs"] = 0
    assert [p for p, _ in refusals(body)] == ["/base/fit/epochs"]


def test_trial_0_is_the_base_so_the_space_must_hold_the_bases_value() -> None:
    body = sweep_request(space={UNITS: {"int": [64, 128]}})
    [(path, message)] = refusals(body)
    assert path == "/space/~1model~1layers~10~1config~1units"
    assert "trial 0 is the base" in message


def test_an_extreme_the_grammar_refuses_is_refused_at_submit() -> None:
    body = sweep_request(space={UNITS: {"int": [8, 10**9]}})
    [(path, message)] = refusals(body)
    assert path == "/space/~1model~1layers~10~1config~1units"
    assert "1000000000" in message


def test_extremes_that_fit_alone_but_not_together_are_refused_at_a_dimension() -> None:
    # Each alone fits the budget; the most units with the largest batch do not.
    settings = Settings(worker_memory_bytes=3_000_000)
    space = {UNITS: {"int": [32, 4096], "step": 32}, "/fit/batch_size": {"int": [32, 96]}}
    alone = [
        sweep_request(space={UNITS: space[UNITS]}),
        sweep_request(space={"/fit/batch_size": space["/fit/batch_size"]}),
    ]
    for body in alone:
        parse_with(settings, body)
    [(path, message)] = refusals(sweep_request(space=space), settings)
    assert path.startswith("/space/")
    assert "every dimension at its highest" in message


def test_the_grid_sampler_takes_no_float_dimension() -> None:
    assert [p for p, _ in refusals(sweep_request(sampler="grid"))] == [
        "/space/~1compile~1optimizer~1config~1learning_rate"
    ]


# The driver ---------------------------------------------------------------------------------


@pytest.fixture
def sweeps(settings: Settings) -> SweepStore:
    data = DataDir(settings.data_dir)
    data.ensure()
    return SweepStore(redis.Redis.from_url(settings.redis_url), data, settings)


class Trials:
    """A driver context whose sent jobs are run here, epoch by epoch, as a worker would."""

    def __init__(self, sweeps: SweepStore, store: JobStore) -> None:
        self.sent: list[dict] = []
        self.store = store
        self.context = DriverContext(sweeps, store, manifest_of, self.sent.append)
        self.most_live = 0

    def run(self, sweep_id: str, curve: Any) -> dict:
        """Drive until the sweep ends; each sent job reports `curve(params, epoch)` per epoch."""
        for _ in range(200):
            if not drive_sweep(self.context, sweep_id):
                return self.context.sweeps.get(sweep_id)
            self.most_live = max(self.most_live, len(self.store.job_ids("queued")))
            for job in list(self.sent):
                self.sent.remove(job)
                self.train(job, curve)
        raise AssertionError("the sweep did not end")

    def train(self, job: dict, curve: Any) -> None:
        self.store.transition(job["id"], "running", attempt=1)
        params = self.context.sweeps.get(job["sweep"])["trials"][job["trial"]]["params"]
        for epoch in (1, 2, 3):
            metrics = {"loss": curve(params, epoch), "val_loss": curve(params, epoch)}
            self.store.record_epoch(job["id"], epoch, metrics)
            if report_trial_epoch(self.store.redis, self.store.settings, job, epoch, metrics):
                self.store.transition(job["id"], "cancelled", reason="pruned")
                return
        self.store.transition(job["id"], "succeeded", epoch=3)


def by_learning_rate(params: dict, epoch: int) -> float:
    """A loss that falls with the epochs, faster the nearer the rate is to 0.01."""
    distance = abs(params[LR] - 0.01) * 100
    return (1 + distance) / epoch


def submit(sweeps: SweepStore, **changes: Any) -> dict:
    body = sweep_request(**changes)
    parsed = parse_with(sweeps.settings, body)
    return sweeps.create(parsed, owner="alice", request=body)


def test_a_sweep_runs_trial_0_as_the_base_then_its_trials_never_past_max_concurrent(
    sweeps: SweepStore, store: JobStore
) -> None:
    sweep = submit(sweeps, pruner="none")
    trials = Trials(sweeps, store)
    done = trials.run(sweep["id"], by_learning_rate)
    assert done["status"] == "succeeded"
    assert len(done["trials"]) == 6
    assert done["trials"][0]["params"] == {LR: 0.001, UNITS: 32}
    assert trials.most_live <= 2
    jobs = [store.get(row["job"]) for row in done["trials"]]
    assert [(job["sweep"], job["trial"], job["owner"]) for job in jobs] == [
        (sweep["id"], n, "alice") for n in range(6)
    ]
    view = view_sweep(done, store.get)
    best = min(done["trials"], key=lambda row: row["objective"])
    assert view["best_job"] == best["job"]
    assert view["best_objective"] <= done["trials"][0]["objective"]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_the_same_seed_draws_the_same_points_and_another_seed_others(
    sweeps: SweepStore, store: JobStore, sampler: str
) -> None:
    def points(seed: int) -> list[dict]:
        sweep = submit(sweeps, sampler=sampler, pruner="none", seed=seed, max_trials=4)
        done = Trials(sweeps, store).run(sweep["id"], by_learning_rate)
        return [row["params"] for row in done["trials"]]

    first = points(1)
    assert points(1) == first
    assert points(2) != first
    assert len({tuple(p.items()) for p in first}) == len(first)


def test_the_grid_sampler_visits_every_point_once(sweeps: SweepStore, store: JobStore) -> None:
    space = {UNITS: {"choice": [16, 32]}, "/fit/batch_size": {"int": [16, 48], "step": 16}}
    sweep = submit(sweeps, sampler="grid", pruner="none", space=space, max_trials=50)
    done = Trials(sweeps, store).run(sweep["id"], lambda params, epoch: 1.0 / epoch)
    points = [tuple(sorted(row["params"].items())) for row in done["trials"][1:]]
    # Trial 0 (the base) and then the six points of the grid, each once.
    assert len(done["trials"]) == 7
    assert len(set(points)) == 6


def test_the_median_pruner_stops_a_trial_worse_than_the_finished_ones(
    sweeps: SweepStore, store: JobStore
) -> None:
    sweep = submit(sweeps, max_trials=8, max_concurrent=1)
    done = Trials(sweeps, store).run(sweep["id"], by_learning_rate)
    states = [row["optuna"] for row in done["trials"]]
    assert "PRUNED" in states
    pruned = next(row for row in done["trials"] if row["optuna"] == "PRUNED")
    assert store.get(pruned["job"])["reason"] == "pruned"
    assert view_sweep(done, store.get)["trials"][pruned["number"]]["state"] == "pruned"


def test_no_pruner_prunes_nothing(sweeps: SweepStore, store: JobStore) -> None:
    sweep = submit(sweeps, max_trials=8, max_concurrent=1, pruner="none")
    done = Trials(sweeps, store).run(sweep["id"], by_learning_rate)
    assert {row["optuna"] for row in done["trials"]} == {"COMPLETE"}


def test_a_failed_trial_does_not_end_the_sweep(sweeps: SweepStore, store: JobStore) -> None:
    sweep = submit(sweeps, pruner="none", max_trials=4)
    trials = Trials(sweeps, store)
    drive_sweep(trials.context, sweep["id"])
    first = trials.sent.pop(0)
    store.transition(first["id"], "running", attempt=1)
    store.transition(first["id"], "failed", reason="nan_loss", message="NaN")
    done = trials.run(sweep["id"], by_learning_rate)
    assert done["status"] == "succeeded"
    assert [row["optuna"] for row in done["trials"]].count("FAIL") == 1
    assert done["trials"][0]["error"] == "NaN"


def test_a_study_lost_with_redis_is_rebuilt_from_the_trials_table(
    sweeps: SweepStore, store: JobStore
) -> None:
    sweep = submit(sweeps, pruner="none", max_trials=5)
    trials = Trials(sweeps, store)
    drive_sweep(trials.context, sweep["id"])
    for job in list(trials.sent):
        trials.sent.remove(job)
        trials.train(job, by_learning_rate)
    drive_sweep(trials.context, sweep["id"])
    before = copy.deepcopy(sweeps.get(sweep["id"])["trials"])
    journal = list(sweeps.redis.scan_iter(match=study_prefix(sweep["id"]) + ":*"))
    sweeps.redis.delete(*journal)
    done = trials.run(sweep["id"], by_learning_rate)
    assert [row["number"] for row in done["trials"]] == [0, 1, 2, 3, 4]
    assert done["trials"][: len(before)][0]["params"] == before[0]["params"]
    assert done["status"] == "succeeded"


def test_cancel_cancels_the_live_trials_and_starts_no_more(
    sweeps: SweepStore, store: JobStore
) -> None:
    sweep = submit(sweeps, pruner="none")
    trials = Trials(sweeps, store)
    drive_sweep(trials.context, sweep["id"])
    sweeps.request_cancel(sweep["id"])
    assert not drive_sweep(trials.context, sweep["id"])
    done = sweeps.get(sweep["id"])
    assert done["status"] == "cancelled"
    assert len(done["trials"]) == 2
    assert {store.get(row["job"])["status"] for row in done["trials"]} == {"cancelled"}


def test_one_driver_chain_acts_at_a_time(sweeps: SweepStore) -> None:
    client = sweeps.redis
    first = start_driver(client, "a" * 32)
    assert first is not None
    assert start_driver(client, "a" * 32) is None
    assert claim_driver(client, "a" * 32, first, "next")
    # The step that went before, redelivered, finds another expected next: it does nothing.
    assert not claim_driver(client, "a" * 32, first, "other")
    assert claim_driver(client, "a" * 32, "next", "after")


def test_a_step_that_lost_its_claim_creates_and_saves_nothing(
    sweeps: SweepStore, store: JobStore
) -> None:
    sweep = submit(sweeps, pruner="none")
    trials = Trials(sweeps, store)
    trials.context.still_driving = lambda: False
    with pytest.raises(DriverReplaced):
        drive_sweep(trials.context, sweep["id"])
    assert trials.sent == []
    assert store.job_ids("queued") == []
    assert sweeps.get(sweep["id"])["trials"] == []
