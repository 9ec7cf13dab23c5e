"""Bulk building blocks without a worker: recipients and chunks, the job's bookkeeping in Redis (fakeredis
runs the Lua scripts), rendering once per locale, the progress CLI, and how `mailworker worker` isolates
bulk from transactional mail."""

from __future__ import annotations

import argparse
import sys

import pytest

from config.errors import InvalidInput, NotFound
from config.keys import Keys
from config.smtp import check_address, parse_smtp_settings
from worker.bulk.chunks import group_size
from worker.bulk.messages import MessageFactory, Recipient
from worker.bulk.progress import BulkJob, BulkJobs
from worker.bulk.recipients import check_recipient_address, chunked, parse_recipient
from worker.cli import build_parser
from worker.cli.job_cmd import render_progress
from worker.cli.worker_cmd import BULK_NICENESS, child_commands
from worker.content.render import TemplateRenderer
from worker.jobs.model import MAX_JSON_DEPTH
from worker.smtp.wire import dot_stuffed


def nested(levels: int) -> dict:
    value: dict | int = 1
    for _ in range(levels):
        value = {"a": value}
    return value  # type: ignore[return-value]


@pytest.fixture
def jobs(fake_redis) -> BulkJobs:
    return BulkJobs(fake_redis, Keys("t"), ttl=3600)


def new_job(jobs: BulkJobs, total: int, chunk_size: int, job_id: str = "j1") -> str:
    jobs.create(
        job_id, realm="acme", template="email-test", locale="de", context={"a": 1}, chunk_size=chunk_size
    )
    chunks = list(chunked((f"u{i}@example.com" for i in range(total)), chunk_size, allow_utf8=False))
    jobs.write_chunks(job_id, 0, chunks)
    jobs.open(job_id, total=total, chunks=len(chunks))
    return job_id


# ---- recipients -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, stored",
    [
        ("alice@Example.COM", {"to": "alice@example.com"}),
        ({"email": "bob@example.com", "locale": "pt-BR"}, {"to": "bob@example.com", "locale": "pt-BR"}),
        (
            {"email": "c@example.com", "name": "Carol", "context": {"user": {"first_name": "C"}}},
            {"to": "c@example.com", "name": "Carol", "context": {"user": {"first_name": "C"}}},
        ),
        (
            {"email": "d@example.com", "context": {"link": "https://x.example/r", "link_expiration": 5}},
            {"to": "d@example.com", "context": {"link": "https://x.example/r", "link_expiration": 5}},
        ),
        ({"email": "e@example.com", "context": nested(MAX_JSON_DEPTH)},
         {"to": "e@example.com", "context": nested(MAX_JSON_DEPTH)}),
    ],
)  # fmt: skip
def test_a_recipient_is_stored_in_a_compact_normal_form(raw, stored):
    assert parse_recipient(0, raw, allow_utf8=False) == stored


@pytest.mark.parametrize(
    "raw, field",
    [
        ("not-an-address", "recipients[4].email"),
        ({"email": "a@example.com", "locale": "../etc"}, "recipients[4].locale"),
        ({"email": "a@example.com", "name": "x\r\nBcc: evil@example.com"}, "recipients[4].name"),
        ({"email": "a@example.com", "context": "x"}, "recipients[4].context"),
        ({"email": "a@example.com", "context": {"big": "x" * 9000}}, "recipients[4].context"),
        ({"mail": "a@example.com"}, "recipients[4].mail"),
        (42, "recipients[4]"),
        # The job's rules, one implementation (worker/jobs/model.py), named by the recipient's index:
        ({"email": "a@example.com", "locale": "en-" + "-".join(["abcdefgh"] * 4)}, "recipients[4].locale"),
        ({"email": "a@example.com", "locale": "en-" + "-".join(["abcdefgh"] * 28_000)}, "recipients[4].locale"),
        ({"email": "a@example.com", "context": {"link": "javascript:alert(1)"}}, "recipients[4].context.link"),
        ({"email": "a@example.com", "context": {"notice": {"link": "data:text/html,x"}}},
         "recipients[4].context.notice.link"),
        ({"email": "a@example.com", "context": {"link_expiration": 10**400}},
         "recipients[4].context.link_expiration"),
        ({"email": "a@example.com", "context": nested(MAX_JSON_DEPTH + 1)}, "recipients[4].context"),
        ({"email": "a@example.com", "context": nested(5000)}, "recipients[4].context"),
    ],
)  # fmt: skip
def test_a_bad_recipient_is_named_by_its_index_and_field(raw, field):
    with pytest.raises(InvalidInput) as error:
        parse_recipient(4, raw, allow_utf8=False)
    assert str(error.value).startswith(f"{field}:")


