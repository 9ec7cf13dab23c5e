"""Bulk sending end to end: send_bulk -> Redis chunks -> real Celery worker -> real SMTP server (aiosmtpd).

Each test reads like the sentence of the issue it proves; the server's recordings are the judge of what
was delivered, and how many times.
"""

from __future__ import annotations

import time
from collections import Counter
from email.utils import parseaddr

import pytest

from config.errors import InvalidInput
from config.settings import get_settings
from tasks import api
from tests.support.smtp_server import ReceivedMessage, SmtpTestServer
from tests.test_oauth import SCOPE, USER, TokenEndpoint, new_token
from worker.bulk.chunks import run_chunk
from worker.bulk.progress import BulkJobs
from worker.delivery.ratelimit import RateLimiter
from worker.runtime import Runtime, runtime

pytestmark = pytest.mark.integration

LOCALES = ("en", "de", "fr")
SUBJECTS = {
    "en": "Test message from ACME",
    "de": "Testnachricht von ACME",
    "fr": "Message de test envoyé par ACME",
}


def save(realm: str, server: SmtpTestServer, **overrides) -> None:
    runtime().store.save(realm, server.settings_dict(**overrides))


def addresses(n: int, tag: str = "u") -> list[str]:
    return [f"{tag}{i}@example.com" for i in range(n)]


def arrivals_by_recipient(server: SmtpTestServer) -> Counter[str]:
    return Counter(rcpt for message in server.messages for rcpt in message.recipients)


@pytest.fixture(autouse=True)
def _worker(celery_worker):
    return celery_worker


def test_a_bulk_of_2000_in_three_locales_is_delivered_exactly_once(realm):
    with SmtpTestServer(pipelining=True) as server:
        save(realm, server)
        recipients = [{"email": to, "locale": LOCALES[i % 3]} for i, to in enumerate(addresses(2000))]

        job_id = api.send_bulk(realm, "email-test", recipients, context={"realm_name": "ACME"})
        progress = api.wait_for_bulk(job_id, timeout=60)

        assert progress["state"] == "done"
        counts = {name: progress[name] for name in ("total", "sent", "failed", "pending")}
        assert counts == {"total": 2000, "sent": 2000, "failed": 0, "pending": 0}
        assert progress["rate"] > 0 and progress["finished_at"] >= progress["started_at"]
        assert arrivals_by_recipient(server) == Counter(addresses(2000))  # everyone, once
        for index in (0, 1, 2, 1999):
            [received] = server.received_for(f"u{index}@example.com")
            assert received.message["Subject"] == SUBJECTS[LOCALES[index % 3]]
        assert "PIPELINING" not in server.verbs()  # (a reply keyword, not a command)
        assert server.connections < 20  # several messages per session, sessions reused across chunks


def test_each_recipient_gets_their_own_context_and_name(realm, smtp_server):
    save(realm, smtp_server)
    recipients = [
        {"email": "alice@example.com", "name": "Alice Liddell", "context": {"user": {"first_name": "Alice"}}},
        {"email": "bob@example.com", "locale": "de", "context": {"user": {"first_name": "Bob"}}},
        "carol@example.com",
    ]
    job_id = api.send_bulk(realm, "email-test", recipients, context={"realm_name": "ACME"})
    assert api.wait_for_bulk(job_id)["sent"] == 3

    def text(to: str) -> str:
        [received] = smtp_server.received_for(to)
        return str(received.message.get_body(("plain",)).get_content())

    assert "Hello Alice," in text("alice@example.com") and "Hallo Bob," in text("bob@example.com")
    assert "Hello," in text("carol@example.com")
    [alice] = smtp_server.received_for("alice@example.com")
    assert parseaddr(str(alice.message["To"])) == ("Alice Liddell", "alice@example.com")


def test_a_recipient_refused_with_550_is_dead_lettered_and_the_others_delivered(realm, smtp_server):
    save(realm, smtp_server)
    smtp_server.reject_recipient("u7@example.com", "550 5.1.1 no such user")
    job_id = api.send_bulk(realm, "email-test", addresses(50), chunk_size=20)

    progress = api.wait_for_bulk(job_id)

    assert (progress["sent"], progress["failed"], progress["state"]) == (49, 1, "done")
    assert arrivals_by_recipient(smtp_server) == Counter(a for a in addresses(50) if a != "u7@example.com")
    [letter] = runtime().dead_letters.list(realm=realm)
    assert (letter.to, letter.reason, letter.smtp_code) == ("u7@example.com", "permanent", 550)
    assert letter.task == "mail.bulk.chunk" and letter.job["to"] == "u7@example.com"
    assert "no such user" in letter.error
    # Not retried with its chunk: exactly one RCPT for the refused address.
    assert smtp_server.verbs().count("RCPT") == 50

    smtp_server.reset()  # the mailbox exists now: the dead letter goes out through mail.send
    result = api.wait_for_result(api.requeue_dead_letter(letter.job_id))
    assert result["status"] == "sent" and smtp_server.received_for("u7@example.com")


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("reply", [None, "421 4.7.0 too many messages on this connection"])
def test_a_server_limiting_messages_per_session_still_gets_everyone_once(realm, reply, pipelining):
    with SmtpTestServer(pipelining=pipelining) as server:
        save(realm, server)
        server.drop_after(7, reply)
        job_id = api.send_bulk(realm, "email-test", addresses(120), chunk_size=60)

        assert api.wait_for_bulk(job_id)["sent"] == 120
        assert arrivals_by_recipient(server) == Counter(addresses(120))
        assert server.connections >= 120 // 7


