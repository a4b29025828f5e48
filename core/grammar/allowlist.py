"""The allowlist, written down: every layer, optimizer, loss, metric and callback a request may
name, with each argument's kind of value.

These tables are the grammar. The parsers in this package read them, `core.grammar.schema` turns
them into a JSON Schema, and the tests check every argument name against the pinned Keras's
constructors. Nothing here is read from Keras at run time: what Keras grows is not accepted until
it is written down here.
"""

from __future__ import annotations

from core.grammar.kinds import (
    FLOAT32_MAX,
    Axes,
    Boolean,
    Catalog,
    Choice,
    Dropped,
    Either,
    Integer,
    IntTuple,
    Kind,
    ListOf,
    Nullable,
    Number,
    Padding,
    Required,
    Shape,
    Text,
    TextMap,
)

# Per-layer caps: a single argument may not ask for more than these (the total parameter cap
# comes later, in shape inference).
MAX_UNITS = 100_000
MAX_FILTERS = 16_384
MAX_KERNEL = 1024
MAX_VOCABULARY = 10_000_000
MAX_REPEAT = 100_000

SEED = Nullable(Integer(0, 2**32 - 1))
PRIORITY = Integer(0, 9)
# Keras makes float32 constants of the numbers it is given (initializers, regularizers, layer
# and optimizer arguments): past float32's range it raises or overflows to inf while building
# or at the first step, so every number here stays within float32.
FLOAT32 = Number(-FLOAT32_MAX, FLOAT32_MAX)
POSITIVE32 = Number(0, FLOAT32_MAX, low_open=True)
FLOAT = FLOAT32
NON_NEGATIVE = Number(0, FLOAT32_MAX)
POSITIVE = POSITIVE32
RATE = Number(0, 1, high_open=True)
FRACTION = Number(0, 1)
BOOL = Boolean()
NULL_ONLY = Choice((None,))

ACTIVATION_NAMES = (
    "celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu",
    "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish",
    "relu", "relu6", "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus", "softsign",
    "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus", "swish", "tanh", "tanh_shrink",
    "threshold",
)  # fmt: skip
ACTIVATION = Nullable(Catalog("activation", ACTIVATION_NAMES, {}))

_FAN_AXES = {"seed": SEED, "input_axes": NULL_ONLY, "output_axes": NULL_ONLY}
_NORMAL = {"mean": FLOAT32, "stddev": POSITIVE32, "seed": SEED}
INITIALIZER_CLASSES: dict[str, dict[str, Kind]] = {
    "HeNormal": _FAN_AXES,
    "HeUniform": _FAN_AXES,
    "GlorotNormal": _FAN_AXES,
    "GlorotUniform": _FAN_AXES,
    "LecunNormal": _FAN_AXES,
    "LecunUniform": _FAN_AXES,
    "RandomNormal": _NORMAL,
    "TruncatedNormal": _NORMAL,
    "RandomUniform": {"minval": FLOAT32, "maxval": FLOAT32, "seed": SEED},
    "Zeros": {},
    "Ones": {},
    "Constant": {"value": FLOAT32},
    "Orthogonal": {"gain": POSITIVE32, "seed": SEED},
    "Identity": {"gain": POSITIVE32},
    "VarianceScaling": {
        "scale": POSITIVE32,
        "mode": Choice(("fan_in", "fan_out", "fan_avg")),
        "distribution": Choice(("truncated_normal", "untruncated_normal", "uniform")),
        **_FAN_AXES,
    },
}
INITIALIZER_NAMES = (
    "he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "lecun_normal",
    "lecun_uniform", "random_normal", "random_uniform", "truncated_normal", "zeros", "ones",
    "orthogonal", "identity", "variance_scaling",
)  # fmt: skip
INITIALIZER = Catalog("initializer", INITIALIZER_NAMES, INITIALIZER_CLASSES)


def _initializer_without(*classes: str) -> Catalog:
    names = {"Orthogonal": "orthogonal", "Identity": "identity"}
    refused = {names[name] for name in classes}
    return Catalog(
        "initializer",
        tuple(name for name in INITIALIZER_NAMES if name not in refused),
        {name: args for name, args in INITIALIZER_CLASSES.items() if name not in classes},
    )


# Orthogonal needs a weight of two or more axes and Identity exactly two (Keras raises when the
# layer builds): vectors (biases, normalization and PReLU weights) take neither, convolution
# kernels (three axes or more) no Identity.
VECTOR_INITIALIZER = _initializer_without("Orthogonal", "Identity")
CONV_INITIALIZER = _initializer_without("Identity")
VECTOR_WEIGHTS = frozenset({"bias", "beta", "gamma", "alpha"})

