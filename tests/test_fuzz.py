"""Fuzzing every producer entry point, as a standing guard (hypothesis).

Properties:

- tasks.api.send_email / publish_event / send_bulk raise nothing but the service's own errors
  (config.errors.MailWorkerError: InvalidInput naming the field, StoreUnavailable) for any arguments:
  text of any code points (lone surrogates, controls), ints of any size, floats (nan, inf), bytes, sets,
  tuples, dicts with non-string keys, nesting thousands of levels deep, strings of hundreds of KB. What
  passes validation is published to the session's queues, and every such job ends (the session's
  in-thread worker sends it to a loopback SMTP server).
- The ingest consumer never raises out of `handle` for any entry (arbitrary bytes, any JSON value,
  entry-shaped objects with hostile fields): it enqueues it or dead-letters it, and leaves nothing in its
  processing list; its run loop never exits. Memory per entry within the 256 KB entry limit stays bounded
  (tracemalloc peak, see ENTRY_PEAK_LIMIT).
- parse_smtp_settings and the store's edit path (set_draft, save) raise nothing but InvalidInput (or
  another MailWorkerError) for any JSON object, and what they accept can be shown.

Budget: HYPOTHESIS_PROFILE selects the hypothesis profile. Unset (`make test`): 50 examples per property
(25 for send_bulk, 10 batches for the run loop), the whole module in under 10 s. `reliability` (`make
reliability`): FUZZ_SCALE (40) times as many, about 3 minutes. Most examples are valid arguments with one
to three of them hostile (see `mutated`), so that every rule is reached and some examples pass.

What the fuzzer found (and was fixed) is kept at the end as tests of the smallest examples.

Real Redis (tests/conftest.py), real SMTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import operator
import os
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from config.errors import InvalidInput, MailWorkerError
from config.keys import Keys
from config.smtp import SmtpSettings, parse_smtp_settings
from tasks import api
from tests.conftest import SESSION_PREFIX
from tests.support.smtp_server import SmtpTestServer
from worker.cli.common import json_text
from worker.ingest import MAX_ENTRY_BYTES, IngestConsumer, enqueue, ingest_client
from worker.jobs.deadletters import DeadLetterStore
from worker.runtime import runtime

pytestmark = pytest.mark.integration

FUZZ_SCALE = 40
settings.register_profile(
    "mailworker-fuzz",
    max_examples=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
settings.register_profile(
    "mailworker-fuzz-reliability", settings.get_profile("mailworker-fuzz"), max_examples=50 * FUZZ_SCALE
)
# Only this module's tests take the profile: loading it would change every other hypothesis test too.
FUZZ = settings(
    settings.get_profile(
        "mailworker-fuzz-reliability"
        if os.environ.get("HYPOTHESIS_PROFILE") == "reliability"
        else "mailworker-fuzz"
    )
)

# Hypothesis imports some strategies' modules on first use (st.randoms, which builds() reaches). First used
# deep inside a nested draw, that import parses a module at a high recursion depth, which CPython 3.11 can
# fail ("AST constructor recursion depth mismatch"); Hypothesis then calls the test flaky. Import it here.
st.randoms().validate()

REALM = f"fuzz-{uuid.uuid4().hex[:8]}"  # saved: producers' calls get past the realm check
SETTINGS_REALM = f"fuzz-settings-{uuid.uuid4().hex[:8]}"  # the store's edit path writes here
CONTEXT = {"user": {"username": "alice", "first_name": "Alice"}, "link": "https://iam.example.com/r?k=1",
           "link_expiration": 30}  # fmt: skip
# json.loads turns 256 KB of `[{},{},...]` into about 6.5 MB of dicts: the worst shape of a valid entry.
# It is parsed once (the dead letter reads the same value); headroom for the session's worker thread,
# which allocates meanwhile too.
ENTRY_PEAK_LIMIT = 16 * 1024 * 1024

# Jobs (and bulk jobs) that passed validation: the last test waits for each to end.
PUBLISHED: list[str] = []
PUBLISHED_BULK: list[str] = []

# ---- strategies -----------------------------------------------------------------------------------------

any_char = st.characters(exclude_categories=())  # surrogates, controls, unassigned: anything
text = st.text(any_char, max_size=30)
# Up to ~300,000 characters: above every limit (64 KiB context, 256 KB entry) and cheap to build.
huge_text = st.builds(operator.mul, st.text(any_char, min_size=1, max_size=3), st.integers(1, 100_000))
# Python refuses to print an int of more than 4300 digits (ValueError): json.dumps and str() raise.
big_int = st.builds(
    lambda digits, sign: sign * (10**digits - 1), st.integers(0, 6000), st.sampled_from([1, -1])
)
ints = st.one_of(st.integers(), big_int, st.sampled_from([0, -1, 2**31, 2**63, 2**64, 10**20]))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), text)


class DeepList(list):  # type: ignore[type-arg]
    """The outer level of a deep value: hypothesis prints a failing example with a recursive printer
    that gives up at a thousand levels (and then hides the real error); this one prints one line."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"nested({self.levels}, {self.kind!r})")


