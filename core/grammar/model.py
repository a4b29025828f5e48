"""The `model` section: the short Sequential form and Keras's own `to_json()`, into one graph.

Both forms become the normalized model of DESIGN.md: named inputs, layers in topological order
each with its allowlisted config and inbound names, and output names. Nothing here imports Keras:
user JSON is read by our tables only.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypeGuard

from core.errors import show
from core.grammar.allowlist import (
    INPUT_DTYPE,
    LAYER_NAME,
    LAYERS,
    MERGE_LAYERS,
    REFUSED_LAYERS,
)
from core.grammar.kinds import (
    INVALID,
    Integer,
    ListOf,
    Nullable,
    Place,
    Shape,
    check_arguments,
    check_class_name,
)

INPUT_SHAPE = Shape(variable=True)
BATCH_SHAPE = ListOf(Nullable(Integer(1, 1 << 24)), 2, 9, "[null, ...the shape]")
SHORT_KEYS = ("input_shape", "input_dtype", "layers")
ENTRY_KEYS = ("module", "class_name", "config", "registered_name", "build_config")
FUNCTIONAL_ENTRY_KEYS = (*ENTRY_KEYS, "name", "inbound_nodes")
TOP_KEYS = ("module", "class_name", "config", "registered_name", "build_config", "compile_config")
SEQUENTIAL_KEYS = ("name", "trainable", "dtype", "layers", "build_input_shape")
FUNCTIONAL_KEYS = ("name", "trainable", "layers", "input_layers", "output_layers")
# What Keras writes for a layer's call beyond its inputs: both are recomputed when we build.
CALL_KWARGS = ("training", "mask")


@dataclasses.dataclass
class ParsedModel:
    """The normalized model, where each layer came from (for later errors), and Keras's
    `compile_config` when the model carried one."""

    model: dict[str, Any]
    paths: dict[str, str]
    compile_config: Any = None
    compile_path: str = ""


def snake_case(class_name: str) -> str:
    """Keras's own naming rule (`BatchNormalization` -> `batch_normalization`), without Keras."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def parse_model(value: Any, place: Place, max_layers: int) -> ParsedModel | None:
    """Read either form of `model`; None after recording every error found."""
    if isinstance(value, dict) and "class_name" in value:
        return _parse_keras(value, place, max_layers)
    if isinstance(value, dict) and "layers" in value:
        return _parse_short(value, place, max_layers)
    place.refuse(
        value,
        'the short form {"input_shape", "layers"} or the output of model.to_json() '
        '(class_name "Sequential" or "Functional")',
    )
    return None


def _check_layer_count(layers: Any, place: Place, max_layers: int) -> TypeGuard[list[Any]]:
    """The count is checked before any layer is read, so 10,000 layers cost nothing."""
    if not isinstance(layers, list) or not layers:
        place.refuse(layers if not isinstance(layers, list) else [], "a non-empty list of layers")
        return False
    if len(layers) > max_layers:
        place.refuse(
            f"{len(layers)} layers",
            f"at most {max_layers} layers",
            f"The model has {len(layers)} layers, more than the cap of {max_layers}. "
            f"Expected at most {max_layers} layers.",
        )
        return False
    return True


def _check_keys(obj: dict[str, Any], allowed: tuple[str, ...], place: Place) -> bool:
    unknown = [key for key in obj if key not in allowed]
    for key in unknown:
        place.refuse_key(key, list(allowed), "key")
    return not unknown


@dataclasses.dataclass
class _Layer:
    """A layer entry read on its own: no names assigned, no links checked yet."""

    class_name: str
    config: dict[str, Any]
    name: str | None
    path: str
    input_shape: list[Any] | None = None

    @property
    def assigned_name(self) -> str:
        """The name, once `_assign_names` gave one or the Functional reader (which requires one)
        read it."""
        if self.name is None:
            raise RuntimeError(f"The layer at {self.path} was used before it was named.")
        return self.name