FACTOR = Number(0, FLOAT32_MAX)
REGULARIZER_CLASSES: dict[str, dict[str, Kind]] = {
    "L1": {"l1": FACTOR},
    "L2": {"l2": FACTOR},
    "L1L2": {"l1": FACTOR, "l2": FACTOR},
    "OrthogonalRegularizer": {"factor": FACTOR, "mode": Choice(("rows", "columns"))},
}
REGULARIZER = Nullable(
    Catalog("regularizer", ("l1", "l2", "orthogonal_regularizer"), REGULARIZER_CLASSES)
)

_CONSTRAINT_AXIS = Axes()
CONSTRAINT_CLASSES: dict[str, dict[str, Kind]] = {
    "MaxNorm": {"max_value": POSITIVE, "axis": _CONSTRAINT_AXIS},
    "MinMaxNorm": {
        "min_value": NON_NEGATIVE,
        "max_value": NON_NEGATIVE,
        "rate": FRACTION,
        "axis": _CONSTRAINT_AXIS,
    },
    "NonNeg": {},
    "UnitNorm": {"axis": _CONSTRAINT_AXIS},
}
CONSTRAINT = Nullable(
    Catalog("constraint", ("max_norm", "min_max_norm", "non_neg", "unit_norm"), CONSTRAINT_CLASSES)
)

DTYPES = ("float32", "float16", "bfloat16", "float64", "int32", "int64", "uint8", "bool")
INPUT_DTYPE = Choice(DTYPES)
# A layer's dtype policy is checked and dropped: precision is the job's `resources` choice.
DTYPE_POLICY = Either(
    (
        Choice(("float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16", "float64")),
        Catalog(
            "dtype policy",
            (),
            {
                "DTypePolicy": {
                    "name": Choice(
                        ("float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16")
                    )
                }
            },
        ),
    ),
    "a dtype policy name (float32, float16, bfloat16, mixed_float16, mixed_bfloat16) or "
    '{"class_name": "DTypePolicy", "config": {"name": ...}}',
)

LAYER_NAME = Text(
    r"[A-Za-z_][A-Za-z0-9_.-]{0,99}", "a name of 1 to 100 letters, digits, '_', '.', '-'"
)

# Arguments every layer accepts: `name` moves out of the config, `dtype` is dropped.
COMMON: dict[str, Kind] = {
    "name": Dropped(LAYER_NAME),
    "trainable": BOOL,
    "dtype": Dropped(Nullable(DTYPE_POLICY)),
}
DATA_FORMAT = Choice(("channels_last", "channels_first"))
PADDING = Choice(("valid", "same"))
UNITS = Required(Integer(1, MAX_UNITS))


def _weights(
    *prefixes: str, activity: bool = True, kernels: Catalog = INITIALIZER
) -> dict[str, Kind]:
    """Initializer, regularizer and constraint arguments for each named weight."""
    out: dict[str, Kind] = {}
    for prefix in prefixes:
        out[f"{prefix}_initializer"] = VECTOR_INITIALIZER if prefix in VECTOR_WEIGHTS else kernels
        out[f"{prefix}_regularizer"] = REGULARIZER
        out[f"{prefix}_constraint"] = CONSTRAINT
    if activity:
        out["activity_regularizer"] = REGULARIZER
    return out


def _conv(rank: int, *, filters: bool = True, groups: bool = True) -> dict[str, Kind]:
    out: dict[str, Kind] = {
        "kernel_size": Required(IntTuple(rank, 1, MAX_KERNEL)),
        "strides": IntTuple(rank, 1, MAX_KERNEL),
        "padding": PADDING,
        "data_format": Nullable(DATA_FORMAT),
        "dilation_rate": IntTuple(rank, 1, MAX_KERNEL),
        "activation": ACTIVATION,
        "use_bias": BOOL,
    }
    if filters:
        out["filters"] = Required(Integer(1, MAX_FILTERS))
    if groups:
        out["groups"] = Integer(1, MAX_FILTERS)
    return out


def _pool(rank: int, *, required: bool = False) -> dict[str, Kind]:
    size = IntTuple(rank, 1, MAX_KERNEL)
    return {
        "pool_size": Required(size) if required else size,
        "strides": Nullable(IntTuple(rank, 1, MAX_KERNEL)),
        "padding": PADDING,
        "data_format": Nullable(DATA_FORMAT),
    }