class DeepDict(dict):  # type: ignore[type-arg]
    _repr_pretty_ = DeepList._repr_pretty_


def nested(levels: int, kind: str) -> Any:
    """A value `levels` deep, built without recursion (deeper than Python's recursion limit)."""
    value: Any = 1
    for level in range(levels - 1):
        value = [value] if kind == "list" or (kind == "mixed" and level % 2) else {"a": value}
    outer: Any = DeepList([value]) if kind == "list" else DeepDict(a=value)
    outer.levels, outer.kind = levels, kind
    return outer


deep = st.builds(nested, st.integers(1, 3000), st.sampled_from(["list", "dict", "mixed"]))
json_values = st.one_of(
    st.recursive(
        scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
        max_leaves=10,
    ),
    huge_text,
    deep,
    st.dictionaries(text, huge_text, min_size=1, max_size=1),
)  # fmt: skip
# What a Python producer can pass and JSON cannot hold.
python_only = st.one_of(
    st.binary(max_size=20),
    st.tuples(scalars, scalars),
    st.frozensets(st.integers(), max_size=3),
    st.builds(object),
    st.dictionaries(st.one_of(st.integers(), st.none(), st.booleans(), st.tuples(st.integers())), scalars,
                    min_size=1, max_size=3),
)  # fmt: skip
python_values = st.one_of(
    json_values,
    python_only,
    st.recursive(python_only, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(text, inner, max_size=3)), max_leaves=6),
)  # fmt: skip

addresses = st.one_of(st.builds("u{}@example.com".format, st.integers(0, 10**9)), st.emails())
hostile = st.one_of(text, python_values)


def mutated(
    base: dict[str, st.SearchStrategy[Any]], changes: dict[str, st.SearchStrategy[Any]], most: int = 3
) -> st.SearchStrategy[dict[str, Any]]:
    """Arguments that pass validation (`base`) but for up to `most` of them drawn from `changes`.

    All hostile at once would stop at the first rule checked (the realm, every time); one at a time
    reaches every rule, and the happy path is one of the examples.
    """

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        names = draw(st.sets(st.sampled_from(sorted(changes)), max_size=most))
        return {name: draw(changes[name] if name in names else base[name])
                for name in sorted(set(base) | names)}  # fmt: skip

    return build()


