"""The deploy files agree with each other and with the native fleet: docker-compose.yml,
the Dockerfile, deploy/nginx.conf (which both run), deploy/fleet.toml and .env.example.

Compose is checked as data here (tests/test_compose.py runs it for real), and
nginx.conf by nginx itself (``nginx -t``) once templated the way ``fleetbreaker
fleet`` templates it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config.settings import load_config
from app.localfleet.fleet import FLEET_CONFIG, NGINX_CONF, UPSTREAM_NAME
from app.localfleet.nginx import nginx_conf_for
from app.localfleet.services import FleetError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def default_of(value: str, variable: str) -> str:
    """``default`` for compose's ``${variable:-default}``; fails on anything else."""
    match = re.fullmatch(rf"\$\{{{variable}:-([^}}]+)\}}", value)
    assert match is not None, f"{value!r} is not ${{{variable}:-default}}"
    return match[1]


def dockerfile_arg_defaults() -> dict[str, str]:
    dockerfile = (ROOT / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))


def test_compose_runs_redis_three_gateways_nginx_and_the_upstream(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "gateway", "lb", "upstream"}
    assert default_of(services["redis"]["image"], "REDIS_IMAGE").startswith("redis:7")
    assert "healthcheck" in services["redis"]
    gateway = services["gateway"]
    assert gateway["deploy"]["replicas"] == 3
    assert gateway["command"] == [
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--admin-host",
        "0.0.0.0",
        "--admin-port",
        "8001",
        "--workers",
        "2",
    ]
    # Each replica's admin listener on a port of the host's loopback, never on nginx's.
    assert gateway["ports"] == ["127.0.0.1::8001"]
    assert gateway["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert services["lb"]["ports"] == ["${LB_PORT:-8080}:8080"]
    assert services["lb"]["depends_on"]["gateway"] == {"condition": "service_healthy"}
    assert services["upstream"]["command"][0] == "demo-upstream"


def test_every_replica_shares_redis_and_takes_its_token_from_dot_env(
    compose: dict[str, Any],
) -> None:
    environment = compose["services"]["gateway"]["environment"]
    assert environment["BREAKER_REDIS_URL"] == "redis://redis:6379/0"
    assert environment["BREAKER_ADMIN_TOKEN"].startswith("${BREAKER_ADMIN_TOKEN:?")
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^BREAKER_ADMIN_TOKEN=$", example, re.MULTILINE)  # no secret in git
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_compose_and_the_native_fleet_run_the_same_gateway_configuration(
    compose: dict[str, Any],
) -> None:
    gateway = compose["services"]["gateway"]
    mounted = dict(volume.split(":")[:2] for volume in gateway["volumes"])
    assert mounted["./deploy/fleet.toml"] == gateway["environment"]["BREAKER_CONFIG"]
    assert ROOT / "deploy/fleet.toml" == FLEET_CONFIG
    upstream = gateway["environment"]["BREAKER_UPSTREAMS"]
    assert upstream == f"{UPSTREAM_NAME}=http://upstream:9000"
    assert compose["services"]["upstream"]["command"][-2:] == ["--port", "9000"]
    config = load_config(
        {
            "BREAKER_CONFIG": str(FLEET_CONFIG),
            "BREAKER_UPSTREAMS": upstream,
            "BREAKER_REDIS_URL": gateway["environment"]["BREAKER_REDIS_URL"],
        }
    )
    assert list(config.upstreams) == [UPSTREAM_NAME]
    assert config.expose_instance


def test_compose_mounts_the_nginx_conf_the_native_fleet_templates(
    compose: dict[str, Any],
) -> None:
    volumes = compose["services"]["lb"]["volumes"]
    assert volumes == ["./deploy/nginx.conf:/etc/nginx/nginx.conf:ro"]
    assert ROOT / "deploy/nginx.conf" == NGINX_CONF
    conf = NGINX_CONF.read_text()
    assert "server gateway:8000 " in conf  # compose's service name and the gateway port
    assert "listen 8080;" in conf


def test_nginx_never_reaches_an_admin_listener(compose: dict[str, Any]) -> None:
    """Every page an upstream serves through /proxy runs with nginx's origin: the
    dashboard and the admin API must not share it."""
    conf = NGINX_CONF.read_text()
    admin_port = compose["services"]["gateway"]["command"][9]
    servers = re.findall(r"^\s*server (\S+:\d+)", conf, re.MULTILINE)
    assert servers == ["gateway:8000"]  # the proxy's port, templated per replica
    assert re.findall(r"proxy_pass (\S+);", conf) == ["http://gateways"]
    assert admin_port not in conf
    assert not re.search(r"location\b[^{]*/(admin|dashboard|metrics|docs)", conf)
    templated = nginx_conf_for(conf, 18080, [18001, 18002])
    assert re.findall(r"^\s*server (\S+:\d+)", templated, re.MULTILINE) == [
        "127.0.0.1:18001",
        "127.0.0.1:18002",
    ]


def test_every_compose_variable_has_a_public_default_listed_in_env_example(
    compose: dict[str, Any],
) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    defaults = dict(re.findall(r"\$\{(\w+):-([^}]+)\}", text))
    assert set(defaults) == {
        "PYTHON_IMAGE",
        "WHEELS_IMAGE",
        "FLEETBREAKER_IMAGE",
        "REDIS_IMAGE",
        "NGINX_IMAGE",
        "LB_PORT",
        "UPSTREAM_PORT",
    }
    example = (ROOT / ".env.example").read_text()
    for variable, default in defaults.items():
        assert f"\n#{variable}={default}\n" in example
    assert default_of(compose["services"]["lb"]["image"], "NGINX_IMAGE").startswith("nginx:")
    assert compose["services"]["upstream"]["ports"] == ["${UPSTREAM_PORT:-9000}:9000"]


def test_compose_builds_with_the_dockerfiles_own_defaults(compose: dict[str, Any]) -> None:
    args = compose["x-fleetbreaker"]["build"]["args"]
    assert {name: default_of(value, name) for name, value in args.items()} == (
        dockerfile_arg_defaults()
    )


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert all("healthcheck" in services[name] for name in ("redis", "upstream", "lb"))
    assert "HEALTHCHECK" in (ROOT / "Dockerfile").read_text()  # the gateway's


def test_the_dockerfile_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert final_stage.startswith("${PYTHON_IMAGE}\n")
    assert dockerfile_arg_defaults()["PYTHON_IMAGE"] == "python:3.11-slim"
    user = re.search(r"^USER (\S+)$", final_stage, re.MULTILINE)
    assert user is not None
    assert user[1] not in ("root", "0")
    assert "HEALTHCHECK" in final_stage
    assert "/healthz" in final_stage
    assert 'ENTRYPOINT ["fleetbreaker"]' in final_stage


def test_the_dockerfile_copies_every_package_the_wheel_is_built_from() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools["package-dir"]

    def source_of(package: str) -> str:
        """Its folder as setuptools finds it: by its own package-dir entry, or its
        nearest parent's (fleetbreaker.admin is in app/, as fleetbreaker is)."""
        parts = package.split(".")
        for end in range(len(parts), 0, -1):
            mapped = package_dir.get(".".join(parts[:end]))
            if mapped is not None:
                return "/".join([mapped, *parts[end:]])
        return "/".join(parts)

    top_level = {source_of(package).split("/")[0] for package in setuptools["packages"]}
    assert top_level | {"pyproject.toml", project["project"]["readme"]} <= copied


# -- nginx.conf, templated ---------------------------------------------------------------


def test_templating_changes_only_the_two_marked_address_lines() -> None:
    original = NGINX_CONF.read_text().splitlines()
    templated = nginx_conf_for(NGINX_CONF.read_text(), 18080, [18001, 18002, 18003])

    changed = [line for line in templated.splitlines() if line not in original]
    assert [line.split("#")[0].strip() for line in changed] == [
        "server 127.0.0.1:18001 max_fails=1 fail_timeout=5s;",
        "server 127.0.0.1:18002 max_fails=1 fail_timeout=5s;",
        "server 127.0.0.1:18003 max_fails=1 fail_timeout=5s;",
        "listen 127.0.0.1:18080;",
    ]
    gone = [line for line in original if line not in templated.splitlines()]
    assert len(gone) == 2
    assert all("# fleet:" in line for line in gone)


def test_templating_refuses_a_conf_without_its_marked_lines() -> None:
    conf = NGINX_CONF.read_text()
    without_mark = conf.replace("# fleet: one line per replica", "")
    with pytest.raises(FleetError, match="one line per replica"):
        nginx_conf_for(without_mark, 8080, [8000])
    moved = conf.replace("server gateway:8000", "server elsewhere:8000")
    with pytest.raises(FleetError, match="has no address"):
        nginx_conf_for(moved, 8080, [8000])


def test_nginx_accepts_the_templated_conf(tmp_path: Path) -> None:
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/usr/bin")
    if nginx is None:
        pytest.fail("nginx is needed (apt-get install -y nginx; .ci/run installs it)")
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf_for(NGINX_CONF.read_text(), 18080, [18001, 18002]))
    result = subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            f"{tmp_path}/",
            "-c",
            str(conf),
            "-e",
            "stderr",
            "-g",
            f"pid {tmp_path}/nginx.pid;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_nginx_refuses_bodies_at_the_gateways_own_limit_with_its_json() -> None:
    """An oversized upload is the client's mistake: nginx answers it, at the limit the
    replicas would apply, so that no replica refuses one mid-body and is marked failed."""
    conf = NGINX_CONF.read_text()
    size = re.search(r"^\s*client_max_body_size (\d+)m;", conf, re.MULTILINE)
    assert size is not None
    config = load_config({"BREAKER_CONFIG": str(FLEET_CONFIG), "BREAKER_UPSTREAMS": "a=http://a"})
    assert int(size.group(1)) * 1024 * 1024 == config.max_body_bytes
    assert f"over the limit of {config.max_body_bytes} bytes" in conf
    assert re.search(r"error_page 413 @body_too_large;", conf)


def test_nginx_bounds_request_heads_as_each_replica_does() -> None:
    """A head that is slow or large is nginx's to refuse, at the replicas' own limits."""
    conf = NGINX_CONF.read_text()
    timeout = re.search(r"^\s*client_header_timeout (\d+)s;", conf, re.MULTILINE)
    buffers = re.search(r"^\s*large_client_header_buffers (\d+) (\d+)k;", conf, re.MULTILINE)
    assert timeout is not None
    assert buffers is not None
    config = load_config({"BREAKER_CONFIG": str(FLEET_CONFIG), "BREAKER_UPSTREAMS": "a=http://a"})
    assert int(timeout.group(1)) == config.head_timeout
    assert int(buffers.group(1)) * int(buffers.group(2)) * 1024 == config.max_header_bytes