_GLOBAL_POOL = {"data_format": Nullable(DATA_FORMAT), "keepdims": BOOL}
_RNN_BASE: dict[str, Kind] = {
    "units": UNITS,
    "activation": ACTIVATION,
    "use_bias": BOOL,
    **_weights("kernel", "recurrent", "bias"),
    "dropout": RATE,
    "recurrent_dropout": RATE,
    "seed": SEED,
    "return_sequences": BOOL,
    "go_backwards": BOOL,
    "unroll": BOOL,
    "zero_output_for_mask": BOOL,
    # Written by the serializer; only their defaults are accepted (one output, no carried state).
    "return_state": Choice((False,)),
    "stateful": Choice((False,)),
}
# `use_cudnn: true` fails on a worker without a GPU, and on a GPU wherever cuDNN's own limits
# (activations, masks, dropout) are not met; "auto" uses it where it can.
_CUDNN = Choice(("auto", False))
RNN_LAYERS: dict[str, dict[str, Kind]] = {
    "LSTM": {
        **_RNN_BASE,
        "recurrent_activation": ACTIVATION,
        "unit_forget_bias": BOOL,
        "use_cudnn": _CUDNN,
    },
    "GRU": {
        **_RNN_BASE,
        "recurrent_activation": ACTIVATION,
        "reset_after": BOOL,
        "use_cudnn": _CUDNN,
    },
    "SimpleRNN": dict(_RNN_BASE),
}
# Bidirectional wraps an RNN given as a nested object; its name and dtype are dropped like a
# layer's.
RNN_LAYER = Catalog(
    "recurrent layer",
    (),
    {name: {**COMMON, **arguments} for name, arguments in RNN_LAYERS.items()},
    object_keys=("module", "class_name", "config", "registered_name", "build_config"),
)

# A per-feature list has one value per entry of the axis it applies to; shapes check its length.
MAX_FEATURES = 1 << 16
SCALES = Either(
    (FLOAT32, ListOf(FLOAT32, 1, MAX_FEATURES)),
    "a number, or a list of one number per feature (the input's last axis)",
)


def _statistic(item: Kind, what: str) -> Either:
    """Normalization's `mean` or `variance`: its constructor argument, never adapted."""
    return Either(
        (item, ListOf(item, 1, MAX_FEATURES)),
        f"the {what}: a number, or a list of one per feature (an adapted Normalization keeps "
        "its statistics in weights, not in its config: give them here, or set "
        "data.preprocess.x.normalize to true and the worker computes them)",
    )


def _factor(bound: Number) -> Either:
    """An augmentation's range: one number (-f to f) or a list [low, high]."""
    return Either(
        (bound, ListOf(bound, 2, 2)), f"{bound.expected}, or a list [low, high] of such numbers"
    )


_FILLING: dict[str, Kind] = {
    "fill_mode": Choice(("reflect", "wrap", "constant", "nearest")),
    "interpolation": Choice(("nearest", "bilinear")),
    "seed": SEED,
    "fill_value": FLOAT32,
    "data_format": Nullable(DATA_FORMAT),
}
AUGMENTATION_LAYERS = frozenset({"RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast"})

