"""The model cache: verified lazy loads, LRU bounds, one load per file, swaps once warm."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core.checkpoints import CheckpointCorrupt
from core.serving import catalog
from core.serving.cache import ModelCache
from core.serving.signature import TensorInfo
from core.settings import Settings
from core.storage import DataDir, read_json
from tests.support.models import MULTI, SINGLE, copy_job, load_version
from tests.support.processes import wait_for

X = np.random.default_rng(3).normal(size=(4, 4)).astype("float32")


@pytest.fixture
def data(tmp_path, library) -> tuple[DataDir, dict[str, str]]:
    source, ids = library
    data = DataDir(tmp_path / "data")
    for kind in (SINGLE, MULTI):
        copy_job(source, data, ids[kind])
    return data, ids


def servable(data: DataDir, job_id: str, version: int | None = None):
    manifest = read_json(data.job(job_id) / "manifest.json")
    return catalog.resolve_version(data, manifest, version=version)


def test_a_loaded_model_answers_like_keras_and_names_its_tensors(data):
    data, ids = data
    loaded = ModelCache(Settings()).get(servable(data, ids[MULTI]))
    assert loaded.inputs == (
        TensorInfo("image", (2, 3), "float32"),
        TensorInfo("meta", (2,), "float32"),
    )
    assert [o.name for o in loaded.outputs] == ["score", "probs"]
    image, meta = np.ones((2, 2, 3), "float32"), np.zeros((2, 2), "float32")
    outputs = loaded.run_batched([image, meta])
    score, probs = load_version(data, ids[MULTI])([image, meta], training=False)
    assert np.allclose(outputs["score"], score, atol=1e-6)
    assert np.allclose(outputs["probs"], probs, atol=1e-6)


def test_lru_is_bounded_by_count_and_bytes(data):
    data, ids = data
    cache = ModelCache(Settings(model_cache_size=2))
    for version in (1, 2, 3):
        cache.get(servable(data, ids[SINGLE], version))
    assert cache.loaded() == [(ids[SINGLE], 2), (ids[SINGLE], 3)]
    cache.get(servable(data, ids[SINGLE], 2))
    cache.get(servable(data, ids[MULTI]))
    assert cache.loaded() == [(ids[SINGLE], 2), (ids[MULTI], 2)]
    tiny = ModelCache(Settings(model_cache_bytes=1))
    tiny.get(servable(data, ids[SINGLE], 1))
    tiny.get(servable(data, ids[SINGLE], 2))
    assert tiny.loaded() == [(ids[SINGLE], 2)]


def test_concurrent_requests_share_one_load(data):
    data, ids = data
    cache = ModelCache(Settings())
    target = servable(data, ids[SINGLE])
    with ThreadPoolExecutor(8) as pool:
        models = list(pool.map(lambda _: cache.get(target), range(8)))
    assert all(model is models[0] for model in models)
    assert cache.loaded() == [(ids[SINGLE], 3)]


def test_latest_keeps_the_older_version_until_the_newer_is_warm(data):
    data, ids = data
    cache = ModelCache(Settings())
    cache.get(servable(data, ids[SINGLE], 1))
    newer = servable(data, ids[SINGLE], 3)
    first = cache.get_newest(newer)
    assert first.servable.version == 1
    wait_for(lambda: (ids[SINGLE], 3) in cache.loaded(), 60, "version 3 to load")
    assert cache.get_newest(newer).servable.version == 3
    want = load_version(data, ids[SINGLE])(X, training=False)
    assert np.allclose(cache.get_newest(newer).run_batched([X])["output"], want, atol=1e-6)


def test_a_corrupt_file_fails_loudly_and_is_not_cached(data):
    data, ids = data
    path = data.job(ids[SINGLE]) / "checkpoints/epoch-0002.keras"
    path.write_bytes(b"PK not a model")
    broken = servable(data, ids[SINGLE], 2)
    with pytest.raises(CheckpointCorrupt, match="sha256"):
        ModelCache(Settings()).get(broken)
    # Following `latest`, version 1 answers only while version 2's load is in flight; once
    # that load failed, the request loads it itself and fails (no silent fallback).
    cache = ModelCache(Settings())
    cache.get(servable(data, ids[SINGLE], 1))
    assert cache.get_newest(broken).servable.version == 1

    def fails() -> bool:
        try:
            cache.get_newest(broken)
        except CheckpointCorrupt:
            return True
        return False

    wait_for(fails, 30, "the failed load to surface")
    assert cache.loaded() == [(ids[SINGLE], 1)]
