"""nginx in front of gunicorn, configured from service/nginx.conf.template.

`make run` and the end-to-end tests render the template here; in compose the nginx image's
entrypoint renders the same file from the proxy service's environment, which carries the same
names (tests/test_containers.py checks they agree).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from core.settings import PREFIX, Settings
from scripts.stack import ROOT

TEMPLATE = ROOT / "service" / "nginx.conf.template"
# The settings the template reads, besides where it listens, proxies to and keeps its files.
TEMPLATE_SETTINGS = ("max_json_bytes", "max_upload_bytes", "events_max_seconds")
_PLACEHOLDER = re.compile(r"\$\{((?:FITSERVE|PROXY)_[A-Z0-9_]+)\}")
# Debian installs nginx in /usr/sbin, which is not on a user's PATH.
_SEARCH_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


def template_values(
    settings: Settings, *, listen: str, upstream: str, run_dir: str
) -> dict[str, str]:
    """The template's placeholders: `listen` and `upstream` are host:port, `run_dir` a folder
    the proxy may write (its pid file and the bodies it buffers)."""
    values = {PREFIX + name.upper(): str(getattr(settings, name)) for name in TEMPLATE_SETTINGS}
    return values | {"PROXY_LISTEN": listen, "PROXY_UPSTREAM": upstream, "PROXY_RUN_DIR": run_dir}


def render_config(values: dict[str, str]) -> str:
    """The template with every placeholder replaced; a missing value fails loudly."""
    text = TEMPLATE.read_text()
    missing = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise KeyError(f"{TEMPLATE.name} needs values for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def write_config(run_dir: Path, settings: Settings, *, listen: str, upstream: str) -> Path:
    """Render the config into `run_dir` (created), where nginx also keeps its files; its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "nginx.conf"
    values = template_values(settings, listen=listen, upstream=upstream, run_dir=str(run_dir))
    path.write_text(render_config(values))
    return path


def proxy_command(config: Path, binary: str = "nginx") -> list[str]:
    """nginx in the foreground on `config`, logging errors to stderr from the first line (its
    default error log is root's)."""
    return [binary, "-e", "stderr", "-c", str(config)]


def local_proxy_command(config: Path) -> list[str]:
    """`proxy_command` with the installed nginx, run as whoever runs it: started by root, its
    workers would otherwise switch to `nobody`, who cannot write a private run folder."""
    argv = proxy_command(config, nginx_binary())
    return [*argv, "-g", "user root;"] if os.geteuid() == 0 else argv


def nginx_binary() -> str:
    """The installed nginx, or an error that says how to get it."""
    found = shutil.which("nginx") or shutil.which("nginx", path=_SEARCH_PATH)
    if found is None:
        raise RuntimeError("nginx is not installed: run `make deps` (or .ci/run)")
    return found