LAYERS: dict[str, dict[str, Kind]] = {
    "InputLayer": {
        "shape": Shape(variable=True),
        "batch_shape": ListOf(Nullable(Integer(1, 1 << 24)), 2, 9, "[null, ...the shape]"),
        "batch_size": NULL_ONLY,
        "dtype": INPUT_DTYPE,
        "sparse": Choice((False,)),
        "ragged": Choice((False,)),
        "optional": Choice((False,)),
        "name": Dropped(LAYER_NAME),
    },
    "Dense": {
        "units": UNITS,
        "activation": ACTIVATION,
        "use_bias": BOOL,
        **_weights("kernel", "bias"),
        "quantization_config": Dropped(NULL_ONLY),
    },
    "Activation": {"activation": Required(ACTIVATION)},
    "Dropout": {
        "rate": Required(RATE),
        "noise_shape": Nullable(Shape(variable=True)),
        "seed": SEED,
    },
    # Spatial dropouts take no `trainable` (they have no weights): read from to_json, dropped.
    "SpatialDropout1D": {"rate": Required(RATE), "seed": SEED, "trainable": Dropped(BOOL)},
    "SpatialDropout2D": {
        "rate": Required(RATE),
        "seed": SEED,
        "data_format": Nullable(DATA_FORMAT),
        "trainable": Dropped(BOOL),
    },
    # Keras's own range for the noise's standard deviation.
    "GaussianNoise": {"stddev": Required(FRACTION), "seed": SEED},
    "Flatten": {"data_format": Nullable(DATA_FORMAT)},
    "Reshape": {"target_shape": Required(Shape(allow_minus_one=True))},
    "Permute": {"dims": Required(ListOf(Integer(1, 8), 1, 8, "a list of axes from 1 to 8"))},
    "RepeatVector": {"n": Required(Integer(1, MAX_REPEAT))},
    "ZeroPadding1D": {"padding": Padding(1), "data_format": Nullable(DATA_FORMAT)},
    "ZeroPadding2D": {"padding": Padding(2), "data_format": Nullable(DATA_FORMAT)},
    "Cropping1D": {"cropping": Padding(1)},
    "Cropping2D": {"cropping": Padding(2), "data_format": Nullable(DATA_FORMAT)},
    "UpSampling1D": {"size": Integer(1, MAX_KERNEL)},
    "UpSampling2D": {
        "size": IntTuple(2, 1, MAX_KERNEL),
        "data_format": Nullable(DATA_FORMAT),
        "interpolation": Choice(("nearest", "bilinear", "bicubic", "lanczos3", "lanczos5", "area")),
    },
    "Conv1D": {
        **_conv(1),
        "padding": Choice(("valid", "same", "causal")),
        **_weights("kernel", "bias", kernels=CONV_INITIALIZER),
    },
    "Conv2D": {**_conv(2), **_weights("kernel", "bias", kernels=CONV_INITIALIZER)},
    "Conv3D": {**_conv(3), **_weights("kernel", "bias", kernels=CONV_INITIALIZER)},
    "Conv2DTranspose": {
        **_conv(2, groups=False),
        # TensorFlow's CPU kernel refuses a dilation above 1 ("Current CPU implementations do
        # not yet support dilation rates larger than 1"), and a job may train on a CPU.
        "dilation_rate": IntTuple(2, 1, 1),
        "output_padding": Nullable(IntTuple(2, 0, MAX_KERNEL)),
        **_weights("kernel", "bias", kernels=CONV_INITIALIZER),
    },
    "SeparableConv2D": {
        **_conv(2, groups=False),
        "depth_multiplier": Integer(1, MAX_FILTERS),
        **_weights("depthwise", "pointwise", "bias", kernels=CONV_INITIALIZER),
    },
    "DepthwiseConv2D": {
        **_conv(2, filters=False, groups=False),
        "depth_multiplier": Integer(1, MAX_FILTERS),
        **_weights("depthwise", "bias", kernels=CONV_INITIALIZER),
    },
    "MaxPooling1D": _pool(1),
    "MaxPooling2D": _pool(2),
    "MaxPooling3D": _pool(3),
    "AveragePooling1D": _pool(1, required=True),
    "AveragePooling2D": _pool(2, required=True),
    "AveragePooling3D": _pool(3, required=True),
    "GlobalAveragePooling1D": _GLOBAL_POOL,
    "GlobalAveragePooling2D": _GLOBAL_POOL,
    "GlobalMaxPooling1D": _GLOBAL_POOL,
    "GlobalMaxPooling2D": _GLOBAL_POOL,
    "BatchNormalization": {
        "axis": Axes(single_only=True),
        "momentum": FRACTION,
        "epsilon": POSITIVE,
        "center": BOOL,
        "scale": BOOL,
        **_weights("beta", "gamma", activity=False),
        "moving_mean_initializer": VECTOR_INITIALIZER,
        "moving_variance_initializer": VECTOR_INITIALIZER,
        "synchronized": BOOL,
        # Batch renormalization is not offered; the serializer writes its defaults.
        "renorm": Choice((False,)),
        "renorm_clipping": NULL_ONLY,
        "renorm_momentum": FRACTION,
    },
    "LayerNormalization": {
        "axis": Axes(),
        "epsilon": POSITIVE,
        "center": BOOL,
        "scale": BOOL,
        "rms_scaling": BOOL,
        **_weights("beta", "gamma", activity=False),
    },
    "ReLU": {
        "max_value": Nullable(NON_NEGATIVE),
        "negative_slope": NON_NEGATIVE,
        "threshold": NON_NEGATIVE,
    },
    "LeakyReLU": {"negative_slope": NON_NEGATIVE},
    "PReLU": {
        **_weights("alpha", activity=False),
        "shared_axes": Nullable(ListOf(Integer(1, 8), 1, 8, "a list of axes from 1 to 8")),
    },
    "ELU": {"alpha": FLOAT},
    "Softmax": {"axis": Axes()},
    "Embedding": {
        "input_dim": Required(Integer(1, MAX_VOCABULARY)),
        "output_dim": Required(Integer(1, MAX_UNITS)),
        **_weights("embeddings"),
        "mask_zero": BOOL,
        "quantization_config": Dropped(NULL_ONLY),
    },
    **RNN_LAYERS,
    "Bidirectional": {
        "layer": Required(RNN_LAYER),
        "backward_layer": Nullable(RNN_LAYER),
        "merge_mode": Nullable(Choice(("sum", "mul", "concat", "ave"))),
    },
    "Concatenate": {"axis": Axes(single_only=True)},
    "Add": {},
    "Multiply": {},
    "Average": {},
    "Subtract": {},
    "Rescaling": {"scale": Required(SCALES), "offset": SCALES},
    "Normalization": {
        "axis": Nullable(Axes()),
        "mean": Required(_statistic(FLOAT32, "mean")),
        "variance": Required(_statistic(NON_NEGATIVE, "variance")),
        "invert": BOOL,
    },
    # Image augmentation: active while training only, seeded like the rest of the job.
    "RandomFlip": {
        "mode": Choice(("horizontal", "vertical", "horizontal_and_vertical")),
        "seed": SEED,
        "data_format": Nullable(DATA_FORMAT),
    },
    "RandomRotation": {
        "factor": Required(_factor(Number(-1, 1))),
        **_FILLING,
    },
    "RandomZoom": {
        "height_factor": Required(_factor(Number(-1, 1, low_open=True))),
        "width_factor": Nullable(_factor(Number(-1, 1, low_open=True))),
        **_FILLING,
    },
    "RandomContrast": {
        "factor": Required(_factor(FRACTION)),
        "value_range": ListOf(FLOAT32, 2, 2, "a list [low, high] of the pixels' range"),
        "seed": SEED,
        "data_format": Nullable(DATA_FORMAT),
    },
}
for _name, _arguments in LAYERS.items():
    if _name != "InputLayer":
        LAYERS[_name] = {**COMMON, **_arguments}

