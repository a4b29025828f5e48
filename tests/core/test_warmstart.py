"""Warm start in the worker: weights copied layer by layer by name from a verified checkpoint,
frozen layers untouched by training, strict refusals, and the shapes check at submit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core.checkpoints import load_checkpoint
from core.datasets import load_manifest
from core.grammar import parse_job_request
from core.settings import Settings
from core.storage import DataDir, new_id, read_json, write_json
from core.training import TrainingFailed, train_job
from core.warmstart import mismatched_layers
from tests.core.test_training import CLASSES, FEATURES, RecordingControl, blobs, make_spec, store


@dataclasses.dataclass
class Source:
    """A data folder with a dataset and one trained job (version 1 a checkpoint, 2 final)."""

    data: DataDir
    settings: Settings
    dataset: str
    job_id: str

    def parse(self, request: dict) -> dict:
        return parse_job_request(
            request,
            settings=self.settings,
            manifest_of=lambda found: load_manifest(self.data, found),
        )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """Train once for the module: the job's manifest as a worker writes it."""
    root = tmp_path_factory.mktemp("warmstart")
    settings = Settings(data_dir=root / "data")
    data = DataDir(settings.data_dir)
    data.ensure()
    dataset = store(data, settings, root, **blobs())
    spec = make_spec(data, settings, dataset, epochs=2, keep=2)
    job_id, control = new_id(), RecordingControl()
    result = train_job(data.job(job_id), spec, data, settings, control, resume=None)
    checkpoints, best = control.saves[-1]
    manifest = {
        "id": job_id,
        "status": "succeeded",
        "checkpoints": checkpoints,
        "best": best,
        "final": result["final"],
    }
    write_json(data.job(job_id) / "manifest.json", manifest)
    write_json(data.job(job_id) / "job.json", {"id": job_id, "spec": spec})
    return Source(data, settings, dataset, job_id)


def head_spec(source: Source, *, version: int = 1, strict: bool = False) -> dict:
    """The source's model with its base frozen and a new head, warm-started from it."""
    layers = [
        {"class_name": "Dense", "config": {"units": 16, "activation": "relu", "trainable": False}},
        {
            "class_name": "Dense",
            "config": {"name": "head", "units": CLASSES, "activation": "softmax"},
        },
    ]
    spec = source.parse(
        {
            "seed": 4,
            "model": {"input_shape": [FEATURES], "layers": layers},
            "compile": {"optimizer": "adam", "loss": "categorical_crossentropy"},
            "fit": {"batch_size": 16, "epochs": 1},
            "data": {
                "dataset": source.dataset,
                "x": "x",
                "y": "y",
                "preprocess": {"y": {"one_hot": CLASSES}},
            },
        }
    )
    spec["warm_start"] = {"job": source.job_id, "version": version, "strict": strict}
    return spec


def run(source: Source, spec: dict) -> tuple[str, RecordingControl, dict]:
    job_id, control = new_id(), RecordingControl()
    result = train_job(
        source.data.job(job_id), spec, source.data, source.settings, control, resume=None
    )
    return job_id, control, result


def test_a_frozen_base_keeps_the_source_weights_and_the_head_trains(source: Source) -> None:
    job_id, control, result = run(source, head_spec(source))
    assert result["warm_start"] == {
        "job": source.job_id,
        "version": 1,
        "strict": False,
        "loaded": ["dense"],
        "skipped": ["head"],
    }
    assert ("warm_start", result["warm_start"]) in control.events
    source_entry = read_json(source.data.job(source.job_id) / "manifest.json")["checkpoints"][0]
    base = load_checkpoint(source.data.job(source.job_id), source_entry, compile=False)
    trained = load_checkpoint(source.data.job(job_id), control.saves[-1][0][-1], compile=False)
    for old, new in zip(
        base.get_layer("dense").get_weights(), trained.get_layer("dense").get_weights(), strict=True
    ):
        np.testing.assert_array_equal(old, new)
    assert not trained.get_layer("dense").trainable
    assert trained.get_layer("head").trainable


def test_a_resumed_job_does_not_warm_start_again(source: Source) -> None:
    spec = head_spec(source)
    job_id, control, _ = run(source, spec)
    entry = control.saves[-1][0][-1]
    write_json(source.data.job(job_id) / "manifest.json", {"checkpoints": [entry], "best": None})
    spec["fit"]["epochs"] = 2
    again = RecordingControl()
    result = train_job(
        source.data.job(job_id), spec, source.data, source.settings, again, resume=entry
    )
    assert "warm_start" not in result
    assert all(kind != "warm_start" for kind, _ in again.events)


def test_a_strict_warm_start_fails_the_job_naming_the_layers(source: Source) -> None:
    with pytest.raises(TrainingFailed) as failed:
        run(source, head_spec(source, strict=True))
    assert failed.value.reason == "warm_start"
    assert failed.value.message.endswith("do not match: head.")


def test_a_source_file_that_fails_its_sha256_check_is_not_loaded(source: Source) -> None:
    path = source.data.job(source.job_id) / "model.keras"
    kept = path.read_bytes()
    path.write_bytes(kept + b"tampered")
    try:
        with pytest.raises(TrainingFailed) as failed:
            run(source, head_spec(source, version=2))
    finally:
        path.write_bytes(kept)
    assert failed.value.reason == "warm_start"
    assert "sha256" in failed.value.message


def test_shapes_tell_which_layers_cannot_load_before_any_weight_exists(source: Source) -> None:
    spec = read_json(source.data.job(source.job_id) / "job.json")["spec"]
    wider = make_spec(source.data, source.settings, source.dataset)
    wider["model"]["layers"][0]["config"]["units"] = 17
    assert mismatched_layers(spec, spec) == []
    assert mismatched_layers(wider, spec) == ["dense", "output"]
    assert mismatched_layers(head_spec(source), spec) == ["head"]
