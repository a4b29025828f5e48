"""The `fitserve` command: datasets, jobs, predictions and API keys from a terminal.

Exit codes: 0 done; 1 the server refused the request (its problem document is printed);
2 a usage or local input mistake; 3 the server could not be reached; 4 a followed job did
not succeed (it ended failed or cancelled, or `--wait-timeout` passed).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from client.api import Client, top_classes
from client.errors import ConnectionFailed, FitserveError, JobFailed
from client.progress import TERMINAL, ProgressDisplay, TransferDisplay, describe_stop, render_job
from client.uploads import RESUMABLE_THRESHOLD

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_JOB_FAILED = 4


class InputError(Exception):
    """A local file or argument the command cannot use (exit code 2)."""


# -- output ---------------------------------------------------------------------------------


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=False))


def print_table(rows: list[list[Any]], headers: list[str]) -> None:
    """Columns padded to their widest cell; `-` for missing values."""
    cells = [[("-" if value is None else str(value)) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        padded = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(padded).rstrip())


def describe_arrays(manifest: dict) -> str:
    arrays = manifest.get("arrays") or {}
    return ", ".join(
        f"{name}{tuple(info.get('shape', []))}:{info.get('dtype', '?')}"
        for name, info in arrays.items()
    )


def show(args: argparse.Namespace, document: Any, human: Callable[[Any], None]) -> None:
    """`--json` prints the document as the server sent it; otherwise `human` renders it."""
    if args.json:
        print_json(document)
    else:
        human(document)


def print_datasets(items: list[dict]) -> None:
    rows = [
        [
            d.get("id"),
            d.get("created_at"),
            d.get("rows"),
            d.get("bytes"),
            (d.get("source") or {}).get("filename"),
            describe_arrays(d),
        ]
        for d in items
    ]
    print_table(rows, ["ID", "CREATED", "ROWS", "BYTES", "FILE", "ARRAYS"])


def print_dataset(manifest: dict) -> None:
    """A dataset's facts, then one row per array with its statistics."""
    source = manifest.get("source") or {}
    facts = [
        ["id", manifest.get("id")],
        ["status", manifest.get("status", "ready")],
        ["created", manifest.get("created_at")],
        ["source", f"{source.get('filename') or '-'} ({source.get('format') or '?'})"],
        ["rows", manifest.get("rows")],
        ["bytes", manifest.get("bytes")],
    ]
    for label in ("classes", "features"):
        for array, listed in (manifest.get(label) or {}).items():
            facts.append([f"{label} of {array}", ", ".join(map(str, listed))])
    print_table(facts, ["DATASET", ""])
    print()
    rows = []
    for name, info in (manifest.get("arrays") or {}).items():
        stats = info.get("stats") or {}
        labels = stats.get("labels")
        rows.append(
            [
                name,
                "x".join(map(str, info.get("shape") or [])) or "scalar",
                info.get("dtype"),
                short_number(stats.get("min")),
                short_number(stats.get("max")),
                f"{stats.get('nan', 0)}/{stats.get('inf', 0)}",
                None if labels is None else len(labels),
            ]
        )
    print_table(rows, ["ARRAY", "SHAPE", "DTYPE", "MIN", "MAX", "NAN/INF", "LABELS"])


def short_number(value: Any) -> Any:
    """A float with 6 significant digits (float32 statistics print as 6.099999904632568)."""
    return f"{value:.6g}" if isinstance(value, float) else value


def shape_text(shape: list | None) -> str:
    return "(" + ", ".join("None" if dim is None else str(dim) for dim in shape or []) + ")"


def print_validation(summary: dict) -> None:
    """A valid request: the model as it will be built (Keras's summary columns) and its cost."""
    print("valid: the request can be submitted")
    rows = [
        [
            layer.get("name"),
            layer.get("class_name"),
            shape_text(layer.get("output_shape")),
            layer.get("params"),
        ]
        for layer in summary.get("layers") or []
    ]
    print_table(rows, ["LAYER", "CLASS", "OUTPUT SHAPE", "PARAMS"])
    print(
        f"params: {summary.get('total_params')} "
        f"(trainable {summary.get('trainable_params')}, "
        f"non-trainable {summary.get('non_trainable_params')})"
    )
    cost = summary.get("cost") or {}
    budget = cost.get("budget") or {}
    if cost:
        print(
            f"memory: {cost.get('memory_bytes')} bytes of {budget.get('memory_bytes', '?')}; "
            f"flops per epoch: {cost.get('flops_per_epoch')} of "
            f"{budget.get('flops_per_epoch', '?')}"
        )