MERGE_LAYERS = frozenset({"Concatenate", "Add", "Multiply", "Average", "Subtract"})

# Classes people reach for that are refused on purpose, with the reason they are told.
REFUSED_LAYERS = {
    "Lambda": "it runs arbitrary Python code (bytecode or a function reference)",
    "TFSMLayer": "it loads a SavedModel from a path on the server",
    "StringLookup": "it reads a vocabulary file from a path on the server",
    "IntegerLookup": "it reads a vocabulary file from a path on the server",
    "TextVectorization": "it reads vocabulary files from a path on the server",
    "Sequential": "nested models are not accepted; give the layers themselves",
    "Functional": "nested models are not accepted; give the layers themselves",
    "Model": "nested models are not accepted; give the layers themselves",
}

# --- compile -------------------------------------------------------------------------------

_STEPS = Integer(1, 100_000_000)
SCHEDULE_CLASSES: dict[str, dict[str, Kind]] = {
    "ExponentialDecay": {
        "initial_learning_rate": Required(POSITIVE),
        "decay_steps": Required(_STEPS),
        "decay_rate": Required(POSITIVE),
        "staircase": BOOL,
        "name": Dropped(Nullable(LAYER_NAME)),
    },
    "PiecewiseConstantDecay": {
        "boundaries": Required(ListOf(Integer(0, 100_000_000), 1, 1000)),
        "values": Required(ListOf(POSITIVE, 2, 1001)),
        "name": Dropped(Nullable(LAYER_NAME)),
    },
    "PolynomialDecay": {
        "initial_learning_rate": Required(POSITIVE),
        "decay_steps": Required(_STEPS),
        "end_learning_rate": NON_NEGATIVE,
        "power": POSITIVE,
        "cycle": BOOL,
        "name": Dropped(Nullable(LAYER_NAME)),
    },
    "InverseTimeDecay": {
        "initial_learning_rate": Required(POSITIVE),
        "decay_steps": Required(_STEPS),
        "decay_rate": Required(POSITIVE),
        "staircase": BOOL,
        "name": Dropped(Nullable(LAYER_NAME)),
    },
    "CosineDecay": {
        "initial_learning_rate": Required(NON_NEGATIVE),
        "decay_steps": Required(_STEPS),
        "alpha": FRACTION,
        "warmup_target": Nullable(POSITIVE),
        "warmup_steps": Integer(0, 100_000_000),
        "name": Dropped(Nullable(LAYER_NAME)),
    },
    "CosineDecayRestarts": {
        "initial_learning_rate": Required(POSITIVE),
        "first_decay_steps": Required(_STEPS),
        "t_mul": POSITIVE,
        "m_mul": POSITIVE,
        "alpha": FRACTION,
        "name": Dropped(Nullable(LAYER_NAME)),
    },
}
SCHEDULE = Catalog("learning-rate schedule", (), SCHEDULE_CLASSES)
LEARNING_RATE = Either(
    (POSITIVE, SCHEDULE),
    "a positive number or a learning-rate schedule {class_name, config} with class_name one of "
    + ", ".join(SCHEDULE_CLASSES),
)

