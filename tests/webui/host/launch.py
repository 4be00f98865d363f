"""Stand-in for the WebUI's `launch` module: what install.py sees (is_installed, run_pip) and the version the
host writes in infotexts (`git_tag()`, as `git describe --tags` gives it in a v1.10.1 checkout)."""

import importlib.util
import os

WEBUI_VERSION = "v1.10.1"


def is_installed(package: str) -> bool:
    return package not in os.environ.get("HOST_DOUBLE_MISSING", "").split(",") and \
        importlib.util.find_spec(package) is not None


def run_pip(command: str, desc: str | None = None) -> None:
    with open(os.environ["HOST_DOUBLE_PIP_LOG"], "a") as log:
        log.write(command + "\n")


def git_tag() -> str:
    return WEBUI_VERSION