@pytest.mark.parametrize(
    "address",
    ["a@example.com", "A.b+c@Sub.Example.ORG", "a..b@example.com", ".a@example.com", "a@localhost",
     "a@-bad.example.com", "a@example", "ü@example.com", "a@bücher.example", "a@" + "x" * 64 + ".com",
     "x" * 65 + "@example.com", '"quoted"@example.com'],
)  # fmt: skip
def test_the_fast_address_check_agrees_with_email_validator(address):
    def verdict(check):
        try:
            return check(address, allow_utf8=False)
        except ValueError:
            return "invalid"

    assert verdict(check_recipient_address) == verdict(check_address)


def test_recipients_stream_into_chunks_of_the_given_size():
    chunks = list(chunked((f"u{i}@example.com" for i in range(450)), 200, allow_utf8=False))
    assert [len(c) for c in chunks] == [200, 200, 50]
    assert chunks[2][-1] == {"to": "u449@example.com"}


@pytest.mark.parametrize("per_second, size", [(None, 20), (3000, 20), (200, 4), (100, 2), (14, 1), (0.5, 1)])
def test_a_group_never_bursts_past_a_small_share_of_the_rate(per_second, size):
    assert group_size(per_second) == size


# ---- the job in Redis ---------------------------------------------------------------------------------------


def test_counting_is_exactly_once_however_often_a_recipient_is_committed(jobs):
    job_id = new_job(jobs, total=450, chunk_size=200)
    assert jobs.start(job_id) == "running"
    jobs.commit(job_id, sent=[0, 1, 2], failed=[3])
    jobs.commit(job_id, sent=[0, 1, 2, 4], failed=[3])  # a redelivered chunk commits them again
    p = jobs.progress(job_id)
    assert (p.total, p.sent, p.failed, p.cancelled, p.pending, p.state) == (450, 4, 1, 0, 445, "running")
    assert jobs.done_flags(job_id, 0, 6) == [True, True, True, True, True, False]
    assert jobs.done_flags(job_id, 200, 3) == [False, False, False]


def test_the_last_chunk_finishing_ends_the_job_once(jobs):
    job_id = new_job(jobs, total=450, chunk_size=200)
    jobs.start(job_id)
    jobs.commit(job_id, sent=range(450))
    for chunk in (0, 1, 1, 2):  # chunk 1 twice: a duplicate task
        state = jobs.finish_chunk(job_id, chunk)
    p = jobs.progress(job_id)
    assert (state, p.chunks_done, p.finished, p.sent) == ("done", 3, True, 450)
    assert jobs.recipients(job_id, 0) is None  # a finished chunk's recipients are gone
    assert p.finished_at is not None and p.started_at is not None and p.finished_at >= p.started_at


def test_cancel_turns_a_running_job_cancelled_and_a_finished_one_stays(jobs):
    job_id = new_job(jobs, total=10, chunk_size=5)
    assert jobs.cancel(job_id) == "cancelled"
    assert jobs.start(job_id) == "cancelled"  # a chunk task that starts afterwards sees it
    jobs.commit(job_id, cancelled=range(10))
    jobs.finish_chunk(job_id, 0)
    jobs.finish_chunk(job_id, 1)
    p = jobs.progress(job_id)
    assert (p.state, p.cancelled, p.pending, p.finished) == ("cancelled", 10, 0, True)
    done = new_job(jobs, total=1, chunk_size=5, job_id="j2")
    jobs.commit(done, sent=[0])
    jobs.finish_chunk(done, 0)
    assert jobs.cancel(done) == "done"
    with pytest.raises(NotFound):
        jobs.cancel("nope")


