"""Batch predictions (core.batch): the request checks, scoring in batches from the durable
offset, and the result dataset, against a real Redis, a real saved model and real files."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import redis

from core import datasets, grammar
from core.batch import BatchStore, parse_batch_request, read_progress, view_batch
from core.checkpoints import save_model_file
from core.errors import InvalidRequest
from core.modeling import build_model
from core.runs import WorkerIdentity
from core.scoring import run_batch
from core.serving import catalog
from core.serving.cache import load_servable
from core.settings import Settings
from core.storage import DataDir, new_id, utc_now, write_json
from tests.support.models import job_manifest
from tests.support.stack import blobs, tiny_request

ME = WorkerIdentity("w1@test")
CLASSES = ["ant", "bee", "cicada"]
ROWS = 1000


@pytest.fixture
def batch_settings(settings: Settings) -> Settings:
    # Chunks of 300 rows in batches of 128: commits after 384, 768 and 1000 rows.
    return settings.with_overrides(batch_predict_chunk_rows=300)


@pytest.fixture
def data(batch_settings: Settings) -> DataDir:
    data = DataDir(batch_settings.data_dir)
    data.ensure()
    return data


@pytest.fixture
def batches(batch_settings: Settings, data: DataDir) -> BatchStore:
    return BatchStore(redis.Redis.from_url(batch_settings.redis_url), data, batch_settings)


def store_arrays(data: DataDir, settings: Settings, **arrays: np.ndarray) -> str:
    document = {"arrays": {name: array.tolist() for name, array in arrays.items()}}
    body = orjson.dumps(document)
    manifest = datasets.store_json(data, new_id(), document, body, settings=settings, owner=None)
    return manifest["id"]


@pytest.fixture
def classifier(data: DataDir, batch_settings: Settings) -> tuple[str, object]:
    """A succeeded job (the tiny classifier, untrained) with class names: its id and model."""
    training = store_arrays(data, batch_settings, **blobs(rows=64))
    parsed = grammar.parse_job(
        tiny_request(training, epochs=1),
        settings=batch_settings,
        manifest_of=lambda dataset: datasets.load_manifest(data, dataset),
    )
    model = build_model(parsed.spec)
    job_id = new_id()
    saved = save_model_file(model, data.job(job_id) / "model.keras")
    manifest = job_manifest(job_id, name="tiny", owner=None, status="succeeded", epoch=1)
    manifest.update(finished_at=utc_now(), final={"file": "model.keras", **saved, "version": 1})
    labels = {"classes": CLASSES, "features": None}
    write_json(data.job(job_id) / "job.json", {"id": job_id, "spec": parsed.spec, "labels": labels})
    write_json(data.job(job_id) / "manifest.json", manifest)
    return job_id, model


@pytest.fixture
def scored(data: DataDir, batch_settings: Settings) -> tuple[str, np.ndarray]:
    x = np.random.default_rng(3).normal(size=(ROWS, 16)).astype("float32")
    return store_arrays(data, batch_settings, features=x), x


def parse(body: dict, data: DataDir, settings: Settings):
    return parse_batch_request(
        body,
        data=data,
        settings=settings,
        find_model=lambda model: catalog.Manifests(data).find_model(model, lambda owner: True),
        dataset_manifest=lambda dataset: datasets.load_manifest(data, dataset),
    )


class Counting:
    """The loaded model, counting the rows each forward pass scores."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded
        self.inputs, self.outputs = loaded.inputs, loaded.outputs
        self.rows = 0

    def tensorflow_forward(self, inputs):
        self.rows += len(inputs[0])
        return self.loaded.tensorflow_forward(inputs)


def loader(batches: BatchStore, counted: list[Counting]):
    from concurrent.futures import ThreadPoolExecutor

    def load(batch):
        manifest = catalog.Manifests(batches.data).read(batch["model"])
        servable = catalog.resolve_version(batches.data, manifest, version=batch["version"])
        counting = Counting(load_servable(servable, batches.settings, ThreadPoolExecutor(1)))
        counted.append(counting)
        return counting

    return load


