"""What tests need to run visionzoo in child processes (the CLI, torchrun)."""

import os
from pathlib import Path

import visionzoo

SRC = str(Path(visionzoo.__file__).resolve().parents[1])


def child_env() -> dict[str, str]:
    """This environment with this checkout's visionzoo first on the path, one OpenMP thread
    per process, and without pytest-xdist's worker marker (conftest pins threads on it)."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.pop("PYTEST_XDIST_WORKER", None)
    return env
