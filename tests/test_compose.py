"""The deployment files: docker-compose.yml, deploy/.env.example, deploy/compose.redis-port.yml, Dockerfile.

Each test stands for something an operator ran into: a setting in .env that never reached a container, a
key or a Redis password printed by `docker compose config`, a Redis that evicted queued mail, an open
Flower, a log that filled the disk, an image that changed under the same tag. The structure is read from
the files; where a command is in them (Redis' command line, the health checks, Flower's entry point) it is
run here against servers on 127.0.0.1; `docker compose config` itself runs when Compose 1.29 is installed
(.ci/run installs it).
"""

from __future__ import annotations

import os
import re
import shlex
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
# The api seals a password an admin saves (the console's Save), so it has the key too; the bounce receiver
# checks VERP signatures with it.
KEY_USERS = {"worker-transactional", "worker-bulk", "worker-callbacks", "api", "bounces"}
SECRET_MOUNT = "/run/secrets/mailworker_secret_key"
REDIS_URL_SETTINGS = ("MAILWORKER_BROKER_URL", "MAILWORKER_RESULT_BACKEND", "MAILWORKER_STORE_URL")
# The profile `sentinel`: a replica of `redis` and three sentinels (docs/operations.md, "Redis Sentinel").
SENTINEL_PROFILE = ("redis-replica", "sentinel-1", "sentinel-2", "sentinel-3")
# Redis and every service of the image (each connects to Redis) get the password, as a file.
PASSWORD_USERS = {
    "redis",
    *SENTINEL_PROFILE,
    "worker-transactional",
    "worker-bulk",
    "worker-callbacks",
    "ingest",
    "api",
    "bounces",
    "flower",
}
PASSWORD_MOUNT = "/run/secrets/redis_password"

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
    # The secret files under secrets/ are the operator's to create (secrets/.gitignore keeps them out).
    missing = sorted(
        p for p in paths if not (ROOT / p).exists() and not p.startswith(("secrets/", "./secrets/"))
    )
    assert not missing, f"deploy/.env.example points to files that do not exist: {missing}"


def test_every_compose_variable_is_in_the_env_example_and_no_other() -> None:
    documented = {name for name, _ in env_example()}
    used = set(compose_variables(COMPOSE_FILE, REDIS_PORT_FILE))
    assert used - documented == set()
    others = {n for n in documented if not n.startswith(("MAILWORKER_", "COMPOSE_"))}
    assert others <= used, f"in deploy/.env.example but read by nothing: {sorted(others - used)}"


def test_the_env_example_holds_no_secret() -> None:
    # It is copied to .env, the env_file of every container: the key and the Redis password belong in
    # secret files, and the example says how to make them.
    values = dict(env_example())
    assert "REDIS_PASSWORD" not in values
    assert values["MAILWORKER_SECRET_KEY"] == ""
    assert values["MAILWORKER_REDIS_PASSWORD_FILE"] == ""
    assert not any(line.startswith("MAILWORKER_") for line in ENV_EXAMPLE.read_text().splitlines())
    text = ENV_EXAMPLE.read_text()
    assert "openssl rand -hex 32 > secrets/redis_password" in text
    assert "chown 10001 secrets/redis_password && chmod 0400 secrets/redis_password" in text


# ---- docker-compose.yml, read as YAML ----


def test_every_service_of_the_image_reads_the_env_file() -> None:
    assert set(app_services()) == {
        "worker-transactional",
        "worker-bulk",
        "worker-callbacks",
        "ingest",
        "api",
        "bounces",
        "flower",
    }
    for name, service in app_services().items():
        env_file = service.get("env_file")
        assert env_file == ".env" or (isinstance(env_file, list) and ".env" in env_file), name


def test_every_redis_url_takes_the_password_from_the_secret_file(tmp_path: Path) -> None:
    # No URL carries the password (it would show in `docker compose config`): each service reads it from
    # the secret redis_password, through MAILWORKER_REDIS_PASSWORD_FILE.
    (tmp_path / "redis_password").write_text("pw-from-the-file\n")
    for name, service in app_services().items():
        environment = service["environment"]
        assert "redis_password" in service["secrets"], name
        assert environment["MAILWORKER_REDIS_PASSWORD_FILE"] == PASSWORD_MOUNT, name
        urls = {setting: interpolate(environment[setting], {}) for setting in REDIS_URL_SETTINGS}
        assert set(urls.values()) == {"redis://redis:6379/0"}, name
        # What the service makes of them in its container, the secret mounted at PASSWORD_MOUNT:
        in_container = ServiceSettings(
            _env_file=None,  # type: ignore[call-arg]
            **{s.removeprefix("MAILWORKER_").lower(): url for s, url in urls.items()},
            redis_password_file=str(tmp_path / "redis_password"),
        )
        assert {in_container.broker_url, in_container.result_backend, in_container.store_url} == {
            "redis://:pw-from-the-file@redis:6379/0"
        }, name


