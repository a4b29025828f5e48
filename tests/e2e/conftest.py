"""The e2e fixtures: one stack per session (tests.support.stack), shared by every e2e test.

`stack` starts redis-server, the main worker, the CPU task worker and gunicorn with the command
lines of docker-compose.yml. `healthy_stack` makes sure the main worker is back after a test that
killed it; after a failed test, `cancel_jobs_left_live` cancels what it left running, so one failure
cannot hold the shared worker for the tests after it.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator

import pytest

from tests.support.processes import stop_tree
from tests.support.stack import Stack, blobs, running_stack

# Each test's reports by phase ("setup", "call"), for the fixtures' teardown to read.
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


@pytest.fixture(autouse=True)
def cancel_jobs_left_live(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test on the session stack failed, cancel every job still live and wait until each
    has ended: its 1000-epoch job would otherwise keep the main worker busy for the next test."""
    yield
    failed = any(report.failed for report in request.node.stash.get(REPORTS, {}).values())
    if failed and "stack" in request.fixturenames:
        request.getfixturevalue("stack").cancel_live_jobs()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """redis-server, the main worker, the CPU task worker and gunicorn, ready (the worker's
    heartbeat seen, the task worker answering pings); imports read `imports/` in its folder."""
    folder = tmp_path_factory.mktemp("stack")
    (folder / "imports").mkdir()
    settings = {"FITSERVE_IMPORT_DIR": str(folder / "imports")}
    with running_stack(folder, "main", settings, tasks=True) as running:
        yield running


@pytest.fixture
def healthy_stack(stack: Stack) -> Iterator[Stack]:
    """The session stack; a test that killed or stopped the main worker gets it restarted."""
    yield stack
    for name, process in list(stack.workers.items()):
        if process.poll() is None:
            continue
        stop_tree(process)
        del stack.workers[name]
        if name == "main":
            stack.start_worker("main")


@pytest.fixture
def spare_worker(healthy_stack: Stack) -> Iterator[str]:
    """A second worker, so a job whose worker is killed has somewhere to resume; its name."""
    name = f"spare{int(time.monotonic() * 1000) % 100000}"
    healthy_stack.start_worker(name)
    yield name
    process = healthy_stack.workers.pop(name)
    stop_tree(process, timeout=30)


@pytest.fixture(scope="session")
def blobs_dataset(stack: Stack) -> str:
    """The `blobs` dataset uploaded once for the session; its id."""
    return stack.upload(**blobs())