def print_predictions(outputs: Any, classes: Any) -> None:
    """One row per input row: each output's values (shortened), and the class when known."""
    named = outputs if isinstance(outputs, dict) else {"output": outputs}
    rows = []
    count = len(next(iter(named.values())))
    for index in range(count):
        row: list[Any] = [index]
        if classes is not None:
            row.append(classes[index])
        row += [short_values(array[index]) for array in named.values()]
        rows.append(row)
    headers = ["ROW", *(["CLASS"] if classes is not None else []), *[n.upper() for n in named]]
    print_table(rows, headers)


def short_values(value: Any, limit: int = 6) -> str:
    flat = np.asarray(value).reshape(-1)
    shown = " ".join(f"{number:.4g}" for number in flat[:limit].tolist())
    return shown + (f" ... ({flat.size} values)" if flat.size > limit else "")


def print_classes(rows: list[list[tuple[str, float]]]) -> None:
    table = [
        [
            index,
            *([pairs[0][0], f"{pairs[0][1]:.4f}"] if pairs else [None, None]),
            ", ".join(f"{name} {score:.4f}" for name, score in pairs[1:]),
        ]
        for index, pairs in enumerate(rows)
    ]
    print_table(table, ["ROW", "CLASS", "SCORE", "OTHERS"])


def job_epoch(job: dict) -> str | None:
    """`5/10`: the epochs ended of those asked for."""
    progress = job.get("progress") or {}
    completed = progress.get("completed", progress.get("epoch"))
    if completed is None:
        return None
    epochs = progress.get("epochs")
    return f"{completed}/{epochs}" if epochs else str(completed)


def print_jobs(items: list[dict]) -> None:
    rows = [
        [
            j.get("id"),
            j.get("name"),
            j.get("status"),
            job_epoch(j),
            queue_place(j),
            format_tags(j.get("tags")),
            j.get("created_at"),
        ]
        for j in items
    ]
    print_table(rows, ["ID", "NAME", "STATUS", "EPOCH", "QUEUE", "TAGS", "CREATED"])


def queue_place(job: dict) -> str | None:
    """`3 (2 ahead, start ~2026-01-01T12:00:00Z)` for a queued job, None otherwise."""
    queue = job.get("queue") or {}
    if queue.get("position") is None:
        return None
    start = queue.get("expected_start")
    when = f", start ~{start}" if start else ""
    return f"{queue['position']} ({queue['ahead']} ahead{when})"


def format_tags(tags: dict | None) -> str | None:
    return ",".join(f"{key}={value}" for key, value in tags.items()) if tags else None


def print_job(job: dict) -> None:
    """A job as `field  value` lines: where it stands, then what it was made from."""
    queue = job.get("queue") or {}
    warm = job.get("warm_start") or {}
    rows: list[list[Any]] = [
        ["id", job.get("id")],
        ["name", job.get("name")],
        ["state", render_job(job)],
        ["queue", queue_place(job) or queue.get("message")],
        ["tags", format_tags(job.get("tags"))],
        ["cloned from", job.get("cloned_from")],
    ]
    if warm:
        rows += [
            ["warm start", f"{warm.get('job')} version {warm.get('version')}"],
            ["loaded", ", ".join(warm.get("loaded") or []) or None],
            ["skipped", ", ".join(warm.get("skipped") or []) or None],
        ]
    rows += [["created", job.get("created_at")], ["finished", job.get("finished_at")]]
    print_table([row for row in rows if row[1]], ["FIELD", "VALUE"])


# -- local inputs ---------------------------------------------------------------------------