def test_every_service_that_talks_to_redis_gets_the_password_file_and_no_other_does() -> None:
    for name, service in services().items():
        assert ("redis_password" in service.get("secrets", [])) == (name in PASSWORD_USERS), name
        assert "REDISCLI_AUTH" not in service.get("environment", {}), name  # the password, as a variable
    assert services()["redis"]["environment"] == {"REDIS_PASSWORD_FILE": PASSWORD_MOUNT}
    secret = load(COMPOSE_FILE)["secrets"]["redis_password"]
    assert interpolate(secret["file"], {}) == "./secrets/redis_password"
    assert interpolate(secret["file"], {"SECRETS_DIR": "/etc/mailworker"}) == "/etc/mailworker/redis_password"


def test_no_secret_is_a_compose_variable() -> None:
    # A ${VARIABLE} is substituted into the configuration: `docker compose config` and `docker inspect`
    # print it. Secrets are files; a REDIS_PASSWORD line left in an old .env is blanked for the containers.
    used = set(compose_variables(COMPOSE_FILE, REDIS_PORT_FILE))
    assert not {n for n in used if re.search(r"PASSWORD|SECRET_|_KEY$|TOKEN|AUTH", n)}
    for name, service in app_services().items():
        assert service["environment"]["REDIS_PASSWORD"] == "", name


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


