"""Request tensors: any JSON body is either checked arrays or a clear, serializable 4xx error."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import FitserveError, InvalidRequest, PayloadTooLarge
from core.serving import oip, tfserving
from core.serving.signature import TensorInfo

INPUTS = [TensorInfo("a", (2,), "float32"), TensorInfo("b", (None, 2), "int32")]
SINGLE = [TensorInfo("a", (2,), "float32")]
OUTPUTS = [TensorInfo("o", (1,), "float32")]
KEYS = ["instances", "inputs", "a", "b", "name", "shape", "datatype", "data", "parameters"]
KEYS += ["outputs", "binary_data_size", "binary_data", "id", "signature_name"]

# What orjson can hand us: integers within 64 bits (larger ones parse as floats), no NaN.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
    | st.sampled_from(["a", "b", "o", "FP32", "INT32", "BOOL"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=5)
    ),
    max_leaves=25,
)


def outcome(parse) -> list[np.ndarray] | FitserveError:
    """The arrays a parse returns, or the client error it raises (anything else fails)."""
    try:
        parsed = parse()
    except (InvalidRequest, PayloadTooLarge) as error:
        return error
    return (parsed[0] if isinstance(parsed, tuple) else parsed).arrays


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(json_values, st.binary(max_size=16))
def test_any_body_is_arrays_or_a_client_error(body, binary):
    for inputs in (INPUTS, SINGLE):
        for result in (
            outcome(lambda inputs=inputs: tfserving.parse_predict(body, inputs, 100)),
            outcome(lambda inputs=inputs: oip.parse_infer(body, binary, inputs, OUTPUTS, 100)),
        ):
            if isinstance(result, FitserveError):
                orjson.dumps([field.to_dict() for field in result.errors])
            else:
                assert [a.dtype.name for a in result] == [i.dtype for i in inputs]
                assert all(np.isfinite(a).all() for a in result)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[1.5, 2]], "integers"),
        ([[1, 2**40]], "outside the range of int32"),
    ],
)
def test_integer_inputs_take_whole_numbers_in_range(rows, message):
    info = TensorInfo("ids", (2,), "int32")
    with pytest.raises(InvalidRequest, match=message):
        tfserving.check_batch(rows, info, "/inputs", lambda i: f"/inputs/{i}", 10)
    out = tfserving.check_batch([[1.0, 2]], info, "/inputs", lambda i: f"/inputs/{i}", 10)
    assert out.dtype == np.int32
    assert out.tolist() == [[1, 2]]


def test_variable_dimensions_accept_any_size_but_one_per_batch():
    info = TensorInfo("seq", (None, 2), "float32")
    assert tfserving.check_batch([[[1, 2]] * 5], info, "/x", str, 10).shape == (1, 5, 2)
    with pytest.raises(InvalidRequest) as caught:
        tfserving.check_batch([[[1, 2]] * 5, [[1, 2]] * 3], info, "/x", lambda i: f"/x/{i}", 10)
    assert caught.value.errors[0].path == "/x"
    assert "different shapes" in caught.value.errors[0].message


def test_pointers_escape_names():
    assert tfserving.pointer("inputs", "a/b~c", 0) == "/inputs/a~1b~0c/0"