_OPTIMIZER_BASE: dict[str, Kind] = {
    "name": Dropped(Nullable(LAYER_NAME)),
    "learning_rate": LEARNING_RATE,
    "weight_decay": Nullable(NON_NEGATIVE),
    "clipnorm": Nullable(POSITIVE),
    "clipvalue": Nullable(POSITIVE),
    "global_clipnorm": Nullable(POSITIVE),
    "use_ema": BOOL,
    "ema_momentum": FRACTION,
    "ema_overwrite_frequency": Nullable(Integer(1, 1_000_000)),
    "loss_scale_factor": Nullable(POSITIVE),
    # Keras accumulates over two steps or more (None: every step).
    "gradient_accumulation_steps": Nullable(Integer(2, 10_000)),
}
_BETAS = {"beta_1": RATE, "beta_2": RATE, "epsilon": POSITIVE}
OPTIMIZER_CLASSES: dict[str, dict[str, Kind]] = {
    "SGD": {"momentum": RATE, "nesterov": BOOL},
    "RMSprop": {"rho": RATE, "momentum": RATE, "epsilon": POSITIVE, "centered": BOOL},
    "Adam": {**_BETAS, "amsgrad": BOOL},
    # AdamW is Adam plus a decay: Keras refuses weight_decay=None for it.
    "AdamW": {**_BETAS, "amsgrad": BOOL, "weight_decay": NON_NEGATIVE},
    "Adadelta": {"rho": RATE, "epsilon": POSITIVE},
    "Adagrad": {"initial_accumulator_value": NON_NEGATIVE, "epsilon": POSITIVE},
    "Adamax": dict(_BETAS),
    "Adafactor": {
        "beta_2_decay": FLOAT,
        "epsilon_1": POSITIVE,
        "epsilon_2": POSITIVE,
        "clip_threshold": POSITIVE,
        "relative_step": BOOL,
    },
    "Nadam": dict(_BETAS),
    "Ftrl": {
        "learning_rate_power": Number(-FLOAT32_MAX, 0),
        "initial_accumulator_value": NON_NEGATIVE,
        "l1_regularization_strength": NON_NEGATIVE,
        "l2_regularization_strength": NON_NEGATIVE,
        "l2_shrinkage_regularization_strength": NON_NEGATIVE,
        "beta": NON_NEGATIVE,
    },
    "Lion": {"beta_1": RATE, "beta_2": RATE},
    "Lamb": dict(_BETAS),
    "Muon": {
        "adam_beta_1": RATE,
        "adam_beta_2": RATE,
        "adam_weight_decay": NON_NEGATIVE,
        "epsilon": POSITIVE,
        "exclude_embeddings": BOOL,
        "muon_a": FLOAT,
        "muon_b": FLOAT,
        "muon_c": FLOAT,
        "adam_lr_ratio": POSITIVE,
        "momentum": RATE,
        "ns_steps": Integer(1, 100),
        "nesterov": BOOL,
        "rms_rate": POSITIVE,
        "exclude_layers": Nullable(ListOf(LAYER_NAME, 0, 1000)),
    },
}
for _name, _arguments in OPTIMIZER_CLASSES.items():
    OPTIMIZER_CLASSES[_name] = {**_OPTIMIZER_BASE, **_arguments}
OPTIMIZER_NAMES = (
    "sgd", "rmsprop", "adam", "adamw", "adadelta", "adagrad", "adamax", "adafactor", "nadam",
    "ftrl", "lion", "muon",
)  # fmt: skip
OPTIMIZER = Catalog("optimizer", OPTIMIZER_NAMES, OPTIMIZER_CLASSES)

