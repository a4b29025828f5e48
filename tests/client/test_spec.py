"""A live keras.Model becomes a job request: its to_json() and its compile settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client import spec_from_keras
from client.api import CALLBACK_SETTINGS, CHECKPOINT_SETTINGS
from tests.support.seed_model import build_seed_model


@pytest.fixture(scope="module")
def keras():
    import keras

    return keras


def test_spec_carries_the_models_json_and_its_compile_settings(keras):
    model = build_seed_model()
    spec = spec_from_keras(model, "ab" * 16, fit={"epochs": 2}, name="seed", seed=7)
    assert spec["model"] == json.loads(model.to_json())
    assert spec["data"] == {"dataset": "ab" * 16, "x": "x", "y": "y"}
    assert spec["fit"] == {"epochs": 2}
    assert (spec["name"], spec["seed"]) == ("seed", 7)
    compile_section = spec["compile"]
    assert compile_section["loss"] == "categorical_crossentropy"
    assert compile_section["metrics"] == ["accuracy"]
    assert compile_section["optimizer"]["class_name"] == "RMSprop"
    assert compile_section["optimizer"]["config"]["learning_rate"] == pytest.approx(0.001)
    # Keras's serialization wrappers are dropped, and so are options left unset.
    assert "module" not in compile_section["optimizer"]
    assert "run_eagerly" not in compile_section
    assert "loss_weights" not in compile_section
    json.dumps(spec, allow_nan=False)


def test_objects_in_compile_settings_become_class_name_and_config(keras):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.9)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.MeanSquaredError(),
        metrics=[keras.metrics.MeanAbsoluteError()],
    )
    section = spec_from_keras(model, {"dataset": "cd" * 16, "x": "a", "y": "b"})["compile"]
    assert section["loss"] == {
        "class_name": "MeanSquaredError",
        "config": {"name": "mean_squared_error", "reduction": "sum_over_batch_size"},
    }
    assert section["optimizer"]["config"]["learning_rate"] == {
        "class_name": "ExponentialDecay",
        "config": {
            "initial_learning_rate": 0.1,
            "decay_steps": 10,
            "decay_rate": 0.9,
            "staircase": False,
            "name": "ExponentialDecay",
        },
    }
    assert section["metrics"][0]["class_name"] == "MeanAbsoluteError"


def test_an_uncompiled_model_needs_a_compile_section(keras):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"not compiled"):
        spec_from_keras(model, "ab" * 16)
    given = {"optimizer": "adam", "loss": "mse"}
    assert spec_from_keras(model, "ab" * 16, compile=given)["compile"] == given


def test_live_callbacks_become_their_request_form(keras):
    model = build_seed_model()
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(factor=0.5, min_lr=np.float32(1e-5)),
        keras.callbacks.ModelCheckpoint("best.keras", monitor="val_accuracy", mode="max"),
        {"class_name": "TerminateOnNaN", "config": {}},
    ]
    spec = spec_from_keras(model, "ab" * 16, fit={"epochs": 3, "callbacks": callbacks})
    early, plateau, nan = spec["fit"]["callbacks"]
    assert early == {
        "class_name": "EarlyStopping",
        "config": {
            "monitor": "val_loss",
            "min_delta": 0,
            "patience": 2,
            "verbose": 0,
            "mode": "auto",
            "restore_best_weights": True,
            "start_from_epoch": 0,
        },
    }
    assert plateau["config"]["factor"] == 0.5
    assert plateau["config"]["min_lr"] == pytest.approx(1e-5)
    assert nan == {"class_name": "TerminateOnNaN", "config": {}}
    assert spec["checkpoint"] == {"monitor": "val_accuracy", "mode": "max"}
    json.dumps(spec, allow_nan=False)


def test_callbacks_the_service_does_not_run_are_refused_clearly(keras):
    model = build_seed_model()
    logger = keras.callbacks.CSVLogger("log.csv")
    with pytest.raises(ValueError, match=r"fit.callbacks\[0\] is a CSVLogger, which the service"):
        spec_from_keras(model, "ab" * 16, fit={"callbacks": [logger]})


def test_the_client_takes_the_callback_settings_the_server_accepts():
    from core.grammar.allowlist import CALLBACK_CLASSES
    from core.grammar.data import CHECKPOINT_KINDS

    assert {name: set(keys) for name, keys in CALLBACK_SETTINGS.items()} == {
        name: set(kinds) for name, kinds in CALLBACK_CLASSES.items()
    }
    assert set(CHECKPOINT_SETTINGS) < set(CHECKPOINT_KINDS)
