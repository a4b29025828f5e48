import pytest

from core.patches import PatchError, get_pointer, merge_patch, set_pointer

REQUEST = {"fit": {"epochs": 5, "batch_size": 32}, "model": {"layers": [{"config": {"units": 8}}]}}


def test_merge_patch_follows_rfc_7396_examples() -> None:
    # Appendix A of RFC 7396, a few rows.
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch([1, 2], {"a": {"b": None}}) == {"a": {}}


def test_merge_patch_leaves_its_inputs_alone() -> None:
    patch = {"fit": {"epochs": 20}}
    merged = merge_patch(REQUEST, patch)
    assert merged["fit"] == {"epochs": 20, "batch_size": 32}
    assert REQUEST["fit"]["epochs"] == 5
    merged["model"]["layers"][0]["config"]["units"] = 1
    assert REQUEST["model"]["layers"][0]["config"]["units"] == 8


def test_set_pointer_reaches_into_arrays() -> None:
    changed = set_pointer(REQUEST, "/model/layers/0/config/units", 64)
    assert get_pointer(changed, "/model/layers/0/config/units") == 64
    assert REQUEST["model"]["layers"][0]["config"]["units"] == 8
    assert set_pointer({"a/b": 1}, "/a~1b", 2) == {"a/b": 2}
    assert set_pointer({"xs": [1]}, "/xs/-", 2) == {"xs": [1, 2]}


@pytest.mark.parametrize(
    ("pointer", "path"),
    [
        ("/nope/epochs", "/nope"),
        ("/model/layers/3/config", "/model/layers/3"),
        ("/model/layers/01/config", "/model/layers/01"),
        ("/fit/epochs/deeper", "/fit/epochs"),
        ("fit", ""),
    ],
)
def test_a_pointer_that_does_not_resolve_names_where(pointer: str, path: str) -> None:
    with pytest.raises(PatchError) as caught:
        set_pointer(REQUEST, pointer, 1)
    assert caught.value.path == path
    assert caught.value.expected