_REDUCTION = Nullable(
    Choice(("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none"))
)
_LOSS_BASE: dict[str, Kind] = {
    "name": Dropped(Nullable(LAYER_NAME)),
    "reduction": _REDUCTION,
    "dtype": Dropped(Nullable(DTYPE_POLICY)),
}
_AXIS = Axes(single_only=True)
# Keras's sparse crossentropy reads the class axis last only ("Only axis=-1 is supported").
_LAST_AXIS = Choice((-1,))
_CROSSENTROPY = {"from_logits": BOOL, "label_smoothing": FRACTION, "axis": _AXIS}
LOSS_CLASSES: dict[str, dict[str, Kind]] = {
    "BinaryCrossentropy": dict(_CROSSENTROPY),
    "BinaryFocalCrossentropy": {
        **_CROSSENTROPY,
        "apply_class_balancing": BOOL,
        "alpha": FRACTION,
        "gamma": NON_NEGATIVE,
    },
    "CategoricalCrossentropy": dict(_CROSSENTROPY),
    "CategoricalFocalCrossentropy": {**_CROSSENTROPY, "alpha": FRACTION, "gamma": NON_NEGATIVE},
    "SparseCategoricalCrossentropy": {
        "from_logits": BOOL,
        "ignore_class": Nullable(Integer()),
        "axis": _LAST_AXIS,
    },
    "MeanSquaredError": {},
    "MeanAbsoluteError": {},
    "MeanAbsolutePercentageError": {},
    "MeanSquaredLogarithmicError": {},
    "CosineSimilarity": {"axis": _AXIS},
    "Huber": {"delta": POSITIVE},
    "LogCosh": {},
    "Hinge": {},
    "SquaredHinge": {},
    "CategoricalHinge": {},
    "KLDivergence": {},
    "Poisson": {},
}
for _name, _arguments in LOSS_CLASSES.items():
    LOSS_CLASSES[_name] = {**_LOSS_BASE, **_arguments}
LOSS_NAMES = (
    "binary_crossentropy", "binary_focal_crossentropy", "categorical_crossentropy",
    "categorical_focal_crossentropy", "sparse_categorical_crossentropy", "mean_squared_error",
    "mean_absolute_error", "mean_absolute_percentage_error", "mean_squared_logarithmic_error",
    "cosine_similarity", "huber", "log_cosh", "hinge", "squared_hinge", "categorical_hinge",
    "kl_divergence", "poisson", "mse", "mae", "mape", "msle",
)  # fmt: skip
LOSS = Catalog("loss", LOSS_NAMES, LOSS_CLASSES)

_METRIC_BASE: dict[str, Kind] = {
    "name": Dropped(Nullable(LAYER_NAME)),
    "dtype": Dropped(Nullable(DTYPE_POLICY)),
}
_THRESHOLDS = Nullable(Either((FRACTION, ListOf(FRACTION, 1, 200)), "a number in [0, 1] or a list"))
METRIC_CLASSES: dict[str, dict[str, Kind]] = {
    "Accuracy": {},
    "BinaryAccuracy": {"threshold": FRACTION},
    "CategoricalAccuracy": {},
    "SparseCategoricalAccuracy": {},
    "TopKCategoricalAccuracy": {"k": Integer(1, 1000)},
    "SparseTopKCategoricalAccuracy": {"k": Integer(1, 1000), "from_sorted_ids": BOOL},
    "AUC": {
        "num_thresholds": Integer(2, 10_000),
        "curve": Choice(("ROC", "PR")),
        "summation_method": Choice(("interpolation", "minoring", "majoring")),
        "multi_label": BOOL,
        "num_labels": Nullable(Integer(1, 10_000)),
        "from_logits": BOOL,
        "label_weights": NULL_ONLY,
    },
    "Precision": {
        "thresholds": _THRESHOLDS,
        "top_k": Nullable(Integer(1, 1000)),
        "class_id": Nullable(Integer(0, 1_000_000)),
    },
    "Recall": {
        "thresholds": _THRESHOLDS,
        "top_k": Nullable(Integer(1, 1000)),
        "class_id": Nullable(Integer(0, 1_000_000)),
    },
    "TruePositives": {"thresholds": _THRESHOLDS},
    "TrueNegatives": {"thresholds": _THRESHOLDS},
    "FalsePositives": {"thresholds": _THRESHOLDS},
    "FalseNegatives": {"thresholds": _THRESHOLDS},
    "MeanSquaredError": {},
    "MeanAbsoluteError": {},
    "MeanAbsolutePercentageError": {},
    "MeanSquaredLogarithmicError": {},
    "RootMeanSquaredError": {},
    "LogCoshError": {},
    "CosineSimilarity": {"axis": _AXIS},
    "BinaryCrossentropy": {"from_logits": BOOL, "label_smoothing": FRACTION},
    "CategoricalCrossentropy": {
        "from_logits": BOOL,
        "label_smoothing": FRACTION,
        "axis": _AXIS,
    },
    "SparseCategoricalCrossentropy": {
        "from_logits": BOOL,
        "ignore_class": Nullable(Integer()),
        "axis": _LAST_AXIS,
    },
    "Hinge": {},
    "SquaredHinge": {},
    "CategoricalHinge": {},
    "KLDivergence": {},
    "Poisson": {},
    "R2Score": {
        "class_aggregation": Nullable(Choice(("uniform_average", "variance_weighted_average"))),
        "num_regressors": Integer(0, 1_000_000),
    },
}
for _name, _arguments in METRIC_CLASSES.items():
    METRIC_CLASSES[_name] = {**_METRIC_BASE, **_arguments}
