"""The fitserve HTTP client: datasets, jobs and predictions from Python, numpy in and out.

It speaks HTTP only (requests + numpy); Keras is imported only by `spec_from_keras` and by
`download_model` without a path, so the client installs without TensorFlow.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import requests
from tusclient.exceptions import TusCommunicationError

from client.errors import ConnectionFailed, FitserveError, JobFailed
from client.progress import TERMINAL, ProgressDisplay
from client.uploads import (
    CHUNK_BYTES,
    RESUMABLE_THRESHOLD,
    MultipartBody,
    Progress,
    upload_resumable,
)

DEFAULT_URL = "http://127.0.0.1:8000"
# No answer at all (0), or a gateway or dependency that is briefly away: worth asking again.
TRANSIENT_STATUSES = frozenset({0, 502, 503, 504})
# Keys of `Model.get_compile_config()` our `compile` section takes (`run_eagerly` is local only).
COMPILE_KEYS = (
    "optimizer",
    "loss",
    "loss_weights",
    "metrics",
    "weighted_metrics",
    "jit_compile",
    "steps_per_execution",
)

ArrayInput = np.ndarray | list | Mapping[str, Any]
# Each predict request carries at most this many bytes of tensors: under the server's default
# body cap (FITSERVE_MAX_JSON_BYTES, 16 MiB), with room for the JSON header.
PREDICT_CHUNK_BYTES = 8 << 20
INFERENCE_HEADER = "Inference-Header-Content-Length"
# The Open Inference Protocol's datatypes by numpy dtype (the server's own table, for a client
# that installs without the server).
DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
DTYPES = {datatype: dtype for dtype, datatype in DATATYPES.items()}


class Client:
    """A connection to one fitserve server.

    Args:
        url: the server's base URL; default `FITSERVE_URL`, else `http://127.0.0.1:8000`.
        key: an API key sent as `Authorization: Bearer <key>`; default `FITSERVE_API_KEY`.
        timeout: seconds to wait for each HTTP answer.
        resumable_threshold: files above this many bytes go up as resumable (tus) uploads.
        chunk_bytes: the bytes of each resumable upload request.
        upload_store: the file that remembers interrupted resumable uploads (default
            `~/.cache/fitserve/uploads.json`).

    Example:
        client = Client("http://127.0.0.1:8000")
        dataset = client.upload_arrays({"x": x, "y": y})
        job = client.submit_model(model, dataset["id"], fit={"epochs": 3})
        client.wait(job["id"])
        predictions = client.predict(job["id"], x[:5])
    """

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        resumable_threshold: int = RESUMABLE_THRESHOLD,
        chunk_bytes: int = CHUNK_BYTES,
        upload_store: Path | None = None,
    ) -> None:
        self.url = (url or os.environ.get("FITSERVE_URL") or DEFAULT_URL).rstrip("/")
        self.key = key if key is not None else os.environ.get("FITSERVE_API_KEY") or None
        self.timeout = timeout
        self.resumable_threshold = resumable_threshold
        self.chunk_bytes = chunk_bytes
        self.upload_store = upload_store
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "fitserve-client"
        if self.key:
            self.session.headers["Authorization"] = f"Bearer {self.key}"

    # -- plumbing -------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one request; raise FitserveError with the problem document on 4xx/5xx."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, self.url + path, **kwargs)
        except requests.RequestException as error:
            raise ConnectionFailed(self.url, connection_reason(error)) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request and return its JSON body."""
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def send_json(self, method: str, path: str, document: Any, **kwargs: Any) -> Any:
        """Send `document` as strict JSON (NaN and Infinity are refused here, not by the server)."""
        try:
            body = json.dumps(document, allow_nan=False)
        except ValueError:
            raise ValueError(
                "The request holds NaN or Infinity, which JSON cannot carry; "
                "replace them before sending."
            ) from None
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return self.request_json(method, path, data=body.encode(), headers=headers, **kwargs)

    def list_all(self, path: str, limit: int | None, params: dict[str, Any]) -> list[dict]:
        """Follow `next_cursor` until `limit` items (or all of them) are collected."""
        items: list[dict] = []
        cursor = None
        while limit is None or len(items) < limit:
            page_size = 500 if limit is None else min(limit - len(items), 500)
            query = {**params, "limit": page_size, **({"cursor": cursor} if cursor else {})}
            page = self.request_json("GET", path, params=query)
            items.extend(page.get("items", []))
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return items

    def ready(self) -> dict[str, Any]:
        """`/readyz`: Redis and the data folder are fine; lists the workers seen."""
        return self.request_json("GET", "/readyz")

    # -- datasets -------------------------------------------------------------------------

    def upload_arrays(self, arrays: Mapping[str, Any], *, filename: str = "arrays.npz") -> dict:
        """Upload named numpy arrays as one dataset (an in-memory `.npz`, never pickled).

        Returns the dataset's manifest (its `id`, arrays with shapes, dtypes and statistics).
        """
        buffer = io.BytesIO()
        # Typed Any: numpy's stubs read a ** of arrays as if it could fill `allow_pickle`.
        plain: dict[str, Any] = {name: plain_array(name, value) for name, value in arrays.items()}
        np.savez(buffer, **plain)
        files = {"file": (filename, buffer.getvalue(), "application/octet-stream")}
        return self.request_json("POST", "/v1/datasets", files=files)

    def upload_file(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        label: str | None = None,
        progress: Progress | None = None,
        wait: bool = True,
    ) -> dict:
        """Upload a `.npz`, `.npy` or `.csv` file as a dataset; returns its manifest.

        The file is streamed from disk, never read whole. Above `resumable_threshold` bytes it
        goes up as a resumable upload (tus), which resumes where an interrupted one stopped.

        Args:
            path: the file; the server reads its format from the content.
            name: for a `.npy`, the array's name (the server's default is `x`).
            label: for a `.csv`, the label column (the server's default is `label`).
            progress: called with (bytes sent, file size) as a resumable upload goes.
            wait: wait until a dataset the server reads after answering (a resumable upload,
                an archive) is ready (see `wait_dataset`); else return it `processing`.
        """
        path = Path(path)
        form = {key: value for key, value in (("name", name), ("label", label)) if value}
        if path.stat().st_size > self.resumable_threshold:
            upload_id = self.upload_resumable(path, progress=progress)
            manifest = self.send_json("POST", "/v1/datasets", {"upload": upload_id, **form})
        else:
            body = MultipartBody(path, form)
            with body:
                headers = {"Content-Type": body.content_type}
                manifest = self.request_json("POST", "/v1/datasets", data=body, headers=headers)
        return self.wait_dataset(manifest["id"]) if wait else manifest

    def wait_dataset(
        self, dataset_id: str, *, timeout: float | None = None, interval: float = 1.0
    ) -> dict:
        """Wait until a `processing` dataset (an archive, a resumable upload, an import) is
        `ready`; its manifest. A failed one raises FitserveError with the server's reason."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            manifest = self.get_dataset(dataset_id)
            status = manifest.get("status", "ready")
            if status == "failed":
                error = manifest.get("error") or {}
                member = f" (member {error['member']})" if error.get("member") else ""
                detail = f"Dataset {dataset_id} failed{member}: {error.get('message')}"
                raise FitserveError(0, {"code": "dataset_failed", "detail": detail})
            if status != "processing":
                return manifest
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Dataset {dataset_id} is still processing after {timeout} s.")
            time.sleep(interval)

    def upload_resumable(
        self, path: str | Path, *, checksum: bool = False, progress: Progress | None = None
    ) -> str:
        """Send a file as a resumable upload (tus 1.0, with tuspy); returns the upload's id,
        which `POST /v1/datasets {"upload": id}` turns into a dataset. An earlier try of the
        same file to this server that was interrupted resumes from the server's offset.

        Args:
            checksum: send each chunk's sha1; the server discards a chunk that differs.
        """
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            return upload_resumable(
                self.url,
                Path(path),
                headers,
                chunk_bytes=self.chunk_bytes,
                checksum=checksum,
                store_path=self.upload_store,
                progress=progress,
            )
        except TusCommunicationError as error:
            raise error_from_tus(error) from None

    def list_datasets(self, limit: int | None = None) -> list[dict]:
        """The datasets this key may see, newest first (all of them unless `limit`)."""
        return self.list_all("/v1/datasets", limit, {})

    def get_dataset(self, dataset_id: str) -> dict:
        """One dataset's manifest."""
        return self.request_json("GET", f"/v1/datasets/{segment(dataset_id)}")

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset (409 while a live job uses it)."""
        self.request("DELETE", f"/v1/datasets/{segment(dataset_id)}")

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> dict:
        """Submit a job request; returns the job (`id`, `status: queued`, links).

        With `idempotency_key`, submitting the same request again returns the same job.
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.send_json("POST", "/v1/jobs", dict(spec), headers=headers)

    def submit_model(
        self,
        model: Any,
        data: str | Mapping[str, Any],
        *,
        fit: Mapping[str, Any] | None = None,
        compile: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> dict:
        """Submit a live `keras.Model` for training; see `spec_from_keras` for the arguments."""
        spec = spec_from_keras(model, data, fit=fit, compile=compile, **fields)
        return self.submit(spec, idempotency_key=idempotency_key)

    def validate(self, spec: Mapping[str, Any]) -> dict:
        """Check a job request as a submit would, enqueueing nothing; returns the model summary.

        Raises FitserveError (422) with every error in the request at once.
        """
        return self.send_json("POST", "/v1/jobs:validate", dict(spec))

    def get_job(self, job_id: str) -> dict:
        """The job's record: status, progress, metrics, checkpoints, timings, error."""
        return self.request_json("GET", f"/v1/jobs/{segment(job_id)}")

    def list_jobs(
        self,
        limit: int | None = None,
        *,
        status: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[dict]:
        """The jobs this key may see, newest first; `status` and `tags` (every one must match)
        filter on the server."""
        params: dict[str, Any] = {"status": status} if status else {}
        if tags:
            params["tag"] = [f"{key}:{value}" for key, value in tags.items()]
        return self.list_all("/v1/jobs", limit, params)

    def clone(
        self,
        job_id: str,
        patch: Mapping[str, Any] | None = None,
        set: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict:
        """Submit a new job from `job_id`'s request with changes; returns the new job
        (`cloned_from` names the original).

        `patch` is a JSON Merge Patch over the request (`{"fit": {"epochs": 20}}`; null removes
        a key); `set` maps JSON pointers to values and applies after it, reaching into arrays
        (`{"/model/layers/0/config/units": 64}`).
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"patch": dict(patch or {}), "set": dict(set or {})}
        return self.send_json("POST", f"/v1/jobs/{segment(job_id)}:clone", body, headers=headers)

    def cancel_job(self, job_id: str) -> dict:
        """Ask a job to stop; returns it `cancelling` (or already `cancelled`)."""
        return self.request_json("POST", f"/v1/jobs/{segment(job_id)}:cancel")

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job and its files (409 while it is live)."""
        self.request("DELETE", f"/v1/jobs/{segment(job_id)}")

    def pin_job(self, job_id: str) -> dict:
        """Keep a job past the server's job TTL (FITSERVE_JOB_TTL_SECONDS) until unpinned."""
        return self.request_json("POST", f"/v1/jobs/{segment(job_id)}:pin")

    def unpin_job(self, job_id: str) -> dict:
        """Let a pinned job expire again, the TTL after it finished."""
        return self.request_json("POST", f"/v1/jobs/{segment(job_id)}:unpin")

    def usage(self) -> dict:
        """What this key stores: `{datasets, jobs, checkpoints, exports: {count, bytes}, bytes,
        quota_bytes, job_ttl_seconds}`."""
        return self.request_json("GET", "/v1/usage")

    def job_logs(self, job_id: str, *, tail: int | None = None) -> list[str]:
        """The last lines of the job's training log (the server's default: 1000)."""
        params = {"tail": tail} if tail else {}
        return self.request_json("GET", f"/v1/jobs/{segment(job_id)}/logs", params=params)["lines"]

    def job_metrics(self, job_id: str) -> dict[str, list]:
        """The job's history: `{metric: [value per epoch]}`."""
        return self.request_json("GET", f"/v1/jobs/{segment(job_id)}/metrics").get("history", {})

    def follow(
        self,
        job_id: str,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
        retries: int = 5,
        on_retry: Callable[[FitserveError, int, int, float], None] | None = None,
    ) -> Iterator[dict]:
        """Yield the job's record every `interval` seconds until it reaches a final state.

        A server that is briefly away (restarting, or Redis failing over: no answer, 502, 503,
        504) is asked again, up to `retries` times in a row with growing pauses, so a long
        wait survives a deploy; `on_retry(error, attempt, retries, pause)` hears of each retry
        first. Raises TimeoutError when `timeout` seconds pass first.
        """
        return self._poll(
            lambda: self.get_job(job_id), f"Job {job_id}", interval, timeout, retries, on_retry
        )

    def _poll(
        self,
        read: Callable[[], dict],
        what: str,
        interval: float,
        timeout: float | None,
        retries: int,
        on_retry: Callable[[FitserveError, int, int, float], None] | None = None,
    ) -> Iterator[dict]:
        """`read()` every `interval` seconds until its `status` is final (see `follow`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        last_error: FitserveError | None = None
        while True:
            try:
                record = read()
            except FitserveError as error:
                last_error = error
                failures += 1
                if error.status not in TRANSIENT_STATUSES or failures > retries:
                    raise
                record = {"status": f"unreachable ({error.code})"}
            else:
                failures = 0
                yield record
                if record.get("status") in TERMINAL:
                    return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{what} is still {record.get('status')} after {timeout} seconds."
                )
            pause = min(interval * 2**failures, 30.0)
            if failures and on_retry is not None and last_error is not None:
                on_retry(last_error, failures, retries, pause)
            time.sleep(pause)

    def wait(
        self,
        job_id: str,
        *,
        progress: bool = True,
        interval: float = 1.0,
        timeout: float | None = None,
        check: bool = True,
    ) -> dict:
        """Wait for a job to finish, showing a progress bar on stderr; returns its last record.

        Raises JobFailed when the job ends `failed` or `cancelled` (unless `check=False`).
        """
        display = ProgressDisplay() if progress else None
        job: dict = {}
        try:
            for job in self.follow(job_id, interval=interval, timeout=timeout):
                if display:
                    display.update(job)
        finally:
            if display:
                display.close()
        if check and job.get("status") != "succeeded":
            raise JobFailed(job)
        return job

    # -- sweeps ---------------------------------------------------------------------------

    def sweep(
        self,
        base: Mapping[str, Any],
        space: Mapping[str, Mapping[str, Any]],
        *,
        objective: Mapping[str, str],
        **settings: Any,
    ) -> dict:
        """Submit a hyperparameter sweep over the job request `base`; returns the sweep.

        `space` maps JSON pointers into `base` to `{"float": [lo, hi], "log": bool}`,
        `{"int": [lo, hi], "step": n}` or `{"choice": [...]}`; `objective` is
        `{"metric": "val_loss", "mode": "min"}`; `settings` are the other fields of
        `POST /v1/sweeps` (`name`, `sampler`, `pruner`, `max_trials`, `max_concurrent`, `seed`,
        `priority`). Trial 0 is `base` itself.
        """
        body = {"base": dict(base), "space": dict(space), "objective": dict(objective), **settings}
        return self.submit_sweep(body)

    def submit_sweep(self, request: Mapping[str, Any]) -> dict:
        """Submit a whole sweep request (the body of `POST /v1/sweeps`); returns the sweep."""
        return self.send_json("POST", "/v1/sweeps", dict(request))

    def get_sweep(self, sweep_id: str) -> dict:
        """The sweep: status, trials (params, job, state, objective, epochs), `best_job`."""
        return self.request_json("GET", f"/v1/sweeps/{segment(sweep_id)}")

    def list_sweeps(self, limit: int | None = None) -> list[dict]:
        """The sweeps this key may see, newest first."""
        return self.list_all("/v1/sweeps", limit, {})

    def cancel_sweep(self, sweep_id: str) -> dict:
        """Stop a sweep: no new trial starts and the live ones are cancelled."""
        return self.request_json("POST", f"/v1/sweeps/{segment(sweep_id)}:cancel")

    def delete_sweep(self, sweep_id: str) -> None:
        """Delete a finished sweep (409 while it is live); its trials' jobs stay."""
        self.request("DELETE", f"/v1/sweeps/{segment(sweep_id)}")

    def follow_sweep(
        self,
        sweep_id: str,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
        retries: int = 5,
    ) -> Iterator[dict]:
        """Yield the sweep every `interval` seconds until it ends (retries as `follow`)."""
        return self._poll(
            lambda: self.get_sweep(sweep_id), f"Sweep {sweep_id}", interval, timeout, retries
        )

    # -- batch predictions ----------------------------------------------------------------

    def submit_batch(
        self,
        model: str,
        dataset: str,
        *,
        version: int | str | None = None,
        x: str | Mapping[str, str] | None = None,
        batch_size: int | None = None,
    ) -> dict:
        """Queue a batch prediction of `model` (a job id or name; `version` a number or a
        label) over a stored dataset; returns its record (`id`, `status`...)."""
        request: dict[str, Any] = {"model": model, "dataset": dataset}
        optional = {"version": version, "x": x, "batch_size": batch_size}
        request.update({key: value for key, value in optional.items() if value is not None})
        return self.send_json("POST", "/v1/batch-predictions", request)

    def get_batch(self, batch_id: str) -> dict:
        return self.request_json("GET", f"/v1/batch-predictions/{segment(batch_id)}")

    def wait_batch(
        self, batch_id: str, *, interval: float = 0.5, timeout: float | None = None
    ) -> dict:
        """Poll until the batch prediction ends; JobFailed unless it succeeded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.get_batch(batch_id)
            if batch["status"] in TERMINAL:
                if batch["status"] != "succeeded":
                    raise JobFailed(batch)
                return batch
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Batch prediction {batch_id} is still {batch['status']} after {timeout} s."
                )
            time.sleep(interval)

    def batch_predict(
        self,
        model: str,
        dataset: str,
        *,
        version: int | str | None = None,
        x: str | Mapping[str, str] | None = None,
        batch_size: int | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray] | dict:
        """Score a stored dataset with a model on the workers. With `wait` (the default) the
        result dataset's arrays as numpy (one per output, plus `class` and `class_name` for a
        classifier); else the queued record."""
        batch = self.submit_batch(model, dataset, version=version, x=x, batch_size=batch_size)
        if not wait:
            return batch
        done = self.wait_batch(batch["id"], timeout=timeout)
        return self.dataset_arrays(done["result_dataset"])

    def dataset_arrays(self, dataset_id: str) -> dict[str, np.ndarray]:
        """A dataset's arrays, downloaded as .npz and read with allow_pickle=False."""
        with tempfile.TemporaryDirectory(prefix="fitserve-") as folder:
            path = self.download_dataset(dataset_id, Path(folder) / "data.npz")
            with np.load(path, allow_pickle=False) as arrays:
                return {name: arrays[name] for name in arrays.files}

    def download_dataset(
        self, dataset_id: str, path: str | Path, *, format: str = "npz", array: str | None = None
    ) -> Path:
        """Stream a dataset into `path` as `npz`, `npy` (one `array`) or `csv`; returns it."""
        params = {"format": format, **({"array": array} if array else {})}
        url = f"/v1/datasets/{segment(dataset_id)}/download"
        return self.stream_to(url, Path(path), params)

    # -- models ---------------------------------------------------------------------------

    def model_path(self, model: str, version: int | None, label: str | None) -> str:
        if version is not None and label is not None:
            raise ValueError("Give a version or a label, not both.")
        path = f"/v1/models/{segment(model)}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label is not None:
            path += f"/labels/{segment(label)}"
        return path

    def list_models(self, limit: int | None = None) -> list[dict]:
        """Jobs with a servable version, newest first: id, name, versions, labels."""
        return self.list_all("/v1/models", limit, {})

    def predict(
        self,
        model: str,
        inputs: ArrayInput,
        *,
        version: int | None = None,
        label: str | None = None,
        classes: bool = False,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Predict with a trained model: numpy in, numpy out, any number of rows.

        Args:
            model: a job id, or a job name (its newest succeeded job).
            inputs: one array (a batch) for a single-input model, or `{input_name: array}`.
            version: a checkpoint version (epochs completed); or `label`: best, latest, final.
            classes: return each row's most likely class instead of the scores: its name where
                the training labels had names (CSV strings, image folders), else its id.

        The arrays travel as bytes (the Open Inference Protocol's binary tensors), in requests
        of at most PREDICT_CHUNK_BYTES, so a large batch is a few requests under the server's
        body cap, and no number goes through JSON text.

        Returns one array for a single-output model, else `{output_name: array}`.
        """
        path = self.oip_path(model, version, label)
        metadata = self.request_json("GET", path)
        arrays = named_inputs(inputs, metadata["inputs"])
        rows = check_rows(arrays)
        row_bytes = sum(array[:1].nbytes for array in arrays.values()) or 1
        step = max(1, PREDICT_CHUNK_BYTES // row_bytes)
        parts = [
            self.infer(path, {name: array[start : start + step] for name, array in arrays.items()})
            for start in range(0, max(rows, 1), step)
        ]
        outputs = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        if classes:
            if len(outputs) != 1:
                raise ValueError("classes=True needs a model with one output of class scores.")
            names = (metadata.get("parameters") or {}).get("classes")
            return top_classes(next(iter(outputs.values())), names)
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    def class_names(
        self, model: str, *, version: int | None = None, label: str | None = None
    ) -> list[str] | None:
        """The names of the model's classes, in id order; None when its labels had none."""
        metadata = self.request_json("GET", self.oip_path(model, version, label))
        return (metadata.get("parameters") or {}).get("classes")

    def classify(
        self,
        model: str,
        inputs: ArrayInput,
        *,
        k: int | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Each row's classes with their scores, most likely first (TF Serving's `:classify`).

        Args:
            model: a job id, or a job name.
            inputs: one array (a batch) for a single-input model, or `{input_name: array}`.
            k: only the `k` most likely classes of each row (default: all).

        Classes are named as the training labels were (CSV strings, image folders), else they
        are the class ids as strings: `[[("virginica", 0.91), ("versicolor", 0.08), ...], ...]`.
        """
        if isinstance(inputs, Mapping):
            columns: Any = {name: plain_array(name, v).tolist() for name, v in inputs.items()}
        else:
            columns = plain_array("inputs", inputs).tolist()
        params = {} if k is None else {"k": int(k)}
        answer = self.send_json(
            "POST",
            self.model_path(model, version, label) + ":classify",
            {"inputs": columns},
            params=params,
        )
        return [[(str(name), float(score)) for name, score in row] for row in answer["result"]]

    def oip_path(self, model: str, version: int | None, label: str | None) -> str:
        """A model's Open Inference Protocol path; a version segment takes a label too."""
        if version is not None and label is not None:
            raise ValueError("Give a version or a label, not both.")
        path = f"/v2/models/{segment(model)}"
        if version is not None or label is not None:
            path += f"/versions/{segment(str(version if version is not None else label))}"
        return path

    def infer(self, path: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One binary inference request: `{input name: array}` in, `{output name: array}` out."""
        tensors, chunks = [], []
        for name, array in arrays.items():
            chunk = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            tensors.append(
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": DATATYPES[array.dtype.name],
                    "parameters": {"binary_data_size": len(chunk)},
                }
            )
            chunks.append(chunk)
        header = json.dumps(
            {"inputs": tensors, "parameters": {"binary_data_output": True}}
        ).encode()
        response = self.request(
            "POST",
            path + "/infer",
            data=b"".join([header, *chunks]),
            headers={
                "Content-Type": "application/octet-stream",
                INFERENCE_HEADER: str(len(header)),
            },
        )
        return binary_outputs(response)

    def model_status(self, model: str, *, version: int | None = None) -> dict:
        """TF Serving's model status: the versions and their states."""
        return self.request_json("GET", self.model_path(model, version, None))

    def model_metadata(
        self, model: str, *, version: int | None = None, label: str | None = None
    ) -> dict:
        """The model's signature (inputs and outputs with names, shapes, dtypes) and record."""
        return self.request_json("GET", self.model_path(model, version, label) + "/metadata")

    def download_model(
        self,
        model: str,
        path: str | Path | None = None,
        *,
        version: int | None = None,
        label: str | None = None,
        format: str = "keras",
    ) -> Any:
        """Download a trained model: to `path` (returned), or loaded as a `keras.Model`.

        Without `path` the `.keras` file goes to a temporary file and is loaded with
        `safe_mode=True` (this needs Keras installed). `format="savedmodel"` needs a path.
        """
        if path is not None:
            return self.download_to(model, Path(path), version, label, format)
        if format != "keras":
            raise ValueError("Only a 'keras' download can be loaded; give a path for others.")
        import keras

        with tempfile.TemporaryDirectory(prefix="fitserve-") as folder:
            file = self.download_to(model, Path(folder) / "model.keras", version, label, format)
            return keras.saving.load_model(file, safe_mode=True)

    def download_to(
        self, model: str, path: Path, version: int | None, label: str | None, format: str
    ) -> Path:
        """Stream the download into `path` through a temp file beside it; returns `path`.

        An interrupted download leaves neither a partial file nor a damaged earlier one.
        """
        url = self.model_path(model, version, label) + "/download"
        return self.stream_to(url, path, {"format": format})

    def stream_to(self, url: str, path: Path, params: dict[str, str]) -> Path:
        """Stream a GET into `path` through a temp file beside it; returns `path`.

        An interrupted download leaves neither a partial file nor a damaged earlier one.
        """
        response = self.request("GET", url, params=params, stream=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.parent / f".{path.name}.{secrets.token_hex(8)}.part"
        # Created as any new file is (0666 less the umask), not mkstemp's private 0600.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with response, os.fdopen(fd, "wb") as handle:
                for chunk in response.iter_content(1 << 20):
                    handle.write(chunk)
            os.replace(partial, path)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        return path


def error_from_response(response: requests.Response) -> FitserveError:
    """The problem document of an error answer (or one made from a non-JSON answer)."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = response.text.strip()[:500]
        problem = {"title": response.reason, "detail": text or response.reason}
    problem.setdefault("status", response.status_code)
    return FitserveError(response.status_code, problem)


def connection_reason(error: BaseException) -> str:
    """Why no answer came, in a few words, from the chain of errors requests and urllib3 wrap
    around the socket's (`connection refused`, `timed out`, `host not found`...)."""
    seen: list[BaseException] = []
    pending: list[Any] = [error]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or any(current is e for e in seen):
            continue
        seen.append(current)
        pending += [getattr(current, "reason", None), current.__cause__, current.__context__]
        pending += list(current.args)
    for found in seen:
        if isinstance(found, ConnectionRefusedError):
            return "connection refused"
        if isinstance(found, socket.gaierror):
            return "host not found"
        if isinstance(found, ConnectionResetError):
            return "connection reset"
    if any(isinstance(found, requests.Timeout | TimeoutError) for found in seen):
        return "timed out"
    if any(isinstance(found, requests.exceptions.SSLError) for found in seen):
        return "TLS handshake failed"
    return type(seen[-1]).__name__


def top_classes(scores: np.ndarray, names: Sequence[str] | None) -> np.ndarray:
    """Each row's most likely class: its name when the model's classes are named, else its id.

    One sigmoid unit per row is class 1 when its score is at least 0.5.
    """
    scores = np.asarray(scores)
    flat = scores.reshape(len(scores), -1)
    ids = (flat[:, 0] >= 0.5).astype(np.int64) if flat.shape[1] == 1 else flat.argmax(axis=1)
    if names and len(names) == max(flat.shape[1], 2):
        return np.asarray(names)[ids]
    return ids


def error_from_tus(error: TusCommunicationError) -> FitserveError:
    """tuspy's error as the client's: the server's problem document where it sent one."""
    status = error.status_code or 0
    content = error.response_content or b""
    try:
        problem = json.loads(content)
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"code": "upload_failed" if status else "connection_failed", "detail": str(error)}
    problem.setdefault("status", status)
    return FitserveError(status, problem)


def segment(value: str) -> str:
    """An id or name made safe as one URL path segment."""
    return quote(str(value), safe="")


def plain_array(name: str, value: Any) -> np.ndarray:
    """`value` as a numpy array that needs no pickle (object arrays are refused here)."""
    array = np.asarray(value)
    if array.dtype.hasobject:
        raise ValueError(
            f"Array {name!r} has dtype object, which would need pickle; "
            "give numbers (or strings of one type)."
        )
    return array


def named_inputs(inputs: ArrayInput, tensors: list[dict]) -> dict[str, np.ndarray]:
    """`{input name: array}` for a model whose metadata lists `tensors`; floats are sent in the
    model's float type (the server would cast them to it), numbers of other types as they are."""
    if isinstance(inputs, Mapping):
        arrays = {name: plain_array(name, value) for name, value in inputs.items()}
    elif len(tensors) == 1:
        arrays = {tensors[0]["name"]: plain_array("inputs", inputs)}
    else:
        names = [tensor["name"] for tensor in tensors]
        raise ValueError(f"This model takes {len(names)} inputs; give {{name: array}} for {names}.")
    wanted = {tensor["name"]: DTYPES.get(tensor["datatype"]) for tensor in tensors}
    for name, array in arrays.items():
        dtype = wanted.get(name)
        if array.dtype.name not in DATATYPES:
            raise ValueError(f"Array {name!r} has dtype {array.dtype}; give numbers.")
        if dtype is not None and array.dtype.kind == "f" and np.dtype(dtype).kind == "f":
            arrays[name] = array.astype(dtype, copy=False)
    return arrays


def check_rows(arrays: Mapping[str, np.ndarray]) -> int:
    """The row count the arrays share (ValueError if they differ or one has no rows axis)."""
    counts = {name: len(array) if array.ndim else -1 for name, array in arrays.items()}
    if -1 in counts.values() or len(set(counts.values())) != 1:
        raise ValueError(f"Every input needs rows, the same number of them; got {counts}.")
    return next(iter(counts.values()))


def binary_outputs(response: requests.Response) -> dict[str, np.ndarray]:
    """An inference answer's outputs, read from the bytes after its JSON header (or its JSON
    `data` where an output came as JSON)."""
    length = int(response.headers.get(INFERENCE_HEADER, len(response.content)))
    header = json.loads(response.content[:length])
    outputs, offset = {}, length
    for tensor in header["outputs"]:
        dtype = np.dtype(DTYPES[tensor["datatype"]]).newbyteorder("<")
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is None:
            array = np.asarray(tensor["data"], dtype=dtype)
        else:
            array = np.frombuffer(
                response.content, dtype=dtype, count=size // dtype.itemsize, offset=offset
            )
            offset += size
        outputs[tensor["name"]] = array.reshape(tensor["shape"])
    return outputs


def spec_from_keras(
    model: Any,
    data: str | Mapping[str, Any],
    *,
    fit: Mapping[str, Any] | None = None,
    compile: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict:
    """A job request for a live `keras.Model`: its `to_json()` and its compile settings.

    Args:
        model: a Sequential or Functional model; compiled, unless `compile` is given.
        data: a dataset id (its arrays `x` and `y` are used), a dataset manifest, or the
            request's whole `data` section (`{"dataset": id, "x": ..., "y": ...}`).
        fit: the `fit` section (`epochs`, `batch_size`, `validation_split`, ...).
        compile: the `compile` section, instead of the model's own compile settings.
        fields: other top-level sections: `name`, `seed`, `priority`, `checkpoint`, ...

    Live Keras callbacks in `fit["callbacks"]` become their request form: EarlyStopping,
    ReduceLROnPlateau and TerminateOnNaN from their settings, ModelCheckpoint as the request's
    `checkpoint` (its monitor and mode: the service writes checkpoints itself).

    Raises ValueError when the model is not compiled and no `compile` is given, or for a
    callback the service does not run.
    """
    compile_section = dict(compile) if compile is not None else compile_of(model)
    if not compile_section:
        raise ValueError(
            "The model is not compiled: call model.compile(...) or pass compile={...}."
        )
    spec = {
        **fields,
        "model": json.loads(model.to_json()),
        "compile": compile_section,
        "data": data_section(data),
    }
    if fit is not None:
        spec["fit"] = dict(fit)
        if spec["fit"].get("callbacks"):
            callbacks, checkpoint = callbacks_section(spec["fit"]["callbacks"])
            spec["fit"]["callbacks"] = callbacks
            if checkpoint is not None:
                spec.setdefault("checkpoint", checkpoint)
    return spec


# The settings of each callback the service runs, as its request grammar takes them (the
# server's allowlist, `core.grammar.allowlist.CALLBACK_CLASSES`; a test keeps them equal).
CALLBACK_SETTINGS: dict[str, tuple[str, ...]] = {
    "EarlyStopping": (
        "monitor",
        "min_delta",
        "patience",
        "verbose",
        "mode",
        "baseline",
        "restore_best_weights",
        "start_from_epoch",
    ),
    "ReduceLROnPlateau": (
        "monitor",
        "factor",
        "patience",
        "verbose",
        "mode",
        "min_delta",
        "cooldown",
        "min_lr",
    ),
    "TerminateOnNaN": ("raise_error",),
}
CHECKPOINT_SETTINGS = ("monitor", "mode")


def callbacks_section(callbacks: Sequence[Any]) -> tuple[list[Any], dict | None]:
    """Live callbacks as `{"class_name", "config"}` (request forms pass unchanged), and the
    `checkpoint` section a ModelCheckpoint stands for (None without one)."""
    converted: list[Any] = []
    checkpoint = None
    for index, callback in enumerate(callbacks):
        if isinstance(callback, Mapping):
            converted.append(dict(callback))
            continue
        name = type(callback).__name__
        if name == "ModelCheckpoint":
            checkpoint = callback_settings(callback, CHECKPOINT_SETTINGS)
        elif name in CALLBACK_SETTINGS:
            config = callback_settings(callback, CALLBACK_SETTINGS[name])
            converted.append({"class_name": name, "config": config})
        else:
            runs = ", ".join([*CALLBACK_SETTINGS, "ModelCheckpoint (as the checkpoint section)"])
            raise ValueError(
                f"fit.callbacks[{index}] is a {name}, which the service does not run. "
                f"It runs {runs}."
            )
    return converted, checkpoint


def callback_settings(callback: Any, names: Sequence[str]) -> dict[str, Any]:
    """The settings of a live callback the request takes: from `get_config()` where the
    callback has one, else from the attributes Keras keeps its constructor arguments in."""
    config = callback.get_config() if hasattr(callback, "get_config") else {}
    found = {name: config.get(name, getattr(callback, name, None)) for name in names}
    return {name: plain_value(value) for name, value in found.items() if value is not None}


def plain_value(value: Any) -> Any:
    """A numpy scalar as its Python number, so the setting goes into JSON."""
    return value.item() if isinstance(value, np.generic) else value


def compile_of(model: Any) -> dict:
    """The model's compile settings as our `compile` section ({} when it is not compiled).

    Keras serializes objects with `module` and `registered_name`; the request takes
    `{"class_name", "config"}`, and unset options are left out so the server's defaults apply.
    """
    config = model.get_compile_config() or {}
    return {
        key: strip_serialization(config[key]) for key in COMPILE_KEYS if config.get(key) is not None
    }


def strip_serialization(value: Any) -> Any:
    """Keras's serialized objects reduced to `{"class_name", "config"}`, recursively."""
    if isinstance(value, dict):
        if "class_name" in value and "config" in value:
            return {
                "class_name": value["class_name"],
                "config": strip_serialization(value["config"]),
            }
        return {key: strip_serialization(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strip_serialization(item) for item in value]
    return value


def data_section(data: str | Mapping[str, Any]) -> dict:
    """A dataset id or manifest becomes `{"dataset": id, "x": "x", "y": "y"}`."""
    if isinstance(data, str):
        return {"dataset": data, "x": "x", "y": "y"}
    if "dataset" in data:
        return dict(data)
    if "id" in data:
        return {"dataset": data["id"], "x": "x", "y": "y"}
    raise ValueError("data must be a dataset id, a dataset manifest, or a data section.")