def redis_script(env: dict[str, str] | None = None) -> str:
    """The shell script that starts Redis (it reads the password file), as Compose hands it to `sh -c`."""
    command = services()["redis"]["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 3
    return interpolate(command[2], env or {})


def redis_options(env: dict[str, str] | None = None) -> dict[str, str]:
    """The options the script passes to redis-server, through the image's entry point."""
    _, found, rest = redis_script(env).partition("exec docker-entrypoint.sh ")
    assert found, "Redis must start through the image's entry point (it drops root for the redis user)"
    argv = shlex.split(rest)
    assert argv[0] == "redis-server"
    return dict(zip(argv[1::2], argv[2::2], strict=True))


def test_redis_keeps_its_data_and_refuses_rather_than_evicts() -> None:
    options = redis_options()
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    # Without maxmemory the policy never applies: Redis grows until the kernel or the limit kills it.
    assert options["--maxmemory"] == "512mb"
    assert redis_options({"REDIS_MAXMEMORY": "2gb"})["--maxmemory"] == "2gb"
    # The password: the shell variable read from the secret file, quoted (any character stays one word).
    assert options["--requirepass"] == "$password"
    assert '--requirepass "$password"' in redis_script()


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
    assert flower["secrets"] == ["redis_password", "flower_basic_auth"]
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


# A password with what a shell or a URL would otherwise split, expand or cut: the file's line is the password.
SPECIAL_PASSWORD = 'p@ss w/rd:"$HOME"\'`id`;#?%41&*'


@pytest.fixture
def fake_entrypoint(tmp_path: Path) -> Path:
    """Stands in for the redis image's docker-entrypoint.sh: runs redis-server as it is asked to, on
    127.0.0.1 and a port and directory of the test's own (later options win)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    bin_dir = tmp_path / "entrypoint-bin"
    bin_dir.mkdir()
    script = bin_dir / "docker-entrypoint.sh"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = redis-server ] || { echo "not redis-server: $1" >&2; exit 99; }\n'
        "shift\n"
        f'exec {binary} "$@" --port "$TEST_REDIS_PORT" --bind 127.0.0.1 --dir "$TEST_REDIS_DIR"\n'
    )
    script.chmod(0o755)
    return bin_dir


def start_compose_redis(
    fake_entrypoint: Path, directory: Path, password_file: Path, port: int
) -> subprocess.Popen[bytes]:
    """The compose file's command for Redis, run by sh as the container runs it, the secret at password_file."""
    env = {
        "PATH": f"{fake_entrypoint}:/usr/bin:/bin",
        "REDIS_PASSWORD_FILE": str(password_file),  # the service's environment, pointed at a temp file
        "TEST_REDIS_PORT": str(port),
        "TEST_REDIS_DIR": str(directory),
    }
    return subprocess.Popen(
        ["sh", "-c", redis_script()], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.fixture
def compose_redis(tmp_path: Path, fake_entrypoint: Path) -> Iterator[tuple[int, str, Path]]:
    """redis-server started by the compose file's command, on 127.0.0.1 and a port of its own, with its
    password in a secret file (as `openssl rand ... > secrets/redis_password` writes it: one line)."""
    password = SPECIAL_PASSWORD + os.urandom(8).hex()
    password_file = tmp_path / "redis_password"
    password_file.write_text(password + "\n")
    port = free_port()
    (tmp_path / "data").mkdir()
    process = start_compose_redis(fake_entrypoint, tmp_path / "data", password_file, port)
    try:
        client = redis.Redis(
            host="127.0.0.1", port=port, password=password, decode_responses=True, socket_timeout=2
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, "redis-server refused the compose file's command line"
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.05)
        yield port, password, password_file
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_redis_runs_as_configured(compose_redis: tuple[int, str, Path]) -> None:
    port, password, _ = compose_redis
    client = redis.Redis(
        host="127.0.0.1", port=port, password=password, decode_responses=True, socket_timeout=2
    )
    assert client.config_get("maxmemory") == {"maxmemory": str(512 * 1024 * 1024)}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("requirepass") == {"requirepass": password}  # every character of the line
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).ping()
    # Once it runs, redis-server's command line (what `ps` shows on the host) no longer holds the password.
    pid = client.info("server")["process_id"]
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        assert password.encode() not in cmdline.read_bytes()


def test_the_services_reach_redis_with_the_password_from_the_same_file(
    compose_redis: tuple[int, str, Path],
) -> None:
    # The server and its clients read one file, each in its own way (sh's $(cat), config/settings.py):
    # they agree on every character, and the clients' URLs quote it.
    port, _, password_file = compose_redis
    url = f"redis://127.0.0.1:{port}/0"
    settings = ServiceSettings(
        _env_file=None,  # type: ignore[call-arg]
        store_url=url, broker_url=url, result_backend=url, redis_password_file=str(password_file),
    )  # fmt: skip
    assert redis.Redis.from_url(settings.store_url, socket_timeout=2).ping()


def redis_healthcheck(password_file: Path, port: int, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The redis service's health check, run by sh as Docker runs CMD-SHELL, its redis-cli pointed at port."""
    test = services()["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and len(test) == 2
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        pytest.skip("redis-cli is not installed")
    bin_dir = tmp_path / "cli-bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "redis-cli"  # the check says `redis-cli ping`: the container's Redis, here on port
    wrapper.write_text(f'#!/bin/sh\nexec {redis_cli} -h 127.0.0.1 -p {port} "$@"\n')
    wrapper.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "REDIS_PASSWORD_FILE": str(password_file)}
    return subprocess.run(
        ["sh", "-c", interpolate(test[1], {})], env=env, capture_output=True, text=True, timeout=30
    )


def test_the_redis_health_check_authenticates_from_the_file(
    compose_redis: tuple[int, str, Path], tmp_path: Path
) -> None:
    port, password, password_file = compose_redis
    healthy = redis_healthcheck(password_file, port, tmp_path)
    assert healthy.returncode == 0, healthy.stderr
    assert password not in healthy.stdout + healthy.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    for password_file in (wrong, tmp_path / "absent"):
        assert redis_healthcheck(password_file, port, tmp_path).returncode != 0, password_file.name
    # The password travels in redis-cli's environment, never on a command line.
    assert "REDISCLI_AUTH=" in services()["redis"]["healthcheck"]["test"][1]
    assert " -a " not in services()["redis"]["healthcheck"]["test"][1]


@pytest.mark.parametrize(
    "content",
    [None, "", "\n", "  \n", " pw\n", "pw \n", "pw\r\n", "pw\t"],
    ids=["no-file", "empty", "blank-line", "spaces", "space-before", "space-after", "crlf", "tab-after"],
)
def test_redis_refuses_to_start_without_a_password(
    tmp_path: Path, fake_entrypoint: Path, content: str | None
) -> None:
    # `--requirepass ""` would start a Redis that anyone on the network reaches without a password; white
    # space around it is a password the services refuse (config/settings.py read_password_file).
    password_file = tmp_path / "redis_password"
    if content is not None:
        password_file.write_text(content)
    process = start_compose_redis(fake_entrypoint, tmp_path, password_file, free_port())
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()  # it started a Redis after all
        process.wait(timeout=10)
        raise AssertionError("redis-server started with that password file") from None
    assert process.returncode == 78
    assert b"error: Redis needs its password in the secret redis_password" in stderr
    assert stderr.rstrip().endswith(b"refusing to start")


# ---- `docker-compose config`: what Compose itself makes of the files ----

DOCKER_COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose is not installed")
PROJECT_KEY = Fernet.generate_key().decode()
PROJECT_REDIS_PASSWORD = os.urandom(32).hex()  # what `openssl rand -hex 32` writes


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the deployment as an operator has it: .env from the example, the secret files written."""
    (tmp_path / "deploy").mkdir()
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(REDIS_PORT_FILE, tmp_path / "deploy" / REDIS_PORT_FILE.name)
    env = ENV_EXAMPLE.read_text() + "MAILWORKER_LOG_LEVEL=DEBUG\nMAILWORKER_RECIPIENT_COOLDOWN=7\n"
    (tmp_path / ".env").write_text(env)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "redis_password").write_text(f"{PROJECT_REDIS_PASSWORD}\n")
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
def test_compose_config_gives_settings_to_all_and_the_key_to_the_workers_and_the_api_only(
    project: Path,
) -> None:
    result = compose_config(project)
    assert result.returncode == 0, result.stderr
    assert PROJECT_KEY not in result.stdout and PROJECT_KEY not in result.stderr
    assert "flower-password-marker" not in result.stdout
    config = yaml.safe_load(result.stdout)
    found = config["services"]
    assert set(found) == {
        "redis",
        "worker-transactional",
        "worker-bulk",
        "worker-callbacks",
        "ingest",
        "api",
        "bounces",
        "flower",
        "mailpit",
        *SENTINEL_PROFILE,
    }
    expected = {
        "redis": {"redis_password"},
        **{name: {"redis_password"} for name in SENTINEL_PROFILE},
        "worker-transactional": {"redis_password", "mailworker_secret_key"},
        "worker-bulk": {"redis_password", "mailworker_secret_key"},
        "worker-callbacks": {"redis_password", "mailworker_secret_key"},
        "ingest": {"redis_password"},
        "api": {"redis_password", "mailworker_secret_key"},
        "bounces": {"redis_password", "mailworker_secret_key"},
        "flower": {"redis_password", "flower_basic_auth"},
        "mailpit": set(),
    }
    assert {
        name: {s["source"] for s in service.get("secrets", [])} for name, service in found.items()
    } == expected
    for name in app_services():
        environment = found[name]["environment"]
        assert environment["MAILWORKER_LOG_LEVEL"] == "DEBUG", name  # from .env, through env_file
        assert environment["MAILWORKER_RECIPIENT_COOLDOWN"] == "7", name
        assert environment["MAILWORKER_LOG_FORMAT"] == "json", name
        assert environment["MAILWORKER_REDIS_PASSWORD_FILE"] == PASSWORD_MOUNT, name
        for setting in REDIS_URL_SETTINGS:
            assert environment[setting] == "redis://redis:6379/0", (name, setting)
    assert found["redis"]["environment"] == {"REDIS_PASSWORD_FILE": PASSWORD_MOUNT}
    assert "ports" not in found["redis"]
    for secret in ("redis_password", "mailworker_secret_key"):
        assert config["secrets"][secret]["file"] == str(project / "secrets" / secret)


@needs_compose
@pytest.mark.parametrize(
    "files",
    [("docker-compose.yml",), ("docker-compose.yml", "deploy/compose.redis-port.yml")],
    ids=["compose", "with-redis-port"],
)
def test_compose_config_prints_every_setting_and_no_secret(project: Path, files: tuple[str, ...]) -> None:
    # What `docker compose config` prints is what `docker inspect` shows and what lands in tickets and
    # chat: the operator's settings, and none of the secrets (each a random value of its own here).
    env_file = project / ".env"
    # A REDIS_PASSWORD line left from before the password was a secret file reaches no container either.
    env_file.write_text(env_file.read_text() + "REDIS_PASSWORD=leftover-0123456789abcdef\n")
    result = compose_config(project, *files)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for secret in (
        PROJECT_REDIS_PASSWORD,
        PROJECT_KEY,
        "flower-password-marker",
        "leftover-0123456789abcdef",
    ):
        assert secret not in output
    config = yaml.safe_load(result.stdout)
    for name in app_services():
        assert config["services"][name]["environment"]["MAILWORKER_RECIPIENT_COOLDOWN"] == "7", name


@needs_compose
def test_compose_config_with_the_sentinel_profile_points_every_service_at_the_sentinels(
    project: Path,
) -> None:
    env_file = project / ".env"
    # The two lines the example shows commented out, as an operator turns them on.
    lines = [line.removeprefix("#") if line.startswith(("#REDIS_URL=", "#SENTINEL_MASTER=")) else line
             for line in env_file.read_text().splitlines()]  # fmt: skip
    env_file.write_text("\n".join(lines) + "\nCOMPOSE_PROFILES=sentinel\n")
    result = compose_config(project)
    assert result.returncode == 0, result.stderr
    assert PROJECT_REDIS_PASSWORD not in result.stdout + result.stderr
    found = yaml.safe_load(result.stdout)["services"]
    url = dict(env_example())["REDIS_URL"]
    for name in app_services():
        environment = found[name]["environment"]
        assert {environment[setting] for setting in REDIS_URL_SETTINGS} == {url}, name
        assert environment["MAILWORKER_SENTINEL_MASTER"] == "mailworker", name
        settings = ServiceSettings(_env_file=None, **{  # type: ignore[call-arg]
            k.removeprefix("MAILWORKER_").lower(): v for k, v in environment.items()
            if k.startswith("MAILWORKER_") and k not in ("MAILWORKER_REDIS_PASSWORD_FILE", "MAILWORKER_SECRET_KEY_FILE")
        })  # fmt: skip
        assert settings.sentinel.master == "mailworker"


def test_the_sentinel_profile_is_a_replica_and_three_sentinels_of_redis_with_a_quorum() -> None:
    for name in SENTINEL_PROFILE:
        service = services()[name]
        assert service["profiles"] == ["sentinel"], name
        assert "ports" not in service, name  # reached inside the compose network only
        assert service["environment"] == {"REDIS_PASSWORD_FILE": PASSWORD_MOUNT}, name
    replica = interpolate(services()["redis-replica"]["command"][2], {})
    for option in ("--appendonly yes", "--replicaof redis 6379", '--masterauth "$password"',
                   '--requirepass "$password"', "--maxmemory-policy noeviction"):  # fmt: skip
        assert option in replica
    sentinels = [interpolate(services()[f"sentinel-{i}"]["command"][2], {}) for i in (1, 2, 3)]
    assert len(set(sentinels)) == 1
    assert "'sentinel monitor mailworker redis 6379 2'" in sentinels[0]  # 2 of 3 agree before a failover
    assert "--sentinel" in sentinels[0] and "auth-pass mailworker" in sentinels[0]
    assert dict(env_example())["SENTINEL_MASTER"] == "mailworker"


@needs_compose
def test_compose_config_publishes_redis_on_loopback_with_the_override(project: Path) -> None:
    result = compose_config(project, "docker-compose.yml", "deploy/compose.redis-port.yml")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["services"]["redis"]["ports"] == ["127.0.0.1:6379:6379/tcp"]


@needs_compose
def test_compose_config_needs_no_password_variable(project: Path) -> None:
    # .env as the example has it, untouched: nothing to fill in (the password is a file). Without the file,
    # Redis refuses to start (test_redis_refuses_to_start_without_a_password) and so do the services
    # (tests/test_redis_password_file.py): Compose 1.29 does not check the secret files.
    shutil.copy(ENV_EXAMPLE, project / ".env")
    (project / "secrets" / "redis_password").unlink()
    result = compose_config(project)
    assert result.returncode == 0, result.stderr
    assert "REDIS_PASSWORD" not in result.stderr


@pytest.mark.integration
def test_the_api_healthcheck_passes_while_it_serves_and_fails_when_it_does_not(redis_url: str) -> None:
    """The api service's own health check, run against `mailworker serve` on a free port of 127.0.0.1."""
    port = free_port()
    argv = [part.replace("127.0.0.1:8025", f"127.0.0.1:{port}") for part in healthcheck_argv("api")]
    assert argv != healthcheck_argv("api"), "the health check no longer names the api's address"
    server = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve", "--port", str(port)], cwd=ROOT,
                              env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert result.returncode == 0, result.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=30).returncode != 0