TEMPLATES = st.sampled_from(["password-reset", "email-verification", "execute-actions"])
LOCALES = st.sampled_from(["en", "de", "pt-BR", "fr"])
contexts = st.one_of(
    st.builds(lambda extra, first: {**extra, **CONTEXT, "user": {"first_name": first}},
              st.dictionaries(text, python_values, max_size=3), python_values),
    python_values,
)  # fmt: skip
email_arguments = mutated(
    {"realm": st.just(REALM), "template": TEMPLATES, "to": addresses, "context": st.just(CONTEXT)},
    {"realm": hostile, "template": hostile, "to": hostile, "context": contexts, "locale": st.one_of(LOCALES, hostile),
     "idempotency_key": st.one_of(st.uuids().map(str), hostile), "expires_in": st.one_of(ints, st.floats(), hostile),
     "to_name": hostile},
)  # fmt: skip
EVENT_TYPES = st.sampled_from(["UPDATE_PASSWORD", "LOGIN_ERROR", "REMOVE_TOTP", "LOGIN"])
event_users = mutated(
    {"email": addresses},
    {"email": hostile, "username": hostile, "firstName": hostile, "last_name": hostile, "locale": hostile},
)
events = st.one_of(
    mutated(
        {"type": EVENT_TYPES, "user": event_users},
        {"type": hostile, "user": hostile, "id": st.one_of(st.uuids().map(str), hostile), "details": hostile,
         "time": hostile, "realmName": hostile, "ipAddress": hostile, "error": hostile},
    ),
    hostile,
)  # fmt: skip
event_arguments = mutated(
    {"realm": st.just(REALM), "event": events},
    {"realm": hostile, "idempotency_key": st.one_of(st.uuids().map(str), hostile)},
    most=1,
)
recipient = st.one_of(
    addresses,
    mutated({"email": addresses}, {"email": hostile, "name": hostile, "locale": hostile, "context": hostile}),
    hostile,
)
bulk_arguments = mutated(
    {"realm": st.just(REALM), "template": TEMPLATES, "recipients": st.lists(addresses, min_size=1, max_size=4),
     "context": st.just(CONTEXT)},
    {"realm": hostile, "template": hostile, "context": contexts, "locale": st.one_of(LOCALES, hostile),
     "chunk_size": st.one_of(st.integers(1, 3), ints, hostile),
     "recipients": st.one_of(st.lists(recipient, max_size=4),
                             st.lists(addresses, min_size=1, max_size=4).map(iter),  # a generator
                             hostile)},
)  # fmt: skip


# ---- ingest entries -------------------------------------------------------------------------------------


def as_raw(value: Any, ascii_only: bool) -> bytes | None:
    """The entry as a producer's JSON library would push it; lone surrogates as CESU bytes (not UTF-8)."""
    try:
        return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):  # an int too long to print, nesting too deep for json.dumps
        return None


json_hostile = st.one_of(text, json_values)
entry_shaped = st.one_of(
    mutated(
        {"realm": st.just(REALM), "template": TEMPLATES, "to": addresses, "context": st.just(CONTEXT)},
        {"type": st.one_of(st.sampled_from(["email", "event"]), json_hostile), "realm": json_hostile,
         "template": json_hostile, "to": json_hostile, "context": json_hostile, "locale": json_hostile,
         "idempotency_key": json_hostile, "expires_in": json_hostile, "to_name": json_hostile,
         "event": json_hostile},
    ),
    mutated(
        {"type": st.just("event"), "realm": st.just(REALM),
         "event": st.fixed_dictionaries({"type": EVENT_TYPES, "user": st.fixed_dictionaries({"email": addresses})})},
        {"realm": json_hostile, "event": json_hostile, "template": json_hostile},
        most=1,
    ),
)  # fmt: skip


