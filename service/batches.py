"""`/v1/batch-predictions`: score a stored dataset with a model on the workers. Never scores.

The request is checked against the model's and the dataset's manifests with the lookup serving
uses (`service.servables.find_job`), recorded, and sent by task name to the training queue.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, current_app, g

from core.batch import BatchPrediction, BatchStore, parse_batch_request, view_batch
from core.errors import NotFound
from core.queues import send_batch
from service.auth import can_see, owner, viewer
from service.datasets import visible_manifest
from service.http import json_body, json_response, page_args
from service.limits import check_dataset_quota
from service.servables import find_job
from service.state import data_dir, producer, redis_client, settings

bp = Blueprint("batches", __name__, url_prefix="/v1/batch-predictions")
log = logging.getLogger("fitserve.service")


def register(app: Flask) -> None:
    app.register_blueprint(bp)


def batch_store() -> BatchStore:
    store = current_app.extensions.get("fitserve.batches")
    if store is None:
        store = BatchStore(redis_client(), data_dir(), settings())
        current_app.extensions["fitserve.batches"] = store
    return store


@bp.post("")
def submit_batch() -> Response:
    """Validate, record, enqueue: 202 with the queued batch prediction (507 when the key has
    no room for its result dataset)."""
    check_dataset_quota(owner())
    parsed = parse_batch_request(
        json_body(),
        data=data_dir(),
        settings=settings(),
        find_model=find_job,
        dataset_manifest=visible_manifest,
    )
    store = batch_store()
    batch = store.create(parsed, owner=owner(), request_id=g.get("request_id"))
    try:
        send_batch(producer(), batch)
    except BaseException:
        store.discard(batch)
        raise
    log.info("batch_submitted batch=%s request_id=%s", batch["id"], g.get("request_id"))
    location = f"/v1/batch-predictions/{batch['id']}"
    return json_response(view_batch(batch), 202, {"Location": location})


@bp.get("")
def list_batches() -> Response:
    """The caller's batch predictions (everyone's for admins), newest first."""
    limit, cursor = page_args()
    items, next_cursor = batch_store().list(owner=viewer(), limit=limit, cursor=cursor)
    return json_response({"items": [view_batch(b) for b in items], "next_cursor": next_cursor})


@bp.get("/<batch_id>")
def get_batch(batch_id: str) -> Response:
    return json_response(view_batch(visible_batch(batch_id)))


@bp.post("/<batch_id>:cancel")
def cancel_batch(batch_id: str) -> Response:
    """202 with it `cancelling` (running: it stops after its chunk) or `cancelled`."""
    visible_batch(batch_id)
    return json_response(view_batch(batch_store().request_cancel(batch_id)), 202)


@bp.delete("/<batch_id>")
def delete_batch(batch_id: str) -> tuple[str, int]:
    """Remove a finished one (409 while live); its result dataset stays."""
    visible_batch(batch_id)
    batch_store().delete(batch_id)
    return "", 204


def visible_batch(batch_id: str) -> BatchPrediction:
    """The record of a batch prediction this request may see; another key's is unknown."""
    batch = batch_store().get(batch_id)
    if not can_see(batch.get("owner")):
        raise NotFound(f"No batch prediction with id {batch_id!r}.")
    return batch
