import time

import pytest

from config.errors import NotFound
from config.keys import Keys
from worker.jobs.deadletters import DeadLetter, DeadLetterStore
from worker.jobs.ledger import DeliveryLedger, died_after_data


def letter(job_id, realm="acme", reason="permanent", died_at=None):
    return DeadLetter(
        job_id=job_id, realm=realm, template="password-reset", to="a@example.com", reason=reason,
        error="rcpt: 550 5.1.1 no such user", attempts=1, smtp_code=550,
        job={"id": job_id, "context": {"link": "https://secret-link"}}, died_at=died_at or time.time(),
    )  # fmt: skip


@pytest.fixture
def store(fake_redis):
    return DeadLetterStore(fake_redis, Keys("t"))


def test_add_get_list_newest_first_and_filter(store):
    store.add(letter("j1", died_at=1.0))
    store.add(letter("j2", realm="other", reason="expired", died_at=2.0))
    store.add(letter("j3", died_at=3.0))
    assert [lt.job_id for lt in store.list()] == ["j3", "j2", "j1"]
    assert [lt.job_id for lt in store.list(realm="acme")] == ["j3", "j1"]
    assert [lt.job_id for lt in store.list(reason="expired")] == ["j2"]
    assert store.get("j1").smtp_code == 550
    assert "job" not in store.get("j1").public()  # listings never show the job's context
    assert store.count() == 3


def test_remove_and_purge(store):
    store.add(letter("old", died_at=time.time() - 7200))
    store.add(letter("new"))
    assert store.purge(older_than=3600) == 1
    assert [lt.job_id for lt in store.list()] == ["new"]
    assert store.remove("new") and not store.remove("new")
    with pytest.raises(NotFound, match="mailworker dead list"):
        store.get("new")


def test_expired_records_leave_the_index(store, fake_redis):
    store.add(letter("gone"))
    fake_redis.delete(Keys("t").dead_letter("gone"))
    assert store.list() == [] and store.count() == 0


def test_ledger_keeps_one_expiring_hash_per_job(fake_redis):
    ledger = DeliveryLedger(fake_redis, Keys("t"), ttl=60, idempotent_ttl=600)
    assert ledger.delivered("j") is None and ledger.state("j") is None
    assert [ledger.next_attempt("j") for _ in range(3)] == [1, 2, 3]
    ledger.note_error("j", "rcpt: 451 try again")
    assert [ledger.note_ambiguous("j"), ledger.note_ambiguous("j")] == [1, 2]
    ledger.mark_delivered("j", {"message_id": "<m@x>"})
    assert ledger.delivered("j") == {"message_id": "<m@x>"} and ledger.state("j") == "sent"
    assert ledger.fields("j")["attempts"] == "3" and ledger.ambiguous("j") == 2
    assert fake_redis.keys("t:*") == ["t:job:j"]  # one key per job, whatever it went through
    assert 0 < fake_redis.ttl("t:job:j") <= 60  # and it expires: bounded memory
    ledger.mark_delivered("k", {"message_id": "<k@x>"}, idempotent=True)
    assert 60 < fake_redis.ttl("t:job:k") <= 600  # an idempotency key is remembered longer


def test_an_ended_job_is_reopened_by_a_reset(fake_redis):
    ledger = DeliveryLedger(fake_redis, Keys("t"), ttl=60)
    ledger.next_attempt("j")
    ledger.end("j", "dead")
    assert ledger.state("j") == "dead"
    ledger.reset("j")
    assert (ledger.state("j"), ledger.attempts("j")) == (None, 0)


def test_cooldown_admits_one_job_per_recipient_and_template(fake_redis):
    ledger = DeliveryLedger(fake_redis, Keys("t"), ttl=60)
    assert ledger.admit("acme", "password-reset", "A@example.com", "job-1", cooldown=30)
    assert ledger.admit("acme", "password-reset", "a@example.com", "job-1", cooldown=30)  # its own retry
    assert not ledger.admit("acme", "password-reset", "a@example.com", "job-2", cooldown=30)
    assert ledger.admit("acme", "email-verification", "a@example.com", "job-3", cooldown=30)
    assert ledger.admit("other", "password-reset", "a@example.com", "job-4", cooldown=30)
    assert ledger.admit("acme", "password-reset", "a@example.com", "job-5", cooldown=0)  # off


@pytest.mark.parametrize(
    "facts, died",
    [
        ({"attempts": "1", "data_out": "1"}, True),  # sent its data, then nothing was recorded: it died
        ({"attempts": "2", "data_out": "1"}, False),  # an older attempt; the latest one never got that far
        ({"attempts": "1"}, False),  # died before the data: nothing can have arrived
        ({"attempts": "1", "data_out": "1", "delivered": "{}"}, False),
        ({"attempts": "1", "data_out": "1", "state": "dead"}, False),
        ({}, False),
    ],
)
def test_a_death_after_the_data_is_told_from_one_before(facts, died):
    assert died_after_data(facts) is died


def test_a_recorded_outcome_clears_the_data_mark(fake_redis):
    ledger = DeliveryLedger(fake_redis, Keys("t"), ttl=60)
    attempt = ledger.next_attempt("j")
    ledger.note_data_out("j", attempt)
    assert died_after_data(ledger.fields("j"))
    ledger.note_error("j", "data: 451 try again")  # the attempt failed, and we know how
    assert not died_after_data(ledger.fields("j"))
    ledger.note_data_out("j", ledger.next_attempt("j"))
    assert ledger.note_ambiguous("j") == 1 and not died_after_data(ledger.fields("j"))
