"""Bulk over HTTP on a real server: JSON and streamed NDJSON delivered end to end to a loopback SMTP server,
422 naming the bad recipient, 413 over the limits, progress, cancel, realms, and 100,000 streamed
recipients in bounded memory."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tasks import api as python_api
from tests.support.http import ApiServer, new_token, serve
from tests.support.smtp_server import SmtpTestServer
from worker.http import bulk
from worker.http.ndjson import lines
from worker.runtime import runtime

pytestmark = pytest.mark.integration

NDJSON = {"Content-Type": "application/x-ndjson"}
HEADER = {"template": "email-test", "context": {"realm_name": "ACME"}}


def addresses(n: int, tag: str = "b") -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"{tag}{i}-{run}@example.com" for i in range(n)]


def ndjson_body(header: dict[str, Any], recipients: list[Any]) -> Iterator[bytes]:
    """Streamed: a generator makes httpx send the body chunked, with no Content-Length."""
    yield json.dumps(header).encode() + b"\n"
    for start in range(0, len(recipients), 50):
        yield b"".join(json.dumps(r).encode() + b"\n" for r in recipients[start : start + 50])


def bulk_jobs() -> set[str]:
    return set(runtime().bulk_jobs.newest())


@pytest.fixture
def saved_realm(realm: str, smtp_server: SmtpTestServer) -> str:
    runtime().store.save(realm, smtp_server.settings_dict())
    return realm


# ---- delivered end to end ------------------------------------------------------------------------------


def test_a_bulk_job_sent_as_json_is_delivered_to_every_recipient(
    api: ApiServer, celery_worker: Any, producer_token: str, saved_realm: str, smtp_server: SmtpTestServer
) -> None:
    to = addresses(3)
    recipients = [to[0], {"email": to[1], "name": "Bob", "locale": "de"}, {"email": to[2], "context": {}}]
    with api.client(producer_token) as client:
        reply = client.post(f"/v1/realms/{saved_realm}/bulk", json={**HEADER, "recipients": recipients})
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job_id"]
        python_api.wait_for_bulk(job_id, timeout=60)
        progress = client.get(f"/v1/bulk/{job_id}").json()
    assert (progress["state"], progress["total"], progress["sent"], progress["realm"]) == (
        "done",
        3,
        3,
        saved_realm,
    )
    assert progress["finished_at"].endswith("Z") and progress["created_at"].endswith(
        "Z"
    )  # ISO 8601, as `job --json`
    assert [len(smtp_server.received_for(a)) for a in to] == [1, 1, 1]
    assert smtp_server.received_for(to[1])[0].message["Subject"] == "Testnachricht von ACME"


def test_a_bulk_job_streamed_as_ndjson_is_delivered_to_every_recipient(
    api: ApiServer, celery_worker: Any, producer_token: str, saved_realm: str, smtp_server: SmtpTestServer
) -> None:
    to = addresses(250)
    recipients: list[Any] = [{"email": a, "name": f"R {i}"} if i % 2 else a for i, a in enumerate(to)]
    with api.client(producer_token) as client:
        reply = client.post(f"/v1/realms/{saved_realm}/bulk", content=ndjson_body({**HEADER, "chunk_size": 100}, recipients),
                            headers=NDJSON)  # fmt: skip
        assert reply.status_code == 202, reply.text
        assert "content-length" not in reply.request.headers  # it was streamed
        job_id = reply.json()["job_id"]
        python_api.wait_for_bulk(job_id, timeout=60)
        progress = client.get(f"/v1/bulk/{job_id}").json()
    assert (progress["state"], progress["total"], progress["sent"], progress["chunks"]) == (
        "done",
        250,
        250,
        3,
    )
    assert sorted(rcpt for m in smtp_server.messages for rcpt in m.recipients) == sorted(to)


# ---- refused ------------------------------------------------------------------------------------------


def test_a_bad_recipient_line_is_422_naming_it_and_nothing_is_left(
    api: ApiServer, producer_token: str, saved_realm: str
) -> None:
    recipients: list[Any] = addresses(300)
    recipients[257] = {"email": "bob@example.com", "locale": "not a locale!"}
    before = bulk_jobs()
    with api.client(producer_token) as client:
        reply = client.post(
            f"/v1/realms/{saved_realm}/bulk", content=ndjson_body(HEADER, recipients), headers=NDJSON
        )
    assert reply.status_code == 422
    assert [e["field"] for e in reply.json()["errors"]] == ["recipients[257].locale"]
    assert bulk_jobs() == before  # the chunks already written (256 recipients) were discarded


def test_a_bad_header_line_is_422_naming_the_field(
    api: ApiServer, producer_token: str, saved_realm: str
) -> None:
    with api.client(producer_token) as client:
        unknown = client.post(f"/v1/realms/{saved_realm}/bulk", headers=NDJSON,
                              content=ndjson_body({**HEADER, "template": "no-such"}, ["a@example.com"]))  # fmt: skip
        missing = client.post(f"/v1/realms/{saved_realm}/bulk", headers=NDJSON,
                              content=ndjson_body({"context": {}}, ["a@example.com"]))  # fmt: skip
    assert unknown.status_code == missing.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "template"
    assert missing.json()["errors"] == [{"field": "template", "rule": "is required"}]


@pytest.fixture(scope="module")
def small_api() -> Iterator[ApiServer]:
    """The real app with a bulk body limit of 64 KiB (MAILWORKER_HTTP_MAX_BULK_BODY)."""
    from worker.http.app import create_app

    settings = runtime().settings.model_copy(
        update={"http_max_bulk_body": 64 * 1024, "http_auth_failures_per_minute": 10_000}
    )
    yield from serve(create_app(settings))


def test_a_bulk_body_over_the_bulk_limit_is_413_and_leaves_nothing(
    small_api: ApiServer, producer_token: str, saved_realm: str
) -> None:
    recipients = addresses(4000)  # about 120 KB as NDJSON
    before = bulk_jobs()
    with small_api.client(producer_token) as client:
        streamed = client.post(
            f"/v1/realms/{saved_realm}/bulk", content=ndjson_body(HEADER, recipients), headers=NDJSON
        )
        whole = client.post(f"/v1/realms/{saved_realm}/bulk", json={**HEADER, "recipients": recipients})
        under = client.post(
            f"/v1/realms/{saved_realm}/bulk", content=ndjson_body(HEADER, recipients[:100]), headers=NDJSON
        )
    assert (streamed.status_code, whole.status_code, under.status_code) == (413, 413, 202)
    assert streamed.json() == {"error": f"the body is larger than {64 * 1024} bytes"}
    assert bulk_jobs() - before == {under.json()["job_id"]}  # the streamed one began a job: discarded
    python_api.cancel_bulk(under.json()["job_id"])


def test_a_json_bulk_body_is_parsed_whole_so_it_has_a_smaller_limit(
    api: ApiServer, producer_token: str, saved_realm: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(bulk, "MAX_JSON_BULK_BYTES", 10_000)
    with api.client(producer_token) as client:
        reply = client.post(f"/v1/realms/{saved_realm}/bulk", json={**HEADER, "recipients": addresses(1000)})
    assert reply.status_code == 413 and "application/x-ndjson" in reply.json()["error"]


# ---- progress, cancel, realms ----------------------------------------------------------------------------


def test_cancel_stops_a_running_bulk_job(
    api: ApiServer, celery_worker: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict(rate_limit_per_second=5))
    to = addresses(100)
    with api.client(producer_token) as client:
        job_id = client.post(
            f"/v1/realms/{realm}/bulk", json={**HEADER, "chunk_size": 10, "recipients": to}
        ).json()["job_id"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/bulk/{job_id}").json()["sent"] == 0:
            assert time.monotonic() < deadline, "nothing was sent"
            time.sleep(0.1)
        cancelled = client.post(f"/v1/bulk/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json() == {"job_id": job_id, "state": "cancelled"}
        python_api.wait_for_bulk(job_id, timeout=60)
        progress = client.get(f"/v1/bulk/{job_id}").json()
    assert progress["state"] == "cancelled" and progress["cancelled"] > 0
    assert progress["sent"] + progress["failed"] + progress["cancelled"] == 100
    assert len(smtp_server.messages) == progress["sent"] < 100


def test_a_realm_limited_token_sees_only_its_realms_bulk_jobs(
    api: ApiServer, producer_token: str, saved_realm: str
) -> None:
    with api.client(producer_token) as client:
        job_id = client.post(
            f"/v1/realms/{saved_realm}/bulk", json={**HEADER, "recipients": addresses(2)}
        ).json()["job_id"]
    try:
        with api.client(new_token("producer", (saved_realm,))) as mine:
            assert mine.get(f"/v1/bulk/{job_id}").status_code == 200
        with api.client(new_token("producer", (f"{saved_realm}-other",))) as other:
            hidden = other.get(f"/v1/bulk/{job_id}")
            unknown = other.get("/v1/bulk/bulk-0123")
            assert hidden.status_code == unknown.status_code == 404
            assert hidden.json()["error"].replace(job_id, "X") == unknown.json()["error"].replace(
                "bulk-0123", "X"
            )
            assert other.post(f"/v1/bulk/{job_id}/cancel").status_code == 404
            assert (
                other.post(
                    f"/v1/realms/{saved_realm}/bulk", json={**HEADER, "recipients": ["a@example.com"]}
                ).status_code
                == 404
            )
            assert other.get(f"/v1/bulk/{'x' * 500}").status_code == 404
        assert (
            python_api.bulk_progress(job_id)["state"] != "cancelled"
        )  # the other realm's cancel did nothing
    finally:
        python_api.cancel_bulk(job_id)


# ---- 100,000 recipients ------------------------------------------------------------------------------

MANY = 100_000
# What the server may allocate at most while it takes 100,000 streamed recipients. A list-materialising
# server needs far more: the body alone is bigger, and the parsed recipients are several times the body.
MEMORY_BOUND = 6 * 1_048_576


def recipient_line(i: int) -> bytes:
    return b'{"email": "recipient%06d@example.com", "name": "Recipient number %06d"}\n' % (i, i)


async def upload(app: Any, token: str, realm: str, content: Any, headers: dict[str, str]) -> httpx.Response:
    """The app in this process (so that tracemalloc sees its allocations), its body streamed by httpx."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=300) as client:
        return await client.post(f"/v1/realms/{realm}/bulk", content=content,
                                 headers={**headers, "Authorization": f"Bearer {token}"})  # fmt: skip