def _read_entry(entry: Any, place: Place, index: int, keys: tuple[str, ...]) -> _Layer | None:
    """One `{class_name, config, ...}` layer object, checked against the allowlist."""
    if not isinstance(entry, dict):
        place.refuse(entry, 'a layer object {"class_name", "config"}')
        return None
    label = entry.get("class_name") if isinstance(entry.get("class_name"), str) else "?"
    place = place.inside(f"Layer {index + 1} ({label!r})")
    keys_ok = _check_keys(entry, keys, place)
    class_name = check_class_name(entry, place, "layer", list(LAYERS), REFUSED_LAYERS)
    if class_name is None:
        return None
    raw = entry.get("config")
    if raw is None:
        raw = {}
    at_config = place.at("config").inside(place.owner)
    if not isinstance(raw, dict):
        at_config.refuse(raw, "an object of arguments")
        return None
    raw = dict(raw)
    input_shape = _pop_input_shape(raw, at_config, class_name)
    config = check_arguments(raw, LAYERS[class_name], at_config)
    name = _layer_name(entry, raw, place)
    if config is INVALID or input_shape is INVALID or name is INVALID or not keys_ok:
        return None
    return _Layer(class_name, config, name, place.path, input_shape)


def _pop_input_shape(raw: dict[str, Any], place: Place, class_name: str) -> Any:
    """`Dense(32, input_shape=(784,))`: Keras 2's way of naming the input, still accepted."""
    if class_name == "InputLayer":
        return None
    if "batch_input_shape" in raw:
        batch = BATCH_SHAPE.check(raw.pop("batch_input_shape"), place.at("batch_input_shape"))
        return INVALID if batch is INVALID else batch[1:]
    if "input_shape" in raw:
        return INPUT_SHAPE.check(raw.pop("input_shape"), place.at("input_shape"))
    return None


def _layer_name(entry: dict[str, Any], config: dict[str, Any], place: Place) -> Any:
    """The name on the entry (Functional writes it there) or in the config, if any.

    A name in the config is checked with the config; one on the entry alone is checked here.
    """
    inner = config.get("name")
    outer = entry.get("name", inner)
    if inner is not None and outer != inner:
        return place.at("name").refuse(outer, f"the same name as config.name ({show(inner)})")
    if outer is None or inner is not None:
        return outer
    return LAYER_NAME.check(outer, place.at("name"))


def _read_input(layer: _Layer, place: Place) -> dict[str, Any] | None:
    """An InputLayer's name, shape (batch axis dropped) and dtype."""
    config = layer.config
    shape = config.get("shape")
    if "batch_shape" in config:
        shape = config["batch_shape"][1:]
    if shape is None:
        place.at("config").refuse(config, "an InputLayer with shape or batch_shape")
        return None
    if INPUT_SHAPE.check(shape, place.at("config").at("shape")) is INVALID:
        return None
    return {"name": layer.name, "shape": shape, "dtype": config.get("dtype", "float32")}


def _assign_names(layers: list[_Layer], inputs: list[dict[str, Any]], place: Place) -> bool:
    """Every layer gets a name: its own, else Keras's scheme counted within this model only."""
    taken = {given["name"] for given in inputs}
    for layer in layers:
        if layer.name is None:
            continue
        if layer.name in taken:
            Place(place.errors, f"{layer.path}/config/name", "The model").refuse(
                layer.name,
                "a name no other layer or input has",
                f"Two layers are named {layer.name!r}.",
            )
            return False
        taken.add(layer.name)
    for layer in layers:
        if layer.name is None:
            base = snake_case(layer.class_name)
            layer.name, count = base, 0
            while layer.name in taken:
                count += 1
                layer.name = f"{base}_{count}"
            taken.add(layer.name)
    return True


def _parse_short(value: dict[str, Any], place: Place, max_layers: int) -> ParsedModel | None:
    """`{"input_shape": [...], "layers": [...]}`; also the layer list of a Sequential to_json."""
    keys_ok = _check_keys(value, SHORT_KEYS, place.inside("The model"))
    layers = value["layers"]
    if not _check_layer_count(layers, place.at("layers"), max_layers):
        return None
    top_shape = None
    if "input_shape" in value:
        top_shape = INPUT_SHAPE.check(value["input_shape"], place.at("input_shape"))
    dtype = INPUT_DTYPE.check(value.get("input_dtype", "float32"), place.at("input_dtype"))
    parsed = _sequential(layers, place.at("layers"), top_shape, dtype, output_name="output")
    if parsed is None or not keys_ok or top_shape is INVALID or dtype is INVALID:
        return None
    parsed.model |= {"class_name": "Sequential", "name": "sequential"}
    return parsed