def read_json_file(path: str) -> Any:
    """A JSON file (`-` for stdin), or InputError saying where it is broken."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        return json.loads(text)
    except OSError as error:
        raise InputError(f"Cannot read {path}: {error.strerror}.") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON: {error}.") from None


def read_inputs(path: str) -> Any:
    """Model inputs from a `.npy`, `.npz` (one array, or one per named input) or `.json` file.

    JSON may be a list (one input), `{"inputs": ...}`, `{"instances": [...]}` or
    `{input_name: list}`.
    """
    suffix = Path(path).suffix.lower()
    if suffix in {".npy", ".npz"}:
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InputError(f"Cannot read {path} as numpy data: {error}.") from None
        if suffix == ".npy":
            return loaded
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
        return next(iter(arrays.values())) if len(arrays) == 1 else arrays
    if suffix == ".json":
        return inputs_from_json(read_json_file(path))
    raise InputError(f"{path}: inputs must be a .npy, .npz or .json file.")


def inputs_from_json(document: Any) -> Any:
    if isinstance(document, dict) and "inputs" in document:
        return document["inputs"]
    if isinstance(document, dict) and "instances" in document:
        rows = document["instances"]
        if rows and all(isinstance(row, dict) for row in rows):
            return {name: [row[name] for row in rows] for name in rows[0]}
        return rows
    return document


def save_outputs(outputs: Any, path: str) -> str:
    """Save predictions: one array to `.npy`, named outputs to `.npz`."""
    target = Path(path)
    if isinstance(outputs, dict):
        if target.suffix != ".npz":
            raise InputError(f"The model has named outputs; save them to a .npz, not {path}.")
        np.savez(target, **outputs)
        return ", ".join(f"{name}{value.shape}" for name, value in outputs.items())
    if target.suffix != ".npy":
        raise InputError(f"Save predictions to a .npy file, not {path}.")
    np.save(target, outputs, allow_pickle=False)
    return str(outputs.shape)


def jsonable(outputs: Any) -> Any:
    if isinstance(outputs, dict):
        return {name: value.tolist() for name, value in outputs.items()}
    return outputs.tolist()


# -- commands -------------------------------------------------------------------------------


def datasets_upload(client: Client, args: argparse.Namespace) -> int:
    if not Path(args.file).is_file():
        raise InputError(f"No such file: {args.file}.")
    client.resumable_threshold = args.resumable_above
    display = TransferDisplay()
    try:
        manifest = client.upload_file(args.file, name=args.name, label=args.label, progress=display)
    finally:
        display.close()
    show(args, manifest, lambda m: print(f"{m['id']}  {m.get('rows')} rows  {describe_arrays(m)}"))
    return 0


def datasets_list(client: Client, args: argparse.Namespace) -> int:
    items = client.list_datasets(args.limit)
    show(args, {"items": items}, lambda d: print_datasets(d["items"]))
    return 0


def datasets_show(client: Client, args: argparse.Namespace) -> int:
    show(args, client.get_dataset(args.id), print_dataset)
    return 0


def datasets_rm(client: Client, args: argparse.Namespace) -> int:
    client.delete_dataset(args.id)
    show(args, {"id": args.id, "deleted": True}, lambda d: print(f"deleted dataset {d['id']}"))
    return 0


def read_spec(path: str) -> dict:
    spec = read_json_file(path)
    if not isinstance(spec, dict):
        raise InputError(f"{path} must hold a JSON object (the job request).")
    return spec


def jobs_submit(client: Client, args: argparse.Namespace) -> int:
    job = client.submit(read_spec(args.spec), idempotency_key=args.idempotency_key)
    if args.follow:
        if not args.json:
            print(job["id"])
        return follow_job(client, job["id"], args)
    show(args, job, lambda j: print(j["id"]))
    return 0


def jobs_validate(client: Client, args: argparse.Namespace) -> int:
    summary = client.validate(read_spec(args.spec))
    show(args, summary, print_validation)
    return 0


def jobs_list(client: Client, args: argparse.Namespace) -> int:
    tags = dict(split_assignment(tag, "--tag") for tag in args.tag or [])
    items = client.list_jobs(args.limit, status=args.status, tags=tags)
    show(args, {"items": items}, lambda d: print_jobs(d["items"]))
    return 0


def jobs_show(client: Client, args: argparse.Namespace) -> int:
    show(args, client.get_job(args.id), print_job)
    return 0


def jobs_clone(client: Client, args: argparse.Namespace) -> int:
    patch = read_json_file(args.patch) if args.patch else {}
    if not isinstance(patch, dict):
        raise InputError(f"{args.patch} must hold a JSON object (a merge patch).")
    setters: dict[str, Any] = {}
    for assignment in args.set or []:
        path, value = split_assignment(assignment, "--set")
        parsed = parse_value(value)
        keys = path.split(".")
        if path.startswith("/") or any(key.isascii() and key.isdigit() for key in keys):
            setters[path if path.startswith("/") else "/" + "/".join(map(escape, keys))] = parsed
        else:
            patch = merge_into(patch, keys, parsed)
    job = client.clone(args.id, patch, setters, idempotency_key=args.idempotency_key)
    if args.follow:
        if not args.json:
            print(job["id"])
        return follow_job(client, job["id"], args)
    show(args, job, lambda j: print(j["id"]))
    return 0


def split_assignment(text: str, option: str) -> tuple[str, str]:
    """`key=value` as (key, value); InputError when there is no `=` or no key."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise InputError(f"{option} takes KEY=VALUE, got {text!r}.")
    return key, value


