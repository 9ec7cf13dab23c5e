"""No Redis URL's credentials in an error, a log line or a command's output (config/redis.py redact_url).

The decisions are pure and tested as tables and properties; the commands run for real (the `mailworker`
command in a process of its own, as an operator or a probe runs it) against the session's Redis on
127.0.0.1, or against a closed port there.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.errors import ConfigError
from config.redis import connect, redact_url, redact_urls_in
from tests.support.smtp_server import closed_port
from worker.logs import JsonFormatter, TextFormatter

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-PW"

REDACTED = [
    ("redis://:s3cret-PW@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://default:s3cret-PW@127.0.0.1:6379/0", "redis://default:***@127.0.0.1:6379/0"),
    ("rediss://default:s3cret-PW@127.0.0.1:6380/0?ssl_cert_reqs=required",
     "rediss://default:***@127.0.0.1:6380/0?ssl_cert_reqs=required"),
    ("redis://s3cret-PW@127.0.0.1/0", "redis://***@127.0.0.1/0"),  # a lone name may be the password
    ("redis://127.0.0.1:6379/0?password=s3cret-PW", "redis://127.0.0.1:6379/0?password=***"),
    ("redis://127.0.0.1/0?db=1&password=s3cret-PW&client_name=x",
     "redis://127.0.0.1/0?db=1&password=***&client_name=x"),
    ("redis://127.0.0.1/0?sentinel_password=s3cret-PW", "redis://127.0.0.1/0?sentinel_password=***"),
    ("sentinel://:s3cret-PW@127.0.0.1:26379;sentinel://:s3cret-PW@127.0.0.1:26380",
     "sentinel://:***@127.0.0.1:26379;sentinel://:***@127.0.0.1:26380"),
    ("unix://:s3cret-PW@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
    ("unix:///run/redis.sock?password=s3cret-PW", "unix:///run/redis.sock?password=***"),
    ("redis://:s3cret-PW@127.0.0.1:notaport/0", "redis://:***@127.0.0.1:notaport/0"),
    ("foo://:s3cret-PW@127.0.0.1/0", "foo://:***@127.0.0.1/0"),
    # malformed: unescaped `@`, `/`, `?`, `#`, `;` in the password, a missing scheme separator
    ("redis://user:s3cret@PW@127.0.0.1/0", "redis://user:***@127.0.0.1/0"),
    ("redis://:s3cret/PW@127.0.0.1/0", "redis://:***@127.0.0.1/0"),
    ("redis://:s3cret?PW#x@127.0.0.1/0", "redis://:***@127.0.0.1/0"),
    ("redis://:s3cret;PW@127.0.0.1/0", "redis://:***@127.0.0.1/0"),
    ("redis//:s3cret-PW@127.0.0.1/0", "***@127.0.0.1/0"),
    ("redis://a/b:c@127.0.0.1/0", "redis://***@127.0.0.1/0"),  # not a plain user name: all of it goes
    # nothing to hide
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("memory://", "memory://"),
    ("", ""),
    ("not a url", "not a url"),
]  # fmt: skip


@pytest.mark.parametrize("url, expected", REDACTED)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert redact_url(expected) == expected  # redacting twice changes nothing


IN_TEXT = [
    # a piece of a malformed URL quoted by redis-py's parser
    ("Port could not be cast to integer value as 's3cret'", "redis://:s3cret/PW@127.0.0.1/0",
     "Port could not be cast to integer value as '***'"),
    ("Port could not be cast to integer value as 'notaport'", "redis://:s3cret-PW@127.0.0.1:notaport/0",
     "Port could not be cast to integer value as 'notaport'"),
    ("cannot use redis://:s3cret-PW@127.0.0.1/0 now", "redis://:s3cret-PW@127.0.0.1/0",
     "cannot use redis://:***@127.0.0.1/0 now"),
    ("AUTH s3cret-PW failed", "redis://:s3cret-PW@127.0.0.1/0", "AUTH *** failed"),
    ("for url 'rediss://u:zz@h:1/0?password=qq' and http://x:y@z/", "",
     "for url 'rediss://u:***@h:1/0?password=***' and http://x:***@z/"),
    ("Error 111 connecting to 127.0.0.1:1. Connection refused.", "redis://:s3cret-PW@127.0.0.1:1/0",
     "Error 111 connecting to 127.0.0.1:1. Connection refused."),
]  # fmt: skip


@pytest.mark.parametrize("text, url, expected", IN_TEXT)
def test_redact_urls_in_text(text: str, url: str, expected: str) -> None:
    assert redact_urls_in(text, url) == expected


# A password made of anything a user might type unescaped (no ";scheme://" inside: that starts a list).
password_text = st.text(st.sampled_from("aZ9-_.~!$&'()*+,=:/?#[]@% ;\"\\é"), max_size=12).filter(
    lambda p: "://" not in p
)
urls = st.builds(
    lambda scheme, user, password, host, query, mark: (
        f"{scheme}://{user}:{mark}{password}@{host}/0{query}",
        mark,
    ),
    st.sampled_from(["redis", "rediss", "unix", "sentinel", "foo"]),
    st.sampled_from(["", "default", "mailer"]),
    password_text,
    st.sampled_from(["127.0.0.1", "127.0.0.1:6379", "127.0.0.1:x", "", "/run/redis.sock"]),
    st.sampled_from(["", "?db=1", "?ssl_cert_reqs=none&x=1"]),
    st.just("PWMARK"),
)


@settings(max_examples=150, deadline=None)
@given(url=urls, second=st.booleans(), in_query=st.booleans())
def test_no_url_shape_shows_its_password(url: tuple[str, str], second: bool, in_query: bool) -> None:
    text, mark = url
    if in_query:
        text += ("&" if "?" in text else "?") + f"password={mark}x"
    if second:
        text = f"{text};sentinel://:{mark}y@127.0.0.1:26380"
    assert mark not in redact_url(text)
    assert mark not in redact_urls_in(f"error for {text} ('{text}')", text)
    if not any(ch.isspace() for ch in text):  # in free text, white space ends a URL
        assert mark not in redact_urls_in(f"error: {text} failed")  # found without being told


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_redaction_never_raises(text: str) -> None:
    assert isinstance(redact_url(text), str)
    assert isinstance(redact_urls_in(text, text, "redis://:x@y"), str)


# ---- where URLs are printed --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret-PW@127.0.0.1:notaport/0",  # redis-py: port not a number
        "foo://:s3cret-PW@127.0.0.1/0",  # redis-py: unknown scheme
        "redis://:s3cret/PW@127.0.0.1:6379/0",  # redis-py quotes the piece before the slash as the port
    ],
)
def test_a_url_redis_cannot_read_is_reported_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        connect(url, check=False)
    message = str(caught.value)
    assert message.startswith("MAILWORKER_STORE_URL: ") and "is not a Redis URL" in message
    assert "s3cret" not in message and "***" in message


def test_an_unreachable_redis_is_reported_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        connect(f"redis://127.0.0.1:{closed_port()}/0?password={SECRET}")
    assert "cannot reach Redis" in str(caught.value) and SECRET not in str(caught.value)


def mailworker(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *argv],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    "broker",
    [
        f"redis://127.0.0.1:6379/0?password={SECRET}",  # kombu refuses it: its message must not echo it
        f"redis://:{SECRET}@127.0.0.1:notaport/0",
        f"foo://:{SECRET}@127.0.0.1/0",
    ],
)
def test_health_and_stats_never_show_the_brokers_password(broker: str) -> None:
    env = {"MAILWORKER_BROKER_URL": broker, "MAILWORKER_RESULT_BACKEND": broker}
    health = mailworker("health", "--timeout", "1", **env)
    stats = mailworker("stats", **env)
    assert health.returncode == 1 and stats.returncode == 1
    [broker_line] = [line for line in health.stdout.splitlines() if line.split()[1] == "broker"]
    assert broker_line.startswith("FAIL") and "MAILWORKER_BROKER_URL" in broker_line
    # one line naming the variable, not a traceback
    assert (
        stats.stderr.startswith("error: MAILWORKER_BROKER_URL: the broker at ")
        and stats.stderr.count("\n") == 1
    )
    for output in (health.stdout, health.stderr, stats.stdout, stats.stderr):
        assert SECRET not in output


@pytest.mark.integration
def test_health_reports_a_store_url_redis_cannot_read_as_a_failed_check() -> None:
    done = mailworker(
        "health", "--timeout", "1", MAILWORKER_STORE_URL=f"redis://:{SECRET}@127.0.0.1:notaport/0"
    )
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].startswith("FAIL  store   MAILWORKER_STORE_URL: ")
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.integration
def test_status_reports_a_result_backend_celery_cannot_load_in_one_line() -> None:
    done = mailworker("status", "some-job", MAILWORKER_RESULT_BACKEND=f"foo://:{SECRET}@127.0.0.1/0")
    assert done.returncode == 1
    assert done.stderr.startswith("error: MAILWORKER_RESULT_BACKEND: ") and done.stderr.count("\n") == 1
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize("formatter", [TextFormatter("%(message)s", secret_urls=(f"redis://:{SECRET}@h/0",)),
                                       JsonFormatter(secret_urls=(f"redis://:{SECRET}@h/0",))])  # fmt: skip
def test_log_lines_hide_url_credentials(formatter: logging.Formatter) -> None:
    record = logging.LogRecord(
        "kombu", logging.ERROR, __file__, 1, "cannot connect to %s: %s", (f"redis://:{SECRET}@h/0",
        f"AUTH {SECRET} refused; retrying rediss://u:other-pw@127.0.0.1/0"), None,
    )  # fmt: skip
    line = formatter.format(record)
    assert SECRET not in line and "other-pw" not in line and "redis://:***@h/0" in line
