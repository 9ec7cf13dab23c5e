"""One attempt to deliver a webhook, and what follows from it (tasks/webhooks.py runs it).

The attempt goes through the service's one HTTP client (oauth_http.py: the URL and every address it
resolves to checked, deadlines, no redirects). Isolation: a receiver that hangs must not take the
`callbacks` workers from everybody else's receivers, so
- at most MAX_IN_FLIGHT attempts per endpoint run at once (a Redis counter); the others wait a moment
  without connecting, and without counting an attempt;
- an endpoint that gave no answer (a timeout, a refused connection) is paused for PAUSE_S: its other
  deliveries wait out the pause instead of each holding a process for a whole deadline.
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.crypto import SealBroken
from config.errors import ConfigError, InvalidInput, NotFound
from config.keys import Keys
from config.names import WEBHOOK_TASK
from worker.delivery.oauth_http import checked_destination, excerpt, network_reason, post_bytes
from worker.jobs.deadletters import DeadLetter, DeadLetterStore
from worker.outcomes.webhooks.decisions import (
    DEAD,
    DEFAULT_SCHEDULE,
    DONE,
    GONE_STEP,
    TEST_EVENT,
    Schedule,
    iso,
    next_step,
    slot_wait,
)
from worker.outcomes.webhooks.endpoints import Endpoint, EndpointStore
from worker.outcomes.webhooks.signing import signed_headers

# Per attempt: connect (and TLS) within CONNECT_S, the answer within READ_S; a receiver should answer at
# once and do its work later (Standard Webhooks asks for a 2xx within seconds).
CONNECT_S = 3.0
READ_S = 7.0
MAX_IN_FLIGHT = 2
PAUSE_S = 30
DEAD_REASON = "webhook"
DROPPED, DEFERRED = "dropped", "deferred"


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer (refused, timed out, the URL's address not allowed)
    error: str = ""  # what went wrong, one line, for logs and the dead letter

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Result:
    action: str  # DONE, "retry", DEAD, GONE_STEP, DROPPED (endpoint gone or disabled), DEFERRED
    delay: float = 0.0
    answer: Answer | None = None

    def to_json(self) -> dict[str, Any]:
        answer = self.answer or Answer(None)
        return {
            "status": self.action,
            "delay": self.delay,
            "http_status": answer.status,
            "error": answer.error,
        }


def post(url: str, body: bytes, headers: dict[str, str], *, allow_private: bool,
         connect_s: float = CONNECT_S, read_s: float = READ_S) -> Answer:  # fmt: skip
    try:
        pinned = checked_destination("url", url, allow_private=allow_private)
        status, reply = post_bytes(
            url, body, headers, pinned=pinned, connect_timeout=connect_s, timeout=read_s
        )
    except InvalidInput as error:
        return Answer(None, str(error))
    except (OSError, http.client.HTTPException, ValueError) as error:
        reason = network_reason(error)
        kind = "timed out" if isinstance(reason, TimeoutError | socket.timeout) else type(reason).__name__
        return Answer(None, excerpt(f"no answer ({kind}): {reason}"))
    ok = 200 <= status < 300
    return Answer(status, "" if ok else excerpt(f"HTTP {status}: {reply.decode('utf-8', 'replace')}"))


def test_payload(endpoint: Endpoint, now: float) -> dict[str, Any]:
    return {"type": TEST_EVENT, "timestamp": iso(now),
            "data": {"realm": endpoint.realm, "endpoint_id": endpoint.id}}  # fmt: skip


class WebhookDelivery:
    def __init__(
        self,
        client: Any,
        keys: Keys,
        endpoints: EndpointStore,
        dead_letters: DeadLetterStore,
        *,
        clock: Callable[[], float] = time.time,
        connect_s: float = CONNECT_S,
        read_s: float = READ_S,
        schedule: Schedule = DEFAULT_SCHEDULE,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.endpoints = endpoints
        self.dead_letters = dead_letters
        self.clock = clock
        self.connect_s = connect_s
        self.read_s = read_s
        self.schedule = schedule
        self.pause_s = PAUSE_S

    def _post(self, endpoint: Endpoint, secret: str, webhook_id: str, payload: dict[str, Any]) -> Answer:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = signed_headers(secret, webhook_id, int(self.clock()), body)
        return post(endpoint.url, body, headers, allow_private=self.endpoints.allow_private,
                    connect_s=self.connect_s, read_s=self.read_s)  # fmt: skip

    def test(self, endpoint_id: str) -> Answer:
        """A signed `test` ping, now, once (`mailworker webhook test`): the receiver's answer."""
        endpoint, secret = self.endpoints.secret(endpoint_id)
        return self._post(endpoint, secret, "msg_test_" + secrets.token_hex(12), test_payload(endpoint,
                                                                                             self.clock()))  # fmt: skip

    def _take_slot(self, endpoint_id: str) -> bool:
        key = self.keys.webhook_in_flight(endpoint_id)
        pipe = self.redis.pipeline()
        pipe.incr(key)
        # Set once per counter's life: a worker killed mid-attempt leaks its slot only until then.
        pipe.expire(key, int(self.connect_s + self.read_s) + 10, nx=True)
        count, _ = pipe.execute()
        if int(count) > MAX_IN_FLIGHT:
            self.redis.decr(key)
            return False
        return True

    def run(self, endpoint_id: str, webhook_id: str, payload: dict[str, Any], attempt: int,
            first_at: float, deferrals: int = 0) -> Result:  # fmt: skip
        try:
            endpoint, secret = self.endpoints.secret(endpoint_id)
        except NotFound:
            return Result(DROPPED)  # removed since: nobody to tell
        except (ConfigError, SealBroken) as error:  # the key was replaced: retried, in case it comes back
            answer = Answer(None, f"the endpoint's secret cannot be opened: {error}")
            return self._after(None, answer, endpoint_id, webhook_id, payload, attempt, first_at)
        if endpoint.disabled:
            return Result(DROPPED)
        paused = int(self.redis.pttl(self.keys.webhook_pause(endpoint_id)))
        if paused > 0:
            return Result(DEFERRED, paused / 1000)
        if not self._take_slot(endpoint_id):
            return Result(DEFERRED, slot_wait(deferrals))
        try:
            answer = self._post(endpoint, secret, webhook_id, payload)
        finally:
            self.redis.decr(self.keys.webhook_in_flight(endpoint_id))
        if answer.status is None:
            self.redis.set(self.keys.webhook_pause(endpoint_id), "1", px=int(self.pause_s * 1000), nx=True)
        return self._after(endpoint, answer, endpoint_id, webhook_id, payload, attempt, first_at)

    def _after(self, endpoint: Endpoint | None, answer: Answer, endpoint_id: str, webhook_id: str,
               payload: dict[str, Any], attempt: int, first_at: float) -> Result:  # fmt: skip
        step = next_step(answer.status, attempt, first_at, self.clock(), self.schedule)
        if step.action == GONE_STEP:
            self.endpoints.disable(endpoint_id, f"the receiver answered 410 Gone at {iso(self.clock())}")
        elif step.action == DEAD:
            data = payload.get("data") or {}
            self.dead_letters.add(DeadLetter(
                job_id=webhook_id, realm=str(data.get("realm") or (endpoint.realm if endpoint else "")),
                template=str(data.get("template") or payload.get("type")), to=endpoint.url if endpoint else "",
                reason=DEAD_REASON, error=answer.error, attempts=attempt, task=WEBHOOK_TASK,
                smtp_code=None, job={"endpoint_id": endpoint_id, "webhook_id": webhook_id, "payload": payload},
                first_attempt_at=first_at,
            ))  # fmt: skip
        return Result(step.action, step.delay, answer)


__all__ = ["DEAD", "DONE", "Answer", "Result", "WebhookDelivery", "post"]