def deep_entry(levels: int, opener: str, field: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    inner = opener * levels + ("1" if opener != "[" else "") + closer * levels
    return f'{{"realm": "{REALM}", "template": "password-reset", "to": "a@example.com", "{field}": {inner}}}'.encode()


def many_containers(count: int, item: str, wrapped: bool) -> bytes:
    """The shapes json.loads amplifies most: a list of empty objects or arrays, up to the entry limit."""
    items = "[" + ",".join([item] * count) + "]"
    if not wrapped:
        return items.encode()
    return f'{{"realm": "{REALM}", "template": "password-reset", "to": "a@example.com", "context": {{"x": {items}}}}}'.encode()


raw_entries = st.one_of(
    st.binary(max_size=200),
    st.builds(as_raw, json_values, st.booleans()).filter(bool),
    st.builds(as_raw, entry_shaped, st.booleans()).filter(bool),
    st.builds(as_raw, st.builds(lambda e, extra: {**e, **extra}, entry_shaped,
                                st.dictionaries(text, json_values, min_size=1, max_size=2)),
              st.booleans()).filter(bool),  # unknown fields
    st.builds(deep_entry, st.integers(1, 50_000), st.sampled_from(["[", '{"a":']),
              st.sampled_from(["context", "event", "realm"])),
    st.builds(many_containers, st.integers(1, (MAX_ENTRY_BYTES - 200) // 3), st.sampled_from(["{}", "[]", "1"]),
              st.booleans()),
    st.builds(lambda b: b'{"realm": "' + b + b'", "template": "password-reset", "to": "a@example.com"}',
              st.binary(min_size=1, max_size=10)),  # not UTF-8
)  # fmt: skip


# ---- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[SmtpTestServer]:
    with SmtpTestServer() as found:
        yield found


@pytest.fixture(scope="module", autouse=True)
def saved_realm(server: SmtpTestServer, celery_worker: Any) -> str:
    runtime().store.save(REALM, server.settings_dict(allow_utf8=True))
    return REALM


@pytest.fixture(scope="module")
def consumer(redis_url: str) -> Iterator[IngestConsumer]:
    """A consumer of the module's own ingest list; its dead letters in a store of their own."""
    keys = Keys(f"{SESSION_PREFIX}:fuzz-{uuid.uuid4().hex[:8]}")
    client = ingest_client(redis_url, block=0.2)
    dead = DeadLetterStore(runtime().redis, keys, ttl=3600)
    yield IngestConsumer(client, keys, dead, name="fuzz", enqueue=recorded_enqueue)
    client.close()


def recorded_enqueue(entry: dict[str, Any], token: str) -> str | None:
    """The real enqueue; the job is waited for at the end (also those the run loop enqueues)."""
    job_id = enqueue(entry, token)
    if job_id is not None:
        PUBLISHED.append(job_id)
    return job_id


def refused(error: MailWorkerError) -> None:
    """Counted by the field it names (--hypothesis-show-statistics): which rules the examples reach."""
    assert str(error)
    field = error.problems[0][0] if isinstance(error, InvalidInput) else type(error).__name__
    event(f"refused: {field.split('.')[0].split('[')[0]}")


def check_left_nothing(consumer: IngestConsumer) -> None:
    assert not consumer.redis.exists(consumer.processing) and not consumer.redis.exists(consumer.in_hand)


# ---- the producer API -----------------------------------------------------------------------------------


@FUZZ
@given(arguments=email_arguments)
def test_send_email_raises_only_its_own_errors(arguments: dict[str, Any]) -> None:
    try:
        job_id = api.send_email(**arguments)
    except MailWorkerError as error:
        refused(error)
        return
    event("published")
    assert isinstance(job_id, str) and job_id
    PUBLISHED.append(job_id)


@FUZZ
@given(arguments=event_arguments)
def test_publish_event_raises_only_its_own_errors(arguments: dict[str, Any]) -> None:
    try:
        job_id = api.publish_event(**arguments)
    except MailWorkerError as error:
        refused(error)
        return
    event("published" if job_id else "not notified")
    assert job_id is None or isinstance(job_id, str)
    if job_id is not None:
        PUBLISHED.append(job_id)


@settings(FUZZ, max_examples=max(5, FUZZ.max_examples // 2))  # each valid one is a bulk job
@given(arguments=bulk_arguments)
def test_send_bulk_raises_only_its_own_errors(arguments: dict[str, Any]) -> None:
    try:
        job_id = api.send_bulk(**arguments)
    except MailWorkerError as error:
        refused(error)
        return
    event("published")
    assert isinstance(job_id, str) and job_id.startswith("bulk-")
    PUBLISHED_BULK.append(job_id)


# ---- the ingest consumer --------------------------------------------------------------------------------


@FUZZ
@given(raw=raw_entries)
def test_the_ingest_consumer_handles_any_entry_in_bounded_memory(
    consumer: IngestConsumer, raw: bytes
) -> None:
    consumer.redis.rpush(consumer.source, raw)
    taken = consumer.redis.lmove(consumer.source, consumer.processing, "LEFT", "RIGHT")  # as step() does
    tracemalloc.start()
    try:
        handled = consumer.handle(taken)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert handled.outcome in ("enqueued", "ignored", "invalid", "internal"), handled
    event(handled.outcome)
    if handled.outcome in ("invalid", "internal"):
        assert handled.error and consumer.dead.get(str(handled.job_id)).reason == handled.outcome
    check_left_nothing(consumer)
    if len(raw) <= MAX_ENTRY_BYTES:
        assert peak < ENTRY_PEAK_LIMIT, f"{peak / 2**20:.1f} MiB for an entry of {len(raw)} bytes"


@settings(FUZZ, max_examples=max(3, FUZZ.max_examples // 5))
@given(batch=st.lists(raw_entries, min_size=1, max_size=5))
def test_the_ingest_run_loop_never_exits(consumer: IngestConsumer, batch: list[bytes]) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), kwargs={"block": 0.1}, daemon=True)
    thread.start()
    try:
        consumer.redis.rpush(consumer.source, *batch)
        deadline = time.monotonic() + 60
        while consumer.redis.llen(consumer.source) or consumer.redis.llen(consumer.processing):
            assert thread.is_alive(), "the run loop exited"
            assert time.monotonic() < deadline, "the run loop stopped consuming"
            time.sleep(0.02)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    check_left_nothing(consumer)


def test_an_oversized_entry_costs_no_more_memory_than_the_limit(consumer: IngestConsumer) -> None:
    raw = many_containers(4_000_000 // 3, "{}", wrapped=False)  # 4 MB, rejected by size
    consumer.redis.rpush(consumer.processing, raw)
    tracemalloc.start()
    try:
        handled = consumer.handle(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert handled.outcome == "invalid"
    assert peak < ENTRY_PEAK_LIMIT, f"{peak / 2**20:.1f} MiB for an entry of {len(raw)} bytes"


def test_an_invalid_entry_is_parsed_once(consumer: IngestConsumer) -> None:
    raw = many_containers((MAX_ENTRY_BYTES - 200) // 3, "{}", wrapped=False)  # valid JSON, not an object
    consumer.redis.rpush(consumer.processing, raw)
    tracemalloc.start()
    try:
        handled = consumer.handle(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert handled.outcome == "invalid"
    assert peak < ENTRY_PEAK_LIMIT / 2, f"{peak / 2**20:.1f} MiB: more than one parse of {len(raw)} bytes"


# ---- settings input -------------------------------------------------------------------------------------

SETTINGS_NAMES = sorted({field.alias or name for name, field in SmtpSettings.model_fields.items()}
                        | set(SmtpSettings.model_fields))  # fmt: skip
settings_objects = st.one_of(
    mutated(
        {"from": addresses, "host": st.just("127.0.0.1")},
        {**{name: st.one_of(json_hostile, st.booleans(), ints, st.floats()) for name in SETTINGS_NAMES},
         "auth": st.booleans(), "auth_type": st.sampled_from(["password", "xoauth2"])},
        most=4,
    ),
    st.dictionaries(st.one_of(st.sampled_from(SETTINGS_NAMES), text), json_values, max_size=6),
)  # fmt: skip


@FUZZ
@given(data=settings_objects)
def test_parse_smtp_settings_raises_only_invalid_input(data: dict[str, Any]) -> None:
    try:
        parsed = parse_smtp_settings(data)
    except InvalidInput as error:
        assert error.problems
        refused(error)
        return
    event("accepted")
    assert json.loads(json_text(parsed.to_public())) == parsed.to_public()  # what it accepts can be shown


@FUZZ
@given(changes=settings_objects, note=st.one_of(st.none(), text), save=st.booleans())
def test_the_store_edit_path_raises_only_its_own_errors(
    changes: dict[str, Any], note: Any, save: bool
) -> None:
    store = runtime().store
    try:
        if save:
            saved = store.save(SETTINGS_REALM, changes, note=note)
            assert saved.version >= 1
        else:
            store.set_draft(SETTINGS_REALM, changes)
    except MailWorkerError as error:
        refused(error)
        return
    event("saved" if save else "draft")
    settings_, _, _ = store.effective(SETTINGS_REALM)  # what was stored reads back
    assert settings_.to_public()
    store.history(SETTINGS_REALM)


# ---- what the fuzzer found (smallest examples), fixed --------------------------------------------------------


def test_found_a_context_key_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        api.send_email(REALM, "password-reset", "u0@example.com", context={0: None})
    assert caught.value.problems[0][0].startswith("context")


def test_found_deep_notify_events_are_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_smtp_settings(
            {"from": "a@example.com", "host": "127.0.0.1", "notify_events": nested(1000, "list")}
        )
    assert caught.value.problems[0][0] == "notify_events"


def test_found_a_note_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        runtime().store.save(
            f"fuzz-note-{uuid.uuid4().hex[:8]}", {"from": "a@example.com", "host": "127.0.0.1"}, note="\ud800"
        )  # a realm of its own: no draft of the fuzzing pending
    assert caught.value.problems[0][0] == "note"


def test_found_an_empty_iam_client_secret_is_no_secret_and_the_draft_reads_back() -> None:
    store, realm = runtime().store, f"fuzz-iam-{uuid.uuid4().hex[:8]}"
    draft = store.set_draft(realm, {"from": "u0@example.com", "host": "127.0.0.1", "iam_client_secret": ""})
    assert draft.settings.iam_client_secret is None
    settings_, source, _ = store.effective(realm)  # was: InvalidInput, iam_url and iam_client_id required
    assert (source, settings_.iam_client_secret) == ("draft", None)


# ---- and what passed validation ends --------------------------------------------------------------------


@pytest.mark.timeout(1200)  # its own budget below grows with the jobs the profile published
def test_every_job_that_passed_validation_ends() -> None:
    """And leaves nothing behind for the tests that run after this module on the same worker."""
    # The reliability profile publishes hundreds of jobs: the budget grows with them (a loaded 2-core machine
    # took longer than a flat 90 s to end them all, each one ending).
    deadline = time.monotonic() + 90 + 0.25 * (len(PUBLISHED) + 5 * len(PUBLISHED_BULK))
    for job_id in PUBLISHED:
        result = api.wait_for_result(job_id, timeout=max(1.0, deadline - time.monotonic()))
        assert result["status"] in ("sent", "duplicate-skipped", "dead-lettered", "ignored", "rejected",
                                    "dropped"), result  # fmt: skip
    for job_id in PUBLISHED_BULK:
        progress = api.wait_for_bulk(job_id, timeout=max(1.0, deadline - time.monotonic()))
        assert progress["state"] in ("done", "failed", "cancelled"), progress
        forget_ended_chunks(job_id, progress["chunks"], deadline)


def forget_ended_chunks(job_id: str, chunks: int, deadline: float) -> None:
    """start_bulk records its chunks in the pending ledger after publishing them (tasks/bulk.py), so a
    chunk that ends at once stays recorded until a worker's sweeper finds it ended (tasks/signals.py).
    tests/test_sweeper.py sweeps every record of the session with a clock far ahead: leave none."""


    rt = runtime()
    while rt.redis.exists(rt.keys.pending_job(job_id)):  # start_bulk has not finished recording
        assert time.monotonic() < deadline, f"bulk job {job_id} still fanning out"
        time.sleep(0.05)
    for chunk in range(chunks):
        entry = f"{job_id}:{chunk}"
        if runtime().bulk_jobs.entry_ended(entry):
            rt.pending.done(entry)
