"""Stand-in for the WebUI's `launch` module as install.py sees it: records what would be pip-installed."""

import importlib.util
import os


def is_installed(package: str) -> bool:
    return package not in os.environ.get("HOST_DOUBLE_MISSING", "").split(",") and \
        importlib.util.find_spec(package) is not None


def run_pip(command: str, desc: str | None = None) -> None:
    with open(os.environ["HOST_DOUBLE_PIP_LOG"], "a") as log:
        log.write(command + "\n")