METRIC_NAMES = (
    "accuracy", "acc", "binary_accuracy", "categorical_accuracy",
    "sparse_categorical_accuracy", "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy", "binary_crossentropy", "categorical_crossentropy",
    "sparse_categorical_crossentropy", "mean_squared_error", "mean_absolute_error",
    "mean_absolute_percentage_error", "mean_squared_logarithmic_error", "cosine_similarity",
    "hinge", "squared_hinge", "categorical_hinge", "kl_divergence", "poisson", "mse", "mae",
    "mape", "msle",
)  # fmt: skip
METRIC = Catalog("metric", METRIC_NAMES, METRIC_CLASSES)

# --- fit -----------------------------------------------------------------------------------

MONITOR = Text(r"[A-Za-z0-9_./-]{1,100}", "a metric name such as 'val_loss'")
_MODE = Choice(("auto", "min", "max"))
# Keras's own `mode="auto"` rule, widened to the metrics that grow as a model improves.
HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "r2", "true_positives")


def monitor_mode(monitor: str, mode: str) -> str:
    """`min` or `max` for a monitored value: resolved here, because EarlyStopping's own "auto"
    raises at the first epoch for any name it does not find among the model's metrics (an
    output's metric, such as 'val_kind_accuracy', or a metric the job does not compute)."""
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    return "max" if any(word in name for word in HIGHER_IS_BETTER) else "min"


CALLBACK_CLASSES: dict[str, dict[str, Kind]] = {
    "EarlyStopping": {
        "monitor": MONITOR,
        "min_delta": NON_NEGATIVE,
        "patience": Integer(0, 100_000),
        "verbose": Choice((0, 1)),
        "mode": _MODE,
        "baseline": Nullable(FLOAT),
        "restore_best_weights": BOOL,
        "start_from_epoch": Integer(0, 100_000),
    },
    "ReduceLROnPlateau": {
        "monitor": MONITOR,
        "factor": RATE,
        "patience": Integer(0, 100_000),
        "verbose": Choice((0, 1)),
        "mode": _MODE,
        "min_delta": NON_NEGATIVE,
        "cooldown": Integer(0, 100_000),
        "min_lr": NON_NEGATIVE,
    },
    "TerminateOnNaN": {"raise_error": BOOL},
}
REFUSED_CALLBACKS = {
    "ModelCheckpoint": "the service writes checkpoints itself; use the request's `checkpoint`",
    "BackupAndRestore": "the service resumes jobs from its own checkpoints",
    "CSVLogger": "it writes to a path on the server; metrics are at /v1/jobs/<id>/metrics",
    "TensorBoard": "it writes to a path on the server",
    "LambdaCallback": "it runs arbitrary Python code",
    "LearningRateScheduler": "it runs arbitrary Python code; use a learning-rate schedule",
    "RemoteMonitor": "it sends data to another host",
}

REQUEST_NAME = Text()
REQUEST_KEYS = (
    "name", "seed", "priority", "resources", "model", "compile", "fit", "data", "checkpoint",
    "warm_start", "tags",
)  # fmt: skip

# `tags`: the user's own labels on a job; `GET /v1/jobs?tag=key:value` filters on them, so a key
# holds no ':' and a value no control character.
MAX_TAGS = 20
TAGS = TextMap(
    Text(r"[A-Za-z0-9_.-]{1,64}", "1 to 64 letters, digits, '_', '.' or '-'"),
    Text(r"[^\x00-\x1f\x7f]{0,256}", "a string of at most 256 characters, no control characters"),
    MAX_TAGS,
)
# `warm_start`: start from another job's weights. `job` an id or a name, as models are named.
WARM_START_LABELS = ("best", "latest", "final")
WARM_START_KINDS: dict[str, Kind] = {
    "job": Required(Text()),
    "version": Either(
        (Choice(WARM_START_LABELS), Integer(1)), "best, latest, final or a version number from 1"
    ),
    "strict": BOOL,
}


def resource_kinds(max_gpus: int) -> dict[str, Kind]:
    """`resources`: how many GPUs a job trains on, and whether in mixed precision."""
    return {"gpus": Integer(1, max_gpus), "mixed_precision": BOOL}