def parse_value(text: str) -> Any:
    """A `--set` value: JSON when it parses (20, true, null, [1, 2]), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def escape(key: str) -> str:
    """One JSON pointer token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def merge_into(patch: dict, keys: list[str], value: Any) -> dict:
    """`patch` with `value` at the dotted path `keys` (objects made on the way)."""
    merged = dict(patch)
    node = merged
    for key in keys[:-1]:
        child = node.get(key)
        node[key] = dict(child) if isinstance(child, dict) else {}
        node = node[key]
    node[keys[-1]] = value
    return merged


def jobs_follow(client: Client, args: argparse.Namespace) -> int:
    return follow_job(client, args.id, args)


def follow_job(client: Client, job_id: str, args: argparse.Namespace) -> int:
    """Show live progress on stderr until the job ends, then its outcome once (and why training
    stopped) on stdout; exit 4 unless it succeeded."""
    display = ProgressDisplay(sys.stderr)
    job: dict = {}

    def retrying(error: FitserveError, attempt: int, retries: int, pause: float) -> None:
        display.close()  # the notice goes on its own line, below the last progress frame
        reason = error.reason if isinstance(error, ConnectionFailed) else error.describe()
        print(
            f"lost fitserve ({reason}); retrying in {pause:.0f}s (attempt {attempt} of {retries})",
            file=sys.stderr,
            flush=True,
        )

    try:
        for job in client.follow(
            job_id, interval=args.interval, timeout=args.wait_timeout, on_retry=retrying
        ):
            if job.get("status") in TERMINAL:
                break
            display.update(job)
    finally:
        display.close()
    show(args, job, print_outcome)
    if job.get("status") != "succeeded":
        print(f"error: {JobFailed(job).detail}", file=sys.stderr)
        return EXIT_JOB_FAILED
    return 0


def print_outcome(job: dict) -> None:
    """The ended job's line, and why its training stopped."""
    print(render_job(job))
    stop = describe_stop(job.get("stop"))
    if stop:
        print(stop)


def jobs_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel_job(args.id)
    show(args, job, lambda j: print(f"{j.get('id', args.id)} {j.get('status')}"))
    return 0


def jobs_pin(client: Client, args: argparse.Namespace) -> int:
    job = client.pin_job(args.id) if args.pin else client.unpin_job(args.id)
    show(args, job, lambda j: print(f"{j['id']} {render_retention(j.get('retention') or {})}"))
    return 0


def render_retention(retention: dict) -> str:
    if retention.get("pinned"):
        return "pinned: kept until deleted"
    expires = retention.get("expires_at")
    return f"expires {expires}" if expires else "kept until deleted"


def usage(client: Client, args: argparse.Namespace) -> int:
    held = client.usage()

    def render(document: dict) -> None:
        kinds = ("datasets", "jobs", "checkpoints", "exports")
        rows = [
            [kind, document[kind]["count"], human_bytes(document[kind]["bytes"])] for kind in kinds
        ]
        rows.append(["total", "", human_bytes(document["bytes"])])
        print_table(rows, ["KIND", "COUNT", "BYTES"])
        quota = document.get("quota_bytes")
        if quota:
            print(f"quota: {human_bytes(quota)} ({100 * document['bytes'] / quota:.1f}% used)")
        ttl = document.get("job_ttl_seconds")
        print(f"finished jobs expire after {ttl} s unless pinned" if ttl else "jobs never expire")

    show(args, held, render)
    return 0


