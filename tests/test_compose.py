"""The deployment files: docker-compose.yml, deploy/.env.example, deploy/compose.redis-port.yml, Dockerfile.

Each test stands for something an operator ran into: a setting in .env that never reached a container, a
key printed by `docker compose config`, a Redis that evicted queued mail, an open Flower, a log that
filled the disk, an image that changed under the same tag. The structure is read from the files; where a
command is in them (Redis' command line, the health checks, Flower's entry point) it is run here against
servers on 127.0.0.1; `docker compose config` itself runs when Compose 1.29 is installed (.ci/run installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from cryptography.fernet import Fernet

from config.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
REDIS_PORT_FILE = ROOT / "deploy" / "compose.redis-port.yml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

APP_IMAGE = "iam-mail-worker"
# The services that decrypt stored SMTP passwords. The ingest consumer enqueues through tasks.api like any
# producer, and Flower only watches events: neither ever opens a secret (test_delivery_e2e.py's
# test_a_producer_needs_no_secret_key), so neither gets the key.
KEY_USERS = {"worker-transactional", "worker-bulk"}
SECRET_MOUNT = "/run/secrets/mailworker_secret_key"
REDIS_URL_SETTINGS = ("MAILWORKER_BROKER_URL", "MAILWORKER_RESULT_BACKEND", "MAILWORKER_STORE_URL")

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
_ASSIGNMENT = re.compile(r"^#?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return load(COMPOSE_FILE)["services"]


def app_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if s.get("image", "").startswith(APP_IMAGE + ":")}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default}, ${NAME:?error} and $$, for the commands these tests run."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        present = env.get(name)
        if op == ":-":
            return present or arg
        if op == ":?":
            if not present:
                raise AssertionError(f"{name} is required: {arg}")
            return present
        return present or ""

    return _VARIABLE.sub(one, value).replace("$$", "$")


def compose_variables(*paths: Path) -> dict[str, str | None]:
    """Every ${NAME} the compose files read, with the default they give it (None: none)."""
    found: dict[str, str | None] = {}
    for path in paths:
        for match in _VARIABLE.finditer(path.read_text(encoding="utf-8")):
            default = match["arg"] if match["op"] == ":-" else None
            found[match["name"]] = found.get(match["name"]) or default
    return found


def env_example() -> list[tuple[str, str]]:
    assignments = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = _ASSIGNMENT.match(line)
        if match:
            assignments.append((match["name"], match["value"]))
    return assignments


def setting_variables() -> set[str]:
    return {f"MAILWORKER_{name.upper()}" for name in ServiceSettings.model_fields}


# ---- deploy/.env.example ----


def test_env_example_names_every_setting_and_nothing_that_is_not_one() -> None:
    named = [name for name, _ in env_example() if name.startswith("MAILWORKER_")]
    assert len(named) == len(set(named)), "a setting listed twice"
    assert set(named) == setting_variables()


def test_env_example_shows_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # Uncommenting a line as it stands changes nothing: the value shown is the default that applies in
    # compose (the compose file's own default where it gives one, else the service's).
    for name in list(os.environ):
        if name.startswith("MAILWORKER_"):
            monkeypatch.delenv(name)
    compose_defaults = compose_variables(COMPOSE_FILE)
    checked = 0
    for name, value in env_example():
        if not name.startswith("MAILWORKER_") or not value:
            continue
        field = name.removeprefix("MAILWORKER_").lower()
        if compose_defaults.get(name) is not None:
            assert value == compose_defaults[name], name
        else:
            shown = getattr(ServiceSettings(_env_file=None, **{field: value}), field)  # type: ignore[call-arg]
            assert shown == ServiceSettings.model_fields[field].default, name
        checked += 1
    assert checked >= 20


def test_env_example_gives_each_variable_a_meaning() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if not _ASSIGNMENT.match(line):
            continue
        above = index - 1
        while above >= 0 and _ASSIGNMENT.match(lines[above]):  # a group shares one explanation
            above -= 1
        assert above >= 0 and lines[above].startswith("# ") and len(lines[above]) > 12, line


def test_env_example_points_only_to_files_that_exist() -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    text = re.sub(r"\S+://\S*", " ", text)  # URLs are not paths
    paths = set(re.findall(r"(?<![\w$/.-])(?:\.{1,2}/)?[\w.-]+(?:/[\w.-]+)+/?", text))
    paths |= set(re.findall(r"(?<![\w$/.-])[\w-][\w.-]*\.(?:md|ya?ml|toml|lock|py)\b", text))
    paths = {p.rstrip(".") for p in paths}
    assert {"docs/delivery.md", "deploy/compose.redis-port.yml", "README.md"} <= paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"deploy/.env.example points to files that do not exist: {missing}"


def test_every_compose_variable_is_in_the_env_example_and_no_other() -> None:
    documented = {name for name, _ in env_example()}
    used = set(compose_variables(COMPOSE_FILE, REDIS_PORT_FILE))
    assert used - documented == set()
    others = {n for n in documented if not n.startswith(("MAILWORKER_", "COMPOSE_"))}
    assert others <= used, f"in deploy/.env.example but read by nothing: {sorted(others - used)}"


def test_the_env_example_holds_no_secret() -> None:
    # It is copied to .env, the env_file of every container: the key belongs in the secret file.
    values = dict(env_example())
    assert values["REDIS_PASSWORD"] == ""
    assert values["MAILWORKER_SECRET_KEY"] == ""
    assert not any(line.startswith("MAILWORKER_") for line in ENV_EXAMPLE.read_text().splitlines())


# ---- docker-compose.yml, read as YAML ----


def test_every_service_of_the_image_reads_the_env_file() -> None:
    assert set(app_services()) == {"worker-transactional", "worker-bulk", "ingest", "flower"}
    for name, service in app_services().items():
        env_file = service.get("env_file")
        assert env_file == ".env" or (isinstance(env_file, list) and ".env" in env_file), name


def test_every_redis_url_carries_the_password() -> None:
    for name, service in app_services().items():
        for setting in REDIS_URL_SETTINGS:
            url = interpolate(service["environment"][setting], {"REDIS_PASSWORD": "pw"})
            assert url == "redis://:pw@redis:6379/0", (name, setting)


def test_only_the_workers_get_the_secret_key() -> None:
    with_key = {n for n, s in services().items() if "mailworker_secret_key" in s.get("secrets", [])}
    assert with_key == KEY_USERS
    for name, service in services().items():
        environment = service.get("environment", {})
        assert "MAILWORKER_SECRET_KEY" not in environment, name
        expected = SECRET_MOUNT if name in KEY_USERS else None
        assert environment.get("MAILWORKER_SECRET_KEY_FILE") == expected, name
    secret = load(COMPOSE_FILE)["secrets"]["mailworker_secret_key"]
    assert interpolate(secret["file"], {}) == "./secrets/mailworker_secret_key"
    assert (ROOT / "secrets" / ".gitignore").read_text().splitlines()[-2:] == ["*", "!.gitignore"]


def redis_options() -> dict[str, str]:
    command = services()["redis"]["command"]
    assert command[0] == "redis-server"
    return dict(zip(command[1::2], command[2::2], strict=True))


def test_redis_keeps_its_data_and_refuses_rather_than_evicts() -> None:
    options = redis_options()
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    # Without maxmemory the policy never applies: Redis grows until the kernel or the limit kills it.
    assert interpolate(options["--maxmemory"], {}) == "512mb"
    assert interpolate(options["--maxmemory"], {"REDIS_MAXMEMORY": "2gb"}) == "2gb"
    assert options["--requirepass"].startswith("${REDIS_PASSWORD:?")
    with pytest.raises(AssertionError, match="REDIS_PASSWORD is required"):
        interpolate(options["--requirepass"], {})


def test_redis_is_not_published_unless_asked_and_then_on_loopback() -> None:
    assert "ports" not in services()["redis"]
    override = load(REDIS_PORT_FILE)["services"]
    assert set(override) == {"redis"}
    assert [interpolate(p, {}) for p in override["redis"]["ports"]] == ["127.0.0.1:6379:6379"]


def test_every_published_port_is_on_loopback() -> None:
    for path in (COMPOSE_FILE, REDIS_PORT_FILE):
        for name, service in load(path)["services"].items():
            for port in service.get("ports", []):
                assert interpolate(str(port), {}).startswith("127.0.0.1:"), (path.name, name, port)


def test_flower_needs_its_profile_and_authentication() -> None:
    flower = services()["flower"]
    assert flower["profiles"] == ["monitor"]
    assert flower["secrets"] == ["flower_basic_auth"]
    assert flower["environment"]["BASIC_AUTH_FILE"] == "/run/secrets/flower_basic_auth"
    # Flower reads every FLOWER_* variable as an option and fails on an unknown one.
    assert not [n for n in flower["environment"] if n.startswith("FLOWER_")]


def test_every_long_running_service_has_restart_health_log_rotation_and_limits() -> None:
    for name, service in services().items():
        assert service.get("restart") in {"unless-stopped", "always"}, name
        healthcheck = service.get("healthcheck") or {}
        assert healthcheck.get("test") and not healthcheck.get("disable"), name
        assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}, name
        logging = service.get("logging") or {}
        assert logging.get("driver") == "json-file", name
        assert re.fullmatch(r"\d+[km]", logging["options"]["max-size"]), name
        assert int(logging["options"]["max-file"]) >= 1, name
        assert re.fullmatch(r"\d+[kmg]", interpolate(str(service.get("mem_limit", "")), {})), name
        assert float(service.get("cpus", 0)) > 0, name


def test_images_are_pinned_to_a_release() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = [s["image"] for s in services().values()]
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", DOCKERFILE.read_text(), flags=re.MULTILINE | re.I)
    images += [image for image, _ in stages if image not in {stage for _, stage in stages}]
    assert len(images) == len(services()) + 1
    for image in images:
        tag = image.partition(":")[2]
        assert tag and "latest" not in tag, image
        assert re.match(r"v?\d+\.\d+\.\d+", tag), f"{image}: not a patch release"
    assert {s["image"] for s in app_services().values()} == {f"{APP_IMAGE}:{version}"}


# ---- the commands in the compose file, run here ----


def sh_script(service: dict[str, Any]) -> str:
    entrypoint = service["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"]
    return interpolate(entrypoint[2], {})


@pytest.fixture
def fake_celery(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    celery = bin_dir / "celery"
    celery.write_text('#!/bin/sh\necho "auth=$FLOWER_BASIC_AUTH"\necho "args=$*"\n')
    celery.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    ("content", "starts"),
    [
        (None, False),
        ("", False),
        ("ops", False),
        (":secret", False),
        ("ops:", False),
        ("ops:secret\n", True),
    ],
    ids=["no-file", "empty", "no-colon", "no-user", "no-password", "user-and-password"],
)
def test_flower_refuses_to_start_without_credentials(
    tmp_path: Path, fake_celery: Path, content: str | None, starts: bool
) -> None:
    auth_file = tmp_path / "flower_basic_auth"
    if content is not None:
        auth_file.write_text(content)
    result = subprocess.run(
        ["sh", "-c", sh_script(services()["flower"])],
        env={"PATH": f"{fake_celery}:/usr/bin:/bin", "BASIC_AUTH_FILE": str(auth_file)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    if starts:
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == "auth=ops:secret"
        assert result.stdout.splitlines()[1].startswith("args=-A worker.app flower --port=5555")
    else:
        assert result.returncode == 78
        assert result.stdout == ""
        assert "refusing to start without authentication" in result.stderr


def healthcheck_argv(service: str) -> list[str]:
    test = services()[service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [sys.executable if part == "python" else part for part in test[1:]]


@pytest.mark.integration
def test_ingest_healthcheck_passes_when_redis_answers(redis_url: str) -> None:
    result = subprocess.run(
        healthcheck_argv("ingest"), cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr


def test_ingest_healthcheck_fails_when_redis_does_not(tmp_path: Path) -> None:
    closed = free_port()
    env = dict(os.environ, MAILWORKER_STORE_URL=f"redis://:pw@127.0.0.1:{closed}/0")
    result = subprocess.run(
        healthcheck_argv("ingest"), cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode != 0
    assert result.stderr.splitlines()[-1].startswith(
        f"config.errors.ConfigError: MAILWORKER_STORE_URL: cannot reach Redis at redis://:***@127.0.0.1:{closed}/0"
    )
    assert ":pw@" not in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """redis-server with the compose file's command line, on 127.0.0.1 and a port of its own."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    password = "compose-test-" + os.urandom(8).hex()
    args = [interpolate(arg, {"REDIS_PASSWORD": password}) for arg in services()["redis"]["command"][1:]]
    port = free_port()
    process = subprocess.Popen(
        [binary, *args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, password=password, decode_responses=True, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, "redis-server refused the compose file's command line"
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.05)
        yield port, password
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_redis_runs_as_configured(compose_redis: tuple[int, str]) -> None:
    port, password = compose_redis
    client = redis.Redis(port=port, password=password, decode_responses=True, socket_timeout=2)
    assert client.config_get("maxmemory") == {"maxmemory": str(512 * 1024 * 1024)}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, socket_timeout=2).ping()
    # The health check's way in: redis-cli takes the password from REDISCLI_AUTH.
    redis_cli = shutil.which("redis-cli")
    if redis_cli:
        env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": password}
        answer = subprocess.run(
            [redis_cli, "-p", str(port), "ping"], env=env, capture_output=True, text=True, timeout=10
        )
        assert answer.stdout.strip() == "PONG"


