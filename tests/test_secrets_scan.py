"""The SMTP password appears nowhere in clear, after a full run at DEBUG; TLS is not negotiable.

One run on a private Redis with a real `mailworker worker` process at DEBUG: settings saved and drafted
through the CLI (password from stdin), Test Connection, sends, retries, a permanent failure, a wrong
password, a self-signed server and a StartTLS-stripping one. Then every Redis key and value (store, broker
queues and unacked messages, results, dead letters, markers, stats), the broker messages peeked before a
worker took them, the worker's log, this process's log records and every CLI output are searched for the
password, in clear and as the AUTH PLAIN blob a server receives.
"""

from __future__ import annotations

import base64
import logging
import ssl
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.reliability.harness import MAILWORKER, ROOT, Cluster
from tests.support.smtp_server import SmtpTestServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


class SelfSigned:
    """Stands in for the test CA of SmtpTestServer: the server presents a self-signed certificate."""

    def __init__(self) -> None:
        self.authority = trustme.CA()
        self.ca_file = None

    def server_context(self, *_names: str) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as directory:
            cert, key = Path(directory, "cert.pem"), Path(directory, "key.pem")
            self.authority.cert_pem.write_to_path(str(cert))
            self.authority.private_key_pem.write_to_path(str(key))
            context.load_cert_chain(str(cert), str(key))
        return context


def redis_values(client: Any, key: str) -> list[str]:
    kind = client.type(key)
    if kind == "string":
        return [client.get(key) or ""]
    if kind == "hash":
        return [f"{k}={v}" for k, v in client.hgetall(key).items()]
    if kind == "list":
        return list(client.lrange(key, 0, -1))
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return list(client.zrange(key, 0, -1))
    if kind == "stream":
        return [str(entry) for entry in client.xrange(key)]
    return []