def test_a_job_keeps_a_fixed_number_of_keys_with_an_expiry(jobs, fake_redis):
    job_id = new_job(jobs, total=1000, chunk_size=100)
    jobs.commit(job_id, sent=range(1000))
    for chunk in range(10):
        jobs.finish_chunk(job_id, chunk)
    keys = sorted(fake_redis.keys("t:bulk:*"))
    assert keys == ["t:bulk:j1", "t:bulk:j1:chunks-done", "t:bulk:j1:done"]
    assert all(0 < fake_redis.ttl(key) <= 3600 for key in keys)


def test_discard_leaves_nothing_of_a_rejected_job(jobs, fake_redis):
    jobs.create("j", realm="acme", template="email-test", locale=None, context={}, chunk_size=2)
    jobs.write_chunks("j", 0, [[{"to": "a@example.com"}], [{"to": "b@example.com"}]])
    jobs.discard("j", 2)
    assert fake_redis.keys("t:*") == []


# ---- messages -----------------------------------------------------------------------------------------------


def test_the_template_is_rendered_once_per_locale_and_per_recipient_context():
    settings = parse_smtp_settings({"from": "noreply@example.com", "host": "smtp.example.com"})
    job = BulkJob("j", "acme", "email-test", "en", {"realm_name": "ACME"}, 9, 1, 9, "running", 0.0)
    factory = MessageFactory(TemplateRenderer(), settings, job)
    recipients = [Recipient(i, f"u{i}@example.com", locale=("de" if i % 2 else None)) for i in range(6)]
    recipients += [
        Recipient(6 + i, f"v{i}@example.com", context={"user": {"first_name": f"V{i}"}}) for i in range(3)
    ]
    messages = [factory.build(r) for r in recipients]
    assert factory.renders == 2 + 3
    assert b"Testnachricht" in messages[1].data and b"Hello V2," in messages[8].data
    assert len({m.message_id for m in messages}) == 9


@pytest.mark.parametrize(
    "data, wire",
    [
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
        (b".start\r\nend", b"..start\r\nend\r\n.\r\n"),
        (b"no dots\r\n", b"no dots\r\n.\r\n"),
    ],
)
def test_a_pipelined_body_isdot_stuffed_and_terminated(data, wire):
    assert dot_stuffed(data) == wire


# ---- CLI ------------------------------------------------------------------------------------------------------


def test_the_progress_view_shows_a_bar_rate_and_eta():
    progress = {"job_id": "bulk-1", "realm": "acme", "template": "email-test", "state": "running",
                "total": 100_000, "sent": 46_990, "failed": 10, "cancelled": 0, "pending": 53_000,
                "rate": 3105.2, "started_at": 1000.0, "finished_at": None, "error": None}  # fmt: skip
    text = render_progress(progress, now=1015.0)
    assert text.splitlines() == [
        "bulk-1  realm acme  template email-test  running",
        "[##############----------------]  47.0%  47,000/100,000",
        "sent 46,990  failed 10  cancelled 0  pending 53,000  rate 3,105/s  elapsed 15s  eta 17s",
    ]


def test_job_cancel_needs_a_job_id(capsys):
    from worker.cli import main

    assert main(["job", "cancel"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == "error: JOB_ID: name the job to cancel: mailworker job cancel JOB_ID"
    )


def test_the_default_worker_runs_bulk_and_callbacks_in_their_own_lower_priority_consumers():
    args = build_parser().parse_args(["worker", "--callbacks-concurrency", "3"])
    assert isinstance(args, argparse.Namespace)
    (transactional, t_nice), (bulk, b_nice), (callbacks, c_nice) = child_commands(args)
    assert transactional[:5] == [sys.executable, "-m", "celery", "-A", "worker.app"]
    assert transactional[transactional.index("-Q") + 1] == "transactional,control"
    assert bulk[bulk.index("-Q") + 1] == "bulk"
    # Webhooks: their own consumer, so a hanging receiver holds none of the processes that send mail.
    assert callbacks[callbacks.index("-Q") + 1] == "callbacks"
    assert callbacks[callbacks.index("--concurrency") + 1] == "3"
    assert (t_nice, b_nice, c_nice) == (0, BULK_NICENESS, BULK_NICENESS)
    from worker.app import app

    # One message at a time per process: a password reset never sits in a prefetch buffer behind others.
    assert app.conf.worker_prefetch_multiplier == 1
