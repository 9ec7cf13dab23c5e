"""Bulk endpoints (scope producer or admin): start a bulk notice, follow its progress, cancel it.

`POST /v1/realms/{realm}/bulk` takes the job as one JSON object, or streamed as NDJSON
(worker/http/ndjson.py). Both end in the one `tasks.api.send_bulk`, which validates the recipients and
writes them to Redis chunk by chunk as they are pulled: for NDJSON each pull reads the request body further,
so a list of any length is held only a few chunks at a time. send_bulk blocks on Redis, so it runs in a
worker thread, which pulls the body's chunks from the event loop.

A token limited to realms sees only its realms' bulk jobs: another realm's job is 404, as an unknown one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from config.errors import InvalidInput
from tasks import api
from tasks.views import progress_json
from worker.http import ndjson
from worker.http.auth import producer, realm_for
from worker.http.errors import ApiError
from worker.http.tokens import ApiToken
from worker.runtime import runtime

router = APIRouter(tags=["producer"])  # under /v1: included by worker/http/producer.py

# A JSON body is parsed whole (every recipient at once, several times its size as Python objects): larger
# lists are streamed as NDJSON, up to MAILWORKER_HTTP_MAX_BULK_BODY.
MAX_JSON_BULK_BYTES = 8 * 1_048_576
MAX_ID = 200


class BulkHeader(BaseModel):
    """The job's part of a bulk upload (NDJSON's first line); the rules are checked by send_bulk."""

    model_config = ConfigDict(extra="forbid")

    template: Any = Field(description="template name", examples=["maintenance-notice"])
    locale: Any = Field(default=None, description="the job's language tag; a recipient's own wins")
    context: Any = Field(default=None, description="the template's variables, shared by every recipient")
    chunk_size: Any = Field(default=None, description="recipients per chunk (default 200, at most 1000)")


class BulkRequest(BulkHeader):
    """A bulk job as one JSON object."""

    recipients: Any = Field(
        description="addresses, or objects {email, name?, locale?, context?}",
        examples=[["alice@example.com", {"email": "bob@example.com", "name": "Bob", "locale": "de"}]],
    )


class BulkAccepted(BaseModel):
    job_id: str


REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": BulkRequest.model_json_schema()},
        "application/x-ndjson": {
            "schema": {
                "type": "string",
                "description": "first line the header object (template, locale, context, chunk_size), "
                "then one recipient a line",
            },
            "example": '{"template": "maintenance-notice", "context": {}}\n"alice@example.com"\n'
            '{"email": "bob@example.com", "name": "Bob"}\n',
        },
    },
}


def media_type(content_type: str | None) -> str:
    """ "ndjson" or "json" (also when no Content-Type is sent); 415 for anything else."""
    kind = (content_type or "").partition(";")[0].strip().lower()
    if kind in ndjson.MEDIA_TYPES:
        return "ndjson"
    if kind in ("", "application/json") or (kind.startswith("application/") and kind.endswith("+json")):
        return "json"
    raise ApiError(415, "send the bulk job as application/json or, streamed, as application/x-ndjson")


@router.post("/realms/{realm}/bulk", status_code=202, response_model=BulkAccepted, openapi_extra={"requestBody": REQUEST_BODY},
             summary="Send a template to many recipients (JSON, or NDJSON streamed for large lists)")  # fmt: skip
async def send_bulk(realm: str, request: Request, token: ApiToken = Depends(producer)) -> BulkAccepted:  # noqa: B008
    realm = realm_for(token, realm)
    try:
        if media_type(request.headers.get("content-type")) == "ndjson":
            job_id = await anyio.to_thread.run_sync(upload_ndjson, realm, request.stream())
        else:
            body = await read_json(request.stream(), MAX_JSON_BULK_BYTES)
            job = validated(BulkRequest, body)
            job_id = await anyio.to_thread.run_sync(start, realm, job, job.recipients)
    except ClientDisconnect:
        raise ApiError(400, "the client closed the connection before the body was read") from None
    return BulkAccepted(job_id=job_id)


@router.get(
    "/bulk/{job_id}", summary="A bulk job's progress: total, sent, failed, cancelled, pending, rate, state"
)
def bulk_progress(job_id: str, token: ApiToken = Depends(producer)) -> dict[str, Any]:  # noqa: B008
    return visible(token, job_id)


@router.post("/bulk/{job_id}/cancel", summary="Stop a bulk job: recipients not sent yet are cancelled")
def cancel_bulk(job_id: str, token: ApiToken = Depends(producer)) -> dict[str, Any]:  # noqa: B008
    visible(token, job_id)
    return {"job_id": job_id, "state": api.cancel_bulk(job_id)}


def visible(token: ApiToken, job_id: str) -> dict[str, Any]:
    """The job's progress if the token may see its realm; else 404 with the words of an unknown job."""
    if len(job_id) > MAX_ID:
        raise runtime().bulk_jobs.unknown(job_id[:40] + "...")
    progress = api.bulk_progress(job_id)
    if not token.sees(progress["realm"]):
        raise runtime().bulk_jobs.unknown(job_id)
    return progress_json(progress)


# ---- reading the body ------------------------------------------------------------------------------------


def upload_ndjson(realm: str, stream: AsyncIterator[bytes]) -> str:
    """In a worker thread: the header line, then the recipients as send_bulk pulls them."""
    header, recipients = ndjson.read_upload(pulled(stream))
    return start(realm, validated(BulkHeader, header), recipients)


def start(realm: str, job: BulkHeader, recipients: Any) -> str:
    chunk_size = {} if job.chunk_size is None else {"chunk_size": job.chunk_size}
    return api.send_bulk(
        realm, job.template, recipients, context=job.context, locale=job.locale, **chunk_size
    )


def pulled(stream: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The body's chunks for a worker thread, each fetched from the event loop when the thread needs it.

    The body-size guard (worker/http/guards.py) raises from inside the fetch: it reaches the thread,
    send_bulk discards what it wrote, and the guard answers 413.
    """
    iterator = stream.__aiter__()

    async def next_chunk() -> bytes | None:
        try:
            return await iterator.__anext__()
        except StopAsyncIteration:
            return None

    while (chunk := anyio.from_thread.run(next_chunk)) is not None:
        if chunk:
            yield chunk


async def read_json(stream: AsyncIterator[bytes], limit: int) -> Any:
    """A JSON body of at most `limit` bytes; 413 past it, 400 when it is not JSON."""
    body = bytearray()
    async for chunk in stream:
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"a JSON bulk body is parsed whole, so at most {limit} bytes: "
                                "stream a larger list as application/x-ndjson")  # fmt: skip
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)[:200]
        raise ApiError(400, f"the body is not JSON: {reason}") from None


def validated(model: type[BulkHeader], raw: Any) -> Any:
    """The body's fields; unknown or missing ones are 422 in the API's shape (worker/http/errors.py)."""
    if not isinstance(raw, dict):
        raise InvalidInput.one("", "the body must be a JSON object: template, locale, context, recipients")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None