def _sequential(
    entries: list[Any], place: Place, shape: Any, dtype: str, output_name: str | None
) -> ParsedModel | None:
    """A chain of layers, the first input from `shape`, an InputLayer, or `input_shape`."""
    read = [_read_entry(e, place.at(i), i, ENTRY_KEYS) for i, e in enumerate(entries)]
    if any(layer is None for layer in read):
        return None
    layers: list[_Layer] = [layer for layer in read if layer is not None]
    inputs = []
    given_ways = [shape is not None, layers[0].input_shape is not None]
    given_ways.append(layers[0].class_name == "InputLayer")
    if sum(given_ways) > 1:
        place.refuse(
            None,
            "one of: input_shape at the top, input_shape in the first layer, an InputLayer",
            "The model gives its input shape more than once. Expected one of: input_shape at "
            "the top, input_shape in the first layer's config, an InputLayer first.",
        )
        return None
    if layers[0].class_name == "InputLayer":
        first = layers.pop(0)
        found = _read_input(first, place.at(0))
        if found is None:
            return None
        found["name"] = found["name"] or "input"
        inputs.append(found)
    elif shape is not None or layers[0].input_shape is not None:
        given = shape if shape is not None else layers[0].input_shape
        inputs.append({"name": "input", "shape": given, "dtype": dtype})
    else:
        place.refuse(
            None,
            "input_shape at the top of the model, in the first layer's config, or an InputLayer",
            "The model does not say its input shape. Expected input_shape at the top of the "
            "model, in the first layer's config, or an InputLayer first.",
        )
        return None
    for layer in layers:
        if layer.class_name == "InputLayer" or (layer is not layers[0] and layer.input_shape):
            Place(place.errors, layer.path, f"Layer ({layer.class_name!r})").refuse(
                layer.class_name,
                "input_shape or an InputLayer on the first layer only",
                f"Only the first layer may set the input ({layer.class_name} at {layer.path}).",
            )
            return None
    if not layers:
        place.refuse(entries, "at least one layer after the input")
        return None
    if output_name and layers[-1].name is None:
        layers[-1].name = output_name
    if not _assign_names(layers, inputs, place):
        return None
    previous = inputs[0]["name"]
    normalized = []
    for layer in layers:
        if layer.class_name in MERGE_LAYERS:
            Place(place.errors, layer.path, f"Layer {layer.name!r}").refuse(
                layer.class_name,
                "a Functional model for merge layers",
                f"{layer.class_name} merges several inputs; a Sequential model has one. "
                "Expected a Functional model (to_json of keras.Model).",
            )
            return None
        normalized.append(_normalized(layer, [previous]))
        previous = layer.assigned_name
    model = {"inputs": inputs, "layers": normalized, "outputs": [previous]}
    return ParsedModel(model, {layer.assigned_name: layer.path for layer in layers})


def _normalized(layer: _Layer, inbound: list[str]) -> dict[str, Any]:
    return {
        "name": layer.assigned_name,
        "class_name": layer.class_name,
        "config": layer.config,
        "inbound": inbound,
    }