def test_a_request_that_cannot_run_is_refused_with_a_pointer_per_field(
    data, batch_settings, classifier, scored
):
    job_id, _ = classifier
    dataset, _ = scored
    with pytest.raises(InvalidRequest) as refused:
        parse(
            {"model": job_id, "dataset": dataset, "x": "nope", "batch_size": 0, "extra": 1},
            data,
            batch_settings,
        )
    paths = {error.path for error in refused.value.errors}
    assert paths == {"/x", "/batch_size", "/extra"}

    wide = store_arrays(data, batch_settings, x=np.zeros((4, 8), "float32"))
    with pytest.raises(InvalidRequest) as refused:
        parse({"model": job_id, "dataset": wide, "version": 7}, data, batch_settings)
    assert [error.path for error in refused.value.errors] == ["/version"]
    with pytest.raises(InvalidRequest) as refused:
        parse({"model": job_id, "dataset": wide}, data, batch_settings)
    assert [error.path for error in refused.value.errors] == ["/x"]
    assert "shape [8]" in refused.value.errors[0].message
    with pytest.raises(InvalidRequest) as refused:
        parse({"model": "no-such-model", "dataset": new_id()}, data, batch_settings)
    assert [error.path for error in refused.value.errors] == ["/model", "/dataset"]


def test_a_batch_prediction_scores_every_row_as_keras_does_and_makes_a_dataset(
    data, batch_settings, batches, classifier, scored
):
    _, model = classifier
    dataset, x = scored
    parsed = parse(
        {"model": "tiny", "dataset": dataset, "x": "features", "batch_size": 128},
        data,
        batch_settings,
    )
    batch = batches.create(parsed, owner=None, request_id=None)
    counted: list[Counting] = []

    outcome = run_batch(batches, batch, ME, load=loader(batches, counted), send=[].append)

    assert outcome == "succeeded", batches.get(batch["id"])["message"]
    done = view_batch(batches.get(batch["id"]))
    assert done["progress"] == {"rows_done": ROWS, "rows": ROWS, "fraction": 1.0}
    assert done["attempts"] == [{"attempt": 1, "start": 0, "stop": ROWS}]
    assert counted[0].rows == ROWS
    result = datasets.load_manifest(data, done["result_dataset"])
    assert sorted(result["arrays"]) == ["class", "class_name", "output"]
    assert result["rows"] == ROWS
    expected = model.predict(x, verbose=0)
    arrays = {
        name: datasets.open_array(data, result["id"], name, verify=True)
        for name in result["arrays"]
    }
    np.testing.assert_allclose(arrays["output"], expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(arrays["class"], expected.argmax(axis=1))
    np.testing.assert_array_equal(arrays["class_name"], np.array(CLASSES)[expected.argmax(axis=1)])
    assert not (batches.folder(batch["id"]) / "outputs").exists()


def test_a_stopped_batch_prediction_resumes_from_its_offset_without_scoring_a_row_twice(
    data, batch_settings, batches, classifier, scored
):
    job_id, model = classifier
    dataset, x = scored
    parsed = parse(
        {"model": job_id, "dataset": dataset, "x": "features", "batch_size": 128},
        data,
        batch_settings,
    )
    batch = batches.create(parsed, owner=None, request_id=None)
    counted: list[Counting] = []
    sent: list = []
    stops = iter([None, "shutdown"])

    def stop_after_one_chunk(control):
        if control is not None:
            control.should_stop = lambda: next(stops)

    outcome = run_batch(
        batches,
        batch,
        ME,
        load=loader(batches, counted),
        send=sent.append,
        on_control=stop_after_one_chunk,
    )

    assert outcome == "requeued"
    assert [queued["id"] for queued in sent] == [batch["id"]]
    assert read_progress(batches.folder(batch["id"]))["rows_done"] == 384
    assert batches.get(batch["id"])["status"] == "queued"

    outcome = run_batch(
        batches, batches.get(batch["id"]), ME, load=loader(batches, counted), send=sent.append
    )

    assert outcome == "succeeded"
    done = batches.get(batch["id"])
    assert done["attempts"] == [
        {"attempt": 1, "start": 0, "stop": 384},
        {"attempt": 2, "start": 384, "stop": ROWS},
    ]
    assert [counting.rows for counting in counted] == [384, ROWS - 384]
    result = datasets.open_array(data, done["result_dataset"], "output")
    np.testing.assert_allclose(result, model.predict(x, verbose=0), rtol=0, atol=1e-5)


def test_a_cancel_stops_it_and_makes_no_dataset(data, batch_settings, batches, classifier, scored):
    job_id, _ = classifier
    dataset, _ = scored
    parsed = parse({"model": job_id, "dataset": dataset, "x": "features"}, data, batch_settings)
    batch = batches.create(parsed, owner=None, request_id=None)
    assert batches.request_cancel(batch["id"])["status"] == "cancelled"

    assert (
        run_batch(batches, batches.get(batch["id"]), ME, load=loader(batches, []), send=[].append)
        == "finished"
    )
    assert batches.get(batch["id"])["result_dataset"] is None
    assert len(list(data.datasets.iterdir())) == 2  # the training data and the scored data


def test_the_reconciler_requeues_a_batch_prediction_whose_worker_vanished(
    data, batch_settings, batches, store, classifier, scored
):
    from core.reconciler import reconcile

    job_id, _ = classifier
    dataset, _ = scored
    parsed = parse({"model": job_id, "dataset": dataset, "x": "features"}, data, batch_settings)
    batch = batches.create(parsed, owner=None, request_id=None)
    batches.transition(batch["id"], "running", attempt=1)
    leased = batches.create(parsed, owner=None, request_id=None)
    batches.transition(leased["id"], "running", attempt=1)
    assert batches.leases.acquire(leased["id"], "elsewhere/1/w2")
    sent: list = []

    reconcile(store, [].append, "w1", batches=batches, send_batch=sent.append)

    assert [resent["id"] for resent in sent] == [batch["id"]]
    assert batches.get(batch["id"])["status"] == "queued"
    assert batches.get(leased["id"])["status"] == "running"
    assert (
        orjson.loads((batches.folder(batch["id"]) / "manifest.json").read_bytes())["status"]
        == "queued"
    )


def test_a_cancel_while_it_runs_stops_it_at_the_next_chunk(
    data, batch_settings, batches, classifier, scored
):
    job_id, _ = classifier
    dataset, _ = scored
    parsed = parse(
        {"model": job_id, "dataset": dataset, "x": "features", "batch_size": 128},
        data,
        batch_settings,
    )
    batch = batches.create(parsed, owner=None, request_id=None)
    counted: list[Counting] = []
    load = loader(batches, counted)

    def load_and_cancel_on_first_pass(record):
        counting = load(record)
        forward = counting.tensorflow_forward

        def cancel_then_forward(inputs):
            if counting.rows == 0:
                assert batches.request_cancel(record["id"])["status"] == "cancelling"
            return forward(inputs)

        counting.tensorflow_forward = cancel_then_forward
        return counting

    outcome = run_batch(batches, batch, ME, load=load_and_cancel_on_first_pass, send=[].append)

    assert outcome == "cancelled"
    done = batches.get(batch["id"])
    assert (done["status"], done["reason"], done["result_dataset"]) == (
        "cancelled",
        "cancelled",
        None,
    )
    assert counted[0].rows == 384  # the chunk under way was finished and committed, no more
    assert not (batches.folder(batch["id"]) / "outputs").exists()


def test_the_reconciler_resends_a_queued_batch_prediction_whose_message_was_lost(
    data, batch_settings, batches, store, classifier, scored
):
    from core.reconciler import reconcile
    from core.rediskeys import batch_key

    job_id, _ = classifier
    dataset, _ = scored
    parsed = parse({"model": job_id, "dataset": dataset, "x": "features"}, data, batch_settings)
    batch = batches.create(parsed, owner=None, request_id=None)
    long_ago = "2020-01-01T00:00:00.000Z"
    batches.redis.hset(batch_key(batch["id"]), "updated_at", orjson.dumps(long_ago))
    sent: list = []

    reconcile(store, [].append, "w1", batches=batches, send_batch=sent.append)

    assert [resent["id"] for resent in sent] == [batch["id"]]