def human_bytes(count: int) -> str:
    """`1536` -> `1.5 KiB`."""
    size, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"


def jobs_rm(client: Client, args: argparse.Namespace) -> int:
    client.delete_job(args.id)
    show(args, {"id": args.id, "deleted": True}, lambda d: print(f"deleted job {d['id']}"))
    return 0


def jobs_logs(client: Client, args: argparse.Namespace) -> int:
    lines = client.job_logs(args.id, tail=args.tail)
    show(args, {"lines": lines}, lambda d: print("\n".join(d["lines"])))
    return 0


def read_document(path: str, what: str) -> dict:
    document = read_json_file(path)
    if not isinstance(document, dict):
        raise InputError(f"{path} must hold a JSON object ({what}).")
    return document


def sweeps_submit(client: Client, args: argparse.Namespace) -> int:
    body = read_document(args.spec, "the sweep request")
    sweep = client.submit_sweep(body)
    if args.follow:
        if not args.json:
            print(sweep["id"])
        return follow_sweep(client, sweep["id"], args)
    show(args, sweep, lambda s: print(s["id"]))
    return 0


def sweeps_list(client: Client, args: argparse.Namespace) -> int:
    items = client.list_sweeps(args.limit)
    rows = [
        [s["id"], s.get("name") or "", s["status"], len(s["trials"]), s.get("best_objective")]
        for s in items
    ]
    headers = ["ID", "NAME", "STATUS", "TRIALS", "BEST"]
    show(args, {"items": items}, lambda _: print_table(rows, headers))
    return 0


def sweeps_show(client: Client, args: argparse.Namespace) -> int:
    show(args, client.get_sweep(args.id), print_sweep)
    return 0


def sweeps_cancel(client: Client, args: argparse.Namespace) -> int:
    sweep = client.cancel_sweep(args.id)
    show(args, sweep, lambda s: print(f"{s['id']} {s['status']}"))
    return 0


def sweeps_follow(client: Client, args: argparse.Namespace) -> int:
    return follow_sweep(client, args.id, args)


def follow_sweep(client: Client, sweep_id: str, args: argparse.Namespace) -> int:
    """Print the trials table on stderr whenever it changes until the sweep ends; exit 4
    unless it succeeded."""
    sweep: dict = {}
    last = None
    for sweep in client.follow_sweep(sweep_id, interval=args.interval, timeout=args.wait_timeout):
        table = sweep_table(sweep) if "trials" in sweep else sweep.get("status")
        if table != last:
            print(table, file=sys.stderr, flush=True)
            last = table
    show(args, sweep, print_sweep)
    if sweep.get("status") != "succeeded":
        print(f"error: sweep {sweep_id} ended {sweep.get('status')}", file=sys.stderr)
        return EXIT_JOB_FAILED
    return 0


def sweep_table(sweep: dict) -> str:
    """The sweep's status line and one row per trial: its params, state and objective."""
    pointers = list(sweep["space"])
    rows = [
        [t["number"], t["state"], t["epochs"], t["objective"]]
        + [t["params"].get(pointer) for pointer in pointers]
        + [t["job"] or ""]
        for t in sweep["trials"]
    ]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print(
            f"sweep {sweep['id']} {sweep['status']}: {len(sweep['trials'])}/{sweep['max_trials']} "
            f"trials, best {sweep.get('best_objective')} (trial {sweep.get('best_trial')})"
        )
        print_table(rows, ["TRIAL", "STATE", "EPOCHS", "OBJECTIVE", *pointers, "JOB"])
    return buffer.getvalue().rstrip("\n")


def print_sweep(sweep: dict) -> None:
    print(sweep_table(sweep))


def predict(client: Client, args: argparse.Namespace) -> int:
    inputs = read_inputs(args.inputs)
    outputs = client.predict(args.model, inputs, **version_of(args))
    if args.output:
        shape = save_outputs(outputs, args.output)
        show(args, {"saved": args.output}, lambda d: print(f"saved {shape} to {d['saved']}"))
        return 0
    classes = None
    if not isinstance(outputs, dict) and is_class_scores(outputs):
        classes = top_classes(outputs, client.class_names(args.model, **version_of(args)))
    document = {"outputs": jsonable(outputs)}
    if classes is not None:
        document["classes"] = classes.tolist()
    show(args, document, lambda _: print_predictions(outputs, classes))
    return 0


