"""docker-compose.yml and the Dockerfile: valid, consistent with the CLIs and pyproject.

No container engine runs here; what can be checked without one is: the compose file
validates (`docker compose config` or `docker-compose config`, when installed), its
commands parse with the real CLIs, the image installs what pyproject declares, and the
health check command works against a real comet-server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_validates() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    res = subprocess.run([*cli, "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_two_services_from_one_image(compose) -> None:
    services = compose["services"]
    assert set(services) == {"server", "client"}
    assert services["server"]["build"] == services["client"]["build"] == "."
    assert services["server"]["image"] == services["client"]["image"]
    assert services["client"]["depends_on"]["server"]["condition"] == "service_healthy"


def test_commands_parse_with_the_real_clis(compose) -> None:
    from comet_client.cli import main as client_main
    from comet_server.cli import main as server_main

    srv = compose["services"]["server"]["command"]
    cli = compose["services"]["client"]["command"]
    assert srv[0] == "comet-server" and cli[0] == "comet-client"
    s_ctx = server_main.make_context("comet-server", list(srv[1:]))
    # The default command (classify) takes the arguments that follow the program name.
    assert cli[1] not in client_main.commands
    c_ctx = client_main.commands["classify"].make_context("comet-client", list(cli[1:]))
    # The client reaches the server by its service name on the port it listens on.
    assert c_ctx.params["target"] == f"server:{s_ctx.params['port']}"
    assert c_ctx.params["texts"]
    # Off loopback, plaintext needs an explicit --insecure on both sides.
    assert s_ctx.params["insecure"] and c_ctx.params["insecure"]


def test_dockerfile_installs_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies {part}, which does not exist"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in packages:  # everything `pip install .` needs is in the image
        assert f"COPY {pkg.rstrip('*')} " in text, f"Dockerfile does not copy {pkg}"
    torch = next(d for d in project["project"]["dependencies"] if d.startswith("torch"))
    assert f'"{torch}"' in text  # the same pin as pyproject
    cmd = re.search(r'^CMD \["([^"]+)"', text, re.M).group(1)
    assert cmd in project["project"]["scripts"]


@pytest.mark.slow
def test_healthcheck_command_against_a_real_server(compose, tmp_path) -> None:
    from tests.e2e.harness import Server
    from tests.models import tiny_classifier

    test = compose["services"]["server"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    model = tiny_classifier(tmp_path / "tiny")
    with Server(tmp_path, "--model", str(model)) as srv:
        argv = [a.replace("127.0.0.1:50051", srv.address) for a in test[2:]]
        res = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    # And it fails when nothing is serving.
    res = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
