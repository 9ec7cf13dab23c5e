"""The HTTP producer examples (examples/shell/send-email.sh, examples/java/SendEmail.java) run against the
real API server: the job id they print is delivered to the loopback SMTP server; a refusal is their error."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tasks import api as python_api
from tests.support.http import ApiServer, new_token
from tests.support.smtp_server import SmtpTestServer
from worker.runtime import runtime

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LINK = "https://iam.example.com/reset?key=abc"
SHELL = [str(EXAMPLES / "shell" / "send-email.sh")]
JAVA = ["java", str(EXAMPLES / "java" / "SendEmail.java")]
needs_shell = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq"
)
needs_java = pytest.mark.skipif(not shutil.which("java"), reason="needs a Java 17+ runtime")
PRODUCERS = [
    pytest.param(SHELL, id="shell", marks=needs_shell),
    pytest.param(JAVA, id="java", marks=needs_java),
]


def run(
    command: list[str], api: ApiServer, token: str | None, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWORKER_API_")}
    env.update({"MAILWORKER_API_URL": api.url, **({"MAILWORKER_API_TOKEN": token} if token else {})})
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", PRODUCERS)
def test_the_example_sends_an_email_through_the_api_and_prints_its_job_id(
    command: list[str], api: ApiServer, celery_worker: Any, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    to = f"example-{uuid.uuid4().hex[:8]}@example.com"
    token = new_token("producer", (realm,))
    done = run(command, api, token, realm, to, LINK, f"reset-{to}")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()

    assert python_api.wait_for_result(job_id)["status"] == "sent"
    [received] = smtp_server.received_for(to)
    assert LINK in received.message.get_body(("plain",)).get_content()
    again = run(command, api, token, realm, to, LINK, f"reset-{to}")  # the same Idempotency-Key: the same job
    assert again.stdout.strip() == job_id


@pytest.mark.parametrize("command", PRODUCERS)
def test_the_example_exits_with_the_servers_error_when_refused(
    command: list[str], api: ApiServer, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    token = new_token("producer", (realm,))
    bad = run(command, api, token, realm, "not an address", LINK)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: HTTP 422: ") and '"field":"to"' in bad.stderr
    other = run(command, api, token, f"{realm}-other", "alice@example.com", LINK)
    assert other.returncode == 1 and "HTTP 404" in other.stderr
    unsigned = run(command, api, None, realm, "alice@example.com", LINK)
    assert unsigned.returncode == 2 and "MAILWORKER_API_TOKEN" in unsigned.stderr