def is_class_scores(outputs: np.ndarray) -> bool:
    """Scores per class in [0, 1] (softmax or sigmoid): worth naming each row's class."""
    return outputs.ndim == 2 and bool(np.all((outputs >= 0) & (outputs <= 1)))


def classify(client: Client, args: argparse.Namespace) -> int:
    rows = client.classify(args.model, read_inputs(args.inputs), k=args.k, **version_of(args))
    show(args, {"result": rows}, lambda d: print_classes(d["result"]))
    return 0


def batch_predict(client: Client, args: argparse.Namespace) -> int:
    """Queue a batch prediction; with --wait (or --output) wait for it and report the result."""
    version: int | str | None = args.version if args.version is not None else args.label
    batch = client.submit_batch(
        args.model, args.dataset, version=version, x=args.x, batch_size=args.batch_size
    )
    if not (args.wait or args.output):
        show(args, batch, lambda b: print(f"queued batch prediction {b['id']}"))
        return 0
    done = client.wait_batch(batch["id"], timeout=args.wait_timeout)
    result = done["result_dataset"]
    if args.output:
        client.download_dataset(result, args.output, format=args.format)
    rows = done["progress"]["rows"]
    saved = f", saved to {args.output}" if args.output else ""
    show(args, done, lambda b: print(f"scored {rows} rows: dataset {result}{saved}"))
    return 0


def datasets_download(client: Client, args: argparse.Namespace) -> int:
    path = args.path or f"{args.id}.{args.format}"
    saved = client.download_dataset(args.id, path, format=args.format, array=args.array)
    show(args, {"path": str(saved)}, lambda d: print(f"saved {d['path']}"))
    return 0


def models_list(client: Client, args: argparse.Namespace) -> int:
    items = client.list_models(args.limit)
    show(args, {"items": items}, lambda d: print_models(d["items"]))
    return 0


def print_models(items: list[dict]) -> None:
    rows = [
        [
            m.get("id"),
            m.get("name"),
            m.get("status"),
            ",".join(map(str, m.get("versions") or [])),
            " ".join(f"{label}={v}" for label, v in (m.get("labels") or {}).items()),
        ]
        for m in items
    ]
    print_table(rows, ["ID", "NAME", "STATUS", "VERSIONS", "LABELS"])


def models_show(client: Client, args: argparse.Namespace) -> int:
    print_json(client.model_metadata(args.model, **version_of(args)))
    return 0


def models_download(client: Client, args: argparse.Namespace) -> int:
    suffix = ".keras" if args.format == "keras" else ".savedmodel.tar.gz"
    path = args.path or args.model + suffix
    saved = client.download_model(args.model, path, format=args.format, **version_of(args))
    show(args, {"path": str(saved)}, lambda d: print(f"saved {d['path']}"))
    return 0


def keys_create(_: Client | None, args: argparse.Namespace) -> int:
    """Make a key locally; the server is given only the entry (the key's sha256)."""
    key = "fs_" + secrets.token_urlsafe(32)
    entry = f"{args.name}:{hashlib.sha256(key.encode()).hexdigest()}"
    entry += ":admin" if args.admin else ""
    if args.json:
        print_json({"name": args.name, "key": key, "entry": entry})
    else:
        print(f"key:   {key}")
        print(f"entry: {entry}   (add to FITSERVE_API_KEYS; the key itself is not stored)")
    return 0


def version_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"version": args.version, "label": args.label}


# -- the parser -----------------------------------------------------------------------------


def common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (`--json` anywhere)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--url", default=argparse.SUPPRESS, help="server URL (FITSERVE_URL)")
    parent.add_argument("--key", default=argparse.SUPPRESS, help="API key (FITSERVE_API_KEY)")
    parent.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    parent.add_argument(
        "--timeout", type=float, default=argparse.SUPPRESS, help="seconds per HTTP request"
    )
    return parent


def add_version_options(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="checkpoint version (epochs completed)")
    which.add_argument("--label", choices=["best", "latest", "final"], help="version label")


