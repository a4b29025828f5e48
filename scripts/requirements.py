"""The images' requirement lists, read from pyproject.toml so the Dockerfile never repeats them.

`python scripts/requirements.py api` prints the project's dependencies (CPU TensorFlow);
`python scripts/requirements.py worker` prints the same with the CUDA build of TensorFlow, at the
same version, in place of the CPU one, so the worker image holds exactly one TensorFlow.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

CPU_TENSORFLOW = "tensorflow-cpu"
GPU_TENSORFLOW = "tensorflow[and-cuda]"
ROLES = ("api", "worker")


def image_requirements(pyproject: Path, role: str) -> list[str]:
    """The requirement lines of the `api` or `worker` image."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    tensorflow = [line for line in dependencies if line.startswith(CPU_TENSORFLOW + "=")]
    if len(tensorflow) != 1:
        raise ValueError(f"pyproject.toml must pin {CPU_TENSORFLOW}== once, found {tensorflow}")
    if role == "api":
        return dependencies
    return [
        GPU_TENSORFLOW + line.removeprefix(CPU_TENSORFLOW) if line in tensorflow else line
        for line in dependencies
    ]


if __name__ == "__main__":
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    print("\n".join(image_requirements(pyproject, sys.argv[1] if len(sys.argv) > 1 else "")))