def test_a_chunk_run_again_after_partial_delivery_sends_only_the_rest(realm, smtp_server):
    """What a worker killed mid-chunk leaves behind: some done bits set, the broker message redelivered."""
    save(realm, smtp_server)
    jobs = runtime().bulk_jobs
    job_id = f"bulk-test-{realm}"
    jobs.create(job_id, realm=realm, template="email-test", locale=None, context={}, chunk_size=100)
    jobs.write_chunks(job_id, 0, [[{"to": to} for to in addresses(100)]])
    jobs.open(job_id, total=100, chunks=1)
    jobs.commit(job_id, sent=range(0, 60))  # accepted by the server before the "crash"
    rt = runtime()

    first = run_chunk(rt.services, jobs, RateLimiter(rt.redis, rt.keys), job_id, 0, claims=rt.claims)
    again = run_chunk(rt.services, jobs, RateLimiter(rt.redis, rt.keys), job_id, 0, claims=rt.claims)

    assert (first.status, first.sent, again.status, again.sent) == ("done", 40, "done", 0)
    assert arrivals_by_recipient(smtp_server) == Counter(addresses(100)[60:])
    progress = jobs.progress(job_id)
    assert (progress.sent, progress.pending, progress.chunks_done, progress.state) == (100, 0, 1, "done")


def test_cancel_stops_the_job_and_counts_the_rest_as_cancelled(realm, smtp_server):
    save(realm, smtp_server, rate_limit_per_second=100)
    job_id = api.send_bulk(realm, "email-test", addresses(1000), chunk_size=50)
    smtp_server.wait_for(50, timeout=10)

    assert api.cancel_bulk(job_id) == "cancelled"
    at_cancel = len(smtp_server.messages)
    progress = api.wait_for_bulk(job_id, timeout=30)

    assert progress["state"] == "cancelled" and progress["pending"] == 0
    assert progress["sent"] + progress["failed"] + progress["cancelled"] == 1000
    assert progress["cancelled"] >= 500
    time.sleep(0.3)
    assert len(smtp_server.messages) == progress["sent"]  # nothing goes out after the job ended
    # At most the groups in flight (4 worker threads, groups of 2 at 100/s) went out after the cancel.
    assert progress["sent"] - at_cancel <= 4 * 2
    assert api.cancel_bulk(job_id) == "cancelled"  # idempotent


class _TimedServer(SmtpTestServer):
    """Also records when each message arrived (server side), for the rate-limit check."""

    arrivals: list[float]

    def _record(self, message: ReceivedMessage) -> None:
        self.arrivals.append(time.monotonic())
        super()._record(message)


def test_the_realm_rate_limit_holds_across_all_senders(realm):
    per_second, total, window = 200, 1200, 2.5
    with _TimedServer(pipelining=True) as server:
        server.arrivals = []
        save(realm, server, rate_limit_per_second=per_second)
        started = time.monotonic()
        job_id = api.send_bulk(realm, "email-test", addresses(total), chunk_size=100)
        assert api.wait_for_bulk(job_id, timeout=60)["sent"] == total
        took = time.monotonic() - started

    stamps = sorted(server.arrivals)
    busiest = max(sum(1 for s in stamps[i:] if s < start + window) for i, start in enumerate(stamps))
    assert busiest <= per_second * window * 1.05, f"{busiest} messages in a {window:g}s window"
    assert took >= (total - per_second * 0.1) / per_second  # it was not just fast: it was held back


def test_a_wrong_password_fails_the_job_without_a_login_per_chunk(realm):
    with SmtpTestServer(tls="starttls", require_auth=("mailer", "right")) as server:
        save(realm, server, password="wrong")
        job_id = api.send_bulk(realm, "email-test", addresses(100), chunk_size=10)

        progress = api.wait_for_bulk(job_id)

        assert (progress["state"], progress["failed"], progress["sent"]) == ("failed", 100, 0)
        assert "535" in (progress["error"] or "")
        assert len(server.auth_attempts) <= 4  # the chunks already running when the first one failed
        letters = runtime().dead_letters.list(realm=realm, limit=1000)
        assert len(letters) == 100 and {letter.reason for letter in letters} == {"settings"}