def add_follow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument(
        "--wait-timeout", type=float, default=None, help="give up after this many seconds"
    )


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="fitserve",
        description="Train Keras models on fitserve and predict with them.",
        parents=[common],
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def command(sub: Any, name: str, run: Callable, help_text: str) -> argparse.ArgumentParser:
        leaf = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        leaf.set_defaults(run=run)
        return leaf

    datasets = groups.add_parser("datasets", help="upload, list, show and delete datasets")
    sub = datasets.add_subparsers(dest="command", required=True, metavar="COMMAND")
    upload = command(sub, "upload", datasets_upload, "upload a .npz, .npy or .csv file")
    upload.add_argument("file")
    upload.add_argument("--name", help="the array's name for a .npy (server default: x)")
    upload.add_argument("--label", help="the label column of a .csv (server default: label)")
    upload.add_argument(
        "--resumable-above",
        type=int,
        default=RESUMABLE_THRESHOLD,
        metavar="BYTES",
        help="files larger than this go up as resumable uploads, with a progress bar, and "
        f"resume where an interrupted one stopped (default {RESUMABLE_THRESHOLD})",
    )
    command(sub, "list", datasets_list, "list datasets").add_argument("--limit", type=int)
    command(sub, "show", datasets_show, "show a dataset's manifest").add_argument("id")
    command(sub, "rm", datasets_rm, "delete a dataset").add_argument("id")
    fetch = command(sub, "download", datasets_download, "download a dataset")
    fetch.add_argument("id")
    fetch.add_argument("path", nargs="?", help="where to save it (default: <id>.<format>)")
    fetch.add_argument("--format", choices=["npz", "npy", "csv"], default="npz")
    fetch.add_argument("--array", help="the array of a .npy download")

    jobs = groups.add_parser("jobs", help="submit, follow, cancel and inspect training jobs")
    sub = jobs.add_subparsers(dest="command", required=True, metavar="COMMAND")
    submit = command(sub, "submit", jobs_submit, "submit a job request from a JSON file")
    submit.add_argument("spec", help="the job request as JSON (- for stdin)")
    submit.add_argument("--follow", action="store_true", help="show progress until it ends")
    submit.add_argument("--idempotency-key", help="resubmitting with it returns the same job")
    add_follow_options(submit)
    validate = command(sub, "validate", jobs_validate, "check a job request, enqueue nothing")
    validate.add_argument("spec", help="the job request as JSON (- for stdin)")
    listing = command(sub, "list", jobs_list, "list jobs")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--status", help="only jobs in this state")
    listing.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="only jobs with this tag (repeatable)"
    )
    command(sub, "show", jobs_show, "show a job's record").add_argument("id")
    clone = command(sub, "clone", jobs_clone, "submit a new job from a job's request, changed")
    clone.add_argument("id")
    clone.add_argument(
        "--set",
        action="append",
        metavar="PATH=VALUE",
        help="change one setting: a dotted path (fit.epochs=20) merges into the request; a JSON "
        "pointer (/model/layers/0/config/units=64) or a dotted path with an index "
        "(model.layers.0.config.units=64) sets that element; VALUE is JSON, else text",
    )
    clone.add_argument("--patch", help="a JSON Merge Patch file over the request (- for stdin)")
    clone.add_argument("--follow", action="store_true", help="show progress until it ends")
    clone.add_argument("--idempotency-key", help="cloning again with it returns the same job")
    add_follow_options(clone)
    follow = command(sub, "follow", jobs_follow, "show a job's progress until it ends")
    follow.add_argument("id")
    add_follow_options(follow)
    command(sub, "cancel", jobs_cancel, "cancel a job").add_argument("id")
    command(sub, "rm", jobs_rm, "delete a finished job").add_argument("id")
    pin = command(sub, "pin", jobs_pin, "keep a finished job past the server's job TTL")
    pin.add_argument("id")
    pin.set_defaults(pin=True)
    unpin = command(sub, "unpin", jobs_pin, "let a pinned job expire again")
    unpin.add_argument("id")
    unpin.set_defaults(pin=False)
    logs = command(sub, "logs", jobs_logs, "print a job's training log")
    logs.add_argument("id")
    logs.add_argument("--tail", type=int, help="only the last N lines (server default: 1000)")

    sweeps = groups.add_parser("sweeps", help="submit, follow, cancel and inspect sweeps")
    sub = sweeps.add_subparsers(dest="command", required=True, metavar="COMMAND")
    submit = command(sub, "submit", sweeps_submit, "submit a sweep request from a JSON file")
    submit.add_argument("spec", help="the sweep request as JSON (- for stdin)")
    submit.add_argument("--follow", action="store_true", help="show its trials until it ends")
    add_follow_options(submit)
    command(sub, "list", sweeps_list, "list sweeps").add_argument("--limit", type=int)
    command(sub, "show", sweeps_show, "show a sweep and its trials").add_argument("id")
    command(sub, "cancel", sweeps_cancel, "cancel a sweep and its live trials").add_argument("id")
    follow = command(sub, "follow", sweeps_follow, "show a sweep's trials until it ends")
    follow.add_argument("id")
    add_follow_options(follow)

    predicting = command(groups, "predict", predict, "predict with a trained model")
    predicting.add_argument("model", help="a job id, or a job name")
    predicting.add_argument("inputs", help="a .npy, .npz or .json file of inputs")
    predicting.add_argument("--output", help="save predictions to a .npy (.npz: named outputs)")
    add_version_options(predicting)
    classifying = command(groups, "classify", classify, "each row's classes, most likely first")
    classifying.add_argument("model", help="a job id, or a job name")
    classifying.add_argument("inputs", help="a .npy, .npz or .json file of inputs")
    classifying.add_argument("--k", type=int, help="only the k most likely classes")
    add_version_options(classifying)

    batch = command(groups, "batch-predict", batch_predict, "score a stored dataset on the workers")
    batch.add_argument("--dataset", required=True, help="the dataset id")
    batch.add_argument("--model", required=True, help="a job id, or a job name")
    batch.add_argument("--x", help="the array the model reads (server default: x)")
    batch.add_argument("--batch-size", type=int, help="rows per forward pass")
    batch.add_argument("--wait", action="store_true", help="wait until it ends")
    batch.add_argument("--wait-timeout", type=float, default=None, help="give up after N s")
    batch.add_argument("--output", help="save the result dataset here (waits)")
    batch.add_argument("--format", choices=["npz", "csv"], default="npz", help="of --output")
    add_version_options(batch)

    models = groups.add_parser("models", help="list trained models, show and download them")
    sub = models.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command(sub, "list", models_list, "list models (jobs with checkpoints)").add_argument(
        "--limit", type=int
    )
    shown = command(sub, "show", models_show, "show a model's inputs and outputs")
    shown.add_argument("model", help="a job id, or a job name")
    add_version_options(shown)
    download = command(sub, "download", models_download, "download a trained model")
    download.add_argument("model", help="a job id, or a job name")
    download.add_argument(
        "path", nargs="?", help="where to save it (default: <model>.keras or .savedmodel.tar.gz)"
    )
    download.add_argument("--format", choices=["keras", "savedmodel"], default="keras")
    add_version_options(download)

    command(groups, "usage", usage, "show what this key stores, against its quota")

    keys = groups.add_parser("keys", help="make API keys")
    sub = keys.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = command(sub, "create", keys_create, "make a key; print it and its settings entry")
    create.add_argument("name", help="who the key is for")
    create.add_argument("--admin", action="store_true", help="the key sees everyone's jobs")
    return parser


def make_client(args: argparse.Namespace) -> Client:
    """The client for `--url`/`--key`/`--timeout`, else FITSERVE_URL and FITSERVE_API_KEY."""
    client = Client(getattr(args, "url", None), getattr(args, "key", None))
    if getattr(args, "timeout", None):
        client.timeout = args.timeout
    return client


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `fitserve` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        # Keys are made locally: that command needs no server.
        client = None if args.run is keys_create else make_client(args)
        return args.run(client, args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionFailed as error:
        print(f"error: {error.detail}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except FitserveError as error:
        if args.json:
            print_json(error.problem)
        print(f"error: {error.describe()}", file=sys.stderr)
        if error.request_id:
            print(f"  request id: {error.request_id}", file=sys.stderr)
        return EXIT_REFUSED
    except ValueError as error:
        # The client's own refusals (NaN in JSON, object arrays) before anything is sent.
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except TimeoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
