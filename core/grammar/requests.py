"""A job request rebuilt from a normalized spec, for jobs stored before requests were kept.

A clone patches what the client sent (`request.json`). A job written before that file existed
has only its normalized spec (`job.json`), which is not itself a request (its model is a graph
of named layers, its data maps names to arrays). `request_from_spec` writes the same job as a
request the grammar reads back to the same spec: the model as Keras's `to_json()` writes it (a
Sequential stays a Sequential, with its name), the data with `preprocess` as the request spells
it.
"""

from __future__ import annotations

from typing import Any


def request_from_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A request that parses to `spec` (a normalized spec the grammar wrote)."""
    request = {key: value for key, value in spec.items() if key not in ("model", "data")}
    model = spec["model"]
    sequential = model.get("class_name") == "Sequential"
    request["model"] = sequential_json(model) if sequential else functional_json(model)
    request["data"] = _data_request(spec["data"])
    return {key: value for key, value in request.items() if value is not None}


def sequential_json(model: dict[str, Any]) -> dict[str, Any]:
    """The normalized chain as `keras.Sequential.to_json()` writes it."""
    layers = [_input_layer(model["inputs"][0])]
    layers += [
        {"class_name": layer["class_name"], "config": {**layer["config"], "name": layer["name"]}}
        for layer in model["layers"]
    ]
    return {
        "class_name": "Sequential",
        "config": {"name": model.get("name", "sequential"), "layers": layers},
    }


def functional_json(model: dict[str, Any]) -> dict[str, Any]:
    """The normalized model as `keras.Model.to_json()` writes a Functional model."""
    layers: list[dict[str, Any]] = [
        {**_input_layer(given), "name": given["name"], "inbound_nodes": []}
        for given in model["inputs"]
    ]
    for layer in model["layers"]:
        tensors = [_tensor(source) for source in layer["inbound"]]
        layers.append(
            {
                "class_name": layer["class_name"],
                "name": layer["name"],
                "config": {**layer["config"], "name": layer["name"]},
                "inbound_nodes": [
                    {"args": [tensors if len(tensors) > 1 else tensors[0]], "kwargs": {}}
                ],
            }
        )
    return {
        "class_name": "Functional",
        "config": {
            "name": model.get("name", "model"),
            "layers": layers,
            "input_layers": [[given["name"], 0, 0] for given in model["inputs"]],
            "output_layers": [[name, 0, 0] for name in model["outputs"]],
        },
    }


def _input_layer(given: dict[str, Any]) -> dict[str, Any]:
    config = {
        "name": given["name"],
        "batch_shape": [None, *given["shape"]],
        "dtype": given["dtype"],
    }
    return {"class_name": "InputLayer", "config": config}


def _tensor(source: str) -> dict[str, Any]:
    return {"class_name": "__keras_tensor__", "config": {"keras_history": [source, 0, 0]}}


def _data_request(data: dict[str, Any]) -> dict[str, Any]:
    """`data` as a request spells it: one-hot counts and input steps under `preprocess`."""
    request = {
        key: value
        for key, value in data.items()
        if key not in ("one_hot", "preprocess") and value is not None
    }
    steps = {
        name: {
            key: value for key, value in step.items() if key != "raw_shape" and value is not None
        }
        for name, step in (data.get("preprocess") or {}).get("x", {}).items()
    }
    targets = {name: {"one_hot": count} for name, count in (data.get("one_hot") or {}).items()}
    preprocess = {"x": steps} if steps else {}
    if targets:
        preprocess["y"] = targets
    if preprocess:
        request["preprocess"] = preprocess
    return request