def test_no_password_anywhere_after_a_full_run_at_debug(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    password = f"S3cret-{uuid.uuid4().hex}-P&$$"
    wrong = f"Wr0ng-{uuid.uuid4().hex}"
    secrets = [password, wrong]
    blobs = [base64.b64encode(f"\0mailer\0{p}".encode()).decode() for p in secrets]
    outputs: list[str] = []

    with (
        Cluster.start(tmp_path) as cluster,
        SmtpTestServer(tls="starttls", require_auth=("mailer", password)) as server,
    ):
        env = cluster.env(MAILWORKER_LOG_LEVEL="DEBUG")

        def cli(*args: str, stdin: str | None = None, ok: bool = True) -> str:
            done = subprocess.run([str(MAILWORKER), *args], input=stdin, env=env, cwd=ROOT, capture_output=True,
                                  text=True, timeout=90)  # fmt: skip
            output = done.stdout + done.stderr
            outputs.append(output)
            assert (done.returncode == 0) is ok, output
            return output

        common = ["--from", "noreply@example.com", "--host", "127.0.0.1", "--port", str(server.port),
                  "--starttls", "--auth", "--username", "mailer", "--connect-timeout", "5", "--timeout", "5"]  # fmt: skip
        cli(
            "settings",
            "save",
            "--realm",
            "acme",
            *common,
            "--password-stdin",
            "--json",
            stdin=password + "\n",
        )
        cli("settings", "save", "--realm", "acme", "--timeout", "6", "--note", "second version", "--json")
        cli(
            "settings", "set", "--realm", "acme", "--timeout", "7", "--json"
        )  # a draft, password kept (encrypted)
        cli("settings", "save", "--realm", "wrongpw", *common, "--password-stdin", stdin=wrong)
        cli("settings", "save", "--realm", "wrongpw2", *common, "--password-stdin", stdin=wrong + "2")
        secrets.append(wrong + "2")

        selfsigned = SmtpTestServer(tls="starttls", require_auth=("mailer", password))
        selfsigned.ca = SelfSigned()  # type: ignore[assignment]
        selfsigned.start()
        stripping = SmtpTestServer(tls="none", offer_starttls=False, require_auth=("mailer", password),
                                   auth_require_tls=False).start()  # fmt: skip
        try:
            cluster.save_realm("selfsigned", selfsigned.settings_dict())
            cluster.save_realm("stripped", stripping.settings_dict(starttls=True, auth=True, username="mailer",
                                                                   password=password))  # fmt: skip

            # Jobs enqueued before any worker runs: the broker messages can be read as they travel.
            server.reject_recipient("gone@example.com", "550 5.1.1 gone")
            server.fail_next("451 4.3.0 try again", times=2)
            jobs = [cluster.job("acme", "password-reset", f"u{i}@example.com") for i in range(10)]
            jobs += [cluster.job("acme", "password-reset", "gone@example.com")]
            jobs += [cluster.job(realm, "email-verification", "v@example.com")
                     for realm in ("wrongpw", "selfsigned", "stripped")]  # fmt: skip
            ids = [cluster.enqueue(job) for job in jobs]
            broker_messages = cluster.queued_messages("transactional")
            assert len(broker_messages) == len(jobs)

            worker = cluster.worker(concurrency=2, loglevel="DEBUG")
            results = cluster.wait_results(ids, timeout=90)
            unacked = redis_values(cluster.redis, f"{cluster.prefix}:unacked")

            tested = cli("settings", "test", "--realm", "acme", "--json", "--send-to", "admin@example.com")
            cli("settings", "test", "--realm", "acme", "--saved")
            cli("settings", "test", "--realm", "wrongpw2", "--json", ok=False)
            cli("settings", "show", "--realm", "acme", "--json")
            cli("settings", "show", "--realm", "acme", "--draft", "--json")
            cli("settings", "history", "--realm", "acme", "--json")
            cli("settings", "history", "--realm", "acme")
            cli("dead", "list")

            keys = [str(k) for k in cluster.redis.scan_iter(count=1000)]
            stored = {key: redis_values(cluster.redis, key) for key in keys}
            worker_log = worker.log()
        finally:
            selfsigned.stop()
            stripping.stop()

    # What happened (so the scan below covers a real run).
    by_realm = {
        job.realm + ("-gone" if job.to == "gone@example.com" else ""): results.get(job.id) for job in jobs
    }
    assert sum(1 for j in jobs[:10] if results[j.id]["status"] == "sent") == 10
    assert sum(results[j.id]["attempts"] for j in jobs[:10]) == 12  # the two 451s were retried
    assert by_realm["acme-gone"]["reason"] == "permanent"
    assert by_realm["wrongpw"]["reason"] == "settings" and by_realm["wrongpw"]["smtp_code"] == 535
    assert '"ok": true' in tested.replace(" ", "").replace('"ok":true', '"ok": true')
    # TLS: a self-signed certificate is refused by default, with a clear error; no password reaches it.
    assert by_realm["selfsigned"]["reason"] == "settings"
    assert "certificate verify failed" in by_realm["selfsigned"]["error"]
    assert (
        "self-signed" in by_realm["selfsigned"]["error"] or "self signed" in by_realm["selfsigned"]["error"]
    )
    assert selfsigned.messages == [] and selfsigned.auth_attempts == []
    # StartTLS stripped from the EHLO reply: no AUTH, no MAIL in plaintext.
    assert by_realm["stripped"]["reason"] == "settings" and "StartTLS" in by_realm["stripped"]["error"]
    assert stripping.auth_attempts == [] and stripping.messages == []
    assert "AUTH" not in stripping.verbs() and "MAIL" not in stripping.verbs()
    assert "DEBUG" in worker_log and len(worker_log) > 1000  # the worker really logged at DEBUG

    # The scan.
    haystacks: dict[str, str] = {
        "worker log": worker_log,
        "cli output": "\n".join(outputs),
        "caplog": "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records),
        "broker messages": "\n".join(broker_messages),
        "unacked": "\n".join(unacked),
        "results": "\n".join(str(r) for r in results.values()),
    }
    for key, values in stored.items():
        haystacks[f"redis {key}"] = key + "\n" + "\n".join(values)
    leaks = [
        (where, secret[:8])
        for where, text in haystacks.items()
        for secret in secrets + blobs
        if secret in text
    ]
    families = sorted({key.split(":")[1] if ":" in key else key.rsplit("-", 1)[0] for key in stored})
    print(
        f"\nFIGURES secrets-scan: redis_keys={len(stored)} broker_messages={len(broker_messages)} "
        f"worker_log_bytes={len(worker_log)} cli_outputs={len(outputs)} log_records={len(caplog.records)} "
        f"results={len(results)} leaked={len(leaks)} key_families={families}"
    )
    assert len(stored) > 20 and any(k.startswith("celery-task-meta-") for k in stored)
    assert any(":realm:acme:saved" in k for k in stored) and any(":realm:acme:draft" in k for k in stored)
    assert leaks == []
