"""Which file serves a model: a job id or name, a version or label, read from job manifests.

A job is a model, its checkpoints are versions (version N after N epochs), and `best`, `latest`
and `final` are labels. Everything here reads the data volume only, so finished jobs stay
servable while Redis is down.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson

from core.checkpoints import CheckpointCorrupt, verify_checkpoint
from core.errors import Conflict, NotFound
from core.storage import DataDir, check_id, read_json, sha256_file

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

LABELS = ("best", "latest", "final")
FINAL_FILE = "model.keras"


@dataclasses.dataclass(frozen=True)
class Servable:
    """One version of one job's model: the file to load and what the manifest says of it."""

    job_id: str
    version: int
    job_dir: Path
    entry: dict[str, Any]
    final: bool

    @property
    def key(self) -> tuple[str, int, str]:
        """Cache key: a file replaced under the same version has another sha256."""
        return (self.job_id, self.version, str(self.entry.get("sha256")))

    def verified_path(self) -> Path:
        """The file's path once its sha256 matches the manifest, else CheckpointCorrupt (503)."""
        if not self.final:
            return verify_checkpoint(self.job_dir, self.entry)
        path = self.job_dir / FINAL_FILE
        if self.entry.get("file") != FINAL_FILE or not path.is_file():
            raise CheckpointCorrupt(
                f"The final model {FINAL_FILE} of job {self.job_id} is missing."
            )
        if sha256_file(path) != self.entry.get("sha256"):
            raise CheckpointCorrupt(
                f"The final model {FINAL_FILE} of job {self.job_id} fails its sha256 check: "
                "the file changed after it was saved."
            )
        return path


class Manifests:
    """Job manifests read from the volume, each parsed again only once its file was replaced.

    Manifests are written by `os.replace`, so a new version is a new inode; (inode, mtime,
    size) tells a changed file from a seen one without parsing it. Listing models and finding
    one by name then costs a `stat` per job.
    """

    def __init__(self, data: DataDir) -> None:
        self.data = data
        self._lock = threading.Lock()
        self._parsed: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}

    def read(self, job_id: str) -> dict[str, Any]:
        """A job's manifest, or NotFound for an unknown id."""
        path = self.data.job(job_id) / "manifest.json"
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"No model {job_id!r}: no job has this id.") from None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            seen = self._parsed.get(job_id)
        if seen is not None and seen[0] == key:
            return seen[1]
        try:
            manifest = read_json(path)
        except FileNotFoundError:
            raise NotFound(f"No model {job_id!r}: no job has this id.") from None
        except orjson.JSONDecodeError:
            raise CheckpointCorrupt(f"The manifest of job {job_id} is not readable JSON.") from None
        with self._lock:
            self._parsed[job_id] = (key, manifest)
        return manifest

    def all(self) -> Iterator[dict[str, Any]]:
        """Every job manifest on the volume that reads; half-written jobs are skipped."""
        if not self.data.jobs.is_dir():
            return
        present = set()
        for folder in self.data.jobs.iterdir():
            present.add(folder.name)
            try:
                yield self.read(folder.name)
            except (NotFound, CheckpointCorrupt):
                continue
        with self._lock:  # forget deleted jobs
            for job_id in set(self._parsed) - present:
                del self._parsed[job_id]

    def find_model(self, model: str, can_see: Callable[[str | None], bool]) -> dict[str, Any]:
        """The manifest of the job `model` names: a job id, else a job name.

        A name means the newest succeeded job of that name; a job that has not succeeded (running,
        failed, cancelled) is served by its id only. Another key's job is reported exactly like an
        unknown one.
        """
        try:
            manifest = self.read(check_id(model, "model"))
        except NotFound:
            manifest = None
        if manifest is not None and can_see(manifest.get("owner")):
            return manifest
        succeeded = [
            m
            for m in self.all()
            if m.get("name") == model and m.get("status") == "succeeded" and can_see(m.get("owner"))
        ]
        if not succeeded:
            raise NotFound(
                f"No model {model[:200]!r}: no job has this id, and no succeeded job has this name "
                "(a job that has not succeeded is served by its id)."
            )
        return max(succeeded, key=lambda m: (m.get("created_at") or "", m["id"]))


class TimedCache(Generic[K, V]):
    """Answers reused for `seconds`, then computed again; thread-safe, at most `size` of them.

    Resolving a model name reads manifests; reusing the answer for a few hundred milliseconds
    takes that off the hot path, while a new checkpoint (a replaced manifest) is still seen
    within that time.
    """

    def __init__(
        self, seconds: float, size: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._seconds = seconds
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: dict[K, tuple[float, V]] = {}

    def get(self, key: K, compute: Callable[[], V]) -> V:
        """The answer for `key`, computed now if it is missing or older than `seconds`."""
        now = self._clock()
        with self._lock:
            kept = self._answers.get(key)
        if kept is not None and now - kept[0] < self._seconds:
            return kept[1]
        value = compute()  # errors are not kept: a model that appears is found at once
        with self._lock:
            self._answers.pop(key, None)
            if len(self._answers) >= self._size:
                del self._answers[next(iter(self._answers))]  # the oldest answer
            self._answers[key] = (now, value)
        return value


def version_entries(manifest: dict) -> dict[int, tuple[dict, bool]]:
    """Servable versions -> (manifest entry, is the final model); the final file wins a tie."""
    entries: dict[int, tuple[dict, bool]] = {
        entry["version"]: (entry, False) for entry in manifest.get("checkpoints") or []
    }
    final = manifest.get("final")
    if final:
        entries[final["version"]] = (final, True)
    return entries


def label_versions(manifest: dict) -> dict[str, int]:
    """The labels that point at a servable version now."""
    entries = version_entries(manifest)
    labels: dict[str, int] = {}
    if entries:
        labels["latest"] = max(entries)
    best = manifest.get("best")
    if best and best.get("version") in entries:
        labels["best"] = best["version"]
    if manifest.get("final"):
        labels["final"] = manifest["final"]["version"]
    return labels


def default_label(manifest: dict) -> str:
    """`final` once the job succeeded, else `latest`."""
    return "final" if manifest.get("final") else "latest"


def resolve_version(
    data: DataDir, manifest: dict, *, version: int | None = None, label: str | None = None
) -> Servable:
    """The servable a version number or a label (default: `final`, else `latest`) names.

    409 while the job has no checkpoint yet (naming its status), 404 for an unknown version or
    label.
    """
    job_id, status = manifest["id"], manifest.get("status")
    entries = version_entries(manifest)
    if not entries:
        raise Conflict(
            f"Model {job_id} has no servable version yet: its job is {status} "
            "and has written no checkpoint.",
            code="no_servable_version",
        )
    if version is None:
        label = label or default_label(manifest)
        if label not in LABELS:
            raise NotFound(f"No label {label[:64]!r}: labels are {', '.join(LABELS)}.")
        version = label_versions(manifest).get(label)
        if version is None:
            raise NotFound(f"Model {job_id} has no {label!r} version yet: its job is {status}.")
    if version not in entries:
        raise NotFound(f"Model {job_id} has no version {version}: versions are {sorted(entries)}.")
    entry, final = entries[version]
    return Servable(job_id, version, data.job(job_id), entry, final)