def _parse_keras(value: dict[str, Any], place: Place, max_layers: int) -> ParsedModel | None:
    """The exact output of `model.to_json()` for a Sequential or Functional model."""
    top = place.inside("The model")
    keys_ok = _check_keys(value, TOP_KEYS, top)
    class_name = value.get("class_name")
    # Keras writes registered_name "Functional" for a Functional model; that exact value only.
    registered = ("Functional",) if class_name == "Functional" else ()
    kind = check_class_name(
        value, top, "model", ["Sequential", "Functional"], REFUSED_LAYERS, registered
    )
    config = value.get("config")
    if kind is None:
        return None
    if not isinstance(config, dict):
        place.at("config").refuse(config, "an object with layers")
        return None
    if kind == "Sequential":
        parsed = _parse_sequential_config(config, place.at("config"), max_layers)
    else:
        parsed = _parse_functional(config, place.at("config"), max_layers)
    name = _model_name(config, kind, place.at("config").at("name"))
    if parsed is None or not keys_ok or name is INVALID:
        return None
    parsed.model |= {"class_name": kind, "name": name}
    if value.get("compile_config"):
        parsed.compile_config = value["compile_config"]
        parsed.compile_path = place.at("compile_config").path
    return parsed


def _model_name(config: dict[str, Any], kind: str, place: Place) -> Any:
    """The model's own name, kept so a downloaded model is named as the one sent; Keras's
    default for its class when the config has none."""
    name = config.get("name")
    return snake_case(kind) if name is None else LAYER_NAME.check(name, place)


def _parse_sequential_config(
    config: dict[str, Any], place: Place, max_layers: int
) -> ParsedModel | None:
    keys_ok = _check_keys(config, SEQUENTIAL_KEYS, place.inside("The Sequential model"))
    layers = config.get("layers")
    if not _check_layer_count(layers, place.at("layers"), max_layers):
        return None
    shape = None
    # Keras writes build_input_shape beside the InputLayer; it says the same thing.
    first = layers[0] if isinstance(layers[0], dict) else {}
    if first.get("class_name") != "InputLayer" and isinstance(
        config.get("build_input_shape"), list
    ):
        shape = BATCH_SHAPE.check(config["build_input_shape"], place.at("build_input_shape"))
        shape = None if shape is INVALID else shape[1:]
    parsed = _sequential(layers, place.at("layers"), shape, "float32", output_name=None)
    return parsed if keys_ok else None


def _parse_functional(config: dict[str, Any], place: Place, max_layers: int) -> ParsedModel | None:
    keys_ok = _check_keys(config, FUNCTIONAL_KEYS, place.inside("The Functional model"))
    entries = config.get("layers")
    if not _check_layer_count(entries, place.at("layers"), max_layers):
        return None
    inputs: list[dict[str, Any]] = []
    layers: list[tuple[_Layer, list[str]]] = []
    ok = keys_ok
    for index, entry in enumerate(entries):
        at = place.at("layers").at(index)
        if _is_mask_op(entry):
            continue
        layer = _read_entry(entry, at, index, FUNCTIONAL_ENTRY_KEYS)
        if layer is None:
            ok = False
            continue
        if layer.name is None:
            at.at("name").refuse(None, "the layer's name, as to_json writes it")
            ok = False
            continue
        if layer.class_name == "InputLayer":
            found = _read_input(layer, at)
            ok = ok and found is not None
            if found:
                found["path"] = at.path
                inputs.append(found)
            continue
        inbound = _read_inbound(entry.get("inbound_nodes"), at.at("inbound_nodes"), layer)
        if inbound is None:
            ok = False
            continue
        layers.append((layer, inbound))
    if not ok:
        return None
    return _link(config, place, inputs, layers)


def _is_mask_op(entry: Any) -> bool:
    """The `NotEqual` op Keras records for `mask_zero`: masks are recomputed when we build.

    Skipping it is safe: a layer that reads it as an input is then refused as unlinked.
    """
    return (
        isinstance(entry, dict)
        and entry.get("class_name") == "NotEqual"
        and isinstance(entry.get("module"), str)
        and entry["module"].startswith("keras.")
    )


