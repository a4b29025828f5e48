"""docker-compose.yml, the Dockerfile and .env.example agree with each other and with the code.

No Docker here: the files are parsed and checked for what the containers rely on, and the
commands they run are run (the worker's healthcheck against a live worker). `make containers`
lints the Dockerfile (hadolint) and validates the compose file against the Compose schema.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from core.devices import visible_gpu_count
from core.queues import DATASETS_QUEUE, SWEEPS_QUEUE, train_queue
from core.settings import PREFIX, Settings
from scripts.proxy import (
    TEMPLATE,
    local_proxy_command,
    proxy_command,
    render_config,
    template_values,
    write_config,
)
from scripts.requirements import GPU_TENSORFLOW, image_requirements
from scripts.stack import ROOT, compose_command, compose_services
from tests.support.processes import stop_tree, wait_for

DATA_VOLUME = "fitserve-data"
DATA_PATH = "/data"
BIN = Path(sys.executable).parent
SERVICES = compose_services()
# Services running our code on our images, by the Dockerfile target they build.
APP_SERVICES = {
    name: service
    for name, service in SERVICES.items()
    if service.get("build", {}).get("target") in {"api", "worker"}
}
# Training workers: the app that imports TensorFlow; `tasks` is the CPU task worker.
WORKERS = {
    name: service for name, service in APP_SERVICES.items() if "worker.app" in service["command"]
}
TASKS = SERVICES["tasks"]
GPU_WORKERS = {
    name: service for name, service in WORKERS.items() if service["build"]["target"] == "worker"
}


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Each build stage's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\s*\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, arguments = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            current = stages.setdefault(arguments.split(" AS ")[-1].strip(), [])
        current.append((keyword.upper(), arguments.strip()))
    return stages


def instructions(stage: str, keyword: str) -> list[str]:
    return [arguments for kw, arguments in dockerfile_stages()[stage] if kw == keyword]


def interpolated(value: str) -> str:
    """A compose value as compose resolves it when the variable is unset (`${VAR:-default}`)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def seconds(duration: str) -> int:
    """A compose duration such as `2m` or `90s` in seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


def test_the_compose_file_has_the_expected_services() -> None:
    assert {"redis", "api", "proxy", "worker", "tasks"} <= set(SERVICES)
    assert "profiles" not in TASKS
    assert {"worker", "worker-2gpu", "worker-cpu"} <= set(WORKERS)
    assert "profiles" not in SERVICES["worker"]
    assert SERVICES["worker-cpu"]["profiles"] == ["cpu"]
    assert SERVICES["worker-2gpu"]["profiles"] == ["multi-gpu"]
    assert SERVICES["flower"]["profiles"] == SERVICES["tensorboard"]["profiles"] == ["monitoring"]


def test_the_data_volume_is_mounted_at_the_data_dir_in_the_api_and_every_worker() -> None:
    for name, service in APP_SERVICES.items():
        assert f"{DATA_VOLUME}:{DATA_PATH}" in service["volumes"], name
        assert service["environment"]["FITSERVE_DATA_DIR"] == DATA_PATH, name
        redis_url = interpolated(service["environment"]["FITSERVE_REDIS_URL"])
        assert redis_url == "redis://redis:6379/0", name
    assert f"{DATA_VOLUME}:{DATA_PATH}:ro" in SERVICES["tensorboard"]["volumes"]
    assert SERVICES["redis"]["volumes"] == ["redis-data:/data"]


def test_published_ports_are_on_loopback_only() -> None:
    # Clients reach the API through the proxy only.
    assert SERVICES["proxy"]["ports"] == ["127.0.0.1:8000:8000"]
    assert "ports" not in SERVICES["api"]
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"


def test_redis_is_durable_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options == {
        "--appendonly": "yes",
        "--appendfsync": "everysec",
        "--maxmemory-policy": "noeviction",
    }
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_app_services_wait_for_a_healthy_redis() -> None:
    for name, service in {**APP_SERVICES, "flower": SERVICES["flower"]}.items():
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}, name


@pytest.mark.parametrize("name", ["worker", "worker-2gpu"])
def test_gpu_workers_reserve_the_gpus_they_see_and_consume_their_size(name: str) -> None:
    service = GPU_WORKERS[name]
    gpus = visible_gpu_count(service["environment"])
    (reservation,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert reservation["driver"] == "nvidia"
    assert reservation["capabilities"] == ["gpu"]
    assert len(reservation["device_ids"]) == gpus
    command = service["command"]
    assert command[command.index("--queues") + 1] == train_queue(gpus)
    settings = Settings.from_env(service["environment"])
    assert settings.gpu_memory_growth is True


def test_gpu_workers_do_not_share_a_gpu() -> None:
    ids = [
        device_id
        for service in GPU_WORKERS.values()
        for device in service["deploy"]["resources"]["reservations"]["devices"]
        for device_id in device["device_ids"]
    ]
    assert len(ids) == len(set(ids))


def test_workers_have_time_to_save_a_checkpoint_when_stopped() -> None:
    for name, service in WORKERS.items():
        assert seconds(service["stop_grace_period"]) >= 60, name


def test_workers_run_under_an_init_and_come_back_when_ended() -> None:
    # A stalled consumer is ended by its pool child; as PID 1 it would ignore that SIGKILL.
    for name, service in WORKERS.items():
        assert service["init"] is True, name
        assert service["restart"] == "unless-stopped", name


def test_the_cpu_worker_sees_no_gpu_and_runs_the_cpu_image() -> None:
    service = WORKERS["worker-cpu"]
    assert visible_gpu_count(service["environment"]) == 0
    assert "deploy" not in service
    assert service["image"] == SERVICES["api"]["image"]


def test_the_task_worker_runs_the_cpu_app_on_the_api_image_without_a_gpu() -> None:
    assert TASKS["image"] == SERVICES["api"]["image"]
    assert TASKS["build"]["target"] == "api"
    assert "deploy" not in TASKS
    assert TASKS["command"] == [
        *("celery", "--app", "worker.cpu", "worker"),
        *("--queues", f"{DATASETS_QUEUE},{SWEEPS_QUEUE}"),
        *("--concurrency", "2", "--prefetch-multiplier", "1", "--loglevel", "INFO"),
    ]
    assert TASKS["init"] is True
    assert TASKS["restart"] == "unless-stopped"
    assert seconds(TASKS["stop_grace_period"]) >= 60


def test_workers_run_one_command_line_but_for_the_queue() -> None:
    def without_queue(command: list[str]) -> list[str]:
        at = command.index("--queues")
        return command[:at] + command[at + 2 :]

    commands = {name: without_queue(service["command"]) for name, service in WORKERS.items()}
    assert len({tuple(command) for command in commands.values()}) == 1, commands


def test_every_command_starts_an_installed_executable() -> None:
    for name, service in APP_SERVICES.items():
        assert isinstance(service["command"], list), name
        assert (BIN / service["command"][0]).exists(), f"{name}: {service['command'][0]}"
    assert SERVICES["redis"]["command"][0] == "redis-server"
    # Flower and TensorBoard are not project dependencies: their image's stage pins them.
    monitoring = " ".join(instructions("monitoring", "RUN"))
    providers = {"celery": "flower==", "tensorboard": "tensorboard=="}
    for name in ("flower", "tensorboard"):
        service = SERVICES[name]
        assert service["build"]["target"] == "monitoring"
        assert providers[service["command"][0]] in monitoring, name
    (celery,) = [
        line for line in image_requirements(ROOT / "pyproject.toml", "api") if "celery" in line
    ]
    assert f'"{celery}"' in monitoring, "Flower needs the project's Celery with its Redis transport"


def test_the_stack_starts_exactly_the_compose_commands() -> None:
    api = SERVICES["api"]["command"]
    assert compose_command("api") == api
    local = compose_command("api", bind="127.0.0.1:8123")
    assert [a for a, b in zip(local, api, strict=True) if a != b] == ["127.0.0.1:8123"]
    assert compose_command("worker") == SERVICES["worker"]["command"]
    assert compose_command("tasks") == TASKS["command"]


def test_the_images_default_commands_are_the_compose_commands() -> None:
    for target in ("api", "worker"):
        (cmd,) = instructions(target, "CMD")
        assert json.loads(cmd) == SERVICES[target]["command"], target


def test_the_images_run_as_a_non_root_user_with_a_healthcheck() -> None:
    base = dockerfile_stages()["base"]
    (env,) = [arguments for keyword, arguments in base if keyword == "ENV"]
    assert "PYTHONUNBUFFERED=1" in env.split()
    for target in ("api", "worker", "monitoring"):
        (user,) = instructions(target, "USER")
        assert user.split(":")[0] not in {"0", "root"}, target
    for target in ("api", "worker"):
        (healthcheck,) = instructions(target, "HEALTHCHECK")
        assert " CMD " in f" {healthcheck} ", target
    assert instructions("api", "EXPOSE") == ["8000"]


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    for target in ("api", "worker"):
        steps = [(kw, args) for kw, args in dockerfile_stages()[target] if kw in {"RUN", "COPY"}]
        assert steps[0] == (
            "RUN",
            f"python scripts/requirements.py {target} > /tmp/requirements.txt "
            "&& pip install --requirement /tmp/requirements.txt && rm /tmp/requirements.txt",
        ), target
        assert steps[1:] == [("COPY", ". ."), ("RUN", "pip install --no-deps .")], target


def test_the_worker_image_holds_one_tensorflow_the_cuda_build_at_the_pinned_version() -> None:
    pyproject = ROOT / "pyproject.toml"
    api = image_requirements(pyproject, "api")
    worker = image_requirements(pyproject, "worker")
    (cpu,) = [line for line in api if line.startswith("tensorflow")]
    (gpu,) = [line for line in worker if line.startswith("tensorflow")]
    assert gpu == GPU_TENSORFLOW + cpu.removeprefix("tensorflow-cpu")
    assert gpu.startswith("tensorflow[and-cuda]==")
    assert [line for line in api if line != cpu] == [line for line in worker if line != gpu]


def test_no_secret_goes_into_an_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".git", ".venv", "data", "tests"} <= set(ignored)
    for stage in dockerfile_stages().values():
        for keyword, arguments in stage:
            if keyword in {"ENV", "ARG"}:
                assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN", arguments, re.I), arguments


def test_env_example_lists_every_setting_at_its_default() -> None:
    listed = dict(
        re.findall(rf"^#? ?({PREFIX}[A-Z0-9_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.M)
    )
    fields = {PREFIX + field.name.upper(): field for field in dataclasses.fields(Settings)}
    assert set(listed) == set(fields), "add or remove these in .env.example"
    # Compose sets these two for its containers; the file shows the values they get there.
    in_compose = {
        name: interpolated(value)
        for name, value in SERVICES["api"]["environment"].items()
        if name.startswith(PREFIX)
    }
    assert set(in_compose) == {
        "FITSERVE_REDIS_URL",
        "FITSERVE_DATA_DIR",
        "FITSERVE_TRUSTED_PROXIES",
    }
    defaults = Settings()
    for variable, value in listed.items():
        if variable in in_compose:
            assert value == in_compose[variable], variable
            continue
        field = fields[variable].name
        parsed = getattr(Settings.from_env({variable: value}), field)
        assert parsed == getattr(defaults, field), f"{variable}={value} is not the default"


def proxy_template_values() -> dict[str, str]:
    """What compose's proxy hands the nginx image's template step, as compose resolves it."""
    environment = SERVICES["proxy"]["environment"]
    return {
        name: interpolated(str(value))
        for name, value in environment.items()
        if re.match(environment["NGINX_ENVSUBST_FILTER"], name)
    }


def test_the_proxy_renders_the_template_the_local_stacks_render() -> None:
    proxy = SERVICES["proxy"]
    environment = proxy["environment"]
    (mount,) = proxy["volumes"]
    source, target, mode = mount.split(":")
    assert (ROOT / source).resolve() == TEMPLATE
    assert target == f"{environment['NGINX_ENVSUBST_TEMPLATE_DIR']}/{TEMPLATE.name}"
    assert mode == "ro"
    rendered = Path(environment["NGINX_ENVSUBST_OUTPUT_DIR"]) / TEMPLATE.name.removesuffix(
        ".template"
    )
    assert proxy["command"] == proxy_command(rendered)
    # The settings' defaults, the API's port and a folder the image's nginx user may write.
    api_bind = SERVICES["api"]["command"][SERVICES["api"]["command"].index("--bind") + 1]
    expected = template_values(
        Settings(), listen="0.0.0.0:8000", upstream=f"api:{api_bind.split(':')[1]}", run_dir="/tmp"
    )
    assert proxy_template_values() == expected
    assert proxy["depends_on"] == {"api": {"condition": "service_healthy"}}


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="gettext's envsubst is not installed")
def test_the_images_template_step_renders_what_the_local_stacks_render() -> None:
    # What the nginx image's entrypoint runs: envsubst over the variables its filter selects.
    values = proxy_template_values()
    names = " ".join(f"${{{name}}}" for name in values)
    rendered = subprocess.run(
        ["envsubst", names],
        input=TEMPLATE.read_text(),
        env={"PATH": os.environ["PATH"], **values},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert rendered == render_config(values)


def test_the_rendered_proxy_config_is_valid_nginx(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "proxy", Settings(), listen="127.0.0.1:1", upstream="127.0.0.1:2"
    )
    checked = subprocess.run(
        [*local_proxy_command(config), "-t"], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr
    assert "${" not in config.read_text()


def test_the_worker_healthcheck_answers_for_its_own_live_node_only(
    tmp_path: Path, clean_redis: str
) -> None:
    (healthcheck,) = instructions("worker", "HEALTHCHECK")
    probe = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FITSERVE_REDIS_URL": clean_redis,
        "FITSERVE_DATA_DIR": str(tmp_path / "data"),
    }

    def healthy(hostname: str) -> bool:
        probed = subprocess.run(probe, cwd=ROOT, env={**env, "HOSTNAME": hostname}, timeout=30)
        return probed.returncode == 0

    worker = subprocess.Popen(
        compose_command("worker"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Asked while the worker starts: another host's node never answers for it.
        assert not healthy("elsewhere")
        wait_for(lambda: healthy(socket.gethostname()), 60, shlex.join(probe), interval=1)
    finally:
        stop_tree(worker)


def test_the_task_worker_answers_its_healthcheck_and_never_imports_tensorflow(
    tmp_path: Path, clean_redis: str
) -> None:
    (kind, probe) = TASKS["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FITSERVE_REDIS_URL": clean_redis,
        "FITSERVE_DATA_DIR": str(tmp_path / "data"),
    }

    def healthy(hostname: str) -> bool:
        # Compose turns `$$` into `$` before the shell sees the command.
        command = probe.replace("$$", "$")
        probed = subprocess.run(
            ["sh", "-c", command], cwd=ROOT, env={**env, "HOSTNAME": hostname}, timeout=30
        )
        return probed.returncode == 0

    worker = subprocess.Popen(
        compose_command("tasks"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert not healthy("elsewhere")
        wait_for(lambda: healthy(socket.gethostname()), 60, probe, interval=1)
        family = [worker.pid, *(child.pid for child in psutil.Process(worker.pid).children(True))]
        assert len(family) == 3, "the parent and its two pool children"
        for pid in family:
            mapped = Path(f"/proc/{pid}/maps").read_text()
            assert "tensorflow" not in mapped, f"process {pid} loaded TensorFlow"
    finally:
        stop_tree(worker)