def peak_allocated(run: Any) -> tuple[Any, int]:
    """Run the coroutine on an event loop of its own, in a thread: the main thread may hold a running loop
    already (Playwright's sync API keeps one for the browser tests' session)."""
    outcome: dict[str, Any] = {}

    def in_thread() -> None:
        try:
            outcome["value"] = asyncio.run(run)
        except BaseException as error:  # handed to the test's thread
            outcome["error"] = error

    tracemalloc.start()
    try:
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"], tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_100000_streamed_recipients_are_never_held_in_memory_at_once(
    api: ApiServer, producer_token: str, saved_realm: str
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield json.dumps(HEADER).encode() + b"\n"
        for start in range(0, MANY, 500):
            yield b"".join(recipient_line(i) for i in range(start, start + 500))

    body_bytes = sum(len(recipient_line(i)) for i in range(MANY))
    assert body_bytes > MEMORY_BOUND  # reading the body whole would break the bound on its own

    reply, peak = peak_allocated(upload(api.app, producer_token, saved_realm, body(), NDJSON))
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["job_id"]
    python_api.cancel_bulk(job_id)  # only its upload is the subject: nobody needs 100,000 mails
    progress = python_api.bulk_progress(job_id)
    assert (progress["total"], progress["chunks"]) == (MANY, MANY // 200)
    assert peak < MEMORY_BOUND, f"{peak / 1_048_576:.1f} MiB allocated at the peak"


def test_the_memory_bound_is_one_a_list_materialising_upload_breaks(
    api: ApiServer, producer_token: str, saved_realm: str
) -> None:
    # The same 100,000 recipients as one JSON body (the path that parses the list whole, allowed up to
    # MAX_JSON_BULK_BYTES): what the streamed test above must stay under is what this one exceeds.
    content = (
        b'{"template": "email-test", "context": {"realm_name": "ACME"}, "recipients": [%s]}'
        % b",".join(b'"recipient%06d@example.com"' % i for i in range(MANY))
    )
    assert len(content) < bulk.MAX_JSON_BULK_BYTES
    reply, peak = peak_allocated(
        upload(api.app, producer_token, saved_realm, content, {"Content-Type": "application/json"})
    )
    assert reply.status_code == 202, reply.text
    python_api.cancel_bulk(reply.json()["job_id"])
    assert peak > MEMORY_BOUND, f"only {peak / 1_048_576:.1f} MiB"


# ---- the NDJSON reader ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks, expected",
    [
        ([b'{"a": 1}\n"x"\n'], [(1, b'{"a": 1}'), (2, b'"x"')]),
        ([b'{"a"', b': 1}\n"', b'x"'], [(1, b'{"a": 1}'), (2, b'"x"')]),  # split anywhere, no final newline
        ([b"\n\n", b'"x"\r\n', b"  \n"], [(3, b'"x"\r')]),  # blank lines skipped, numbers kept
        ([b""], []),
        ([], []),
    ],
)
def test_lines(chunks: list[bytes], expected: list[tuple[int, bytes]]) -> None:
    assert list(lines(chunks)) == expected


def test_a_line_is_refused_as_soon_as_it_is_too_long() -> None:
    from worker.http.errors import ApiError

    def endless() -> Iterator[bytes]:
        yield b'"ok"\n'
        while True:
            yield b"x" * 1000

    with pytest.raises(ApiError, match="line 2 is longer than 4096 bytes"):
        list(lines(endless(), max_line=4096))


@pytest.mark.parametrize(
    "content_type, kind",
    [(None, "json"), ("application/json", "json"), ("application/json; charset=utf-8", "json"),
     ("application/vnd.acme+json", "json"), ("application/x-ndjson", "ndjson"), ("Application/X-NDJSON; charset=utf-8", "ndjson"),
     ("application/jsonl", "ndjson"), ("text/plain", None), ("multipart/form-data; boundary=x", None), ("text/json", None)],
)  # fmt: skip
def test_media_type(content_type: str | None, kind: str | None) -> None:
    from worker.http.errors import ApiError

    if kind is None:
        with pytest.raises(ApiError) as refused:
            bulk.media_type(content_type)
        assert refused.value.status == 415
    else:
        assert bulk.media_type(content_type) == kind