# ---- `docker-compose config`: what Compose itself makes of the files ----

DOCKER_COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose is not installed")
PROJECT_KEY = Fernet.generate_key().decode()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the deployment as an operator has it: .env from the example, the secret files written."""
    (tmp_path / "deploy").mkdir()
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(REDIS_PORT_FILE, tmp_path / "deploy" / REDIS_PORT_FILE.name)
    env = ENV_EXAMPLE.read_text().replace(
        "\nREDIS_PASSWORD=\n", "\nREDIS_PASSWORD=0f1e2d3c4b5a69788796a5b4c3d2e1f0\n"
    )
    env += "MAILWORKER_LOG_LEVEL=DEBUG\nMAILWORKER_RECIPIENT_COOLDOWN=7\n"
    (tmp_path / ".env").write_text(env)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "mailworker_secret_key").write_text(f"{PROJECT_KEY}\n")
    (tmp_path / "secrets" / "flower_basic_auth").write_text("ops:flower-password-marker\n")
    return tmp_path


def compose_config(project: Path, *files: str) -> subprocess.CompletedProcess[str]:
    assert DOCKER_COMPOSE is not None
    argv = [DOCKER_COMPOSE, "--project-directory", str(project)]
    for name in files or ("docker-compose.yml",):
        argv += ["-f", str(project / name)]
    # Not the test session's MAILWORKER_* variables: Compose would prefer them to .env.
    env = {"PATH": os.environ["PATH"], "HOME": str(project)}
    return subprocess.run(
        [*argv, "config"], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )


@needs_compose
def test_compose_config_gives_settings_to_all_and_the_key_to_the_workers_only(project: Path) -> None:
    result = compose_config(project)
    assert result.returncode == 0, result.stderr
    assert PROJECT_KEY not in result.stdout and PROJECT_KEY not in result.stderr
    assert "flower-password-marker" not in result.stdout
    config = yaml.safe_load(result.stdout)
    found = config["services"]
    assert set(found) == {"redis", "worker-transactional", "worker-bulk", "ingest", "flower", "mailpit"}
    for name, service in found.items():
        secrets = {s["source"] for s in service.get("secrets", [])}
        assert ("mailworker_secret_key" in secrets) == (name in KEY_USERS), name
        assert secrets <= ({"mailworker_secret_key"} if name in KEY_USERS else {"flower_basic_auth"}), name
    assert {s["source"] for s in found["flower"]["secrets"]} == {"flower_basic_auth"}
    for name in app_services():
        environment = found[name]["environment"]
        assert environment["MAILWORKER_LOG_LEVEL"] == "DEBUG", name  # from .env, through env_file
        assert environment["MAILWORKER_RECIPIENT_COOLDOWN"] == "7", name
        assert environment["MAILWORKER_LOG_FORMAT"] == "json", name
        for setting in REDIS_URL_SETTINGS:
            assert environment[setting] == "redis://:0f1e2d3c4b5a69788796a5b4c3d2e1f0@redis:6379/0"
    assert found["redis"]["command"][-2:] == ["--requirepass", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"]
    assert "ports" not in found["redis"]
    assert config["secrets"]["mailworker_secret_key"]["file"] == str(
        project / "secrets" / "mailworker_secret_key"
    )


@needs_compose
def test_compose_config_publishes_redis_on_loopback_with_the_override(project: Path) -> None:
    result = compose_config(project, "docker-compose.yml", "deploy/compose.redis-port.yml")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["services"]["redis"]["ports"] == ["127.0.0.1:6379:6379/tcp"]


@needs_compose
def test_compose_config_refuses_without_a_redis_password(project: Path) -> None:
    env_file = project / ".env"
    env_file.write_text(env_file.read_text().replace("REDIS_PASSWORD=0f1e", "#REDIS_PASSWORD=0f1e"))
    result = compose_config(project)
    assert result.returncode != 0
    assert "set REDIS_PASSWORD in .env" in result.stderr