@pytest.mark.parametrize(
    "recipients, kwargs, field",
    [
        (["a@example.com", "b@example.com", "not an address"], {}, "recipients[2].email"),
        ([], {}, "recipients"),
        ("a@example.com", {}, "recipients"),
        (["a@example.com"], {"template": "no-such-template"}, "template"),
        (["a@example.com"], {"locale": "x"}, "locale"),
        (["a@example.com"], {"locale": "en-" + "-".join(["abcdefgh"] * 28_000)}, "locale"),  # 250 KB
        (["a@example.com"], {"context": {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}, "context"),
        (["a@example.com", "b@example.com", {"email": "c@example.com", "context": {"link": "javascript:alert(1)"}}],
         {}, "recipients[2].context.link"),
        (["a@example.com"], {"template": "password-reset"}, "context"),  # needs user and link
        (["a@example.com"], {"chunk_size": 0}, "chunk_size"),
    ],
)  # fmt: skip
def test_bad_input_rejects_the_whole_call_and_leaves_nothing_in_redis(
    realm, smtp_server, recipients, kwargs, field
):
    save(realm, smtp_server)
    template = kwargs.pop("template", "email-test")
    before = set(runtime().redis.scan_iter(match=f"{runtime().keys.prefix}:bulk:*"))
    if field.startswith("recipients["):  # enough good ones first that chunks were written already
        recipients = [*addresses(450, "ok"), *recipients]
    with pytest.raises(InvalidInput) as error:
        api.send_bulk(realm, template, recipients, chunk_size=kwargs.pop("chunk_size", 100), **kwargs)
    assert str(error.value).startswith(f"{field.replace('[2]', '[452]')}:")
    assert set(runtime().redis.scan_iter(match=f"{runtime().keys.prefix}:bulk:*")) == before
    assert smtp_server.messages == []


# ---- XOAUTH2 realms ------------------------------------------------------------------------------------


def oauth_settings(server: SmtpTestServer, endpoint: TokenEndpoint, client) -> dict:
    return server.settings_dict(auth=True, auth_type="xoauth2", username=USER, oauth_token_url=endpoint.url,
                                oauth_client_id=client.client_id, oauth_client_secret=client.secret,
                                oauth_scope=SCOPE)  # fmt: skip


def test_a_bulk_on_an_xoauth2_realm_logs_in_with_the_realms_token(realm):
    """It used to fail at once: `auth_type is xoauth2 but no access token was obtained`."""
    with TokenEndpoint() as endpoint:
        client = endpoint.client()
        with SmtpTestServer(tls="starttls", xoauth2=(USER, client.token)) as server:
            runtime().store.save(realm, oauth_settings(server, endpoint, client))
            job_id = api.send_bulk(realm, "email-test", addresses(40), chunk_size=20)
            progress = api.wait_for_bulk(job_id)
            assert (progress["state"], progress["sent"], progress["failed"]) == ("done", 40, 0), progress
            assert arrivals_by_recipient(server) == Counter(addresses(40))
            assert {(a.mechanism, a.secret, a.success) for a in server.auth_attempts} == {
                ("XOAUTH2", client.token, True)
            }
            assert client.requests == 1  # one token for the realm, shared by the chunks


def test_a_fresh_worker_fetches_the_token_and_replaces_one_the_server_rejects(realm):
    """A new runtime (as in a new worker process: no token in memory, no session) sends a chunk; then the
    server stops accepting the token it logged in with, and the next session gets a new one, once."""
    with TokenEndpoint() as endpoint:
        client = endpoint.client()
        with SmtpTestServer(tls="starttls", xoauth2=(USER, client.token)) as server:
            runtime().store.save(realm, oauth_settings(server, endpoint, client))
            fresh = Runtime(get_settings())
            try:
                jobs = BulkJobs(fresh.redis, fresh.keys, fresh.settings.delivered_marker_ttl)
                limiter = RateLimiter(fresh.redis, fresh.keys)
                job_id = f"bulk-oauth-{realm}"
                jobs.create(
                    job_id, realm=realm, template="email-test", locale=None, context={}, chunk_size=10
                )
                jobs.write_chunks(job_id, 0, [[{"to": to} for to in addresses(10, "a")],
                                              [{"to": to} for to in addresses(10, "b")]])  # fmt: skip
                jobs.open(job_id, total=20, chunks=2)

                first = run_chunk(fresh.services, jobs, limiter, job_id, 0, claims=fresh.claims)
                assert (first.status, first.sent, client.requests) == ("done", 10, 1)

                old = client.token
                client.token = new_token()  # revoked early: the server takes only the next token now
                server.xoauth2 = (USER, client.token)
                fresh.services.pools.close_all()  # the next chunk logs in again, with the cached token
                second = run_chunk(fresh.services, jobs, limiter, job_id, 1, claims=fresh.claims)
                assert (second.status, second.sent, second.failed) == ("done", 10, 0), second
            finally:
                fresh.close()
            assert client.requests == 2
            assert [(a.secret, a.success) for a in server.auth_attempts] == [
                (old, True),
                (old, False),
                (client.token, True),
            ]
            assert arrivals_by_recipient(server) == Counter(addresses(10, "a") + addresses(10, "b"))
            assert jobs.progress(job_id).state == "done"