def _read_inbound(nodes: Any, place: Place, layer: _Layer) -> list[str] | None:
    """The names of the layers one call takes, from Keras's `inbound_nodes`."""
    spot = Place(place.errors, place.path, f"Layer {layer.name!r}", "inbound_nodes")
    if not isinstance(nodes, list) or len(nodes) != 1 or not isinstance(nodes[0], dict):
        spot.refuse(
            nodes,
            "exactly one call of the layer (shared layers are not accepted)",
        )
        return None
    node = nodes[0]
    args, kwargs = node.get("args"), node.get("kwargs") or {}
    if set(node) - {"args", "kwargs"} or not isinstance(args, list) or len(args) != 1:
        spot.at(0).refuse(node, '{"args": [input tensor or list of tensors], "kwargs": {}}')
        return None
    if not isinstance(kwargs, dict) or set(kwargs) - set(CALL_KWARGS):
        spot.at(0).at("kwargs").refuse(kwargs, "only training and mask, as Keras writes them")
        return None
    tensors = args[0] if isinstance(args[0], list) else [args[0]]
    names = [_tensor_source(t) for t in tensors]
    if not tensors or any(name is None for name in names):
        spot.at(0).at("args").refuse(args, "Keras tensors from the first output of a layer")
        return None
    return [name for name in names if name is not None]


def _tensor_source(tensor: Any) -> str | None:
    """`{"class_name": "__keras_tensor__", "config": {"keras_history": [name, 0, 0]}}`."""
    if not isinstance(tensor, dict) or tensor.get("class_name") != "__keras_tensor__":
        return None
    config = tensor.get("config")
    history = config.get("keras_history") if isinstance(config, dict) else None
    if isinstance(history, list) and len(history) == 3 and history[1:] == [0, 0]:
        return history[0] if isinstance(history[0], str) else None
    return None


def _history_names(value: Any) -> list[str] | None:
    """`input_layers`/`output_layers`: one `[name, 0, 0]`, a list of them, or a dict of them."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or not value:
        return None
    names = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            return None
        if item[1:] != [0, 0]:
            return None
        names.append(item[0])
    return names


def _link(
    config: dict[str, Any],
    place: Place,
    inputs: list[dict[str, Any]],
    layers: list[tuple[_Layer, list[str]]],
) -> ParsedModel | None:
    """Check every inbound name is an earlier layer or input, and read inputs and outputs."""
    by_name: dict[str, Any] = {}
    for given in inputs:
        if given["name"] in by_name:
            Place(place.errors, given["path"], "The model").at("config").at("name").refuse(
                given["name"],
                "a name no other layer or input has",
                f"Two InputLayers are named {given['name']!r}.",
            )
            return None
        by_name[given["name"]] = given
    for layer, _ in layers:
        if layer.name in by_name:
            Place(place.errors, layer.path, "The model").at("name").refuse(
                layer.name,
                "a name no other layer or input has",
                f"Two layers are named {layer.name!r}.",
            )
            return None
        by_name[layer.assigned_name] = layer
    seen = {i["name"] for i in inputs}
    normalized = []
    for layer, inbound in layers:
        for source in inbound:
            if source not in seen:
                Place(place.errors, layer.path, f"Layer {layer.name!r}").at("inbound_nodes").refuse(
                    source, "the name of an input or an earlier layer: " + ", ".join(sorted(seen))
                )
                return None
        seen.add(layer.name)
        normalized.append(_normalized(layer, inbound))
    order = _history_names(config.get("input_layers"))
    if order is None or sorted(order) != sorted(i["name"] for i in inputs):
        place.at("input_layers").refuse(
            config.get("input_layers"), "[name, 0, 0] for each InputLayer of the model"
        )
        return None
    outputs = _history_names(config.get("output_layers"))
    # An output listed twice has one name for two targets: Keras's loss then finds neither.
    if (
        outputs is None
        or len(set(outputs)) != len(outputs)
        or not all(o in seen and o not in order for o in outputs)
    ):
        place.at("output_layers").refuse(
            config.get("output_layers"), "[name, 0, 0] of layers of the model, each at most once"
        )
        return None
    output_keys = config["output_layers"]
    if isinstance(output_keys, dict) and list(output_keys) != outputs:
        place.at("output_layers").refuse(
            list(output_keys),
            "output names equal to the names of their layers: " + ", ".join(outputs),
        )
        return None
    ordered_inputs = [{k: v for k, v in by_name[n].items() if k != "path"} for n in order]
    model = {"inputs": ordered_inputs, "layers": normalized, "outputs": outputs}
    return ParsedModel(model, {layer.assigned_name: layer.path for layer, _ in layers})
